"""Python calls confined like command jobs, without starting another interpreter.

A worker (local, or a SLURM pilot) runs the calls of one dask task in a child it forks. The child
enters new mount and PID namespaces (and a user namespace when it is not root, as bwrap does)
in which the data root shows what bwrap shows a command job (`sandbox.bwrap_argv`): an empty
read-only tmpfs with the task directory bound read-write (its `.htc/` read-only but
`checkpoints/`) and the project's shared directory read-only. Other tasks, other projects, the
ledger and the keys are not there, so `open()` fails with the OS's own error. The calls run in a
new PID namespace (below its init) with a /proc of its own, so they cannot reach the worker's
view through /proc/<pid>/root. Their reports come back pickled through a pipe.

The function was loaded (its modules imported) in the worker before the fork, so a confined call
costs three forks and a few mounts, not an interpreter start (bench/call_sandbox.py). Whatever the call
starts dies with it (its namespace's init exits when the call ends), and each process is
SIGKILLed if its parent dies. A confined call cannot use its worker's dask connection (`get_client()`).

>>> run_confined(None, lambda: 6 * 7)   # no view: the work runs here, unconfined
42
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pickle
import select
import signal
import tempfile
import threading
import traceback
from typing import Any, Callable, Optional, TypeVar

import cloudpickle

from htc_notebook.backends.memory_limit import Verdict, hold
from htc_notebook.backends.base import oom_reason, watched_oom_reason

T = TypeVar("T")

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x20, 0x1000, 0x4000, 0x40000, 0x200000
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


class ConfinementError(OSError):
    """The call could not be confined (no namespaces here, or a mount refused): nothing of it ran."""


class OutOfMemory(RuntimeError):
    """The OOM killer stopped the confined call at its memory limit."""


class CallDied(RuntimeError):
    """The confined call's process died before it reported (`signal`: the signal that killed it, 0: none)."""

    def __init__(self, message: str, signal: int):
        super().__init__(message)
        self.signal = signal


def _call(what: str, rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ConfinementError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _call(f"mount {target}", _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)))


def _locked_flags(path: str) -> int:
    """The flags of the mount `path` is on that a remount inside a user namespace must keep."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | ST_NOATIME | ST_NODIRATIME)
    return flags | (MS_RELATIME if f & ST_RELATIME else 0)


def _bind(source: str, target: str, *, readonly: bool) -> None:
    """Bind `source` at `target`, then set it read-only or writable (a bind copies its source's flags)."""
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | (MS_RDONLY if readonly else 0) | _locked_flags(target))


