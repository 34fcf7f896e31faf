"""Retries, decided and started by runtime/reconcile.py: a job whose failed attempt may be retried is
SUBMITTED with `retry_at` set (see `Attempts.record_outcomes`); these methods change it by compare and set."""

from __future__ import annotations

import time
from typing import Any

from .connection import LedgerCore
from .encoding import job_row, to_json
from .rows import JobRow
from .schema import JOB_COLUMNS
from .statements import event, next_seq


# a job whose retry after a given attempt still waits (job id, attempt number): what the retry methods change
RETRY_PENDING = "id = ? AND attempts = ? AND retry_at IS NOT NULL AND status = 'SUBMITTED'"


class Retries(LedgerCore):
    """Due retries: listed, postponed, settled (no retry) or started."""

    def retries_due(self, now: float, limit: int = 1000) -> list[JobRow]:
        """Jobs whose retry is due (or still to be decided) by `now`, oldest first."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE retry_at <= ? AND status = 'SUBMITTED' "
                          f"ORDER BY retry_at LIMIT ?", (now, limit))
        return [job_row(r) for r in rows]

    def postpone_retry(self, job_id: int, attempt: int, due: float, reason: str) -> bool:
        """The retry of `job_id` after `attempt` is due at `due` (the reason says so); False if the job moved."""
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            return con.execute(f"UPDATE jobs SET retry_at = ?, reason = ?, updated = ?, seq = ? WHERE {RETRY_PENDING}",
                               (due, reason, now, seq, job_id, attempt)).rowcount == 1

    def settle_retry(self, job_id: int, attempt: int, why: str) -> bool:
        """No retry for `job_id` after `attempt`: the job ends as that attempt did, its reason says why."""
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            row = con.execute(
                "UPDATE jobs SET retry_at = NULL, status = a.status, reason = COALESCE(a.reason || '; ', '') || ?, "
                "       updated = ?, seq = ? FROM attempts a WHERE jobs.id = ? AND jobs.attempts = ? "
                "  AND jobs.retry_at IS NOT NULL AND jobs.status = 'SUBMITTED' AND a.job_id = jobs.id "
                "  AND a.number = jobs.attempts RETURNING jobs.task_id, jobs.status",  # RETRY_PENDING, qualified
                (why, now, seq, job_id, attempt)).fetchone()
            if row is not None:
                event(con, row[0], job_id, now, "not retried", f"attempt {attempt} stays {row[1]}: {why}")
        return row is not None

    def requeue_retry(self, job_id: int, attempt: int, owner: str, spec: dict[str, Any], reason: str) -> bool:
        """Start the due retry of `job_id` after `attempt` (compare and set: of many processes, one
        does it): owned by `owner` from now on, with `spec` keys (memory, timeout) changed. The job is
        then dispatched by the caller."""
        now = time.time()
        patch = to_json("retry spec", {**spec, "owner": owner})
        with self._write() as con:
            seq = next_seq(con)
            row = con.execute(
                "UPDATE jobs SET reason = ?, exit_code = NULL, cpu_s = NULL, max_rss_mib = NULL, memory_held = NULL, "
                "       host = NULL, native_id = NULL, started = NULL, ended = NULL, updated = ?, seq = ?, "
                "       retry_at = NULL, "
                f"       spec = json_patch(spec, ?) WHERE {RETRY_PENDING} RETURNING task_id",
                (reason, now, seq, patch, job_id, attempt)).fetchone()
            if row is not None:
                event(con, row[0], job_id, now, "retrying", reason)
        return row is not None
