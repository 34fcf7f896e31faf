"""Talking to SLURM through its commands: sbatch, squeue, scontrol, scancel.

Every call has a timeout; a failure raises BackendError carrying the
scheduler's own message.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from htc_notebook.errors import BackendError

TIMEOUT = 60.0
# What an allocation (or a user's shell) sets that would shape jobs the toolkit submits from inside it
ALLOCATION_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SCONTROL_")
KEPT = ("SLURM_CONF",)  # where the cluster's configuration is: not a property of an allocation


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every SLURM command the toolkit starts: without the `SLURM_*`/`SBATCH_*`
    variables of an allocation the kernel runs in (Open OnDemand, batchspawner), so a job gets
    what its profile asks for, not its kernel's allocation. `SLURM_CONF` is kept.

    >>> sorted(clean_env({"SLURM_JOB_ID": "7", "SBATCH_PARTITION": "x", "SLURM_CONF": "/c", "HOME": "/h"}))
    ['HOME', 'SLURM_CONF']
    """
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k in KEPT or not k.startswith(ALLOCATION_PREFIXES)}


def run(argv: Sequence[str], *, timeout: float = TIMEOUT, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM command; BackendError (with its stderr) if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise BackendError(f"{argv[0]} not found: SLURM client commands are not installed on this machine "
                           "(on the test machine: make slurm-up)")
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                              env=clean_env())
    except subprocess.TimeoutExpired:
        raise BackendError(f"{argv[0]} did not answer within {timeout:.0f} s (is slurmctld up?)") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        raise BackendError(f"{argv[0]} failed: {msg}{hint(msg)}")
    return proc


# what a user can do about SLURM's refusals that name no remedy (a substring of its words -> advice)
HINTS = {
    "Invalid account or account/partition combination":
        "your user has no association (account) for this partition: ask the site for one "
        "(sacctmgr add user $USER account=<account>), or name an account your user has in the profile's "
        "`account`",
    "Invalid qos specification":
        "the profile's `qos` is not one your association may use (sacctmgr show assoc user=$USER)",
    "Invalid partition name specified": "the profile's `partition` is not on this cluster (sinfo lists them)",
}


def hint(message: str) -> str:
    """What to do about a SLURM refusal, when its own words do not say (`HINTS`); "" otherwise.

    >>> hint("Batch job submission failed: Invalid account or account/partition combination specified")[:35]
    ': your user has no association (acc'
    """
    return next((f": {advice}" for words, advice in HINTS.items() if words in message), "")


def start(argv: Sequence[str], *, input: str | None = None) -> subprocess.Popen:
    """Start a SLURM command without waiting (use `communicate()`); BackendError if it is missing."""
    if shutil.which(argv[0]) is None:
        raise BackendError(f"{argv[0]} not found: SLURM client commands are not installed on this machine")
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env())
    assert proc.stdin is not None  # stdin=PIPE
    if input is not None:
        proc.stdin.write(input)
    proc.stdin.close()
    proc.stdin = None  # communicate() must not flush it again
    return proc


def sbatch(argv: Sequence[str]) -> str:
    """Submit; returns the SLURM job id (`--parsable` output, cluster suffix dropped)."""
    out = run(argv).stdout.strip()
    job_id = out.split(";")[0]
    if not job_id.isdigit():
        raise BackendError(f"sbatch gave an unexpected answer: {out!r}")
    return job_id


@dataclass(frozen=True)
class QueueEntry:
    """One line of squeue: an array task `1234_7` or a plain job `1234`."""

    native_id: str
    state: str
    reason: str
    nodes: str


def squeue(job_ids: Iterable[str]) -> dict[str, QueueEntry]:
    """State of the given jobs (array jobs expanded per task); jobs SLURM forgot are absent."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    proc = run(["squeue", "-h", "-r", "-o", "%i|%T|%r|%N", "-j", ",".join(ids)], check=False)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise BackendError(f"squeue failed: {proc.stderr.strip()}")
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            out[parts[0]] = QueueEntry(*parts)
    return out


def squeue_comments(user: str) -> dict[str, str]:
    """comment -> job id for the user's jobs in the queue (array tasks collapse to their array's id)."""
    proc = run(["squeue", "-h", "-u", user, "-o", "%F|%k"], timeout=60)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, comment = line.partition("|")
        if comment and comment != "(null)" and job.isdigit():
            out.setdefault(comment, job)
    return out


_FIELD = re.compile(r"(\w+)=(\S*)")


def scontrol_jobs(job_id: str) -> dict[str, dict[str, str]]:
    """`scontrol show job -o` for a job (all tasks of an array), keyed by `JOBID_TASK` or `JOBID`."""
    proc = run(["scontrol", "show", "job", "-o", job_id], check=False)
    out = {}
    for line in proc.stdout.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields:
            continue
        key = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
               if fields.get("ArrayTaskId", "").isdigit() else fields["JobId"])
        out[key] = fields
    return out


def sacct_jobs(job_id: str) -> dict[str, dict[str, str]]:
    """What accounting says of a job's tasks, in `scontrol_jobs`' shape ({} without accounting)."""
    if shutil.which("sacct") is None:
        return {}
    proc = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList"], check=False,
               timeout=60)
    out = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
        parts = line.split("|")
        if len(parts) == 4 and "[" not in parts[0]:
            out[parts[0]] = {"JobState": parts[1], "ExitCode": parts[2], "NodeList": parts[3]}
    return out


def scancel(native_ids: Iterable[str]) -> None:
    ids = sorted(set(native_ids))
    if ids:
        run(["scancel", *ids], check=False)


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices run 0..MaxArraySize-1)."""
    out = run(["scontrol", "show", "config"]).stdout
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001
