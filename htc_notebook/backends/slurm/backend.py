"""The SLURM backend: command jobs as sbatch arrays (or on the pilots: `commands: pilots`), Python jobs on
dask-jobqueue pilots."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.dask_jobs import DaskJobs
from htc_notebook.backends.dask_security import PROTOCOL, forget_credentials, private_directory, rendered_security
from htc_notebook.backends.command_zygotes import in_zygote
from htc_notebook.backends.images import worker_argv
from htc_notebook.backends.slurm import jobqueue, scheduler
from htc_notebook.backends.slurm.arrays import ArrayRunner, array_scripts
from htc_notebook.backends.mpi_jobs import on_pool, packs, pool_spec, pooled, stage, wrap
from htc_notebook.backends.sandbox import check_confinement, confined
from htc_notebook.backends.slurm.pilots import (check_probe, make_pilot_cluster, pack_options, pilot_lifetime,
                                                pilot_options, pilot_workers, replace_draining_pilots,
                                                replace_pilots_in_time, start_adapting)
from htc_notebook.errors import BackendError
from htc_notebook.spec import PartitionProfile


DEFAULT_MAX_ARRAY = 1001  # SLURM's default MaxArraySize
SHOWN = 20  # a dry run shows this many command jobs on the pilots, then counts the rest


class SlurmBackend:
    """Runs launches on one SLURM partition profile."""

    name = "slurm"

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, credentials: str | os.PathLike,
                 log_directory: str | None = None, grace: float = 30.0, pilot_python: Callable[[], str] | None = None,
                 call_times: Callable[[int, str], list[float]] | None = None):
        """`credentials`: a directory of the data root the nodes see, where each dask cluster of this
        backend gets a private directory for its TLS credentials (`dask_security`).
        `pilot_python`: asked once, when the first pilot is: the command its workers start Python
        with (the profile's pilot_image made ready: `pilots.image_python`).
        `call_times`: how long a function's calls took before (`DaskJobs`)."""
        self.profile = profile
        self.arrays = ArrayRunner(profile, reporter, grace=grace)
        self._log_directory = log_directory
        self._credentials = credentials
        self._made: list[tuple[object, os.PathLike[str]]] = []  # (cluster, its credentials directory), removed at close
        self.pilots = DaskJobs(lambda: self._cluster(python=pilot_python and pilot_python()),
                               reporter, window=profile.dask_window, call_times=call_times,
                               on_client=replace_draining_pilots)  # also when started by scale()
        self.pool = pool_spec(profile, log_directory)
        self.packs = DaskJobs(lambda: self._cluster(packed=True), reporter, pool=self.pool, window=profile.dask_window,
                              on_client=replace_draining_pilots)

    def _cluster(self, *, packed: bool = False, python: str | None = None):
        """A pilot cluster (`packed`: an MPI allocation) with its credentials in a new private directory,
        asking for each pilot's replacement a queue wait ahead of its deadline."""
        where = private_directory(self._credentials)
        try:
            cluster = make_pilot_cluster(self.profile, where, log_directory=self._log_directory, packed=packed,
                                         python=python)
        except BaseException:
            forget_credentials(where)
            raise
        self._made.append((cluster, where))
        replace_pilots_in_time(cluster, pilot_lifetime(self.profile))
        return cluster

    def dask_runners(self) -> dict[str, DaskJobs]:
        """The dask clusters this backend may run, by kind."""
        return {"pilots": self.pilots, "mpi-packs": self.packs}

    def submit(self, launches: Sequence[Launch]) -> None:
        """Commands and per-task MPI jobs as arrays; Python calls on pilots; packed MPI jobs as steps."""
        p = plan(self.profile, launches)
        stage(p.arrays + p.packed)
        self.arrays.submit(p.arrays)
        self._start(self.pilots, p.calls + p.commands, -(-len(p.calls + p.commands) // pilot_workers(self.profile)))
        self._start(self.packs, p.packed, 1)

    def _start(self, runner: DaskJobs, launches: list[Launch], jobs: int) -> None:
        if not launches:
            return
        first = not runner.started
        if first:
            # ask for allocations now (adapt() would wait for its first tick), then read the verdict
            # of the `sbatch --test-only` probe that ran while the scheduler started: a rejected
            # script raises here, with SLURM's message, before any job is handed to dask.
            runner.cluster.scale(jobs=min(self.profile.max_pilots, jobs))
            try:
                check_probe(runner.cluster)
            except BackendError:
                runner.close()
                raise
        runner.submit(launches)
        if first:
            start_adapting(runner.cluster, self.profile)

    def hold(self, launches: Sequence[Launch], tokens: dict[int, str]) -> None:
        """Feed command jobs an earlier session held (or sent without an answer: `tokens`, which SLURM
        may have: watched as arrays whatever the profile says now)."""
        sent = plan(self.profile, [launch for launch in launches if launch.job_id in tokens], pilots=False)
        p = plan(self.profile, [launch for launch in launches if launch.job_id not in tokens])
        self.arrays.hold(sent.arrays + p.arrays, tokens)
        self._start(self.pilots, p.commands, -(-len(p.commands) // pilot_workers(self.profile)))

    def adopt(self, job_id: int, attempt: int, native_id: str, cwd: str, timeout: int | None) -> None:
        """Watch an array task submitted by an earlier session (jobs outlive kernels)."""
        self.arrays.adopt(job_id, attempt, native_id, cwd, timeout)

    def cancel(self, job_ids: Sequence[int]) -> None:
        self.arrays.cancel(job_ids)
        self.pilots.cancel(job_ids)
        self.packs.cancel(job_ids)

    def running(self) -> set[int]:
        return self.arrays.running() | self.pilots.running() | self.packs.running()

    def close(self) -> None:
        """Stop pilots and watching, and remove the pilots' credentials; submitted arrays keep running in SLURM."""
        self.arrays.close()
        self.pilots.close()
        self.packs.close()
        made, self._made = self._made, []
        for cluster, where in made:
            forget_credentials(where, cluster)


@dataclass(frozen=True)
class SlurmPlan:
    """What `submit` hands each runner (and what a dry run shows)."""

    arrays: list[Launch]  # commands, and MPI jobs in allocations of their own: sbatch arrays
    calls: list[Launch]  # Python calls: on the profile's pilots
    packed: list[Launch]  # MPI jobs packed into the profile's shared allocation: steps, or on its rank pool
    commands: list[Launch]  # command jobs on the pilots (`commands: pilots`), a dask task each


def on_pilots(launch: Launch, profile: PartitionProfile) -> bool:
    """Does a command job run on the profile's pilots? With `commands: pilots`, if it needs one core of
    one node and no GPU (a pilot's worker holds one core; `after`: sent behind array tasks, in SLURM)."""
    return (profile.commands == "pilots" and launch.kind == "command" and launch.mpi is None and launch.cores == 1
            and not launch.gpus and not launch.after)


def plan(profile: PartitionProfile, launches: Sequence[Launch], *, pilots: bool = True) -> SlurmPlan:
    """How the SLURM backend runs `launches` (a pure function, but for refusing a machine that
    cannot confine them as the profile asks). `pilots=False`: no command job on the pilots."""
    check_confinement(profile, launches)
    # a command on the pilots runs in its view's zygote there; `command` keeps the bwrap line it is the same as
    zygotes = {launch.job_id: in_zygote(launch, profile) for launch in launches
               if pilots and on_pilots(launch, profile)}
    launches = [confined(launch, profile) for launch in launches]
    mpi = [launch for launch in launches if launch.mpi]
    packed = [pooled(launch, profile) if on_pool(launch, profile) else wrap(launch, profile, step=True)
              for launch in mpi if packs(launch, profile)]
    alone = [wrap(launch, profile) for launch in mpi if not packs(launch, profile)]
    calls = [launch for launch in launches if launch.kind == "python" and not launch.mpi]
    on = [replace(launch, zygote=zygotes[launch.job_id]) for launch in launches if launch.job_id in zygotes]
    piloted = set(zygotes)
    commands = [launch for launch in launches
                if launch.kind == "command" and not launch.mpi and launch.job_id not in piloted]
    return SlurmPlan(commands + alone, calls, packed, on)


def render(profile: PartitionProfile, launches: Sequence[Launch], max_array: int | None = None) -> str:
    """The sbatch scripts (arrays) and job scripts (pilots, packed allocation) `submit` would send.
    `max_array`: the cluster's MaxArraySize (asked of SLURM if not given)."""
    p, parts = plan(profile, launches), []
    if p.arrays and max_array is None:
        try:
            max_array = scheduler.max_array_size()
        except BackendError as exc:
            max_array = DEFAULT_MAX_ARRAY
            parts.append(f"# ({exc}: arrays are split at SLURM's default MaxArraySize, {max_array})")
    for chunk, script in array_scripts(profile, p.arrays, max_array or DEFAULT_MAX_ARRAY):
        parts.append(f"# array of {len(chunk)} jobs (ids {chunk[0].job_id}..{chunk[-1].job_id})\n{script}")
    if p.calls or p.commands:
        what = " and ".join(f"{n} {kind}" for n, kind in ((len(p.calls), "Python calls"),
                                                          (len(p.commands), "command jobs")) if n)
        parts.append(f"# pilot job (dask-jobqueue) for {what}\n{pilot_job_script(profile)}")
        parts += [f"# job {launch.job_id}: on a pilot's worker\n{shlex.join(launch.command)}"
                  for launch in p.commands[:SHOWN]]
        if len(p.commands) > SHOWN:
            parts.append(f"# ... and {len(p.commands) - SHOWN} more command jobs on the pilots' workers")
    if p.packed:
        parts.append(f"# packed MPI allocation (dask-jobqueue)\n{pilot_job_script(profile, packed=True)}")
        parts += [f"# job {launch.job_id}: a step of it\n{shlex.join(launch.command)}"
                  for launch in p.packed if launch.command]
        if pool := [str(launch.job_id) for launch in p.packed if not launch.command]:
            parts.append(f"# jobs {', '.join(pool)}: on the allocation's MPI rank pool, started once as\n"
                         f"{shlex.join(pool_spec(profile, None).argv)} <driver address>")
    return "\n".join(parts)


def pilot_job_script(profile: PartitionProfile, packed: bool = False) -> str:
    """The pilot's (or packed MPI allocation's) job script as dask-jobqueue renders it (nothing submitted;
    the cluster's credential files are named, not made)."""
    SLURMJob = jobqueue.slurm().SLURMJob
    if packed:
        opts = pack_options(profile)
    else:  # a pilot_image is unpacked at the first pilot: its place is named, not known
        opts = pilot_options(profile, python=profile.pilot_image and shlex.join(worker_argv(
            profile.container_runtime, f"<{profile.pilot_image} unpacked>", "<data root>", profile.python or "python3",
            profile.container_binds)))
    opts.pop("scheduler_options", None)
    return SLURMJob(scheduler=f"{PROTOCOL}scheduler:8786", name="pilot", protocol=PROTOCOL,
                    security=rendered_security(), **opts).job_script()
