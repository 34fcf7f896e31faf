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


def sql_list(states: frozenset[JobStatus]) -> str:
    """`'A','B'` for use inside an SQL IN (...) (values are enum constants, never user input)."""
    return ",".join(f"'{s.value}'" for s in sorted(states, key=lambda s: s.value))
