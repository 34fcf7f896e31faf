"""Python jobs on any dask cluster: a LocalCluster here, dask-jobqueue pilots on SLURM.

`DaskJobs` maps launches onto a dask Client and reports each job's outcome.
The cluster is created by a factory on first use, so nothing starts until a
Python job is submitted.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from htc_notebook.backends.base import PER_JOB_ENV, Launch, Reporter
from htc_notebook.backends.mpi_jobs import verdict
from htc_notebook.backends.mpi_ranks import run_step
from htc_notebook.backends.worker import JobRunner
from htc_notebook.ledger import Outcome


SLOTS = "slots"  # the dask worker resource a packed MPI allocation offers: one per core


def _collect_interval(pending: int) -> float:
    """Seconds between looks at pending futures.

    Every gather is a round trip through the event loop the scheduler runs on,
    so with thousands of jobs in flight a look per ~second is cheaper for the
    scheduler than many small ones; a handful of jobs are looked at every 20 ms.
    """
    return min(1.0, max(0.02, pending * 5e-4))


class DaskJobs:
    """Runs Python launches on the cluster `make_cluster()` returns, started on first use."""

    def __init__(self, make_cluster: Callable[[], Any], reporter: Reporter):
        self._make_cluster = make_cluster
        self._reporter = reporter
        self._client = None
        self._cluster = None
        self._futures: dict[int, tuple[Launch, object]] = {}
        self._collector: threading.Thread | None = None
        self._rounds = 0
        self._lock = threading.Lock()

    @property
    def cluster(self):
        self.client  # noqa: B018 - starts it
        return self._cluster

    @property
    def client(self):
        """The dask Client, with its cluster started on first use."""
        with self._lock:
            if self._client is None:
                from distributed import Client

                self._cluster = self._make_cluster()
                self._client = Client(self._cluster)
            return self._client

    @property
    def started(self) -> bool:
        return self._client is not None

    def submit(self, launches: Sequence[Launch]) -> None:
        if launches:
            self._submit_calls(list(launches))

    def _submit_calls(self, launches: list[Launch]) -> None:
        client = self.client
        groups: dict[tuple, list[Launch]] = {}
        futures, ordered = [], []
        steps: dict[int, list[Launch]] = {}
        for l in launches:
            if l.mpi is not None:  # packed MPI: a launcher run holding `cores` of the allocation's slots
                steps.setdefault(l.cores, []).append(l)
        for cores, group in steps.items():
            futures += client.map(run_step, [l.command for l in group], [l.env for l in group],
                                  [str(l.cwd) for l in group], [(l.log_out, l.log_err) for l in group],
                                  [l.timeout for l in group], key=[f"htc-job-{l.job_id}-{l.attempt}" for l in group],
                                  resources={SLOTS: cores}, pure=False)
            ordered += group
        for l in (l for l in launches if l.mpi is None):
            shared = frozenset((k, v) for k, v in l.env.items() if k not in PER_JOB_ENV)
            groups.setdefault((id(l.call.fn), l.cwd, shared), []).append(l)
        for (_, cwd, shared), group in groups.items():
            runner = JobRunner(group[0].call.fn, str(cwd), dict(shared))
            futures += client.map(runner, [l.job_id for l in group],
                                  [int(l.env.get("HTC_JOB_INDEX", 0)) for l in group],
                                  [l.call.args for l in group], [l.call.kwargs for l in group],
                                  [(l.log_out, l.log_err) for l in group],
                                  key=[f"htc-job-{l.job_id}-{l.attempt}" for l in group], pure=False)
            ordered += group
        launches = ordered
        with self._lock:
            for launch, fut in zip(launches, futures):
                self._futures[launch.job_id] = (launch, fut)
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, name="htc-collect", daemon=True)
                self._collector.start()

    def _collect(self) -> None:
        """Report finished futures in bulk.

        Polls each future's state (an attribute read, no round trip) and gathers
        the finished ones with one call: per-future callbacks would wake the
        client's event loop once per job, which costs more than trivial jobs do.
        """
        while True:
            reported = self._collect_once()
            if reported is None:
                return
            if not reported:
                time.sleep(_collect_interval(len(self._futures)))

    def _collect_once(self) -> int | None:
        """Report every future that is no longer pending; None once the backend is closed.

        A round of its own so no reference to a future (which keeps its result
        alive on a worker) outlives it.
        """
        with self._lock:
            if self._client is None:
                self._collector = None
                return None
            self._rounds += 1
            done = _not_pending(self._futures.values(), full=self._rounds % 8 == 0)
            for launch, _ in done:
                del self._futures[launch.job_id]
        finished = [(l, f) for l, f in done if f.status == "finished"]
        values = self._gather([f for _, f in finished])
        for (launch, fut), value in zip(finished, values):
            self._reporter.finished(_outcome(launch, fut, value))
        for launch, fut in done:
            if fut.status != "finished":
                self._reporter.finished(_outcome(launch, fut, _exception(fut)))
        return len(done)

    def _gather(self, futures: list) -> list:
        try:
            return self._client.gather(futures, errors="raise") if futures else []
        except Exception as exc:  # noqa: BLE001 - a worker died after finishing: report per job
            return [exc] * len(futures)

    def cancel(self, job_ids: Sequence[int]) -> None:
        with self._lock:
            futures = [self._futures.pop(j)[1] for j in job_ids if j in self._futures]
        if futures and self._client is not None:
            self._client.cancel(futures)

    def running(self) -> set[int]:
        with self._lock:
            return set(self._futures)

    def close(self) -> None:
        """Stop the cluster; jobs still pending end CANCELLED."""
        with self._lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
            pending, self._futures = self._futures, {}
        for job_id, (launch, _) in pending.items():
            self._reporter.finished(Outcome(job_id, launch.attempt, "CANCELLED",
                                            reason="session closed before the job finished"))
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _not_pending(items, full: bool, window: int = 256) -> list:
    """The (launch, future) pairs whose future has ended.

    dask runs equal-priority tasks roughly in submission order, so a look
    stops after `window` pending futures in a row; every few rounds a full
    look catches the ones that finished out of order.
    """
    done, streak = [], 0
    for launch, fut in items:
        if fut.status != "pending":
            done.append((launch, fut))
            streak = 0
        else:
            streak += 1
            if not full and streak >= window:
                break
    return done


def _exception(fut) -> BaseException | None:
    if fut.status == "cancelled":
        return None
    try:
        return fut.exception(timeout=30)
    except Exception as exc:  # noqa: BLE001
        return exc


def _outcome(launch: Launch, fut, res) -> Outcome:
    """Translate what dask gave back into an Outcome."""
    if isinstance(res, dict) and res.get("mpi_step"):
        return verdict(launch, res["exit_code"], res["reason"], host=res["host"], started=res["started"],
                       ended=res["ended"])
    if isinstance(res, dict) and "ok" in res:
        if res["ok"]:
            return Outcome(launch.job_id, launch.attempt, "SUCCEEDED", host=res["host"],
                           started=res["started"], ended=res["ended"], result=res["value"])
        return Outcome(launch.job_id, launch.attempt, "FAILED", reason=res["message"],
                       host=res["host"], started=res["started"], ended=res["ended"])
    if fut.status == "cancelled":
        return Outcome(launch.job_id, launch.attempt, "CANCELLED", reason="cancelled")
    # dask itself failed: worker died (KilledWorker), the call could not be unpickled, ...
    return Outcome(launch.job_id, launch.attempt, "FAILED",
                   reason=f"the worker could not run the job: {type(res).__name__}: {res}")
