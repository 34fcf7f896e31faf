"""Confined command jobs of the local runner, run by their view's zygote (`command_zygotes.py`).

No thread per job: the runner's dispatcher starts a job (its memory hold, its logs opened as
untrusted files, a message to the zygote) and each zygote's reader thread ends it (its wait status
and rusage, the hold's verdict, the report). One timer thread ends jobs past their timeout and
zygotes idle too long. A cancel, a timeout or the runner's close SIGKILLs the job's pid 1 through its
zygote, which signals only a job it has not reaped (no pid reused by mistake): the job's whole PID
namespace goes with it, as a job under its own bwrap did.
"""

from __future__ import annotations

import heapq
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from htc_notebook.backends.base import (Launch, Reporter, disk_full_reason, oom_reason, watched_oom_reason)
from htc_notebook.backends.command_zygotes import Events, Zygote, ZygoteError, next_key
from htc_notebook.backends.memory_limit import Hold, Verdict, hold
from htc_notebook.backends.mpi_ranks import KILL_GRACE_SECONDS
from htc_notebook.backends.scratch_dirs import remove_scratch, unconfined_scratch
from htc_notebook.errors import UntrustedFile
from htc_notebook.states import Outcome
from htc_notebook.storage.untrusted import job_logs

log = logging.getLogger(__name__)

MAX_ZYGOTES = 8  # beyond, the least recently idle ends
IDLE_SECONDS = 60.0


@dataclass
class _Job:
    launch: Launch
    limit: Hold
    zygote: Zygote | None = None
    started: float = field(default_factory=time.time)
    pid: int | None = None
    cancelled: bool = False
    timed_out: bool = False
    start_error: str | None = None
    finished: bool = False
    scratch: str | None = None  # unconfined: its scratch directory (removed when it ends)


