"""Reads of jobs and their records: jobs by id, task, batch or owner, counts, attempts, events, results, batches."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..errors import LedgerError
from ..states import JobStatus
from .connection import LedgerCore
from .encoding import checked_ids, checked_status, job_row
from .rows import AttemptRow, BatchRow, EventRow, JobRow, ResultRow
from .schema import ACTIVE_SQL, ATTEMPT_READ, JOB_COLUMNS, QUEUED_WHERE
from .statements import IN_JSON, per_status

COUNTS_SQL = per_status("COUNT(*)")  # a task's jobs per status
CALLS_LOOKED_AT = 2000  # `call_durations` looks among this many of a task's last successes

class Reads(LedgerCore):
    """Read-only queries."""

    def scheduler_jobs(self) -> list[tuple[int, int, int, str, str, int | None]]:
        """Every active job a scheduler has (native id `<array>_<task>...`, no retry pending), in every task:
        (job id, task id, attempt, native id, profile, timeout)."""
        return self._read(f"SELECT id, task_id, attempts, native_id, profile, json_extract(spec, '$.timeout') "
                          f"FROM jobs WHERE status IN ({ACTIVE_SQL}) AND native_id GLOB '[0-9]*_[0-9]*' "
                          f"AND retry_at IS NULL")

    def statuses(self, job_ids: Iterable[int]) -> dict[int, str]:
        """job id -> status, for many jobs in one query."""
        return dict(self._read(f"SELECT id, status FROM jobs WHERE id IN {IN_JSON}",
                               (json.dumps(checked_ids(job_ids)),)))

    def first_attempts_left(self, first: int, last: int) -> set[int]:
        """Of jobs `first`..`last`, those still RUNNABLE in their first attempt (not cancelled, retried
        or ended since they were recorded so): what a sweep's feed may still hand over."""
        return {job_id for job_id, in self._read(
            "SELECT id FROM jobs WHERE id BETWEEN ? AND ? AND status = 'RUNNABLE' AND attempts = 1", (first, last))}

    def job(self, job_id: int) -> JobRow:
        row = self.find_job(job_id)
        if row is None:
            raise LedgerError(f"no job {job_id}")
        return row

    def find_job(self, job_id: int) -> JobRow | None:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return job_row(rows[0]) if rows else None

    def jobs(self, task_id: int, *, status: str | Iterable[str] | None = None, batch_id: int | None = None,
             after_seq: int | None = None, after_id: int | None = None, limit: int | None = None) -> list[JobRow]:
        """A task's jobs ordered by id, optionally filtered by status, batch, change seq, or
        `id > after_id` (pages: pass the last id of the previous page)."""
        where, params = ["task_id = ?"], list[Any]([task_id])
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN {IN_JSON}")
            params.append(json.dumps([checked_status(s) for s in wanted]))
        if batch_id is not None:
            where.append("batch_id = ?")
            params.append(batch_id)
        if after_seq is not None:
            where.append("seq > ?")
            params.append(after_seq)
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [job_row(r) for r in self._read(sql, params)]

    def counts(self, task_id: int) -> dict[str, int]:
        counts = {s.value: 0 for s in JobStatus}
        counts.update(self._read(COUNTS_SQL, (task_id, json.dumps(list(counts)))))
        return counts

    def active_images(self) -> set[str]:
        """The digests of the images jobs that have not ended run in."""
        return {d for (d,) in self._read(f"SELECT DISTINCT json_extract(spec, '$.image.digest') FROM jobs "
                                         f"WHERE status IN ({ACTIVE_SQL}) AND json_extract(spec, '$.image') "
                                         "IS NOT NULL")}

    def group_counts(self, task_id: int) -> dict[str, tuple[dict[str, int], int]]:
        """A task's jobs by name (its batches' and sweeps' groups): (count per status, how many of the
        RUNNABLE ones a scheduler knows by its own id, as `queued_count`)."""
        out: dict[str, tuple[dict[str, int], int]] = {}
        for name, status, n, queued in self._read(
                "SELECT name, status, COUNT(*), SUM(status = 'RUNNABLE' AND native_id <> '' AND "
                "substr(native_id, 1, 6) <> 'local:') FROM jobs WHERE task_id = ? GROUP BY name, status "
                "ORDER BY MIN(id)", (task_id,)):
            counts, before = out.setdefault(name, ({}, 0))
            counts[status] = n
            out[name] = (counts, before + int(queued or 0))
        return out

    # --- reads that stay fast on 100,000-job tasks (indexed; no row read that is not needed) ---

    def queued_count(self, task_id: int, status: str = "RUNNABLE") -> int:
        """A task's jobs in `status` that a scheduler knows by its own id (a native id that is not
        the local backend's `local:...`). RUNNABLE ones are counted from their own partial index
        (`jobs_queued`, which holds no local job); other states read only their rows, via (task_id, status)."""
        status = checked_status(status)
        if status == "RUNNABLE":  # the index of exactly these rows (the planner, without statistics, picks
            # (task_id, status) over it: told which)
            return int(self._read(f"SELECT COUNT(*) FROM jobs INDEXED BY jobs_queued WHERE task_id = ? AND "
                                  f"{QUEUED_WHERE}", (task_id,))[0][0])
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE task_id = ? AND status = ? AND native_id <> '' "
                              "AND substr(native_id, 1, 6) <> 'local:'", (task_id, status))[0][0])

    def job_ids(self, task_id: int, status: str | Iterable[str] | None = None) -> list[int]:
        """Ids of a task's jobs (those in `status`), ascending, from the (task_id, status) index alone."""
        if status is None:
            rows = self._read("SELECT id FROM jobs WHERE task_id = ? ORDER BY id", (task_id,))
        else:
            wanted = [status] if isinstance(status, str) else list(status)
            rows = self._read(f"SELECT id FROM jobs WHERE task_id = ? AND status IN {IN_JSON} ORDER BY id",
                              (task_id, json.dumps([checked_status(s) for s in wanted])))
        return [r[0] for r in rows]

    def last_jobs(self, task_id: int, limit: int) -> list[JobRow]:
        """A task's `limit` newest jobs (highest ids), oldest first."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT id FROM jobs WHERE task_id = ? "
                          f"ORDER BY id DESC LIMIT ?) ORDER BY id DESC", (task_id, limit))  # ids from an index first
        return [job_row(r) for r in reversed(rows)]

    def job_at(self, batch_id: int, index: int) -> JobRow | None:
        """Job `index` of a batch. `add_jobs` gives a batch consecutive ids in index order, so the job at
        the batch's first id + `index` is looked at first (two index lookups); else the batch is searched."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = (SELECT MIN(id) FROM jobs WHERE batch_id = ?1) "
                          f"+ ?2 AND batch_id = ?1 AND idx = ?2", (batch_id, index))
        if not rows:
            rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ? AND idx = ? ORDER BY id LIMIT 1",
                              (batch_id, index))
        return job_row(rows[0]) if rows else None

    def active_owners(self, task_id: int | None = None) -> dict[str | None, int]:
        """How many active jobs of a task (or of every task) each owner (the process its spec names)
        has: lets a caller reconcile only the jobs of owners that are gone instead of reading every row."""
        if task_id is None:
            return dict(self._read(f"SELECT json_extract(spec, '$.owner'), COUNT(*) FROM jobs "
                                   f"WHERE status IN ({ACTIVE_SQL}) GROUP BY 1"))
        return dict(self._read(f"SELECT json_extract(spec, '$.owner'), COUNT(*) FROM jobs "
                               f"WHERE task_id = ? AND status IN ({ACTIVE_SQL}) GROUP BY 1", (task_id,)))

    def owned_jobs(self, owner: str) -> list[JobRow]:
        """The active jobs of one owner, in every task."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ({ACTIVE_SQL}) "
                          f"AND json_extract(spec, '$.owner') = ?", (owner,))
        return [job_row(r) for r in rows]

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return self.attempts_of([job_id]).get(job_id, [])

    def attempts_of(self, job_ids: Iterable[int]) -> dict[int, list[AttemptRow]]:
        """Every attempt of many jobs in one query: job id -> attempts in order (jobs with none absent)."""
        rows = self._read(f"SELECT {ATTEMPT_READ} FROM attempts WHERE job_id IN {IN_JSON} ORDER BY job_id, number",
                          (json.dumps(checked_ids(job_ids)),))
        out: dict[int, list[AttemptRow]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(AttemptRow(*(*r[:-1], json.loads(r[-1]) if r[-1] else None)))
        return out

    def events(self, *, task_id: int | None = None, job_id: int | None = None,
               limit: int | None = None) -> list[EventRow]:
        """Events oldest first; with `limit`, the newest `limit` of them."""
        where: list[str] = []
        params: list[Any] = []
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        sql = "SELECT id, task_id, job_id, ts, kind, message FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [EventRow(*r) for r in reversed(self._read(sql, params))]

    def result(self, job_id: int) -> ResultRow | None:
        rows = self._read("SELECT job_id, attempt, inline, path, size, created FROM results WHERE job_id = ?",
                          (job_id,))
        return ResultRow(*rows[0]) if rows else None

    def results(self, job_ids: Iterable[int]) -> dict[int, ResultRow]:
        """The results of many jobs in one query (jobs without a result are absent)."""
        rows = self._read(f"SELECT job_id, attempt, inline, path, size, created FROM results "
                          f"WHERE job_id IN {IN_JSON}", (json.dumps(checked_ids(job_ids)),))
        return {r[0]: ResultRow(*r) for r in rows}

    def batches(self, task_id: int) -> list[BatchRow]:
        rows = self._read("SELECT id, task_id, name, size, definition, tags, created FROM batches "
                          "WHERE task_id = ? ORDER BY id", (task_id,))
        return [BatchRow(i, t, n, s, json.loads(d), tuple(json.loads(tags)), c) for i, t, n, s, d, tags, c in rows]

    def over_max_failures(self, job_ids: Iterable[int]) -> list[tuple[int, str, int, int]]:
        """The batches of these jobs that have a failure limit (`maxFailures` in their definition)
        and reached it: (batch id, name, limit, jobs of it that FAILED or were LOST)."""
        return self._read(
            "WITH limited AS (SELECT id, name, json_extract(definition, '$.maxFailures') AS m FROM batches "
            f"  WHERE id IN (SELECT DISTINCT batch_id FROM jobs WHERE id IN {IN_JSON}) AND m IS NOT NULL) "
            "SELECT id, name, m, (SELECT COUNT(*) FROM jobs WHERE batch_id = limited.id "
            "                     AND status IN ('FAILED', 'LOST')) AS f "
            "FROM limited WHERE f >= m", (json.dumps(checked_ids(job_ids)),))

    def active_in_batch(self, batch_id: int) -> list[int]:
        """The ids of a batch's jobs that have not ended."""
        return [r[0] for r in self._read(f"SELECT id FROM jobs WHERE batch_id = ? AND status IN ({ACTIVE_SQL})",
                                         (batch_id,))]

    def call_durations(self, job_id: int, payload: str, limit: int = 100) -> list[float]:
        """How long the last `limit` calls of `payload` that succeeded in job `job_id`'s task took
        (seconds, newest first): what a restarted kernel expects its calls to take before it has
        timed any (`DaskJobs`: a pilot near its deadline starts no call that would not fit)."""
        # among the task's last CALLS_LOOKED_AT successes only: a look costs the same in a task of any size
        rows = self._read("SELECT ended - started FROM (SELECT started, ended, spec FROM jobs WHERE task_id = "
                          "(SELECT task_id FROM jobs WHERE id = ?) AND status = 'SUCCEEDED' ORDER BY id DESC LIMIT ?) "
                          "WHERE started IS NOT NULL AND ended IS NOT NULL AND json_extract(spec, '$.payload') = ? "
                          "LIMIT ?", (job_id, CALLS_LOOKED_AT, payload, limit))
        return [r[0] for r in rows]
