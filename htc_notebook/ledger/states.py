"""Job states and which moves between them the ledger allows.

    SUBMITTED -> [HELD ->] RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | LOST
    FAILED | CANCELLED | LOST --requeue--> SUBMITTED
    SUCCEEDED is final (G3).
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    SUBMITTED = "SUBMITTED"
    HELD = "HELD"  # waiting in the ledger for room in the site's limits (G8); not yet given to the scheduler
    RUNNABLE = "RUNNABLE"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED,
                                            JobStatus.LOST})
ACTIVE: frozenset[JobStatus] = frozenset(JobStatus) - TERMINAL
REQUEUEABLE: frozenset[JobStatus] = TERMINAL - {JobStatus.SUCCEEDED}

# the same sets as plain strings (job rows carry statuses as str), and every state in lifecycle order
STATES: tuple[str, ...] = tuple(s.value for s in JobStatus)
TERMINAL_NAMES: frozenset[str] = frozenset(s.value for s in TERMINAL)
ACTIVE_NAMES: frozenset[str] = frozenset(s.value for s in ACTIVE)
REQUEUEABLE_NAMES: frozenset[str] = frozenset(s.value for s in REQUEUEABLE)


def sql_list(states: frozenset) -> str:
    """`'A','B'` for use inside an SQL IN (...) (values are enum constants, never user input)."""
    return ",".join(f"'{s.value}'" for s in sorted(states, key=lambda s: s.value))


class Cause(str, Enum):
    """Why an attempt failed, as far as the backend could tell: decides how it is retried
    (spec/retry.py). Stored with the attempt."""

    EXIT = "exit"            # the program failed: an exit code, a Python exception
    TIMEOUT = "timeout"      # killed at its time limit (execTimeoutSeconds or SLURM's)
    MEMORY = "memory"        # killed for using more memory than it asked for
    NODE = "node"            # the node it ran on failed
    PREEMPTED = "preempted"  # preempted by a higher-priority job
    LOST = "lost"            # its worker, pilot or scheduler job vanished without a word
    OWNER = "owner"          # the process that ran it (local backend) exited
    SUBMIT = "submit"        # the scheduler refused it

    def __str__(self) -> str:
        return self.value


CAUSES: frozenset[str] = frozenset(c.value for c in Cause)
REQUEUE_CAUSES: frozenset[Cause] = frozenset({Cause.NODE, Cause.PREEMPTED, Cause.LOST})  # not the job's fault
