"""Projects and tasks: where work is submitted (HTC API: Project -> Task -> Job)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import cloudpickle

from htc_notebook.backends.base import Call
from htc_notebook.errors import KeyTaken, Limited, SpecError
from htc_notebook.ledger import LimitRow, NewBatch, NewJob, TaskRow
from htc_notebook.states import ACTIVE_NAMES, REQUEUEABLE_NAMES
from htc_notebook.runtime.commands import plain_argv, render_command, template_argv
from htc_notebook.runtime.dependencies import ParentResult, refs_in, replace_in
from htc_notebook.runtime.pending import Pending, SweepJobs, distinct
from htc_notebook.runtime.futures import TaskExecutor
from htc_notebook.runtime.handles import JobGroup, JobHandle
from htc_notebook.runtime.live_backends import project_registry
from htc_notebook.runtime.parts import Parts
from htc_notebook.runtime.plan import (PRIORITY, architecture, check_definition, check_mpi, definition_spec, job_spec,
                                      render_jobs)
from htc_notebook.spec import (Dimension, ImageRef, JobBatch, JobDefinition, JobSpec, MpiLayout, PartitionProfile,
                               ProjectLimit, Resources, RetentionPolicy, RetryPolicy, Sweep)
from htc_notebook.spec.job import PRIORITIES
from htc_notebook.spec.sweep import Member
from htc_notebook.storage import ProjectStorage, TaskStorage, atomic_write

if TYPE_CHECKING:
    import pandas

STORED_IN_LEDGER = 256 * 1024  # bytes: a pickled call up to this size is kept in the ledger, not a file
RACES = 5  # times a submission re-reads the task when another process added the same keys meanwhile
KEY_CHUNK = 10_000  # sweep members looked up by key at a time
# Recording holds the ledger's write lock, and so the heartbeat, for the whole submission: 42 us a job
# measured inside a busy session (300,000 jobs: 12.6 s), so a million could outlast the lease (60 s) and
# sessions on other hosts would count this one's jobs LOST. A submission this large first extends the
# lease by this much a job (a margin of about 2.4).
LONG_SUBMISSION, RECORDING_SECONDS = 10_000, 1e-4


class Project:
    """A long-lived container of tasks with shared storage every task can read."""

    def __init__(self, parts: Parts, name: str):
        self.parts, self.name = parts, name

    def __repr__(self) -> str:
        return f"Project({self.name!r})"

    def task(self, name: str) -> "Task":
        """The task `name`, created on first use."""
        return Task(self.parts, self.parts.ledger.task(self.name, name))

    def tasks(self) -> list["Task"]:
        return [Task(self.parts, row) for row in self.parts.ledger.tasks(self.name)]

    @property
    def shared(self) -> ProjectStorage:
        """The project's shared storage: put inputs here for every task's jobs to read."""
        return ProjectStorage(self.parts.storage.shared_dir(self.name))

    # -- vCPU limits (HTC `limits`) ------------------------------------------------------
    def limits(self) -> list[LimitRow]:
        """This project's vCPU limits; the lowest holds for every kernel and server of the data root."""
        return self.parts.ledger.limits(self.name)

    def set_vcpu_limit(self, vcpus: int, modifier_role: str = "PROJECT_ADMIN") -> LimitRow:
        """At most `vcpus` vCPUs of this project's jobs in use at once; the rest wait HELD, in order.

        >>> project.set_vcpu_limit(64)  # doctest: +SKIP
        """
        limit = ProjectLimit(vcpus=vcpus, modifier_role=modifier_role)
        return self._changed(self.parts.ledger.add_limit(self.name, limit.modifier_role, limit.vcpus))

    def update_limit(self, limit_id: int, vcpus: int, modifier_role: str = "PROJECT_ADMIN") -> LimitRow | None:
        """Change limit `limit_id` of this project (None if it has no such limit)."""
        limit = ProjectLimit(vcpus=vcpus, modifier_role=modifier_role)
        return self._changed(self.parts.ledger.update_limit(self.name, limit_id, limit.modifier_role, limit.vcpus))

    def delete_limits(self, limit_id: int | None = None) -> int:
        """Delete one of this project's limits, or all of them; held jobs go as the rest allows."""
        return self._changed(self.parts.ledger.delete_limits(self.name, limit_id))

    # -- compute environments (HTC `dimensions`) ------------------------------------------------
    def dimensions(self) -> list[Dimension]:
        """The compute environments this project's jobs may use: those set, else all the site offers."""
        rows = self.parts.ledger.dimensions(self.name)
        return self.parts.site.dimensions() if rows is None else [Dimension.model_validate(d) for d in rows]

    def set_dimensions(self, dimensions: Sequence[Dimension | Mapping[str, Any]]) -> list[Dimension]:
        """Let this project's jobs run only in `dimensions` (profiles as regions, at a priority); []
        lets them run anywhere the site offers. Each must be one the site offers (SpecError naming them).

        >>> project.set_dimensions([{"region": "cpu", "priority": "ON_DEMAND_ECONOMY"}])  # doctest: +SKIP
        """
        offered = self.parts.site.dimensions()
        dims = [d if isinstance(d, Dimension) else Dimension.model_validate(d) for d in dimensions]
        for i, d in enumerate(dims):
            if d not in offered:
                raise SpecError("Dimension", f"dimensions[{i}]", d.to_wire(), "one the site offers: " + ", ".join(
                    f"{o.region}/{o.machine_architecture}/{o.priority}" for o in offered))
        self.parts.ledger.set_dimensions(self.name, [d.to_wire() for d in dict.fromkeys(dims)])
        return self.dimensions()

    # -- task retention (HTC `task-retention-policy`) -----------------------------------------
    def retention(self) -> RetentionPolicy | None:
        """This project's task retention policy (None: it has none, tasks are kept)."""
        rows = self.parts.ledger.retention(self.name)
        return RetentionPolicy(archive_after=rows[0].archive_after, delete_after=rows[0].delete_after) if rows else None

    def set_retention(self, archive_after: int = 0, delete_after: int = 0) -> RetentionPolicy:
        """Archive ACTIVE tasks with nothing done for `archive_after` hours, and delete the files of
        tasks archived `delete_after` hours ago (their ledger record is kept); 0 turns a rule off.
        Any session of the data root applies it (its reconcile loop, every few minutes)."""
        policy = RetentionPolicy(archive_after=archive_after, delete_after=delete_after)
        self.parts.ledger.set_retention(self.name, policy.archive_after, policy.delete_after)
        return policy

    def delete_retention(self) -> bool:
        return self.parts.ledger.delete_retention(self.name)

    def _changed(self, out):
        self.parts.reconciler.wake()  # a raised or deleted limit makes room for held jobs
        return out


