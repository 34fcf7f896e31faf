"""The SLURM backend: command jobs as sbatch arrays, Python jobs on dask-jobqueue pilots."""

from __future__ import annotations

import shlex
from typing import Sequence

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.dask_jobs import DaskJobs
from htc_notebook.backends.slurm.arrays import ArrayRunner
from htc_notebook.backends.mpi_jobs import on_pool, packs, pool_spec, pooled, wrap
from htc_notebook.backends.sandbox import check_confinement, confined
from htc_notebook.backends.slurm.pilots import (check_probe, make_pilot_cluster, pack_options, pilot_options,
                                                replace_draining_pilots, start_adapting)
from htc_notebook.errors import BackendError
from htc_notebook.spec import PartitionProfile


class SlurmBackend:
    """Runs launches on one SLURM partition profile."""

    name = "slurm"

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, log_directory: str | None = None,
                 grace: float = 30.0):
        self.profile = profile
        self.arrays = ArrayRunner(profile, reporter, grace=grace)
        self.pilots = DaskJobs(lambda: make_pilot_cluster(profile, log_directory=log_directory), reporter,
                               window=profile.dask_window)
        self.pool = pool_spec(profile, log_directory)
        self.packs = DaskJobs(lambda: make_pilot_cluster(profile, log_directory=log_directory, packed=True),
                              reporter, pool=self.pool, window=profile.dask_window)

    def dask_runners(self) -> dict[str, DaskJobs]:
        """The dask clusters this backend may run, by kind."""
        return {"pilots": self.pilots, "mpi-packs": self.packs}

    def submit(self, launches: Sequence[Launch]) -> None:
        """Commands and per-task MPI jobs as arrays; Python calls on pilots; packed MPI jobs as steps."""
        launches = self._confined(launches)
        mpi = [l for l in launches if l.mpi]
        packed = [pooled(l, self.profile) if on_pool(l, self.profile) else wrap(l, self.profile, step=True)
                  for l in mpi if packs(l, self.profile)]
        alone = [wrap(l, self.profile) for l in mpi if not packs(l, self.profile)]
        self.arrays.submit([l for l in launches if l.kind == "command" and not l.mpi] + alone)
        # a pilot's calls are held by the pilot job's own cgroup (SLURM's), not one each: cgroups made
        # inside a job's would outlive a killed worker and keep slurmstepd from removing the job's
        calls = [l.asking(memory=None) for l in launches if l.kind == "python" and not l.mpi]
        workers = self.profile.pilot_workers or self.profile.cores_per_node
        self._start(self.pilots, calls, -(-len(calls) // workers))
        self._start(self.packs, packed, 1)

    def _start(self, runner: DaskJobs, launches: list[Launch], jobs: int) -> None:
        if not launches:
            return
        first = not runner.started
        if first:
            # ask for allocations now (adapt() would wait for its first tick), then read the verdict
            # of the `sbatch --test-only` probe that ran while the scheduler started: a rejected
            # script raises here, with SLURM's message, before any job is handed to dask.
            runner.cluster.scale(jobs=min(self.profile.max_pilots, jobs))
            replace_draining_pilots(runner.client, runner.cluster)
            try:
                check_probe(runner.cluster)
            except BackendError:
                runner.close()
                raise
        runner.submit(launches)
        if first:
            start_adapting(runner.cluster, self.profile)

    def hold(self, launches: Sequence[Launch], tokens: dict[int, str]) -> None:
        """Feed command jobs an earlier session held (or sent without an answer: `tokens`)."""
        self.arrays.hold(self._confined(launches), tokens)

    def _confined(self, launches: Sequence[Launch]) -> list[Launch]:
        """Jobs confined as the profile says (refused here if this machine cannot confine them)."""
        check_confinement(self.profile, launches)
        return [confined(l, self.profile) for l in launches]

    def adopt(self, job_id: int, attempt: int, native_id: str, cwd: str, timeout: int | None) -> None:
        """Watch an array task submitted by an earlier session (jobs outlive kernels)."""
        self.arrays.adopt(job_id, attempt, native_id, cwd, timeout)

    def cancel(self, job_ids: Sequence[int]) -> None:
        self.arrays.cancel(job_ids)
        self.pilots.cancel(job_ids)
        self.packs.cancel(job_ids)

    def running(self) -> set[int]:
        return self.arrays.running() | self.pilots.running() | self.packs.running()

    def render(self, launches: Sequence[Launch]) -> str:
        """The sbatch scripts (arrays) and the pilot job script, without submitting."""
        parts = []
        launches = [confined(l, self.profile) for l in launches]
        mpi = [l for l in launches if l.mpi]
        packed = [l if on_pool(l, self.profile) else wrap(l, self.profile, step=True, write=False)
                  for l in mpi if packs(l, self.profile)]
        alone = [wrap(l, self.profile, write=False) for l in mpi if not packs(l, self.profile)]
        commands = [l for l in launches if l.kind == "command" and not l.mpi] + alone
        for chunk, script in self.arrays.plan(commands):
            parts.append(f"# array of {len(chunk)} jobs (ids {chunk[0].job_id}..{chunk[-1].job_id})\n{script}")
        if any(l.kind == "python" and not l.mpi for l in launches):
            parts.append(f"# pilot job (dask-jobqueue)\n{pilot_job_script(self.profile)}")
        if packed:
            parts.append(f"# packed MPI allocation (dask-jobqueue)\n{pilot_job_script(self.profile, packed=True)}")
            parts += [f"# job {l.job_id}: a step of it\n{shlex.join(l.command)}" for l in packed if l.command]
            if any(not l.command for l in packed):
                ids = ", ".join(str(l.job_id) for l in packed if not l.command)
                parts.append(f"# jobs {ids}: on the allocation's MPI rank pool, started once as\n"
                             f"{shlex.join(self.pool.argv)} <driver address>")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop pilots and watching; submitted arrays keep running in SLURM."""
        self.arrays.close()
        self.pilots.close()
        self.packs.close()


def pilot_job_script(profile: PartitionProfile, packed: bool = False) -> str:
    """The pilot's (or packed MPI allocation's) job script as dask-jobqueue renders it (nothing submitted)."""
    from dask_jobqueue.slurm import SLURMJob

    opts = (pack_options if packed else pilot_options)(profile)
    opts.pop("scheduler_options", None)
    return SLURMJob(scheduler="tcp://scheduler:8786", name="pilot", **opts).job_script()
