"""MPI launches, whatever runs them: the launcher line, the environment, the verdict.

An MPI launch is a `Launch` with `mpi` set: a command job (an MPI executable) or a
Python job (a function run on every rank by `mpi_ranks`). Backends call `wrap` to
get the command that starts all ranks, and `verdict` to turn the launcher's exit
code (and, for Python jobs, the rank reports) into an Outcome.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from htc_notebook.backends.base import Launch
from htc_notebook.backends.launchers import launch_argv, launch_env
from htc_notebook.backends.mpi_ranks import rank_argv, rank_dir, read_outcome, write_call
from htc_notebook.ledger import Outcome
from htc_notebook.spec import PartitionProfile


def wrap(launch: Launch, profile: PartitionProfile, *, step: bool = False, write: bool = True) -> Launch:
    """The launch as a command job that starts every rank with the profile's launcher.

    `step`: run as an exclusive sub-step of a larger allocation (packed). `write`: put a
    Python call where the ranks will load it (False for a dry run).
    """
    layout = launch.mpi
    inner = list(launch.command)
    if launch.kind == "python":
        d = rank_dir(launch.cwd, launch.job_id, launch.attempt)
        if write:
            write_call(d, launch.call.fn, launch.call.args, launch.call.kwargs, ranks=layout.ranks)
        inner = rank_argv(profile.python or sys.executable, d)
    mem = (profile.memory_per_node // profile.cores_per_node) if step else None
    argv = launch_argv(layout.launcher or profile.launcher, layout, inner, mpi=profile.mpi, step_mem_per_cpu=mem)
    env = {**launch.env, **launch_env(layout, omp_places=profile.omp_places, omp_proc_bind=profile.omp_proc_bind)}
    if os.geteuid() == 0:  # Open MPI refuses root unless told twice (test clusters run as root)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return replace(launch, command=tuple(argv), env=env, cores=layout.cores)


def packs(launch: Launch, profile: PartitionProfile) -> bool:
    """Does this MPI launch run as a step of a shared (packed) allocation on a SLURM profile?"""
    return profile.packing == "packed" and (launch.mpi.launcher or profile.launcher) == "srun"


def verdict(launch: Launch, exit_code: int | None, reason: str | None, **times) -> Outcome:
    """How an MPI launch ended. `reason` is set when the runner stopped it (timeout, cancel)."""
    o = dict(job_id=launch.job_id, attempt=launch.attempt, exit_code=exit_code, **times)
    if reason is not None:
        status = "CANCELLED" if reason.startswith("cancelled") else "FAILED"
        return Outcome(status=status, reason=reason, **o)
    if launch.kind == "python":
        status, why, result = read_outcome(rank_dir(launch.cwd, launch.job_id, launch.attempt), exit_code)
        return Outcome(status=status, reason=why, result=result, **o)
    if exit_code == 0:
        return Outcome(status="SUCCEEDED", **o)
    how = f"killed by signal {-exit_code}" if exit_code is not None and exit_code < 0 else f"exited with code {exit_code}"
    return Outcome(status="FAILED", reason=f"MPI program {how} (see the job's stderr log)", **o)
