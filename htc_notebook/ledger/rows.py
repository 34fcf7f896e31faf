"""Rows read from the ledger and inputs written to it (frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from htc_notebook.spec import JobSpec


class Envelope(Protocol):
    """What every form of a job carries, read where it is needed and never copied field by field:
    a job being added (`NewJob`), just added (`runtime.dispatch.Pending`: a NewJob and its id) or
    read back (`JobRow`); `runtime.plan.launch` makes a backend's `Launch` from any of them."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...  # 'python' | 'command'
    @property
    def profile(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def spec(self) -> JobSpec: ...


@dataclass(frozen=True)
class ProjectRow:
    name: str
    created: float


@dataclass(frozen=True)
class LimitRow:
    """A project's vCPU limit (its jobs use at most `vcpus` at once; the lowest of its limits holds)."""

    id: int
    project: str
    modifier_role: str
    vcpus: int
    created: float


@dataclass(frozen=True)
class RetentionRow:
    """A project's task retention policy, in hours (0: never): ACTIVE tasks with nothing done for
    `archive_after` are archived; ARCHIVED tasks' files are deleted `delete_after` after."""

    project: str
    archive_after: int
    delete_after: int


@dataclass(frozen=True)
class TaskRow:
    id: int
    project: str
    name: str
    lifecycle: str  # 'ACTIVE' | 'ARCHIVED'
    created: float


@dataclass(frozen=True)
class BatchRow:
    id: int
    task_id: int
    name: str
    size: int
    definition: dict[str, Any]
    tags: tuple[str, ...]
    created: float


@dataclass(frozen=True)
class JobRow:
    id: int
    task_id: int
    batch_id: int | None
    index: int
    key: str | None
    name: str
    kind: str  # 'python' | 'command'
    profile: str
    priority: int
    params: dict[str, Any]
    spec: JobSpec
    status: str
    reason: str | None
    exit_code: int | None
    attempts: int
    host: str | None
    native_id: str | None
    log_out: str | None
    log_err: str | None
    created: float
    updated: float
    started: float | None
    ended: float | None
    seq: int
    retry_at: float | None = None  # a retry is due (or to be decided) at this time
    cpu_s: float | None = None  # what its last attempt used: CPU time (user + system), where measured
    max_rss_mib: float | None = None  # and peak memory, where measured
    memory_held: str | None = None  # and how its memory limit was held (states.MEMORY_HELD; None: none asked)
    sandbox: str | None = None  # the sandbox its last attempt ran in (states.SANDBOXES; None: not started)


@dataclass(frozen=True)
class AttemptRow:
    job_id: int
    number: int
    status: str
    reason: str | None
    host: str | None
    native_id: str | None
    exit_code: int | None
    started: float | None
    ended: float | None
    log_out: str | None
    log_err: str | None
    cause: str | None = None  # why it failed (htc_notebook.states.Cause)
    cpu_s: float | None = None  # CPU time used (user + system), where measured
    max_rss_mib: float | None = None  # peak memory, where measured
    memory_held: str | None = None  # how its memory limit was held (states.MEMORY_HELD; None: none asked)
    sandbox: str | None = None  # the sandbox it ran in (states.SANDBOXES; "none": unconfined)
    request: dict[str, Any] | None = None  # {"memory": MiB, "timeout": s} it asked for


@dataclass(frozen=True)
class EventRow:
    id: int
    task_id: int
    job_id: int | None
    ts: float
    kind: str
    message: str


@dataclass(frozen=True)
class ResultRow:
    job_id: int
    attempt: int
    inline: bytes | None
    path: str | None
    size: int
    created: float


# --- inputs --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)  # slots: a sweep makes one per member
class NewJob:
    name: str
    kind: str  # 'python' | 'command'
    params: dict[str, Any]
    spec: JobSpec
    key: str | None = None
    index: int = 0
    profile: str = "local"
    priority: int = 0
    after: tuple[int, ...] = ()  # the jobs it depends on: it waits WAITING until they all SUCCEEDED
    stored: bytes | None = None  # the pickled call `spec.payload` names, to keep in the ledger (small ones)


@dataclass(frozen=True)
class NewBatch:
    name: str
    size: int
    definition: dict[str, Any]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptStart:
    job_id: int
    host: str | None = None
    native_id: str | None = None
    log_out: str | None = None
    log_err: str | None = None
    status: str = "RUNNING"
    sandbox: str | None = None  # the sandbox it runs in (states.SANDBOXES; "none": unconfined)


@dataclass(frozen=True)
class FirstAttempt:
    """How the jobs of one `add_jobs` call start their first attempt in the transaction that records
    them (what `start_attempts` would write for each, without a second pass over their rows). Job
    `id` logs to f"{logs}{id}.out" and f"{logs}{id}.err" (no logs: None); `sandbox` is one for all,
    or one per profile (a profile missing from it: None)."""
    status: str = "RUNNABLE"
    host: str | None = None
    native_id: str | None = None
    logs: str | None = None
    sandbox: str | None | Mapping[str, str | None] = None
