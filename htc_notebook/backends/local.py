"""The embedded local backend: no scheduler needed.

Python jobs run on a dask `LocalCluster` (one process per core, one thread
each) started on first use, on loopback and with TLS credentials of its own
(`dask_security`); command jobs run as subprocesses through
`CommandRunner`, which also runs MPI functions on a local rank pool (one rank
per core, started by the first). All report to the runtime through a `Reporter`.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from htc_notebook.backends.base import Feed, Launch, Reporter
from htc_notebook.backends.command_zygotes import in_zygote
from htc_notebook.backends.dask_jobs import ALLOWED_FAILURES, DaskJobs
from htc_notebook.backends.dask_security import DASHBOARD_ADDRESS, LOOPBACK, PROTOCOL, cluster_security
from htc_notebook.backends.local_commands import CommandRunner
from htc_notebook.backends.mpi_jobs import for_task, on_pool, pool_spec, pooled, stage, wrap
from htc_notebook.backends.sandbox import check_confinement, confined
from htc_notebook.backends.mpi_pool import PoolSpec, RankPool
from htc_notebook.spec import PartitionProfile


class LocalBackend:
    """Runs launches on this machine within the `local` profile's cores."""

    name = "local"

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, log_directory: str | None = None,
                 call_times: Callable[[int, str], list[float]] | None = None):
        self.profile = profile
        self._pool_spec = pool_spec(profile, log_directory)
        self._pools: dict[PoolSpec, RankPool] = {}  # one per task (`for_task`), each started by its first call
        self._pools_lock = threading.Lock()
        self._commands = CommandRunner(profile.cores_per_node, reporter, pools=self._pool_for)
        self._calls = DaskJobs(self._make_cluster, reporter, window=profile.dask_window, call_times=call_times)

    def _make_cluster(self):
        """Scheduler, workers, nannies and dashboard on loopback; every comm mutual TLS with the
        cluster's own credentials (its Client takes them from the cluster)."""
        from distributed import LocalCluster

        return LocalCluster(n_workers=self.profile.cores_per_node, threads_per_worker=1,
                            processes=True, host=LOOPBACK, dashboard_address=DASHBOARD_ADDRESS,
                            security=cluster_security(), protocol=PROTOCOL,
                            scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES})

    @property
    def client(self):
        """The dask Client of the local cluster, started on first use."""
        return self._calls.client

    def _pool_for(self, launch: Launch) -> RankPool:
        """The rank pool that serves `launch`'s task."""
        spec = for_task(self._pool_spec, launch.view)
        with self._pools_lock:
            return self._pools.setdefault(spec, RankPool(spec))

    def dask_runners(self) -> dict[str, DaskJobs]:
        """The dask clusters this backend may run, by kind."""
        return {"local": self._calls}

    def submit(self, launches: Sequence[Launch]) -> None:
        """Commands and MPI jobs as subprocesses (within the profile's cores); Python calls on dask."""
        p = plan(self.profile, launches)
        stage(p.commands)
        self._commands.submit(p.commands)
        self._calls.submit(p.calls)

    def feed(self, source: Feed) -> None:
        """The rest of a large submission of command jobs (`Feed`), a slice at a time as the command
        runner's queue drains; each slice placed as `submit` places launches."""
        self._commands.feed(_Placed(source, self.profile))

    def cancel(self, job_ids: Sequence[int]) -> None:
        self._commands.cancel(job_ids)
        self._calls.cancel(job_ids)

    def running(self) -> set[int]:
        return self._calls.running() | self._commands.running()

    def close(self) -> None:
        """Stop everything; jobs still queued or running end CANCELLED."""
        self._commands.close()
        self._calls.close()
        with self._pools_lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()


@dataclass(frozen=True)
class LocalPlan:
    """What `submit` hands each runner (and what a dry run shows)."""

    commands: list[Launch]  # subprocesses: commands, MPI programs under the launcher, MPI functions on the rank pool
    calls: list[Launch]  # Python calls, on the LocalCluster


def plan(profile: PartitionProfile, launches: Sequence[Launch]) -> LocalPlan:
    """How the local backend runs `launches` (a pure function, but for refusing a machine that
    cannot confine them as the profile asks)."""
    check_confinement(profile, launches)
    # a confined command runs in its view's zygote; `command` keeps the bwrap line it is the same as
    launches = [_placed(launch, profile) for launch in launches]
    commands = [launch if not launch.mpi else pooled(launch, profile) if on_pool(launch, profile)
                else wrap(launch, profile) for launch in launches if launch.kind == "command" or launch.mpi]
    return LocalPlan(commands, [launch for launch in launches if launch.kind == "python" and not launch.mpi])


def _placed(launch: Launch, profile: PartitionProfile) -> Launch:
    """`launch` as it runs on `profile` (`confined`), with the zygote its command runs in, worked out
    from the command itself (a Python call has none: not copied again, ~11 us a call)."""
    placed, zygote = confined(launch, profile), in_zygote(launch, profile)
    return placed if zygote is None and placed.zygote is None else replace(placed, zygote=zygote)


class _Placed:
    """A feed of command jobs whose slices come placed (`plan`) and staged, as `submit` hands them over."""

    def __init__(self, source: Feed, profile: PartitionProfile):
        self._source, self._profile = source, profile

    def take(self) -> list[Launch]:
        p = plan(self._profile, self._source.take())
        assert not p.calls, "a command feed gives command jobs only"
        stage(p.commands)
        return p.commands

    def left(self) -> Sequence[int]:
        return self._source.left()

    def close(self) -> None:
        self._source.close()


def render(profile: PartitionProfile, launches: Sequence[Launch], shown: int = 20) -> str:
    """What the local backend would run, as text: each run of jobs that run alike once, up to `shown` runs."""
    p = plan(profile, launches)
    runs: list[tuple[list[int], str]] = []
    for launch in sorted(p.commands + p.calls, key=lambda launch: launch.job_id):
        if launch.kind == "python" and not launch.command:
            what = (f"on the task's rank pool ({shlex.join(for_task(pool_spec(profile, None), launch.view).argv)}): "
                    f"{launch.mpi.ranks} ranks "
                    f"run python call {_call_name(launch.call)}"
                    if launch.mpi else f"python call {_call_name(launch.call)}")
        else:
            what = shlex.join(launch.command)
        timeout = f" timeout={launch.timeout}s" if launch.timeout else ""
        what = f"cores={launch.cores}{timeout} cwd={launch.cwd}\n    {what}"
        if runs and runs[-1][1] == what:
            runs[-1][0].append(launch.job_id)
        else:
            runs.append(([launch.job_id], what))
    lines = [f"# local backend: {profile.cores_per_node} cores on this machine"]
    lines += [f"job{'s' if len(ids) > 1 else ''} {ids[0]}{f'..{ids[-1]}' if len(ids) > 1 else ''}: {what}"
              for ids, what in runs[:shown]]
    if len(runs) > shown:
        lines.append(f"... and {sum(len(ids) for ids, _ in runs[shown:])} more jobs")
    return "\n".join(lines)


def _call_name(call) -> str:
    fn = getattr(call, "fn", None)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
