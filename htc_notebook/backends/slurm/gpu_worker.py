"""Preloaded into each dask worker of a GPU pilot (`--preload`): one worker per GPU of the pilot
job, each seeing only its own (`CUDA_VISIBLE_DEVICES`), so calls on different workers never share
a GPU by accident. SLURM sets CUDA_VISIBLE_DEVICES to the job's GPUs; worker i of the pilot
(`--nworkers N` names them `<name>-i`) keeps the i-th.

>>> own_device("0,1", "htc-pilot-gpu-1"), own_device("2,3", "SLURMCluster-7-0"), own_device("", "w-1")
('1', '2', None)
"""

from __future__ import annotations

import os


def own_device(visible: str, worker_name: str) -> str | None:
    """The GPU worker `worker_name` keeps of the job's `visible` ones (None: the job has none)."""
    gpus = [g for g in visible.split(",") if g.strip()]
    if not gpus:
        return None
    suffix = str(worker_name).rsplit("-", 1)[-1]
    index = int(suffix) if suffix.isdigit() else 0
    return gpus[index % len(gpus)]


def dask_setup(worker) -> None:
    device = own_device(os.environ.get("CUDA_VISIBLE_DEVICES", ""), worker.name)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
