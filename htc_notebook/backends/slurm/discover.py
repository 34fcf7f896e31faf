"""Hardware profiles read off a running SLURM (`htc profiles discover`).

>>> site = profiles_from_sinfo("cpu*|2|2|2000|(null)|(null)|1-00:00:00|1:00:00|up\\n"
...                            "gpu|1|2|2000|gpu:2|(null)|12:00:00|1:00:00|up\\n")
>>> site["profiles"]["gpu"]["gpus_per_node"], site["profiles"]["cpu"]["max_nodes"]
(2, 2)
"""

from __future__ import annotations

import getpass
import re
import shutil
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


def economy_from_sacctmgr(assoc: str, qos: str) -> str | None:
    """The QOS for ON_DEMAND_ECONOMY jobs: one the user may use that their default QOS preempts,
    else the allowed QOS of lowest priority below the default's (None when there is no such QOS).

    `assoc` is `sacctmgr -n -P show assoc where user=U format=qos,defaultqos`, `qos` is
    `sacctmgr -n -P show qos format=name,priority,preempt`.

    >>> economy_from_sacctmgr("economy,normal|normal\\n", "normal|100|economy\\neconomy|0|\\n")
    'economy'
    """
    allowed: set[str] = set()
    default = None
    for line in assoc.splitlines():
        names, _, dflt = line.strip().partition("|")
        allowed |= {n for n in names.split(",") if n}
        default = default or dflt or None
    levels: dict[str, tuple[int, set[str]]] = {}
    for line in qos.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1].lstrip("-").isdigit():
            levels[parts[0]] = (int(parts[1]), {n for n in parts[2].split(",") if n})
    if default not in levels:
        return None
    prio, preempts = levels[default]
    candidates = sorted((levels[n][0], n) for n in allowed & set(levels) if n != default)
    preempted = [n for _, n in candidates if n in preempts]
    lower = [n for p, n in candidates if p < prio]
    return next(iter(preempted or lower), None)


def _economy_qos() -> str | None:
    """Read the user's associations (only where SLURM has accounting)."""
    if not shutil.which("sacctmgr"):
        return None
    assoc = scheduler.run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={getpass.getuser()}",
                           "format=qos,defaultqos"], check=False, timeout=20)
    qos = scheduler.run(["sacctmgr", "-n", "-P", "show", "qos", "format=name,priority,preempt"], check=False,
                        timeout=20)
    if assoc.returncode or qos.returncode:
        return None  # no accounting (or no slurmdbd): priority is the scheduler's default for every job
    return economy_from_sacctmgr(assoc.stdout, qos.stdout)


def discover(*, python: str | None = None, scheduler_host: str | None = None) -> dict[str, Any]:
    """Read the partitions of the SLURM this machine talks to (and, with accounting, the economy QOS)."""
    text = scheduler.run(["sinfo", "-h", "-o", SINFO_FORMAT]).stdout
    mpis = scheduler.run(["srun", "--mpi=list"], check=False)
    mpi = "pmix" if "pmix" in (mpis.stdout + mpis.stderr) else None
    site = profiles_from_sinfo(text, python=python or sys.executable, scheduler_host=scheduler_host, mpi=mpi)
    economy = _economy_qos()
    if economy:
        for prof in site["profiles"].values():
            prof["economy_qos"] = economy
    return site
