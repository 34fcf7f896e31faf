"""The program of a command zygote (stdlib only: run as `python -I -S <this file> FD`, inside bwrap).

A command zygote is started once per task view by the local runner (`command_zygotes.py`), as pid 1
of a bubblewrap sandbox that shows the view (`sandbox.bwrap_argv`, holding CAP_SYS_ADMIN and
CAP_SETPCAP in it and nothing else). It serves the view's command jobs over its channel FD (a
SOCK_SEQPACKET socket to the runner), several at once. For each job it

- forks the job into a PID namespace of its own (unshare(CLONE_NEWPID) before the fork, setns back
  after it): the job is that namespace's pid 1, as with `bwrap --unshare-pid --as-pid-1`, so it sees
  no other job's process nor the zygote's, and whatever it leaves dies with it (the kernel SIGKILLs
  a PID namespace's processes when its pid 1 ends, and reaps them);
- in the child, before the job's program runs: joins the job's memory cgroup (writes "0" to the
  `tasks` or `cgroup.procs` file the runner opened and passed), enters a mount namespace of its own
  with a /proc of its PID namespace, an empty /tmp (the `keep` paths bound back read-only) and its
  scratch tmpfs of maxDiskGiB; starts a new session; gives up every capability for good (no new
  privileges, an empty bounding set); takes its logs (descriptors the runner opened without
  following links) as stdout and stderr, /dev/null as stdin; tells the runner its pid (the socket's
  credentials carry it as the runner sees it); closes every other descriptor; execs the job's argv
  with its environment (its PATH chooses the program: inside the sandbox);
- reaps it and sends its wait status and rusage, with this zygote's own peak RSS: a child forked from
  here starts with this process's pages counted, so a job's maxrss is its own only above that.

Unconfined (`sandbox: none`), one zygote per runner, outside any sandbox, starts each job in its own
session only (as Popen did): by posix_spawn (vfork), with its cgroup (v1) joined around the spawn;
forked as above where its cgroup is v2; a kill signals the job's process group.

Messages (first byte a tag): runner -> zygote `R` + key + pickle((argv, env, cwd, scratch_bytes, cgroup_v1)) with
descriptors (out, err[, its cgroup's file]); `K` + key, signal (kill the job's PID namespace:
its pid 1 and so all of it; a job already reaped is not signalled, so no pid is reused by mistake).
Zygote -> runner: `Y` ready; `P` + key from the job's child (pid in the credentials); `Q` + key, pid
from an unconfined zygote that spawned the job (no namespace: its pid is the runner's too); `X` + key +
message: the child could not start the job; `D` + key, status, user and system CPU, maxrss, the
zygote's maxrss. The runner reads these with `struct` only: nothing in them is code.
"""

import array
import ctypes
import gc
import mmap
import os
import pickle
import resource
import select
import signal
import socket
import struct
import sys

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x20, 0x1000, 0x4000, 0x40000, 0x200000
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
CAP_VERSION_3 = 0x20080522
KEY = struct.Struct("!Q")
KILL = struct.Struct("!Qi")
DONE = struct.Struct("!Qiddqq")  # key, wait status, user s, system s, maxrss KiB, the zygote's maxrss KiB
SCRATCH = "/tmp/htc-scratch"  # sandbox.SCRATCH (this program imports nothing of the toolkit)
MAX_MESSAGE = 4 << 20  # a job's argv and environment (the kernel's own limit for them is lower)

RESTORED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(what, rc):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(s):
    return None if s is None else s.encode()


def _mount(source, target, fstype, flags, data=None):
    _check(f"mount {target}", _libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)))


def _read_only_bind(source, target):
    """Bind `source` at `target` read-only, keeping the flags a remount in a user namespace must keep."""
    _mount(source, target, None, MS_BIND | MS_REC)
    f = os.statvfs(target).f_flag
    locked = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | ST_NOATIME | ST_NODIRATIME)
    locked |= MS_RELATIME if f & ST_RELATIME else 0
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked)


