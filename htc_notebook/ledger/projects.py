"""Projects and tasks: get-or-create, look-ups, a task's lifecycle (ACTIVE, ARCHIVED), its events."""

from __future__ import annotations

import time

from ..errors import LedgerError
from .connection import LedgerCore
from .encoding import check_text
from .rows import ProjectRow, TaskRow
from .statements import event, require_task


LIFECYCLES = ("ACTIVE", "ARCHIVED")


class Projects(LedgerCore):
    """Project and task rows, and the events written on a task."""

    def project(self, name: str) -> ProjectRow:
        """Get or create a project."""
        check_text("project name", name)
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO projects (name, created) VALUES (?, ?)", (name, time.time()))
            return ProjectRow(*con.execute("SELECT name, created FROM projects WHERE name = ?",
                                           (name,)).fetchone())

    def projects(self) -> list[ProjectRow]:
        return [ProjectRow(*r) for r in self._read("SELECT name, created FROM projects ORDER BY name")]

    def task(self, project: str, name: str) -> TaskRow:
        """Get or create a task (and its project)."""
        check_text("project name", project)
        check_text("task name", name)
        now = time.time()
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO projects (name, created) VALUES (?, ?)", (project, now))
            con.execute("INSERT OR IGNORE INTO tasks (project, name, created) VALUES (?, ?, ?)",
                        (project, name, now))
            return TaskRow(*con.execute(
                "SELECT id, project, name, lifecycle, created FROM tasks WHERE project = ? AND name = ?",
                (project, name)).fetchone())

    def get_task(self, task_id: int) -> TaskRow:
        row = self.find_task_by_id(task_id)
        if row is None:
            raise LedgerError(f"no task {task_id}")
        return row

    def find_task_by_id(self, task_id: int) -> TaskRow | None:
        rows = self._read("SELECT id, project, name, lifecycle, created FROM tasks WHERE id = ?", (task_id,))
        return TaskRow(*rows[0]) if rows else None

    def find_task(self, project: str, name: str) -> TaskRow | None:
        rows = self._read("SELECT id, project, name, lifecycle, created FROM tasks "
                          "WHERE project = ? AND name = ?", (project, name))
        return TaskRow(*rows[0]) if rows else None

    def tasks(self, project: str | None = None) -> list[TaskRow]:
        sql = "SELECT id, project, name, lifecycle, created FROM tasks"
        if project is None:
            return [TaskRow(*r) for r in self._read(sql + " ORDER BY id")]
        return [TaskRow(*r) for r in self._read(sql + " WHERE project = ? ORDER BY id", (project,))]

    def set_lifecycle(self, task_id: int, lifecycle: str) -> None:
        if lifecycle not in LIFECYCLES:
            raise LedgerError(f"task lifecycle {lifecycle!r} is not one of {', '.join(LIFECYCLES)}")
        with self._write() as con:
            if con.execute("UPDATE tasks SET lifecycle = ?, archived = CASE WHEN ? = 'ARCHIVED' THEN ? END "
                           "WHERE id = ?", (lifecycle, lifecycle, time.time(), task_id)).rowcount == 0:
                raise LedgerError(f"no task {task_id}")

    def add_event(self, task_id: int, job_id: int | None, kind: str, message: str) -> int:
        with self._write() as con:
            require_task(con, task_id)
            return event(con, task_id, job_id, time.time(), kind, message)