class Task:
    """One run of a workload: a set of jobs and a storage directory only they can write."""

    def __init__(self, parts: Parts, row: TaskRow):
        self.parts, self.row = parts, row
        self.id, self.name, self.project = row.id, row.name, row.project
        parts.tasks.remember(row)

    def __repr__(self) -> str:
        return f"Task({self.project}/{self.name}, id={self.id})"

    @property
    def storage(self) -> TaskStorage:
        st = self.parts.storage
        return TaskStorage(st.task_dir(self.project, self.name), st.shared_dir(self.project))

    # -- submitting -----------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, profile: str | None = None,
               resources: Resources | Mapping[str, Any] | None = None, retries: int | RetryPolicy = 0,
               name: str | None = None, key: str | None = None, after: Sequence[JobHandle] | None = None,
               **kwargs: Any) -> JobHandle:
        """Run `fn(*args, **kwargs)` as one job; returns its handle at once.

        A JobHandle (or JobGroup) among the arguments, also inside lists, tuples and dicts, makes
        the job wait until that job SUCCEEDED and get its result in the handle's place; `after`
        names more jobs to wait for without taking their results. If one of them fails for good,
        this job ends FAILED (cause `dependency`) without running; retrying it lets this one wait again.
        With a `key`, a job of this task with the same key is reused instead: its handle
        is returned (and it is run again if it failed, was cancelled or lost).

        >>> b = task.submit(analyse, task.submit(simulate, 300.0))  # doctest: +SKIP
        """
        return self.call(fn, args, kwargs, profile=profile, resources=resources, retries=retries, name=name, key=key,
                         after=after)

    def call(self, fn: Callable[..., Any], args: tuple = (), kwargs: Mapping[str, Any] | None = None, *,
             profile: str | None = None, resources: Resources | Mapping[str, Any] | None = None,
             retries: int | RetryPolicy = 0, name: str | None = None, key: str | None = None,
             after: Sequence[JobHandle] | None = None) -> JobHandle:
        """`submit` with the function's arguments given apart, so its keywords may be named like
        submit's own (`profile`, `name`, ...): `task.call(fn, (1,), {"name": "x"})` is `fn(1, name="x")`."""
        prof, res = self._resolve(profile, resources)
        args, kwargs, parents = self._take_handles(tuple(args), dict(kwargs or {}), after)
        digest, stored = self._store(Call(fn, args, kwargs), fn)
        job = NewJob(name=name or _fn_name(fn), kind="python", params={}, key=key, after=parents, stored=stored,
                     spec=self._spec(res, retries, payload=digest), profile=prof.name)
        return JobHandle(self.parts, self._add_keyed(job), self.id)

    def executor(self, profile: str | None = None, resources: Resources | Mapping[str, Any] | None = None,
                 retries: int | RetryPolicy = 0) -> TaskExecutor:
        """A `concurrent.futures.Executor` whose `submit` and `map` make jobs of this task (runtime/futures.py).

        >>> with task.executor(resources={"cores": 1}) as ex:  # doctest: +SKIP
        ...     energies = list(ex.map(simulate, temperatures))
        """
        return TaskExecutor(functools.partial(self.call, profile=profile, resources=resources, retries=retries))

    def mpi(self, what: Callable[..., Any] | str | Sequence[str], /, *args: Any, nodes: int = 1,
            ranks: int | None = None, ranks_per_node: int | None = None, cpus_per_rank: int = 1,
            memory: int | str | None = None, walltime: int | str | None = None, gpus: int = 0,
            launcher: str | None = None, profile: str | None = None, retries: int | RetryPolicy = 0,
            name: str | None = None, key: str | None = None, image: str | None = None,
            after: Sequence[JobHandle] | None = None, **kwargs: Any) -> JobHandle:
        """Run an MPI job with `ranks` = `nodes` x `ranks_per_node` ranks; returns its handle at once.
        Handles among a function's arguments, and `after`, make it wait as for `submit`.

        `what` is a function, run on every rank with mpi4py (a parameter named ``comm`` gets
        the communicator); the result is rank 0's return value. Or it is an MPI
        executable's argv (a list, or a string split like a shell would); the result is a
        CommandResult. The profile's launcher starts the ranks unless `launcher` names
        another (srun, mpirun, mpiexec, ibrun, or a template). `memory` is per node.
        An executable may run in `image` (repo:tag of the project's registry): each rank runs in
        it, with the profile's `container_binds` (the site's MPI) bound in.
        """
        res = Resources(nodes=nodes, ranks=ranks, ranks_per_node=ranks_per_node, cpus_per_rank=cpus_per_rank,
                        memory=memory, walltime=walltime, gpus=gpus)
        if not res.is_mpi:
            raise SpecError("mpi", "ranks", ranks, "a number of ranks: give ranks=, or ranks_per_node= (with nodes=)")
        prof, res = self._resolve(profile, res)
        if launcher is not None:
            prof = _with_launcher(prof, launcher)
        check_mpi(prof, res)
        layout = MpiLayout(ranks=res.ranks, nodes=res.nodes, ranks_per_node=res.ranks_per_node,
                           cpus_per_rank=res.cpus_per_rank, launcher=launcher)
        if callable(what):
            if image:
                raise SpecError("mpi", "image", image, "no image for a Python function (it runs in the kernel's "
                                "Python on every rank): images run MPI executables, given as an argv")
            margs, mkwargs, parents = self._take_handles(tuple(args), dict(kwargs), after)
            digest, stored = self._store(Call(what, margs, mkwargs), what)
            spec = self._spec(res, retries, payload=digest, mpi=layout)
            job = NewJob(name=name or _fn_name(what), kind="python", params={}, spec=spec, key=key, profile=prof.name,
                         after=parents, stored=stored)
        else:
            if args or kwargs:
                raise SpecError("mpi", "args", args or kwargs, "no arguments for an executable: put them in its argv")
            argv = plain_argv(what, "mpi", "command")
            spec = self._spec(res, retries, commands=tuple(argv), mpi=layout,
                              image=self._image(image or "", architecture(prof), prof, field="image"))
            job = NewJob(name=name or _safe_label(argv[0]), kind="command", params={}, spec=spec, key=key,
                         profile=prof.name, after=self._take_handles((), {}, after)[2])
        return JobHandle(self.parts, self._add_keyed(job), self.id)

    def sweep(self, what: Callable[..., Any] | str | Sequence[str], sweep: Sweep, *,
              profile: str | None = None, resources: Resources | Mapping[str, Any] | None = None,
              definition: JobDefinition | None = None, retries: int | RetryPolicy = 0,
              name: str | None = None, max_failures: int | None = None,
              after: Sequence[JobHandle] | None = None) -> JobGroup:
        """Run `what` once per sweep member; members that already succeeded are not run again.
        With `after` (handles), every member waits until those jobs SUCCEEDED (as for `submit`).
        With `max_failures`, once that many of the members submitted now have failed for good
        (after their retries), the rest are cancelled, saying why.

        `what` is a function called as `fn(**params)`, or a command template whose
        `{name}` fields are filled from each member's parameters. Each job asks for `resources`
        (cores, memory, gpus, walltime; for a command, an MPI layout too: ranks, nodes,
        ranks_per_node, cpus_per_rank make each member an MPI program); a command sweep may instead
        take an HTC job `definition` (vCPUs, memory, timeout, envs, image).
        """
        if not isinstance(sweep, Sweep):
            raise SpecError("sweep", "sweep", type(sweep).__name__, "a Sweep (Sweep.grid, Sweep.zip, ...)")
        limit = _max_failures(max_failures, "sweep")
        waits = self._take_handles((), {}, after)[2]
        stored: bytes | None = None  # a function's pickle, kept in the ledger with the jobs
        if callable(what):
            if definition is not None:
                raise SpecError("sweep", "definition", type(definition).__name__,
                                "no job definition for a Python function (definitions are for commands): "
                                "give its cores, memory, walltime as resources=")
            prof, res = self._resolve(profile, resources)
            digest, stored = self._store(what, what)
            identity, label = f"fn:{_fn_name(what)}", name or _fn_name(what)
            common = self._spec(res, retries, payload=digest)
            kind = "python"

            def render(params: Mapping[str, Any]) -> JobSpec:
                return common

            priority = 0
        else:
            argv = template_argv(what)
            if resources is None:
                prof, res, common, priority = self._command_spec(profile, definition or JobDefinition(commands=argv),
                                                                 retries)
            elif definition is not None:
                raise SpecError("sweep", "resources", resources, "resources= or definition= for a command, not both "
                                "(a JobDefinition has maxVCpus, maxMemory, execTimeoutSeconds)")
            else:
                prof, res = self._resolve(profile, resources)
                layout = None
                if res.is_mpi:  # each member an MPI program: ranks = nodes x ranks_per_node
                    check_mpi(prof, res)
                    layout = MpiLayout(ranks=res.ranks, nodes=res.nodes, ranks_per_node=res.ranks_per_node,
                                       cpus_per_rank=res.cpus_per_rank)
                common, priority = self._spec(res, retries, commands=argv, mpi=layout), 0
            identity, label, kind = "cmd:" + "\0".join(argv), name or _safe_label(argv[0]), "command"
            for member in sweep.members[:1]:
                render_command(argv, member.params)  # a missing field fails before anything is written
            for member in sweep.members:
                if refs := refs_in(member.params):
                    raise SpecError("sweep", "sweep", f"a member taking job {refs[0]}'s result",
                                    "values for a command's fields: a sweep over jobs is for Python functions; "
                                    "a command sweep waits for jobs with after=[handles]")

            def render(params: Mapping[str, Any]) -> JobSpec:
                return common.model_copy(update={"commands": render_command(argv, params)})

        members = sweep.members
        # a job reference is the one dict a member's parameter may be (`{"$job": id}`): then each waits for its own
        member_waits = kind == "python" and any(type(v) is dict for m in members for v in m.params.values())
        waits = tuple(dict.fromkeys(waits))

        def make(i: int, m: Member, keyed: bool) -> NewJob:  # member i's job (its key only if asked for)
            return NewJob(name=label, kind=kind, params=m.shared_params(), spec=render(m.params),
                          key=_member_key(identity, m.key) if keyed else None, index=i, profile=prof.name,
                          priority=priority, stored=stored,
                          after=tuple(dict.fromkeys(waits + refs_in(m.params))) if member_waits else waits)

        for race in range(RACES):
            existing = self._found(identity, members)
            if existing and self._settle(existing.values()):
                existing = self._found(identity, members)
            positions: Sequence[int] = range(len(members))
            order = None  # None: every member is new
            if existing:
                keys = [_member_key(identity, m.key) for m in members]
                positions = [i for i, k in enumerate(keys) if k not in existing]
                order = [existing[k].id if k in existing else None for k in keys]
                del keys
            new = SweepJobs(members, positions, make, waiting=bool(waits) or member_waits)
            try:
                new_ids = self._add(new, NewBatch(label, len(new), {"sweep": identity, "members": len(sweep), **limit}))
                break
            except KeyTaken:  # another kernel added some of these members just now: theirs are used
                if race == RACES - 1:
                    raise
        self._rerun([r.id for r in existing.values() if r.status in REQUEUEABLE_NAMES], "sweep submitted again")
        ids: Sequence[int] = new_ids
        if order is not None:
            fresh = iter(new_ids)
            ids = [j if j is not None else next(fresh) for j in order]
        return JobGroup(self.parts, self.id, ids, label,
                        skipped=sum(1 for r in existing.values() if r.status == "SUCCEEDED"))

    def submit_batch(self, batch: JobBatch | Mapping[str, Any], *, profile: str | None = None,
                     retries: int | RetryPolicy = 0, throttle: int | None = None,
                     max_failures: int | None = None, after: Sequence[JobHandle] | None = None) -> JobGroup:
        """Submit an HTC job batch: `batchSize` jobs sharing one job definition.

        Job i sees `HTC_JOB_INDEX=i`. `throttle` caps how many of the batch run at once
        (SLURM: the array's `%N`; the local backend is bounded by its cores and ignores it).
        `max_failures`: once that many of its jobs have failed for good (after their retries), the
        rest are cancelled, saying why. With `after` (handles), every job waits until those jobs
        SUCCEEDED (as for `submit`). On SLURM, a batch whose unfinished parents are all SLURM command
        jobs of its profile with no retries is sent at once, `sbatch --dependency=afterok`; otherwise
        it waits in the ledger.
        """
        limit = _max_failures(max_failures, "submit_batch")
        jobs, record = self._batch_jobs(batch, profile, retries, throttle)
        if after:
            waits = self._take_handles((), {}, after)[2]
            jobs = [replace(j, after=waits) for j in jobs]
        if limit:
            record = replace(record, definition={**record.definition, **limit})
        return JobGroup(self.parts, self.id, self._add(jobs, record), record.name)

    def check_batch(self, batch: JobBatch | Mapping[str, Any], *, profile: str | None = None) -> None:
        """Check a batch as `submit_batch` would (the site's batch size, its profile's limits, its
        image, the project's dimensions and vCPU limit) and write nothing: to check every batch of a
        request before any of them is submitted."""
        jobs, _ = self._batch_jobs(batch, profile, 0, None, count=1)
        self._check_limit(jobs)

    def _batch_jobs(self, batch: JobBatch | Mapping[str, Any], profile: str | None, retries: int | RetryPolicy,
                    throttle: int | None, count: int | None = None) -> tuple[list[NewJob], NewBatch]:
        """A batch's jobs (the first `count` of them) and its record, checked against the profile."""
        if throttle is not None and (isinstance(throttle, bool) or not isinstance(throttle, int) or throttle < 1):
            raise SpecError("submit_batch", "throttle", throttle, "a whole number >= 1, or None")
        if not isinstance(batch, JobBatch):
            batch = JobBatch.model_validate(batch)
        limit = self.parts.site.max_batch_size
        if batch.batch_size > limit:
            raise SpecError("JobBatch", "batchSize", batch.batch_size,
                            f"at most the site's max_batch_size={limit}; split the batch or raise max_batch_size")
        prof, res, spec, priority = self._command_spec(profile, batch.htc_job_definition, retries)
        if throttle:
            spec = spec.model_copy(update={"throttle": throttle})
        jobs = [NewJob(name=batch.job_name, kind="command", params={}, spec=spec, index=i, profile=prof.name,
                       priority=priority) for i in range(min(batch.batch_size, count or batch.batch_size))]
        wire = batch.to_wire()
        return jobs, NewBatch(batch.job_name, batch.batch_size, wire, tuple(wire["tags"]))

    # -- looking ----------------------------------------------------------------
    def jobs(self, status: str | Sequence[str] | None = None) -> JobGroup:
        """Handles for this task's jobs (all, or those in `status`), rebuilt from the ledger."""
        self.parts.reconciler.settled()
        rows = self.parts.ledger.jobs(self.id, status=status)
        return JobGroup(self.parts, self.id, [r.id for r in rows], self.name)

    def counts(self) -> dict[str, int]:
        self.parts.reconciler.settled()
        return self.parts.ledger.counts(self.id)

    def to_dataframe(self, results: bool = False) -> "pandas.DataFrame":
        """One row per job: status, reason, timing, host, parameters (and results if asked)."""
        return self.jobs().to_dataframe(results=results)

    def cancel(self) -> list[int]:
        """Cancel every job of this task that has not ended."""
        active = self.parts.ledger.jobs(self.id, status=ACTIVE_NAMES)
        return self.parts.dispatcher.cancel([r.id for r in active])

    def retry(self) -> JobGroup:
        """Run this task's FAILED, CANCELLED and LOST jobs again."""
        rows = self.parts.ledger.jobs(self.id, status=REQUEUEABLE_NAMES)
        moved = self.parts.dispatcher.retry([r.id for r in rows])
        return JobGroup(self.parts, self.id, moved, self.name)

    # -- internals ----------------------------------------------------------------
    def _take_handles(self, args: tuple, kwargs: dict[str, Any],
                      after: Sequence[JobHandle] | None) -> tuple[tuple, dict[str, Any], tuple[int, ...]]:
        """The arguments with each JobHandle (a JobGroup: a list of them) replaced by a marker of its
        result, and the jobs to wait for: theirs, then `after`'s."""
        if after is not None and (isinstance(after, (str, bytes)) or not isinstance(after, (list, tuple, JobGroup))):
            raise SpecError("submit", "after", after, "a list of JobHandles (the jobs to wait for), or None")
        parents: list[int] = []

        def marker(h: JobHandle | JobGroup) -> ParentResult | list[ParentResult]:
            if h.parts.root != self.parts.root:
                raise SpecError("submit", "argument", h, f"a job of this data root ({self.parts.root}), not of "
                                f"{h.parts.root}")
            if isinstance(h, JobGroup):
                parents.extend(h.ids)
                return [ParentResult(i) for i in h.ids]
            parents.append(h.id)
            return ParentResult(h.id)

        def is_handle(v: Any) -> bool:
            return isinstance(v, (JobHandle, JobGroup))

        args, kwargs = replace_in(args, is_handle, marker), replace_in(kwargs, is_handle, marker)
        for h in after or ():
            if not is_handle(h):
                raise SpecError("submit", "after", h, "JobHandles (or JobGroups) of this task's data root")
            marker(h)
        return args, kwargs, tuple(dict.fromkeys(parents))

    def _resolve(self, profile: str | None, resources) -> tuple[PartitionProfile, Resources]:
        prof = self.parts.profiles.get(profile)
        if resources is None:
            res = Resources()
        elif isinstance(resources, Resources):
            res = resources
        else:
            res = Resources(**resources)
        return prof, prof.resolve(res)

    def _spec(self, res: Resources, retries: int | RetryPolicy, **what: Any) -> JobSpec:
        """A job's spec, dispatched by this session (`plan.job_spec`)."""
        return job_spec(res, retries, str(self.parts.owner), **what)

    def _command_spec(self, profile: str | None, d: JobDefinition, retries: int | RetryPolicy):
        """Check an HTC job definition against a profile: (profile, resources, spec, priority)."""
        prof, res, priority = check_definition(self.parts.site, profile, d)
        image = self._image(d.image_name, d.architecture, prof)
        spec = definition_spec(res, d, retries, str(self.parts.owner), image)
        return prof, res, spec, priority

    def _image(self, name: str, arch: str, prof: PartitionProfile, field: str = "imageName") -> ImageRef | None:
        """A job's image, resolved once for every job of a submission: its name, the digest it runs
        (a tag moved later does not change what a retry runs) and its unpacked root file system,
        with mount points for `prof`'s container_binds (`backends.images.with_binds`: a copy made
        once per set of binds; the shared unpack is never written). Each job's sandbox lays out the
        points of its task and shared directories. Refused before anything is recorded if the
        project has no such image, or it is not of architecture `arch`."""
        if not name:
            return None
        from htc_notebook.backends.images import with_binds
        from htc_notebook.registry.pull import resolve, rootfs

        registry = project_registry(self.parts.root, self.project)
        digest = resolve(registry, name, arch, field=field)
        root = with_binds(rootfs(registry, name, digest), prof.container_binds)
        return ImageRef(name=name, digest=digest, rootfs=str(root))

    def _store(self, obj: object, fn: object) -> tuple[str, bytes | None]:
        """Pickle `obj` now (an unpicklable function fails here, not on a node) so that a later session
        finds it by its digest: up to STORED_IN_LEDGER bytes are returned, to be kept in the ledger with
        their jobs (`NewJob.stored`); a larger one is written to a file now. This session keeps the
        object itself."""
        payload = _pickle(obj, fn)
        digest = hashlib.sha256(payload).hexdigest()[:24]
        self.parts.dispatcher.remember_call(digest, obj)
        if len(payload) <= STORED_IN_LEDGER:
            return digest, payload
        path = self.parts.storage.payload_path(self.project, self.name, digest)
        if not path.exists():
            atomic_write(path, payload)
        return digest, None

    def _add_keyed(self, job: NewJob) -> int:
        """Add one job, or reuse the job with the same key (re-running it if it did not succeed)."""
        for race in range(RACES):
            try:
                return self._add_keyed_once(job)
            except KeyTaken:  # another process added the same key just now: reuse it
                if race == RACES - 1:
                    raise
        raise AssertionError("unreachable")

    def _add_keyed_once(self, job: NewJob) -> int:
        if job.key is not None:
            existing = self.parts.ledger.jobs_by_key(self.id, [job.key]).get(job.key)
            if existing is not None:
                if self._settle([existing]):
                    existing = self.parts.ledger.job(existing.id)
                if existing.status in REQUEUEABLE_NAMES:
                    self._rerun([existing.id], "submitted again")
                return existing.id
        return self._add([job])[0]

    def _found(self, identity: str, members: Sequence[Member]) -> dict[str, Any]:
        """This task's jobs of these sweep members, by key (none looked up in a task without keyed
        jobs), KEY_CHUNK members at a time: a million members' keys are never all made at once."""
        if not self.parts.ledger.has_keys(self.id):
            return {}
        found: dict[str, Any] = {}
        for at in range(0, len(members), KEY_CHUNK):
            found.update(self.parts.ledger.jobs_by_key(self.id, [_member_key(identity, m.key)
                                                                 for m in members[at:at + KEY_CHUNK]]))
        return found

    def _check_limit(self, jobs: Sequence[NewJob]) -> None:
        """Refuse, before anything is written, a job outside the project's dimensions, or one that could
        never start under its vCPU limit."""
        allowed = self.parts.ledger.dimensions(self.project)
        if allowed is not None:
            where = {(d["region"], PRIORITY[d["priority"]]) for d in allowed}
            for name, rank in {(j.profile, j.priority) for j in jobs} - where:
                raise SpecError("JobBatch", "region", name, f"a region (profile) at a priority project "
                                f"{self.project!r} may use (its dimensions): " + ", ".join(
                                    f"{d['region']} at {d['priority']}" for d in allowed)
                                + f"; this job asks for {PRIORITIES[rank]}")
        limit = self.parts.ledger.vcpu_limit(self.project)
        if limit is not None:
            cores = max({id(j.spec): j.spec.cores for j in jobs}.values())
            if cores > limit:
                raise SpecError("JobSpec", "cores", cores,
                                f"at most the vCPU limit of project {self.project!r}, {limit} "
                                "(a job above it would never start; raise the limit or ask for fewer cores)")

    def _settle(self, rows) -> bool:
        """Bring jobs found by key up to date before deciding on them (a gone owner's become LOST);
        True if they may have changed."""
        self.parts.reconciler.settle(rows)
        return True

    def _rerun(self, ids: list[int], why: str) -> None:
        """Run again jobs found by key that failed, were cancelled or lost."""
        if ids:
            self.parts.dispatcher.retry(ids, why)

    def _add(self, jobs: list[NewJob] | SweepJobs, batch: NewBatch | None = None) -> Sequence[int]:
        """Write-ahead: record the jobs, then dispatch them. Returns their ids.

        Takes a list of `jobs` over: once recorded, it is emptied, so only their small Pending
        records (what dispatch needs) stay alive while a large batch is handed over. A sweep's
        (`SweepJobs`) are made from its members a chunk at a time, as they are recorded and handed over."""
        if not jobs:
            return []
        self._check_limit(distinct(jobs))
        # recorded in their first attempt, in the one transaction that adds them (not a second write of
        # every row by start_attempts), unless their project has a vCPU limit to be admitted into
        start = self.parts.dispatcher.first_attempt(self.row, distinct(jobs))
        if len(jobs) >= LONG_SUBMISSION:  # its lease outlasts the write that holds up its heartbeat
            self.parts.reconciler.beat(longer=len(jobs) * RECORDING_SECONDS)
        try:
            ids = self.parts.ledger.add_jobs(self.id, jobs, batch, start=start)
        except Limited:  # a limit set since first_attempt looked: nothing was added
            start = None
            ids = self.parts.ledger.add_jobs(self.id, jobs, batch)
        pending: Sequence[Pending]
        if isinstance(jobs, SweepJobs) and not jobs.waiting:
            pending, waiting = jobs.pending(ids), []
        else:
            listed = list(jobs) if isinstance(jobs, SweepJobs) else jobs
            pending = [Pending(i, j) for i, j in zip(ids, listed, strict=True) if not j.after]
            waiting = ([Pending(i, j) for i, j in zip(ids, listed, strict=True) if j.after]
                       if len(pending) < len(ids) else [])
            listed.clear()
        self.parts.dispatcher.dispatch(self.row, pending, started=start is not None)
        if waiting:
            # SLURM command jobs behind SLURM command jobs go at once (afterok); the rest are released
            # by the reconcile loop once their parents SUCCEEDED
            sent: set[int] = set()
            try:
                sent = set(self.parts.dispatcher.send_after(self.row, waiting))
            finally:  # also when sbatch refused those sent (they are FAILED, cause submit, and it is raised)
                if len(sent) < len(waiting):
                    self.parts.reconciler.expect_waiting()  # their parents may have succeeded already
        return ids


