"""How MPI ranks start: one pure function per launcher, rendering an argv.

The launcher wraps the job's own argv (an MPI executable, or the rank program that
runs a Python function on every rank). Hybrid MPI + OpenMP gets `OMP_NUM_THREADS`
and binding from `cpus_per_rank`.

>>> layout = MpiLayout(ranks=4, nodes=2, ranks_per_node=2)
>>> " ".join(launch_argv("srun", layout, ["./md", "in.lj"], mpi="pmix"))
'srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=1 --kill-on-bad-exit=1 --mpi=pmix ./md in.lj'
>>> " ".join(launch_argv("mpirun", layout, ["./md"]))
'mpirun -np 4 --map-by ppr:2:node --bind-to core ./md'
>>> launch_argv("mpiexec -n {ranks} -f hosts {command}", layout, ["./md", "a b"])
['mpiexec', '-n', '4', '-f', 'hosts', './md', 'a b']
"""

from __future__ import annotations

import shlex
from typing import Sequence

from htc_notebook.errors import SpecError
from htc_notebook.spec import MpiLayout


def launch_argv(launcher: str, layout: MpiLayout, command: Sequence[str], *, mpi: str | None = None,
                step_mem_per_cpu: int | None = None) -> list[str]:
    """The argv that starts `command` on every rank of `layout`.

    `launcher` is srun, mpirun (Open MPI), mpiexec (MPICH/Hydra), ibrun, or a template
    with {ranks} {nodes} {ranks_per_node} {cpus_per_rank} {cores} {command}.
    `mpi` is srun's PMI plugin (pmix, pmi2, none). `step_mem_per_cpu` (MiB) makes an srun
    launch an exclusive sub-step of a larger allocation (`--exact`), so several MPI
    tasks share one allocation without sharing cores.
    """
    command = list(command)
    if not command:
        raise SpecError("mpi_task", "command", command, "a non-empty argv")
    n, c = layout.ranks, layout.cpus_per_rank
    if launcher == "srun":
        argv = ["srun", f"--nodes={layout.nodes}", f"--ntasks={n}", f"--ntasks-per-node={layout.ranks_per_node}",
                f"--cpus-per-task={c}", "--kill-on-bad-exit=1"]
        if mpi:
            argv.append(f"--mpi={mpi}")
        if step_mem_per_cpu is not None:
            argv += ["--exact", f"--mem-per-cpu={step_mem_per_cpu}M"]
        return argv + command
    if launcher == "mpirun":  # Open MPI
        mapping = f"ppr:{layout.ranks_per_node}:node" + (f":PE={c}" if c > 1 else "")
        return ["mpirun", "-np", str(n), "--map-by", mapping, "--bind-to", "core"] + command
    if launcher == "mpiexec":  # MPICH / Hydra
        return ["mpiexec", "-n", str(n), "-ppn", str(layout.ranks_per_node), "-bind-to", f"core:{c}"] + command
    if launcher == "ibrun":  # TACC: ranks from the allocation, -o the offset into it
        return ["ibrun", "-n", str(n), "-o", "0"] + command
    fields = {"ranks": n, "nodes": layout.nodes, "ranks_per_node": layout.ranks_per_node, "cpus_per_rank": c,
              "cores": layout.cores, "command": shlex.join(command)}
    try:
        return shlex.split(launcher.format(**fields))
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError("PartitionProfile", "launcher", launcher,
                        f"srun, mpirun, mpiexec, ibrun, or a template with fields {', '.join(fields)} "
                        f"({exc})") from None


def launch_env(layout: MpiLayout, *, omp_places: str | None = None, omp_proc_bind: str | None = None) -> dict[str, str]:
    """OpenMP settings for each rank: one thread per core of the rank, bound when there are several."""
    env = {"OMP_NUM_THREADS": str(layout.cpus_per_rank)}
    if omp_places or layout.cpus_per_rank > 1:
        env["OMP_PLACES"] = omp_places or "cores"
    if omp_proc_bind or layout.cpus_per_rank > 1:
        env["OMP_PROC_BIND"] = omp_proc_bind or "close"
    return env
