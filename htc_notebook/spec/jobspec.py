"""One job's typed description: what runs, with what resources, in which image, how it is retried.

Every entry point (``Task.submit``, ``sweep``, ``mpi``, ``submit_batch``, the magics, the REST
API) checks its own input and builds a :class:`JobSpec`; the ledger stores it as JSON and every
backend reads it from the `Launch` it is given. User input is validated before a JobSpec is
built (Resources, JobDefinition, RetryPolicy); a JobSpec read back from the ledger is trusted.

>>> spec = JobSpec(commands=("lmp", "-in", "in.lj"), cores=2, memory=512,
...                mpi=MpiLayout(ranks=2, nodes=1, ranks_per_node=2))
>>> spec.mpi.cores, JobSpec.model_validate_json(spec.to_json()) == spec
(2, True)
>>> JobSpec.model_validate_json('{"cores": 1, "image": ""}').image is None  # ledgers written before JobSpec
True
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from .retry import RetryPolicy


class _Stored(BaseModel):
    """Frozen, strict about unknown keys (a typo is a bug), fast to read back from the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MpiLayout(_Stored):
    """Where an MPI job's ranks go (`ranks` = `nodes` x `ranks_per_node`, each with `cpus_per_rank`
    cores) and, if not the profile's, which launcher starts them."""

    ranks: int
    nodes: int
    ranks_per_node: int
    cpus_per_rank: int = 1
    launcher: str | None = None

    @property
    def cores(self) -> int:
        return self.ranks * self.cpus_per_rank


class ImageRef(_Stored):
    """The image a job runs in, resolved once at submit: a tag moved later does not change what a
    retry runs."""

    name: str  # repo:tag or repo@sha256:... as the user gave it
    digest: str  # what it resolved to
    rootfs: str  # the unpacked root file system of that digest


class JobSpec(_Stored):
    """What one job runs and with what (units: MiB, seconds, GiB)."""

    commands: tuple[str, ...] = ()  # a command job's argv ({name} fields already filled in)
    payload: str | None = None  # a Python job: the content digest of its pickled call
    envs: dict[str, str] = {}
    cores: int = 1
    memory: int | None = None  # MiB (per node for MPI jobs)
    swap: int | None = None  # MiB of swap beyond `memory` (maxSwap)
    disk_gib: int | None = None  # the job's scratch (maxDiskGiB)
    timeout: int | None = None  # seconds
    gpus: int = 0
    throttle: int | None = None  # at most this many jobs of the batch at once
    mpi: MpiLayout | None = None
    image: ImageRef | None = None
    retry: RetryPolicy = RetryPolicy()
    owner: str | None = None  # the process that dispatches it (runtime/owner.py); changed as kernels come and go
    # the SLURM array tasks it was sent behind (sbatch --dependency=afterok), set by the ledger when
    # it is sent before its parents ended (ledger/dependencies.py `send_after`); cleared if it waits again
    afterok: tuple[str, ...] | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _no_image(cls, value: Any) -> Any:
        return None if value == "" else value  # ledgers written before JobSpec stored "" for none

    def to_json(self) -> str:
        """The ledger's form: fields that are None are left out (SQL reads a missing key as NULL)."""
        return self.model_dump_json(exclude_none=True)
