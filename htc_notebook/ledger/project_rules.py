"""A project's rules, kept in the ledger: its vCPU limits, its task retention policy and the compute
environments it may use (HTC API).

`Ledger` inherits these methods; `admit` is the admission that `Attempts.start_attempts` runs in its
own write transaction, so processes sharing the ledger never exceed a limit together.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from .connection import LedgerCore
from .encoding import job_row
from .rows import AttemptStart, JobRow, LimitRow, RetentionRow
from .schema import HELD_FOR_ROOM, IN_USE_WHERE, JOB_COLUMNS, TERMINAL_SQL
from .statements import IN_JSON, event

HOUR = 3600.0


class ProjectRules(LedgerCore):
    """vCPU limits, task retention and dimensions, per project."""

    # -- vCPU limits -------------------------------------------------------------------------
    _LIMIT = "SELECT id, project, modifier_role, vcpus, created FROM project_limits"

    def add_limit(self, project: str, modifier_role: str, vcpus: int) -> LimitRow:
        """Limit `project`'s jobs to `vcpus` vCPUs in use at once (the lowest of its limits holds)."""
        with self._write() as con:
            _project(con, project)
            row = con.execute("INSERT INTO project_limits (project, modifier_role, vcpus, created) VALUES (?, ?, ?, ?) "
                              "RETURNING id, project, modifier_role, vcpus, created",
                              (project, modifier_role, vcpus, time.time())).fetchone()
        return LimitRow(*row)

    def limits(self, project: str) -> list[LimitRow]:
        return [LimitRow(*r) for r in self._read(f"{self._LIMIT} WHERE project = ? ORDER BY id", (project,))]

    def update_limit(self, project: str, limit_id: int, modifier_role: str, vcpus: int) -> LimitRow | None:
        with self._write() as con:
            row = con.execute("UPDATE project_limits SET modifier_role = ?, vcpus = ? WHERE project = ? AND id = ? "
                              "RETURNING id, project, modifier_role, vcpus, created",
                              (modifier_role, vcpus, project, limit_id)).fetchone()
        return LimitRow(*row) if row else None

    def delete_limits(self, project: str, limit_id: int | None = None) -> int:
        """Delete one of `project`'s limits, or all; returns how many."""
        with self._write() as con:
            return con.execute("DELETE FROM project_limits WHERE project = ? AND (? IS NULL OR id = ?)",
                               (project, limit_id, limit_id)).rowcount

    def vcpu_limit(self, project: str) -> int | None:
        """The lowest of `project`'s vCPU limits (None: no limit)."""
        return self._read("SELECT MIN(vcpus) FROM project_limits WHERE project = ?", (project,))[0][0]

    def vcpus_in_use(self, project: str) -> int:
        """vCPUs of `project`'s jobs given to a backend and not ended (what its limit counts)."""
        with self._write() as con:  # the same view start_attempts has
            return in_use(con, project)

    def held_for_room(self, owner: str, limit: int = 1000) -> list[JobRow]:
        """Jobs `owner` holds for room in their project's vCPU limit, in the order they go."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'HELD' AND native_id = '{HELD_FOR_ROOM}' "
                          f"AND json_extract(spec, '$.owner') = ? ORDER BY priority, id LIMIT ?", (owner, limit))
        return [job_row(r) for r in rows]

    # -- dimensions ------------------------------------------------------------------------------
    def set_dimensions(self, project: str, dimensions: list[dict[str, Any]]) -> None:
        """The compute environments `project` may use (wire-shaped dicts); [] lifts the restriction."""
        with self._write() as con:
            _project(con, project)
            if dimensions:
                con.execute("INSERT INTO project_dimensions (project, dimensions) VALUES (?, ?) ON CONFLICT "
                            "(project) DO UPDATE SET dimensions = excluded.dimensions",
                            (project, json.dumps(dimensions)))
            else:
                con.execute("DELETE FROM project_dimensions WHERE project = ?", (project,))

    def dimensions(self, project: str) -> list[dict[str, Any]] | None:
        """The compute environments `project` may use (None: every one the site offers)."""
        rows = self._read("SELECT dimensions FROM project_dimensions WHERE project = ?", (project,))
        return json.loads(rows[0][0]) if rows else None

    # -- task retention ------------------------------------------------------------------------
    def set_retention(self, project: str, archive_after: int, delete_after: int) -> RetentionRow:
        """`project`'s task retention policy: hours of inactivity after which an ACTIVE task is
        archived, and hours after which an ARCHIVED task's files are deleted (0: never)."""
        with self._write() as con:
            _project(con, project)
            con.execute("INSERT INTO retention (project, archive_after, delete_after) VALUES (?, ?, ?) "
                        "ON CONFLICT (project) DO UPDATE SET archive_after = excluded.archive_after, "
                        "delete_after = excluded.delete_after", (project, archive_after, delete_after))
        return RetentionRow(project, archive_after, delete_after)

    def retention(self, project: str | None = None) -> list[RetentionRow]:
        """The retention policy of `project` ([] if it has none), or of every project that has one."""
        sql = "SELECT project, archive_after, delete_after FROM retention"
        rows = self._read(sql + " WHERE project = ?", (project,)) if project else self._read(sql + " ORDER BY project")
        return [RetentionRow(*r) for r in rows]

    def delete_retention(self, project: str) -> bool:
        with self._write() as con:
            return con.execute("DELETE FROM retention WHERE project = ?", (project,)).rowcount == 1

    def set_workspace_retention(self, archive_after: int, delete_after: int) -> RetentionRow:
        """The policy of every project that has none of its own (project "" in the row)."""
        with self._write() as con:
            con.execute("INSERT INTO workspace_retention (id, archive_after, delete_after) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET archive_after = excluded.archive_after, "
                        "delete_after = excluded.delete_after", (archive_after, delete_after))
        return RetentionRow("", archive_after, delete_after)

    def workspace_retention(self) -> RetentionRow | None:
        rows = self._read("SELECT '', archive_after, delete_after FROM workspace_retention")
        return RetentionRow(*rows[0]) if rows else None

    def retention_in_force(self) -> list[RetentionRow]:
        """The policy each project is under: its own, else the workspace's (projects under none left out)."""
        rows = self._read("SELECT p.name, COALESCE(r.archive_after, w.archive_after), COALESCE(r.delete_after, "
                          "w.delete_after) FROM projects p LEFT JOIN retention r ON r.project = p.name "
                          "LEFT JOIN workspace_retention w WHERE r.project IS NOT NULL OR w.id IS NOT NULL "
                          "ORDER BY p.name")
        return [RetentionRow(*r) for r in rows]

    def archive_inactive(self, policy: RetentionRow, now: float | None = None) -> list[tuple[int, str]]:
        """Archive the project's ACTIVE tasks with no active job and nothing done for
        `policy.archive_after` hours (their last job's update, else their creation). Returns
        (task id, name) of those archived now (compare and set: of many processes, one does it)."""
        if not policy.archive_after:
            return []
        now = time.time() if now is None else now
        with self._write() as con:
            moved = con.execute(
                "UPDATE tasks SET lifecycle = 'ARCHIVED', archived = ? WHERE project = ? AND lifecycle = 'ACTIVE' "
                f"AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.task_id = tasks.id AND status NOT IN ({TERMINAL_SQL})) "
                "AND COALESCE((SELECT MAX(updated) FROM jobs WHERE jobs.task_id = tasks.id), tasks.created) < ? "
                "RETURNING id, name", (now, policy.project, now - policy.archive_after * HOUR)).fetchall()
            for task_id, _ in moved:
                event(con, task_id, None, now, "archived", f"inactive for {policy.archive_after} h (the project's "
                      "task retention policy, archiveAfter)")
        return [tuple(r) for r in moved]

    def due_for_deletion(self, policy: RetentionRow, now: float | None = None) -> list[tuple[int, str]]:
        """Claim the project's tasks archived more than `policy.delete_after` hours ago, with no
        active job, whose files are still there: (task id, name) of those this call claimed (one
        process each); the caller deletes their files. The ledger keeps their record (not their stored calls)."""
        if not policy.delete_after:
            return []
        now = time.time() if now is None else now
        with self._write() as con:
            moved = con.execute(
                "UPDATE tasks SET deleted = ? WHERE project = ? AND lifecycle = 'ARCHIVED' AND deleted IS NULL "
                f"AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.task_id = tasks.id AND status NOT IN ({TERMINAL_SQL})) "
                "AND COALESCE(archived, created) < ? RETURNING id, name",
                (now, policy.project, now - policy.delete_after * HOUR)).fetchall()
            con.executemany("DELETE FROM payloads WHERE task_id = ?", [(task_id,) for task_id, _ in moved])
            for task_id, _ in moved:
                event(con, task_id, None, now, "deleted", f"its files deleted {policy.delete_after} h after it "
                      "was archived (the project's task retention policy, deleteAfter); its record is kept")
        return [tuple(r) for r in moved]


