"""How much work a site accepts: its submit limits, read from SLURM or learned from sbatch's refusals.

Pure parsers and rules, plus `read_limits` / `queued_counts` which ask SLURM. The array runner
feeds held work through `room()`: never more of this user's jobs queued than the tightest limit
allows (design G8).

>>> limits = parse_limits(config="MaxJobCount = 50000\\n", qos_rows="normal|5000\\neconomy|\\n",
...                       assoc_rows="|normal\\n")
>>> [(l.scope, l.value) for l in limits]
[('cluster', 50000), ('qos:normal', 5000)]
>>> room(for_qos(limits, None), {"cluster": 45000, "qos:normal": 5000, "user": 5000})
(0, 'held: 5,000 of your jobs are queued, the QOS normal allows 5,000 (MaxSubmitJobsPerUser)')
>>> classify("sbatch: error: QOSMaxSubmitJobPerUserLimit"), classify("Socket timed out on send/recv")
('limit', 'transient')
"""

from __future__ import annotations

import getpass
import re
from collections import Counter
from dataclasses import dataclass

from htc_notebook.backends.slurm import scheduler
from htc_notebook.errors import BackendError

# sbatch's words when the queue is full for this user (the jobs are held and fed later)
LIMIT_WORDS = ("QOSMaxSubmitJobPerUserLimit", "AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerAccountLimit",
               "AssocGrpSubmitJobsLimit", "QOSGrpSubmitJobsLimit", "MaxJobCount", "job submit limit",
               "Slurm temporarily unable to accept job")
# words of a scheduler that is down, busy or slow (retried with backoff)
TRANSIENT_WORDS = ("did not answer", "Socket timed out", "Unable to contact slurm controller", "try again",
                   "Resource temporarily unavailable", "Connection refused", "Zero Bytes were transmitted",
                   "Communication connection failure", "slurm_persist_conn_open", "Transport endpoint")


@dataclass(frozen=True)
class Limit:
    """One limit on how many of this user's jobs may be queued (pending + running)."""

    scope: str  # "cluster" (every user's jobs), "user" (the association), "qos:NAME" (this user's jobs in it)
    value: int
    words: str  # for the reason: "the QOS normal allows 5,000 (MaxSubmitJobsPerUser)"
    default: bool = False  # a QOS limit of the association's default QOS (jobs that name no QOS)


def classify(message: str) -> str:
    """'limit' (the queue is full: hold and feed later), 'transient' (retry with backoff) or 'refused'."""
    if any(w.lower() in message.lower() for w in LIMIT_WORDS):
        return "limit"
    if any(w.lower() in message.lower() for w in TRANSIENT_WORDS):
        return "transient"
    return "refused"


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def parse_limits(*, config: str, qos_rows: str, assoc_rows: str) -> list[Limit]:
    """Limits from `scontrol show config`, `sacctmgr -n -P show qos format=name,maxsubmitpu` and
    `sacctmgr -n -P show assoc where user=U format=maxsubmit,defaultqos` (empty where there is no
    accounting)."""
    limits = []
    m = re.search(r"^MaxJobCount\s*=\s*(\d+)", config, re.M)
    if m:
        limits.append(Limit("cluster", int(m.group(1)), f"the cluster's MaxJobCount is {int(m.group(1)):,}"))
    default_qos = None
    for line in assoc_rows.splitlines():
        maxsubmit, _, dflt = line.strip().partition("|")
        default_qos = default_qos or dflt or None
        if (n := _number(maxsubmit)) is not None:
            limits.append(Limit("user", n, f"your association allows {n:,} (MaxSubmitJobs)"))
    for line in qos_rows.splitlines():
        name, _, maxsubmit = line.strip().partition("|")
        if (n := _number(maxsubmit)) is not None:
            limits.append(Limit(f"qos:{name}", n, f"the QOS {name} allows {n:,} (MaxSubmitJobsPerUser)",
                                default=name == default_qos))
    return limits


def for_qos(limits: list[Limit], qos: str | None) -> list[Limit]:
    """The limits that jobs asking for `qos` (None: the default QOS) meet."""
    return [limit for limit in limits
            if not limit.scope.startswith("qos:") or (limit.scope == f"qos:{qos}" if qos else limit.default)]


def room(limits: list[Limit], counts: Counter | dict[str, int]) -> tuple[int, str | None]:
    """(how many more jobs may be queued now, why not more: None when nothing limits)."""
    best: tuple[int, str | None] = (1 << 62, None)
    for limit in limits:
        used = counts.get(limit.scope, 0)
        free = max(0, limit.value - used)
        if free < best[0]:
            who = "jobs are queued in SLURM" if limit.scope == "cluster" else "of your jobs are queued"
            best = (free, f"held: {used:,} {who}, {limit.words}")
    return best


def read_limits() -> list[Limit]:
    """Ask the site (sacctmgr where accounting exists). Raises BackendError if scontrol fails."""
    config = scheduler.run(["scontrol", "show", "config"], timeout=30).stdout
    user = getpass.getuser()
    assoc = scheduler.run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}",
                           "format=maxsubmit,defaultqos"], check=False, timeout=30)
    rows = scheduler.run(["sacctmgr", "-n", "-P", "show", "qos", "format=name,maxsubmitpu"], check=False,
                         timeout=30)
    ok = assoc.returncode == 0 and rows.returncode == 0
    return parse_limits(config=config, qos_rows=rows.stdout if ok else "",
                        assoc_rows=assoc.stdout if ok else "")


def queued_counts() -> Counter:
    """Jobs in SLURM now, array tasks one by one: everyone's ("cluster"), this user's ("user"), and
    this user's per QOS ("qos:NAME") and partition ("partition:NAME") - the keys of `Limit.scope`."""
    proc = scheduler.run(["squeue", "-h", "-r", "-o", "%u|%q|%P"], check=False, timeout=60)
    if proc.returncode != 0:
        raise BackendError(f"squeue failed: {proc.stderr.strip()}")
    user = getpass.getuser()
    counts: Counter = Counter()
    for line in proc.stdout.splitlines():
        who, q, part = (line.split("|") + ["", ""])[:3]
        counts["cluster"] += 1
        if who == user:
            counts["user"] += 1
            counts[f"qos:{q}"] += 1
            counts[f"partition:{part}"] += 1
    return counts
