"""Code that runs on a worker (local or a SLURM pilot) around one Python job.

It must stay importable without the rest of the runtime: a worker only needs
this module, cloudpickle and the user's function.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import socket
import threading
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Iterator

import cloudpickle

from htc_notebook.backends.call_sandbox import (CallDied, CallTimedOut, ConfinementError, Loaded, LoadError,
                                                OutOfMemory, resume, run_confined)
from htc_notebook.storage.untrusted import open_below
from htc_notebook.storage.views import checkpoint_path


class _LazyLog:
    """A text stream that creates its log file only when something is written."""

    def __init__(self, path: str):
        self.path = path
        self._f: IO[str] | None = None

    def write(self, text: str) -> int:
        if self._f is None:
            self._f = open(open_below(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, below=2), "a",
                           encoding="utf-8")  # a job's log: never through a link it left there
        return self._f.write(text)

    @property
    def opened(self) -> bool:
        """Was anything written (is there a log file)?"""
        return self._f is not None

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


@contextmanager
def job_context(cwd: str, env: dict[str, str], log_out: str,
                log_err: str) -> Iterator[tuple[_LazyLog, _LazyLog]]:
    """Run in the task directory with the job's variables set and prints sent to the job's logs.

    Workers run one task per process (threads_per_worker=1), so this is safe.
    Yields the stdout and stderr logs (a failure's traceback goes to the latter, next to what the
    job printed).
    """
    old_cwd = os.getcwd()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.chdir(cwd)
    out, err = _LazyLog(log_out), _LazyLog(log_err)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        out.close()
        err.close()
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Functions already loaded in this worker process, by payload digest. dask pickles a task's
# function with every task it sends to a worker, so without this each job would load it again.
_LOADED: dict[str, Any] = {}

# Walltime-aware pilots. A pilot's job script sets PILOT_DEADLINE (epoch seconds: its start plus
# its walltime less a margin). A call starts only if it is expected to end by then: expected is
# the larger p95 of the function's last calls on this worker and of the submission's calls that
# ended so far (the client's `JobRunner.expected`), else the declared timeout, else 0. A call
# that would not fit goes back to the scheduler (dask's `Reschedule`) for another worker, and this
# worker drains: it takes nothing more, waits for its results to be collected, retires and tells
# the client (DRAIN_TOPIC) so the pilot's replacement is asked for now, not once it has left.
# dask's own `--lifetime` is not used: it retires a worker under its running calls, and dask then
# runs them again on another worker within the same attempt, where the ledger cannot see it.
PILOT_DEADLINE = "HTC_PILOT_DEADLINE"
PILOT_LIFETIME = "HTC_PILOT_LIFETIME"  # seconds from the pilot's start to its deadline
DRAIN_TOPIC = "htc-pilot-draining"
TIMED_CALLS = 100  # a function's last calls on this worker that its p95 is taken from
_TIMES: dict[str, deque[float]] = {}  # payload digest -> seconds its last calls took here


def p95(times: Any) -> float:
    """The 95th percentile (nearest rank) of some durations.

    >>> p95([1.0] * 19 + [9.0]), p95([2.0]), p95(range(1, 101))
    (1.0, 2.0, 95)
    """
    ordered = sorted(times)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def leave_if_late(expected: float) -> None:
    """On a pilot, hand this dask task back to the scheduler and drain the worker unless work of
    `expected` seconds ends before the pilot's deadline; nothing elsewhere (no deadline set).
    An `expected` longer than the pilot's whole lifetime (say, a timeout defaulted from the
    walltime) would fit no pilot, so it counts as unknown (0) until calls are timed."""
    deadline = os.environ.get(PILOT_DEADLINE)
    if deadline is None:
        return
    if expected > float(os.environ.get(PILOT_LIFETIME, "inf")):
        expected = 0.0
    if time.time() + expected <= float(deadline):
        return
    from distributed import Reschedule, get_worker

    worker = get_worker()
    worker.loop.add_callback(_drain, worker, expected)
    raise Reschedule()


async def _drain(worker: Any, expected: float) -> None:
    """Take no more tasks; once none runs, retire (dask moves the results the client has not
    collected yet to another worker and sends the tasks queued here elsewhere, none counted as
    lost) and close, nanny included: the pilot job ends by itself."""
    from distributed.core import Status

    if worker.status != Status.running:
        return
    worker.status = Status.closing_gracefully  # the scheduler sends it nothing more
    worker.log_event(DRAIN_TOPIC, {"name": worker.name, "expected": expected})  # dask adds "worker": its address
    while worker.state.executing_count:  # calls that fit before the deadline
        await asyncio.sleep(0.1)
    await worker.scheduler.retire_workers(workers=[worker.address], close_workers=False, remove=True,
                                          stimulus_id=f"htc-pilot-deadline-{time.time()}")
    await asyncio.sleep(0.5)  # the scheduler's echo of closing_gracefully arrives before we close
    await worker.close(nanny=True, reason="htc-pilot-deadline")


class JobRunner:
    """The dask task function for the jobs of one submission that call the same `fn`.

    It carries what the jobs share (the function, working directory, environment), so
    each dask task carries only its jobs' ids, indexes, arguments and log paths. One
    dask task runs one job, or a pack of several when the jobs are known to be quick
    (see `backends/dask_jobs.py`). The function travels as cloudpickled bytes and is
    loaded once per worker process, inside the job: a function that cannot be loaded
    on the node (say, from a module only the notebook can import) fails its jobs with
    an explanation instead of killing workers.
    """

    def __init__(self, fn: Any, cwd: str, env: dict[str, str], timeout: float | None = None, view: Any = None,
                 memory_mib: int | None = None):
        self.payload = cloudpickle.dumps(fn)
        self.digest = hashlib.sha256(self.payload).hexdigest()
        self.name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        self.cwd, self.env = cwd, env  # env: the variables every job here shares
        self.timeout = timeout  # the longest a call may take (declared), if known
        self.expected: float | None = None  # p95 of the calls that ended so far, anywhere (set by the client)
        self.view = view  # a `sandbox.JobView`: the calls run confined to it (`call_sandbox`); None: unconfined
        self.memory_mib = memory_mib  # confined calls: their memory cgroup's limit (the jobs' memory request)

    def __call__(self, jobs: list[tuple[int, int, tuple, dict, tuple[str, str]]],
                 upstream: dict[int, bytes] | None = None) -> list[dict[str, Any]]:
        """Run each (job_id, index, args, kwargs, logs) in turn; one report per job (`upstream`: see
        `run_jobs`)."""
        resume(threading.get_ident())  # a new dask task in this thread: its calls run
        times = _TIMES.setdefault(self.digest, deque(maxlen=TIMED_CALLS))
        measured = max(p95(times) if times else 0.0, self.expected or 0.0)  # here, and the sweep's so far
        leave_if_late(len(jobs) * (measured or self.timeout or 0.0))
        if self.view is None:  # unconfined: loaded here, once per worker process
            fn = _LOADED.get(self.digest)
            if fn is None:
                try:
                    fn = _LOADED[self.digest] = cloudpickle.loads(self.payload)
                except Exception as exc:  # noqa: BLE001 - unpickling runs the user's imports: any error fails the jobs
                    return _failed(len(jobs), _unloadable(self.name, f"{type(exc).__name__}: {exc}"))
            functions = None
        else:  # confined: loaded (once) by the zygote of the view, in its sandbox (`call_sandbox`)
            fn, functions = Loaded(self.digest), {self.digest: self.payload}
        run_all = functools.partial(run_jobs, fn, self.name, jobs, self.cwd, self.env, upstream)

        memory: list[Any] = []  # how the calls' memory went (memory_limit.Verdict): a pack's is each call's
        try:
            reports = run_confined(self.view, run_all, self.memory_mib, measured=memory.append, functions=functions,
                                   seconds=len(jobs) * self.timeout if self.timeout else None)
        except ConfinementError as exc:
            reports = _failed(len(jobs), f"{exc}. Allow user namespaces on {socket.gethostname()}, or set "
                                         "`sandbox: none` in the profile to run Python calls unconfined")
        except OutOfMemory as exc:
            reports = _failed(len(jobs), str(exc), cause="memory")
        except CallTimedOut as exc:
            reports = _failed(len(jobs), str(exc), cause="timeout")
        except CallDied as exc:  # killed: by its pilot stopping (not the job's fault), or by itself, or a crash
            reports = (_failed(len(jobs), f"{exc}: its worker was stopping (its pilot cancelled, out of time or "
                                          "lost)", cause="lost") if exc.signal and _worker_stopping()
                       else _failed(len(jobs), str(exc)))
        except RuntimeError as exc:  # the calls' process failed otherwise
            reports = _failed(len(jobs), str(exc))
        else:
            times.extend(r["ended"] - r["started"] for r in reports)
        if memory:
            reports = [{**r, "max_rss_mib": memory[0].peak_mib, "memory_held": memory[0].how} for r in reports]
        return reports


def run_jobs(fn: Any, name: str, jobs: list[tuple[int, int, tuple, dict, tuple[str, str]]], cwd: str,
             env: dict[str, str], upstream: dict[int, bytes] | None = None) -> list[dict[str, Any]]:
    """Run each (job_id, index, args, kwargs, logs) of a dask task in turn with `fn` (a function, or
    a confined call's `Loaded` one); one report per job. `upstream`: the pickled values of the
    parents whose `Upstream` markers the arguments hold, loaded here (for a confined call: in its
    sandbox, never in the worker)."""
    if isinstance(fn, Loaded):
        try:
            fn = fn.get()
        except LoadError as exc:
            return _failed(len(jobs), _unloadable(name, str(exc)))
    if upstream:
        try:
            values = {job: cloudpickle.loads(data) for job, data in upstream.items()}
        except Exception as exc:  # noqa: BLE001 - loading a value runs its classes' imports: the call's error
            return _failed(len(jobs), f"could not load the result of a job it depends on on {socket.gethostname()}: "
                                      f"{type(exc).__name__}: {exc}")
        jobs = [(job_id, index, _filled(args, values), _filled(kwargs, values), logs)
                for job_id, index, args, kwargs, logs in jobs]
    return [run_call(fn, args, kwargs, cwd,
                     {**env, "HTC_JOB_ID": str(job_id), "HTC_JOB_INDEX": str(index),
                      "HTC_CHECKPOINT": checkpoint_path(cwd, job_id)}, logs)
            for job_id, index, args, kwargs, logs in jobs]


@dataclass(frozen=True)
class Upstream:
    """Where a call sent behind its parents in its session's dask cluster takes parent `job_id`'s
    value: the dispatcher's stand-in for a handle whose job had not ended, filled where the call runs."""

    job_id: int


def _filled(value: Any, values: dict[int, Any]) -> Any:
    """`value` with each `Upstream` marker replaced by its parent's value, inside lists, tuples (named
    ones too) and dicts' values, as the dispatcher fills the results of parents that had ended."""
    if isinstance(value, Upstream):
        return values[value.job_id]
    kind = type(value)
    if kind is list:
        return [_filled(v, values) for v in value]
    if kind is dict:
        return {k: _filled(v, values) for k, v in value.items()}
    if isinstance(value, tuple):
        items = [_filled(v, values) for v in value]
        return kind(*items) if hasattr(value, "_fields") else kind(items)
    return value


def run_after(runner: JobRunner, job: tuple[int, int, tuple, dict, tuple[str, str]],
              parents: dict[int, tuple[Any, int]]) -> list[dict[str, Any]]:
    """The dask task of a call sent behind its parents' dask tasks: `parents` maps each parent's job
    id to what its dask task returned (dask passes it in place of the future: one report, or a
    pack's list) and its place in it. Runs the call with their values once all succeeded; fails it
    (cause `dependency`), naming the parent, if one did not."""
    upstream = {}
    for parent, (got, place) in parents.items():
        report = got[place] if isinstance(got, list) else got
        if not (isinstance(report, dict) and report.get("ok")):
            why = report.get("message") if isinstance(report, dict) else f"{type(report).__name__}: {report}"
            return _failed(1, f"job {parent}, which it depends on, failed: {why}", cause="dependency")
        upstream[parent] = report["value"]
    return runner([job], upstream)


def _unloadable(name: str, error: str) -> str:
    return (f"could not load {name} on {socket.gethostname()}: {error}. Define the function in the notebook, or "
            "in a module installed where the jobs run")


def _worker_stopping(grace: float = 2.0) -> bool:
    """Is this dask worker stopping, or does it start to within `grace` s? A pilot's end (SIGTERM to
    every process of its job, whose exit trap SIGKILLs its calls: memory_limit.clear_on_exit)
    reaches the worker and its call at once; the call's death may be seen first."""
    from distributed import get_worker
    from distributed.core import Status

    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return False
    deadline = time.monotonic() + grace
    while worker.status not in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _failed(n: int, message: str, cause: str | None = None) -> list[dict[str, Any]]:
    """Reports for `n` jobs that did not run (or died together), all saying `message`."""
    now = time.time()
    return [{"ok": False, "host": socket.gethostname(), "pid": os.getpid(), "started": now, "ended": now,
             "message": message, "cause": cause}] * n


def run_call(fn: Any, args: tuple, kwargs: dict, cwd: str, env: dict[str, str],
             logs: tuple[str, str]) -> dict[str, Any]:
    """Run `fn(*args, **kwargs)`; never raises for user errors.

    Returns a plain dict: ok, value (cloudpickled bytes) or message (the
    exception, whose traceback goes to the stderr log), host, pid, started, ended, cpu_s, and
    logged (whether it wrote a log: most calls print nothing, and then have no log to pack).
    """
    started, cpu = time.time(), time.thread_time()  # the call's own thread (a worker runs one call per thread)
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
    with job_context(cwd, env, *logs) as (stdout, err):
        try:
            value = fn(*args, **kwargs)
            try:
                out["value"] = cloudpickle.dumps(value)
            except Exception as exc:  # the result cannot travel back
                raise TypeError(f"the return value ({type(value).__name__}) cannot be pickled: {exc}") from exc
            out["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - report everything, including SystemExit
            out["ok"] = False
            out["message"] = f"{type(exc).__name__}: {exc}"
            err.write("".join(traceback.format_exception(exc)))
    out["ended"], out["cpu_s"] = time.time(), round(time.thread_time() - cpu, 3)
    out["logged"] = stdout.opened or err.opened
    return out
