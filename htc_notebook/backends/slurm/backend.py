"""The SLURM backend: command jobs as sbatch arrays, Python jobs on dask-jobqueue pilots."""

from __future__ import annotations

from typing import Sequence

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.dask_jobs import DaskJobs
from htc_notebook.backends.slurm.arrays import ArrayRunner
from htc_notebook.backends.slurm.pilots import check_probe, make_pilot_cluster, pilot_options
from htc_notebook.errors import BackendError
from htc_notebook.spec import PartitionProfile


class SlurmBackend:
    """Runs launches on one SLURM partition profile."""

    name = "slurm"

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, log_directory: str | None = None):
        self.profile = profile
        self.arrays = ArrayRunner(profile, reporter)
        self.pilots = DaskJobs(lambda: make_pilot_cluster(profile, log_directory=log_directory), reporter)

    def submit(self, launches: Sequence[Launch]) -> None:
        self.arrays.submit([l for l in launches if l.kind == "command"])
        calls = [l for l in launches if l.kind == "python"]
        if not calls:
            return
        first = not self.pilots.started
        if first:
            try:  # the probe ran while the scheduler and client started
                check_probe(self.pilots.cluster)
            except BackendError:
                self.pilots.close()
                raise
        self.pilots.submit(calls)
        if first:
            # ask for pilots now: adapt() would wait for its first tick before asking
            workers = self.profile.pilot_workers or self.profile.cores_per_node
            self.pilots.cluster.scale(jobs=min(self.profile.max_pilots, -(-len(calls) // workers)))

    def adopt(self, job_id: int, attempt: int, native_id: str, cwd: str, timeout: int | None) -> None:
        """Watch an array task submitted by an earlier session (jobs outlive kernels)."""
        self.arrays.adopt(job_id, attempt, native_id, cwd, timeout)

    def cancel(self, job_ids: Sequence[int]) -> None:
        self.arrays.cancel(job_ids)
        self.pilots.cancel(job_ids)

    def running(self) -> set[int]:
        return self.arrays.running() | self.pilots.running()

    def render(self, launches: Sequence[Launch]) -> str:
        """The sbatch scripts (arrays) and the pilot job script, without submitting."""
        parts = []
        commands = [l for l in launches if l.kind == "command"]
        for chunk, script in self.arrays.plan(commands):
            parts.append(f"# array of {len(chunk)} jobs (ids {chunk[0].job_id}..{chunk[-1].job_id})\n{script}")
        if any(l.kind == "python" for l in launches):
            parts.append(f"# pilot job (dask-jobqueue)\n{pilot_job_script(self.profile)}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop pilots and watching; submitted arrays keep running in SLURM."""
        self.arrays.close()
        self.pilots.close()


def pilot_job_script(profile: PartitionProfile) -> str:
    """The pilot's job script as dask-jobqueue renders it (no job is submitted)."""
    from dask_jobqueue.slurm import SLURMJob

    opts = pilot_options(profile)
    opts.pop("scheduler_options", None)
    return SLURMJob(scheduler="tcp://scheduler:8786", name="pilot", **opts).job_script()
