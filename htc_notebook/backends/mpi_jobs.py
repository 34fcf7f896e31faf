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
from typing import Any, Sequence

from htc_notebook.backends.base import Launch
from htc_notebook.backends.launchers import MpiLayout, launch_argv, launch_env
from htc_notebook.backends.mpi_pool import PoolSpec
from htc_notebook.backends.mpi_ranks import pool_argv, rank_argv, rank_dir, read_outcome, write_call
from htc_notebook.backends.sandbox import bwrap_argv
from htc_notebook.states import Outcome
from htc_notebook.spec import PartitionProfile


def wrap(launch: Launch, profile: PartitionProfile, *, step: bool = False) -> Launch:
    """The launch as a command job that starts every rank with the profile's launcher (a pure
    function: a Python function's ranks load the call that `stage` writes before it is sent).

    `step`: run as an exclusive sub-step of a larger allocation (packed).
    """
    layout = launch.mpi
    inner = list(launch.command)
    if launch.kind == "python":
        d = rank_dir(launch.cwd, launch.job_id, launch.attempt)
        inner = rank_argv(profile.python or sys.executable, d)
        if launch.view is not None:  # each rank confined like a command job's, writing only its reports here
            inner = bwrap_argv(launch.view, inner, pid_namespace=False, writable=[os.path.realpath(d)])
    mem = (profile.memory_per_node // profile.cores_per_node) if step else None
    argv = launch_argv(layout.launcher or profile.launcher, layout, inner, mpi=profile.mpi, step_mem_per_cpu=mem)
    env = {**launch.env, **launch_env(layout, omp_places=profile.omp_places, omp_proc_bind=profile.omp_proc_bind),
           **_root_env()}
    return replace(launch, command=tuple(argv), env=env)


def stage(launches: Sequence[Launch]) -> None:
    """Write the call of each Python MPI launch that `wrap` gave a launcher line where its ranks load it."""
    for launch in launches:
        if launch.kind == "python" and launch.mpi and launch.command:
            write_call(rank_dir(launch.cwd, launch.job_id, launch.attempt), launch.call.fn, launch.call.args,
                       launch.call.kwargs, ranks=launch.mpi.ranks)


def pooled(launch: Launch, profile: PartitionProfile) -> Launch:
    """A packed Python MPI launch as it runs on a rank pool: with the job's OpenMP settings."""
    env = {**launch.env, **launch_env(launch.mpi, omp_places=profile.omp_places, omp_proc_bind=profile.omp_proc_bind)}
    return replace(launch, env=env)


def pool_spec(profile: PartitionProfile, log_directory: str | None) -> PoolSpec:
    """The rank pool of the profile's packed allocation: a rank on every core, in one `srun --overlap`
    step (it holds no cores of its own: dask's slots decide what runs, and command steps still fit).
    On the local backend: a rank on every core of this machine, under the profile's launcher.

    >>> from htc_notebook.spec import PartitionProfile
    >>> p = PartitionProfile(name="cpu", backend="slurm", partition="cpu", cores_per_node=2, memory_per_node="2G",
    ...                      max_nodes=2, mpi="pmix", python="/venv/bin/python")
    >>> spec = pool_spec(p, "/logs")
    >>> " ".join(spec.argv[:8]), spec.size, spec.log
    ('srun --overlap --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=1 --kill-on-bad-exit=1 --mpi=pmix', 4,
     '/logs/htc-mpi-pool-cpu.log')
    """
    local = profile.backend == "local"
    nodes, per_node = (1 if local else profile.nodes_per_pack), profile.cores_per_node
    layout = MpiLayout(ranks=nodes * per_node, nodes=nodes, ranks_per_node=per_node)
    argv = launch_argv(profile.launcher if local else "srun", layout, pool_argv(profile.python or sys.executable),
                       mpi=profile.mpi)
    if not local:
        argv.insert(1, "--overlap")
    log = os.path.join(log_directory or ".", f"htc-mpi-pool-{profile.name}.log")
    return PoolSpec(argv=tuple(argv), env=tuple(_root_env().items()), size=layout.ranks, log=log)


def for_task(spec: PoolSpec, view: Any) -> PoolSpec:
    """The rank pool that serves the calls of one task only (`view`: its `sandbox.JobView`): each
    rank confined to the task like a command job's (bwrap, with the node's PIDs and /tmp, which MPI
    ranks share). A call cannot leave anything in a rank for another task's call, or read past its
    task. `spec` itself for unconfined calls (`view` None: `sandbox: none`)."""
    if view is None:
        return spec
    n = len(pool_argv("python"))  # the rank's own command ends the launcher line
    rank = bwrap_argv(view, spec.argv[-n:], pid_namespace=False)
    return replace(spec, argv=(*spec.argv[:-n], *rank))


def on_pool(launch: Launch, profile: PartitionProfile) -> bool:
    """Does this MPI launch run on a rank pool: a Python function, packed, with the profile's own launcher?"""
    return (launch.kind == "python" and profile.packing == "packed"
            and (launch.mpi.launcher or profile.launcher) == profile.launcher)


def _root_env() -> dict[str, str]:
    """Open MPI refuses root unless told twice (test clusters run as root)."""
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.geteuid() == 0 else {}


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
    how = (f"killed by signal {-exit_code}" if exit_code is not None and exit_code < 0
           else f"exited with code {exit_code}")
    return Outcome(status="FAILED", reason=f"MPI program {how} (see the job's stderr log)", **o)
