"""The Session: what a user opens on a data root. A small facade over its parts (runtime/parts.py),
which do the work, each with one job.

>>> s = Session("htc-data")                       # doctest: +SKIP
>>> task = s.project("demo").task("first")        # doctest: +SKIP
>>> task.submit(pow, 2, 10).result()              # doctest: +SKIP
1024
"""

from __future__ import annotations

import atexit
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from htc_notebook.errors import SpecError
from htc_notebook.ledger import TaskRow
from htc_notebook.runtime import images
from htc_notebook.runtime.dashboard import proxy_dashboards
from htc_notebook.runtime.handles import JobHandle
from htc_notebook.runtime.live_backends import project_registry
from htc_notebook.runtime.parts import Parts, wire
from htc_notebook.runtime.task import Project, Task
from htc_notebook.spec import PartitionProfile, RetentionPolicy, SiteConfig

if TYPE_CHECKING:
    from htc_notebook.backends.base import Backend
    from htc_notebook.registry.pull import Pruned


def _close_at_exit(parts: Parts) -> None:
    """Close the session's parts when the interpreter exits (what backends reported gets committed)."""
    ref = weakref.ref(parts)

    def close() -> None:
        p = ref()
        if p is not None:
            p.close()

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
        root = Path(root or os.environ.get("HTC_ROOT") or "htc-data").resolve()
        site = site if isinstance(site, SiteConfig) else SiteConfig.load(site)
        proxy_dashboards()  # in a kernel of a Jupyter server with jupyter-server-proxy: links through it
        self.parts = wire(root, site, reconcile=reconcile, heartbeat=heartbeat)
        self.root, self.site, self.storage = root, site, self.parts.storage
        self.ledger, self.reads, self.owner = self.parts.ledger, self.parts.reads, self.parts.owner
        self.reconciler, self.completions = self.parts.reconciler, self.parts.completions
        _close_at_exit(self.parts)

    def __repr__(self) -> str:
        return f"Session(root={str(self.root)!r}, profiles={self.site.names()})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- navigation ----------------------------------------------------------
    def project(self, name: str) -> Project:
        return Project(self.parts, self.ledger.project(name).name)

    def projects(self) -> list[Project]:
        return [Project(self.parts, p.name) for p in self.ledger.projects()]

    def task(self, row: TaskRow) -> Task:
        """The task of a row read from the ledger (`reads.find_task`, ...)."""
        return Task(self.parts, row)

    def job(self, job_id: int) -> JobHandle:
        """A handle for any job in the ledger, e.g. after a kernel restart."""
        return JobHandle(self.parts, job_id)

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

    # -- profiles and their clusters (runtime/live_backends.py) ------------------------------
    def profile(self, name: str | None) -> PartitionProfile:
        """The profile `name` as it runs here: unconfined if it must be (runtime/confinement.py), said once."""
        return self.parts.profiles.get(name)

    def unconfined(self, name: str | None = None) -> str | None:
        """What is off if profile `name`'s jobs run unconfined here (None: they run in the sandbox)."""
        return self.parts.profiles.unconfined(name)

    def backend(self, profile: PartitionProfile) -> "Backend":
        return self.parts.backends.get(profile)

    def live_backends(self) -> list["Backend"]:
        return self.parts.backends.all()

    def pilots(self, profile: str | None = None):
        """The dask-jobqueue cluster of a SLURM profile (started on first use)."""
        return self.parts.backends.pilots(profile)

    def scale(self, profile: str | None, jobs: int) -> None:
        """Keep exactly `jobs` pilot jobs of a SLURM profile (stops adapting)."""
        self.parts.backends.scale(profile, jobs)

    def adapt(self, profile: str | None, minimum: int = 0, maximum: int | None = None) -> None:
        """Let a SLURM profile's pilot count follow the work, between `minimum` and `maximum` jobs."""
        self.parts.backends.adapt(profile, minimum, maximum)

    def start(self, profile: str | None, jobs: int | None = None) -> None:
        """Start a profile's cluster now: the local dask cluster, or `jobs` SLURM pilot jobs (default 1)."""
        self.parts.backends.start(profile, jobs)

    def stop(self, profile: str | None) -> bool:
        """Stop a profile's clusters (its running jobs here end CANCELLED); False if none ran."""
        return self.parts.backends.stop(profile)

    def clusters(self) -> list[dict]:
        """The dask clusters this session runs: profile, kind, workers, dashboard, jobs running."""
        return self.parts.backends.clusters()

    # -- the data root's container registry -----------------------------------------
    def registry(self, project: str):
        """The container registry as `project` sees it (`htc_notebook.registry.ProjectRegistry`:
        prefix, password, repositories, images); the registry itself runs apart (`htc registry up`)."""
        return project_registry(self.root, project)

    def prune_images(self, unused_days: float = 7.0, dry_run: bool = False) -> list["Pruned"]:
        """Remove the unpacked images no job has used for `unused_days` days, but those of jobs not ended."""
        return images.prune(self.root, self.ledger.active_images(), unused_days, dry_run)

    # -- jobs ------------------------------------------------------------------
    def cancel(self, job_ids: Iterable[int], reason: str = "cancelled by user") -> list[int]:
        return self.parts.dispatcher.cancel(job_ids, reason)

    def retry(self, job_ids: Iterable[int], reason: str = "retried by user") -> list[int]:
        """Run FAILED, CANCELLED or LOST jobs again (SUCCEEDED ones are never re-run)."""
        return self.parts.dispatcher.retry(job_ids, reason)

    def resume(self) -> int:
        """Take up what earlier sessions of this data root left (`htc serve`, the Jupyter server at
        start, `%htc attach`): watch their SLURM jobs, feed their held work, retry what is due, and
        mark LOST the local jobs of processes that have exited; then keep doing so (the reconcile
        loop). Returns how many jobs were marked LOST."""
        return self.reconciler.resume()

    # -- waiting -----------------------------------------------------------------
    def change_mark(self) -> int:
        """A mark to pass to `wait_for_change`: take it before looking at the ledger."""
        return self.parts.changes.mark()

    def wait_for_change(self, timeout: float = 0.25, since: int | None = None) -> None:
        """Sleep until this process commits something after `since` (a `change_mark`), or `timeout`."""
        self.parts.changes.wait(timeout, since)

    def flush(self) -> None:
        """Wait until everything backends reported is committed to the ledger."""
        self.parts.recorder.flush()

    @property
    def closed(self) -> bool:
        return self.parts.closed

    def close(self) -> None:
        """Stop backends (running local jobs end CANCELLED) and commit what they reported."""
        self.parts.close()
