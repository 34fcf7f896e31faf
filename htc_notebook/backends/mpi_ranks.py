"""MPI jobs on the nodes: the rank program, and reading what the ranks left behind.

A Python MPI job runs ``python .../htc_notebook/backends/mpi_ranks.py DIR`` under the
profile's launcher. Every rank loads the call from DIR, runs it (given the communicator
if it has a ``comm`` parameter: first positional, else by name; without one it uses
``MPI.COMM_WORLD`` itself),
and writes ``rank-<r>.json``; rank 0 also writes its return value. A rank that
raises records its error and aborts the communicator, so no rank waits forever on
one that died. `read_outcome` turns the files and the launcher's exit code into
the job's verdict: rank 0's value (falsy values included) or an error naming the
rank, the host and the traceback.

The same program also serves a rank pool (``--serve ADDRESS``, see `mpi_pool`): ranks
that outlive tasks and run one Python MPI task after another on sub-communicators of
``COMM_WORLD``, reporting to the pool's driver over an authenticated connection.

This module must stay importable on a node without the rest of the runtime:
standard library and cloudpickle only (mpi4py inside the rank program).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import cloudpickle

from htc_notebook.errors import UntrustedFile
from htc_notebook.storage.untrusted import job_logs, read_head

CALL_FILE = "call.pkl"
RESULT_FILE = "result.pkl"
RANKS_FILE = "ranks"
REPORT_LIMIT = 1 << 20  # a rank's report (a traceback at most): read no more
RESULT_LIMIT = 1 << 34  # rank 0's pickled value
KILL_GRACE_SECONDS = 5.0


def rank_dir(cwd: str | os.PathLike, job_id: int, attempt: int) -> Path:
    """Where one attempt of an MPI job keeps its call, rank reports and result."""
    return Path(cwd) / ".htc" / "mpi" / f"job-{job_id}-{attempt}"


def rank_argv(python: str, directory: str | os.PathLike) -> list[str]:
    """The command each rank runs for a Python MPI job.

    This file is run as a script, not with ``-m``: that would import the whole
    package (~0.15 s per rank per task) for what needs only cloudpickle and mpi4py.
    """
    return [python, str(Path(__file__).resolve()), str(directory)]


def write_call(directory: str | os.PathLike, fn: Any, args: tuple, kwargs: dict, *, ranks: int) -> None:
    """Put the call where every rank can load it (temp file + rename), with the rank count."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic(d / RANKS_FILE, str(ranks).encode())
    _atomic(d / CALL_FILE, cloudpickle.dumps((fn, args, kwargs)))


