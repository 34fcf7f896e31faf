"""The embedded local backend: no scheduler needed.

Python jobs run on a dask `LocalCluster` (one process per core, one thread
each) started on first use; command jobs run as subprocesses through
`CommandRunner`. Both report to the runtime through a `Reporter`.
"""

from __future__ import annotations

import shlex
import threading
from typing import Sequence

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.local_commands import CommandRunner
from htc_notebook.backends.worker import run_call
from htc_notebook.ledger import Outcome
from htc_notebook.spec import PartitionProfile


class LocalBackend:
    """Runs launches on this machine within the `local` profile's cores."""

    name = "local"

    def __init__(self, profile: PartitionProfile, reporter: Reporter):
        self.profile = profile
        self._reporter = reporter
        self._commands = CommandRunner(profile.cores_per_node, reporter)
        self._client = None
        self._cluster = None
        self._futures: dict[int, object] = {}
        self._lock = threading.Lock()

    # -- dask for Python jobs ------------------------------------------------
    @property
    def client(self):
        """The dask Client of the local cluster, started on first use."""
        with self._lock:
            if self._client is None:
                from distributed import Client, LocalCluster

                self._cluster = LocalCluster(n_workers=self.profile.cores_per_node, threads_per_worker=1,
                                             processes=True, dashboard_address=":0")
                self._client = Client(self._cluster)
            return self._client

    def submit(self, launches: Sequence[Launch]) -> None:
        calls = [l for l in launches if l.kind == "python"]
        commands = [l for l in launches if l.kind == "command"]
        if commands:
            self._commands.submit(commands)
        if calls:
            self._submit_calls(calls)

    def _submit_calls(self, launches: list[Launch]) -> None:
        from distributed import as_completed

        client = self.client
        futures = client.map(run_call, [l.call for l in launches], [str(l.cwd) for l in launches],
                             [l.env for l in launches],
                             [(str(l.log_out), str(l.log_err)) for l in launches],
                             key=[f"htc-job-{l.job_id}-{l.attempt}" for l in launches], pure=False)
        by_key = {}
        with self._lock:
            for launch, fut in zip(launches, futures):
                self._futures[launch.job_id] = fut
                by_key[fut.key] = launch
        threading.Thread(target=self._collect, args=(as_completed(futures, with_results=True,
                                                                  raise_errors=False), by_key),
                         name="htc-collect", daemon=True).start()

    def _collect(self, completed, by_key: dict[str, Launch]) -> None:
        for fut, res in completed:
            launch = by_key[fut.key]
            with self._lock:
                self._futures.pop(launch.job_id, None)
            self._reporter.finished(_outcome(launch, fut, res))

    def cancel(self, job_ids: Sequence[int]) -> None:
        self._commands.cancel(job_ids)
        with self._lock:
            futures = [self._futures.pop(j) for j in job_ids if j in self._futures]
        if futures and self._client is not None:
            self._client.cancel(futures)

    def running(self) -> set[int]:
        with self._lock:
            ids = set(self._futures)
        return ids | self._commands.running()

    def render(self, launches: Sequence[Launch]) -> str:
        lines = [f"# local backend: {self.profile.cores_per_node} cores on this machine"]
        for l in launches:
            what = shlex.join(l.command) if l.kind == "command" else f"python call {_call_name(l.call)}"
            extra = f" timeout={l.timeout}s" if l.timeout else ""
            lines.append(f"job {l.job_id}: cores={l.cores}{extra} cwd={l.cwd}\n    {what}")
        return "\n".join(lines)

    def close(self) -> None:
        """Stop everything; jobs still queued or running end CANCELLED."""
        self._commands.close()
        with self._lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
            pending, self._futures = self._futures, {}
        for job_id, fut in pending.items():
            attempt = int(fut.key.rsplit("-", 1)[1])
            self._reporter.finished(Outcome(job_id, attempt, "CANCELLED",
                                            reason="session closed before the job finished"))
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _call_name(call) -> str:
    fn = getattr(call, "fn", None)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _outcome(launch: Launch, fut, res) -> Outcome:
    """Translate what dask gave back into an Outcome."""
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
