"""A memory watchdog on jobs' process trees, where no memory cgroup can be made for them.

One thread per process watches every job registered with it (`watch`), every `INTERVAL` seconds:
it lists /proc once, learns each new process's parent and session from /proc/<pid>/stat (kept
while the process lives), and finds each job's tree: the processes of its session (a command job
leads one: `start_new_session`) and every descendant of its first process. The tree's resident
memory is its one process's RSS (/proc/<pid>/statm), or for several processes the sum of their
proportional set sizes (`Pss`, /proc/<pid>/smaps_rollup: a page two of them share counts once,
so forked children's copy-on-write pages are not counted twice). When the sum passes the job's
limit, every process of the tree is SIGKILLed at once and the watch says so (`killed`); the
highest sum seen is the job's peak.

What it does not do: catch a job that grows past its limit and back within one interval (its peak
may be missed; a fast grower is killed up to one interval's growth above its limit), or follow a
process that leaves both its session and its parent (setsid, then its parent exits). A job in a
bwrap sandbox (`--unshare-pid`) cannot do the latter: its orphans stay below the sandbox's init.

>>> w = watch(os.getpid(), None, session=False)   # no limit: measured only
>>> time.sleep(3 * INTERVAL); w.stop(); w.peak_mib > 1
True
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

INTERVAL = 0.05  # seconds between samples: a fast grower (1 GiB/s) passes its limit by ~50 MiB at most
MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(eq=False)
class Watch:
    """One job's tree under watch: `root` its first process; `session` whether the processes of
    root's session belong to it too; `limit_mib` None for measuring only; `cgroup` a `Cage` whose
    memory.current is sampled instead (v2 without memory.peak: the kernel holds its limit)."""

    root: int
    limit_mib: int | None
    session: bool = True
    cgroup: Any = None
    private: bool = False  # count only pages no process outside the tree shares (a forked call's tree)
    below: bool = False  # the tree is root's descendants, root left out (a confined call's zygote)
    peak: int = 0  # bytes: the highest sum seen
    killed: bool = False  # the tree passed its limit and was killed
    pids: set[int] = field(default_factory=set)  # the tree at the last sample
    _done: bool = False

    @property
    def peak_mib(self) -> float | None:
        return round(self.peak / MIB, 1) if self.peak else None

    def stop(self) -> None:
        """Stop watching (the job ended). Takes a last sample first if the tree is still there."""
        _DOG.remove(self)


def watch(root: int, limit_mib: int | None, *, session: bool = True, cgroup: Any = None,
          private: bool = False, below: bool = False) -> Watch:
    """Start watching the process tree of `root` (see the module docstring); `stop()` the watch
    when the job ended. `private`: for a tree forked from a process that goes on (a Python call's,
    `call_sandbox.py`), whose copy-on-write pages are that process's until written, count each
    process's private pages only (Private_Clean + Private_Dirty), as a cgroup charges only the pages
    the tree itself touched; pages its own processes share after a fork then go uncounted. `below`:
    the tree is what runs below `root`, which is neither counted nor killed (a zygote that forks a
    confined call and is the reaper of what the call leaves: `call_sandbox.py`)."""
    if below and root <= 1:
        raise ValueError(f"no watch below pid {root}: that is every process of this machine")
    w = Watch(root, limit_mib, session, cgroup, private, below)
    _DOG.add(w)
    return w


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
    return int(fields[1]), int(fields[3])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _rollup(pid: int, keys: tuple[bytes, ...]) -> int:
    """The sum of `keys` (kB lines) in /proc/<pid>/smaps_rollup, in bytes."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(keys):
                    total += int(line.split()[1]) * 1024
    except FileNotFoundError:  # gone, or no smaps_rollup (kernel < 4.14): RSS, shared pages counted in each
        return _rss(pid)
    except (OSError, ValueError, IndexError):
        return 0
    return total


