"""Memory cgroups this process may make for its jobs: cgroup v1 or v2, and one job's `Cage`.

- **v1** (a memory controller mounted at /sys/fs/cgroup/memory): under this process's own memory
  cgroup, `htc-<pid>/<job>`, where it may write there (root, or a delegated v1 tree). Files:
  `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (memory + swap), `memory.oom_control`'s
  `oom_kill`, `memory.max_usage_in_bytes`.
- **v2** (the unified hierarchy, a `cgroup2` mount): v2 lets no cgroup that holds processes give
  controllers to children, so the jobs' cgroups are siblings of this process's own: the nearest
  ancestor whose `cgroup.subtree_control` has `memory` and whose directory and `cgroup.procs` this
  user may write (a delegated subtree, e.g. systemd's `user@UID.service`; or the root's children
  for root) gets `htc-<pid>/` with `+memory` in its subtree_control, and each job a leaf below it.
  Moving a process needs write access to the common ancestor's `cgroup.procs` (the kernel's
  delegation rule), which is why that file is checked. Files: `memory.max`, `memory.swap.max`
  (swap beyond memory), `memory.events`' `oom_kill`, `memory.peak` (kernel 5.19+; elsewhere the
  peak is `memory.current` sampled by the watchdog, `memory_watch.py`).

Nothing here raises for a cgroup that cannot be made: the answer is None and the caller holds the
limit another way (`memory_limit.py`).

>>> cage = Cage(Path("/sys/fs/cgroup/memory/htc-1/job-1-1"), 512, version=1)
>>> cage.files["limit"], Cage(Path("/x"), 512, version=2).files["limit"]
('memory.limit_in_bytes', 'memory.max')
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1024 * 1024
V1 = Path("/sys/fs/cgroup/memory")
FILES = {
    1: {"limit": "memory.limit_in_bytes", "swap": "memory.memsw.limit_in_bytes", "oom": "memory.oom_control",
        "peak": "memory.max_usage_in_bytes", "current": "memory.usage_in_bytes"},
    2: {"limit": "memory.max", "swap": "memory.swap.max", "oom": "memory.events", "peak": "memory.peak",
        "current": "memory.current"},
}


@dataclass
class Cage:
    """One job's memory cgroup (`version` 1 or 2), limited to `limit_mib` (None: measured only)."""

    path: Path
    limit_mib: int | None
    version: int = 1
    sampled_peak: int = field(default=0)  # bytes: the highest memory.current seen (v2 without memory.peak)

    @property
    def files(self) -> dict[str, str]:
        return FILES[self.version]

    @property
    def procs(self) -> Path:
        """The file a process writes its pid to, to join the cgroup."""
        return self.path / "cgroup.procs"

    @property
    def entry(self) -> tuple[Path, str]:
        """The file a process that has one thread writes to move itself in, and what it writes: on
        v1 `tasks` and "0" (this thread, so this whole process), which the kernel does without
        taking its global fork lock (cgroup_threadgroup_rwsem); a write to `cgroup.procs` takes it,
        and waits for an RCU grace period unless another migration just did: 15-19 ms each on this
        machine (measured: tasks 0.4 ms). v2 has no `tasks` for a domain cgroup: `cgroup.procs`
        and the pid ("$$" in a shell)."""
        return (self.path / "tasks", "0") if self.version == 1 else (self.procs, str(os.getpid()))

    def oom_kills(self) -> int:
        """How many of the job's processes the OOM killer stopped (v1 memory.oom_control, v2
        memory.events: the `oom_kill` line)."""
        try:
            for line in (self.path / self.files["oom"]).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the OOM kills of %s: %s", self.path, exc)
        return 0

    def has_peak(self) -> bool:
        """Whether the kernel keeps this cgroup's peak (v1 always; v2 from 5.19, memory.peak)."""
        return (self.path / self.files["peak"]).exists()

    def sample(self) -> None:
        """Note memory.current (the watchdog does this for a v2 cgroup without memory.peak)."""
        try:
            self.sampled_peak = max(self.sampled_peak, int((self.path / self.files["current"]).read_text()))
        except (OSError, ValueError):
            pass

    def peak_mib(self) -> float | None:
        """The job's peak memory: the kernel's (v1 max_usage_in_bytes, v2 memory.peak), else the
        highest memory.current sampled; None if neither is known."""
        try:
            return round(int((self.path / self.files["peak"]).read_text()) / MIB, 1)
        except (OSError, ValueError):
            return round(self.sampled_peak / MIB, 1) if self.sampled_peak else None

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (the kernel frees them a moment after a
        kill; a large one, OOM-killed on a loaded machine, can take seconds). What is still in it
        after a moment belongs to a job that has ended: it is SIGKILLed, and the cgroup removed
        in the background (`_reaper`) once the kernel has let its processes go."""
        for _ in range(10):
            if _rmdir(self.path) is not False:
                return
            time.sleep(0.02)
        for pid in _procs(self.path):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # gone meanwhile
        _reaper.add(self.path)


def _rmdir(path: Path) -> bool | None:
    """True: removed (or gone); False: processes still in it (EBUSY); None: it cannot be removed."""
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        return False if exc.errno == errno.EBUSY else None


def _procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


class _Reaper:
    """One thread that removes the cgroups whose processes were still leaving, every REAP_EVERY s
    for REAP_FOR s each; one it cannot remove by then is logged, naming it."""

    REAP_EVERY, REAP_FOR = 0.1, 120.0

    def __init__(self) -> None:
        self._due: dict[Path, float] = {}  # path -> when to give up
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            self._due[path] = time.monotonic() + self.REAP_FOR
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="htc-cgroup-reaper", daemon=True)
                self._thread.start()

    def pending(self) -> list[Path]:
        with self._lock:
            return list(self._due)

    def _loop(self) -> None:
        while True:
            time.sleep(self.REAP_EVERY)
            with self._lock:
                due = dict(self._due)
            now = time.monotonic()
            for path, until in due.items():
                done = _rmdir(path)
                if done or done is None or now > until:
                    if not done:
                        log.warning("memory cgroup %s left behind: its processes did not go", path)
                    with self._lock:
                        self._due.pop(path, None)
            with self._lock:
                if not self._due:
                    self._thread = None
                    return


_reaper = _Reaper()


def make_cage(parent: Path | None, limit_mib: int | None, name: str, swap_mib: int = 0,
              version: int = 1) -> Cage | None:
    """A new memory cgroup `name` under `parent` limited to `limit_mib` of memory (None: no limit,
    for its peak alone) and to `swap_mib` of swap beyond it where the kernel accounts swap; None
    where it cannot be made."""
    if parent is None:
        return None
    cage, path = Cage(parent / name, limit_mib, version), parent / name
    try:
        path.mkdir(exist_ok=True)
        if limit_mib:
            (path / cage.files["limit"]).write_text(str(int(limit_mib) * MIB))
    except OSError as exc:
        log.warning("cannot make the memory cgroup %s: %s", path, exc)
        try:
            path.rmdir()
        except OSError:
            pass
        return None
    if limit_mib:
        swap = int(swap_mib) * MIB + (int(limit_mib) * MIB if version == 1 else 0)  # v1: memory + swap
        try:
            (path / cage.files["swap"]).write_text(str(swap))
        except OSError:  # no swap accounting in this kernel
            pass
    return cage


def own_cgroups(text: str) -> tuple[str | None, str | None]:
    """This process's v1 memory cgroup and its v2 cgroup, from /proc/self/cgroup's `text`.

    >>> own_cgroups("4:memory:/a/b\\n0::/\\n")
    ('/a/b', '/')
    >>> own_cgroups("0::/user.slice/user-1000.slice/session-3.scope\\n")
    (None, '/user.slice/user-1000.slice/session-3.scope')
    """
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2].strip()
        elif "memory" in parts[1].split(","):
            v1 = parts[2].strip()
    return v1, v2


def v2_mount(mounts: str) -> Path | None:
    """Where the unified hierarchy is mounted, from /proc/self/mounts' `mounts`.

    >>> v2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\\n")
    PosixPath('/sys/fs/cgroup')
    """
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _clear_stale(base: Path) -> None:
    """Remove the `htc-<pid>` directories of processes that died (empty once their jobs ended)."""
    for stale in base.glob("htc-*"):
        if stale.name[4:].isdigit() and not Path(f"/proc/{stale.name[4:]}").exists():
            try:  # another process may be clearing the same one
                for d in [*stale.glob("job-*"), *stale.glob("call-*"), stale]:
                    d.rmdir()
            except OSError:
                pass


def v1_parent(own: str, pid: int, root: Path = V1) -> Path | None:
    """`root/own/htc-<pid>`, made, where this process may make v1 memory cgroups; else None."""
    mine = root / own.lstrip("/")
    _clear_stale(mine)
    parent = mine / f"htc-{pid}"
    try:
        parent.mkdir(exist_ok=True)
        (parent / "memory.use_hierarchy").read_text()
    except OSError:
        return None
    return parent


def _writable(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK) and os.access(d / "cgroup.procs", os.W_OK)


def v2_base(mount: Path, own: str) -> Path | None:
    """The nearest cgroup (at or above the parent of `own`, this process's v2 cgroup) below which
    this user may make memory cgroups and move its processes: `memory` in its subtree_control, its
    directory and cgroup.procs writable. The root cgroup (`own` is "/") may hold processes and
    give controllers at once, so there it is the root itself."""
    here = mount / own.strip("/")
    candidates = [here] if here == mount else [p for p in here.parents if p == mount or mount in p.parents]
    for base in candidates:
        try:
            if "memory" in (base / "cgroup.subtree_control").read_text().split() and _writable(base):
                return base
        except OSError:
            continue
    return None


def v2_parent(mount: Path, own: str, pid: int) -> Path | None:
    """`<base>/htc-<pid>`, made and given the memory controller, where `v2_base` finds a place; else None."""
    base = v2_base(mount, own)
    if base is None:
        return None
    _clear_stale(base)
    parent = base / f"htc-{pid}"
    try:
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        log.warning("cannot make %s a memory cgroup for jobs: %s", parent, exc)
        return None
    return parent


def find_parent(pid: int) -> tuple[Path, int] | None:
    """Where this process may make its jobs' memory cgroups, and the cgroup version: v1 where the
    memory controller is on v1 (as on this test machine), else v2; None where neither can be made."""
    try:
        v1, v2 = own_cgroups(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if v1 is not None:
        parent = v1_parent(v1, pid)
        return (parent, 1) if parent is not None else None
    if v2 is None:
        return None
    try:
        mount = v2_mount(Path("/proc/self/mounts").read_text())
    except OSError:
        return None
    parent = v2_parent(mount, v2, pid) if mount is not None else None
    return (parent, 2) if parent is not None else None
