"""`maxMemory` (a command's) and `memory` (a Python call's) as hard limits, held the same way for
every job a local runner or a pilot's worker starts, and every job's peak memory measured.

How a limit is held (`Hold.how`, recorded with each attempt: `attempts.memory_held`):

- `cgroup`: where this process may make memory cgroups (v1 under its own, or a delegated v2
  subtree: `cgroups.py`), the job gets one of its own (`job-<id>-<attempt>`, a call's
  `call-<pid>-<n>`) which it joins before it execs; the kernel's OOM killer stops a process of it
  that goes over, and the cgroup's `oom_kill` count tells that kill apart from any other.
- `watched`: elsewhere (an ordinary user without delegation, cgroup v2 without it, no cgroups),
  the memory watchdog (`memory_watch.py`) sums the resident memory of the job's whole process
  tree every 50 ms and SIGKILLs the tree when the sum passes the limit.
- `none`: nothing holds it (a Python call run unconfined in its worker, `sandbox: none`); the
  attempt says so.

Either way a job any of whose processes was killed for memory fails for memory (cause `memory`:
its retry asks for twice the memory), whatever its shell returned, and its peak is the cgroup's or
the watchdog's. Jobs without a limit are measured the same way (a cgroup without a limit, or a
watch that never kills). `HTC_MEMORY_CGROUPS=0` in the environment makes a process hold every
limit by the watchdog (for tests, and for a site whose cgroups misbehave).

On SLURM the site's cgroups hold command jobs' memory (backends/slurm/script.py reads their OOM
count); Python calls on a pilot are held here, inside the pilot job's cgroup (v1) or by the
watchdog; the pilot's script removes what its workers leave there, also when it is cancelled
(`clear_on_exit`).

>>> h = hold(None, "doc", cgroups=False)
>>> (h.how, h.argv(["./md"]))
(None, ['./md'])
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from htc_notebook.backends import memory_watch
from htc_notebook.backends.cgroups import V1, Cage, find_parent, make_cage
from htc_notebook.backends.programs import program

CGROUPS_ENV = "HTC_MEMORY_CGROUPS"  # "0": hold limits by the watchdog only


@dataclass(frozen=True)
class Verdict:
    """How a job's memory went: `how` its limit was held (None: it asked for none), `oom` whether a
    process of it was killed for memory, `peak_mib` its peak where measured."""

    how: str | None
    oom: bool
    peak_mib: float | None


class Hold:
    """One job's memory limit (`limit_mib`, None: measured only) and its peak, held by `cage` (a
    memory cgroup) or by a watch the watchdog keeps once `started` is called."""

    def __init__(self, limit_mib: int | None, cage: Cage | None):
        self.limit_mib, self.cage = limit_mib, cage
        self._watch: memory_watch.Watch | None = None

    @property
    def how(self) -> str | None:
        if not self.limit_mib:
            return None
        return "cgroup" if self.cage is not None else "watched"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv`, made to join the job's cgroup before it execs (so nothing it allocates escapes)."""
        if self.cage is None:
            return list(argv)
        path, what = self.cage.entry  # the shell has one thread (`Cage.entry`)
        return [program("sh"), "-c", f'echo {"0" if what == "0" else "$$"} > "$0" && exec "$@"', str(path), *argv]

    def join(self) -> None:
        """Move this process into the job's cgroup: a forked child, before it does anything else
        (it has one thread, as `Cage.entry` needs)."""
        if self.cage is not None:
            path, what = self.cage.entry
            with open(path, "w") as f:
                f.write(what)

    def started(self, pid: int, *, session: bool = True, forked: bool = False, below: bool = False) -> None:
        """The job's first process is `pid` (with `session`: the leader of the job's own session;
        `forked`: forked from this process, not exec'd, see `memory_watch.watch`'s `private`;
        `below`: the job is what runs below `pid`, not `pid` itself: a confined call's zygote):
        watched from now on without a cgroup, or, in a v2 cgroup without memory.peak, sampled."""
        if self.cage is None:
            self._watch = memory_watch.watch(pid, self.limit_mib, session=session, private=forked, below=below)
        elif not self.cage.has_peak():
            self._watch = memory_watch.watch(pid, None, session=session, cgroup=self.cage)

    def ended(self, maxrss_mib: float | None = None) -> Verdict:
        """The job ended (its processes reaped): stop watching, read the cgroup, remove it.
        `maxrss_mib`, the job's own maxrss where it can be trusted, fills in a peak too quick for
        the watchdog to see."""
        watched = self._watch
        if watched is not None:
            watched.stop()
        if self.cage is not None:
            oom, peak = self.cage.oom_kills() > 0, self.cage.peak_mib()
            self.cage.remove()
        else:
            oom = watched is not None and watched.killed
            peak = watched.peak_mib if watched is not None else None
            if maxrss_mib is not None and (peak is None or maxrss_mib > peak):
                peak = maxrss_mib  # one process's peak: never more than the tree held together
            # over its limit between two samples (grew and ended within one): over is over
            oom = oom or bool(self.limit_mib and watched is not None and peak and peak > self.limit_mib)
        return Verdict(self.how, oom, peak)


