"""What one partition of the machine offers, and whether a request fits it.

>>> cpu = PartitionProfile(name="cpu", cores_per_node=32, memory_per_node="128G", max_nodes=4)
>>> cpu.partition, cpu.memory_per_node
('cpu', 131072)
>>> cpu.check(Resources(gpus=1))
Traceback (most recent call last):
...
htc_notebook.errors.ResourceLimitError: Resources.gpus = 1 is not allowed: profile 'cpu' has no GPUs (gpus_per_node=0)
"""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import BeforeValidator, model_validator

from htc_notebook.errors import ResourceLimitError, SpecError

from ._model import SpecModel, whole
from .names import Constraint, HostPath, Name, SafeText, SbatchOption, SchedName, SiteImage
from .resources import MemoryMiB, Resources, WalltimeSeconds
from .units import format_walltime

LAUNCHERS = ("srun", "mpirun", "mpiexec", "ibrun")
TEMPLATE_FIELDS = ("ranks", "command", "nodes", "ranks_per_node", "cpus_per_rank", "cores")


def _check_launcher(value: object) -> object:
    """A known launcher name, or a template such as "mpiexec -n {ranks} {command}"."""
    allowed = (f"one of {', '.join(LAUNCHERS)}, or a template containing {{ranks}} and {{command}} "
               f"(fields: {', '.join(TEMPLATE_FIELDS)})")
    if not isinstance(value, str):
        raise SpecError("", "", value, f"{allowed} (got {type(value).__name__})")
    if value in LAUNCHERS:
        return value
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError:
        raise SpecError("", "", value, allowed) from None
    if "\0" in value or not {"ranks", "command"} <= fields or not fields <= set(TEMPLATE_FIELDS):
        raise SpecError("", "", value, allowed)
    return value


