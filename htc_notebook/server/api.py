"""The HTC REST API's operations over a Session, without HTTP (handlers are thin wrappers).

Shapes follow the HTC API: camelCase fields; lists as `{"items": [...], "next": token}` (the
handler turns the token into a URL). An API user sees, through a key, only the projects granted
to that key (the owner sees every one); anything else, and any task or job outside the
project/task in the path, is a 404. Ids are validated
(project ids are names, task ids digits, job ids digits or `<parentJobId>:<index>`), never
used as paths.

Toolkit state -> wire status (the names existing HTC clients know):

| toolkit | wire | statusReason |
|---|---|---|
| WAITING (for the jobs it depends on) | RUNNABLE | "waiting for jobs 12, 13" |
| SUBMITTED | SUBMITTED_TO_RESCALE | |
| HELD (beyond the site's limits) | SUBMITTED_TO_PROVIDER | "held: ..." (why, and how many are queued) |
| RUNNABLE (no native id yet) | SUBMITTED_TO_PROVIDER | the backend's reason |
| RUNNABLE (queued in SLURM) | RUNNABLE | the pending reason in words |
| STARTING, RUNNING, SUCCEEDED, FAILED | same | |
| CANCELLED | FAILED | "CANCELLED: ..." |
| LOST | FAILED | "LOST: ..." |
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, cast

from pydantic import ValidationError

from htc_notebook.errors import BackendError, HTCError, SpecError, UntrustedFile
from htc_notebook.runtime.confinement import UnconfinedServer, refuse_serving_unconfined
from htc_notebook.runtime.reads import JobRow, TaskRow
from htc_notebook.runtime.task import Project
from htc_notebook.states import ACTIVE_NAMES, REQUEUEABLE_NAMES, STATES, NativeId
from htc_notebook.server.auth import Auth, Caller
from htc_notebook.server.settings import ServerSettings
from htc_notebook.spec import JobBatch, PartitionProfile, ProjectLimit, RetentionPolicy, check_name

if TYPE_CHECKING:
    from htc_notebook.runtime.session import Session

DEFAULT_PAGE, MAX_PAGE = 100, 1000
WORKSPACE_ID = "default"  # this server's one workspace: its data root and site
MAX_LOG_PAGE = 5000  # log lines a page: HTC API clients ask for 5000
WIRE_STATUSES = ("SUBMITTED_TO_RESCALE", "SUBMITTED_TO_PROVIDER", "RUNNABLE", "STARTING", "RUNNING",
                 "SUCCEEDED", "FAILED")
_DIGITS = re.compile(r"^[0-9]{1,18}$")
_JOB_UUID = re.compile(r"^([0-9]{1,18}):([0-9]{1,9})$")


class ApiError(HTCError):
    """An error with its HTTP status."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def wire_status(row: JobRow) -> tuple[str, str | None]:
    """(wire status, statusReason) for a job row (table in the module docstring)."""
    if row.status == "SUBMITTED":
        return "SUBMITTED_TO_RESCALE", row.reason
    if row.status == "WAITING":
        return "RUNNABLE", row.reason
    if row.status == "HELD":
        return "SUBMITTED_TO_PROVIDER", row.reason
    if row.status == "RUNNABLE":
        native = NativeId.parse(row.native_id)
        return ("RUNNABLE" if native is not None and native.kind != "session" else
                "SUBMITTED_TO_PROVIDER"), row.reason
    if row.status in ("CANCELLED", "LOST"):
        return "FAILED", f"{row.status}: {row.reason or ''}".rstrip(": ")
    return row.status, row.reason


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


User = Caller | str


