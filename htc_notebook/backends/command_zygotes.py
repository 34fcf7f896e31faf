"""A command zygote seen from the local runner: one bwrap sandbox per task view that forks the view's
command jobs (the program it runs is `command_zygote.py`, whose docstring says what a job gets).

Starting bwrap costs ~3 ms of CPU per job; a zygote pays it once per view, then each job is a fork
and an exec inside it, in a PID and mount namespace of its own (so what a job sees is what a job
under its own bwrap saw: the view, a /proc of its own namespace, its own /tmp and scratch).

The zygote is started with the toolkit's own Python (`sys.executable`, absolute) and environment,
`-I -S` (no PYTHON* variable, no site, no current directory on its path), through bwrap found by
absolute path (`programs.py`): nothing a job chose runs outside a sandbox. It holds CAP_SYS_ADMIN
and CAP_SETPCAP inside its namespaces (to make each job's namespaces) and gives every capability
up in each job before the job's program runs. It is not dumpable, and it is outside every job's PID
namespace: a job can neither see, signal nor ptrace it. Its messages are decoded with `struct` only.

Each job keeps a PID namespace of its own (a shared one per task would save ~0.4 ms of a job's
~1.6 ms fork-to-exit here, but would let a job see and signal its siblings, which a bwrap of its own
never let it). What it costs in all (bench/cmds_cpu.py: `true` jobs, this process and every process
it started, 2-core machine under other load, medians of 3 alternating runs): 7.9 ms of CPU per
confined job with a bwrap each, 5.6 ms with the zygote; 4.2 and 3.1 ms with `sandbox: none`.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from htc_notebook.backends import command_zygote as program_module
from htc_notebook.backends.command_zygote import DONE, KEY, KILL
from htc_notebook.backends.base import Launch
from htc_notebook.backends.sandbox import SCRATCH, bwrap_argv, kept_under_tmp
from htc_notebook.spec import PartitionProfile

log = logging.getLogger(__name__)
assert program_module.SCRATCH == SCRATCH, "the zygote mounts each job's scratch where the sandbox says"

PROGRAM = os.path.abspath(program_module.__file__)
CAPS = ("--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP")  # in its own namespaces (bwrap's user ns, or root's)
_CREDS = struct.Struct("3i")
START_SECONDS = 60.0


@dataclass(frozen=True)
class ZygoteJob:
    """How the local runner runs a confined command job in its view's zygote: the job's own argv and
    environment (all of it holds inside the sandbox), the view, what of /tmp it still sees (`keep`,
    read-only) and its scratch of maxDiskGiB (None: none)."""

    view: Any  # None: unconfined (`sandbox: none`), in the runner's one unconfined zygote
    keep: tuple[str, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    scratch_gib: int | None = None

    @property
    def confined(self) -> bool:
        return self.view is not None


@dataclass
class Events:
    """What a zygote's reader thread calls: `pid(key, pid)` the job's pid as this process sees it;
    `failed(key, message)` its child could not start the job; `done(key, status, cpu_s, maxrss_kib,
    zygote_maxrss_kib)`; `gone(zygote, why)` the zygote ended (its jobs with it)."""

    pid: Callable[[int, int], None]
    failed: Callable[[int, str], None]
    done: Callable[[int, int, float, int, int], None]
    gone: Callable[[Zygote, str], None]


def in_zygote(launch: Launch, profile: PartitionProfile) -> ZygoteJob | None:
    """How the local runner runs `launch` in a zygote: in its view's, or unconfined (`sandbox: none`) in
    the runner's unconfined one; None where it does not: a command in an image or an MPI job keeps its
    own bwrap or launcher line."""
    if launch.kind != "command" or launch.view is None or launch.image or launch.mpi is not None:
        return None
    if profile.sandbox == "none":  # its scratch (a directory of its own, unlimited) is made by the runner
        return ZygoteJob(None, (), tuple(launch.command), dict(launch.env), launch.disk_gib or None)
    scratch = launch.disk_gib or None
    env = {**launch.env, "HTC_SCRATCH": SCRATCH, "TMPDIR": SCRATCH} if scratch else dict(launch.env)
    return ZygoteJob(launch.view, kept_under_tmp(profile.python), tuple(launch.command), env, scratch)


_keys = itertools.count(1)


def next_key() -> int:
    return next(_keys)


class ZygoteError(OSError):
    """A zygote could not be started (bwrap's or its own words)."""


class Zygote:
    """One view's zygote: started at once, ready when the constructor returns."""

    def __init__(self, view: Any, keep: Sequence[str], events: Events):
        self.view, self.keep, self.events = view, tuple(keep), events
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # a job's argv and environment in one message
        if view is None:  # unconfined: no sandbox, it dies with this process by itself
            argv = [sys.executable, "-I", "-S", PROGRAM, str(theirs.fileno()), "unconfined", str(os.getpid())]
        else:
            inner = [sys.executable, "-I", "-S", PROGRAM, str(theirs.fileno()), "confined", view.root, *self.keep]
            argv = bwrap_argv(view, inner, keep=self.keep)
            cut = argv.index("--")
            argv[cut:cut] = CAPS
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                         env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
        except OSError as exc:
            mine.close()
            raise ZygoteError(exc.errno, f"could not start bwrap: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        self.sock = mine
        self.pid = self.proc.pid
        self.running: set[int] = set()  # keys of its jobs not ended yet (the runner's to keep)
        self.idle_since = 0.0
        self.closed = False  # ended by this process (not on its own)
        mine.settimeout(START_SECONDS)
        try:
            ready = mine.recv(16)
        except OSError:
            ready = b""
        mine.settimeout(None)
        if ready != b"Y":
            why = self._end()
            raise ZygoteError(f"the command sandbox did not start: {why}")
        self._reader = threading.Thread(target=self._read, name=f"htc-zygote-{self.pid}", daemon=True)
        self._reader.start()

    def run(self, key: int, argv: Sequence[str], env: Mapping[str, str], cwd: str, scratch_bytes: int,
            fds: Sequence[int], v1: bool = True) -> None:
        """Start job `key` (its logs and, if any, its cgroup's file in `fds`, `v1` or not; they are copied over)."""
        request = pickle.dumps((list(argv), dict(env), cwd, scratch_bytes, v1))
        socket.send_fds(self.sock, [b"R" + KEY.pack(key) + request], list(fds))

    def kill(self, key: int, sig: int) -> None:
        """Signal job `key`'s pid 1 (SIGKILL: its whole PID namespace), if it has not been reaped."""
        try:
            self.sock.send(b"K" + KILL.pack(key, sig))
        except OSError as exc:  # it is gone: so is the job
            log.debug("zygote %s: cannot send a kill: %s", self.pid, exc)

    def close(self) -> None:
        """End it (its jobs with it: it is their namespaces' ancestor's pid 1); reaped by its reader."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self) -> None:
        size = socket.CMSG_SPACE(_CREDS.size)
        why = ""
        try:
            while True:
                data, ancillary, _, _ = self.sock.recvmsg(8192, size)
                if not data:
                    break
                tag = data[:1]
                if tag == b"D":
                    key, status, user, system, maxrss, mine = DONE.unpack(data[1:])
                    self.events.done(key, status, user + system, maxrss, mine)
                elif tag == b"P":
                    (key,) = KEY.unpack(data[1:1 + KEY.size])
                    sender = next((_CREDS.unpack(d[:_CREDS.size])[0] for level, kind, d in ancillary
                                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
                    if sender > 1:
                        self.events.pid(key, sender)
                elif tag == b"Q" and self.view is None:  # unconfined: the pid it spawned, ours too
                    key, pid = KILL.unpack(data[1:1 + KILL.size])
                    if pid > 1:
                        self.events.pid(key, pid)
                elif tag == b"X":
                    (key,) = KEY.unpack(data[1:1 + KEY.size])
                    self.events.failed(key, data[1 + KEY.size:].decode(errors="replace"))
                else:
                    log.warning("zygote %s sent an unknown message %r", self.pid, data[:16])
        except Exception as exc:  # noqa: BLE001 - logged; the zygote's jobs end with it
            log.warning("zygote %s: reading its channel failed: %s", self.pid, exc)
            why = f"{type(exc).__name__}: {exc}"
        finally:
            why = self._end() or why
            self.events.gone(self, why)

    def _end(self) -> str:
        """Close its channel (it exits), reap bwrap and say how it ended (its stderr, bounded)."""
        self.sock.close()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stderr is not None
        text = self.proc.stderr.read(64 * 1024).decode(errors="replace").strip()
        self.proc.stderr.close()
        return f"exit code {code}" + (f": {text}" if text else "")
