"""Attempts: starting them (admitted into the project's vCPU limit, project_rules.admit) and
recording how they ended; a result is committed exactly once (G2), SUCCEEDED is final (G3)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence

from ..errors import LedgerError
from ..states import ACTIVE, CAUSES, REQUEUE_CAUSES, TERMINAL, Cause, JobStatus, Outcome
from .connection import LedgerCore
from .dependencies import release, send_behind
from .encoding import checked_status
from .project_rules import admit
from .rows import AttemptStart
from .schema import ATTEMPT_COLUMNS, REQUEST_SQL, TERMINAL_SQL, sql_list
from .statements import IN_JSON, event, many, next_seq


# a job sent behind its parents just now (SLURM afterok, or its session's dask cluster): its reason says so
SENT_NOW = "jobs.status = 'SUBMITTED' AND json_extract(jobs.spec, '$.afterok') IS NOT NULL"


class Attempts(LedgerCore):
    """`start_attempts` and `record_outcomes`."""

    def start_attempts(self, items: Sequence[AttemptStart], room: tuple[str, int] | None = None, *,
                       release_for: str | None = None,
                       behind: Mapping[int, tuple[str, Sequence[str]]] | None = None) -> list[int]:
        """Begin a new attempt for each job; returns attempt numbers (0 for jobs already terminal).

        `room` = (project, vCPU limit): only the jobs that fit in the project's limit start (in
        order, counted in this write transaction, so processes sharing the ledger never exceed
        it together); the others wait HELD for room, and get 0. With `release_for` (an owner), the
        jobs are waiting ones (`ready_rows`): those still WAITING with every parent SUCCEEDED are
        released to that owner in the same transaction (a compare-and-set, `dependencies.release`: of
        many processes, one gets each); the others get 0. With `behind` as well (job id -> (reason,
        its parents' native ids)), they are instead sent behind their parents in that owner's dask
        cluster (`Dependencies.send_after(..., in_session=True)`), in the same transaction."""
        items = list(items)
        canonical = {s: checked_status(s) for s in {it.status for it in items}}  # each distinct status checked once
        for status in canonical.values():
            if JobStatus(status) not in ACTIVE:
                raise LedgerError(f"an attempt starts in an active state, not {status}")
        now = time.time()
        asked = items
        with self._write() as con:
            seq = next_seq(con)
            if release_for is not None:
                released = {r[0] for r in (send_behind(con, behind, release_for, True, now, seq) if behind is not None
                                           else release(con, [it.job_id for it in items], release_for, now, seq))}
                items = [it for it in items if it.job_id in released]
            if room is not None:
                items = admit(con, items, room, now, seq)
            # bump every live job (many rows a statement), reading back the ones this transaction moved
            # (u.column1..9: job id, status, host, native id, log out, log err, now, seq, sandbox)
            numbers = dict(many(
                con, f"UPDATE jobs SET attempts = attempts + 1, status = u.column2, exit_code = NULL, "
                     f"       reason = CASE WHEN {SENT_NOW} THEN jobs.reason END, "  # what it waits behind
                     f"       cpu_s = NULL, max_rss_mib = NULL, memory_held = NULL, host = u.column3, "
                     f"       native_id = u.column4, log_out = u.column5, log_err = u.column6, "
                     f"       ended = NULL, started = CASE WHEN u.column2 = 'RUNNING' THEN u.column7 END, "
                     f"       updated = u.column7, seq = u.column8, sandbox = u.column9 "
                     f"FROM (VALUES {{values}}) AS u WHERE jobs.id = u.column1 AND jobs.status NOT IN ({TERMINAL_SQL}) "
                     f"RETURNING jobs.id, jobs.attempts", "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(it.job_id, canonical[it.status], it.host, it.native_id, it.log_out, it.log_err, now, seq, it.sandbox)
                 for it in {it.job_id: it for it in items}.values()]))  # a job twice: one attempt
            ids = json.dumps([it.job_id for it in items])
            con.execute(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}, sandbox, request) "
                f"SELECT id, attempts, status, NULL, host, native_id, NULL, started, NULL, log_out, log_err, sandbox, "
                f"       {REQUEST_SQL} FROM jobs WHERE id IN {IN_JSON} AND seq = ?", (ids, seq))
        return [numbers.get(it.job_id, 0) for it in asked]

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Commit how attempts ended; returns the ids whose job row changed.

        SUCCEEDED is accepted from any attempt unless the job already SUCCEEDED (then it is a
        no-op: the result is committed exactly once, G2). Other outcomes apply only to a job
        that is not terminal and whose current attempt is not newer than the outcome's.
        """
        prepared = [(o, *_prepare_outcome(o)) for o in outcomes]
        committed: list[int] = []
        # a failure that may be retried (not the job's fault, or the policy allows retries) leaves the
        # job SUBMITTED with its retry due at once, for the reconcile loop to decide (runtime/reconcile.py);
        # it has not ended, so waiting goes on and a cancel still stops it
        retryable = (f":s <> 'CANCELLED' AND ((:c IN ({sql_list(REQUEUE_CAUSES)}) "
                     f"AND COALESCE(json_extract(spec, '$.retry.requeues'), 1) > 0) "
                     f"OR json_extract(spec, '$.retry.retries') > 0)")
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            successes = [p for p in prepared if p[1] == JobStatus.SUCCEEDED]
            if successes:
                committed += _record_successes(con, successes, now, seq)
            for o, status, _size in prepared:
                if status == JobStatus.SUCCEEDED:
                    continue
                p = {"id": o.job_id, "a": o.attempt, "s": status, "r": o.reason, "x": o.exit_code,
                     "h": o.host, "st": o.started, "en": o.ended if o.ended is not None else now,
                     "now": now, "seq": seq, "c": _cause(o, status), "cpu": o.cpu_s, "rss": o.max_rss_mib,
                     "held": o.memory_held}
                # a non-success outcome never overrides a terminal job, a newer attempt, or a
                # verdict already recorded for this attempt (outcomes are idempotent)
                guard = (f"status NOT IN ({TERMINAL_SQL}) AND attempts <= :a AND NOT EXISTS "
                         f"(SELECT 1 FROM attempts WHERE job_id = :id AND number = :a "
                         f" AND status IN ({TERMINAL_SQL}))")
                row = con.execute(
                    f"UPDATE jobs SET status = CASE WHEN {retryable} THEN 'SUBMITTED' ELSE :s END, "
                    f"       reason = CASE WHEN {retryable} THEN 'attempt ' || :a || ' ended ' || :s || "
                    f"                ', a retry is being decided: ' || COALESCE(:r, 'no reason recorded') "
                    f"                ELSE :r END, "
                    f"       exit_code = :x, host = COALESCE(:h, host), cpu_s = :cpu, max_rss_mib = :rss, "
                    f"       memory_held = :held, "
                    f"       attempts = MAX(attempts, :a), started = COALESCE(:st, started), ended = :en, "
                    f"       updated = :now, seq = :seq, retry_at = CASE WHEN {retryable} THEN :en END "
                    f"WHERE id = :id AND {guard} RETURNING task_id, host, native_id, COALESCE(log_err, log_out)",
                    p).fetchone()
                # finish the attempt row if still open
                con.execute(
                    f"UPDATE attempts SET status = :s, reason = :r, exit_code = :x, host = COALESCE(:h, host), "
                    f"       started = COALESCE(:st, started), ended = :en, cause = :c, cpu_s = :cpu, "
                    f"       max_rss_mib = :rss, memory_held = :held "
                    f"WHERE job_id = :id AND number = :a AND status NOT IN ({TERMINAL_SQL})", p)
                if row is None:
                    continue
                task_id, host, native_id, log = row
                con.execute(  # an outcome for an attempt that start_attempts never saw
                    f"INSERT OR IGNORE INTO attempts ({ATTEMPT_COLUMNS}, cause, cpu_s, max_rss_mib, memory_held, "
                    f"                                   request) "
                    f"SELECT id, :a, :s, :r, host, native_id, :x, :st, :en, log_out, log_err, :c, :cpu, :rss, :held, "
                    f"       {REQUEST_SQL} "
                    f"FROM jobs WHERE id = :id", p)
                details = ", ".join(f"{k} {v}" for k, v in (("exit code", o.exit_code), ("host", host),
                                                            ("native id", native_id), ("log", log))
                                    if v is not None)
                event(con, task_id, o.job_id, now, status.lower(),
                       f"attempt {o.attempt} {status}: {o.reason or 'no reason recorded'}"
                       + (f" ({details})" if details else ""))
                committed.append(o.job_id)
        return committed

def _record_successes(con: sqlite3.Connection, successes: list, now: float, seq: int) -> list[int]:
    """Commit SUCCEEDED outcomes set-based (the hot path of big sweeps); returns the ids committed.

    SUCCEEDED is accepted from any attempt unless the job already SUCCEEDED; the first success
    of a job wins, later ones (in this call or after) are no-ops (G2).
    """
    ids = json.dumps([o.job_id for o, _, _ in successes])
    open_ids = {r[0] for r in con.execute(f"SELECT id FROM jobs WHERE id IN {IN_JSON} AND status <> 'SUCCEEDED'",
                                          (ids,))}
    first: dict[int, tuple] = {}
    for o, _, size in successes:
        if o.job_id in open_ids and o.job_id not in first:
            first[o.job_id] = (o, size)
    rows = [(o.job_id, o.attempt, o.reason, o.exit_code, o.host, o.started,
             o.ended if o.ended is not None else now) for o, _ in first.values()]
    used = [(*r, o.cpu_s, o.max_rss_mib, o.memory_held) for r, (o, _) in zip(rows, first.values(), strict=True)]
    con.executemany(
        "UPDATE jobs SET status = 'SUCCEEDED', reason = ?3, exit_code = ?4, host = COALESCE(?5, host), "
        "       attempts = MAX(attempts, ?2), started = COALESCE(?6, started), ended = ?7, "
        f"       updated = {now!r}, seq = {seq:d}, retry_at = NULL, cpu_s = ?8, max_rss_mib = ?9, "
        "       memory_held = ?10 WHERE id = ?1",
        used)
    # finish the attempt row (or correct an earlier verdict), or add it if start_attempts never saw it
    con.executemany(
        "UPDATE attempts SET status = 'SUCCEEDED', reason = ?3, exit_code = ?4, host = COALESCE(?5, host), "
        "       started = COALESCE(?6, started), ended = ?7, cause = NULL, cpu_s = ?8, max_rss_mib = ?9, "
        "       memory_held = ?10 "
        "WHERE job_id = ?1 AND number = ?2 AND status <> 'SUCCEEDED'", used)
    con.executemany(
        f"INSERT OR IGNORE INTO attempts ({ATTEMPT_COLUMNS}, cpu_s, max_rss_mib, memory_held, request) "
        "SELECT id, ?2, 'SUCCEEDED', ?3, host, native_id, ?4, ?6, ?7, log_out, log_err, ?8, ?9, ?10, "
        f"       {REQUEST_SQL} FROM jobs WHERE id = ?1", used)
    con.executemany("INSERT INTO results (job_id, attempt, inline, path, size, created) VALUES (?, ?, ?, ?, ?, ?)",
                    [(o.job_id, o.attempt, o.result, o.result_path, size, now)
                     for o, size in first.values() if size is not None])
    # its logs to pack (storage/log_packs.py), unless its call wrote none (schema's LOG_QUEUE_TRIGGER_V14)
    con.executemany(f"INSERT OR REPLACE INTO log_queue (job_id, ended) SELECT id, {now!r} FROM jobs "
                    "WHERE id = ? AND log_out IS NOT NULL", [(o.job_id,) for o, _ in first.values()
                                                             if o.logged is not False])
    return list(first)


def _cause(o: Outcome, status: str) -> str | None:
    """Why an attempt failed: what the backend said, else what its status implies."""
    if o.cause is not None:  # checked by _prepare_outcome
        return str(o.cause)
    if status == JobStatus.FAILED:  # backends' convention: a time limit's verdict starts with "timeout"
        return (Cause.TIMEOUT if (o.reason or "").startswith("timeout") else Cause.EXIT).value
    return Cause.LOST.value if status == JobStatus.LOST else None


def _prepare_outcome(o: Outcome) -> tuple[str, int | None]:
    """Validate an outcome before the transaction; returns (status, result size or None)."""
    status = checked_status(o.status)
    if JobStatus(status) not in TERMINAL:
        raise LedgerError(f"job {o.job_id}: an outcome is a terminal status, not {status}")
    if o.cause is not None and o.cause not in CAUSES:
        raise LedgerError(f"job {o.job_id}: cause {o.cause!r} is not one of {', '.join(sorted(CAUSES))}")
    if status != JobStatus.SUCCEEDED:
        return status, None
    if o.result is not None and o.result_path is not None:
        raise LedgerError(f"job {o.job_id}: give the result inline or as a path, not both")
    if o.result is not None:
        if not isinstance(o.result, (bytes, bytearray, memoryview)):
            raise LedgerError(f"job {o.job_id}: an inline result is bytes, not {type(o.result).__name__}")
        return status, len(o.result)
    if o.result_path is not None:
        try:
            return status, os.stat(o.result_path).st_size
        except OSError as e:
            raise LedgerError(f"job {o.job_id}: result file {o.result_path} cannot be read: {e}") from e
    return status, None
