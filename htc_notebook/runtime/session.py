"""The Session: one data root (ledger + storage), one site, live backends.

>>> s = Session("htc-data")                       # doctest: +SKIP
>>> task = s.project("demo").task("first")        # doctest: +SKIP
>>> task.submit(pow, 2, 10).result()              # doctest: +SKIP
1024
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import warnings
import weakref
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

import cloudpickle

from htc_notebook.backends.base import Backend, Call, Launch
from htc_notebook.errors import HTCError, HTCWarning, SpecError, UnsupportedFeature
from htc_notebook.ledger import AttemptStart, JobRow, Ledger, TaskRow
from htc_notebook.ledger.schema import HELD_FOR_ROOM
from htc_notebook.states import TERMINAL_NAMES, NativeId, Outcome
from htc_notebook.runtime import confinement, images, plan
from htc_notebook.runtime.reads import Reads
from htc_notebook.runtime.completions import Completions
from htc_notebook.runtime.dashboard import proxy_dashboards
from htc_notebook.runtime.handles import JobHandle
from htc_notebook.runtime.owner import Owner, kill_orphan_group
from htc_notebook.runtime.reconcile import Reconciler
from htc_notebook.runtime.recorder import Recorder
from htc_notebook.runtime.task import Pending, Project
from htc_notebook.spec import PartitionProfile, RetentionPolicy, SiteConfig
from htc_notebook.storage import Storage, checkpoint_path

if TYPE_CHECKING:  # the backends are imported where used (SLURM's needs dask-jobqueue)
    from htc_notebook.backends.local import LocalBackend
    from htc_notebook.backends.slurm.backend import SlurmBackend
    from htc_notebook.runtime.watch import SlurmWatch

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
DISPATCH_SLICE = 5000  # jobs whose attempts and Launches are built and handed over at a time


def _close_at_exit(session: "Session") -> None:
    """Close the session when the interpreter exits (what backends reported gets committed)."""
    ref = weakref.ref(session)

    def close() -> None:
        s = ref()
        if s is not None:
            s.close()

    atexit.register(close)


class Session:
    """Entry point: `Session(root).project(name).task(name)`.

    `root` defaults to `$HTC_ROOT`, else `./htc-data`; `site` is a SiteConfig,
    a path to a site YAML, or None for the layered default site.
    No cluster is started until work is submitted. The reconcile loop (runtime/reconcile.py) runs
    from the start unless `reconcile=False` (a short look, such as `htc status`, that must not
    take up retries it would not live to see through). A session that reconciles renews its heartbeat
    lease in the ledger every `heartbeat` seconds (default: runtime/owner.heartbeat_seconds()), so
    sessions on other hosts can tell when it has died (runtime/owner.py).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, site: SiteConfig | str | os.PathLike | None = None,
                 reconcile: bool = True, heartbeat: float | None = None):
        if heartbeat is not None and not 0 < heartbeat < float("inf"):
            raise SpecError("Session", "heartbeat", heartbeat, "a positive number of seconds (None: the default)")
        self.root = Path(root or os.environ.get("HTC_ROOT") or "htc-data").resolve()
        self.site = site if isinstance(site, SiteConfig) else SiteConfig.load(site)
        proxy_dashboards()  # in a kernel of a Jupyter server with jupyter-server-proxy: links through it
        self.storage = Storage(self.root)
        self.ledger = Ledger(self.storage.ledger_path)
        self.reads = Reads(self.ledger)  # what ui/, server/ and cli.py read of it
        self.owner = Owner(socket.gethostname(), os.getpid())
        self._backends: dict[str, Backend] = {}
        self._profiles: dict[str, tuple[PartitionProfile, PartitionProfile]] = {}  # name -> (site's, as run here)
        self._tasks: dict[int, TaskRow] = {}
        self._calls: dict[str, Any] = {}  # digest -> a Call, or a function (unpickled)
        self._job_task: dict[int, int] = {}  # job id -> task id, for every job dispatched here
        self.holding = False  # some jobs of this session wait HELD for room in their project's vCPU limit
        self._changed = threading.Condition()
        self._generation = 0  # bumped on every commit this process makes (see change_mark)
        self._lock = threading.RLock()
        self._closed = False
        self._watch: SlurmWatch | None = None  # runtime/watch.py: started with the first SLURM backend
        self._image_holds: list = []  # pilot images kept from `htc images prune` while this session runs
        self._recorder = Recorder(self.ledger, self._result_path, self._committed)
        self.completions = Completions(self)  # what as_completed, executors' futures and `await` wait with
        self.reconciler = Reconciler(self, enabled=reconcile, heartbeat=heartbeat)
        _close_at_exit(self)
        self.reconciler.start()

    def __repr__(self) -> str:
        return f"Session(root={str(self.root)!r}, profiles={self.site.names()})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- navigation ----------------------------------------------------------
    def project(self, name: str) -> Project:
        return Project(self, self.ledger.project(name).name)

    def projects(self) -> list[Project]:
        return [Project(self, p.name) for p in self.ledger.projects()]

    def gone_owners(self, owners: Iterable[str | None]) -> dict[str, str]:
        """Which of these owners (as jobs' specs name them) count as exited, and why (runtime/owner.py:
        on this host by their pid, on another by their heartbeat lease); never this session itself."""
        parsed = {text: o for text in owners
                  if text is not None and (o := Owner.parse(text)) is not None and o != self.owner}
        elsewhere = [text for text, o in parsed.items() if not o.here]
        leases = self.ledger.owner_leases(elsewhere) if elsewhere else {}
        now = time.time()
        return {text: why for text, o in parsed.items() if (why := o.gone(leases, now)) is not None}

    def set_lifecycle(self, task_id: int, status: str) -> TaskRow:
        """Archive (ARCHIVED) or unarchive (ACTIVE) task `task_id`; returns it as it is now."""
        self.ledger.set_lifecycle(task_id, status)
        return self.ledger.get_task(task_id)

    def retention(self) -> RetentionPolicy | None:
        """The data root's (the workspace's) task retention policy, which projects without one of
        their own are under (`Project.set_retention`); None: it has none."""
        row = self.ledger.workspace_retention()
        return RetentionPolicy(archive_after=row.archive_after, delete_after=row.delete_after) if row else None

    def set_retention(self, archive_after: int = 0, delete_after: int = 0) -> RetentionPolicy:
        """The workspace's task retention policy, in hours (0 turns a rule off)."""
        policy = RetentionPolicy(archive_after=archive_after, delete_after=delete_after)
        self.ledger.set_workspace_retention(policy.archive_after, policy.delete_after)
        return policy

    def job(self, job_id: int):
        """A handle for any job in the ledger, e.g. after a kernel restart."""
        row = self.ledger.job(job_id)
        return JobHandle(self, row.id, row.task_id)

    def task_row(self, task_id: int) -> TaskRow:
        row = self._tasks.get(task_id)
        if row is None:
            row = self._tasks[task_id] = self.ledger.get_task(task_id)
        return row

    # -- backends --------------------------------------------------------------
    def profile(self, name: str | None) -> PartitionProfile:
        """The profile `name` as it runs here: unconfined if it must be (runtime/confinement.py), said once."""
        site = self.site.profile(name or self.site.default_profile)
        known = self._profiles.get(site.name)
        if known is not None and known[0] is site:
            return known[1]
        profile, message = self._as_run(site)
        if message:  # once per profile and session (the warning filter would show it once per code line)
            warnings.warn(message, HTCWarning, stacklevel=3)
        self._profiles[site.name] = (site, profile)
        return profile

    def unconfined(self, name: str | None = None) -> str | None:
        """What is off if profile `name`'s jobs run unconfined here (None: they run in the sandbox)."""
        return self._as_run(self.site.profile(name or self.site.default_profile))[1]

    def _as_run(self, site: PartitionProfile) -> tuple[PartitionProfile, str | None]:
        """The site's profile as it runs here, and what to say if it runs unconfined."""
        return confinement.as_run(self.site, site)

    def backend(self, profile: PartitionProfile) -> Backend:
        with self._lock:
            if self._closed:
                raise UnsupportedFeature("this session is closed; open a new Session")
            backend = self._backends.get(profile.name)
            if backend is None:
                if profile.backend == "slurm":
                    from htc_notebook.backends.slurm.backend import SlurmBackend

                    backend = SlurmBackend(profile, self._recorder, credentials=self.storage.dask_credentials_path,
                                           log_directory=str(self.root / "pilot-logs"),
                                           grace=self.site.exit_file_grace,
                                           pilot_python=(lambda: self._pilot_python(profile))
                                           if profile.pilot_image else None,
                                           call_times=self.ledger.call_durations)
                    if self._watch is None:
                        from htc_notebook.runtime.watch import SlurmWatch

                        self._watch = SlurmWatch(self)
                else:
                    from htc_notebook.backends.local import LocalBackend

                    backend = LocalBackend(profile, self._recorder, log_directory=str(self.root / "pilot-logs"),
                                           call_times=self.ledger.call_durations)
                self._backends[profile.name] = backend
                self.reconciler.start()
            return backend

    def live_backends(self) -> list[Backend]:
        with self._lock:
            return list(self._backends.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def slurm_backends(self) -> list:
        """The SLURM backends this session runs (for the data root's one status poll)."""
        return [b for b in self.live_backends() if getattr(b, "name", "") == "slurm"]

    def watch_rows(self, rows: Sequence[tuple[int, int, int, str, str, int | None]]) -> None:
        """Watch jobs SLURM has, whoever submitted them: (job id, task id, attempt, native id,
        profile, timeout) rows of `Ledger.scheduler_jobs` (this process holds the poll lease)."""
        for job_id, task_id, attempt, native, profile_name, timeout in rows:
            if job_id not in self._job_task:
                self._watch_job(job_id, task_id, attempt, native, profile_name, timeout)

    def _watch_job(self, job_id: int, task_id: int, attempt: int, native: str | None, profile_name: str,
                   timeout: int | None) -> bool:
        """Watch a SLURM array task this process did not submit (jobs outlive kernels); False if the
        job is not one (no array id, or a profile this site does not know or runs locally)."""
        try:
            profile = self.profile(profile_name)
        except HTCError:
            return False  # a profile gone from this site: another process may know it
        if profile.backend != "slurm" or not native or "_" not in native:
            return False
        task = self.task_row(task_id)
        backend = cast("SlurmBackend", self.backend(profile))
        backend.adopt(job_id, attempt, native, str(self.storage.task_dir(task.project, task.name)), timeout)
        self._job_task[job_id] = task_id  # watched here from now on: reconcile skips it
        return True

    # -- dispatch ----------------------------------------------------------------
    def remember_call(self, digest: str, obj: object) -> None:
        self._calls[digest] = obj

    def _call_for(self, task: TaskRow, row: JobRow | Pending) -> Call:
        digest = row.spec.payload
        assert digest is not None  # every Python job has its payload
        obj = self._calls.get(digest)
        if obj is None:
            path = self.storage.payload_path(task.project, task.name, digest)
            obj = self._calls[digest] = cloudpickle.loads(Path(path).read_bytes())
        if isinstance(obj, Call):
            return obj
        return Call(obj, (), row.params)  # the job's own dict (a copy of its member's), not shared

    def dispatch(self, task: TaskRow, rows: Sequence[JobRow | Pending]) -> None:
        """Record an attempt for each job (write-ahead), then hand them to their backends.

        A slice of DISPATCH_SLICE jobs at a time: their attempts, their Launches, handed over and
        dropped, so memory does not grow with a sweep's size. Plain Python calls are handed over
        slice by slice (DaskJobs keeps them as small records, probing once per sweep); other
        launches are handed over together at the end (SLURM arrays and throttles are per submission).
        """
        if not rows:
            return
        images.ready(self, task.project, rows)  # pruned from the cache since they were submitted: again
        log_dir = self.storage.log_paths(task.project, task.name, rows[0].id)[0].parent
        log_dir.mkdir(parents=True, exist_ok=True)
        checkpoint_path(self.storage.task_dir(task.project, task.name), 0).parent.mkdir(parents=True, exist_ok=True)
        prefix, where = os.path.join(log_dir, "job-"), self._where(task)
        limit = self.ledger.vcpu_limit(task.project)
        room = (task.project, limit) if limit is not None else None
        later: dict[str, list[Launch]] = {}
        with ExitStack() as one:  # to each dask runner the slices are one submission (probed once)
            for profile in {r.profile for r in rows}:
                for runner in self.backend(self.profile(profile)).dask_runners().values():
                    one.enter_context(runner.one_submission())
            for start in range(0, len(rows), DISPATCH_SLICE):
                end = start + DISPATCH_SLICE
                # one expression: the previous slice's Launches are gone before the next is built
                self._hand_over(self._attempt(task, where, prefix, rows[start:end], later, room), later, rows, end)
            self._hand_over(later, {}, rows, len(rows))

    def _attempt(self, task: TaskRow, where, prefix: str, rows: Sequence[JobRow | Pending],
                 later: dict[str, list[Launch]], room: tuple[str, int] | None) -> dict[str, list[Launch]]:
        """Start an attempt for each of these jobs that fits in `room` (its project's vCPU limit;
        the others wait HELD, released by the reconcile loop) and make the Launches of those still
        live: plain Python calls are returned by profile, the others added to `later`."""
        native = f"local:{self.owner}"
        logs = [(f"{prefix}{r.id}.out", f"{prefix}{r.id}.err") for r in rows]
        sandbox = {p: self.profile(p).sandbox for p in {r.profile for r in rows}}
        numbers = self.ledger.start_attempts([AttemptStart(r.id, host=self.owner.host, native_id=native, log_out=o,
                                                           log_err=e, status="RUNNABLE", sandbox=sandbox[r.profile])
                                              for r, (o, e) in zip(rows, logs, strict=True)], room)
        if room is not None and not all(numbers):
            self.holding = True
        now: dict[str, list[Launch]] = {}
        for row, attempt, (o, e) in zip(rows, numbers, logs, strict=True):
            if attempt:  # 0: became terminal meanwhile (e.g. cancelled)
                self._job_task[row.id] = task.id
                launch = self._launch(task, where, row, attempt, o, e)
                plain = launch.kind == "python" and launch.mpi is None
                (now if plain else later).setdefault(row.profile, []).append(launch)
        return now

    def _hand_over(self, by_profile: dict[str, list[Launch]], later: dict[str, list[Launch]],
                   rows: Sequence[JobRow | Pending], end: int) -> None:
        """Submit launches per profile. If a backend refuses, what it did not take, what waits for
        `later` and the jobs not yet attempted (`rows[end:]`) end FAILED saying why (they were
        recorded before submission, write-ahead), then the error is raised."""
        queue = list(by_profile.items())
        for k, (profile, launches) in enumerate(queue):
            backend = self.backend(self.profile(profile))
            try:
                backend.submit(launches)
            except HTCError as exc:
                taken, reason, unstarted = backend.running(), f"not submitted: {exc}", rows[end:]
                unsent = [launch for launch in launches if launch.job_id not in taken]
                unsent += [launch for _, rest in queue[k + 1:] + list(later.items()) for launch in rest]
                numbers = self.ledger.start_attempts([AttemptStart(r.id, host=self.owner.host, status="RUNNABLE")
                                                      for r in unstarted]) if unstarted else []
                self.ledger.record_outcomes(
                    [Outcome(launch.job_id, launch.attempt, "FAILED", reason=reason, ended=time.time(), cause="submit")
                     for launch in unsent]
                    + [Outcome(r.id, n, "FAILED", reason=reason, ended=time.time(), cause="submit")
                       for r, n in zip(unstarted, numbers, strict=True) if n])
                self._notify()
                raise

    def _where(self, task: TaskRow) -> plan.Where:
        """Where a task's jobs run (its directories made now)."""
        self.storage.task_dir(task.project, task.name), self.storage.shared_dir(task.project)
        return plan.where(self.storage, task.project, task.name)

    def _launch(self, task: TaskRow, where: plan.Where, row: JobRow | Pending, attempt: int,
                log_out: str, log_err: str) -> Launch:
        """What a backend needs to run one attempt of a job."""
        return plan.launch(where, row.id, row, attempt, log_out, log_err,
                           call=self._call_for(task, row) if row.kind == "python" else None)

    # -- the data root's container registry -----------------------------------------
    def registry(self, project: str):
        """The container registry as `project` sees it (`htc_notebook.registry.ProjectRegistry`:
        prefix, password, repositories, images); the registry itself runs apart (`htc registry up`)."""
        from htc_notebook.registry import ProjectRegistry
        from htc_notebook.spec import check_name

        return ProjectRegistry(self.root, check_name(project, field="project"))

    def _pilot_python(self, profile: PartitionProfile) -> str:
        """The command `profile`'s pilots start Python with in its `pilot_image`: the image resolved in
        its project's registry (of the profile's architecture), pulled and unpacked once, and held
        from `htc images prune` until the session closes."""
        from htc_notebook.backends.slurm.pilots import image_python
        from htc_notebook.registry.pull import hold, resolve, rootfs
        from htc_notebook.spec.names import parse_site_image

        project, image = parse_site_image(profile.pilot_image)
        registry = self.registry(project)
        digest = resolve(registry, image, profile.architecture, field="pilot_image", model="PartitionProfile")
        self._image_holds.append(hold(self.root, digest))
        return image_python(profile, str(rootfs(registry, image, digest)), str(self.root))

    # -- pilots (dask workers on a scheduler) --------------------------------------
    def pilots(self, profile: str | None = None):
        """The dask-jobqueue cluster of a SLURM profile (started on first use)."""
        prof = self.profile(profile)
        backend = self.backend(prof)
        if prof.backend != "slurm":
            raise UnsupportedFeature(f"profile {prof.name!r} runs locally; it has no pilots to scale")
        return cast("SlurmBackend", backend).pilots.cluster

    def scale(self, profile: str | None, jobs: int) -> None:
        """Keep exactly `jobs` pilot jobs of a SLURM profile (stops adapting). BackendError with
        SLURM's words if it refuses the pilot's job script."""
        from htc_notebook.backends.slurm.pilots import check_probe

        cluster = self.pilots(profile)
        adaptive = getattr(cluster, "_adaptive", None)  # where distributed keeps it; adapt() stops it too
        if adaptive is not None:
            adaptive.stop()
            cluster._adaptive = None
        cluster.scale(jobs=jobs)
        check_probe(cluster)  # else a refused script leaves the caller waiting for workers that never come

    def adapt(self, profile: str | None, minimum: int = 0, maximum: int | None = None) -> None:
        """Let a SLURM profile's pilot count follow the work, between `minimum` and `maximum` jobs."""
        prof = self.profile(profile)
        self.pilots(profile).adapt(minimum_jobs=minimum, maximum_jobs=maximum or prof.max_pilots)

    def start(self, profile: str | None, jobs: int | None = None) -> None:
        """Start a profile's cluster now: the local dask cluster, or `jobs` SLURM pilot jobs (default 1)."""
        prof = self.profile(profile)
        if prof.backend == "local":
            cast("LocalBackend", self.backend(prof)).client  # noqa: B018 - starts it
        else:
            self.scale(prof.name, jobs or 1)

    def stop(self, profile: str | None) -> bool:
        """Stop a profile's clusters (its running jobs here end CANCELLED); False if none ran."""
        prof = self.profile(profile)
        with self._lock:
            backend = self._backends.pop(prof.name, None)
        if backend is None:
            return False
        backend.close()
        return True

    def clusters(self) -> list[dict]:
        """The dask clusters this session runs: profile, kind, workers, dashboard, jobs running."""
        rows = []
        for name, backend in list(self._backends.items()):
            for kind, runner in backend.dask_runners().items():
                if not runner.started:
                    continue
                client = runner.client
                rows.append({"profile": name, "kind": kind, "workers": len(client.scheduler_info().get("workers", {})),
                             "dashboard": runner.dashboard_link, "jobs": len(runner.running())})
        return rows

    def cancel(self, job_ids: Iterable[int], reason: str = "cancelled by user") -> list[int]:
        ids = list(job_ids)
        cancelled = self.ledger.cancel(ids, reason)
        for backend in list(self._backends.values()):
            backend.cancel(cancelled)
        self._stop_foreign([i for i in cancelled if i not in self._job_task])
        self._notify()
        return cancelled

    def _stop_foreign(self, job_ids: list[int]) -> None:
        """Stop what other processes started for jobs just cancelled here (the ledger already says
        CANCELLED, so their owners' later reports are ignored): scancel SLURM jobs, kill local
        command jobs' process groups on this host. Python jobs on another process's dask cannot
        be reached from here; they finish and their result is not recorded."""
        slurm, host = [], socket.gethostname()
        for job_id in job_ids:
            row = self.ledger.job(job_id)
            native = NativeId.parse(row.native_id)
            if native is None:
                continue
            if native.kind == "slurm":
                slurm.append(native.text)
            elif native.kind == "bundled":  # one job of a bundle: its array task skips or stops it, the others go on
                from htc_notebook.backends.slurm.arrays import state_dir, stop_bundled

                task = self.task_row(row.task_id)
                stop_bundled(state_dir(self.storage.task_dir(task.project, task.name)), row.id, row.attempts)
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
        by_task: dict[int, list[JobRow]] = {}
        for job_id in moved:
            row = self.ledger.job(job_id)
            by_task.setdefault(row.task_id, []).append(row)
        for task_id, rows in by_task.items():
            self.dispatch(self.task_row(task_id), rows)
        return moved

    # -- what backends report (recorder thread) ------------------------------------
    def _result_path(self, job_id: int) -> Path:
        task = self.task_row(self._job_task.get(job_id) or self.ledger.job(job_id).task_id)
        return self.storage.result_path(task.project, task.name, job_id)

    def _committed(self, outcomes: Sequence[Outcome]) -> None:
        self._notify()
        failed = [o.job_id for o in outcomes if o.status in ("FAILED", "LOST")]
        if failed:
            self.reconciler.failed(failed)  # a batch's max_failures may be reached
        if self.holding or failed:
            self.reconciler.wake()  # a retry may be due now, or room for held jobs

    def stop_failing_batches(self, job_ids: Iterable[int]) -> list[int]:
        """Cancel the rest of every batch of these jobs that reached its `max_failures` (saying so);
        returns the ids cancelled."""
        stopped: list[int] = []
        for batch_id, name, limit, failed in self.ledger.over_max_failures(job_ids):
            rest = self.ledger.active_in_batch(batch_id)
            if rest:
                stopped += self.cancel(rest, f"max_failures={limit} reached: {failed} jobs of {name!r} failed")
        return stopped

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    # -- waiting -----------------------------------------------------------------
    def change_mark(self) -> int:
        """A mark to pass to `wait_for_change`: take it before looking at the ledger."""
        with self._changed:
            return self._generation

    def wait_for_change(self, timeout: float = POLL_SECONDS, since: int | None = None) -> None:
        """Sleep until this process commits something after `since` (a `change_mark`), or `timeout`
        (other processes write too). With the mark, a commit between the look and the wait is not missed."""
        with self._changed:
            if since is None:
                self._changed.wait(timeout)
            else:
                self._changed.wait_for(lambda: self._generation != since, timeout)

    def reconcile(self, rows: Iterable[JobRow]) -> int:
        """Mark LOST (cause `owner`: requeued as its RetryPolicy allows) the active local jobs whose
        owning process has exited, on this host or, its heartbeat lease lapsed, on another (design G5).

        Local jobs live inside the process that submitted them; if it is gone,
        so is the work. Nothing is assumed to have succeeded.
        """
        rows = list(rows)
        gone = self.gone_owners({r.spec.owner for r in rows if r.status not in TERMINAL_NAMES})
        lost: list[Outcome] = []
        held: dict[str, list[JobRow]] = {}
        for row in rows:
            if row.status in TERMINAL_NAMES or row.id in self._job_task or row.retry_at is not None:
                continue  # ended, watched by this process, or waiting for its retry (the reconcile loop's)
            if row.kind == "command" and self._watch_job(row.id, row.task_id, row.attempts, row.native_id, row.profile,
                                                          row.spec.timeout):
                continue
            why = gone.get(row.spec.owner or "")
            owner = Owner.parse(row.spec.owner)
            if why is None or owner is None:
                continue
            if row.status == "HELD" and row.native_id == HELD_FOR_ROOM:  # never started: this session takes it
                if self.ledger.claim([row.id], str(owner), str(self.owner)):
                    self.holding = True
                continue
            if self._fed_by_slurm(row):
                held.setdefault(str(owner), []).append(row)
                continue
            reason = f"the process that ran it ({owner}) {why}; local jobs and pilots do not outlive their session"
            native = NativeId.parse(row.native_id)
            if not owner.here:  # a pid of another host names another process here
                if native is not None and native.kind == "process":
                    reason += f"; what is left of its process group {row.native_id} on {owner.host} was not reached"
            elif native is not None and kill_orphan_group(native):
                reason += f"; its orphaned process group {row.native_id} was killed"
            lost.append(Outcome(row.id, row.attempts, "LOST", reason=reason + ". Retry it or re-run the sweep",
                                host=owner.host, ended=time.time(), cause="owner"))
        if lost:
            self.ledger.record_outcomes(lost)
            self._notify()
        for dead, group in held.items():
            self._take_held(dead, group)
        return len(lost)

    def resume(self) -> int:
        """Take up what earlier sessions of this data root left (`htc serve`, the Jupyter server at
        start, `%htc attach`): watch their SLURM jobs, feed their held work, retry what is due, and
        mark LOST the local jobs of processes that have exited; then keep doing so (the reconcile
        loop). Returns how many jobs were marked LOST."""
        self.reconciler.start()
        return self.reconciler.reconcile_owners()

    def _fed_by_slurm(self, row: JobRow) -> bool:
        """A SLURM array job that its dead submitter never handed to SLURM (held, or its sbatch unanswered)."""
        try:
            profile = self.profile(row.profile)
        except Exception:  # noqa: BLE001 - a profile gone from the site
            return False
        native = NativeId.parse(row.native_id)
        return (profile.backend == "slurm" and row.kind == "command" and not row.spec.mpi
                and (native is None or native.slurm is None))

    def _take_held(self, owner: str, rows: list[JobRow]) -> None:
        """Claim held work of a dead session (exactly one live session gets each job) and feed it."""
        claimed = set(self.ledger.claim([r.id for r in rows], owner, str(self.owner)))
        by_task: dict[int, list[JobRow]] = {}
        for r in rows:
            if r.id in claimed:
                by_task.setdefault(r.task_id, []).append(r)
        for task_id, group in by_task.items():
            task = self.task_row(task_id)
            where = self._where(task)
            by_profile: dict[str, list[Launch]] = {}
            for r in group:
                self._job_task[r.id] = task_id
                by_profile.setdefault(r.profile, []).append(
                    self._launch(task, where, r, r.attempts, r.log_out or "", r.log_err or ""))
            tokens = {r.id: token for r in group
                      if (native := NativeId.parse(r.native_id)) is not None and (token := native.token) is not None}
            for profile, launches in by_profile.items():
                cast("SlurmBackend", self.backend(self.profile(profile))).hold(launches, tokens)

    def flush(self) -> None:
        """Wait until everything backends reported is committed to the ledger."""
        self._recorder.flush()

    def close(self) -> None:
        """Stop backends (running local jobs end CANCELLED) and commit what they reported."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            backends, self._backends = list(self._backends.values()), {}
        self.reconciler.close()
        if self._watch is not None:
            self._watch.close()
        for backend in backends:
            backend.close()
        for held in self._image_holds:
            held.close()
        self._recorder.flush(timeout=30)
        self._recorder.close()
        self.ledger.close()