def is_python_job(directory: str | os.PathLike) -> bool:
    """Was this attempt a Python MPI job (its call was written here)?"""
    return (Path(directory) / CALL_FILE).exists()


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _with_comm(fn: Any, args: tuple, kwargs: dict, comm: Any) -> tuple[tuple, dict]:
    """Give the communicator to a function with a `comm` parameter: first positional, else by name."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return args, kwargs
    if params[:1] == ["comm"]:
        return (comm, *args), kwargs
    if "comm" in params and "comm" not in kwargs:
        return args, {**kwargs, "comm": comm}
    return args, kwargs


POOL_KEY_ENV = "HTC_POOL_KEY"  # the pool's connection key (hex), given to the ranks by the driver


def pool_argv(python: str) -> list[str]:
    """The command each rank of a rank pool runs; the driver appends its address."""
    return [python, str(Path(__file__).resolve()), "--serve"]


def run_on(comm: Any, payload: bytes) -> tuple[dict[str, Any], bytes | None]:
    """Run a pickled (fn, args, kwargs) on this rank of `comm`: (report, rank 0's pickled value).

    Never raises: an exception is reported with its traceback (also written to stderr).
    """
    rank, host = comm.Get_rank(), socket.gethostname()
    report: dict[str, Any] = {"rank": rank, "host": host, "pid": os.getpid(), "started": time.time()}
    data = None
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
        args, kwargs = _with_comm(fn, args, kwargs, comm)
        value = fn(*args, **kwargs)
        if rank == 0:
            try:
                data = cloudpickle.dumps(value)
            except Exception as exc:
                raise TypeError(f"rank 0's return value ({type(value).__name__}) cannot be pickled: {exc}") from exc
        report["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - report everything, SystemExit included
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}",
                      traceback="".join(traceback.format_exception(exc)))
        sys.stderr.write(f"[rank {rank} on {host}] " + report["traceback"])
        sys.stderr.flush()
    report["ended"] = time.time()
    return report, data


def serve(address: str) -> int:
    """One rank of a pool: connect to the driver, then run what it sends until it says stop.

    A task arrives as (members, payload, cwd, env, logs): the world ranks that run it, in
    order, which form a communicator with ``Create_group`` (collective over those ranks
    only, so other tasks run alongside). Waiting for work blocks on the socket, not in
    MPI, so idle ranks use no CPU.
    """
    from multiprocessing.connection import Client

    from mpi4py import MPI

    from htc_notebook.backends.worker import job_context

    world = MPI.COMM_WORLD
    host, port = address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop(POOL_KEY_ENV)))
    conn.send({"rank": world.Get_rank(), "host": socket.gethostname(), "pid": os.getpid()})
    while True:
        try:
            task = conn.recv()
        except EOFError:
            break
        if task is None:
            break
        members, payload, cwd, env, logs = task
        group = world.Get_group().Incl(members)
        comm = world.Create_group(group)
        group.Free()
        with job_context(cwd, env, *logs):
            report, data = run_on(comm, payload)
        conn.send((report, data))
        comm.Free()
    conn.close()
    return 0


def main(directory: str) -> int:
    """One rank: run the call, report, and abort everyone if it raised."""
    from mpi4py import MPI

    d, comm = Path(directory), MPI.COMM_WORLD
    report, data = run_on(comm, (d / CALL_FILE).read_bytes())
    if data is not None:
        _atomic(d / RESULT_FILE, data)
    _atomic(d / f"rank-{comm.Get_rank()}.json", json.dumps(report).encode())
    if not report["ok"]:
        comm.Abort(1)  # so no rank waits forever on this one
    return 0


def read_outcome(directory: str | os.PathLike, exit_code: int | None) -> tuple[str, str | None, bytes | None]:
    """(status, reason, rank 0's pickled value) from the rank reports and the launcher's exit code."""
    d = Path(directory)  # task/.htc/mpi/job-N-A/: the ranks write here, so every file is read as untrusted
    try:
        ranks = int(read_head(d / RANKS_FILE, 32, below=4))
    except (UntrustedFile, ValueError) as exc:
        return "FAILED", f"the MPI job's rank count is not the toolkit's: {exc}", None
    reports = {}
    for r in range(ranks):
        try:
            report = json.loads(read_head(d / f"rank-{r}.json", REPORT_LIMIT, below=4))
        except (FileNotFoundError, ValueError, UntrustedFile):
            continue
        if isinstance(report, dict):
            reports[r] = report
    failed = [rep for _, rep in sorted(reports.items()) if not rep.get("ok")]
    if failed:
        return "FAILED", failure(failed), None
    if exit_code == 0 and len(reports) == ranks:
        try:
            return "SUCCEEDED", None, read_head(d / RESULT_FILE, RESULT_LIMIT, below=4)
        except FileNotFoundError:
            pass
        except UntrustedFile as exc:
            return "FAILED", f"rank 0's result is not a plain file: {exc}", None
    missing = [r for r in range(ranks) if r not in reports]
    how = f"killed by signal {-exit_code}" if exit_code is not None and exit_code < 0 else f"exit code {exit_code}"
    who = f"ranks {', '.join(map(str, missing))} ended without reporting" if missing else "no result from rank 0"
    return "FAILED", f"MPI launcher ended with {how}; {who} (killed, out of memory, or crashed outside Python)", None


def failure(failed: Sequence[dict[str, Any]]) -> str:
    """Why a Python MPI task failed, from the reports of the ranks that raised (rank order)."""
    first = failed[0]
    tail = "".join(str(first.get("traceback", "")).splitlines(keepends=True)[-6:]).rstrip()
    also = f" (also failed: ranks {', '.join(str(f.get('rank')) for f in failed[1:])})" if failed[1:] else ""
    return f"rank {first.get('rank')} on {first.get('host')} raised {first.get('error')}{also}\n{tail}"


def run_launch(argv: Sequence[str], *, cwd: str, env: dict[str, str], logs: tuple[str, str],
               timeout: float | None) -> tuple[int | None, str | None]:
    """Run a launcher command in its own process group: (exit code, reason if it did not exit by itself)."""
    try:
        with job_logs(*logs) as (out, err):
            try:
                proc = subprocess.Popen(list(argv), cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
            except OSError as exc:
                return None, f"could not start {argv[0]!r}: {exc.strerror or exc}"
            try:
                return proc.wait(timeout=timeout), None
            except subprocess.TimeoutExpired:
                kill_group(proc)
                return proc.wait(), f"timeout: killed after {timeout:g} s"
    except UntrustedFile as exc:  # the job left a link or a FIFO where its log goes: not followed
        return None, f"could not open its log: {exc}"


def run_step(argv: Sequence[str], env: dict[str, str], cwd: str, logs: tuple[str, str],
             timeout: float | None) -> dict[str, Any]:
    """The dask task of a packed MPI job: run its launcher inside the allocation this worker holds
    (unless its timeout would outlast the allocation: see `worker.leave_if_late`)."""
    from htc_notebook.backends.worker import leave_if_late

    leave_if_late(timeout or 0.0)
    started = time.time()
    exit_code, reason = run_launch(argv, cwd=cwd, env=env, logs=logs, timeout=timeout)
    return {"mpi_step": True, "exit_code": exit_code, "reason": reason, "host": socket.gethostname(),
            "started": started, "ended": time.time()}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if wait:
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass


if __name__ == "__main__":
    sys.exit(serve(sys.argv[2]) if sys.argv[1] == "--serve" else main(sys.argv[1]))