def _project(con: sqlite3.Connection, project: str) -> None:
    con.execute("INSERT OR IGNORE INTO projects (name, created) VALUES (?, ?)", (project, time.time()))


def in_use(con: sqlite3.Connection, project: str) -> int:
    """vCPUs of `project`'s jobs given to a backend and not ended, summed over the few rows of the
    `jobs_in_use` index (not over the jobs held for room)."""
    return con.execute(f"SELECT COALESCE(SUM(COALESCE(json_extract(spec, '$.cores'), 1)), 0) FROM jobs "
                       f"WHERE {IN_USE_WHERE} AND task_id IN (SELECT id FROM tasks WHERE project = ?)",
                       (project,)).fetchone()[0]


def admit(con: sqlite3.Connection, items: list[AttemptStart], room: tuple[str, int], now: float,
          seq: int) -> list[AttemptStart]:
    """The items whose jobs fit in their project's vCPU limit, in order (the first that does not fit
    and every one after it wait); the others are held for room (no attempt starts)."""
    project, limit = room
    ids = json.dumps([it.job_id for it in items])
    cores = dict(con.execute(f"SELECT id, COALESCE(json_extract(spec, '$.cores'), 1) FROM jobs "
                             f"WHERE id IN {IN_JSON} AND status NOT IN ({TERMINAL_SQL})", (ids,)).fetchall())
    used = in_use(con, project)
    admitted: list[AttemptStart] = []
    held: list[int] = []
    for it in items:
        c = cores.get(it.job_id)
        if c is None:
            continue  # ended meanwhile: start_attempts gives it 0
        if held or used + c > limit:
            held.append(it.job_id)
        else:
            used += c
            admitted.append(it)
    if held:
        reason = (f"waiting for room in project {project}'s vCPU limit: {limit} vCPUs, {used} in use "
                  "(it starts as jobs of the project end)")
        con.execute(f"UPDATE jobs SET status = 'HELD', native_id = '{HELD_FOR_ROOM}', reason = ?, updated = ?, seq = ? "
                    f"WHERE id IN {IN_JSON} AND status NOT IN ({TERMINAL_SQL}) "
                    f"AND NOT (status = 'HELD' AND native_id IS '{HELD_FOR_ROOM}')",
                    (reason, now, seq, json.dumps(held)))
    return admitted