def hold(limit_mib: int | None, name: str, *, swap_mib: int = 0, cgroups: bool = True) -> Hold:
    """A `Hold` for a new job `name` (unique in this process): its own memory cgroup where this
    process may make one (and `cgroups`), else the watchdog's."""
    cage = None
    if cgroups and os.environ.get(CGROUPS_ENV, "1") != "0":
        where = cgroup_place()
        if where is not None:
            cage = make_cage(where[0], limit_mib, name, swap_mib, version=where[1])
    return Hold(limit_mib, cage)


def cgroup_place() -> tuple[Path, int] | None:
    """Where this process makes its jobs' memory cgroups and their version, found once even when
    several of its threads ask at the same time (`cgroups.find_parent`); None: the watchdog."""
    if os.environ.get(CGROUPS_ENV, "1") == "0":
        return None
    with _FIRST:
        return _cgroup_place(os.getpid())


def cgroup_parent() -> Path | None:
    """The directory of `cgroup_place`, or None."""
    where = cgroup_place()
    return where[0] if where is not None else None


_FIRST = threading.Lock()


@functools.cache
def _cgroup_place(pid: int) -> tuple[Path, int] | None:
    return find_parent(pid)


_cgroup_parent: Any = _cgroup_place  # the cache tests clear (`_cgroup_parent.cache_clear()`)


def clear_on_exit() -> str:
    """Bash lines for the start of a SLURM pilot's job script: when the script exits (its worker
    ended, or the job was cancelled or ran out of time: SIGTERM to every process of it, SIGKILL
    KillWait later), it removes the memory cgroups its workers made under its own (v1), or beside
    its own (v2: `cgroups.v2_base`'s usual choice), `htc-<pid>/call-*`. The calls still in them are
    SIGKILLed first: a cancelled call may outlive SIGTERM (the init of its pid namespace ignores
    it), and waiting for it would let KillWait's SIGKILL end the script before it cleans up. A
    cgroup left inside a job's keeps slurmstepd from removing the job's (seen on the test cluster).
    Those of another job's workers (on v2 they sit beside) are left alone.

    >>> lines = clear_on_exit()
    >>> "trap htc_clear EXIT" in lines and "kill -9" in lines
    True
    """
    v1 = "$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)"
    v2 = "$(dirname \"/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)\")"  # v2: beside its own cgroup
    own = ("htc_own=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup); "
           "htc_own=${htc_own:-$(sed -n 's/^0:://p' /proc/self/cgroup)}")
    clear = ('htc_clear() { for _ in $(seq 50); do left=; for d in "$htc_cg"/htc-*; do [ -d "$d" ] || continue; '
             'p=${d##*-}; [ -e "/proc/$p" ] && ! grep -qF "$htc_own" "/proc/$p/cgroup" 2>/dev/null && continue; '
             'for c in "$d"/*/; do kill -9 $(cat "$c"cgroup.procs 2>/dev/null) 2>/dev/null; done; '
             'rmdir "$d"/*/ 2>/dev/null; rmdir "$d" 2>/dev/null || left=1; done; '
             '[ -z "$left" ] && break; sleep 0.1; done; }')
    return "\n".join([f'htc_cg={v1}; if [ -n "$htc_cg" ]; then htc_cg={V1}$htc_cg; else htc_cg={v2}; fi', own,
                      clear, "trap htc_clear EXIT"])
