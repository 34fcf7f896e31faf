"""A rank pool: MPI ranks that outlive tasks, one pool per packed allocation.

Many small Python MPI tasks in one allocation would each pay for an `srun` step,
`MPI_Init` and interpreter start-up (~0.5 s here) if each had ranks of its own. The
pool pays that once: on the first Python MPI task, the dask worker holding the
allocation starts one `srun --overlap` step with a rank on every core, running
``mpi_ranks.py --serve``. Each rank connects back to this driver (an authenticated
`multiprocessing.connection`) and waits for work. A task takes free ranks in its
layout (`nodes` x `ranks_per_node`, `cpus_per_rank` cores each), the ranks build a
communicator for it with ``Create_group``, run the function and report; rank 0's
value is the result. dask's `slots` resource keeps the cores in use within the
allocation, so the pool never runs more than fits.

When a rank raises, the others of its task get FAIL_GRACE seconds to report; ranks
that do not (stuck in a collective the failed rank never joined) are lost, so the
pool takes no new tasks, lets the running ones finish, and is replaced by a fresh
one. A rank that dies (crash, kill) ends the step: the tasks running on the pool
fail with that reason and the next task starts a new pool.

Like `mpi_ranks`, this module needs only the standard library and cloudpickle on the worker.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener, wait
from typing import Any, cast

from htc_notebook.backends.mpi_ranks import POOL_KEY_ENV, failure, kill_group

FAIL_GRACE = 2.0  # seconds the other ranks of a failed task get to report before they count as stuck
START_TIMEOUT = 120.0  # seconds for every rank of a new pool to connect


@dataclass(frozen=True)
class PoolSpec:
    """How to start a pool: the launcher argv (the driver's address is appended), extra
    environment for the ranks, the number of ranks, and a log file for the step's output."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    size: int
    log: str


class PoolError(RuntimeError):
    """The pool could not start, or lost a rank."""


class RankPool:
    """The driver of one pool, in the dask worker process; `run` is called from its task threads."""

    def __init__(self, spec: PoolSpec):
        self.spec = spec
        self._cond = threading.Condition()
        self._conns: dict[int, Connection] = {}  # world rank -> its connection
        self._hosts: dict[int, str] = {}
        self._free: set[int] = set()
        self._running = 0  # tasks on the pool now
        self._broken: str | None = None  # why the pool takes no new tasks
        self._starting = False
        self._proc: subprocess.Popen | None = None
        self.generation = 0  # how many pools have been started

    # -- one task ----------------------------------------------------------------
    def run(self, payload: bytes, *, nodes: int, ranks_per_node: int, cpus_per_rank: int, cwd: str,
            env: dict[str, str], logs: tuple[str, str], timeout: float | None) -> dict[str, Any]:
        """Run a pickled (fn, args, kwargs) on ranks of the pool; a report like `worker.run_call`'s."""
        started = time.time()
        try:
            members, reserved = self._acquire(nodes, ranks_per_node, cpus_per_rank)
        except PoolError as exc:
            return _report(False, started, message=str(exc))
        stuck: set[int] = set()
        try:
            reports, values, stuck, why = self._execute(members, (payload, cwd, env, logs), timeout)
        finally:
            self._release(reserved, stuck)
        failed = [r for r in sorted(reports.values(), key=lambda r: r["rank"]) if not r.get("ok")]
        first = reports.get(members[0], {})
        times = dict(host=first.get("host", self._hosts.get(members[0], "?")),
                     started=min((r["started"] for r in reports.values()), default=started))
        if failed:
            return _report(False, message=failure(failed), **times)
        if why:
            return _report(False, message=why, **times)
        return _report(True, value=values.get(members[0]), **times)

    def _execute(self, members: list[int], work: tuple, timeout: float | None):
        """Send the task to its ranks and collect their reports: (reports, values, stuck ranks, why)."""
        conns = {self._conns[r]: r for r in members}
        reports: dict[int, dict] = {}
        values: dict[int, bytes | None] = {}
        why = None
        try:
            for r in members:
                self._conns[r].send((members, *work))
        except OSError as exc:
            return reports, values, set(members), self._lose(f"could not reach rank {r}: {exc}")
        deadline = None if timeout is None else time.monotonic() + timeout
        grace = None
        while conns:
            limits = [t for t in (deadline, grace) if t is not None]
            left = None if not limits else max(0.0, min(limits) - time.monotonic())
            ready = cast("list[Connection]", wait(list(conns), timeout=left))  # of the connections given
            if not ready:
                if grace is not None and (deadline is None or grace <= deadline):
                    why = self._lose(f"ranks {sorted(conns.values())} did not finish within {FAIL_GRACE:g} s "
                                     "of another rank's failure")
                else:
                    why = self._lose(f"timeout: ran longer than {timeout:g} s (its ranks are replaced)")
                break
            for conn in ready:
                r = conns.pop(conn)
                try:
                    report, value = conn.recv()
                except (EOFError, OSError):
                    why = self._lose(f"rank {r} on {self._hosts.get(r, '?')} died (crashed outside Python, was "
                                     "killed, or ran out of memory)")
                    return reports, values, set(conns.values()) | {r}, why
                reports[r], values[r] = report, value
                if not report.get("ok") and grace is None:
                    grace = time.monotonic() + FAIL_GRACE
        return reports, values, set(conns.values()), why

    # -- ranks -------------------------------------------------------------------
    def _acquire(self, nodes: int, ranks_per_node: int, cpus_per_rank: int) -> tuple[list[int], set[int]]:
        """Free ranks for one task, starting (or replacing) the pool if needed: (members, reserved)."""
        per_host = ranks_per_node * cpus_per_rank
        with self._cond:
            while True:
                if self._broken and self._running == 0 and not self._starting:
                    self._stop()
                if not self._conns and not self._starting:
                    self._starting = True
                    self._cond.release()
                    try:
                        started = self._start()
                    finally:
                        self._cond.acquire()
                        self._starting = False
                        self._cond.notify_all()
                    self._adopt(*started)
                    continue
                if self._conns and not self._broken:
                    hosts = defaultdict(list)
                    for r in sorted(self._conns):
                        hosts[self._hosts[r]].append(r)
                    if len(hosts) < nodes or max(len(rs) for rs in hosts.values()) < per_host:
                        raise PoolError(f"the allocation ({len(hosts)} nodes, {self.spec.size} cores) cannot place "
                                        f"{nodes} nodes x {ranks_per_node} ranks x {cpus_per_rank} cores")
                    fits = [h for h, rs in hosts.items() if len([r for r in rs if r in self._free]) >= per_host]
                    if len(fits) >= nodes:
                        reserved = [r for h in fits[:nodes] for r in sorted(self._free & set(hosts[h]))[:per_host]]
                        self._free -= set(reserved)
                        self._running += 1
                        return reserved[::cpus_per_rank], set(reserved)
                self._cond.wait(1.0)

    def _release(self, reserved: set[int], stuck: set[int]) -> None:
        with self._cond:
            if self._conns:
                self._free |= reserved - stuck
            self._running -= 1
            self._cond.notify_all()

    def _lose(self, why: str) -> str:
        """Take no new tasks on this pool; it is replaced once its running tasks end."""
        with self._cond:
            self._broken = self._broken or why
        return why

    # -- the step ----------------------------------------------------------------
    def _start(self) -> tuple[subprocess.Popen, Listener, dict[int, tuple[Connection, str]]]:
        """Start the pool's step and wait until every rank has connected."""
        key = secrets.token_bytes(32)
        listener = Listener(("0.0.0.0", 0), authkey=key)
        address = f"{_reachable_ip()}:{listener.address[1]}"
        env = {**os.environ, **dict(self.spec.env), POOL_KEY_ENV: key.hex()}
        os.makedirs(os.path.dirname(os.path.abspath(self.spec.log)), exist_ok=True)
        with open(self.spec.log, "ab") as log:
            try:
                proc = subprocess.Popen([*self.spec.argv, address], env=env, stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                listener.close()
                raise PoolError(f"could not start the MPI rank pool with {self.spec.argv[0]!r}: "
                                f"{exc.strerror or exc}") from None
        ranks: dict[int, tuple[Connection, str]] = {}

        def accept() -> None:
            while len(ranks) < self.spec.size:
                try:
                    conn = listener.accept()
                    hello = conn.recv()
                except (OSError, EOFError):
                    return  # the listener was closed: the pool did not start
                ranks[hello["rank"]] = (conn, hello["host"])

        t = threading.Thread(target=accept, name="htc-pool-accept", daemon=True)
        t.start()
        deadline = time.monotonic() + START_TIMEOUT
        while t.is_alive() and proc.poll() is None and time.monotonic() < deadline:
            t.join(0.05)
        if len(ranks) < self.spec.size:
            listener.close()
            kill_group(proc)
            raise PoolError(f"the MPI rank pool did not start: {len(ranks)} of {self.spec.size} ranks connected "
                            f"(launcher exit code {proc.poll()}); see {self.spec.log}:\n{_tail(self.spec.log)}")
        return proc, listener, ranks

    def _adopt(self, proc: subprocess.Popen, listener: Listener, ranks: dict[int, tuple[Connection, str]]) -> None:
        listener.close()
        self._proc, self._broken = proc, None
        self._conns = {r: c for r, (c, _) in ranks.items()}
        self._hosts = {r: h for r, (_, h) in ranks.items()}
        self._free = set(ranks)
        self.generation += 1

    def _stop(self) -> None:
        """End the step (called with the lock held, when no task runs on it)."""
        for conn in self._conns.values():
            try:
                conn.send(None)
                conn.close()
            except OSError:
                pass
        self._conns, self._hosts, self._free = {}, {}, set()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                kill_group(self._proc)
            self._proc = None
        self._broken = None

    def close(self) -> None:
        with self._cond:
            self._stop()


def _report(ok: bool, started: float | None = None, *, host: str | None = None, value: bytes | None = None,
            message: str | None = None) -> dict[str, Any]:
    out = {"ok": ok, "host": host or socket.gethostname(), "pid": os.getpid(), "started": started or time.time(),
           "ended": time.time()}
    out.update({"value": value} if ok else {"message": message})
    return out


def _reachable_ip() -> str:
    """The address other nodes reach this one at: the dask worker's own, when in one."""
    try:
        from distributed import get_worker

        return get_worker().address.split("://")[1].rsplit(":", 1)[0]
    except (ImportError, ValueError):
        return socket.gethostbyname(socket.gethostname())


def _tail(path: str, lines: int = 15) -> str:
    """The last `lines` lines of the pool's log, which its ranks (running jobs' code) write: its last
    64 KiB only, however large it grew."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:]).rstrip()


_POOLS: dict[PoolSpec, RankPool] = {}
_POOLS_LOCK = threading.Lock()


def run_pooled(spec: PoolSpec, payload: bytes, layout: tuple[int, int, int], cwd: str, env: dict[str, str],
               logs: tuple[str, str], timeout: float | None) -> dict[str, Any]:
    """The dask task of a packed Python MPI job: run it on this allocation's pool (started on first use),
    unless its timeout would outlast the allocation (see `worker.leave_if_late`)."""
    from htc_notebook.backends.worker import leave_if_late

    leave_if_late(timeout or 0.0)
    with _POOLS_LOCK:
        pool = _POOLS.get(spec)
        if pool is None:
            pool = _POOLS[spec] = RankPool(spec)
    nodes, ranks_per_node, cpus_per_rank = layout
    return pool.run(payload, nodes=nodes, ranks_per_node=ranks_per_node, cpus_per_rank=cpus_per_rank,
                    cwd=cwd, env=env, logs=logs, timeout=timeout)
