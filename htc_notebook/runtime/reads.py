"""What the layers above the runtime (ui/, server/, cli.py) read of the ledger: `Session.reads`.

They reach the ledger only through the runtime (design.md, Layers): these reads, the row types
they return, and the runtime's own operations for anything that changes a job or a task. Every
read is indexed and bounded as the ledger's own is (docs/ledger.md).

>>> session.reads.counts(task.id)["SUCCEEDED"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from htc_notebook.ledger import Ledger
from htc_notebook.ledger.changes import SORTS as VIEW_SORTS, id_ranges
from htc_notebook.ledger.rows import AttemptRow, EventRow, JobRow, TaskRow

__all__ = ["AttemptRow", "EventRow", "JobRow", "Reads", "TaskRow", "VIEW_SORTS", "id_ranges"]


class Reads:
    """Read-only views of one data root's ledger: project names, tasks, jobs, attempts, events, counts."""

    def __init__(self, ledger: Ledger):
        self._ledger = ledger

    # -- projects and tasks -------------------------------------------------------------------
    def project_names(self) -> set[str]:
        return {p.name for p in self._ledger.projects()}

    def tasks(self, project: str | None = None) -> list[TaskRow]:
        """The tasks of `project` (of every project if None), in the order made."""
        return self._ledger.tasks(project)

    def task(self, task_id: int) -> TaskRow | None:
        """Task `task_id`, or None if there is none."""
        return self._ledger.find_task_by_id(task_id)

    def find_task(self, project: str, name: str) -> TaskRow | None:
        return self._ledger.find_task(project, name)

    # -- jobs ------------------------------------------------------------------------------------
    def job(self, job_id: int) -> JobRow | None:
        """Job `job_id`, or None if there is none."""
        return self._ledger.find_job(job_id)

    def job_at(self, batch_id: int, index: int) -> JobRow | None:
        """Job `index` of batch `batch_id` (the HTC API's `<parentJobId>:<index>`)."""
        return self._ledger.job_at(batch_id, index)

    def jobs(self, task_id: int, *, status: str | Iterable[str] | None = None, after_id: int | None = None,
             limit: int | None = None) -> list[JobRow]:
        """A task's jobs by id (those in `status`); pages: `after_id` the last id of the previous one."""
        return self._ledger.jobs(task_id, status=status, after_id=after_id, limit=limit)

    def last_jobs(self, task_id: int, limit: int) -> list[JobRow]:
        return self._ledger.last_jobs(task_id, limit)

    def job_ids(self, task_id: int, status: str | Iterable[str] | None = None) -> list[int]:
        return self._ledger.job_ids(task_id, status)

    def parents(self, job_id: int) -> list[int]:
        """The jobs `job_id` depends on (it waited for their results)."""
        return self._ledger.parents(job_id)

    def children(self, job_id: int) -> list[int]:
        """The jobs that depend on `job_id`."""
        return self._ledger.children(job_id)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return self._ledger.attempts(job_id)

    def events(self, *, task_id: int | None = None, job_id: int | None = None,
               limit: int | None = None) -> list[EventRow]:
        return self._ledger.events(task_id=task_id, job_id=job_id, limit=limit)

    # -- counts (indexed: no job row read) -------------------------------------------------------
    def counts(self, task_id: int) -> dict[str, int]:
        """A task's jobs per status."""
        return self._ledger.counts(task_id)

    def queued_count(self, task_id: int) -> int:
        """A task's RUNNABLE jobs that a scheduler knows by its own id."""
        return self._ledger.queued_count(task_id)

    def group_counts(self, task_id: int) -> dict[str, tuple[dict[str, int], int]]:
        """A task's jobs by name: (count per status, how many RUNNABLE ones a scheduler holds)."""
        return self._ledger.group_counts(task_id)

    # -- the live table's rows -------------------------------------------------------------------
    def view_page(self, task_id: int, ranges: Sequence[tuple[int, int]] | None = None, *, status: str | None = None,
                  text: str | None = None, sort: str = "id", descending: bool = False, offset: int = 0,
                  limit: int = 200) -> tuple[int, dict[str, int], int, list[tuple[Any, ...]]]:
        """(sequence number, counts per status, rows matching, the window's rows): `Changes.view_page`."""
        return self._ledger.view_page(task_id, ranges, status=status, text=text, sort=sort, descending=descending,
                                      offset=offset, limit=limit)

    def view_ids(self, task_id: int, ranges: Sequence[tuple[int, int]] | None, statuses: Iterable[str] | None = None,
                 job_ids: Iterable[int] | None = None) -> list[int]:
        """The ids of a live table's jobs with one of `statuses` (and among `job_ids`): `Changes.view_ids`."""
        return self._ledger.view_ids(task_id, ranges, statuses, job_ids)

    def status_changes(self, task_id: int, after_seq: int) -> tuple[int, list[tuple[int, str]]]:
        """(sequence number, (id, status) of the jobs changed after `after_seq`)."""
        return self._ledger.status_changes(task_id, after_seq)

    def change_mark(self) -> tuple[int, int, int, int]:
        """What changes when anything a view shows does: `Changes.change_mark`."""
        return self._ledger.change_mark()

    def tasks_changed(self, after_seq: int) -> list[tuple[str, int]]:
        """(project, task id) of the tasks with a job changed after `after_seq`."""
        return self._ledger.tasks_changed(after_seq)