def _enter(view: Any) -> None:
    """Unshare the mount and PID namespaces (and the user namespace when not root) and show the data
    root as `view` allows. The PID namespace takes effect for the next child."""
    uid, gid = os.getuid(), os.getgid()
    os.makedirs(view.checkpoints, exist_ok=True)
    _call("unshare", _libc.unshare(CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWUSER if uid else 0)))
    if uid:  # map ourselves, so files we write keep our owner
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
    # the bind sources, opened in the new namespace (a bind from another namespace's mount is refused)
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (view.task_dir, view.shared_dir)}
    _mount("tmpfs", view.root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, fd in fds.items():  # reached through their fds: the tmpfs hides their paths
        os.makedirs(path, exist_ok=True)
        _bind(f"/proc/self/fd/{fd}", path, readonly=path == view.shared_dir)
        os.close(fd)
    _bind(view.internal, view.internal, readonly=True)
    _bind(view.checkpoints, view.checkpoints, readonly=False)
    _mount(None, view.root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _die_with_parent(parent: int | None = None, lifeline: int | None = None) -> None:
    """Be SIGKILLed when the parent dies, and exit now if it died before that was asked (between
    the fork and here: a worker SIGKILLed then left its call running, seen on a pilot). How this
    process knows: `parent`, the parent's pid as seen here, or `lifeline`, a pipe's read end whose
    write end only the parent holds (EOF: gone)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if (parent is not None and os.getppid() != parent) or (
            lifeline is not None and select.select([lifeline], [], [], 0)[0]):
        os._exit(128 + signal.SIGKILL)


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _exit_code(status: int) -> int:
    """A wait status as a shell would give it: the exit code, or 128 + the killing signal."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _child(view: Any, work: Callable[[], Any], w: int, parent: int) -> int:
    """In the forked child: confine, then start the namespace's init, which runs `work` in a child of
    its own (so the call's signals behave as anywhere: init ignores the ones it has no handler for)."""
    _die_with_parent(parent)
    try:
        _enter(view)
    except Exception as exc:  # noqa: BLE001 - reported to the worker as the call's failure
        _send(w, pickle.dumps(("confine", f"{type(exc).__name__}: {exc}")))
        return 0
    lifeline, held = os.pipe()  # init sees no parent pid (it is outside init's namespace)
    init = os.fork()
    if init == 0:  # pid 1 of the new PID namespace: when it exits, everything the call left dies
        code = 70
        try:
            os.close(held)
            _die_with_parent(lifeline=lifeline)
            os.close(lifeline)
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            call = os.fork()
            if call == 0:
                try:
                    _die_with_parent(1)
                    _send(w, cloudpickle.dumps(("ok", work())))
                except BaseException as exc:  # noqa: BLE001 - the call's error, SystemExit included, goes to the parent
                    _send(w, pickle.dumps(("error", "".join(traceback.format_exception(exc)).strip())))
                finally:
                    os._exit(0)
            os.close(w)
            while True:  # reap what the call orphaned, until the call itself ends
                pid, status = os.wait()
                if pid == call:
                    code = _exit_code(status)
                    break
        except BaseException as exc:  # noqa: BLE001 - a forked child must report and _exit, whatever failed
            _send(w, pickle.dumps(("confine", f"{type(exc).__name__}: {exc}")))
        finally:
            os._exit(code)
    os.close(w)
    os.close(lifeline)
    return _exit_code(os.waitpid(init, 0)[1])


_CHILDREN: dict[int, int] = {}  # thread ident -> the confined call it waits for (its child's pid)
_STOPPED: set[int] = set()  # threads whose dask task was cancelled: they start no call until `resume`


class CallStopped(RuntimeError):
    """The call's dask task was cancelled: it was stopped (or not started)."""


def stop_calls_of(thread: int) -> bool:
    """Stop the confined calls of thread `thread` of this process: SIGKILL the one it waits for (its
    pid namespace goes with its init: the whole call) and start no other until `resume(thread)`. A
    cancelled dask task's thread runs on, and so would its calls, untracked
    (`worker.StopCancelledCalls`). True if a call was killed."""
    _STOPPED.add(thread)
    return _kill(_CHILDREN.get(thread))


def resume(thread: int) -> None:
    """Thread `thread` runs calls again (a new dask task of its own)."""
    _STOPPED.discard(thread)


def _kill(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def run_confined(view: Any, work: Callable[[], T], memory_mib: int | None = None,
                 measured: Optional[Callable[[Verdict], None]] = None) -> T:
    """`work()` run in a child confined to `view` (a `sandbox.JobView`; None: run here). Its value
    comes back pickled. With `memory_mib`, the child and its descendants are held to it, by a
    memory cgroup of their own where this process may make one, else by the memory watchdog
    (`memory_limit.py`); either way their peak is measured, and `measured` is called with how the
    limit was held, whether a process was killed for memory and the peak (also when this raises).
    Raises ConfinementError if the child could not be confined, OutOfMemory if a process of it was
    killed for memory (even if `work` returned), RuntimeError if `work` raised or its process died
    otherwise (saying how)."""
    if view is None:
        if measured is not None:
            measured(Verdict("none" if memory_mib else None, False, None))  # the worker's own process: not held
        return work()
    me = threading.get_ident()
    if me in _STOPPED:
        raise CallStopped("not started: its dask task was cancelled")
    limit = hold(memory_mib, f"call-{os.getpid()}-{next(_calls)}")
    r, w = os.pipe()
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            limit.join()  # joined before anything else: all the call allocates counts
            code = _child(view, work, w, worker)
        finally:
            os._exit(code)
    os.close(w)
    limit.started(pid, session=False, forked=True)  # no cgroup: the watchdog holds the call's tree
    chunks = []
    _CHILDREN[me] = pid
    if me in _STOPPED:  # cancelled while it was being forked
        _kill(pid)
    try:
        with os.fdopen(r, "rb") as f:
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        _CHILDREN.pop(me, None)
        memory = limit.ended()
        if measured is not None:
            measured(memory)
    try:
        kind, value = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - nothing, or half a report: the call died before it had reported
        kind, value = "died", None
    if memory.oom:  # a process of the call was killed for memory: so is the call, whatever it returned
        raise OutOfMemory(oom_reason(memory_mib) if memory.how == "cgroup"
                          else watched_oom_reason(memory_mib, memory.peak_mib))
    if kind == "died":
        code = _exit_code(status)  # the call's, passed on by init and the child; or how the child died
        sig = code - 128 if code > 128 else 0
        how = f"killed by signal {sig}: {signal.strsignal(sig)}" if sig else f"exit code {code}"
        raise CallDied(f"the confined call's process died ({how}) before it reported", sig)
    if kind == "confine":
        raise ConfinementError(f"could not confine the call to its task's storage: {value}")
    if kind == "error":
        raise RuntimeError(value)
    return value


_calls = itertools.count()  # names this process's calls' memory cgroups


def check_call_sandbox(profile_name: str) -> None:
    """Refuse (BackendError) if Python calls cannot be confined on this machine, before a job is
    sent: one empty confined call in a throwaway view (the machine is checked, not a task's
    directories, which a dry run does not make), once per profile and process (on SLURM this checks
    the submitting machine only; a node that cannot fails its calls saying why)."""
    if profile_name not in _checked:
        from htc_notebook.backends.sandbox import JobView
        from htc_notebook.errors import BackendError

        try:
            with tempfile.TemporaryDirectory(prefix="htc-probe-") as tmp:
                for part in ("task", "shared"):
                    os.mkdir(os.path.join(tmp, part))
                run_confined(JobView(tmp, os.path.join(tmp, "task"), os.path.join(tmp, "shared")), lambda: None)
        except (ConfinementError, RuntimeError) as exc:
            raise BackendError(f"profile {profile_name!r} runs Python calls confined to their task's storage "
                               f"(sandbox: bwrap), but this machine cannot confine them: {exc}. Allow user "
                               "namespaces, or set `sandbox: none` in the profile to run them unconfined") from None
        _checked.add(profile_name)


_checked: set[str] = set()  # profiles whose calls this process has confined once