class PartitionProfile(SpecModel):
    """A partition (or the local machine): its limits, defaults and how jobs start on it."""

    name: Name
    backend: Literal["local", "slurm"] = "slurm"
    partition: SchedName | None = None
    cores_per_node: Annotated[int, whole(1)]
    memory_per_node: MemoryMiB
    gpus_per_node: Annotated[int, whole(0)] = 0
    max_nodes: Annotated[int, whole(1)] = 1
    architecture: Literal["X86", "AARCH64"] = "X86"
    default_walltime: WalltimeSeconds | None = None
    max_walltime: WalltimeSeconds | None = None
    # the largest scratch (maxDiskGiB) a job may ask for: it is a tmpfs in the job's sandbox, so it
    # counts as memory. None: the node's memory (memory_per_node, in whole GiB, at least 1)
    max_disk_gib: Annotated[int, whole(1)] | None = None
    account: SchedName | None = None
    qos: SchedName | None = None
    economy_qos: SchedName | None = None
    constraints: tuple[Constraint, ...] = ()
    launcher: Annotated[str, BeforeValidator(_check_launcher)] = "srun"
    mpi: Literal["pmix", "pmi2", "none"] | None = None
    # MPI tasks: "packed" runs many in one allocation of `pack_nodes` nodes (srun --exact steps);
    # "per_task" gives each its own SLURM job. Default: packed with srun, else per_task
    packing: Literal["packed", "per_task"] | None = None
    pack_nodes: Annotated[int, whole(1)] | None = None  # default: max_nodes
    setup: tuple[SafeText, ...] = ()
    omp_places: SafeText | None = None
    omp_proc_bind: SafeText | None = None
    python: SafeText | None = None
    # SLURM pilots run their dask workers in this image (`project/repo:tag` of the toolkit's registry),
    # with the container runtime below; `python` is then the interpreter inside it (default python3).
    # Its Python (major.minor), dask, distributed and htc_notebook must be the kernel's
    pilot_image: SiteImage | None = None
    scheduler_host: SchedName | None = None  # address the nodes use to reach this kernel's dask scheduler
    max_pilots: Annotated[int, whole(1)] = 4  # adapt() scales up to this many pilot jobs
    pilot_workers: Annotated[int, whole(1)] | None = None  # dask worker processes per pilot (default: one per core)
    # Python jobs: at most this many dask tasks in flight per cluster; the rest wait in the kernel
    # and are handed over as results come back (default: backends.dask_jobs.WINDOW, 4000)
    dask_window: Annotated[int, whole(1)] | None = None
    # command jobs on SLURM: at most this many of this user's jobs queued in the partition (below
    # the site's own limits, which are read from SLURM); the rest wait HELD in the ledger
    max_queued: Annotated[int, whole(1)] | None = None
    # command jobs on SLURM: "arrays" (sbatch arrays: each job an allocation of its own, in SLURM's
    # accounting, running on when the kernel is gone) or "pilots" (as a dask task on the session's pilots,
    # beside its Python calls: a start in milliseconds, not a pass through SLURM's queue; a job still
    # running when the session ends is LOST, and retried as its retry policy says). Only one-core jobs
    # without GPUs or MPI go to pilots; the others are arrays all the same
    commands: Literal["arrays", "pilots"] = "arrays"
    # command jobs on SLURM: run this many jobs in turn per array task (1: never bundle). Default:
    # a large batch's first jobs are timed, and short ones are bundled to ~20 s of work per task
    bundle: Annotated[int, whole(1)] | None = None
    warning: SafeText | None = None
    # command jobs run in a bubblewrap sandbox (backends/sandbox.py): the host read-only, their task
    # directory read-write, the project's shared directory read-only, the rest of the data root hidden;
    # Python calls see the same through namespaces their worker makes (backends/call_sandbox.py).
    # "none" runs both unconfined (a site without bwrap or user namespaces)
    sandbox: Literal["bwrap", "none"] = "bwrap"
    # jobs with an imageName run in it with this container runtime (backends/images.py); apptainer
    # is rendered for sites that have it (it cannot be installed on the test machine)
    container_runtime: Literal["charliecloud", "apptainer"] = "charliecloud"
    # host paths (files or directories) bound read-only at the same path into every image a job of
    # this profile runs in: the site's MPI (its libraries, plugins and configuration) and interconnect
    # libraries, so an MPI program in an image talks to the host's launcher and network, as sites do
    container_binds: tuple[HostPath, ...] = ()
    # a directory on each node's own disk (e.g. /local/scratch/htc-images): jobs in images run from a
    # copy there, made once per node and image, instead of from the shared unpack (which every node
    # reads over the shared file system). None: from the shared unpack
    image_cache: HostPath | None = None
    # the site's own sbatch options, for what a profile does not type (--reservation=maint,
    # --exclusive, --gpus-per-task=1, --clusters=c2): one #SBATCH line each, in every job this
    # profile submits (arrays, pilots, packed allocations)
    sbatch_options: tuple[SbatchOption, ...] = ()

    @model_validator(mode="after")
    def _defaults(self) -> PartitionProfile:
        if self.partition is None and self.backend == "slurm":
            self.__dict__["partition"] = self.name  # frozen: set once, during validation
        if self.pack_nodes is not None and self.pack_nodes > self.max_nodes:
            raise SpecError("", "pack_nodes", self.pack_nodes, f"at most max_nodes={self.max_nodes}")
        if self.packing is None:
            self.__dict__["packing"] = "packed" if self.launcher == "srun" or self.backend == "local" else "per_task"
        if self.backend == "slurm" and self.packing == "packed" and self.launcher != "srun":
            raise SpecError("", "packing", self.packing,
                            f"'per_task' with launcher {self.launcher!r}: packing many MPI tasks into one "
                            "allocation needs srun steps (launcher: srun)")
        if self.commands == "pilots" and self.backend != "slurm":
            raise SpecError("", "commands", self.commands, "only on a slurm profile (local command jobs run on "
                            "this machine); remove it, or set backend: slurm")
        if self.commands == "pilots" and self.pilot_image:
            raise SpecError("", "commands", self.commands, f"'arrays' with a pilot_image ({self.pilot_image}): "
                            "command jobs run on the host's programs, not in the image the pilots' Python runs in")
        if self.pilot_image and self.backend != "slurm":
            raise SpecError("", "pilot_image", self.pilot_image, "only on a slurm profile (local workers run "
                            "in the kernel's own environment); remove it, or set backend: slurm")
        if self.default_walltime and self.max_walltime and self.default_walltime > self.max_walltime:
            raise SpecError("", "default_walltime", self.default_walltime,
                            f"at most max_walltime={self.max_walltime} s ({format_walltime(self.max_walltime)})")
        return self

    def check(self, resources: Resources) -> None:
        """Raise ResourceLimitError if `resources` does not fit this profile."""
        r, me = resources, f"profile {self.name!r}"

        def fail(field: str, value: object, allowed: str) -> None:
            raise ResourceLimitError("Resources", field, value, allowed)

        if r.nodes > self.max_nodes:
            fail("nodes", r.nodes, f"{me} allows at most max_nodes={self.max_nodes}")
        assert r.cores is not None  # always set once validated: ranks x cpus_per_rank, else 1
        if r.is_mpi:
            assert r.ranks_per_node is not None  # inferred for an MPI job
            per_node = r.ranks_per_node * r.cpus_per_rank
            if per_node > self.cores_per_node:
                fail("ranks_per_node", r.ranks_per_node,
                     f"more ranks than cores: ranks_per_node x cpus_per_rank = {r.ranks_per_node} x "
                     f"{r.cpus_per_rank} = {per_node} cores per node, but {me} has "
                     f"cores_per_node={self.cores_per_node}")
        total = self.cores_per_node * r.nodes
        if r.cores > total:
            fail("cores", r.cores, f"{me} allows at most cores_per_node x nodes = "
                 f"{self.cores_per_node} x {r.nodes} = {total} cores")
        if not r.is_mpi and r.cores > self.cores_per_node:
            fail("cores", r.cores, f"a job without MPI ranks runs on one node; {me} has "
                 f"cores_per_node={self.cores_per_node}")
        if r.memory is not None and r.memory > self.memory_per_node:
            fail("memory", r.memory, f"{me} has memory_per_node={self.memory_per_node} MiB")
        if r.gpus and not self.gpus_per_node:
            fail("gpus", r.gpus, f"{me} has no GPUs (gpus_per_node=0)")
        if r.gpus > self.gpus_per_node:
            fail("gpus", r.gpus, f"{me} has gpus_per_node={self.gpus_per_node}")
        if r.walltime is not None and self.max_walltime is not None and r.walltime > self.max_walltime:
            fail("walltime", r.walltime, f"{me} allows at most max_walltime={self.max_walltime} s "
                 f"({format_walltime(self.max_walltime)})")

    @property
    def disk_limit_gib(self) -> int:
        """The largest maxDiskGiB a job may ask for (`max_disk_gib`, else the node's memory in GiB)."""
        return self.max_disk_gib or max(1, self.memory_per_node // 1024)

    @property
    def nodes_per_pack(self) -> int:
        """Nodes in one packed MPI allocation."""
        return self.pack_nodes or self.max_nodes

    def resolve(self, resources: Resources) -> Resources:
        """Check `resources` and return a copy with walltime defaulted to `default_walltime`."""
        self.check(resources)
        if resources.walltime is None and self.default_walltime is not None:
            return resources.model_copy(update={"walltime": self.default_walltime})
        return resources