def _drop_privileges(bounding):
    """No capability left, for good: no new privileges, the bounding set emptied (`bounding`: the
    capabilities in it, read once by the zygote: bwrap left only those it was asked to add), none
    effective, permitted or inheritable (as `call_sandbox._drop_privileges`, and bwrap for its payload)."""
    _check("no_new_privs", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    for cap in bounding:
        _check("capbset_drop", _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    _check("capset", _libc.capset(header, (ctypes.c_uint32 * 6)()))


def _exec(argv, env):
    """execvpe, with the job's PATH (os.execvpe imports `warnings`, 1 ms, in a process started with -S)."""
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    failed: OSError | None = None
    for d in (env.get("PATH") or os.defpath).split(os.pathsep):
        try:
            os.execve(os.path.join(d or ".", name), argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            failed = failed or exc
        except OSError as exc:  # found, but it cannot run (EACCES, ENOEXEC): said, unless another one runs
            failed = exc
    raise failed or FileNotFoundError(2, "No such file or directory", name)


def _job(sock, key, argv, env, cwd, scratch, fds, keep, under_tmp, confined, last_cap):
    """The forked child: become the job (see the module docstring). Never returns."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in RESTORED:  # the job's as exec gives them (Python ignores SIGPIPE and SIGXFSZ)
            signal.signal(sig, signal.SIG_DFL)
        out, err = fds[0], fds[1]
        if len(fds) > 2:  # its memory cgroup, first: all it allocates counts there
            os.write(fds[2], b"0")
        if confined:
            _check("unshare", _libc.unshare(CLONE_NEWNS))
            _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the zygote
            # the view under /tmp (a data root there) and `keep`, bound back over the job's own /tmp
            kept = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in (*keep, *under_tmp)]
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
            for path, fd in kept:
                os.makedirs(path, exist_ok=True)
                if path in keep:
                    _read_only_bind(f"/proc/self/fd/{fd}", path)
                else:  # with what is mounted below it, each mount as it was (read-only or not)
                    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
                os.close(fd)
            if scratch:
                os.mkdir(SCRATCH, 0o755)
                _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={scratch}")
            _drop_privileges(last_cap)
        os.setsid()
        os.umask(0o077)
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sock.send(b"P" + KEY.pack(key))
        os.closerange(3, sock.fileno())
        os.closerange(sock.fileno() + 1, 1 << 20)  # the channel is close-on-exec
        _exec(argv, env)
    except BaseException as exc:  # noqa: BLE001 - a forked child must report and _exit
        try:
            what = (f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
                    if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}")
            sock.send(b"X" + KEY.pack(key) + what.encode(errors="replace")[:4000])
        finally:
            os._exit(127)


def _which(name, env):
    """The program the job's PATH names (as execvp would find it), or FileNotFoundError."""
    if "/" in name:
        return name
    for d in (env.get("PATH") or os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(2, "No such file or directory", name)


def _spawned(argv, env, cwd, fds, own_cgroup):
    """An unconfined job started by posix_spawn (vfork and exec: no copy of this process's page tables,
    no Python in the child) in its own session, its logs as stdout and stderr. Its memory cgroup (v1)
    is joined by this process's one thread just around the spawn, which the child inherits; this
    process's memory stays charged where it was (v1 moves no charges). The pid it runs as."""
    path = _which(argv[0], env)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, fds[0], 1), (os.POSIX_SPAWN_DUP2, fds[1], 2)]
    os.chdir(cwd)
    try:
        if len(fds) > 2:
            os.write(fds[2], b"0")
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=RESTORED)
        finally:
            if len(fds) > 2:
                os.write(own_cgroup, b"0")
    finally:
        os.chdir("/")


def _spawn(sock, msg, fds, flags, jobs, pids, keep, under_tmp, confined, last_cap, own_pidns, own_cgroup):
    """Fork the job a request names (see the module docstring). A job that cannot be forked is said to
    have failed (`X`, then `D` with exit code 127); this zygote serves on."""
    key = KEY.unpack(msg[1:1 + KEY.size])[0]
    try:
        if flags & socket.MSG_TRUNC or len(fds) < 2:
            raise OSError(f"its request was cut short ({len(msg)} bytes, {len(fds)} descriptors)")
        argv, env, cwd, scratch, v1 = pickle.loads(msg[1 + KEY.size:])  # from the runner: trusted
        if not confined and (len(fds) == 2 or (v1 and own_cgroup is not None)):
            try:
                pid = _spawned(argv, env, cwd, fds, own_cgroup)
            except OSError as exc:
                what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
                sock.send(b"X" + KEY.pack(key) + what.encode(errors="replace")[:4000])
                sock.send(b"D" + DONE.pack(key, 127 << 8, 0.0, 0.0, 0, 0))
                return key
            sock.send(b"Q" + KILL.pack(key, pid))  # its pid as the runner sees it (no namespace here)
            jobs[pid], pids[key] = key, pid
            return key
        if confined:
            _check("unshare", _libc.unshare(CLONE_NEWPID))
        try:
            pid = os.fork()
            if pid == 0:
                _job(sock, key, argv, env, cwd, scratch, fds, keep, under_tmp, confined, last_cap)
        finally:
            if confined:  # its next children in this namespace again (or none can be made: it ends)
                _check("setns", _libc.setns(own_pidns, CLONE_NEWPID))
    except OSError as exc:
        sock.send(b"X" + KEY.pack(key) + f"could not fork it: {exc.strerror or exc}".encode()[:4000])
        sock.send(b"D" + DONE.pack(key, 127 << 8, 0.0, 0.0, 0, 0))
        return key
    jobs[pid], pids[key] = key, pid
    return key


def _own_cgroup():
    """This process's v1 memory cgroup's `tasks`, opened to come back to after a spawn; None elsewhere."""
    try:
        with open("/proc/self/cgroup") as f:
            own = next((line.split(":", 2)[2].strip() for line in f if "memory" in line.split(":")[1].split(",")),
                       None)
        return None if own is None else os.open(f"/sys/fs/cgroup/memory{own.rstrip('/')}/tasks",
                                                os.O_WRONLY | os.O_CLOEXEC)
    except (OSError, IndexError):
        return None


def serve(fd, confined, root, keep, runner=0):
    """Serve the runner on channel `fd`; `root`: the data root (its tmpfs made read-only here: what one
    job wrote there would be there for the next; under bwrap each job had its own)."""
    os.set_inheritable(fd, False)  # no job's
    sock = socket.socket(fileno=fd)
    os.umask(0o077)  # a spawned job's (a forked one sets it again)
    own_cgroup = None if confined else _own_cgroup()
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # nothing of the same user may ptrace it or read its /proc
    under_tmp = (root,) if confined and root.startswith("/tmp/") else ()
    if not confined:  # no bwrap to die with the runner: it does so itself (and exits if the runner is gone)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != runner:
            os._exit(0)
    if confined:
        _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    gc.disable()  # a collection in a forked job would touch (copy) every page of objects: nothing here makes cycles
    with open("/proc/self/status") as f:
        bnd = int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16)
    last_cap = tuple(cap for cap in range(64) if bnd >> cap & 1)  # the bounding set's capabilities
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if confined else -1
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the runner ends it by closing the channel
        signal.signal(sig, signal.SIG_IGN)
    buffer = mmap.mmap(-1, MAX_MESSAGE)  # its pages are made as messages touch them (a bytearray's all at once)
    jobs: dict[int, int] = {}  # pid (as seen here) -> key
    pids: dict[int, int] = {}  # key -> pid
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    sock.send(b"Y")
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            ready = []
        for what, _ in ready:
            if what == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            elif what == sock.fileno():
                size, ancillary, flags, _ = sock.recvmsg_into([buffer], socket.CMSG_SPACE(3 * 4),
                                                              socket.MSG_CMSG_CLOEXEC)
                received = [fd for level, kind, data in ancillary
                            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                            for fd in array.array("i", data[:len(data) - len(data) % 4])]
                if not size and not received:
                    os._exit(0)  # the runner is gone: so is everything here (this is its namespace's pid 1)
                msg = bytes(buffer[:size])
                if msg[:1] == b"R":
                    key = _spawn(sock, msg, received, flags, jobs, pids, keep, under_tmp, confined, last_cap,
                                 own_pidns, own_cgroup)
                elif msg[:1] == b"K":
                    key, sig = KILL.unpack(msg[1:])
                    if key in pids:  # not reaped: the pid is still the job's
                        try:  # confined: its pid 1 (SIGKILL: its whole namespace); else its process group
                            os.kill(pids[key], sig) if confined else os.killpg(pids[key], sig)
                        except ProcessLookupError:
                            pass
                for fd in received:
                    os.close(fd)
        while jobs:  # reap
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            key = jobs.pop(pid, None)
            if key is None:
                continue
            del pids[key]
            mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            sock.send(b"D" + DONE.pack(key, status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, mine))


if __name__ == "__main__":
    if sys.argv[2] == "confined":  # FD confined ROOT KEEP...
        serve(int(sys.argv[1]), True, sys.argv[3], tuple(sys.argv[4:]))
    else:  # FD unconfined RUNNER-PID
        serve(int(sys.argv[1]), False, "", (), runner=int(sys.argv[3]))
