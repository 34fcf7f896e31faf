"""What changed, for polls and live tables: rows changed after a change sequence number, read with
that number from one snapshot."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .connection import LedgerCore
from .encoding import checked_ids, job_row
from .rows import JobRow
from .schema import JOB_COLUMNS
from .statements import IN_JSON


PREVIEW_BYTES = 512  # results this small come with `view_changes` rows, for table previews
# what a job's last attempt used and what it asked for, for live tables (the spec is read only when measured)
USED_SQL = ("j.cpu_s, j.max_rss_mib, "
            "CASE WHEN j.cpu_s IS NOT NULL OR j.max_rss_mib IS NOT NULL THEN json_extract(j.spec, '$.memory') END, "
            "CASE WHEN j.cpu_s IS NOT NULL THEN json_extract(j.spec, '$.cores') END")


class Changes(LedgerCore):
    """Changed rows since a sequence number, and the table rows of a live view."""

    def changes(self, task_id: int, after_seq: int) -> tuple[int, list[JobRow]]:
        """(max_seq, jobs changed after `after_seq`) read from one snapshot: poll with the seq returned."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND seq > ? ORDER BY id",
                               (task_id, after_seq)).fetchall()
        return seq, [job_row(r) for r in rows]

    def status_changes(self, task_id: int, after_seq: int) -> tuple[int, list[tuple[int, str]]]:
        """Like `changes`, but only (job id, status) pairs: cheap enough to poll for huge tasks."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute("SELECT id, status FROM jobs WHERE task_id = ? AND seq > ?",
                               (task_id, after_seq)).fetchall()
        return seq, rows

    def view_changes(self, task_id: int, after_seq: int) -> tuple[int, list[tuple[Any, ...]]]:
        """For live tables: (max_seq, rows changed after `after_seq`), each (id, name, status, reason,
        host, attempts, started, ended, params as JSON text, seq, result bytes if inline and at most
        `PREVIEW_BYTES`, CPU s, peak MiB, memory asked, cores asked (the last two only when measured)).
        Plain tuples, nothing decoded: a refresh of thousands of rows stays cheap."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute("SELECT j.id, j.name, j.status, j.reason, j.host, j.attempts, j.started, j.ended, "
                               f"       j.params, j.seq, CASE WHEN r.size <= {PREVIEW_BYTES} THEN r.inline END, "
                               f"       {USED_SQL} "
                               "FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
                               "WHERE j.task_id = ? AND j.seq > ? ORDER BY j.id", (task_id, after_seq)).fetchall()
        return seq, rows

    def view_rows(self, task_id: int, job_ids: Iterable[int] | None = None) -> tuple[int, list[tuple[Any, ...]]]:
        """`view_changes(task_id, 0)` for a live table's first load, in id order: every job of the task,
        or only `job_ids` (looked up by id, so a table of 100 jobs in a 100,000-job task reads 100 rows)."""
        where = "j.task_id = ?"
        params: list[Any] = [task_id]
        if job_ids is not None:  # `+`: look the ids up by primary key, not the task's index
            where, params = f"j.id IN {IN_JSON} AND +j.task_id = ?", [json.dumps(checked_ids(job_ids)), task_id]
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute("SELECT j.id, j.name, j.status, j.reason, j.host, j.attempts, j.started, j.ended, "
                               f"       j.params, j.seq, CASE WHEN r.size <= {PREVIEW_BYTES} THEN r.inline END, "
                               f"       {USED_SQL} "
                               f"FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE {where} ORDER BY j.id",
                               params).fetchall()
        return seq, rows

    def max_seq(self) -> int:
        return int(self._read("SELECT seq FROM counter")[0][0])
