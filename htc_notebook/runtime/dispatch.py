"""The one path from ledger rows to running work, and back out: every job that Task, the magics,
the CLI or REST submits, a retry restarts or held work releases is handed to its backend here, and
every cancel and user retry goes through here too.

`dispatch` is write-ahead: each job's attempt is in the ledger before its backend hears of it; a
backend that refuses leaves the jobs it did not take FAILED (cause `submit`), saying why.

>>> dispatcher.dispatch(tasks.row(task_id), rows)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import ExitStack
from itertools import pairwise
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, cast

import cloudpickle

from htc_notebook.backends.base import Call, Launch, afterok_reason
from htc_notebook.errors import HTCError
from htc_notebook.ledger import AttemptStart, FirstAttempt, JobRow, Ledger, NewJob, TaskRow
from htc_notebook.runtime import images, plan
from htc_notebook.runtime.changes import Changes
from htc_notebook.runtime.dependencies import (ARRAY_TASK, ParentState, ParentValues, afterok, follows,
                                              in_session_reason, parents_in, refs_in)
from htc_notebook.runtime.live_backends import LiveBackends
from htc_notebook.runtime.owner import Owner, kill_orphan_group
from htc_notebook.runtime.sweep_feed import SweepFeed
from htc_notebook.runtime.pending import Pending, SweepRows, distinct
from htc_notebook.runtime.profiles import Profiles
from htc_notebook.states import TERMINAL_NAMES, NativeId, Outcome
from htc_notebook.storage import Storage, checkpoint_path

if TYPE_CHECKING:
    from htc_notebook.backends.local import LocalBackend
    from htc_notebook.backends.slurm.backend import SlurmBackend

log = logging.getLogger(__name__)

DISPATCH_SLICE = 5000  # jobs whose attempts and Launches are built and handed over at a time


def _contiguous(rows: Sequence[JobRow | Pending]) -> range | None:
    """The ids of `rows` as a range, if they are contiguous and rising (a new sweep's or batch's)."""
    if isinstance(rows, SweepRows):
        return rows.ids if isinstance(rows.ids, range) else None
    if isinstance(rows, list) and rows and rows[-1].id - rows[0].id == len(rows) - 1 and all(
            a.id < b.id for a, b in pairwise(rows)):
        return range(rows[0].id, rows[-1].id + 1)
    return None


class TaskRows:
    """Task rows by id, read once, and the task of every job this process runs (`here`)."""

    def __init__(self, ledger: Ledger, storage: Storage):
        self._ledger, self._storage = ledger, storage
        self._rows: dict[int, TaskRow] = {}
        # job id -> task id, for every job dispatched or watched by this process until it ends (`forget_ended`)
        self.here: dict[int, int] = {}
        self.feeding: set[SweepFeed] = set()  # sweeps handed over a slice at a time (`runtime/sweep_feed.py`)

    def row(self, task_id: int) -> TaskRow:
        row = self._rows.get(task_id)
        if row is None:
            row = self._rows[task_id] = self._ledger.get_task(task_id)
        return row

    def runs_here(self, job_id: int) -> bool:
        """Is job `job_id` dispatched or watched by this process: in `here`, or still to be handed over
        by one of its sweeps' feeds (`feeding`)?"""
        return job_id in self.here or any(job_id in feed.left() for feed in tuple(self.feeding))

    def remember(self, row: TaskRow) -> None:
        self._rows[row.id] = row

    def known(self) -> list[int]:
        """The ids of the tasks read here: every task of a job in `here` is among them."""
        return list(self._rows)

    def forget_ended(self, outcomes: Sequence[Outcome]) -> None:
        """Jobs that ended are no longer run here (a retry or a re-run dispatches them again): `here`
        stays the size of what runs, not of every job a session ever ran. A commit listener."""
        for o in outcomes:
            if o.status in TERMINAL_NAMES:
                self.here.pop(o.job_id, None)

    def result_path(self, job_id: int) -> Path:
        """Where job `job_id`'s large result is written (for the recorder)."""
        task = self.row(self.here.get(job_id) or self._ledger.job(job_id).task_id)
        return self._storage.result_path(task.project, task.name, job_id)


