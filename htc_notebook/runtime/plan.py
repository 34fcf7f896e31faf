"""From an HTC job definition to what a backend runs: checks and dry-run text.

Pure functions of the site and the spec: nothing is written or started.
"""

from __future__ import annotations

import platform
import shlex

from htc_notebook.errors import SpecError
from htc_notebook.spec import JobBatch, JobDefinition, MpiLayout, PartitionProfile, Resources, SiteConfig

PRIORITY = {"ON_DEMAND_PRIORITY": 0, "ON_DEMAND_ECONOMY": 1}
_MACHINE_ARCH = {"x86_64": "X86", "amd64": "X86", "aarch64": "AARCH64", "arm64": "AARCH64"}


def architecture(prof: PartitionProfile) -> str:
    """The HTC architecture (X86, AARCH64) jobs of `prof` run on: this machine's, locally."""
    if prof.backend == "local":
        return _MACHINE_ARCH.get(platform.machine().lower(), prof.architecture)
    return prof.architecture


def check_definition(site: SiteConfig, profile: str | None,
                     d: JobDefinition) -> tuple[PartitionProfile, Resources, int]:
    """Check a job definition against a profile: (profile, resources, priority rank)."""
    prof = site.profile(profile or site.default_profile)
    arch = architecture(prof)
    if d.architecture != arch:
        raise SpecError("JobDefinition", "architecture", d.architecture,
                        f"the architecture of profile {prof.name!r}: {arch}")
    res = prof.resolve(Resources(cores=d.max_vcpus, memory=d.max_memory, walltime=d.exec_timeout_seconds))
    return prof, res, PRIORITY[d.priority]


def check_image(root, project: str, d: JobDefinition) -> str | None:
    """The digest `d.image_name` resolves to in `project`'s registry under data root `root` (None
    without an image); SpecError if the project has no such image or it is of another architecture,
    RegistryNotRunning if the registry is down. Reads the registry only: nothing is written."""
    if not d.image_name:
        return None
    from htc_notebook.registry import ProjectRegistry
    from htc_notebook.registry.pull import resolve

    return resolve(ProjectRegistry(root, project), d.image_name, d.architecture)


def render_batch(site: SiteConfig, batch: JobBatch, profile: str | None = None) -> str:
    """What submitting `batch` would run, as text (the dry run)."""
    d = batch.htc_job_definition
    prof, res, prio = check_definition(site, profile, d)
    envs = " ".join(f"{e.name}={shlex.quote(e.value)}" for e in d.envs)
    lines = [
        f"# batch {batch.job_name!r}: {batch.batch_size} jobs on profile {prof.name!r} ({prof.backend})",
        f"# each: cores={res.cores} memory={res.memory or '-'} MiB timeout={res.walltime or '-'} s "
        f"priority={d.priority}",
        f"# cwd: the task directory; HTC_JOB_INDEX=0..{batch.batch_size - 1}",
    ]
    if envs:
        lines.append(f"# env: {envs}")
    if d.image_name:
        lines.append(f"# image: {d.image_name} of the project's registry, with {prof.container_runtime} "
                     "(resolved to its digest at submit)")
    lines.append(shlex.join(d.commands))
    if prof.backend == "slurm":
        lines.append(_slurm_script(prof, batch, res, prio))
    return "\n".join(lines)


def _slurm_script(prof: PartitionProfile, batch: JobBatch, res: Resources, priority: int) -> str:
    """The first array's sbatch script, as the SLURM backend would write it (placeholder paths)."""
    from htc_notebook.backends.slurm.script import render_array

    d = batch.htc_job_definition
    env = {e.name: e.value for e in d.envs}
    return ("# sbatch script of the first array (paths are filled in at submission; batches larger than "
            "the cluster's MaxArraySize are split into several arrays):\n") + render_array(
        job_name=f"htc-{batch.job_name}"[:64], size=batch.batch_size, ids_file="<task>/.htc/slurm/array.ids",
        offset=0, task_dir="<task>", log_dir="<task>/logs", state_dir="<task>/.htc/slurm",
        partition=prof.partition, command=d.commands, cpus_per_task=res.cores, mem_mib=res.memory,
        tmp_gib=d.max_disk_gib, timeout_s=d.exec_timeout_seconds,
        time_s=None if d.exec_timeout_seconds else prof.default_walltime, account=prof.account,
        qos=(prof.economy_qos or prof.qos) if priority else prof.qos, constraints=prof.constraints,
        setup=prof.setup, env=env)


def render_pilot(profile: PartitionProfile) -> str:
    """What starting the profile's cluster would run, as text: a SLURM pilot's job script."""
    if profile.backend == "local":
        return f"# local backend: {profile.cores_per_node} worker processes on this machine (no job script)"
    try:
        from htc_notebook.backends.slurm.backend import pilot_job_script

        return pilot_job_script(profile)
    except Exception as exc:  # noqa: BLE001 - a preview: say why there is none (e.g. dask-jobqueue missing)
        return f"# cannot render the pilot script here: {exc}"


def render_mpi_command(profile: PartitionProfile, argv: list[str], *, nodes: int, ranks_per_node: int,
                       cpus_per_rank: int) -> str:
    """The launcher line an MPI program would run under on this profile, as text."""
    from htc_notebook.backends.launchers import launch_argv

    layout = MpiLayout(ranks=nodes * ranks_per_node, nodes=nodes, ranks_per_node=ranks_per_node, cpus_per_rank=cpus_per_rank)
    return shlex.join(launch_argv(profile.launcher, layout, argv, mpi=profile.mpi))


def check_mpi(profile: PartitionProfile, res: Resources) -> None:
    """An MPI request that fits the profile (checked by `resolve`) must also fit a packed allocation."""
    if profile.backend == "slurm" and profile.packing == "packed" and res.nodes > profile.nodes_per_pack:
        raise SpecError("mpi_task", "nodes", res.nodes,
                        f"at most the {profile.nodes_per_pack} nodes of profile {profile.name!r}'s packed "
                        "allocation (pack_nodes); raise pack_nodes or use packing: per_task")