class ZygoteJobs:
    """The confined command jobs of one runner. `ended(launch)` gives a job's cores back (called once
    per job, before its report); `lock` is the runner's (its condition)."""

    def __init__(self, reporter: Reporter, host: str, lock: threading.Condition, ended: Callable[[Launch], None]):
        self._reporter, self._host, self._lock, self._ended = reporter, host, lock, ended
        self._jobs: dict[int, _Job] = {}  # key -> job
        self._keys: dict[int, int] = {}  # job id -> key
        self._zygotes: dict[Any, Zygote] = {}  # (view, keep) -> its zygote
        self._deadlines: list[tuple[float, int, int]] = []  # (when, key, signal: 0 its timeout)
        self._wake = threading.Condition(threading.Lock())
        self._closed = False  # the timer's end
        self._closing = False  # the runner is closing: whatever ends now was cancelled
        self._events = Events(pid=self._pid, failed=self._failed, done=self._done, gone=self._gone)
        self._timer = threading.Thread(target=self._time, name="htc-command-timer", daemon=True)
        self._timer.start()

    # -- the runner's side ---------------------------------------------------
    def start(self, launch: Launch, registered: Callable[[int], bool]) -> None:
        """Start `launch` (on the runner's dispatcher thread); `registered(job_id)`, called under the
        runner's lock once the job is this object's, says whether it was stopped while it started."""
        zj = launch.zygote
        job = _Job(launch, hold(launch.memory, f"job-{launch.job_id}-{launch.attempt}", swap_mib=launch.swap or 0))
        key = next_key()
        try:
            zygote = self._zygote_for(zj.view, zj.keep)
            job.zygote = zygote
            job.scratch = unconfined_scratch(launch) if not zj.confined else None
            scratch = {"HTC_SCRATCH": job.scratch, "TMPDIR": job.scratch} if job.scratch else {}
            env = {**os.environ, **zj.env, **scratch}
            cage = job.limit.cage
            entry = os.open(cage.entry[0], os.O_WRONLY | os.O_CLOEXEC) if cage is not None else None
            try:
                with job_logs(launch.log_out, launch.log_err) as (out, err):
                    with self._lock:
                        self._jobs[key], self._keys[launch.job_id] = job, key
                        zygote.running.add(key)
                        job.cancelled = registered(launch.job_id)
                    size = (zj.scratch_gib or 0) << 30 if zj.confined else 0  # unconfined: a directory
                    fds = [out, err] + ([entry] if entry is not None else [])
                    zygote.run(key, zj.argv, env, str(launch.cwd), size, fds, v1=cage is None or cage.version == 1)
            finally:
                if entry is not None:
                    os.close(entry)
        except UntrustedFile as exc:  # the job left a link or a FIFO where its log goes: not followed
            return self._finish(key, job, reason=f"could not open its log: {exc}")
        except (ZygoteError, OSError) as exc:
            return self._finish(key, job, reason=f"could not start its zygote: {exc}")
        if job.cancelled:
            self._stop(key, job)
        if launch.timeout:
            self._at(time.monotonic() + launch.timeout, key, 0)

    def cancel(self, job_ids: set[int]) -> set[int]:
        """Stop these jobs if they run here; the ids that did."""
        with self._lock:
            hits = [(self._keys[jid], self._jobs[self._keys[jid]]) for jid in job_ids
                    if jid in self._keys and self._keys[jid] in self._jobs]
            for _, job in hits:
                job.cancelled = True
        for key, job in hits:
            self._stop(key, job)
        return {job.launch.job_id for _, job in hits}

    def running(self) -> set[int]:
        with self._lock:
            return set(self._keys)

    def closing(self) -> None:
        """The runner closes (called under its lock, as it stops dispatching): every job that ends from
        now on ends CANCELLED, also one that dies with its zygote first (its dispatcher thread, which
        the zygotes die with, ends)."""
        self._closing = True

    def close(self, within: float = 10.0) -> None:
        """Kill every job, wait (within `within` s) for their reports, end the zygotes."""
        with self._lock:
            ids = set(self._keys)
        self.cancel(ids)
        deadline = time.monotonic() + within
        with self._lock:
            while self._keys and time.monotonic() < deadline:
                self._lock.wait(0.05)
            zygotes = list(self._zygotes.values())
            self._zygotes.clear()
        with self._wake:
            self._closed = True
            self._wake.notify()
        for zygote in zygotes:
            zygote.close()

    def _at(self, when: float, key: int, sig: int) -> None:
        with self._wake:
            heapq.heappush(self._deadlines, (when, key, sig))
            self._wake.notify()

    def _stop(self, key: int, job: _Job) -> None:
        """Kill a job: confined, SIGKILL its pid 1 (its whole PID namespace goes, as with SIGTERM to the
        bwrap of its own it had); unconfined, SIGTERM its process group, SIGKILL it KILL_GRACE_SECONDS
        later if it has not ended (as `mpi_ranks.kill_group`)."""
        if job.zygote is None:
            return
        if job.launch.zygote.confined:
            job.zygote.kill(key, signal.SIGKILL)
        else:
            job.zygote.kill(key, signal.SIGTERM)
            self._at(time.monotonic() + KILL_GRACE_SECONDS, key, signal.SIGKILL)

    # -- zygotes ------------------------------------------------------------------
    def _zygote_for(self, view: Any, keep: tuple[str, ...]) -> Zygote:
        with self._lock:
            zygote = self._zygotes.get((view, keep))
            if zygote is not None:
                zygote.idle_since = 0.0  # taken: the timer does not end it now
        if zygote is not None:
            return zygote
        zygote = Zygote(view, keep, self._events)  # made on the dispatcher thread: bwrap dies with it
        with self._lock:
            self._zygotes[(view, keep)] = zygote
            idle = sorted((z for z in self._zygotes.values() if not z.running and z is not zygote),
                          key=lambda z: z.idle_since)
            ending = idle[:max(0, len(self._zygotes) - MAX_ZYGOTES)]
            for z in ending:
                del self._zygotes[(z.view, z.keep)]
        for z in ending:
            z.close()
        return zygote

    def _gone(self, zygote: Zygote, why: str) -> None:
        if not zygote.closed and not self._closing:  # closing: it dies with the dispatcher thread
            log.warning("the command zygote %s of %s ended (%s)", zygote.pid, zygote.view or "unconfined jobs", why)
        with self._lock:
            if self._zygotes.get((zygote.view, zygote.keep)) is zygote:
                del self._zygotes[(zygote.view, zygote.keep)]
            orphans = [(key, self._jobs[key]) for key in zygote.running if key in self._jobs]
        for key, job in orphans:
            self._finish(key, job, reason=f"its sandbox's zygote ended ({why})")

    def _time(self) -> None:
        """End jobs past their deadline; end zygotes idle for IDLE_SECONDS."""
        while True:
            with self._wake:
                if self._closed:
                    return
                now = time.monotonic()
                due = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    due.append(heapq.heappop(self._deadlines)[1:])
                wait = min(self._deadlines[0][0] - now if self._deadlines else IDLE_SECONDS, IDLE_SECONDS / 4)
                if not due:
                    self._wake.wait(wait)
            for key, sig in due:
                with self._lock:
                    job = self._jobs.get(key)
                    if job is not None and not sig:
                        job.timed_out = True
                if job is not None and job.zygote is not None:
                    if sig:
                        job.zygote.kill(key, sig)
                    else:
                        self._stop(key, job)
            with self._lock:
                stale = [z for z in self._zygotes.values()
                         if not z.running and z.idle_since and time.monotonic() - z.idle_since > IDLE_SECONDS]
                for z in stale:
                    del self._zygotes[(z.view, z.keep)]
            for z in stale:
                z.close()

    # -- a zygote's reader thread -------------------------------------------------
    def _pid(self, key: int, pid: int) -> None:
        job = self._jobs.get(key)
        if job is None:
            return
        job.pid = pid
        job.limit.started(pid)  # no cgroup: the watchdog holds its process tree to the limit
        self._reporter.started(job.launch.job_id, job.launch.attempt, self._host, f"pid:{pid}")

    def _failed(self, key: int, message: str) -> None:
        job = self._jobs.get(key)
        if job is not None:
            job.start_error = message

    def _done(self, key: int, status: int, cpu_s: float, maxrss_kib: int, zygote_kib: int) -> None:
        job = self._jobs.get(key)
        if job is None:
            return
        # a child forked from the zygote starts with the zygote's pages: its maxrss is its own above those only
        peak = round(maxrss_kib / 1024, 1) if maxrss_kib > zygote_kib else None
        self._finish(key, job, exit_code=os.waitstatus_to_exitcode(status), cpu_s=round(cpu_s, 3), peak=peak)

    def _finish(self, key: int, job: _Job, *, reason: str | None = None, exit_code: int | None = None,
                cpu_s: float | None = None, peak: float | None = None) -> None:
        launch = job.launch
        with self._lock:
            if job.finished:
                return  # ended already (its zygote's end and its own crossed)
            job.finished = True
            self._jobs.pop(key, None)
            if self._keys.get(launch.job_id) == key:
                del self._keys[launch.job_id]
            if job.zygote is not None:
                job.zygote.running.discard(key)
                if not job.zygote.running:
                    job.zygote.idle_since = time.monotonic()
            self._lock.notify_all()
        self._ended(launch)  # its processes are gone (its PID namespace with its pid 1): its cores are free
        memory: Verdict | None = None
        status, cause = "FAILED", None
        try:
            memory = job.limit.ended(peak)
            if job.cancelled or self._closing:
                status, reason = "CANCELLED", "cancelled while running"
            elif reason is not None:
                pass
            elif job.timed_out:
                reason = f"timeout: killed after execTimeoutSeconds={launch.timeout}"
            elif job.start_error is not None:
                reason = f"could not start {launch.zygote.argv[0]!r}: {job.start_error}"
            elif memory.oom:
                reason, cause = (oom_reason(launch.memory) if memory.how == "cgroup"
                                 else watched_oom_reason(launch.memory, memory.peak_mib)), "memory"
            elif exit_code == 0:
                status = "SUCCEEDED"
            elif exit_code is not None:
                reason = f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
                full = disk_full_reason(launch.log_err, launch.disk_gib)
                reason = f"{reason}; {full}" if full else reason
        except Exception as exc:  # noqa: BLE001 - a runner bug must still end the job
            reason = f"runner error: {type(exc).__name__}: {exc}"
        finally:
            if job.scratch is not None:
                remove_scratch(job.scratch)
        self._reporter.finished(Outcome(
            launch.job_id, launch.attempt, status, reason=reason, cause=cause, exit_code=exit_code,
            host=self._host, started=job.started, ended=time.time(), cpu_s=cpu_s,
            max_rss_mib=memory.peak_mib if memory else None, memory_held=memory.how if memory else None))
