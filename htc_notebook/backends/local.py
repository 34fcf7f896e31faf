"""The embedded local backend: no scheduler needed.

Python jobs run on a dask `LocalCluster` (one process per core, one thread
each) started on first use; command jobs run as subprocesses through
`CommandRunner`, which also runs MPI functions on a local rank pool (one rank
per core, started by the first). All report to the runtime through a `Reporter`.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.dask_jobs import ALLOWED_FAILURES, DaskJobs
from htc_notebook.backends.local_commands import CommandRunner
from htc_notebook.backends.mpi_jobs import on_pool, pool_spec, pooled, wrap
from htc_notebook.backends.sandbox import check_confinement, confined
from htc_notebook.backends.mpi_pool import RankPool
from htc_notebook.spec import PartitionProfile


class LocalBackend:
    """Runs launches on this machine within the `local` profile's cores."""

    name = "local"

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, log_directory: str | None = None):
        self.profile = profile
        self.pool = RankPool(pool_spec(profile, log_directory))  # started by its first task
        self._commands = CommandRunner(profile.cores_per_node, reporter, pool=self.pool)
        self._calls = DaskJobs(self._make_cluster, reporter, window=profile.dask_window)

    def _make_cluster(self):
        from distributed import LocalCluster

        return LocalCluster(n_workers=self.profile.cores_per_node, threads_per_worker=1,
                            processes=True, dashboard_address=":0",
                            scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES})

    @property
    def client(self):
        """The dask Client of the local cluster, started on first use."""
        return self._calls.client

    def dask_runners(self) -> dict[str, DaskJobs]:
        """The dask clusters this backend may run, by kind."""
        return {"local": self._calls}

    def submit(self, launches: Sequence[Launch]) -> None:
        """Commands and MPI programs as subprocesses, MPI functions on the rank pool (all within the
        profile's cores); Python calls on dask."""
        launches = [confined(l, self.profile) for l in launches]
        check_confinement(self.profile, launches)
        self._commands.submit([l if not l.mpi else pooled(l, self.profile) if on_pool(l, self.profile)
                               else wrap(l, self.profile) for l in launches if l.kind == "command" or l.mpi])
        self._calls.submit([l for l in launches if l.kind == "python" and not l.mpi])

    def cancel(self, job_ids: Sequence[int]) -> None:
        self._commands.cancel(job_ids)
        self._calls.cancel(job_ids)

    def running(self) -> set[int]:
        return self._calls.running() | self._commands.running()

    def render(self, launches: Sequence[Launch]) -> str:
        return render_local(self.profile, launches)

    def close(self) -> None:
        """Stop everything; jobs still queued or running end CANCELLED."""
        self._commands.close()
        self._calls.close()
        self.pool.close()


def render_local(profile: PartitionProfile, launches: Sequence[Launch]) -> str:
    """What the local backend would run, as text."""
    lines = [f"# local backend: {profile.cores_per_node} cores on this machine"]
    for l in map(lambda l: confined(l, profile), launches):
        if l.mpi and on_pool(l, profile):
            what = (f"on the rank pool ({shlex.join(pool_spec(profile, None).argv)}): {l.mpi.ranks} ranks "
                    f"run python call {_call_name(l.call)}")
        elif l.mpi:
            l = wrap(l, profile, write=False)
            what = shlex.join(l.command)
        else:
            what = shlex.join(l.command) if l.kind == "command" else f"python call {_call_name(l.call)}"
        extra = f" timeout={l.timeout}s" if l.timeout else ""
        lines.append(f"job {l.job_id}: cores={l.cores}{extra} cwd={l.cwd}\n    {what}")
    return "\n".join(lines)


def _call_name(call) -> str:
    fn = getattr(call, "fn", None)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
