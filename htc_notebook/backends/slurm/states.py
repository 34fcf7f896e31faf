"""SLURM job states and pending reasons, translated for people and for the ledger.

>>> htc_status("PENDING"), explain_pending("Resources")
('RUNNABLE', 'waiting for free resources (nodes, cores, memory or GPUs) in the partition')
"""

from __future__ import annotations

# SLURM state (squeue %T / scontrol JobState) -> (ledger status, reason when it ends the job)
STATES: dict[str, tuple[str, str | None]] = {
    "PENDING": ("RUNNABLE", None),
    "REQUEUED": ("RUNNABLE", None),
    "REQUEUE_HOLD": ("RUNNABLE", None),
    "REQUEUE_FED": ("RUNNABLE", None),
    "RESV_DEL_HOLD": ("RUNNABLE", None),
    "SUSPENDED": ("RUNNING", None),
    "CONFIGURING": ("STARTING", None),
    "RUNNING": ("RUNNING", None),
    "COMPLETING": ("RUNNING", None),
    "STAGE_OUT": ("RUNNING", None),
    "SIGNALING": ("RUNNING", None),
    "RESIZING": ("RUNNING", None),
    "COMPLETED": ("SUCCEEDED", None),
    "FAILED": ("FAILED", "the job script failed"),
    "CANCELLED": ("CANCELLED", "cancelled in SLURM (scancel or an administrator)"),
    "TIMEOUT": ("FAILED", "timeout: SLURM killed it at its time limit"),
    "OUT_OF_MEMORY": ("FAILED", "out of memory: raise maxMemory / memory"),
    "NODE_FAIL": ("FAILED", "the node it ran on failed"),
    "BOOT_FAIL": ("FAILED", "the node could not boot"),
    "DEADLINE": ("FAILED", "its deadline passed before it could run"),
    "PREEMPTED": ("FAILED", "preempted by a higher-priority job"),
    "REVOKED": ("CANCELLED", "revoked by a federated cluster"),
    "SPECIAL_EXIT": ("FAILED", "the job script asked for a special exit"),
}

PENDING_REASONS: dict[str, str] = {
    "None": "queued; the scheduler has not looked at it yet",
    "Resources": "waiting for free resources (nodes, cores, memory or GPUs) in the partition",
    "Priority": "waiting behind jobs with higher priority",
    "Dependency": "waiting for a job it depends on",
    "DependencyNeverSatisfied": "its dependency can never be satisfied: cancel it",
    "BeginTime": "waiting for its requested start time",
    "JobArrayTaskLimit": "held back by the array's throttle (%N)",
    "QOSMaxJobsPerUserLimit": "you have as many running jobs as your QOS allows",
    "QOSMaxSubmitJobPerUserLimit": "you have as many queued jobs as your QOS allows",
    "QOSMaxCpuPerUserLimit": "you use as many CPUs as your QOS allows",
    "QOSGrpCpuLimit": "the QOS group's CPU limit is reached",
    "QOSMaxWallDurationPerJobLimit": "its time limit is above what the QOS allows",
    "AssocMaxJobsLimit": "your account has as many running jobs as it may",
    "AssocGrpCPUMinutesLimit": "your account's CPU-minutes are used up",
    "PartitionTimeLimit": "its time limit is above the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are unavailable (down, drained or reserved)",
    "NodeDown": "a node it needs is down",
    "Reservation": "waiting for its reservation",
    "BadConstraints": "no node has the features it asks for",
    "InvalidQOS": "its QOS is not valid for this account or partition",
    "InvalidAccount": "its account is not valid",
    "JobHeldUser": "held by you (scontrol release to let it run)",
    "JobHeldAdmin": "held by an administrator",
    "Licenses": "waiting for licenses",
    "launch failed requeued held": "launch failed; held after requeue",
}


def htc_status(slurm_state: str) -> str:
    """The ledger status for a SLURM state (unknown states count as RUNNING, never SUCCEEDED)."""
    base = slurm_state.split()[0].rstrip("+")
    return STATES.get(base, ("RUNNING", None))[0]


def end_reason(slurm_state: str) -> str | None:
    base = slurm_state.split()[0].rstrip("+")
    return STATES.get(base, ("RUNNING", None))[1]


# SLURM end states that say why a job failed (the ledger's Cause); the rest failed on their own
CAUSES: dict[str, str] = {"TIMEOUT": "timeout", "OUT_OF_MEMORY": "memory", "NODE_FAIL": "node", "BOOT_FAIL": "node",
                          "PREEMPTED": "preempted"}


def end_cause(slurm_state: str) -> str:
    """Why a job that ended in this state failed: timeout, memory, node, preempted, else exit.

    >>> end_cause("OUT_OF_MEMORY"), end_cause("NODE_FAIL"), end_cause("FAILED")
    ('memory', 'node', 'exit')
    """
    return CAUSES.get(slurm_state.split()[0].rstrip("+"), "exit")


def explain_pending(reason: str) -> str:
    """A readable sentence for a squeue pending reason (%r)."""
    reason = reason.strip().strip("()")
    return PENDING_REASONS.get(reason, f"pending: {reason}" if reason else "pending")
