"""The reconcile loop: what the ledger says, brought in line with what is really going on.

One loop per Session (in the spirit of distributed's `SpecCluster._correct_state`: the desired
state kept apart from the live one, one method that corrects the difference). Each tick:

1. **Retries** that are due. A job whose attempt failed in a way that may be retried stays
   SUBMITTED (it has not ended: waiting goes on, a cancel stops it) with its retry due in the
   ledger (`retry_at`), so a kernel restart forgets none. The job's RetryPolicy decides from the
   cause of each attempt (the ledger's `Cause`): run again as it was, with more memory or more
   time, requeued after a fault of the machine without using up `retries`, or not at all (then
   the job ends as its attempt did, and its reason says why). A session retries the jobs it owns
   and those of owners that have exited; starting a retry is a compare-and-set in the ledger
   (of many processes, one does it), and the retry is owned by the process that started it.
2. **Dead owners** (every few seconds, over the whole data root): the local jobs of a process that
   has exited become LOST (cause `owner`, requeued as their RetryPolicy allows); its SLURM jobs are
   watched from here; its held work is claimed and fed. A process on this host has exited when its
   pid is gone; one on another host when its heartbeat lease has lapsed (runtime/owner.py), which
   each session renews from here every `heartbeat` s (one small write; the tick comes first).
3. **Foreign cancels**: a job this process runs that another process cancelled is stopped here.
4. **Room in a project's vCPU limit**: jobs this session holds for room (`Ledger.start_attempts`
   with a limit) are dispatched again, in order, as jobs of their project end (a commit of an
   outcome wakes the loop) or the limit is raised or deleted.
5. **Task retention** (every RETENTION_EVERY s): projects' retention policies archive tasks
   inactive for their `archiveAfter` hours and delete the files of tasks archived `deleteAfter`
   hours ago (each task claimed by one process in the ledger; its record is kept).

Held work is released by the SLURM feeder as room appears; the status of SLURM jobs comes from
the data root's one poller (runtime/watch.py). Readers (`jobs()`, `status()`, handles) only read.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING

from htc_notebook.errors import HTCError
from htc_notebook.ledger import JobRow
from htc_notebook.states import TERMINAL_NAMES
from htc_notebook.runtime.owner import LEASE_LAPSE, Owner, heartbeat_seconds
from htc_notebook.spec import Decision, Limits, Request

if TYPE_CHECKING:
    from htc_notebook.runtime.session import Session

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # between two ticks (a commit of a failure wakes the loop at once)
OWNERS_EVERY = 5.0  # seconds between two looks for owners that have exited (at most one heartbeat)
RETENTION_EVERY = 300.0  # seconds between two applications of the projects' task retention policies
RETRIES_PER_TICK = 1000


class Reconciler:
    """The reconcile loop of one Session. `tick()` runs it once; `start()` in a thread."""

    def __init__(self, session: "Session", enabled: bool = True, heartbeat: float | None = None):
        self.session, self.enabled = session, enabled
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()  # seconds between renewals
        self._owners_every = min(OWNERS_EVERY, self.heartbeat)
        self._beaten = 0.0  # time.monotonic() of this session's last renewal of its lease (0: none yet)
        self.retried = 0  # retries this process started (for tests and figures)
        self._failed: set[int] = set()  # jobs that failed since the last tick (their batches' max_failures)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()  # set when the first tick is over
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._owners_looked = 0.0
        self._retention_applied = 0.0

    def start(self) -> None:
        """Run the loop in a thread (idempotent; nothing if not enabled)."""
        with self._lock:
            if self.enabled and self._thread is None and not self._stop.is_set():
                self.beat()  # before anything is submitted: the owner of any job has a lease
                self._thread = threading.Thread(target=self._loop, name="htc-reconcile", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def settled(self, timeout: float = 30.0) -> None:
        """Wait until the loop's first tick is over, so that what a new session shows first is
        already reconciled (jobs of exited owners LOST, ...); at once if the loop does not run."""
        if self._thread is not None:
            self._first.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except HTCError:  # the ledger busy, a backend refusing: next tick
                pass
            finally:
                self._first.set()
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    def tick(self, *, owners: bool | None = None) -> None:
        """One round: the heartbeat when due, due retries, exited owners (every OWNERS_EVERY s or
        heartbeat, or when `owners` is True), foreign cancels."""
        if self.enabled and time.monotonic() - self._beaten >= self.heartbeat:
            self.beat()
        now = time.time()
        if owners or (owners is None and now - self._owners_looked >= self._owners_every):
            self._owners_looked = now
            self.reconcile_owners()
            self.stop_cancelled()
        self.start_retries(now)
        self.stop_failing_batches()
        if self.session.holding:
            self.release_held()
        if now - self._retention_applied >= RETENTION_EVERY:
            self._retention_applied = now
            self.apply_retention(now)

    # -- 0. this session's heartbeat --------------------------------------------------------------
    def beat(self) -> bool:
        """Renew this session's heartbeat lease for LEASE_LAPSE heartbeats (one small write). A failure
        is logged and tried again next tick; a renewal after the lease had lapsed says what that means."""
        s = self.session
        try:
            before = s.ledger.renew_owner(str(s.owner), self.heartbeat * LEASE_LAPSE)
        except HTCError as exc:
            log.warning("the heartbeat lease of %s in %s was not renewed (tried again in %g s): %s",
                        s.owner, s.ledger.path, TICK_SECONDS, exc)
            return False
        if self._beaten and before is not None and before < time.time():
            log.warning("the heartbeat lease of %s had lapsed %.0f s ago (the reconcile loop was held up): sessions on "
                        "other hosts may have marked its local jobs LOST and claimed its held work", s.owner,
                        time.time() - before)
        self._beaten = time.monotonic()
        return True

    # -- 1. retries ----------------------------------------------------------------------------
    def start_retries(self, now: float) -> int:
        s = self.session
        started = 0
        by_task: dict[int, list[JobRow]] = {}
        due = s.ledger.retries_due(now, RETRIES_PER_TICK)
        gone = s.gone_owners({row.spec.owner for row in due}) if due else {}
        for row in due:
            if s.closed or not self._mine(row, gone):
                continue
            decision, failed = self._decide(row)
            if not decision.retry:
                s.ledger.settle_retry(row.id, row.attempts, decision.why)
                self.failed([row.id])
                continue
            at = (row.ended or now) + decision.delay
            if at > now:
                s.ledger.postpone_retry(row.id, row.attempts, at, f"{decision.why}, in {at - now:.0f} s "
                                        f"(attempt {row.attempts}: {failed})")
                continue
            change = {k: v for k, v in (("memory", decision.request.memory), ("timeout", decision.request.timeout))
                      if v is not None and v != getattr(row.spec, k)}
            reason = f"automatic {decision.why} (attempt {row.attempts}: {failed})"
            if s.ledger.requeue_retry(row.id, row.attempts, str(s.owner), change, reason):
                by_task.setdefault(row.task_id, []).append(s.ledger.job(row.id))
                started += 1
        for task_id, rows in by_task.items():
            try:
                s.dispatch(s.task_row(task_id), rows)
            except HTCError:
                pass  # dispatch has recorded why they were not submitted
        self.retried += started
        return started

    def _mine(self, row: JobRow, gone: dict[str, str]) -> bool:
        """Is this session the one to retry `row`: its owner, or the owner has exited (in `gone`)."""
        owner = Owner.parse(row.spec.owner)
        return owner is None or owner == self.session.owner or (row.spec.owner or "") in gone

    def _decide(self, row: JobRow) -> tuple[Decision, str]:
        """The policy's decision for `row`'s failed attempt, and that attempt's reason."""
        s = self.session
        attempts = s.ledger.attempts(row.id)
        causes = [a.cause for a in attempts if a.number < row.attempts]
        last = next((a for a in attempts if a.number == row.attempts), None)
        cause = (last.cause if last else None) or "exit"
        failed = f"{last.status}, {last.reason}" if last and last.reason else "failed"
        try:
            profile = s.profile(row.profile)
            limits = Limits(memory=profile.memory_per_node, timeout=profile.max_walltime)
        except HTCError:
            limits = Limits()
        return row.spec.retry.decide(cause, Request(memory=row.spec.memory, timeout=row.spec.timeout),
                             causes, limits), failed

    # -- 1b. batches that reached their max_failures ------------------------------------------
    def failed(self, job_ids: list[int]) -> None:
        """These jobs failed (committed by the recorder, or not retried): their batches are looked at
        next tick (`stop_failing_batches`), in this thread, not the recorder's."""
        with self._lock:
            self._failed.update(job_ids)
        self.wake()

    def stop_failing_batches(self) -> int:
        """Cancel the rest of each batch whose failures reached its `max_failures`; how many were cancelled."""
        with self._lock:
            failed, self._failed = self._failed, set()
        return len(self.session.stop_failing_batches(failed)) if failed else 0

    # -- 2. owners that exited -------------------------------------------------------------------
    def reconcile_owners(self) -> int:
        """Look at the active jobs of every owner (data root wide) that has exited; returns how many became LOST."""
        s = self.session
        lost = 0
        for text in s.gone_owners(s.ledger.active_owners()):
            lost += s.reconcile(s.ledger.owned_jobs(text))
        return lost

    # -- 4. room in a project's vCPU limit -------------------------------------------------------
    def release_held(self) -> int:
        """Dispatch again the jobs this session holds for room, as many as their projects' limits
        now have room for (the ledger admits them, atomically across processes). Returns how many
        were offered."""
        s = self.session
        held = s.ledger.held_for_room(str(s.owner))
        if not held:
            s.holding = False
            return 0
        offered: dict[int, list[JobRow]] = {}
        free: dict[str, float] = {}
        for row in held:
            project = s.task_row(row.task_id).project
            if project not in free:
                limit = s.ledger.vcpu_limit(project)
                free[project] = float("inf") if limit is None else limit - s.ledger.vcpus_in_use(project)
            if free[project] >= row.spec.cores:
                free[project] -= row.spec.cores
                offered.setdefault(row.task_id, []).append(row)
            else:
                free[project] = 0  # in order: nothing after the first that does not fit
        for task_id, rows in offered.items():
            try:
                s.dispatch(s.task_row(task_id), rows)
            except HTCError:
                pass  # dispatch has recorded why they were not submitted
        return sum(len(r) for r in offered.values())

    # -- 5. task retention ------------------------------------------------------------------------
    def apply_retention(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Apply every project's task retention policy (its own, else the workspace's) once: (tasks
        archived, tasks whose files were deleted), as project/task."""
        s = self.session
        archived, deleted = [], []
        for policy in s.ledger.retention_in_force():
            archived += [f"{policy.project}/{name}" for _, name in s.ledger.archive_inactive(policy, now)]
            for _, name in s.ledger.due_for_deletion(policy, now):
                shutil.rmtree(s.storage.task_path(policy.project, name), ignore_errors=True)
                deleted.append(f"{policy.project}/{name}")
        return archived, deleted

    # -- 3. cancels from elsewhere ----------------------------------------------------------------
    def stop_cancelled(self) -> None:
        """Stop what this process runs for jobs that the ledger says have ended (cancelled elsewhere)."""
        s = self.session
        for backend in s.live_backends():
            running = backend.running()
            if running:
                status = s.ledger.statuses(running)
                ended = [j for j in running if status.get(j) in STOPPED]
                if ended:
                    backend.cancel(ended)


STOPPED = TERMINAL_NAMES - {"SUCCEEDED"}  # a job that ended so while it runs here was stopped elsewhere

