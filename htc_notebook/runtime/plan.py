"""From what a user asks to what a backend runs: the checks, the JobSpec, the Launches, the dry run.

Pure functions of the site and the spec: nothing is written or started. Submitting and every
dry run go the same way, to the same backend `plan`: a dry run is `render_jobs`, which builds the
Launches a submission would and has the backend render them instead of sending them.
"""

from __future__ import annotations

import os
import platform
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htc_notebook.backends.base import Launch
from htc_notebook.errors import ResourceLimitError, SpecError
from htc_notebook.ledger import Envelope, NewJob
from htc_notebook.runtime.confinement import as_run
from htc_notebook.spec import (ImageRef, JobBatch, JobDefinition, JobSpec, PartitionProfile, Resources, RetryPolicy,
                               SiteConfig)
from htc_notebook.spec.job import PRIORITIES
from htc_notebook.storage import Storage, checkpoint_path
from htc_notebook.storage.layout import log_paths_in

PRIORITY = {name: rank for rank, name in enumerate(PRIORITIES)}  # a lower rank runs first
MAX_EXEC_SECONDS = 365 * 86400  # the longest execTimeoutSeconds on a profile without max_walltime
_WIRE = {"cores": "maxVCpus", "memory": "maxMemory", "walltime": "execTimeoutSeconds"}  # Resources -> JobDefinition
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
    me = f"profile {prof.name!r}"
    if d.max_disk_gib is not None and d.max_disk_gib > prof.disk_limit_gib:
        why = ")" if prof.max_disk_gib else ", by default its memory_per_node: the scratch is a tmpfs)"
        raise ResourceLimitError("JobDefinition", "maxDiskGiB", d.max_disk_gib,
                                 f"{me} allows at most {prof.disk_limit_gib} GiB of scratch (max_disk_gib{why}")
    if d.exec_timeout_seconds is not None and prof.max_walltime is None and d.exec_timeout_seconds > MAX_EXEC_SECONDS:
        raise ResourceLimitError("JobDefinition", "execTimeoutSeconds", d.exec_timeout_seconds,
                                 f"at most {MAX_EXEC_SECONDS} s (365 days: {me} sets no max_walltime)")
    try:
        res = prof.resolve(Resources(cores=d.max_vcpus, memory=d.max_memory, walltime=d.exec_timeout_seconds))
    except ResourceLimitError as exc:  # named as the job definition names it
        if exc.field not in _WIRE:
            raise
        raise ResourceLimitError("JobDefinition", _WIRE[exc.field], exc.value, exc.allowed) from None
    return prof, res, PRIORITY[d.priority]


def check_image(root, project: str, d: JobDefinition) -> ImageRef | None:
    """The image `d.image_name` resolves to in `project`'s registry under data root `root` (None
    without an image); SpecError if the project has no such image or it is of another architecture,
    RegistryNotRunning if the registry is down. Reads the registry only: nothing is written or unpacked."""
    if not d.image_name:
        return None
    from htc_notebook.registry import ProjectRegistry
    from htc_notebook.registry.pull import resolve, rootfs_path

    digest = resolve(ProjectRegistry(root, project), d.image_name, d.architecture)
    return ImageRef(name=d.image_name, digest=digest, rootfs=str(rootfs_path(root, digest)))


def render_pilot(profile: PartitionProfile) -> str:
    """What starting the profile's cluster would run, as text: a SLURM pilot's job script."""
    if profile.backend == "local":
        return f"# local backend: {profile.cores_per_node} worker processes on this machine (no job script)"
    try:
        from htc_notebook.backends.slurm.backend import pilot_job_script

        return pilot_job_script(profile)
    except Exception as exc:  # noqa: BLE001 - a preview: say why there is none (e.g. dask-jobqueue missing)
        return f"# cannot render the pilot script here: {exc}"


def check_mpi(profile: PartitionProfile, res: Resources) -> None:
    """An MPI request that fits the profile (checked by `resolve`) must also fit a packed allocation."""
    if profile.backend == "slurm" and profile.packing == "packed" and res.nodes > profile.nodes_per_pack:
        raise SpecError("mpi_task", "nodes", res.nodes,
                        f"at most the {profile.nodes_per_pack} nodes of profile {profile.name!r}'s packed "
                        "allocation (pack_nodes); raise pack_nodes or use packing: per_task")


def job_spec(res: Resources, retries: int | RetryPolicy, owner: str | None, **what: Any) -> JobSpec:
    """A job's spec: `res` (resolved against its profile), `retries` (a number of retries or a
    whole RetryPolicy, spec/retry.py), who dispatches it, and what runs (payload or commands,
    envs, mpi, image, ...)."""
    policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
    return JobSpec(cores=res.cores, memory=res.memory, timeout=res.walltime, gpus=res.gpus, retry=policy,
                   owner=owner, **what)