class HTCApi:
    """Projects, tasks and jobs of one data root, as the HTC API serves them.

    Every operation takes who asks: a Caller, which the handlers build from the request's credential
    (so an API user named like the owner is not the owner), or, from Python in this process, a name
    (the owner's own scripts and tests: `owner` is the owner, any other name an API user)."""

    def __init__(self, session: "Session", auth: Auth, owner: str | None = None,
                 settings: ServerSettings | None = None):
        """`owner`: the user who runs the server (Jupyter's logged-in user); a member of every project,
        the only one who starts, scales and stops clusters and sets the workspace's policy.
        `settings.owner`: an API user who acts as the owner (`htc serve --owner`)."""
        self.session, self.auth, self.owner = session, auth, owner
        self.settings = settings or ServerSettings()

    def token_caller(self, claims: dict[str, Any]) -> Caller:
        """Who a verified bearer token speaks for: an API user, the owner only if `settings.owner` names them."""
        name = claims["sub"]
        self._refuse_unconfined(name)
        return Caller(name, owner=self.settings.owner is not None and name == self.settings.owner, key=claims["key"])

    def issue_token(self, api_key: str) -> dict[str, str]:
        """A bearer token for a valid API key (GET /auth/token), unless its user is refused here."""
        self._refuse_unconfined(self.auth.whoami(api_key)["username"])
        return self.auth.issue_token(api_key)

    def _refuse_unconfined(self, user: str) -> None:
        """403 for an API user (not `settings.owner`) where jobs run unconfined and nobody allowed
        that: the check `htc serve` and the Jupyter extension make when they start, for keys made since."""
        if self.settings.unconfined is None or user == self.settings.owner:
            return
        try:
            refuse_serving_unconfined(self.settings.unconfined, [user], allowed=False)
        except UnconfinedServer as exc:
            raise ApiError(403, str(exc)) from None

    def _is_owner(self, user: User) -> bool:
        if isinstance(user, Caller):
            return user.owner
        return self.owner is not None and user == self.owner

    def member(self, user: User, project: str) -> bool:
        if self._is_owner(user):
            return True
        if isinstance(user, Caller) and user.key is not None:  # grants are per key
            return self.auth.key_reaches(user.key, project)
        return self.auth.is_member(_name(user), project)

    # -- ids and scoping ---------------------------------------------------------------------
    # An id in a path that cannot be one of ours is not found (404, saying what ids look like), as
    # the HTC API answers any id it does not know: published clients read only 404 as "no such".
    def _project(self, user: User, project_id: str) -> str:
        try:
            check_name(project_id, field="projectId")
        except SpecError as exc:
            raise ApiError(404, f"no project {project_id!r}: {exc}") from None
        if not self.member(user, project_id) or project_id not in self.session.reads.project_names():
            raise ApiError(404, f"no project {project_id!r}")
        return project_id

    def _handle(self, user: User, project_id: str) -> Project:
        """The project `project_id` (it exists and `user` is a member) to act on: a handle only, so
        a read through it takes no write lock (`Session.project` gets or creates)."""
        return Project(self.session.parts, self._project(user, project_id))

    def _task(self, user: User, project_id: str, task_id: str) -> TaskRow:
        project = self._project(user, project_id)
        if not isinstance(task_id, str) or not _DIGITS.match(task_id):
            raise ApiError(404, f"no task {task_id!r} in project {project!r}: a task id is digits")
        row = self.session.reads.task(int(task_id))
        if row is None or row.project != project:
            raise ApiError(404, f"no task {task_id} in project {project!r}")
        return row

    def _job(self, user: User, project_id: str, task_id: str, job_id: str) -> tuple[TaskRow, JobRow]:
        task = self._task(user, project_id, task_id)
        reads = self.session.reads
        m = _JOB_UUID.match(job_id) if isinstance(job_id, str) else None
        if m:
            row = reads.job_at(int(m.group(1)), int(m.group(2)))
        elif isinstance(job_id, str) and _DIGITS.match(job_id):
            row = reads.job(int(job_id))
        else:
            raise ApiError(404, f"no job {job_id!r} in task {task_id}: a job id is digits or <parentJobId>:<index>")
        if row is None or row.task_id != task.id:
            raise ApiError(404, f"no job {job_id} in task {task_id}")
        return task, row

    # -- shapes --------------------------------------------------------------------------------
    def project_json(self, name: str) -> dict[str, Any]:
        tasks = self.session.reads.tasks(name)
        reg = self.session.registry(name)
        try:  # the registry down: no prefix to push to, the repositories created so far
            prefix, repositories = reg.prefix, reg.repositories()
        except BackendError:
            prefix, repositories = "", reg.recorded()
        regions = list(dict.fromkeys(d.region for d in Project(self.session.parts, name).dimensions()))
        return {"projectId": name, "projectName": name, "workspaceId": WORKSPACE_ID, "regions": regions,
                "containerRegistry": prefix, "repositories": repositories, "taskCount": len(tasks)}

    def task_json(self, row: TaskRow) -> dict[str, Any]:
        return {"taskId": str(row.id), "projectId": row.project, "taskName": row.name,
                "lifecycleStatus": row.lifecycle, "createdAt": _iso(row.created)}

    def job_json(self, task: TaskRow, row: JobRow) -> dict[str, Any]:
        status, reason = wire_status(row)
        return {"jobUUID": f"{row.batch_id}:{row.index}" if row.batch_id is not None else str(row.id),
                "jobId": str(row.id), "projectId": task.project, "taskId": str(task.id), "jobName": row.name,
                "group": row.name,
                "parentJobId": str(row.batch_id) if row.batch_id is not None else None, "index": row.index,
                "status": status, "statusReason": reason, "toolkitStatus": row.status,
                "exitCode": row.exit_code, "attempts": row.attempts,
                "host": row.host, "createdAt": _iso(row.created), "startedAt": _iso(row.started),
                "endedAt": _iso(row.ended), "updatedAt": _iso(row.updated), "memoryHeld": row.memory_held,
                "sandbox": row.sandbox}

    # -- projects ------------------------------------------------------------------------------
    def list_projects(self, user: User, page: str | None, size: int) -> tuple[list[dict], str | None]:
        names = sorted(p for p in self.session.reads.project_names() if self.member(user, p))
        return _offset_page([self.project_json(n) for n in names], page, size)

    def create_project(self, user: User, body: Any) -> dict[str, Any]:
        """Create a project; its creator becomes its member. Of API users creating one project at
        once exactly one does (the claim is one write transaction, `Auth.claim`); the others, and
        anyone but its grantees for a project granted before it exists, get 409. The owner is a member
        of every project without a grant (an API user named like the owner gets none of theirs)."""
        name = _field(body, "projectName", str)
        try:
            check_name(name, field="projectName")
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        exists = name in self.session.reads.project_names()
        key = user.key if isinstance(user, Caller) else None
        if not self._is_owner(user) and not self.auth.claim(_name(user), name, exists, key):
            raise ApiError(409, f"project {name!r} exists or is reserved, and is not granted to you (with this API "
                                "key: a key reaches the projects granted to it and those created with it)")
        self.session.project(name)
        return self.project_json(name)

    def get_project(self, user: User, project_id: str) -> dict[str, Any]:
        return self.project_json(self._project(user, project_id))

    # -- tasks ---------------------------------------------------------------------------------
    def list_tasks(self, user: User, project_id: str, page: str | None, size: int) -> tuple[list[dict], str | None]:
        project = self._project(user, project_id)
        return _offset_page([self.task_json(t) for t in self.session.reads.tasks(project)], page, size)

    def create_task(self, user: User, project_id: str, body: Any) -> dict[str, Any]:
        project = self._project(user, project_id)
        name = _field(body, "taskName", str)
        try:
            check_name(name, field="taskName")
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return self.task_json(self.session.project(project).task(name).row)

    def get_task(self, user: User, project_id: str, task_id: str) -> dict[str, Any]:
        return self.task_json(self._task(user, project_id, task_id))

    def patch_task(self, user: User, project_id: str, task_id: str, body: Any) -> dict[str, Any]:
        task = self._task(user, project_id, task_id)
        status = _field(body, "lifecycleStatus", str)
        if status not in ("ACTIVE", "ARCHIVED"):
            raise ApiError(400, f"lifecycleStatus {status!r} is not allowed: ACTIVE or ARCHIVED")
        return self.task_json(self.session.set_lifecycle(task.id, status))

    def delete_task(self, user: User, project_id: str, task_id: str) -> dict[str, Any]:
        """Cancel the task's active jobs and archive it (the ledger keeps its record); the task as it is now."""
        task = self._task(user, project_id, task_id)
        self.session.cancel(self.session.reads.job_ids(task.id, ACTIVE_NAMES), "task deleted through the API")
        self.session.set_lifecycle(task.id, "ARCHIVED")
        return self.get_task(user, project_id, task_id)

    # -- jobs ----------------------------------------------------------------------------------
    def list_jobs(self, user: User, project_id: str, task_id: str, page: str | None,
                  size: int, status: str | None = None) -> tuple[list[dict], str | None]:
        """A page of the task's jobs by id; `status`: only those in this toolkit status (one of STATES,
        as `summary-statistics` counts them in `toolkitStatuses`), read through the (task, status) index."""
        task = self._task(user, project_id, task_id)
        after = None
        if page is not None:
            if not _DIGITS.match(page):
                raise ApiError(400, f"page {page!r} is not allowed: use the `next` link of the previous page")
            after = int(page)
        if status is not None and status not in STATES:
            raise ApiError(400, f"status {status[:40]!r} is not allowed: one of {', '.join(STATES)}")
        rows = self.session.reads.jobs(task.id, status=status, after_id=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return [self.job_json(task, r) for r in rows], (str(rows[-1].id) if more else None)

    def get_job(self, user: User, project_id: str, task_id: str, job_id: str) -> dict[str, Any]:
        """A job, with each attempt: how it ended, why, and what it asked for (a retry may ask for more)."""
        task, row = self._job(user, project_id, task_id, job_id)
        history = [{"attempt": a.number, "status": a.status, "statusReason": a.reason, "cause": a.cause,
                    "exitCode": a.exit_code, "host": a.host, "nativeId": a.native_id,
                    "maxMemory": (a.request or {}).get("memory"),
                    "execTimeoutSeconds": (a.request or {}).get("timeout"),
                    "startedAt": _iso(a.started), "endedAt": _iso(a.ended)}
                   for a in self.session.reads.attempts(row.id)]
        spec = row.spec
        return {**self.job_json(task, row), "attemptHistory": history,
                # what its last attempt used (where measured) against what it asked for
                "usage": {"cpuSeconds": row.cpu_s, "maxMemoryMiB": row.max_rss_mib},
                "requested": {"vCpus": spec.cores, "memoryMiB": spec.memory, "gpus": spec.gpus,
                              "execTimeoutSeconds": spec.timeout, "diskGiB": spec.disk_gib},
                "dependsOn": [str(j) for j in self.session.reads.parents(row.id)],
                "dependents": [str(j) for j in self.session.reads.children(row.id)]}

    def submit_batches(self, user: User, project_id: str, task_id: str, body: Any) -> list[dict[str, Any]]:
        """Validate every batch first (nothing is submitted if one is bad), then submit them all."""
        task_row = self._task(user, project_id, task_id)
        if task_row.lifecycle != "ACTIVE":
            raise ApiError(409, f"task {task_id} is {task_row.lifecycle}: submit to an ACTIVE task")
        if not isinstance(body, list) or not body:
            raise ApiError(400, "the body is a non-empty list of job batches")
        batches: list[JobBatch] = []
        for i, item in enumerate(body):
            try:
                batches.append(JobBatch.model_validate(item))
            except (ValidationError, SpecError) as exc:
                raise ApiError(400, f"batch {i}: {exc}") from None

        task = self.session.task(task_row)
        out = []
        names = self.session.site.names()
        for i, batch in enumerate(batches):  # every batch checked in full before any is written
            if batch.region is not None and batch.region not in names:
                raise ApiError(400, f"batch {i} ({batch.job_name!r}): region = {batch.region!r} is not allowed: one "
                                    f"of this site's regions (its profiles): {', '.join(names)}")
            try:
                task.check_batch(batch, profile=batch.region)
            except BackendError as exc:
                raise ApiError(503, f"batch {i} ({batch.job_name!r}): {exc}") from None
            except HTCError as exc:
                raise ApiError(400, f"batch {i} ({batch.job_name!r}): {exc}") from None
        for batch in batches:
            try:  # `region` names the profile (partition) to run on; else the site's default
                group = task.submit_batch(batch, profile=batch.region)
            except HTCError as exc:
                raise ApiError(400, f"batch {batch.job_name!r}: {exc}") from None
            parent = group.parent_id
            out.append({"jobName": batch.job_name, "taskId": str(task_row.id), "projectId": task_row.project,
                        "parentJobId": str(parent), "batchSize": batch.batch_size, "group": batch.job_name,
                        "tags": batch.to_wire()["tags"], "region": batch.region,
                        "htcJobDefinition": batch.htc_job_definition.to_wire(),
                        "jobUUIDs": [f"{parent}:0", f"{parent}:{batch.batch_size - 1}"]})
        return out

    def cancel_jobs(self, user: User, project_id: str, task_id: str, body: Any) -> dict[str, Any]:
        """Cancel the listed jobs (`{"jobIds": [...]}`), or every active job of the task."""
        cancelled = self.session.cancel(self._selected(user, project_id, task_id, body, ACTIVE_NAMES))
        return {"cancelled": len(cancelled), "jobIds": [str(i) for i in cancelled]}

    def retry_jobs(self, user: User, project_id: str, task_id: str, body: Any) -> dict[str, Any]:
        """Run the listed jobs again (`{"jobIds": [...]}`), or every FAILED, CANCELLED or LOST job of
        the task; SUCCEEDED jobs never run again (an extension of the HTC API, for the lab sidebar)."""
        moved = self.session.retry(self._selected(user, project_id, task_id, body, REQUEUEABLE_NAMES),
                                   "retried through the API")
        return {"retried": len(moved), "jobIds": [str(i) for i in moved]}

    def _selected(self, user: User, project_id: str, task_id: str, body: Any, default: Any) -> list[int]:
        """Ids of the jobs a body lists (`{"jobIds": [...]}`, each checked), or of the task's jobs in
        `default` states."""
        task = self._task(user, project_id, task_id)
        if body in (None, {}):
            return self.session.reads.job_ids(task.id, default)
        return [self._job(user, project_id, task_id, str(j))[1].id for j in _field(body, "jobIds", list)]

    def job_logs(self, user: User, project_id: str, task_id: str, job_id: str, page: str | None,
                 size: int, stream: str = "out") -> tuple[list[dict], str | None]:
        _, row = self._job(user, project_id, task_id, job_id)
        if stream not in ("out", "err"):
            raise ApiError(400, f"stream {stream!r} is not allowed: out or err")
        if page is not None and not _DIGITS.match(page):
            raise ApiError(400, f"page {page!r} is not allowed: use the `next` link of the previous page")
        # newest line first, as the HTC API sends them (its clients reverse the pages they read); the
        # page token is the byte where the page ends: only the page is read, backwards from there
        try:
            lines, before = self.session.job(row.id).log_page(stream, None if page is None else int(page), size)
        except UntrustedFile as exc:
            raise ApiError(409, f"job {job_id}'s log is not a plain file: {exc}") from None
        return [{"lineNumber": n, "message": text} for n, text in lines], None if before is None else str(before)

    def job_events(self, user: User, project_id: str, task_id: str, job_id: str, page: str | None,
                   size: int) -> tuple[list[dict], str | None]:
        _, row = self._job(user, project_id, task_id, job_id)
        items = [{"eventId": str(e.id), "kind": e.kind, "message": e.message, "timestamp": _iso(e.ts)}
                 for e in self.session.reads.events(job_id=row.id)]
        return _offset_page(items, page, size)

    def summary_statistics(self, user: User, project_id: str, task_id: str) -> dict[str, Any]:
        """Jobs per wire and per toolkit status, from indexed counts: no job row is read except the
        RUNNABLE ones, to tell those a scheduler holds from those not yet given to one."""
        task = self._task(user, project_id, task_id)
        reads = self.session.reads
        toolkit = reads.counts(task.id)
        queued = reads.queued_count(task.id) if toolkit.get("RUNNABLE") else 0
        return {"jobStatuses": _wire_counts(toolkit, queued),
                "toolkitStatuses": {s: n for s, n in toolkit.items() if s in STATES}}

    def groups(self, user: User, project_id: str, task_id: str, page: str | None,
               size: int) -> tuple[list[dict], str | None]:
        """The task's job groups: its jobs by name (a batch's jobName, a sweep's function), in order made."""
        task = self._task(user, project_id, task_id)
        items = [{"group": name, "jobCount": sum(counts.values())}
                 for name, (counts, _) in self.session.reads.group_counts(task.id).items()]
        return _offset_page(items, page, size)

    def group_statistics(self, user: User, project_id: str, task_id: str, page: str | None,
                         size: int) -> tuple[list[dict], str | None]:
        """`summary-statistics` per group: `{group, jobStatuses}`."""
        task = self._task(user, project_id, task_id)
        items = [{"group": name, "jobStatuses": _wire_counts(counts, queued)}
                 for name, (counts, queued) in self.session.reads.group_counts(task.id).items()]
        return _offset_page(items, page, size)

    # -- vCPU limits (HTC `limits`: the lowest holds across every kernel and server) ------------------
    def list_limits(self, user: User, project_id: str, page: str | None, size: int) -> tuple[list[dict], str | None]:
        project = self._handle(user, project_id)
        return _offset_page([_limit_json(limit) for limit in project.limits()], page, size)

    def get_limit(self, user: User, project_id: str, limit_id: str) -> dict[str, Any]:
        return _limit_json(self._limit(user, project_id, limit_id))

    def add_limit(self, user: User, project_id: str, body: Any) -> dict[str, Any]:
        project = self._handle(user, project_id)
        limit = _limit_body(body)
        return _limit_json(project.set_vcpu_limit(limit.vcpus, limit.modifier_role))

    def patch_limit(self, user: User, project_id: str, limit_id: str, body: Any) -> dict[str, Any]:
        row = self._limit(user, project_id, limit_id)
        if not isinstance(body, dict):
            raise ApiError(400, "the body is an object: {modifierRole, vCPUs}")
        limit = _limit_body({"modifierRole": row.modifier_role, "vCPUs": row.vcpus, **body})
        project = Project(self.session.parts, row.project)
        return _limit_json(project.update_limit(row.id, limit.vcpus, limit.modifier_role))

    def delete_limits(self, user: User, project_id: str, limit_id: str | None = None) -> tuple[int, None]:
        """Delete one limit, or all of the project's (204, no body)."""
        if limit_id is None:
            self._handle(user, project_id).delete_limits()
        else:
            row = self._limit(user, project_id, limit_id)
            Project(self.session.parts, row.project).delete_limits(row.id)
        return 204, None

    def _limit(self, user: User, project_id: str, limit_id: str):
        project = self._handle(user, project_id)
        found = [limit for limit in project.limits() if isinstance(limit_id, str) and str(limit.id) == limit_id]
        if not found:
            raise ApiError(404, f"no limit {limit_id!r} in project {project.name!r}")
        return found[0]

    # -- compute environments (HTC `dimensions`: the site's profiles are its regions) ----------------
    def list_dimensions(self, user: User, project_id: str, page: str | None,
                        size: int) -> tuple[list[dict], str | None]:
        """The dimensions the project may use: those set for it, else every one the site offers."""
        project = self._handle(user, project_id)
        return _offset_page([d.to_wire() for d in project.dimensions()], page, size)

    def put_dimensions(self, user: User, project_id: str, body: Any) -> dict[str, Any]:
        """Set the project's dimensions (a list; [] lifts the restriction); returns them as GET does."""
        project = self._handle(user, project_id)
        if not isinstance(body, list):
            raise ApiError(400, "the body is a list of dimensions: [{region, machineArchitecture, priority}, ...]")
        try:
            dims = project.set_dimensions(body)
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return {"items": [d.to_wire() for d in dims]}

    def workspace_dimensions(self, user: User, workspace_id: str, page: str | None,
                             size: int) -> tuple[list[dict], str | None]:
        """Every dimension the site offers (this server's one workspace)."""
        self._workspace(workspace_id)
        return _offset_page([d.to_wire() for d in self.session.site.dimensions()], page, size)

    def regions(self, user: User, page: str | None, size: int) -> tuple[list[dict], str | None]:
        return _offset_page([_region_json(p) for p in self.session.site.profiles.values()], page, size)

    def region(self, user: User, name: str) -> dict[str, Any]:
        if name not in self.session.site.profiles:
            raise ApiError(404, f"no region {name!r}: the site's regions are its profiles, "
                                f"{', '.join(self.session.site.names())}")
        return _region_json(self.session.site.profile(name))

    def _workspace(self, workspace_id: str) -> None:
        if workspace_id != WORKSPACE_ID:
            raise ApiError(404, f"no workspace {workspace_id!r}: this server has one, {WORKSPACE_ID!r}")

    # -- task retention policy (HTC `task-retention-policy`: hours, 0 turns a rule off) ------------
    def get_retention(self, user: User, project_id: str) -> dict[str, Any]:
        project = self._handle(user, project_id)
        policy = project.retention()
        if policy is None:  # as the HTC API answers: then the workspace's policy (none here) applies
            raise ApiError(404, f"project {project.name!r} has no task retention policy")
        return policy.to_wire()

    def put_retention(self, user: User, project_id: str, body: Any) -> dict[str, Any]:
        project = self._handle(user, project_id)
        try:
            policy = RetentionPolicy.model_validate(body)
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return project.set_retention(policy.archive_after, policy.delete_after).to_wire()

    def get_workspace_retention(self, user: User, workspace_id: str) -> dict[str, Any]:
        """The workspace's policy: what projects without one of their own are under (404: none)."""
        self._workspace(workspace_id)
        policy = self.session.retention()
        if policy is None:
            raise ApiError(404, f"workspace {workspace_id!r} has no task retention policy")
        return policy.to_wire()

    def put_workspace_retention(self, user: User, workspace_id: str, body: Any) -> dict[str, Any]:
        self._workspace(workspace_id)
        if not self._is_owner(user):  # it holds for other users' projects too
            raise ApiError(403, "only the owner of the data root sets the workspace's policy (in JupyterLab, or "
                                "Session.set_retention); set a project's own policy instead")
        try:
            policy = RetentionPolicy.model_validate(body)
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return self.session.set_retention(policy.archive_after, policy.delete_after).to_wire()

    def delete_retention(self, user: User, project_id: str) -> tuple[int, None]:
        if not self._handle(user, project_id).delete_retention():
            raise ApiError(404, f"project {project_id!r} has no task retention policy")
        return 204, None

    # -- profiles and clusters (toolkit extensions of the API, for the lab sidebar) --------------------
    def profiles(self, user: User) -> dict[str, Any]:
        out = []
        for name in self.session.site.names():
            p = self.session.site.profile(name)
            out.append({"name": name, "backend": p.backend, "partition": p.partition, "coresPerNode": p.cores_per_node,
                        "memoryPerNode": p.memory_per_node, "gpusPerNode": p.gpus_per_node, "maxNodes": p.max_nodes,
                        "maxWalltime": p.max_walltime, "launcher": p.launcher, "packing": p.packing,
                        "warning": p.warning})
        return {"items": out, "default": self.session.site.default_profile}

    def check_request(self, user: User, name: str, body: Any) -> dict[str, Any]:
        """Does `{nodes, cores, gpus, memory, walltime}` fit profile `name`? The reason if not."""
        from htc_notebook.spec import Resources

        prof = self._profile(name)
        if not isinstance(body, dict):
            raise ApiError(400, "the body is an object: {nodes, cores, gpus, memory, walltime}")
        allowed = {"nodes", "cores", "gpus", "memory", "walltime"}
        unknown = set(body) - allowed
        if unknown:
            raise ApiError(400, f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            res = prof.resolve(Resources(**{k: v for k, v in body.items() if v not in (None, "")}))
        except HTCError as exc:
            return {"ok": False, "message": str(exc)}
        return {"ok": True, "message": f"fits {name}: {res.cores} cores, {res.memory or '-'} MiB, "
                                        f"walltime {res.walltime or '-'} s"}

    def clusters(self, user: User) -> dict[str, Any]:
        return {"items": self.session.clusters()}

    def cluster_action(self, user: User, name: str, body: Any) -> dict[str, Any]:
        """Start, scale or stop the server's cluster of profile `name`: only the data root's owner (it
        runs every project's jobs: stopping it cancels them all). Cancel and retry are per project."""
        prof = self._profile(name)
        if not self._is_owner(user):
            raise ApiError(403, "only the owner of the data root starts, scales and stops clusters (in "
                                "JupyterLab, or `htc serve --owner USER`); cancel your own jobs instead")
        action = _field(body, "action", str)
        jobs, minimum, maximum = (_count(body, name) for name in ("jobs", "minimum", "maximum"))
        try:
            if action == "start":
                self.session.start(prof.name, jobs)
            elif action == "scale" and prof.backend == "slurm":
                self.session.scale(prof.name, 1 if jobs is None else jobs)
            elif action == "adapt" and prof.backend == "slurm":
                if maximum is not None and maximum < (minimum or 0):
                    raise ApiError(400, f"maximum = {maximum} is not allowed: at least minimum ({minimum or 0})")
                self.session.adapt(prof.name, minimum or 0, maximum)
            elif action == "stop":
                self.session.stop(prof.name)
            else:
                raise ApiError(400, f"action {action!r} is not allowed: start, stop" +
                               (", scale, adapt" if prof.backend == "slurm"
                                else " (a local profile cannot scale or adapt)"))
        except ApiError:
            raise
        except HTCError as exc:
            raise ApiError(400, str(exc)) from None
        return self.clusters(user)

    def _profile(self, name: str):
        try:
            return self.session.site.profile(name)
        except HTCError as exc:
            raise ApiError(404, str(exc)) from None

    # -- container registry --------------------------------------------------------------------
    # -- the project's container registry (htc_notebook.registry) -------------------------------
    def _registry(self, user: User, project_id: str):
        return self.session.registry(self._project(user, project_id))

    def create_repo(self, user: User, project_id: str, repo: str) -> dict[str, Any]:
        """Create a repository (idempotent: an existing one is left as it is)."""
        reg = self._registry(user, project_id)
        try:
            reg.create_repo(repo)
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return {"repoName": repo, "imagePrefix": _registry_call(lambda: reg.prefix) + repo}

    def registry_token(self, user: User, project_id: str) -> str:
        """The project's registry password: `login <containerRegistry host> -u <projectId>` with it."""
        reg = self._registry(user, project_id)
        _registry_call(lambda: reg.state)
        return reg.password()

    def images(self, user: User, project_id: str) -> dict[str, Any]:
        """The project's images, as `repo:tag`."""
        reg = self._registry(user, project_id)
        return {"images": _registry_call(reg.images)}

    def image(self, user: User, project_id: str, image_name: str) -> dict[str, Any]:
        """`{"status": "READY"}` for an image the registry holds; 404 naming the known ones otherwise."""
        reg = self._registry(user, project_id)
        try:
            digest = _registry_call(lambda: reg.digest(image_name))
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        if digest is None:
            known = _registry_call(reg.images)
            raise ApiError(404, f"no image {image_name!r} in project {project_id!r}; its images: "
                                f"{', '.join(known) or '(none)'}")
        return {"status": "READY", "imageName": image_name, "digest": digest}


def _registry_call(fn):
    """`fn()`, with a registry that is down or failing as 503 (the client may try again)."""
    try:
        return fn()
    except BackendError as exc:
        raise ApiError(503, str(exc)) from None


class _Counted(NamedTuple):
    """What `wire_status` reads of a row, for a group of counted jobs."""
    status: str
    native_id: str | None
    reason: str | None = None




def _count(body: Any, name: str) -> int | None:
    """`body[name]`: absent (None) or a whole number >= 0; anything else is a 400 naming it."""
    value = body.get(name) if isinstance(body, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ApiError(400, f"{name} = {value!r} is not allowed: a whole number >= 0")
    return value


def _wire_counts(toolkit: dict[str, int], queued: int) -> dict[str, int]:
    """Jobs per wire status from counts per toolkit status, `queued` of the RUNNABLE ones known to a
    scheduler (wire_status looks at status and native id only)."""
    counts = dict.fromkeys(WIRE_STATUSES, 0)
    for status, n in toolkit.items():
        for k, native_id in ((n - queued, None), (queued, "queued")) if status == "RUNNABLE" else ((n, None),):
            if k:
                wire = wire_status(cast(JobRow, _Counted(status, native_id)))[0]
                counts[wire] = counts.get(wire, 0) + k
    return counts


def _region_json(p: PartitionProfile) -> dict[str, Any]:
    """A profile as an HTC region: where jobs can run, with what each node has."""
    return {"region": p.name, "backend": p.backend, "machineArchitecture": p.architecture,
            "coresPerNode": p.cores_per_node, "memoryPerNodeMiB": p.memory_per_node, "gpusPerNode": p.gpus_per_node,
            "maxNodes": p.max_nodes, "maxWalltimeSeconds": p.max_walltime}


def _limit_json(row) -> dict[str, Any]:
    return {"id": row.id, "modifierRole": row.modifier_role, "vCPUs": row.vcpus}


def _limit_body(body: Any) -> ProjectLimit:
    try:
        return ProjectLimit.model_validate(body)
    except SpecError as exc:
        raise ApiError(400, str(exc)) from None


def _name(user: User) -> str:
    return user.name if isinstance(user, Caller) else user


def _field(body: Any, name: str, kind: type) -> Any:
    if not isinstance(body, dict) or name not in body:
        raise ApiError(400, f"the body needs {name!r}")
    value = body[name]
    if not isinstance(value, kind):
        raise ApiError(400, f"{name} = {value!r} is not allowed: a {kind.__name__}")
    return value


def _offset_page(items: Sequence[dict], page: str | None, size: int) -> tuple[list[dict], str | None]:
    start = 0
    if page is not None:
        if not _DIGITS.match(page):
            raise ApiError(400, f"page {page!r} is not allowed: use the `next` link of the previous page")
        start = int(page)
    chunk = list(items[start:start + size])
    return chunk, (str(start + size) if start + size < len(items) else None)


def page_size(value: str | None, most: int = MAX_PAGE) -> int:
    """`pageSize` from the query: 1..`most` (default DEFAULT_PAGE)."""
    if value is None:
        return DEFAULT_PAGE
    if not _DIGITS.match(value) or not 1 <= int(value) <= most:
        raise ApiError(400, f"pageSize {value!r} is not allowed: a whole number from 1 to {most}")
    return int(value)