class DryRun(Task):
    """Task `project`/`name` as a dry run sees it: every submission is checked as it would be, then
    rendered as its backend would send it (`plan.render_jobs`) instead of recorded and sent. `text`
    holds what was rendered; jobs found by key are shown as they are, not run again. Nothing is
    written: no project or task row (a task not made yet has no jobs), no directory, no stored
    call, no image pulled or copied (the image is resolved to its digest and named where it would
    be unpacked).

    >>> dry = DryRun(session.parts, "md", "melt"); dry.submit_batch(batch); print(dry.text)  # doctest: +SKIP
    """

    def __init__(self, parts: Parts, project: str, name: str):
        self.parts, self.project, self.name = parts, project, name
        # the task as it is, if it is; else one with no jobs (no id is 0)
        self.row = parts.reads.find_task(project, name) or TaskRow(0, project, name, "ACTIVE", 0.0)
        self.id = self.row.id
        self.rendered: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.rendered)

    def _rerun(self, ids: list[int], why: str) -> None:
        if ids:
            self.rendered.append(f"# {len(ids)} job(s) found by key would run again ({why}): {ids[:10]}")

    def _add(self, jobs: list[NewJob] | SweepJobs, batch: NewBatch | None = None) -> Sequence[int]:
        if jobs:
            self._check_limit(jobs)
            self.rendered.append(render_jobs(self.parts.site, self.parts.storage, self.project, self.name, jobs))
        return [0] * len(jobs)  # no job was recorded: there are no ids

    def _settle(self, rows) -> bool:
        return False  # shown as the ledger has them: settling may write

    def _store(self, obj: object, fn: object) -> tuple[str, bytes | None]:
        return hashlib.sha256(_pickle(obj, fn)).hexdigest()[:24], None  # checked picklable, kept nowhere

    def _image(self, name: str, arch: str, prof: PartitionProfile, field: str = "imageName") -> ImageRef | None:
        if not name:
            return None
        from htc_notebook.registry.pull import resolve, rootfs_path

        digest = resolve(project_registry(self.parts.root, self.project), name, arch, field=field)
        return ImageRef(name=name, digest=digest, rootfs=str(rootfs_path(self.parts.root, digest)))