def definition_spec(res: Resources, d: JobDefinition, retries: int | RetryPolicy, owner: str | None,
                    image: Any = None) -> JobSpec:
    """The spec of a job of HTC job definition `d` (checked with `check_definition`, which gave `res`),
    running in `image` (an ImageRef resolved from `d.image_name`, or None)."""
    return job_spec(res, retries, owner, commands=d.commands, envs={e.name: e.value for e in d.envs},
                    disk_gib=d.max_disk_gib, swap=d.max_swap, image=image)


@dataclass(frozen=True)
class Where:
    """Where the jobs of one task run: its directory, what of the data root they may see, the
    environment every job of it gets."""

    task_dir: Path
    view: Any  # backends.sandbox.JobView
    env: dict[str, str]


def where(storage: Storage, project: str, task: str) -> Where:
    """Where the jobs of `project`/`task` run (nothing is created)."""
    from htc_notebook.backends.sandbox import JobView

    task_dir, shared = storage.task_path(project, task), storage.shared_path(project)
    view = JobView(*(os.path.realpath(p) for p in (storage.root, task_dir, shared)))
    return Where(task_dir, view, {"HTC_TASK_DIR": str(task_dir), "HTC_PROJECT_SHARED": str(shared),
                                  "HTC_PROJECT": project, "HTC_TASK": task})


def launch(at: Where, job_id: int, job: Envelope, attempt: int, log_out: str, log_err: str,
           call: Any = None) -> Launch:
    """What a backend needs to run one attempt of job `job_id` (`job`: a JobRow, a NewJob, or one
    just recorded, `dispatch.Pending`)."""
    env = {**at.env, "HTC_JOB_ID": str(job_id), "HTC_JOB_INDEX": str(job.index),
           "HTC_CHECKPOINT": checkpoint_path(at.task_dir, job_id), **job.spec.envs}
    return Launch(job_id=job_id, attempt=attempt, kind=job.kind, cwd=at.task_dir, env=env, name=job.name,
                  log_out=log_out, log_err=log_err, spec=job.spec, priority=job.priority, view=at.view, call=call)


def check_batches(site: SiteConfig, root: str | os.PathLike, project: str, batches: Sequence[JobBatch],
                  profile: str | None = None) -> list[tuple[PartitionProfile, JobSpec, int]]:
    """(profile, spec, priority rank) of each HTC job batch for `project` under data root `root`, every
    batch checked (its profile's limits, its image) before any is used: SpecError or
    ResourceLimitError naming the field otherwise. Nothing is written."""
    out = []
    for b in batches:
        d = b.htc_job_definition
        prof, res, priority = check_definition(site, profile, d)
        out.append((prof, definition_spec(res, d, 0, None, check_image(root, project, d)), priority))
    return out


def render_batches(site: SiteConfig, root: str | os.PathLike, project: str, task: str, batches: Sequence[JobBatch],
                   profile: str | None = None) -> str:
    """What submitting `batches` to `project`/`task` would send (`render_jobs`); nothing is written."""
    jobs = [NewJob(name=b.job_name, kind="command", params={}, spec=spec, index=i, profile=prof.name, priority=priority)
            for b, (prof, spec, priority) in zip(batches, check_batches(site, root, project, batches, profile),
                                                 strict=True)
            for i in range(b.batch_size)]
    return render_jobs(site, Storage(root), project, task, jobs)


def render_jobs(site: SiteConfig, storage: Storage, project: str, task: str, jobs: Sequence[NewJob]) -> str:
    """What submitting `jobs` to `project`/`task` would send, as each job's backend renders it with
    the `plan` its `submit` uses (sandbox, image, launcher lines, sbatch scripts). Nothing is
    written or sent; the jobs are numbered 1.. here (the ledger gives their ids at submission)."""
    at = where(storage, project, task)
    by_profile: dict[str, list[Launch]] = {}
    for n, job in enumerate(jobs, 1):
        out, err = log_paths_in(at.task_dir, n)
        by_profile.setdefault(job.profile, []).append(launch(at, n, job, 1, str(out), str(err)))
    n, indexes = len(jobs), sorted({j.index for j in jobs})
    parts = [f"# dry run: {n} job{'s' if n != 1 else ''} in task {project}/{task}; nothing submitted "
             f"(the ledger gives their ids at submission); HTC_JOB_INDEX="
             + (f"{indexes[0]}..{indexes[-1]}" if len(indexes) > 1 else str(indexes[0]) if indexes else "-")]
    if jobs and jobs[0].spec.envs:
        parts.append("# env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in jobs[0].spec.envs.items()))
    for name, launches in by_profile.items():
        prof, unconfined = as_run(site, site.profile(name))  # as submitting would run it here
        parts.append(f"# profile {name!r} ({prof.backend}): {len(launches)} job(s)")
        if unconfined:
            parts.append(f"# {unconfined}")
        if prof.backend == "slurm":
            from htc_notebook.backends.slurm.backend import render as render_slurm
            parts.append(render_slurm(prof, launches))
        else:
            from htc_notebook.backends.local import render as render_local
            parts.append(render_local(prof, launches))
    return "\n".join(parts)
