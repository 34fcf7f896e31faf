"""Hardware profiles read off a running SLURM (`htc profiles discover`).

>>> site = profiles_from_sinfo("cpu*|2|2|2000|(null)|(null)|1-00:00:00|1:00:00|up\\n"
...                            "gpu|1|2|2000|gpu:2|(null)|12:00:00|1:00:00|up\\n")
>>> site["profiles"]["gpu"]["gpus_per_node"], site["profiles"]["cpu"]["max_nodes"]
(2, 2)
"""

from __future__ import annotations

import re
import sys
from typing import Any

from htc_notebook.backends.slurm import scheduler

SINFO_FORMAT = "%P|%D|%c|%m|%G|%f|%l|%L|%a"


def _gpus(gres: str) -> int:
    """GPUs per node from a GRES string like 'gpu:2', 'gpu:a100:4(S:0-1)'."""
    total = 0
    for part in gres.split(","):
        fields = part.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _time(limit: str) -> str | None:
    return None if limit in ("infinite", "n/a", "UNLIMITED", "") else limit


def profiles_from_sinfo(text: str, *, python: str | None = None, scheduler_host: str | None = None,
                        mpi: str | None = None) -> dict[str, Any]:
    """A site mapping (the shape of site.yaml) from `sinfo -h -o SINFO_FORMAT` output.

    Rows of one partition (nodes of different sizes) are merged to what every
    node offers: the smallest cores, memory and GPUs, and the node count summed.
    """
    merged: dict[str, dict[str, Any]] = {}
    default = None
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 9:
            continue
        name, nodes, cpus, mem, gres, features, limit, dflt, avail = parts
        if name.endswith("*"):
            name = name[:-1]
            default = default or name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            continue
        cores = int(cpus.rstrip("+"))
        memory = int(mem.rstrip("+"))
        prof = merged.get(name)
        if prof is None:
            prof = merged[name] = {
                "backend": "slurm", "partition": name, "cores_per_node": cores,
                "memory_per_node": f"{memory}M", "gpus_per_node": _gpus(gres), "max_nodes": 0,
                "launcher": "srun"}
            if _time(limit):
                prof["max_walltime"] = limit
            if _time(dflt):
                prof["default_walltime"] = dflt
            if mpi:
                prof["mpi"] = mpi
            if python:
                prof["python"] = python
            if scheduler_host:
                prof["scheduler_host"] = scheduler_host
            if avail != "up":
                prof["warning"] = f"partition {name} is {avail} in SLURM"
        else:
            prof["cores_per_node"] = min(prof["cores_per_node"], cores)
            prof["memory_per_node"] = f"{min(int(prof['memory_per_node'][:-1]), memory)}M"
            prof["gpus_per_node"] = min(prof["gpus_per_node"], _gpus(gres))
        prof["max_nodes"] += int(nodes)
    site: dict[str, Any] = {"profiles": merged}
    if default:
        site["default_profile"] = default
    return site


def discover(*, python: str | None = None, scheduler_host: str | None = None) -> dict[str, Any]:
    """Read the partitions of the SLURM this machine talks to."""
    text = scheduler.run(["sinfo", "-h", "-o", SINFO_FORMAT]).stdout
    mpis = scheduler.run(["srun", "--mpi=list"], check=False)
    mpi = "pmix" if "pmix" in (mpis.stdout + mpis.stderr) else None
    return profiles_from_sinfo(text, python=python or sys.executable, scheduler_host=scheduler_host, mpi=mpi)
