"""How much one job asks for: cores, memory, GPUs, nodes, MPI ranks, walltime.

The missing one of ``ranks = nodes x ranks_per_node`` is inferred, and ``cores`` is
always set after validation (``ranks x cpus_per_rank`` for MPI jobs, else 1).

>>> r = Resources(ranks=8, nodes=2, memory="4G", walltime="01:00:00")
>>> r.ranks_per_node, r.cores, r.memory, r.walltime, r.is_mpi
(4, 8, 4096, 3600, True)
>>> Resources(ranks=5, nodes=2)
Traceback (most recent call last):
...
htc_notebook.errors.SpecError: Resources.ranks = 5 is not allowed: ranks=5 does not split evenly over nodes=2
(5 / 2 = 2.5)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, model_validator

from htc_notebook.errors import SpecError

from ._model import SpecModel, whole
from .units import parse_memory_mib, parse_walltime_seconds

MemoryMiB = Annotated[int, BeforeValidator(lambda v: v if v is None else parse_memory_mib(v, field=""))]
WalltimeSeconds = Annotated[int, BeforeValidator(lambda v: v if v is None else parse_walltime_seconds(v, field=""))]


class Resources(SpecModel):
    """One job's request. `memory` is MiB per node, `walltime` seconds, `cores` the total."""

    cores: Annotated[int | None, whole(1)] = None
    memory: MemoryMiB | None = None
    gpus: Annotated[int, whole(0)] = 0
    nodes: Annotated[int, whole(1)] = 1
    ranks: Annotated[int | None, whole(1)] = None
    ranks_per_node: Annotated[int | None, whole(1)] = None
    cpus_per_rank: Annotated[int, whole(1)] = 1
    walltime: WalltimeSeconds | None = None

    @property
    def is_mpi(self) -> bool:
        """True for an MPI job (ranks were asked for)."""
        return self.ranks is not None

    @model_validator(mode="after")
    def _infer(self) -> Resources:
        ranks, nodes, per_node = self.ranks, self.nodes, self.ranks_per_node
        if ranks is None and per_node is not None:
            ranks = nodes * per_node
        elif ranks is not None and per_node is None:
            if ranks % nodes:
                raise SpecError("", "ranks", ranks, f"ranks={ranks} does not split evenly over "
                                f"nodes={nodes} ({ranks} / {nodes} = {ranks / nodes:g})")
            per_node = ranks // nodes
        elif ranks is not None and per_node is not None and nodes * per_node != ranks:
            raise SpecError("", "ranks", ranks, f"nodes x ranks_per_node = {nodes} x {per_node} = "
                            f"{nodes * per_node}, but ranks = {ranks}")
        cores = self.cores
        if ranks is not None:
            needed = ranks * self.cpus_per_rank
            if cores is None:
                cores = needed
            elif cores < needed:
                raise SpecError("", "cores", cores, f"ranks x cpus_per_rank = {ranks} x "
                                f"{self.cpus_per_rank} = {needed} cores needed, but cores = {cores}")
        elif cores is None:
            cores = 1
        # frozen model: set the inferred values once, during validation
        self.__dict__.update(ranks=ranks, ranks_per_node=per_node, cores=cores)
        return self