def resident(pids: set[int], private: bool = False) -> int:
    """Bytes the processes `pids` hold resident together: RSS for one, the sum of their Pss for
    more; with `private`, the sum of their private pages."""
    if private:
        return sum(_rollup(p, (b"Private_Clean:", b"Private_Dirty:")) for p in pids)
    if len(pids) == 1:
        return _rss(next(iter(pids)))
    return sum(_rollup(p, (b"Pss:",)) for p in pids)


class _Watchdog:
    """The one thread of this process that samples every watch."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watches: list[Watch] = []
        self._known: dict[int, tuple[int, int]] = {}  # pid -> (ppid, session), while it lives
        self._owner = 0  # the pid whose thread runs (a forked child starts its own)

    def add(self, w: Watch) -> None:
        with self._lock:
            if self._owner != os.getpid():
                self._owner, self._watches, self._known = os.getpid(), [], {}
                threading.Thread(target=self._loop, name="htc-memory-watch", daemon=True).start()
            self._watches.append(w)
            self._lock.notify_all()

    def remove(self, w: Watch) -> None:
        with self._lock:
            if w._done:
                return
            self._sample([w])
            w._done = True
            if w in self._watches:
                self._watches.remove(w)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                try:
                    self._sample(list(self._watches))
                except Exception:  # the watchdog must outlive any one bad sample
                    log.exception("memory watchdog: a sample failed")
            time.sleep(INTERVAL)

    def _sample(self, watches: list[Watch]) -> None:
        trees = [w for w in watches if w.cgroup is None]
        for w in watches:
            if w.cgroup is not None:
                w.cgroup.sample()
        if not trees:
            return
        children = self._scan()
        for w in trees:
            w.pids = self._tree(w, children)
            if not w.pids:
                continue
            used = resident(w.pids, w.private)
            if w.limit_mib and used > w.limit_mib * MIB and not w.killed:
                used = self._recheck(w, children)  # before a kill, the tree from fresh stat lines
            w.peak = max(w.peak, used)
            if w.limit_mib and used > w.limit_mib * MIB and not w._done:
                w.killed = True
            if w.killed and not w._done:
                _kill(w)

    def _scan(self) -> dict[int, list[int]]:
        """Every process's children, from /proc (a new process's stat read once)."""
        live = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        for gone in self._known.keys() - live:
            del self._known[gone]
        for pid in live:
            known = self._known.get(pid)
            if known is None or known[0] not in live:  # new, or its parent died (reparented)
                got = _stat(pid)
                if got is not None:
                    self._known[pid] = got
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in self._known.items():
            children.setdefault(ppid, []).append(pid)
        return children

    def _recheck(self, w: Watch, children: dict[int, list[int]]) -> int:
        """The tree's memory again, its members' parent and session read afresh: a pid known from
        an earlier sample that ended and was reused in between must not be counted, or killed."""
        changed = False
        for pid in w.pids:
            got = _stat(pid)
            if got != self._known.get(pid):
                changed = True
                if got is None:
                    self._known.pop(pid, None)
                else:
                    self._known[pid] = got
        if changed:
            children = {}
            for pid, (ppid, _) in self._known.items():
                children.setdefault(ppid, []).append(pid)
        w.pids = self._tree(w, children)
        return resident(w.pids, w.private) if w.pids else 0

    def _tree(self, w: Watch, children: dict[int, list[int]]) -> set[int]:
        start = {p for p, (_, sid) in self._known.items() if sid == w.root} if w.session else set()
        if w.below:
            start.update(children.get(w.root, ()))
        elif w.root in self._known:
            start.add(w.root)
        tree, todo = set(), list(start)
        while todo:
            pid = todo.pop()
            if pid not in tree:
                tree.add(pid)
                todo.extend(children.get(pid, ()))
        return tree


def _kill(w: Watch) -> None:
    """SIGKILL every process of the tree (and its session's process group, for any forked since)."""
    for pid in w.pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if w.session:
        try:
            os.killpg(w.root, signal.SIGKILL)
        except OSError:
            pass


_DOG = _Watchdog()