class Dispatcher:
    """Ledger rows -> Launches -> backends, for one Session (its `owner`)."""

    def __init__(self, ledger: Ledger, storage: Storage, owner: Owner, profiles: Profiles, backends: LiveBackends,
                 tasks: TaskRows, changes: Changes):
        self.ledger, self.storage, self.owner = ledger, storage, owner
        self.profiles, self.backends, self.tasks, self.changes = profiles, backends, tasks, changes
        self._calls: dict[str, Any] = {}  # digest -> a Call, or a function (unpickled)
        self._takes_results: dict[str, bool] = {}  # digest -> its Call takes other jobs' results
        changes.listen(tasks.forget_ended)
        self.holding = False  # some jobs dispatched here wait HELD for room in their project's vCPU limit

    def remember_call(self, digest: str, obj: object) -> None:
        """This process has the call of payload `digest` (no need to unpickle it from storage)."""
        self._calls[digest] = obj

    def send_after(self, task: TaskRow, children: Sequence[Pending]) -> list[int]:
        """Send at once, behind their parents, those of these jobs just added to wait that may go:
        command jobs to SLURM (`sbatch --dependency=afterok`, `dependencies.afterok`, where the site
        has room, G8), Python calls to this session's dask cluster (`dependencies.follows`); the
        others wait in the ledger. Returns the ids sent. Each is SUBMITTED in the ledger first
        (`Ledger.send_after`, a compare-and-set), then dispatched as any job is."""
        sent = self._send_afterok(task, children)
        return sent + self._send_in_session(task, [c for c in children if c.id not in set(sent)])

    def _send_in_session(self, task: TaskRow, children: Sequence[Pending]) -> list[int]:
        """Python calls sent behind their parents' dask tasks in this session (backends/dask_chain.py).
        Not under a project vCPU limit: a call held for room would be dispatched later, when its
        parents' tasks may be gone."""
        candidates = [c for c in children if c.kind == "python" and not c.spec.mpi and c.spec.image is None]
        if not candidates or self.ledger.vcpu_limit(task.project) is not None:
            return []
        states = {row[0]: ParentState(*row) for row in self.ledger.parent_states(
            {p for c in candidates for p in c.after})}
        here = f"local:{self.owner}"
        sends: dict[int, tuple[str, tuple[str, ...]]] = {}
        after: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        ready: list[Pending] = []  # every parent SUCCEEDED already: released now, not at the loop's next look
        for c in candidates:
            parents = follows(c.profile, [states[p] for p in c.after if p in states], here)
            if parents:
                sends[c.id], after[c.id] = (in_session_reason(parents), (here,)), ((), parents)
            elif parents is not None and len(states) and all(p in states for p in c.after):
                ready.append(c)
        sent = [c for c in candidates if c.id in sends]  # sent (a compare-and-set) with their attempts, in one write
        started = self.dispatch(task, sent, release_for=str(self.owner), behind=sends, after=after) if sent else 0
        started += self.dispatch(task, ready, release_for=str(self.owner)) if ready else 0
        gone = sent + ready
        return [c.id for c in gone] if started == len(gone) else []  # some still wait: the caller looks again

    def _send_afterok(self, task: TaskRow, children: Sequence[Pending]) -> list[int]:
        """SLURM command jobs sent behind their parents' array tasks (see `send_after`)."""
        slurm = {name for name in {c.profile for c in children} if self._is_slurm(name)}
        candidates = [c for c in children if c.kind == "command" and not c.spec.mpi and c.profile in slurm]
        if not candidates:
            return []
        by_parents: dict[tuple[int, ...], list[Pending]] = {}
        for c in candidates:
            by_parents.setdefault(tuple(c.after), []).append(c)
        states = {row[0]: ParentState(*row) for row in self.ledger.parent_states(
            {p for parents in by_parents for p in parents})}
        after: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        eligible: dict[str, list[Pending]] = {}
        for parents, group in by_parents.items():
            known = [states[p] for p in parents if p in states]
            for c in group:
                tasks = afterok("command", c.profile, True, False, known)
                if tasks is not None:
                    after[c.id] = (tasks, tuple(p.id for p in known if p.status != "SUCCEEDED"))
                    eligible.setdefault(c.profile, []).append(c)
        sends = {c.id: (afterok_reason(after[c.id][1]), after[c.id][0]) for profile, members in eligible.items()
                 if self._room(task, profile, members) for c in members}  # the site's room: once per profile
        rows = self.ledger.send_after(sends, str(self.owner)) if sends else []
        if rows:
            log.info("%d jobs sent to SLURM behind the jobs they depend on (afterok)", len(rows))
            self.dispatch(task, rows, after=after)
        return [r.id for r in rows]

    def _is_slurm(self, profile: str) -> bool:
        try:
            return self.profiles.get(profile).backend == "slurm"
        except HTCError:
            return False

    def _room(self, task: TaskRow, profile: str, members: Sequence[Pending]) -> bool:
        """Would `members` go to sbatch at once (nothing held before them, room in the site's limits)?
        If not, they wait in the ledger: a job held by the feeder would be sent later behind parents
        SLURM may have forgotten by then."""
        try:
            backend = cast("SlurmBackend", self.backends.get(self.profiles.get(profile)))
            where = self._where(task)
            return backend.arrays.has_room([plan.launch(where, c.id, c, 1, "", "") for c in members[:1]] * len(members))
        except HTCError as exc:
            log.warning("jobs %s wait in the ledger for their parents: the site's room could not be read: %s",
                        [c.id for c in members[:10]], exc)
            return False

    def first_attempt(self, task: TaskRow, jobs: Sequence[NewJob]) -> FirstAttempt | None:
        """How new jobs of `task` start their first attempt in the transaction that records them
        (`Ledger.add_jobs(..., start=)`): the attempt `dispatch` would start for each, so that it need
        not write their rows a second time (then `dispatch(..., started=True)`). None if their project
        has a vCPU limit: admission into it is `start_attempts`' (the ledger checks this again in its
        transaction, `Limited`)."""
        if not jobs or self.ledger.vcpu_limit(task.project) is not None:
            return None
        sandbox = {p: self.profiles.get(p).sandbox for p in {j.profile for j in jobs}}
        return FirstAttempt("RUNNABLE", host=self.owner.host, native_id=f"local:{self.owner}",
                            logs=self._log_prefix(task), sandbox=sandbox)

    def _log_prefix(self, task: TaskRow) -> str:
        """Job `id` of `task` logs to f"{prefix}{id}.out" and ".err" (nothing is created)."""
        return os.path.join(self.storage.task_path(task.project, task.name) / "logs", "job-")

    def dispatch(self, task: TaskRow, rows: Sequence[JobRow | Pending], *, release_for: str | None = None,
                 after: Mapping[int, tuple[tuple[str, ...], tuple[int, ...]]] | None = None,
                 behind: Mapping[int, tuple[str, Sequence[str]]] | None = None, started: bool = False) -> int:
        """Record an attempt for each job (write-ahead), then hand them to their backends; returns
        how many attempts started.

        With `release_for` (this session's owner) the rows are waiting jobs found ready: each is
        released and its attempt started in one write transaction (`Ledger.start_attempts`), and
        one that another process released first is skipped; with `behind` too (job id -> (reason, the
        parents' native ids)), they are sent behind their parents in this session's dask cluster
        instead (`Ledger.start_attempts(..., behind=)`). `after`: job id -> (the SLURM array tasks it
        goes behind, their job ids), for jobs sent behind their parents (`send_after`).
        `started`: the rows were recorded in their first attempt (`first_attempt`), none is started
        again; if they cannot be handed over they end FAILED, as others do.

        A slice of DISPATCH_SLICE jobs at a time: their attempts, their Launches, handed over and
        dropped, so memory does not grow with a sweep's size. Plain Python calls are handed over
        slice by slice (DaskJobs keeps them as small records, probing once per sweep); other
        launches are handed over together at the end (SLURM arrays and throttles are per submission).
        New jobs of one local profile beyond the first slice (a large sweep or batch: plain Python
        calls, or command jobs that are not MPI) are not made here at all: their runner is fed them
        a slice at a time as its queue drains (`_feedable`, `runtime/sweep_feed.py`).
        """
        if not rows:
            return 0
        try:
            images.ready(self.storage.root, self.profiles, task.project, distinct(rows))  # pruned since submitted
            log_dir = self.storage.log_paths(task.project, task.name, rows[0].id)[0].parent
            log_dir.mkdir(parents=True, exist_ok=True)
            checkpoints = Path(checkpoint_path(self.storage.task_dir(task.project, task.name), 0)).parent
            checkpoints.mkdir(parents=True, exist_ok=True)
            prefix, where = self._log_prefix(task), self._where(task)  # first_attempt's logs, the same
        except Exception as exc:
            if started:  # their attempts are recorded: they end saying why, as a refused submission does
                self._fail([(r.id, 1) for r in rows], f"not submitted: could not be prepared: "
                           f"{type(exc).__name__}: {exc}")
            raise
        limit = None if started else self.ledger.vcpu_limit(task.project)
        room = (task.project, limit) if limit is not None else None
        later: dict[str, list[Launch]] = {}
        parents = ParentValues(self.ledger)  # the results of jobs these depend on, read once each
        count = 0
        with ExitStack() as one:  # to each dask runner the slices are one submission (probed once)
            for profile in {r.profile for r in distinct(rows)}:
                for runner in self.backends.get(self.profiles.get(profile)).dask_runners().values():
                    one.enter_context(runner.one_submission())
            for start in range(0, len(rows), DISPATCH_SLICE):
                end = start + DISPATCH_SLICE
                launches, n = self._attempt(task, where, prefix, rows[start:end], later, room, parents, release_for,
                                            after, behind, started)
                self._hand_over(launches, later, rows, end, started)
                count += n
                feedable = start == 0 and end < len(rows) and started and not (release_for or after or behind)
                feed = self._feedable(rows, launches, later) if feedable else None
                del launches  # gone before the next slice's are built
                if feed is not None:  # the rest a slice at a time, as the runner's queue drains
                    self._hand_over(later, {}, rows, end, started)
                    feed(self._feed(task, where, prefix, cast(Sequence[Pending], rows), end, parents))
                    return count + len(rows) - end
            self._hand_over(later, {}, rows, len(rows), started)
        return count

    def _feedable(self, rows: Sequence[JobRow | Pending], calls: dict[str, list[Launch]],
                  later: dict[str, list[Launch]]) -> Callable[[SweepFeed], None] | None:
        """Where to feed the rest of `rows` (`runtime/sweep_feed.py`), given how their first slice went
        (plain Python `calls`, the `later` others): new jobs with contiguous ids (a sweep's or a
        batch's) of one local profile whose first slice was all plain Python calls (to its dask
        runner) or all command jobs that are not MPI (to its command runner); else None (handed over
        now, slice by slice)."""
        if _contiguous(rows) is None or len(calls) + len(later) != 1:
            return None
        name, launches = next(iter((calls or later).items()))
        profile = self.profiles.get(name)
        if profile.backend != "local":
            return None
        backend = cast("LocalBackend", self.backends.get(profile))
        if calls:
            runner = backend.dask_runners().get("local")
            return runner.feed if runner is not None else None
        if all(launch.kind == "command" and launch.mpi is None for launch in launches):
            return backend.feed
        return None

    def _feed(self, task: TaskRow, where: plan.Where, prefix: str, rows: Sequence[Pending], start: int,
              parents: ParentValues) -> SweepFeed:
        """Jobs `rows[start:]` (recorded in their first attempt, contiguous ids) as a feed."""

        def make(chunk: Sequence[Pending]) -> list[Launch]:
            later: dict[str, list[Launch]] = {}
            calls, _ = self._attempt(task, where, prefix, chunk, later, None, parents, None, started=True)
            return [launch for group in (*calls.values(), *later.values()) for launch in group]

        def fail(ids: Sequence[int], reason: str) -> None:
            self._fail([(job_id, 1) for job_id in ids], reason)

        feed = SweepFeed(rows, cast(range, _contiguous(rows)), make, self.ledger.first_attempts_left, fail,
                         start=start, size=DISPATCH_SLICE, on_close=self.tasks.feeding.discard)
        self.tasks.feeding.add(feed)
        return feed

    def _attempt(self, task: TaskRow, where: plan.Where, prefix: str, rows: Sequence[JobRow | Pending],
                 later: dict[str, list[Launch]], room: tuple[str, int] | None, parents: ParentValues,
                 release_for: str | None,
                 after: Mapping[int, tuple[tuple[str, ...], tuple[int, ...]]] | None = None,
                 behind: Mapping[int, tuple[str, Sequence[str]]] | None = None,
                 started: bool = False) -> tuple[dict[str, list[Launch]], int]:
        """Start an attempt for each of these jobs that fits in `room` (its project's vCPU limit;
        the others wait HELD, released by the reconcile loop) and make the Launches of those still
        live: plain Python calls are returned by profile (with how many attempts started), the
        others added to `later`. A job whose
        Launch cannot be made (its stored call unreadable, a parent's result missing) ends FAILED
        (cause `submit`) saying why; the others go on. `started`: their first attempts are recorded."""
        native = f"local:{self.owner}"
        logs = [(f"{prefix}{r.id}.out", f"{prefix}{r.id}.err") for r in rows]
        if started:
            numbers = [1] * len(rows)
        else:
            sandbox = {p: self.profiles.get(p).sandbox for p in {r.profile for r in rows}}
            numbers = self.ledger.start_attempts([AttemptStart(r.id, host=self.owner.host, native_id=native,
                                                               log_out=o, log_err=e, status="RUNNABLE",
                                                               sandbox=sandbox[r.profile])
                                                  for r, (o, e) in zip(rows, logs, strict=True)], room,
                                                 release_for=release_for, behind=behind)
        if room is not None and not all(numbers):
            self.holding = True
        now: dict[str, list[Launch]] = {}
        unmade: list[Outcome] = []
        for row, attempt, (o, e) in zip(rows, numbers, logs, strict=True):
            if attempt:  # 0: became terminal meanwhile (e.g. cancelled), held for room, or released elsewhere
                self.tasks.here[row.id] = task.id
                try:
                    waits = after.get(row.id) if after else None  # sent behind its parents
                    launch = self._launch(task, where, row, attempt, o, e, parents, waits[1] if waits else ())
                    if waits:  # SLURM: sbatch --dependency=afterok; dask: behind their tasks
                        launch = replace(launch, after=waits[0], after_jobs=waits[1])
                except Exception as exc:
                    log.warning("job %s could not be prepared: %s", row.id, exc, exc_info=True)
                    unmade.append(Outcome(row.id, attempt, "FAILED", reason=f"not submitted: could not be prepared: "
                                          f"{type(exc).__name__}: {exc}", ended=time.time(), cause="submit"))
                    continue
                plain = launch.kind == "python" and launch.mpi is None
                (now if plain else later).setdefault(row.profile, []).append(launch)
        if unmade:
            self.ledger.record_outcomes(unmade)
            self.changes.committed(unmade)
        return now, sum(1 for n in numbers if n)

    def _hand_over(self, by_profile: dict[str, list[Launch]], later: dict[str, list[Launch]],
                   rows: Sequence[JobRow | Pending], end: int, started: bool = False) -> None:
        """Submit launches per profile. If a backend refuses, what it did not take, what waits for
        `later` and the jobs not yet attempted (`rows[end:]`; `started`: in their first attempt
        already) end FAILED saying why (they were recorded before submission, write-ahead), then the
        error is raised."""
        queue = list(by_profile.items())
        for k, (profile, launches) in enumerate(queue):
            backend = self.backends.get(self.profiles.get(profile))
            try:
                backend.submit(launches)
            except HTCError as exc:
                taken, reason, unstarted = backend.running(), f"not submitted: {exc}", rows[end:]
                unsent = [launch for launch in launches if launch.job_id not in taken]
                unsent += [launch for _, rest in queue[k + 1:] + list(later.items()) for launch in rest]
                numbers = ([1] * len(unstarted) if started else self.ledger.start_attempts(
                    [AttemptStart(r.id, host=self.owner.host, status="RUNNABLE") for r in unstarted])
                    if unstarted else [])
                outcomes = ([Outcome(launch.job_id, launch.attempt, "FAILED", reason=reason, ended=time.time(),
                                     cause="submit") for launch in unsent]
                            + [Outcome(r.id, n, "FAILED", reason=reason, ended=time.time(), cause="submit")
                               for r, n in zip(unstarted, numbers, strict=True) if n])
                self.ledger.record_outcomes(outcomes)
                self.changes.committed(outcomes)
                raise

    def _fail(self, attempts: Sequence[tuple[int, int]], reason: str) -> None:
        """These (job id, attempt) end FAILED, cause `submit`, saying why."""
        outcomes = [Outcome(job_id, attempt, "FAILED", reason=reason, ended=time.time(), cause="submit")
                    for job_id, attempt in attempts]
        self.ledger.record_outcomes(outcomes)
        self.changes.committed(outcomes)

    def _where(self, task: TaskRow) -> plan.Where:
        """Where a task's jobs run (its directories made now)."""
        self.storage.task_dir(task.project, task.name), self.storage.shared_dir(task.project)
        return plan.where(self.storage, task.project, task.name)

    def _launch(self, task: TaskRow, where: plan.Where, row: JobRow | Pending, attempt: int,
                log_out: str, log_err: str, parents: ParentValues, pending: tuple[int, ...] = ()) -> Launch:
        """What a backend needs to run one attempt of a job (`pending`: parents it goes behind in
        this session's dask cluster, whose values it takes where it runs)."""
        return plan.launch(where, row.id, row, attempt, log_out, log_err,
                           call=self._call_for(task, row, parents, pending) if row.kind == "python" else None)

    def _call_for(self, task: TaskRow, row: JobRow | Pending, parents: ParentValues,
                  pending: tuple[int, ...] = ()) -> Call:
        digest = row.spec.payload
        assert digest is not None  # every Python job has its payload
        obj = self._calls.get(digest)
        if obj is None:  # submitted by another process: kept in the ledger, or (a large one) in a file
            data = self.ledger.payload(task.id, digest)
            if data is None:
                data = Path(self.storage.payload_path(task.project, task.name, digest)).read_bytes()
            obj = self._calls[digest] = cloudpickle.loads(data)
        if isinstance(obj, Call):
            takes = self._takes_results.get(digest)
            if takes is None:
                takes = self._takes_results[digest] = bool(parents_in(obj.args, obj.kwargs))
            if takes:  # released once its parents SUCCEEDED: their results in place of the markers
                args, kwargs = parents.fill(obj.args, obj.kwargs, pending)
                return Call(obj.fn, args, kwargs)
            return obj
        if refs_in(row.params):  # a sweep over jobs: their results in place of the references
            return Call(obj, (), parents.fill_params(row.params, pending))
        return Call(obj, (), row.params)  # its sweep member's own dict (`Member.shared_params`), never changed

    # -- work other processes started ---------------------------------------------------------
    def adopt(self, job_id: int, task_id: int, attempt: int, native: str | None, profile_name: str,
              timeout: int | None) -> bool:
        """Watch a SLURM array task this process did not submit (jobs outlive kernels); False if the
        job is not one (no array id, or a profile this site does not know or runs locally)."""
        try:
            profile = self.profiles.get(profile_name)
        except HTCError:
            return False  # a profile gone from this site: another process may know it
        if profile.backend != "slurm" or not native or "_" not in native:
            return False
        task = self.tasks.row(task_id)
        backend = cast("SlurmBackend", self.backends.get(profile))
        backend.adopt(job_id, attempt, native, str(self.storage.task_dir(task.project, task.name)), timeout)
        self.tasks.here[job_id] = task_id  # watched here from now on: reconcile skips it
        return True

    def adopt_all(self, rows: Sequence[tuple[int, int, int, str, str, int | None]]) -> None:
        """Watch jobs SLURM has, whoever submitted them: (job id, task id, attempt, native id,
        profile, timeout) rows of `Ledger.scheduler_jobs` (this process holds the poll lease)."""
        for job_id, task_id, attempt, native, profile_name, timeout in rows:
            if job_id not in self.tasks.here:
                self.adopt(job_id, task_id, attempt, native, profile_name, timeout)

    def feed_held(self, rows: Sequence[JobRow]) -> None:
        """Hand SLURM the held work of a dead session, claimed by this one (`Ledger.claim`)."""
        after, rows = self._still_behind(rows)
        by_task: dict[int, list[JobRow]] = {}
        for r in rows:
            by_task.setdefault(r.task_id, []).append(r)
        for task_id, group in by_task.items():
            task = self.tasks.row(task_id)
            where = self._where(task)
            by_profile: dict[str, list[Launch]] = {}
            parents = ParentValues(self.ledger)  # held work is command jobs: no call takes results
            for r in group:
                self.tasks.here[r.id] = task_id
                launch = self._launch(task, where, r, r.attempts, r.log_out or "", r.log_err or "", parents)
                if r.id in after:  # sent behind its parents (afterok), as it was to be
                    launch = replace(launch, after=after[r.id][0], after_jobs=after[r.id][1])
                by_profile.setdefault(r.profile, []).append(launch)
            tokens = {r.id: token for r in group
                      if (native := NativeId.parse(r.native_id)) is not None and (token := native.token) is not None}
            for profile, launches in by_profile.items():
                cast("SlurmBackend", self.backends.get(self.profiles.get(profile))).hold(launches, tokens)

    def _still_behind(self, rows: Sequence[JobRow]) -> tuple[dict[int, tuple[tuple[str, ...], tuple[int, ...]]],
                                                              list[JobRow]]:
        """Held work of a dead session that was to go behind its parents (afterok): the dependency of
        each (from the parents' array tasks now), and the rows to feed. One whose parents can no
        longer be followed so (one runs again, or failed) waits in the ledger again instead."""
        ids = {r.id for r in rows}
        parents_of: dict[int, list[int]] = {}
        for parent, child in self.ledger.edges(ids):
            if child in ids:
                parents_of.setdefault(child, []).append(parent)
        if not parents_of:
            return {}, list(rows)
        states = {row[0]: ParentState(*row) for row in self.ledger.parent_states(
            {p for ps in parents_of.values() for p in ps})}
        after: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        back: list[int] = []
        for r in rows:
            known = [states[p] for p in parents_of.get(r.id, ()) if p in states]
            if all(p.status == "SUCCEEDED" for p in known):
                continue
            tasks = afterok(r.kind, r.profile, True, bool(r.spec.mpi), known)
            if tasks is None:
                back.append(r.id)
            else:
                after[r.id] = (tasks, tuple(p.id for p in known if p.status != "SUCCEEDED"))
        moved = set(self.ledger.rewait(back, "the jobs it was to wait for in SLURM (afterok) changed before it was "
                                       "sent")) if back else set()
        if moved:
            log.info("held jobs %s of a dead session wait in the ledger again for their parents", sorted(moved)[:20])
        return after, [r for r in rows if r.id not in moved and r.id not in back]

    # -- cancel and retry ---------------------------------------------------------------------
    def cancel(self, job_ids: Iterable[int], reason: str = "cancelled by user") -> list[int]:
        """End these jobs CANCELLED (those not ended) and stop what runs for them; the ids cancelled."""
        cancelled = self.ledger.cancel(list(job_ids), reason)
        self.backends.cancel(cancelled)
        self._stop_foreign([i for i in cancelled if not self.tasks.runs_here(i)])
        self.changes.committed()
        try:
            self.fail_sent(cancelled)  # jobs SLURM holds behind them (afterok) fail, naming them
        except HTCError as exc:
            log.warning("jobs sent behind cancelled jobs %s were not all cancelled in SLURM: %s", cancelled[:20], exc)
        return cancelled

    def fail_sent(self, parents: Sequence[int] | set[int] | None) -> None:
        """Fail (cause `dependency`) and scancel the jobs sent behind these jobs (None: any) with
        afterok, and those sent behind them, where a parent ended without succeeding for good."""
        sent = self.ledger.fail_sent_dependents(parents)
        if sent:
            log.info("jobs %s failed for a parent; cancelled in SLURM", [job_id for job_id, *_ in sent][:20])
            self.changes.committed([Outcome(job_id, attempt, "FAILED", cause="dependency")
                                    for job_id, attempt, _, _ in sent])
            self.stop_sent(sent)

    def stop_sent(self, failed: Sequence[tuple[int, int, int, str | None]]) -> None:
        """scancel the jobs the ledger just failed while SLURM held them behind a parent that did not
        succeed (afterok; `Ledger.fail_sent_dependents` rows): SLURM would keep them pending for
        ever (DependencyNeverSatisfied). Those this process submitted or watches are cancelled by
        their backend (also if still held by its feeder); the others by their native id."""
        here = [job_id for job_id, *_ in failed if self.tasks.runs_here(job_id)]
        if here:
            self.backends.cancel(here)
        foreign = [native for job_id, _, _, native in failed
                   if not self.tasks.runs_here(job_id) and native and ARRAY_TASK.match(native)]
        if foreign:
            from htc_notebook.backends.slurm import scheduler

            scheduler.scancel(foreign)  # a BackendError is logged by the reconcile loop

    def rewait_sent(self, parents: Sequence[int] | None) -> list[int]:
        """These jobs run again (a retry: a new SLURM job): the jobs sent behind them (afterok) wait in
        the ledger again and are scancelled (`Ledger.rewait_sent_children`). None: any such jobs
        whose parent is no longer the SLURM job they wait for (`Ledger.rewait_stale_sent`). The ids moved."""
        rows = (self.ledger.rewait_stale_sent() if parents is None
                else self.ledger.rewait_sent_children(parents) if parents else [])
        if rows:
            log.info("jobs %s wait in the ledger again: a job they waited for in SLURM runs again",
                     [job_id for job_id, *_ in rows][:20])
            try:
                self.stop_sent(rows)
            except HTCError as exc:  # the retry goes on; what SLURM still holds never starts (its parent ended)
                log.warning("jobs %s wait in the ledger again but were not cancelled in SLURM (scancel %s): %s",
                            [job_id for job_id, *_ in rows][:20], " ".join(str(n) for *_, n in rows if n), exc)
        return [job_id for job_id, *_ in rows]

    def _stop_foreign(self, job_ids: list[int]) -> None:
        """Stop what other processes started for jobs just cancelled here (the ledger already says
        CANCELLED, so their owners' later reports are ignored): scancel SLURM jobs, kill local
        command jobs' process groups on this host. Python jobs on another process's dask cannot
        be reached from here; they finish and their result is not recorded. Only attempts that this
        cancel ended (the ledger ends a job and its live attempt at one time): a job waiting for its
        retry, or requeued and not started again, runs nothing, and the pid its last attempt had
        may name another process by now."""
        slurm, host = [], socket.gethostname()
        attempts = self.ledger.attempts_of(job_ids)
        for job_id in job_ids:
            row, last = self.ledger.job(job_id), attempts.get(job_id, [None])[-1]
            if last is None or last.number != row.attempts or last.ended != row.ended:
                continue  # nothing ran when it was cancelled
            native = NativeId.parse(row.native_id)  # the job's: set before its attempt's when sent (`intend`)
            if native is None:
                continue
            if native.kind == "slurm":
                slurm.append(native.text)
            elif native.kind == "bundled":  # one job of a bundle: its array task skips or stops it, the others go on
                from htc_notebook.backends.slurm.arrays import state_dir, stop_bundled

                task = self.tasks.row(row.task_id)
                stop_bundled(state_dir(self.storage.task_dir(task.project, task.name)), row.id, last.number)
            elif native.kind == "process" and row.host == host:
                kill_orphan_group(native)
        if slurm:
            from htc_notebook.backends.slurm import scheduler

            try:
                scheduler.scancel(slurm)
            except HTCError:
                pass  # no SLURM here (or it refused): the ledger's verdict stands

    def retry(self, job_ids: Iterable[int], reason: str = "retried by user") -> list[int]:
        """Run FAILED, CANCELLED or LOST jobs again (SUCCEEDED ones are never re-run)."""
        moved = self.ledger.requeue(list(job_ids), reason, owner=str(self.owner))
        self.rewait_sent(moved)  # jobs SLURM holds behind them would wait for the old job
        by_task: dict[int, list[JobRow]] = {}
        for job_id in moved:
            row = self.ledger.job(job_id)
            by_task.setdefault(row.task_id, []).append(row)
        for task_id, rows in by_task.items():
            self.dispatch(self.tasks.row(task_id), rows)
        return moved
