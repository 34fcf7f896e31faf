"""What every backend receives and reports.

A backend turns `Launch` records (one attempt of one job, fully resolved) into
running work and reports back through `Reporter` callbacks. It never touches the
ledger: the runtime owns the truth (design G5) and records what backends report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from htc_notebook.states import Outcome
from htc_notebook.spec import JobSpec
from htc_notebook.storage.untrusted import read_tail


log = logging.getLogger(__name__)

JOB_UMASK = 0o077  # what a job creates is its user's alone: the data root is private (docs/security.md)
# the variables that differ between jobs of one submission
PER_JOB_ENV = ("HTC_JOB_ID", "HTC_JOB_INDEX", "HTC_CHECKPOINT")


@dataclass(frozen=True)
class Launch:
    """One attempt of one job: its `JobSpec` (what runs, with what), and where and how it runs.

    What the job asked for is read from the spec (`launch.cores` is `launch.spec.cores`);
    `command` starts as the spec's commands and is what a backend wraps them in (bwrap, a
    launcher line).
    """

    job_id: int
    attempt: int
    kind: str  # "python" | "command" (either may be an MPI job: see `mpi`)
    cwd: Path
    env: dict[str, str]
    log_out: str
    log_err: str
    spec: JobSpec = JobSpec()
    priority: int = 0  # lower runs first
    command: tuple[str, ...] = ()  # what runs: the spec's commands unless a backend wrapped them
    call: Any = None  # python jobs: a `Call` (function + arguments)
    name: str = "job"  # the job's (batch's) name
    view: Any = None  # a `sandbox.JobView`: what of the data root the job may see (command jobs are confined to it)
    # SLURM command jobs sent at once behind their parents: the parents' array tasks (sbatch
    # --dependency=afterok:...) and their ledger ids (for the reason shown while it waits)
    after: tuple[str, ...] = ()
    after_jobs: tuple[int, ...] = ()
    # the local runner: a confined command run by its view's zygote (`command_zygotes.ZygoteJob`); `command`
    # then says what it is the same as (its own bwrap), for a dry run
    zygote: Any = None

    def __post_init__(self) -> None:
        if not self.command and self.spec.commands:
            object.__setattr__(self, "command", self.spec.commands)

    cores = property(lambda self: self.spec.cores)
    timeout = property(lambda self: self.spec.timeout)
    memory = property(lambda self: self.spec.memory)  # MiB
    swap = property(lambda self: self.spec.swap)  # MiB of swap beyond `memory` (maxSwap)
    disk_gib = property(lambda self: self.spec.disk_gib)
    gpus = property(lambda self: self.spec.gpus)
    throttle = property(lambda self: self.spec.throttle)  # at most this many of the batch at once (arrays: %N)
    mpi = property(lambda self: self.spec.mpi)  # MPI jobs: how many ranks where (backends/mpi_jobs.py)

    @property
    def image(self) -> str | None:
        """Command jobs with an imageName: the image's unpacked root file system."""
        return self.spec.image.rootfs if self.spec.image else None


def afterok_reason(parents: Sequence[int]) -> str:
    """What a job sent behind its parents waits for, in words.

    >>> afterok_reason([12, 13])
    'waiting for jobs 12, 13 (SLURM afterok)'
    """
    shown = ", ".join(map(str, parents[:10])) + (f" and {len(parents) - 10} more" if len(parents) > 10 else "")
    return f"waiting for job{'s' if len(parents) != 1 else ''} {shown} (SLURM afterok)"


def oom_reason(limit_mib: int | None) -> str:
    """Why a job the kernel's OOM killer stopped failed, in one wording for every backend."""
    return (f"out of memory (limit {limit_mib} MiB): the OOM killer stopped it" if limit_mib
            else "out of memory: the OOM killer stopped it")


def watched_oom_reason(limit_mib: int | None, peak_mib: float | None) -> str:
    """Why a job the memory watchdog stopped (no memory cgroup: backends/memory_watch.py) failed.

    >>> watched_oom_reason(128, 140.2)
    'out of memory (limit 128 MiB): its processes held 140.2 MiB together; the memory watchdog killed them'
    """
    held = f"its processes held {peak_mib} MiB together; " if peak_mib else ""
    return f"out of memory (limit {limit_mib} MiB): {held}the memory watchdog killed them"


ENOSPC_TEXT = "No space left on device"  # strerror(ENOSPC), what tools print when a disk is full


def disk_full_reason(log_err: str | Path, disk_gib: int | None) -> str | None:
    """If the job's error log says a disk was full: why, naming its scratch limit (None otherwise)."""
    try:
        tail = read_tail(log_err, 65536, below=2).decode(errors="replace")
    except OSError:  # not there, or not a plain file (UntrustedFile): no verdict from it
        return None
    if ENOSPC_TEXT not in tail:
        return None
    where = f"its scratch of maxDiskGiB={disk_gib} GiB ($HTC_SCRATCH) is full" if disk_gib else "a disk was full"
    return f"disk full (ENOSPC: '{ENOSPC_TEXT}' in its log): {where}"


