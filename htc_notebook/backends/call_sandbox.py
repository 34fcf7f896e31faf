"""Python calls confined like command jobs, without starting another interpreter.

A worker (local, or a SLURM pilot) runs the calls of one dask task in a process confined to the
task's view of the data root: in new mount and PID namespaces (and a user namespace when it is not
root, as bwrap does) the data root shows what bwrap shows a command job (`sandbox.bwrap_argv`): an
empty read-only tmpfs with the task directory bound read-write (its `.htc/` read-only but
`checkpoints/`) and the project's shared directory read-only. Other tasks, other projects, the
ledger and the keys are not there, so `open()` fails with the OS's own error. The calls run in a
PID namespace (their zygote's, below) with a /proc of its own, so they cannot reach the worker's
view through /proc/<pid>/root; they hold no capability, so they cannot undo the view (umount its
tmpfs). Their reports come back pickled through a pipe.

The zygote. Setting a view up (a fork of the worker, unshare, the mounts, a PID namespace's init)
is done once per worker process and view, not per call, and kept:

    worker --fork--> z0: enters the namespaces, mounts the view --fork--> zygote (pid 1, /proc)
                                                                            --fork--> call, call, ...

- The zygote is pid 1 of the view's PID namespace. It serves one call at a time: it forks the call,
  reaps what the call orphans until the call ends, then SIGKILLs every other process of its
  namespace and reaps them, and only then says the call is done. So whatever a call starts dies
  with it, as with a namespace per call. A call cannot kill its zygote (the kernel keeps SIGKILL
  from inside a namespace off its pid 1) nor ptrace it (the zygote is not dumpable, and has given
  up every capability before it runs anything of a call).
- A zygote serves one view (one task of one project), never another: the worker keeps its idle
  zygotes by view (at most MAX_IDLE, the least recently used ended first, and none idle longer than
  IDLE_SECONDS: a zygote holds its worker's memory pages as they were when it was forked); a view
  with a call running gets another zygote for a second call at once.
- It keeps none of the worker's file descriptors but its channel (a socket pair); the call closes
  that too before it runs, and reports through a pipe of its own (passed with the request). The
  worker decodes a report as plain data only (`_Plain`): a call cannot make it load a class.
- Functions: a zygote forked early has not loaded the functions of later tasks. Each call carries
  its cloudpickled function (`functions`, by digest); the zygote loads it once, before it forks the
  call (a function's imports run there, confined to its view), and keeps it (`Loaded`).
- Each call is its own process: its memory cgroup (which it joins before anything else) or the
  watchdog (on the zygote's descendants, the zygote left out), its peak, its cwd, environment and
  logs (`worker.run_call`), its report. Cancelling it (`stop_calls_of`) SIGKILLs z0: the zygote
  dies with it (PR_SET_PDEATHSIG), its namespace and the call with the zygote.
- It dies with its worker (z0 is SIGKILLed when the worker dies, the zygote when z0 dies; zygotes
  are forked by one thread of the worker's that lives as long as it does, `_make`). A zygote
  that died (killed, OOM) is found dead when next taken, and a new one is made; one that dies as a
  call is handed to it is replaced once.

A confined call costs one fork (of a process the size of its worker) and a few messages, not an
interpreter start (bench/call_sandbox.py). A confined call cannot use its worker's dask connection
(`get_client()`).

>>> run_confined(None, lambda: 6 * 7)   # no view: the work runs here, unconfined
42
"""

from __future__ import annotations

import array
import ctypes
import io
import itertools
import os
import pickle
import queue
import select
import signal
import socket
import struct
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Optional, TypeVar

import cloudpickle

from htc_notebook.backends.memory_limit import Hold, Verdict, hold
from htc_notebook.backends.base import oom_reason, watched_oom_reason

T = TypeVar("T")

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x20, 0x1000, 0x4000, 0x40000, 0x200000
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_HEADER = struct.Struct("!cI")  # a zygote channel's message: tag, payload length
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_STATUS = struct.Struct("i")  # a wait status

_libc = ctypes.CDLL(None, use_errno=True)


class ConfinementError(OSError):
    """The call could not be confined (no namespaces here, or a mount refused): nothing of it ran."""


class OutOfMemory(RuntimeError):
    """The OOM killer stopped the confined call at its memory limit."""


