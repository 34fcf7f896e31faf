"""`maxMemory` as a hard limit for a local command job.

Where this process may make memory cgroups (cgroup v1, under its own: a root kernel, or a
delegated tree), each job gets one of its own (`job-<id>-<attempt>`) with `memory.limit_in_bytes`
set; the kernel's OOM killer stops a job that goes over, and the cgroup's `oom_kill` count tells
it apart from any other kill. Elsewhere (cgroup v2 without delegation, no cgroups) the job runs
under `prlimit --as`: its address space is limited, so an allocation beyond it fails (a
`MemoryError`, `ENOMEM`) instead of the job being killed. On SLURM, the site's cgroups do this
(backends/slurm/script.py reads their OOM count). Python calls on the local backend get such a
cgroup too (`call_sandbox.run_confined`; no prlimit fallback: a forked worker's address space is
already larger than most limits), and so do a SLURM pilot's, inside the pilot job's cgroup; the pilot's
script removes what its workers leave there (`clear_on_exit`).

>>> print(" ".join(limited_argv(None, 512, ["./md"])[0]))  # doctest: +ELLIPSIS
/...prlimit --as=536870912 -- ./md
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from htc_notebook.backends.programs import program

MIB = 1024 * 1024
V1 = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class Cage:
    """A job's own memory cgroup (v1)."""

    path: Path
    limit_mib: int

    def oom_kills(self) -> int:
        """How many of the job's processes the OOM killer stopped (memory.oom_control's oom_kill)."""
        try:
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def peak_mib(self) -> float | None:
        try:
            return round(int((self.path / "memory.max_usage_in_bytes").read_text()) / MIB, 1)
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (the kernel frees them a moment after the kill)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def cgroup_parent() -> Path | None:
    """Where this process may make jobs' memory cgroups (see `_cgroup_parent`), found once even when
    several of its threads ask at the same time."""
    with _FIRST:
        return _cgroup_parent()


_FIRST = threading.Lock()


@functools.cache
def _cgroup_parent() -> Path | None:
    """Where this process may make jobs' memory cgroups: a directory under its own v1 memory cgroup,
    or None (then `prlimit`)."""
    try:
        own = next(line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.split(":", 2)[1] == "memory")
    except (OSError, StopIteration, IndexError):
        return None
    mine = V1 / own.lstrip("/")
    for stale in mine.glob("htc-*"):  # left by processes that died: empty once their jobs ended
        if stale.name[4:].isdigit() and not Path(f"/proc/{stale.name[4:]}").exists():
            try:  # another process may be clearing the same one
                for d in [*stale.glob("job-*"), *stale.glob("call-*"), stale]:
                    d.rmdir()
            except OSError:
                pass
    parent = mine / f"htc-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
        (parent / "memory.use_hierarchy").read_text()
    except OSError:
        return None
    return parent


def clear_on_exit() -> str:
    """A bash line for the start of a SLURM pilot's job script: when the script exits (its worker
    ended or was killed, or the job was cancelled: SIGTERM) it removes the memory cgroups its workers
    made under its own (`htc-<pid>/call-*`) once their processes are gone, for up to 10 s. A cgroup
    left inside a job's keeps slurmstepd from removing the job's (seen on the test cluster). Not
    covered: the script itself SIGKILLed (a worker slower to close than the site's KillWait).

    >>> "trap" in clear_on_exit() and "/proc/" in clear_on_exit()
    True
    """
    own = "$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)"
    clear = ('for _ in $(seq 50); do left=; for d in "$htc_cg"/htc-*; do [ -d "$d" ] || continue; '
             '[ -e "/proc/${d##*-}" ] && left=1 && continue; rmdir "$d"/call-* 2>/dev/null; rmdir "$d" 2>/dev/null || left=1; done; '
             '[ -z "$left" ] && break; sleep 0.2; done')
    return f"htc_cg={V1}{own}; trap '{clear}' EXIT"


def make_cage(parent: Path | None, limit_mib: int, name: str, swap_mib: int = 0) -> Cage | None:
    """A new memory cgroup `name` under `parent` limited to `limit_mib` of memory, and to `swap_mib`
    of swap beyond it where the kernel accounts swap (memory.memsw); None where it cannot be made."""
    if parent is None:
        return None
    limit, path = int(limit_mib) * MIB, parent / name
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit))
    except OSError:
        return None
    try:
        (path / "memory.memsw.limit_in_bytes").write_text(str(limit + int(swap_mib) * MIB))
    except OSError:
        pass
    return Cage(path, limit_mib)


def limited_argv(parent: Path | None, limit_mib: int, argv: Sequence[str], name: str = "job",
                 swap_mib: int = 0) -> tuple[list[str], Cage | None]:
    """`argv` held to `limit_mib` (and `swap_mib` of swap beyond it): in a new cgroup `name` under
    `parent` (the job joins it before it execs, so nothing it allocates escapes the limit), or
    under prlimit when there is none (which knows no swap)."""
    cage = make_cage(parent, limit_mib, name, swap_mib)
    if cage is not None:
        return [program("sh"), "-c", 'echo $$ > "$0" && exec "$@"', str(cage.path / "cgroup.procs"), *argv], cage
    return [program("prlimit"), f"--as={int(limit_mib) * MIB}", "--", *argv], None