def _max_failures(value: object, where: str) -> dict[str, int]:
    """A batch definition's failure limit (`maxFailures`), checked: {} for None."""
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(where, "max_failures", value, "a whole number >= 1 (failures after which the rest is "
                        "cancelled), or None")
    return {"maxFailures": value}


def _fn_name(fn: Callable[..., Any]) -> str:
    return _safe_label(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "call")


def _safe_label(text: str) -> str:
    """A job name from a function or program name (names allow [A-Za-z0-9_.-])."""
    label = "".join(c if c.isalnum() or c in "_.-" else "_" for c in text.rsplit("/", 1)[-1])
    return (label.lstrip("_.-") or "job")[:128]


def _member_key(identity: str, member_key: str) -> str:
    return hashlib.sha256(f"{identity}\n{member_key}".encode()).hexdigest()[:20]


def _pickle(obj: object, fn: object) -> bytes:
    """Pickle now, so an unpicklable function fails at submit time, not on a node."""
    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - pickling raises whatever an object's __reduce__ or a closure raises
        raise SpecError("submit", "fn", fn,
                        f"a picklable function and arguments ({type(exc).__name__}: {exc})") from None


def _with_launcher(profile: PartitionProfile, launcher: str) -> PartitionProfile:
    """The profile with another launcher, validated like a site file's (packing re-derived)."""
    data = {**profile.model_dump(), "launcher": launcher}
    if profile.packing == "packed" and launcher != "srun":
        data["packing"] = None  # a per-job launcher other than srun runs in an allocation of its own
    try:
        return PartitionProfile.model_validate(data)
    except SpecError as exc:
        raise SpecError("mpi_task", "launcher", launcher, exc.allowed) from None