class Attempted(Protocol):
    """What names an attempt: a Launch, or anything else that carries its job id and attempt."""

    @property
    def job_id(self) -> int: ...

    @property
    def attempt(self) -> int: ...


def call_outcome(launch: Attempted, report: dict[str, Any]) -> Outcome:
    """How a Python call ended, from the report `worker.run_call` or a rank pool returns."""
    times = dict(host=report["host"], started=report["started"], ended=report["ended"], cpu_s=report.get("cpu_s"),
                 max_rss_mib=report.get("max_rss_mib"), memory_held=report.get("memory_held"),
                 logged=report.get("logged"))
    if report["ok"]:
        return Outcome(launch.job_id, launch.attempt, "SUCCEEDED", result=report["value"], **times)
    return Outcome(launch.job_id, launch.attempt, "FAILED", reason=report["message"], cause=report.get("cause"),
                   **times)


@dataclass(frozen=True)
class Call:
    """A Python call to run remotely: fn(*args, **kwargs)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class Reporter(Protocol):
    """Callbacks a backend uses; called from any thread, must not block long."""

    def started(self, job_id: int, attempt: int, host: str, native_id: str | None) -> None: ...

    def sending(self, job_ids: Sequence[int], native_id: str, reason: str) -> set[int]:
        """Jobs about to be sent to a scheduler as `native_id` (e.g. `sbatch:<token>`): recorded
        before this returns. Returns the ones still active; the others must not be sent."""
        ...

    def submitted(self, native_ids: dict[int, str], reason: str) -> None:
        """Jobs a scheduler accepted (job id -> native id): recorded before this returns."""
        ...

    def update(self, job_ids: Sequence[int], status: str, *, reason: str | None = None,
               host: str | None = None, native_id: str | None = None) -> None:
        """A non-final state: HELD (beyond the site's limits), RUNNABLE (with the scheduler's pending
        reason), STARTING, RUNNING."""
        ...

    def finished(self, outcome: Outcome) -> None: ...

    def backlog(self) -> int:
        """Reports not yet committed: a backend that can wait (dask's calls) fetches no more work
        while many are (results are not taken in faster than the ledger commits them)."""
        ...


class Feed(Protocol):
    """The rest of a large submission, made into Launches a slice at a time as a runner's queue drains
    (plain Python calls: `DaskJobs.feed`; local command jobs: `LocalBackend.feed`), instead of all
    handed over at once: a million-job sweep or batch then waits as its rows and a position, not as a
    million queued records. Every job it has not given yet is in its first attempt (recorded
    RUNNABLE, attempt 1)."""

    def take(self) -> list[Launch]:
        """The next slice's Launches, without the jobs ended or restarted meanwhile (a cancel, a
        retry: the ledger says); [] once nothing is left. Never raises: a slice that cannot be made
        ends its jobs and the rest FAILED (cause `submit`) saying why."""
        ...

    def left(self) -> Sequence[int]:
        """The ids of the jobs not taken yet (each in attempt 1)."""
        ...

    def close(self) -> None:
        """Nothing more will be taken (given up with its runner)."""
        ...


def take_from(source: Feed, reporter: Reporter, what: str) -> list[Launch]:
    """`source.take()`. A Feed ends its own jobs FAILED when it cannot make them; should it raise all
    the same (a bug), the jobs it has not given end FAILED (cause `submit`) saying so, instead of
    staying RUNNABLE with nothing to run them, and [] is returned. `what`: the submission, in words."""
    try:
        return source.take()
    except Exception as exc:  # ended and logged here, not raised into a runner's thread
        log.exception("the feed of %s failed; its %d jobs not given yet end FAILED", what, len(source.left()))
        end_untaken(source, reporter, "FAILED", f"not submitted: the {what}'s feed failed: {type(exc).__name__}: {exc}",
                    cause="submit")
        return []


def end_untaken(source: Feed, reporter: Reporter, status: str, reason: str, cause: str | None = None) -> None:
    """The jobs `source` has not given yet never run: each reported `status` in its first attempt."""
    for job_id in source.left():
        reporter.finished(Outcome(job_id, 1, status, reason=reason, cause=cause))


class Backend(Protocol):
    """How launches become running work on one kind of resource. Each backend's module also has
    the pure `plan(profile, launches)` its `submit` follows, and a `render` of that plan (the dry run)."""

    name: str

    def submit(self, launches: Sequence[Launch]) -> None: ...

    def cancel(self, job_ids: Sequence[int]) -> None: ...

    def running(self) -> set[int]:
        """Job ids this backend, in this process, is still responsible for."""
        ...

    def dask_runners(self) -> dict[str, Any]:
        """The dask clusters (`DaskJobs`) this backend may run, by kind: for listing clusters."""
        ...

    def close(self) -> None: ...
