"""Job states, why attempts fail, and how an attempt ended (`Outcome`): the vocabulary backends
report in and the ledger records, below both (design.md, Layers).

    [WAITING ->] SUBMITTED -> [HELD ->] RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | LOST
    WAITING -> FAILED (cause `dependency`: a job it depends on did not succeed)
    FAILED | CANCELLED | LOST --requeue--> SUBMITTED (a requeued job's children FAILED for it wait again)
    SUCCEEDED is final (G3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class JobStatus(str, Enum):
    WAITING = "WAITING"  # for the jobs it depends on to succeed (held in the ledger, runtime/reconcile.py)
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
STOPPED_NAMES: frozenset[str] = TERMINAL_NAMES - {"SUCCEEDED"}  # ended without succeeding: failed, cancelled, lost
ACTIVE_NAMES: frozenset[str] = frozenset(s.value for s in ACTIVE)
REQUEUEABLE_NAMES: frozenset[str] = frozenset(s.value for s in REQUEUEABLE)


class Cause(str, Enum):
    """Why an attempt failed, as far as the backend could tell: decides how it is retried
    (spec/retry.py). Stored with the attempt."""

    EXIT = "exit"            # the program failed: an exit code, a Python exception
    TIMEOUT = "timeout"      # killed at its time limit (execTimeoutSeconds or SLURM's)
    MEMORY = "memory"        # killed for using more memory than it asked for
    NODE = "node"            # the node it ran on failed
    PREEMPTED = "preempted"  # preempted by a higher-priority job
    LOST = "lost"            # its worker, pilot or scheduler job vanished without a word
    OWNER = "owner"          # the process that ran it (local backend) exited, or its heartbeat lease lapsed
    SUBMIT = "submit"        # the scheduler refused it
    DEPENDENCY = "dependency"  # a job it depends on ended without succeeding: it never ran

    def __str__(self) -> str:
        return self.value


CAUSES: frozenset[str] = frozenset(c.value for c in Cause)
# not the job's fault
REQUEUE_CAUSES: frozenset[Cause] = frozenset({Cause.NODE, Cause.PREEMPTED, Cause.LOST, Cause.OWNER})


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a job ended, as its backend saw it (`Ledger.record_outcomes` commits it)."""

    job_id: int
    attempt: int
    status: str  # a terminal status
    reason: str | None = None
    exit_code: int | None = None
    host: str | None = None
    started: float | None = None
    ended: float | None = None
    result: bytes | None = None
    result_path: str | None = None
    cause: str | None = None  # why it failed (Cause); None: derived from the status
    cpu_s: float | None = None  # CPU time the attempt used, where the backend measured it
    max_rss_mib: float | None = None  # its peak memory, where measured
    memory_held: str | None = None  # how its memory limit was held: MEMORY_HELD (None: it asked for none)
    logged: bool | None = None  # whether it wrote a log (False: a Python call that printed nothing; None: unknown)


# how an attempt's memory limit was held: by a memory cgroup of its own (or the site's, on SLURM), by
# the watchdog on its process tree (backends/memory_watch.py), or not at all (the attempt says so)
MEMORY_HELD: tuple[str, ...] = ("cgroup", "watched", "none")

# the sandbox an attempt ran in: bubblewrap (commands) or namespaces its worker makes (Python calls),
# or none: unconfined, by `sandbox: none` or on a machine that cannot make one (runtime/confinement.py)
SANDBOXES: tuple[str, ...] = ("bwrap", "none")


@dataclass(frozen=True)
class NativeId:
    """What a job's `native_id` (text in the ledger) names, parsed once instead of tested by prefix:

    - `session`: `local:<host>:<pid>`: handed to that session's backend, not started yet
    - `process`: `pid:<pid>`: a local command job, its own process group on the job's host
    - `intent`: `sbatch:<token>`: about to be sent to SLURM (HELD until sbatch answers)
    - `held`: `held:<why>`: waiting in the ledger for room (a project's vCPU limit)
    - `slurm`: `<job>` or `<array>_<task>`: a SLURM job or array task
    - `bundled`: `<array>_<task>/<n>`: one of several jobs an array task runs in turn

    >>> NativeId.parse("123_4").slurm, NativeId.parse("123_4/2").kind, NativeId.parse("pid:77").pid
    ('123_4', 'bundled', 77)
    >>> NativeId.parse("sbatch:ab12").token, NativeId.parse(None)
    ('ab12', None)
    """

    kind: str  # session | process | intent | held | slurm | bundled | other
    text: str

    @classmethod
    def parse(cls, text: str | None) -> "NativeId | None":
        if not text:
            return None
        head, _, rest = text.partition(":")
        if head in ("local", "pid", "sbatch", "held") and rest:
            return cls({"local": "session", "pid": "process", "sbatch": "intent", "held": "held"}[head], text)
        job, slash, part = text.partition("/")
        if job.replace("_", "").isdigit() and job[:1].isdigit():
            return cls("bundled" if slash and part.isdigit() else "slurm", text)
        return cls("other", text)

    @property
    def pid(self) -> int | None:
        """A local command job's process (group) id."""
        rest = self.text[len("pid:"):]
        return int(rest) if self.kind == "process" and rest.isdigit() else None

    @property
    def slurm(self) -> str | None:
        """The SLURM job or array task (`123` or `123_4`) that runs it, also for a bundled job."""
        return self.text.split("/")[0] if self.kind in ("slurm", "bundled") else None

    @property
    def token(self) -> str | None:
        """An intent's token (`sbatch:<token>`): how a later session finds what sbatch made of it."""
        return self.text[len("sbatch:"):] if self.kind == "intent" else None

