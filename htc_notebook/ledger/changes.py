"""What changed, for polls and live tables: rows changed after a change sequence number, read with
that number from one snapshot."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .connection import LedgerCore
from ..errors import LedgerError
from ..states import STATES, STOPPED_NAMES
from .encoding import checked_ids, checked_status, job_row
from .rows import JobRow
from .schema import JOB_COLUMNS
from .statements import IN_JSON, per_status


PREVIEW_BYTES = 512  # results this small come with `view_page` rows, for table previews
# what a job's last attempt used and what it asked for, for live tables (the spec is read only when measured)
USED_SQL = ("j.cpu_s, j.max_rss_mib, "
            "CASE WHEN j.cpu_s IS NOT NULL OR j.max_rss_mib IS NOT NULL THEN json_extract(j.spec, '$.memory') END, "
            "CASE WHEN j.cpu_s IS NOT NULL THEN json_extract(j.spec, '$.cores') END")


VIEW_COLUMNS = ("SELECT j.id, j.name, j.status, j.reason, j.host, j.attempts, j.started, j.ended, j.params, j.seq, "
                f"CASE WHEN r.size <= {PREVIEW_BYTES} THEN r.inline END, {USED_SQL} "
                "FROM jobs j LEFT JOIN results r ON r.job_id = j.id ")
# what a live table's rows can be ordered by (then by id): column -> SQL (constants, never user input)
SORTS = {"id": "j.id", "name": "j.name", "status": "j.status", "host": "j.host", "attempts": "j.attempts",
         "started": "j.started", "runtime": "j.ended - j.started", "reason": "j.reason"}
STOPPED_JSON = json.dumps(sorted(STOPPED_NAMES))
COUNTS_AND_ENDS_SQL = per_status("COUNT(*)", "MIN(id)", "MAX(id)")  # a task's, per status
# how many id ranges a subset is matched by directly (BETWEEN each); more, and by its id list
MAX_RANGES = 8


def id_ranges(job_ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted job ids as inclusive ranges: a sweep's ids are one or a few.

    >>> id_ranges([7, 3, 4, 5, 9])
    [(3, 5), (7, 7), (9, 9)]
    """
    out: list[tuple[int, int]] = []
    for i in sorted(set(checked_ids(job_ids))):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _where(task_id: int, ranges: Sequence[tuple[int, int]] | None, status: str | None,
           text: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause of a live table's view: a task's jobs, or those in `ranges`, of one status,
    with `text` (lower case) in the name, parameters, host or reason."""
    # `+`: by id ranges, the rows are looked up by primary key, not through the task's indexes
    where: list[str] = ["j.task_id = ?" if ranges is None else "+j.task_id = ?"]
    params: list[Any] = [task_id]
    if ranges is not None and len(ranges) <= MAX_RANGES:
        where.append("(" + (" OR ".join(["j.id BETWEEN ? AND ?"] * len(ranges)) or "0") + ")")
        params += [i for r in ranges for i in r]
    elif ranges is not None:
        where.append(f"j.id IN {IN_JSON}")
        params.append(json.dumps([i for lo, hi in ranges for i in range(lo, hi + 1)]))
    if status:
        where.append("j.status = ?")
        params.append(status)
    if text:
        where.append("(instr(lower(j.name), ?) OR instr(lower(j.params), ?) OR instr(lower(j.host), ?) "
                     "OR instr(lower(j.reason), ?) OR j.id = ?)")
        params += [text] * 5
    return " AND ".join(where), params


class Changes(LedgerCore):
    """Changed rows since a sequence number, and the table rows of a live view."""

    def changes(self, task_id: int, after_seq: int) -> tuple[int, list[JobRow]]:
        """(max_seq, jobs changed after `after_seq`) read from one snapshot: poll with the seq returned."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND seq > ? ORDER BY id",
                               (task_id, after_seq)).fetchall()
        return seq, [job_row(r) for r in rows]

    def change_mark(self) -> tuple[int, int, int, int]:
        """(change sequence number, projects, tasks, archived tasks): what a watcher compares to learn
        that anything it shows changed, from one snapshot, at the cost of four small reads.

        >>> from htc_notebook.ledger import Ledger; import tempfile, pathlib
        >>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "l.db")
        >>> ledger.change_mark()
        (0, 0, 0, 0)
        >>> _ = ledger.task("p", "t"); ledger.change_mark()
        (0, 1, 1, 0)
        """
        return self._read("SELECT (SELECT seq FROM counter), (SELECT COUNT(*) FROM projects), "
                          "(SELECT COUNT(*) FROM tasks), (SELECT COUNT(*) FROM tasks WHERE lifecycle != 'ACTIVE')")[0]

    def tasks_changed(self, after_seq: int) -> list[tuple[str, int]]:
        """(project, task id) of the tasks a job of which changed after `after_seq`: one indexed
        look per task (jobs_task_seq), whatever the number of jobs."""
        return self._read("SELECT t.project, t.id FROM tasks t WHERE EXISTS "
                          "(SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.seq > ?) ORDER BY t.id", (after_seq,))

    def status_page(self, task_id: int, after: tuple[int, int], limit: int) -> list[tuple[int, str, int]]:
        """(job id, status, seq) of at most `limit` of the task's jobs changed after `after`, a (seq, job
        id) mark, in that order (index jobs_task_seq): a million jobs' first look read a page at a time.
        Read again from the last row's (seq, id); a job that changes meanwhile comes again, later."""
        return self._read("SELECT id, status, seq FROM jobs WHERE task_id = ? AND (seq, id) > (?, ?) "
                          "ORDER BY seq, id LIMIT ?", (task_id, *after, limit))

    def status_changes(self, task_id: int, after_seq: int) -> tuple[int, list[tuple[int, str]]]:
        """Like `changes`, but only (job id, status) pairs: cheap enough to poll for huge tasks."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute("SELECT id, status FROM jobs WHERE task_id = ? AND seq > ?",
                               (task_id, after_seq)).fetchall()
        return seq, rows

    def stopped_since(self, task_ids: Iterable[int], after_seq: int) -> tuple[int, list[int]]:
        """(max_seq, jobs of these tasks changed after `after_seq` that now have a status that is not
        SUCCEEDED but ended) from one snapshot: what was stopped since a look, at the cost of what
        changed (index jobs_task_seq), not of every job a process holds."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute(f"SELECT id FROM jobs WHERE task_id IN {IN_JSON} AND seq > ? AND status IN {IN_JSON}",
                               (json.dumps(checked_ids(task_ids)), after_seq, STOPPED_JSON)).fetchall()
        return seq, [i for (i,) in rows]

    def view_page(self, task_id: int, ranges: Sequence[tuple[int, int]] | None = None, *,
                  status: str | None = None, text: str | None = None, sort: str = "id", descending: bool = False,
                  offset: int = 0, limit: int = 200) -> tuple[int, dict[str, int], int, list[tuple[Any, ...]]]:
        """One window of a live table, read from one snapshot: (sequence number, count per status of
        the task's jobs or of those in `ranges`, how many match `status` and `text`, the rows from
        `offset` on (at most `limit`, ordered by `sort` then id): (id, name, status, reason, host,
        attempts, started, ended, params as JSON text, seq, result bytes if inline and at most
        `PREVIEW_BYTES`, CPU s, peak MiB, memory asked, cores asked (the last two only when measured)).
        Bounded by the window, not the task: a million-job task costs its indexed counts and `limit`
        rows (a text filter or a sort other than by id reads every row of the view)."""
        if sort not in SORTS:
            raise LedgerError(f"a live table sorts by one of {', '.join(SORTS)}, not {sort!r}")
        if status:
            status = checked_status(status)
        order = f"{SORTS[sort]} {'DESC' if descending else 'ASC'}, j.id {'DESC' if descending else 'ASC'}"
        where_all, params_all = _where(task_id, ranges, None, None)
        view_ranges: Sequence[tuple[int, int]] | None = ranges
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            if ranges is None:  # one indexed count per status (cheaper than GROUP BY over a big task)
                counts = con.execute(COUNTS_AND_ENDS_SQL, (task_id, json.dumps(STATES))).fetchall()
                ends = [i for _, n, lo, hi in counts if n for i in (lo, hi)]
                # all of them, in id order: the task's id range by primary key (no index holds a task's ids
                # in order; one status's are, in the (task_id, status) index)
                view_ranges = None if status or not ends else [(min(ends), max(ends))]
            else:
                counts = con.execute(f"SELECT j.status, COUNT(*), 0, 0 FROM jobs j WHERE {where_all} "
                                     "GROUP BY j.status", params_all).fetchall()
            totals = {k: n for k, n, _, _ in counts if n}
            where, params = _where(task_id, view_ranges, status, text.lower() if text else None)
            if text:
                matching = con.execute(f"SELECT COUNT(*) FROM jobs j WHERE {where}", params).fetchone()[0]
            else:
                matching = totals.get(status, 0) if status else sum(totals.values())
            rows = con.execute(f"{VIEW_COLUMNS} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                               [*params, max(0, int(limit)), max(0, int(offset))]).fetchall()
        return seq, totals, matching, rows

    def view_ids(self, task_id: int, ranges: Sequence[tuple[int, int]] | None, statuses: Iterable[str] | None = None,
                 job_ids: Iterable[int] | None = None) -> list[int]:
        """The ids of a live table's jobs (a task's, or those in `ranges`) that have one of `statuses`
        (any, if None), and are among `job_ids` if given: what its buttons act on."""
        where, params = _where(task_id, ranges, None, None)
        if statuses is not None:
            where += f" AND j.status IN {IN_JSON}"
            params.append(json.dumps([checked_status(s) for s in statuses]))
        if job_ids is not None:
            where += f" AND j.id IN {IN_JSON}"
            params.append(json.dumps(checked_ids(job_ids)))
        return [i for (i,) in self._read(f"SELECT j.id FROM jobs j WHERE {where} ORDER BY j.id", params)]

    def max_seq(self) -> int:
        return int(self._read("SELECT seq FROM counter")[0][0])