class CallTimedOut(RuntimeError):
    """The confined call ran past its time limit and was killed (its whole namespace with it)."""


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


def _drop_privileges() -> None:
    """Give up every capability for good: a confined call may not undo its view (umount the tmpfs over
    the data root, mount another /proc), which a process with CAP_SYS_ADMIN in its mount namespace's
    user namespace may (an ordinary user's call has it in the namespace it made; root's, everywhere).
    No new privileges (an exec'd program, setuid or root's, gains no capability it does not hold), the
    bounding set emptied where this process may (CAP_SETPCAP; a container's root may not: no new
    privileges holds alone), then no effective, permitted or inheritable capability."""
    _call("no_new_privs", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    _call("capset", _libc.capset(header, (ctypes.c_uint32 * 6)()))


def _keep_only(*fds: int) -> None:
    """Keep stdin, stdout, stderr and `fds` only: every other file descriptor (its worker's dask
    connections, other zygotes' channels) is made /dev/null, not closed, so that a Python object of
    the worker's that still names one closes /dev/null, never a descriptor opened here since."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir(f"/proc/{os.getpid()}/fd"):
        fd = int(name)
        if fd > 2 and fd != null and fd not in fds:
            try:
                os.dup2(null, fd)
            except OSError:  # the listing's own descriptor, closed by now
                pass
    os.close(null)


def _put(sock: socket.socket, tag: bytes, payload: bytes = b"", fds: tuple[int, ...] = ()) -> None:
    """One message on a zygote's channel: a tag, a length, the payload (and file descriptors)."""
    data = _HEADER.pack(tag, len(payload)) + payload
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _get(sock: socket.socket, fds: int = 0) -> tuple[bytes, bytes, list[int], int] | None:
    """The next message on a zygote's channel: (tag, payload, file descriptors, the sender's pid as
    this process sees it, where the socket passes credentials, else 0); None at its end."""
    size = socket.CMSG_SPACE(_CREDS.size) + (socket.CMSG_SPACE(fds * 4) if fds else 0)
    head, ancillary, _, _ = sock.recvmsg(_HEADER.size, size)
    if not head:
        return None
    while len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            return None
        head += more
    received, sender = [], 0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received += list(array.array("i", data[:len(data) - len(data) % 4]))
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            sender = _CREDS.unpack(data[:_CREDS.size])[0]
    tag, length = _HEADER.unpack(head)
    chunks, left = [], length
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return tag, b"".join(chunks), received, sender


class _Plain(pickle.Unpickler):
    """Unpickles plain data only (containers, strings, bytes, numbers): what a call sends its
    worker cannot make the worker load a class or run a function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a confined call's report may hold plain data only, not {module}.{name}")


def _plain(data: bytes) -> Any:
    return _Plain(io.BytesIO(data)).load()


class Loaded:
    """A function its zygote loaded (run_confined's `functions`, named by digest), for `work` to
    call: `get()` it in the call."""

    def __init__(self, digest: str):
        self.digest = digest

    def get(self) -> Any:
        """The function, or LoadError saying why its zygote could not load it."""
        if self.digest in _LOAD_FAILED:
            raise LoadError(_LOAD_FAILED[self.digest])
        return _FUNCTIONS[self.digest]


class LoadError(RuntimeError):
    """A function sent with a confined call could not be loaded (unpickled) in its zygote."""


_FUNCTIONS: dict[str, Any] = {}  # in a zygote: the functions it loaded, by digest
_LOAD_FAILED: dict[str, str] = {}  # in a zygote: the functions of this call it could not load, and why


def _zygote(view: Any, sock: socket.socket, lifeline: int) -> None:
    """Pid 1 of the zygote's PID namespace, in its mount namespace with the view mounted: mount a /proc
    of the namespace, give up every privilege, say it is ready, then serve calls one at a time."""
    _die_with_parent(lifeline=lifeline)
    os.close(lifeline)
    for sig in signal.valid_signals():  # pid 1 ignores what it has no handler for: no Python handler then
        if sig not in (signal.SIGKILL, signal.SIGSTOP) and callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # its calls (same user, no capability) may not ptrace it
    _drop_privileges()
    _put(sock, b"R")  # the worker learns this process's pid from the socket's credentials
    while True:
        got = _get(sock, fds=1)
        if got is None:  # the worker closed the channel
            os._exit(0)
        tag, payload, fds, _ = got
        functions, work, limit = pickle.loads(payload)  # from the worker: trusted
        _LOAD_FAILED.clear()
        for digest, pickled in functions.items():  # loaded once, kept for the next calls
            if digest not in _FUNCTIONS:
                try:
                    _FUNCTIONS[digest] = cloudpickle.loads(pickled)
                except Exception as exc:  # noqa: BLE001 - the user's imports: any error is the call's
                    _LOAD_FAILED[digest] = f"{type(exc).__name__}: {exc}"
        call = os.fork()
        if call == 0:
            _call_child(sock, fds[0], work, limit)
        os.close(fds[0])
        _put(sock, b"F")
        while True:  # reap what the call orphaned, until the call itself ends
            pid, status = os.wait()
            if pid == call:
                break
        try:  # then whatever the call left: every process here but this one
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:  # nothing left
            pass
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
        _put(sock, b"D", _STATUS.pack(status))


def _call_child(sock: socket.socket, w: int, work: bytes, limit: Any) -> None:
    """A call, forked from its zygote: join its memory cgroup first (all it allocates counts), run,
    send the report through `w`."""
    try:
        try:
            if limit is not None:
                limit.join()
            sock.close()  # the call reaches neither its zygote's channel nor its worker
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # its /proc files are its user's (the watchdog reads them)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _send(w, cloudpickle.dumps(("ok", cloudpickle.loads(work)())))
        except BaseException as exc:  # noqa: BLE001 - the call's error, SystemExit included, goes to the worker
            _send(w, pickle.dumps(("error", "".join(traceback.format_exception(exc)).strip())))
    finally:
        os._exit(0)


class _Zygote:
    """A confined process for the calls of one view in this process (see the module docstring):
    `z0` its parent (this process's child, outside the namespaces), `pid` the zygote itself."""

    def __init__(self, view: Any):
        self.view = view
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        worker = os.getpid()
        z0 = os.fork()
        if z0 == 0:
            code = 70
            try:
                _keep_only(theirs.fileno())
                _die_with_parent(worker)
                try:
                    _enter(view)
                except Exception as exc:  # noqa: BLE001 - reported to the worker as the call's failure
                    _put(theirs, b"E", f"{type(exc).__name__}: {exc}".encode())
                    os._exit(0)
                lifeline, held = os.pipe()  # the zygote sees no parent pid (it is outside its namespace)
                zygote = os.fork()
                if zygote == 0:
                    try:
                        os.close(held)
                        _zygote(view, theirs, lifeline)
                    except BaseException as exc:  # noqa: BLE001 - a forked child must report and _exit
                        _put(theirs, b"E", f"{type(exc).__name__}: {exc}".encode())
                    finally:
                        os._exit(70)
                os.close(lifeline)
                theirs.close()
                code = _exit_code(os.waitpid(zygote, 0)[1])
            finally:
                os._exit(code)
        theirs.close()
        self.z0, self.sock, self.pid = z0, mine, 0
        self.code: int | None = None  # its parent's exit code, once reaped
        self.idle_since = 0.0  # time.monotonic() when it last went idle
        got = _get(mine)
        if got is None or got[0] != b"R":
            self.close()
            raise ConfinementError(got[1].decode() if got is not None and got[0] == b"E"
                                   else "the confined process ended before it was ready")
        self.pid = got[3]  # as this process sees it (the socket's credentials)
        if self.pid <= 1:  # never watch (or kill) the processes below this machine's init
            self.close()
            raise ConfinementError("the confined process's pid did not come with its word")

    def alive(self) -> bool:
        if self.code is None:
            pid, status = os.waitpid(self.z0, os.WNOHANG)
            if pid:
                self.code = _exit_code(status)
        return self.code is None

    def close(self) -> int:
        """End the zygote (its namespace with it), and reap it: its parent's exit code (the zygote's,
        or 128 + 9 if it was still there)."""
        self.sock.close()
        if self.code is None:
            _kill(self.z0)  # not reaped yet: the pid is still its
            self.code = _exit_code(os.waitpid(self.z0, 0)[1])
        return int(self.code)


MAX_IDLE = 4  # idle zygotes a process keeps: beyond, the least recently used ends
IDLE_SECONDS = 60.0  # an idle zygote older than this ends (it holds its worker's pages as they were at its fork)
_IDLE: dict[Any, list[_Zygote]] = {}  # view -> its idle zygotes
_IDLE_LOCK = threading.Lock()
_OWNER = [0]  # the pid whose zygotes _IDLE holds, and whose thread _MAKER feeds (a forked child has neither)
_MAKER: list[queue.SimpleQueue] = []


def _take(view: Any) -> _Zygote:
    """An idle zygote of `view` (that is still there), else a new one."""
    with _IDLE_LOCK:
        if _OWNER[0] != os.getpid():
            _OWNER[0] = os.getpid()
            _IDLE.clear()
            _MAKER.clear()
        idle = _IDLE.get(view, [])
        while idle:
            zygote = idle.pop()
            if zygote.alive():
                return zygote
            zygote.close()
        if not _MAKER:
            _MAKER.append(queue.SimpleQueue())
            threading.Thread(target=_make, args=(_MAKER[0],), name="htc-zygotes", daemon=True).start()
        maker = _MAKER[0]
    answer: queue.SimpleQueue = queue.SimpleQueue()
    maker.put((view, answer))
    made = answer.get()
    if isinstance(made, BaseException):
        raise made
    return made


def _make(requests: queue.SimpleQueue) -> None:
    """The one thread of this process that forks zygotes. PR_SET_PDEATHSIG follows the thread that
    forked, not its process, and the threads of dask's pool may end before their worker: a zygote
    forked by one of them would die with it, maybe under a call another thread handed it."""
    while True:
        view, answer = requests.get()
        try:
            answer.put(_Zygote(view))
        except BaseException as exc:  # noqa: BLE001 - the caller raises it
            answer.put(exc)


def _give_back(zygote: _Zygote) -> None:
    """Keep `zygote` for its view's next call; end those idle too long, and the least recently used
    beyond MAX_IDLE."""
    zygote.idle_since = time.monotonic()
    with _IDLE_LOCK:
        _IDLE.setdefault(zygote.view, []).append(zygote)
        idle = sorted((z for zs in _IDLE.values() for z in zs), key=lambda z: z.idle_since)  # oldest first
        ending = [z for z in idle if zygote.idle_since - z.idle_since > IDLE_SECONDS]
        ending += [z for z in idle if z not in ending][:max(0, len(idle) - len(ending) - MAX_IDLE)]
        for z in ending:
            _IDLE[z.view].remove(z)
            if not _IDLE[z.view]:
                del _IDLE[z.view]
            z.close()


def forget(view: Any) -> None:
    """End this process's idle zygotes of `view` (a view that is gone)."""
    with _IDLE_LOCK:
        for zygote in _IDLE.pop(view, []):
            zygote.close()


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
                 measured: Optional[Callable[[Verdict], None]] = None,
                 functions: Optional[dict[str, bytes]] = None, seconds: float | None = None) -> T:
    """`work()` run in a child confined to `view` (a `sandbox.JobView`; None: run here), forked by the
    view's zygote (see the module docstring). `work` goes there cloudpickled; `functions` (digest ->
    cloudpickled function) are loaded there once and kept: `work` calls them through `Loaded(digest)`.
    Its value comes back pickled, and must be plain data (containers, strings, bytes, numbers). With
    `memory_mib`, the child and its descendants are held to it, by a memory cgroup of their own where
    this process may make one, else by the memory watchdog (`memory_limit.py`); either way their peak
    is measured, and `measured` is called with how the limit was held, whether a process was killed
    for memory and the peak (also when this raises). Raises ConfinementError if the child could not
    be confined, OutOfMemory if a process of it was killed for memory (even if `work` returned),
    CallStopped if its thread was stopped (`stop_calls_of`) before it started, CallTimedOut if it ran
    longer than `seconds` (it is killed then, with all it started), RuntimeError if `work` raised or
    its process died otherwise (saying how). Without a view `seconds` is not held (nothing here can
    stop a call running in this process's thread: the profile's warning says so)."""
    if view is None:
        if measured is not None:
            measured(Verdict("none" if memory_mib else None, False, None))  # the worker's own process: not held
        return work()
    me = threading.get_ident()
    if me in _STOPPED:
        raise CallStopped("not started: its dask task was cancelled")
    request = cloudpickle.dumps(work)
    for attempt in (1, 2):  # an idle zygote may have died meanwhile (an OOM kill): once more, with a new one
        zygote = _take(view)
        limit = hold(memory_mib, f"call-{os.getpid()}-{next(_calls)}")
        limit.started(zygote.pid, session=False, forked=True, below=True)  # no cgroup: the watchdog holds the calls
        joins = Hold(limit.limit_mib, limit.cage)  # what the call needs to join its cgroup (not the watch)
        try:
            chunks, started, code, late = _serve(zygote, pickle.dumps((functions or {}, request, joins)), me, seconds)
        except BaseException:
            limit.ended()
            raise
        if started or attempt == 2 or me in _STOPPED:
            break
        limit.ended()  # it never ran: nothing to measure
    memory = limit.ended()
    if measured is not None:
        measured(memory)
    if late:
        raise CallTimedOut(f"timeout: killed after {seconds:g} s (its walltime)")
    if not started:
        raise CallDied(f"the confined call's zygote died before the call started (exit code {code})",
                       code - 128 if code > 128 else 0)
    try:
        kind, value = _plain(b"".join(chunks))
    except Exception:  # noqa: BLE001 - nothing, or half a report: the call died before it had reported
        kind, value = "died", None
    if memory.oom:  # a process of the call was killed for memory: so is the call, whatever it returned
        raise OutOfMemory(oom_reason(memory_mib) if memory.how == "cgroup"
                          else watched_oom_reason(memory_mib, memory.peak_mib))
    if kind == "died":
        sig = code - 128 if code > 128 else 0
        how = f"killed by signal {sig}: {signal.strsignal(sig)}" if sig else f"exit code {code}"
        raise CallDied(f"the confined call's process died ({how}) before it reported", sig)
    if kind == "error":
        raise RuntimeError(value)
    return value


_calls = itertools.count()  # names this process's calls' memory cgroups


def _serve(zygote: _Zygote, request: bytes, me: int,
           seconds: float | None = None) -> tuple[list[bytes], bool, int, bool]:
    """Hand `request` to `zygote` with a pipe for the call's report; read the report to its end (the
    call's, and whatever it started, having ended), then the zygote's word. (the report's chunks,
    whether the call started, its exit code as a shell gives it, or the zygote's if it died, whether
    it ran past `seconds` and was killed: its zygote and namespace with it). The zygote goes back to
    its view's idle ones, or is reaped if it died."""
    r, w = os.pipe()
    try:
        _put(zygote.sock, b"C", request, fds=(w,))
    except OSError:  # it is gone: the pipe's read end sees EOF at once
        pass
    os.close(w)
    chunks = []
    _CHILDREN[me] = zygote.z0  # stopped by killing the zygote: its namespace, the call with it, goes
    if me in _STOPPED:  # cancelled while it was being started
        _kill(zygote.z0)
    late = False
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        with os.fdopen(r, "rb") as f:
            while True:
                if deadline is not None and not late and not select.select(
                        [f], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    late = True  # past its time: its zygote, namespace, the call and all it started go; EOF follows
                    _kill(zygote.z0)
                    continue
                chunk = os.read(f.fileno(), 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        try:  # both there by now, or the zygote died: "F" once it forked the call, "D" once all of it ended
            started, done = _get(zygote.sock), _get(zygote.sock)
        except OSError:
            started = done = None
    finally:
        _CHILDREN.pop(me, None)
    if started is not None and started[0] == b"F" and done is not None and done[0] == b"D":
        _give_back(zygote)
        return chunks, True, _exit_code(_STATUS.unpack(done[1])[0]), False
    return chunks, started is not None, zygote.close(), late  # it died (stopped, killed): its namespace with it


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
                probe = JobView(tmp, os.path.join(tmp, "task"), os.path.join(tmp, "shared"))
                try:
                    run_confined(probe, _nothing)
                finally:
                    forget(probe)
        except (ConfinementError, RuntimeError) as exc:
            raise BackendError(f"profile {profile_name!r} runs Python calls confined to their task's storage "
                               f"(sandbox: bwrap), but this machine cannot confine them: {exc}. Allow user "
                               "namespaces, or set `sandbox: none` in the profile to run them unconfined") from None
        _checked.add(profile_name)


def _nothing() -> None:
    return None


_checked: set[str] = set()  # profiles whose calls this process has confined once
