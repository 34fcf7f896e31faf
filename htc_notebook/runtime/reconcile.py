"""The reconcile loop: what the ledger says, brought in line with what is really going on.

One loop per Session, the one owner of every periodic action (in the spirit of distributed's
`SpecCluster._correct_state`: the desired state kept apart from the live one, one method that
corrects the difference). One thread; each action of a tick runs on its own, and what it does and
every error (with its traceback) are logged (logger `htc_notebook.runtime.reconcile`). Each tick:

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
   each session renews every `heartbeat` s from a thread of its own (one small write), so a tick
   held up by a long step or a busy ledger does not let the lease of a live process lapse.
3. **Foreign cancels**: a job this process runs that another process cancelled is stopped here.
4. **Room in a project's vCPU limit**: jobs this session holds for room (`Ledger.start_attempts`
   with a limit) are dispatched again, in order, as jobs of their project end (a commit of an
   outcome wakes the loop) or the limit is raised or deleted.
5. **Task retention** (every RETENTION_EVERY s): projects' retention policies archive tasks
   inactive for their `archiveAfter` hours and delete the files of tasks archived `deleteAfter`
   hours ago (each task claimed by one process in the ledger; its record is kept). **Logs**
   (every PACK_EVERY s): ended jobs' logs are packed, a few files per task (runtime/log_packer.py).

6. **Dependencies**: waiting jobs whose parents all SUCCEEDED are released (WAITING -> SUBMITTED, a
   compare-and-set: of many processes one gets each) and dispatched here, their parents' results in
   place of the handles; those a parent of which failed for good end FAILED (cause `dependency`).
   A session releases its own jobs and those of owners that have exited (a DAG whose builder died is
   finished by the next session). Woken by every commit of an ended job while jobs wait. Jobs sent
   to SLURM behind their parents (afterok: never WAITING, never released here) whose parent failed
   for good end FAILED (cause `dependency`) and are scancelled.
7. **SLURM's status** (once a SLURM backend runs, every `SlurmWatch.interval` s): the data root's
   one poll of SLURM, by the process that holds its lease (runtime/watch.py).

Held work is released by the SLURM feeder as room appears. Readers (`jobs()`, `status()`, handles)
only read.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import Callable, Iterable, Sequence

from htc_notebook.errors import HTCError
from htc_notebook.ledger import JobRow, Ledger
from htc_notebook.ledger.schema import HELD_FOR_ROOM
from htc_notebook.runtime.changes import Changes
from htc_notebook.runtime.dispatch import Dispatcher, TaskRows
from htc_notebook.runtime.log_packer import PACK_EVERY, LogPacker
from htc_notebook.runtime.live_backends import LiveBackends
from htc_notebook.runtime.owner import LEASE_LAPSE, Owner, heartbeat_seconds, orphan_group
from htc_notebook.runtime.profiles import Profiles
from htc_notebook.runtime.watch import SlurmWatch
from htc_notebook.spec import Decision, Limits, Request
from htc_notebook.states import STOPPED_NAMES, TERMINAL_NAMES, NativeId, Outcome
from htc_notebook.storage import Storage

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # between two ticks (a commit of a failure wakes the loop at once)
OWNERS_EVERY = 5.0  # seconds between two looks for owners that have exited (at most one heartbeat)
RETENTION_EVERY = 300.0  # seconds between two applications of the projects' task retention policies
RETRIES_PER_TICK = 1000
RELEASES_PER_TICK = 5000
READY_SCAN_EVERY = 1.0  # seconds between looks at every waiting job (between them: children of what succeeded here)
SENT_SCAN_EVERY = 60.0  # seconds between two scans for jobs sent behind a parent that failed or runs again


class Reconciler:
    """The reconcile loop of one Session. `tick()` runs it once; `start()` in a thread.

    With `enabled=False` (a short look, such as `htc status`, that must not take up retries it
    would not live to see through) it reconciles nothing and renews no lease; it still polls
    SLURM for the session's own SLURM backends, if it makes any."""

    def __init__(self, *, ledger: Ledger, storage: Storage, owner: Owner, profiles: Profiles, backends: LiveBackends,
                 dispatcher: Dispatcher, tasks: TaskRows, changes: Changes, packer: LogPacker, poll_seconds: float,
                 enabled: bool = True, heartbeat: float | None = None):
        self.ledger, self.storage, self.owner, self.profiles = ledger, storage, owner, profiles
        self.packer = packer
        self.backends, self.dispatcher, self.tasks, self.changes = backends, dispatcher, tasks, changes
        self.enabled = enabled
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()  # seconds between renewals
        self.watch = SlurmWatch(ledger, str(owner), backends, dispatcher.adopt_all, poll_seconds)
        self.watching = False  # polling SLURM: set once the first SLURM backend is made (`watch_slurm`)
        self._owners_every = min(OWNERS_EVERY, self.heartbeat)
        self._beaten = 0.0  # time.monotonic() of this session's last renewal of its lease (0: none yet)
        self.retried = 0  # retries this process started (for tests and figures)
        self._failed: set[int] = set()  # jobs that failed since the last tick (their batches' max_failures)
        self._waiting = True  # jobs of the data root wait for others: a commit of an ended job wakes the loop
        self._unsettled = True  # a job may have ended without succeeding: look for waiting jobs to fail
        self.released = 0  # waiting jobs this process released (for tests and figures)
        self._succeeded: set[int] = set()  # jobs committed SUCCEEDED here since the last release: parents
        self._ready_scanned = 0.0  # time.monotonic() of the last look at every waiting job
        self._ended_badly: set[int] = set()  # jobs that failed or were cancelled: jobs sent behind them may fail
        self._sent_scanned = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()  # set when the first tick is over
        self._thread: threading.Thread | None = None
        self._beater: threading.Thread | None = None
        self._lock = threading.Lock()
        self._owners_looked = 0.0
        self._stops_seen: int | None = None  # the change mark of stop_cancelled's last look (None: none yet)
        self._retention_applied = 0.0
        self._logs_packed = 0.0
        changes.listen(self.committed)
        backends.on_slurm(self.watch_slurm)

    def start(self) -> None:
        """Run the loop in a thread (idempotent; nothing if not enabled and not watching SLURM)."""
        with self._lock:
            if (self.enabled or self.watching) and self._thread is None and not self._stop.is_set():
                if self.enabled:
                    self.beat()  # before anything is submitted: the owner of any job has a lease
                    self._beater = threading.Thread(target=self._beat_loop, name="htc-heartbeat", daemon=True)
                    self._beater.start()
                self._thread = threading.Thread(target=self._loop, name="htc-reconcile", daemon=True)
                self._thread.start()

    def resume(self) -> int:
        """Take up what earlier sessions of this data root left, now and from then on (the loop):
        their SLURM jobs watched, held work fed, retries due started, local jobs of processes that
        have exited marked LOST. Returns how many jobs were marked LOST."""
        self.start()
        return self.reconcile_owners()

    def watch_slurm(self) -> None:
        """Poll SLURM from now on (the session made its first SLURM backend)."""
        self.watching = True
        self.start()
        self.wake()

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
        for thread in (self._thread, self._beater):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        self._run("give up the SLURM poll lease", self.watch.close)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            finally:
                self._first.set()
            wait = TICK_SECONDS
            if self.watching:
                wait = max(0.0, min(wait, self.watch.next - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()

    def _beat_loop(self) -> None:
        """Renew the lease every `heartbeat` s while the session lives: it says the process is alive,
        whatever its reconcile loop is doing (a job of a live process marked LOST would run twice)."""
        while not self._stop.wait(self.heartbeat):
            self.beat()

    def _run(self, what: str, action: Callable[[], object]) -> None:
        """Run one action of a tick; an error is logged with its traceback and tried again next tick."""
        try:
            action()
        except HTCError as exc:  # the ledger busy, SLURM away, a backend refusing
            log.warning("reconcile: %s failed (tried again next tick): %s", what, exc, exc_info=True)
        except Exception:
            log.exception("reconcile: %s failed (tried again next tick)", what)

    def tick(self, *, owners: bool | None = None) -> None:
        """One round: exited owners and foreign cancels (every OWNERS_EVERY s
        or heartbeat, or when `owners` is True), due retries, batches over their max_failures, held
        work with room, retention (every RETENTION_EVERY s), logs packed (every PACK_EVERY s), SLURM's
        status when due."""
        if self.enabled:
            now = time.time()
            if owners or (owners is None and now - self._owners_looked >= self._owners_every):
                self._owners_looked = now
                self._unsettled = True  # other processes' failures too, now and then
                self._run("settle the jobs of exited owners", self.reconcile_owners)
                self._run("stop jobs cancelled elsewhere", self.stop_cancelled)
            self._run("start due retries", lambda: self.start_retries(now))
            self._run("stop batches over their max_failures", self.stop_failing_batches)
            self._run("release jobs whose parents succeeded", self.release_waiting)
            if self.dispatcher.holding:
                self._run("release held jobs", self.release_held)
            if now - self._retention_applied >= RETENTION_EVERY:
                self._retention_applied = now
                self._run("apply task retention", lambda: self.apply_retention(now))
            if now - self._logs_packed >= PACK_EVERY:
                self._logs_packed = now
                self._run("pack the logs of ended jobs", lambda: self.packer.pack_due(now))
        if self.watching and self.watch.due(time.monotonic()):
            self._run("poll SLURM", self.watch.tick)

    def committed(self, outcomes: Sequence[Outcome]) -> None:
        """Told of every commit (runtime/changes.py): failures may reach a batch's max_failures or
        be retried, and ended jobs make room for held ones."""
        failed = [o.job_id for o in outcomes if o.status in ("FAILED", "LOST")]
        if failed:
            self.failed(failed)
        cancelled = [o.job_id for o in outcomes if o.status == "CANCELLED"]
        succeeded = [o.job_id for o in outcomes if o.status == "SUCCEEDED"]
        if cancelled or succeeded:
            with self._lock:
                self._ended_badly.update(cancelled)
                self._succeeded.update(succeeded)
        if not outcomes or any(o.status != "SUCCEEDED" for o in outcomes):  # a cancel commits no outcome
            self._unsettled = True
        if self.dispatcher.holding or (self._waiting and outcomes):
            self.wake()

    def expect_waiting(self) -> None:
        """Jobs that wait for others were just added: look at them now (their parents may have ended)."""
        self._waiting = True
        self._ready_scanned = 0.0
        self.wake()

    # -- 0. this session's heartbeat --------------------------------------------------------------
    def beat(self, longer: float = 0.0) -> bool:
        """Renew this session's heartbeat lease for LEASE_LAPSE heartbeats, and `longer` seconds more
        (one small write). A failure is logged and tried again next tick; a renewal after the lease had
        lapsed says what that means."""
        try:
            before = self.ledger.renew_owner(str(self.owner), self.heartbeat * LEASE_LAPSE + longer)
        except HTCError as exc:
            log.warning("the heartbeat lease of %s in %s was not renewed (tried again in %g s): %s",
                        self.owner, self.ledger.path, TICK_SECONDS, exc)
            return False
        if self._beaten and before is not None and before < time.time():
            log.warning("the heartbeat lease of %s had lapsed %.0f s ago (this process was held up): sessions on "
                        "other hosts may have marked its local jobs LOST and claimed its held work", self.owner,
                        time.time() - before)
        self._beaten = time.monotonic()
        return True

    # -- 1. retries ----------------------------------------------------------------------------
    def start_retries(self, now: float) -> int:
        started = 0
        by_task: dict[int, list[JobRow]] = {}
        due = self.ledger.retries_due(now, RETRIES_PER_TICK)
        gone = self.gone_owners({row.spec.owner for row in due}) if due else {}
        for row in due:
            if self._stop.is_set() or self.backends.closed:
                break  # the session is closing: the next one retries it
            if not self._mine(row, gone):
                continue
            decision, failed = self._decide(row)
            if not decision.retry:
                self.ledger.settle_retry(row.id, row.attempts, decision.why)
                log.info("job %s is not retried: %s", row.id, decision.why)
                self.failed([row.id])
                continue
            at = (row.ended or now) + decision.delay
            if at > now:
                self.ledger.postpone_retry(row.id, row.attempts, at, f"{decision.why}, in {at - now:.0f} s "
                                           f"(attempt {row.attempts}: {failed})")
                continue
            change = {k: v for k, v in (("memory", decision.request.memory), ("timeout", decision.request.timeout))
                      if v is not None and v != getattr(row.spec, k)}
            reason = f"automatic {decision.why} (attempt {row.attempts}: {failed})"
            if self.ledger.requeue_retry(row.id, row.attempts, str(self.owner), change, reason):
                by_task.setdefault(row.task_id, []).append(self.ledger.job(row.id))
                started += 1
        if by_task:  # jobs SLURM holds behind them (afterok) would wait for the old job: they wait in the ledger
            unready = set(self.dispatcher.rewait_sent([r.id for rows in by_task.values() for r in rows]))
            # a call that ran behind a parent in a dask cluster, requeued with it (both lost): it waits for it again
            unready.update(self.ledger.rewait_unready([r.id for rows in by_task.values() for r in rows
                                                       if r.id not in unready], "a job it depends on has not ended"))
            by_task = {t: kept for t, rows in by_task.items() if (kept := [r for r in rows if r.id not in unready])}
        for task_id, rows in by_task.items():
            try:
                self.dispatcher.dispatch(self.tasks.row(task_id), rows)
            except HTCError as exc:  # dispatch has recorded why they were not submitted
                log.warning("retries of task %s were not submitted: %s", task_id, exc)
        if started:
            log.info("started %d retries", started)
        self.retried += started
        return started

    def _mine(self, row: JobRow, gone: dict[str, str]) -> bool:
        """Is this session the one to retry `row`: its owner, or the owner has exited (in `gone`)."""
        return self._mine_text(row.spec.owner, gone)

    def _mine_text(self, text: str | None, gone: dict[str, str]) -> bool:
        owner = Owner.parse(text)
        return owner is None or owner == self.owner or (text or "") in gone

    def _decide(self, row: JobRow) -> tuple[Decision, str]:
        """The policy's decision for `row`'s failed attempt, and that attempt's reason."""
        attempts = self.ledger.attempts(row.id)
        causes = [a.cause for a in attempts if a.number < row.attempts]
        last = next((a for a in attempts if a.number == row.attempts), None)
        cause = (last.cause if last else None) or "exit"
        failed = f"{last.status}, {last.reason}" if last and last.reason else "failed"
        try:
            profile = self.profiles.get(row.profile)
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
            self._ended_badly.update(job_ids)  # a job sent behind it (afterok) may have to fail
        self.wake()

    def stop_failing_batches(self) -> list[int]:
        """Cancel the rest of every batch whose failures reached its `max_failures` (saying so); the
        ids cancelled."""
        with self._lock:
            failed, self._failed = self._failed, set()
        stopped: list[int] = []
        for batch_id, name, limit, count in self.ledger.over_max_failures(failed) if failed else []:
            rest = self.ledger.active_in_batch(batch_id)
            if rest:
                why = f"max_failures={limit} reached: {count} jobs of {name!r} failed"
                stopped += self.dispatcher.cancel(rest, why)
                log.info("batch %s: %s; %d jobs cancelled", batch_id, why, len(rest))
        return stopped

    # -- 2. owners that exited -------------------------------------------------------------------
    def gone_owners(self, owners: Iterable[str | None]) -> dict[str, str]:
        """Which of these owners (as jobs' specs name them) count as exited, and why (runtime/owner.py:
        on this host by their pid, on another by their heartbeat lease); never this session itself."""
        parsed = {text: o for text in owners
                  if text is not None and (o := Owner.parse(text)) is not None and o != self.owner}
        elsewhere = [text for text, o in parsed.items() if not o.here]
        leases = self.ledger.owner_leases(elsewhere) if elsewhere else {}
        now = time.time()
        return {text: why for text, o in parsed.items() if (why := o.gone(leases, now)) is not None}

    def reconcile_owners(self) -> int:
        """Look at the active jobs of every owner (data root wide) that has exited; returns how many became LOST."""
        lost = 0
        for text in self.gone_owners(self.ledger.active_owners()):
            lost += self.settle(self.ledger.owned_jobs(text))
        return lost

    def settle(self, rows: Iterable[JobRow]) -> int:
        """Mark LOST (cause `owner`: requeued as its RetryPolicy allows) the active local jobs whose
        owning process has exited, on this host or, its heartbeat lease lapsed, on another (design G5);
        watch their SLURM jobs from here; claim and feed their held work. Returns how many became LOST.

        Local jobs live inside the process that submitted them; if it is gone, so is the work.
        Nothing is assumed to have succeeded.
        """
        rows = list(rows)
        gone = self.gone_owners({r.spec.owner for r in rows if r.status not in TERMINAL_NAMES})
        lost: list[Outcome] = []
        held: dict[str, list[JobRow]] = {}
        for row in rows:
            if (row.status in TERMINAL_NAMES or row.status == "WAITING" or self.tasks.runs_here(row.id)
                    or row.retry_at is not None):
                continue  # ended, waiting for its parents or its retry (released here), or watched by this process
            if row.kind == "command" and self.dispatcher.adopt(row.id, row.task_id, row.attempts, row.native_id,
                                                               row.profile, row.spec.timeout):
                continue
            why = gone.get(row.spec.owner or "")
            owner = Owner.parse(row.spec.owner)
            if why is None or owner is None:
                continue
            if row.status == "HELD" and row.native_id == HELD_FOR_ROOM:  # never started: this session takes it
                if self.ledger.claim([row.id], str(owner), str(self.owner)):
                    self.dispatcher.holding = True
                continue
            if self._fed_by_slurm(row):
                held.setdefault(str(owner), []).append(row)
                continue
            reason = f"the process that ran it ({owner}) {why}; local jobs and pilots do not outlive their session"
            native = NativeId.parse(row.native_id)
            if not owner.here:  # a pid of another host names another process here
                if native is not None and native.kind == "process":
                    reason += f"; what is left of its process group {row.native_id} on {owner.host} was not reached"
            elif native is not None and (found := orphan_group(native)) is not None:
                reason += (f"; its orphaned process group {row.native_id} was killed" if found == "killed" else
                           f"; its process group {row.native_id} had ended with it (no orphaned process group left)")
            lost.append(Outcome(row.id, row.attempts, "LOST", reason=reason + ". Retry it or re-run the sweep",
                                host=owner.host, ended=time.time(), cause="owner"))
        if lost:
            self.ledger.record_outcomes(lost)
            log.info("%d jobs of exited owners marked LOST", len(lost))
            self.changes.committed(lost)
        for dead, group in held.items():
            claimed = set(self.ledger.claim([r.id for r in group], dead, str(self.owner)))
            if claimed:
                log.info("took over %d held jobs of %s, which %s", len(claimed), dead, gone.get(dead, "exited"))
                self.dispatcher.feed_held([r for r in group if r.id in claimed])
        return len(lost)

    def _fed_by_slurm(self, row: JobRow) -> bool:
        """A SLURM array job that its dead submitter never handed to SLURM (held, or its sbatch unanswered).
        Not a command job of a `commands: pilots` profile that was handed to the session's pilots: it may
        have run there, so it is LOST as a call is (and retried as its policy says)."""
        try:
            profile = self.profiles.get(row.profile)
        except HTCError:  # a profile gone from the site
            return False
        native = NativeId.parse(row.native_id)
        if profile.backend != "slurm" or row.kind != "command" or row.spec.mpi:
            return False
        if native is None:
            return True
        return native.slurm is None and (profile.commands == "arrays" or native.kind != "session")

    # -- 6. dependencies ---------------------------------------------------------------------------
    def release_waiting(self) -> int:
        """Fail the waiting jobs a parent of which failed for good, release (and dispatch) those whose
        parents all SUCCEEDED that are this session's to run; returns how many were released."""
        unsettled, self._unsettled = self._unsettled, False  # after a failure or cancel was committed, every few s
        ended: set[int] | None
        with self._lock:
            ended, self._ended_badly = self._ended_badly, set()
        now = time.monotonic()
        if now - self._sent_scanned >= SENT_SCAN_EVERY:  # what this process did not see (another's failures)
            self._sent_scanned, ended = now, None
            self.dispatcher.rewait_sent(None)  # behind a parent requeued by a process that died before it said so
        if ended is None or ended:  # jobs sent behind a parent (SLURM afterok) that did not succeed: failed, scancelled
            try:
                self.dispatcher.fail_sent(ended)
            except HTCError as exc:  # recorded FAILED; those running here are stopped by stop_cancelled
                log.warning("jobs sent behind jobs that failed were not all cancelled in SLURM: %s", exc)
        self._waiting = self.ledger.has_waiting()  # an index look-up: the usual case ends here
        if not self._waiting:
            with self._lock:  # no child waits for them (one added later is found by a full look: expect_waiting)
                self._succeeded = set()
            return 0
        failed: list[tuple[int, int]] = []
        if unsettled:
            failed = self.ledger.fail_dependents()
        if failed:
            log.info("%d waiting jobs failed: a job they depend on did not succeed", len(failed))
            self.changes.committed([Outcome(job_id, attempt, "FAILED", cause="dependency")
                                    for job_id, attempt in failed])
        ready = self._ready()
        released = 0
        if ready:
            gone = self.gone_owners({row.spec.owner for row in ready})
            by_task: dict[int, list[JobRow]] = {}
            for row in ready:
                if self._mine_text(row.spec.owner, gone):
                    by_task.setdefault(row.task_id, []).append(row)
            for task_id, group in by_task.items():
                try:  # released and started in one write transaction (of many processes, one gets each)
                    released += self.dispatcher.dispatch(self.tasks.row(task_id), group, release_for=str(self.owner))
                except HTCError as exc:  # dispatch has recorded why they were not submitted
                    log.warning("released jobs of task %s were not submitted: %s", task_id, exc)
            if released:
                log.info("released %d jobs whose parents succeeded", released)
                self.changes.moved()
        self.released += released
        return released

    def _ready(self) -> list[JobRow]:
        """Waiting jobs whose parents all SUCCEEDED: children of the jobs this process committed
        SUCCEEDED since the last look (an index look-up), and every READY_SCAN_EVERY s, or after jobs
        were added to wait, all of the data root's (what other processes' commits made ready; this
        look reads every waiting job)."""
        with self._lock:
            succeeded, self._succeeded = self._succeeded, set()
        now = time.monotonic()
        if now - self._ready_scanned >= READY_SCAN_EVERY:
            rows = self.ledger.ready_rows(RELEASES_PER_TICK)
            self._ready_scanned = now if len(rows) < RELEASES_PER_TICK else 0.0  # more: again next tick
            return rows
        return self.ledger.ready_rows(RELEASES_PER_TICK, parents=succeeded) if succeeded else []

    # -- 3. cancels from elsewhere ----------------------------------------------------------------
    def stop_cancelled(self) -> None:
        """Stop what this process runs for jobs that the ledger says have ended (cancelled from the CLI,
        the REST API, another kernel). The first look reads the status of everything held here; the
        next ones only the jobs of this process's tasks that changed since (`Ledger.stopped_since`), so
        a look costs what changed, not the million calls a sweep may hold."""
        if self._stops_seen is None:
            seq = self.ledger.max_seq()  # first: a change after it is found by the next look
            held = set().union(*(backend.running() for backend in self.backends.all()))
            status = self.ledger.statuses(held) if held else {}
            stopped = {j for j in held if status.get(j) in STOPPED_NAMES}
        else:
            seq, found = self.ledger.stopped_since(self.tasks.known(), self._stops_seen)
            stopped = set(found)
        self._stops_seen = seq
        if stopped:
            for backend in self.backends.all():
                ended = sorted(stopped & backend.running())
                if ended:
                    log.info("stopping %d jobs ended elsewhere", len(ended))
                    backend.cancel(ended)

    # -- 4. room in a project's vCPU limit -------------------------------------------------------
    def release_held(self) -> int:
        """Dispatch again the jobs this session holds for room, as many as their projects' limits
        now have room for (the ledger admits them, atomically across processes). Returns how many
        were offered."""
        held = self.ledger.held_for_room(str(self.owner))
        if not held:
            self.dispatcher.holding = False
            return 0
        offered: dict[int, list[JobRow]] = {}
        free: dict[str, float] = {}
        for row in held:
            project = self.tasks.row(row.task_id).project
            if project not in free:
                limit = self.ledger.vcpu_limit(project)
                free[project] = float("inf") if limit is None else limit - self.ledger.vcpus_in_use(project)
            if free[project] >= row.spec.cores:
                free[project] -= row.spec.cores
                offered.setdefault(row.task_id, []).append(row)
            else:
                free[project] = 0  # in order: nothing after the first that does not fit
        for task_id, rows in offered.items():
            try:
                self.dispatcher.dispatch(self.tasks.row(task_id), rows)
            except HTCError as exc:  # dispatch has recorded why they were not submitted
                log.warning("held jobs of task %s were not submitted: %s", task_id, exc)
        return sum(len(r) for r in offered.values())

    # -- 5. task retention ------------------------------------------------------------------------
    def apply_retention(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Apply every project's task retention policy (its own, else the workspace's) once: (tasks
        archived, tasks whose files were deleted), as project/task."""
        archived, deleted = [], []
        for policy in self.ledger.retention_in_force():
            archived += [f"{policy.project}/{name}" for _, name in self.ledger.archive_inactive(policy, now)]
            for _, name in self.ledger.due_for_deletion(policy, now):
                shutil.rmtree(self.storage.task_path(policy.project, name), ignore_errors=True)
                deleted.append(f"{policy.project}/{name}")
        if archived or deleted:
            log.info("task retention: archived %s, files deleted %s", archived, deleted)
        return archived, deleted


