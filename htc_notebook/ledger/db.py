"""The Ledger: one SQLite file (WAL) holding projects, tasks, jobs, attempts, events, results.

Every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers (threads or processes)
queue on the database lock instead of failing halfway. State rules (G3: SUCCEEDED is final;
active-state updates never touch terminal jobs) live in the SQL WHERE clauses, with a trigger
as a last line of defence.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import KeyTaken, LedgerError
from ..spec import JobSpec
from .project_rules import ProjectRules, admit
from ..states import ACTIVE, CAUSES, REQUEUE_CAUSES, REQUEUEABLE, TERMINAL, Cause, JobStatus, Outcome
from .rows import (AttemptRow, AttemptStart, BatchRow, EventRow, JobRow, NewBatch, NewJob, ProjectRow, ResultRow,
                   TaskRow)
from .schema import (ACTIVE_SQL, ATTEMPT_COLUMNS, ATTEMPT_READ, DDL, JOB_COLUMNS, LEASES_DDL, PRAGMAS,
                     REQUEST_SQL, SCHEMA_VERSION, TERMINAL_SQL, V1_STATUSES, V3_UPGRADE,
                     V4_UPGRADE, V5_UPGRADE, V6_UPGRADE, V7_UPGRADE, V8_UPGRADE, V9_UPGRADE, sql_list)

T = TypeVar("T")
PREVIEW_BYTES = 512  # results this small come with `view_changes` rows, for table previews
LOCK_WAIT = 60.0  # seconds a writer waits for the database lock before giving up
KINDS = ("python", "command")
LIFECYCLES = ("ACTIVE", "ARCHIVED")
REQUEUEABLE_SQL = sql_list(REQUEUEABLE)
# A list of ids or keys is passed as one JSON parameter and expanded by json_each, so inputs of
# any size fit in one statement (no SQLITE_MAX_VARIABLE_NUMBER chunking needed).
IN_JSON = "(SELECT value FROM json_each(?))"
# a job whose retry after a given attempt still waits (job id, attempt number): what the retry methods change
RETRY_PENDING = "id = ? AND attempts = ? AND retry_at IS NOT NULL AND status = 'SUBMITTED'"
# what a job's last attempt used and what it asked for, for live tables (the spec is read only when measured)
USED_SQL = ("j.cpu_s, j.max_rss_mib, "
            "CASE WHEN j.cpu_s IS NOT NULL OR j.max_rss_mib IS NOT NULL THEN json_extract(j.spec, '$.memory') END, "
            "CASE WHEN j.cpu_s IS NOT NULL THEN json_extract(j.spec, '$.cores') END")
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _create_private(path: Path) -> None:
    """Make the ledger file 0600 if it is not there (SQLite's -wal and -shm take its mode). Only when
    missing: closing any descriptor of a database file drops every POSIX lock this process holds on
    it, which SQLite's connections in other threads rely on (it answers "disk I/O error")."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


class Ledger(ProjectRules):
    """The durable truth. Safe for many threads (one connection each) and many processes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._con()  # open now: errors surface here, and the schema exists afterwards

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # --- connections and transactions ----------------------------------------------------

    def _con(self) -> sqlite3.Connection:
        if self._closed:
            raise LedgerError(f"ledger {self.path} is closed")
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():  # new thread, or a forked child
            con = self._open()
            self._local.con, self._local.pid = con, os.getpid()
            with self._lock:
                self._connections.append(con)
        return con

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
            con = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None,
                                  check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from e
        try:
            for pragma in PRAGMAS:
                def run(p: str = pragma) -> list[Any]:
                    return con.execute(p).fetchall()
                _retry(run, self.path)
            self._ensure_schema(con)
        except BaseException as e:
            con.close()
            if isinstance(e, LedgerError):
                raise LedgerError(f"cannot open ledger {self.path}: {e.__cause__ or e}") from e
            raise
        return con

    def _ensure_schema(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        _retry(lambda: con.execute("BEGIN IMMEDIATE"), self.path)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version == 0:
                for statement in DDL:
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif 1 <= version < SCHEMA_VERSION:
                if version == 1:
                    _upgrade_v1(con)
                for statement in ((V3_UPGRADE if version < 3 else ()) + (V4_UPGRADE if version < 4 else ())
                                  + (V5_UPGRADE if version < 5 else ()) + (V6_UPGRADE if version < 6 else ())
                                  + (V7_UPGRADE if version < 7 else ()) + (V8_UPGRADE if version < 8 else ())
                                  + V9_UPGRADE):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:  # equal: another process made it while we waited for the lock
                raise LedgerError(f"schema version {version}, this htc_notebook understands "
                                  f"{SCHEMA_VERSION}; upgrade htc_notebook or use another data root")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        con = self._con()
        _retry(lambda: con.execute("BEGIN IMMEDIATE"), self.path)
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise LedgerError(f"ledger {self.path}: {e}") from e
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent state."""
        con = self._con()
        try:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}") from e

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._con().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}") from e

    def close(self) -> None:
        """Close every thread's connection; the Ledger cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for con in self._connections:
                con.close()
            self._connections.clear()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- projects and tasks --------------------------------------------------------------

    def project(self, name: str) -> ProjectRow:
        """Get or create a project."""
        _check_text("project name", name)
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO projects (name, created) VALUES (?, ?)", (name, time.time()))
            return ProjectRow(*con.execute("SELECT name, created FROM projects WHERE name = ?",
                                           (name,)).fetchone())

    def projects(self) -> list[ProjectRow]:
        return [ProjectRow(*r) for r in self._read("SELECT name, created FROM projects ORDER BY name")]

    def task(self, project: str, name: str) -> TaskRow:
        """Get or create a task (and its project)."""
        _check_text("project name", project)
        _check_text("task name", name)
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

    # --- submitting ----------------------------------------------------------------------

    def add_jobs(self, task_id: int, jobs: Sequence[NewJob], batch: NewBatch | None = None) -> list[int]:
        """Insert jobs as SUBMITTED in one transaction; returns their ids in input order.

        A key already used in this task (or twice in `jobs`) raises LedgerError naming it, and
        nothing is inserted.
        """
        jobs = list(jobs)
        specs: dict[int, str] = {}  # id(spec) -> JSON: a batch's jobs share one spec, encoded once
        encoded = [_encode_job(j, specs) for j in jobs]  # validate everything before touching the db
        keys = [j.key for j in jobs if j.key is not None]
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise LedgerError(f"duplicate job key {key!r} in one submission; keys are unique per task")
            seen.add(key)
        batch_row = _encode_batch(batch) if batch is not None else None
        if not jobs and batch is None:
            return []
        now = time.time()
        with self._write() as con:
            _require_task(con, task_id)
            seq = _next_seq(con)
            batch_id = None
            if batch_row is not None:
                batch_id = con.execute(
                    "INSERT INTO batches (task_id, name, size, definition, tags, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (task_id, *batch_row, now)).lastrowid
            # We hold the write lock, so ids from MAX(id)+1 on are ours: no per-row round trips.
            first = con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()[0]
            ids = list(range(first, first + len(jobs)))
            try:
                _many(con, "INSERT INTO jobs (id, task_id, batch_id, idx, key, name, kind, profile, priority, "
                           "                  params, spec, status, created, updated, seq) VALUES {values}",
                      "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'SUBMITTED', ?, ?, ?)",
                      [(job_id, task_id, batch_id, *row, now, now, seq)
                       for job_id, row in zip(ids, encoded, strict=True)])
            except sqlite3.IntegrityError as e:
                taken = con.execute(f"SELECT key FROM jobs WHERE task_id = ? AND id < ? AND key IN {IN_JSON} "
                                    f"ORDER BY id LIMIT 1", (task_id, first, json.dumps(keys))).fetchone()
                if taken is None:
                    raise
                raise KeyTaken(f"job key {taken[0]!r} already exists in task {task_id}; "
                               "nothing was submitted") from e
            what = f"batch {batch.name!r}: " if batch is not None else ""
            _event(con, task_id, ids[0] if len(ids) == 1 else None, now, "submitted",
                   f"{what}{len(ids)} job{'s' if len(ids) != 1 else ''} submitted")
        return ids

    def jobs_by_key(self, task_id: int, keys: Iterable[str]) -> dict[str, JobRow]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND key IN {IN_JSON}",
                          (task_id, json.dumps(list(keys))))
        return {job.key: job for job in map(_job, rows) if job.key is not None}

    # --- state changes -------------------------------------------------------------------

    def requeue(self, job_ids: Iterable[int], reason: str, owner: str | None = None) -> list[int]:
        """FAILED/CANCELLED/LOST -> SUBMITTED, owned by `owner` from now on (if given: the process
        that will run them). Returns the ids moved; SUCCEEDED never moves."""
        ids = _ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = _next_seq(con)
            moved = con.execute(
                f"UPDATE jobs SET status = 'SUBMITTED', reason = ?, exit_code = NULL, cpu_s = NULL, "
                f"       max_rss_mib = NULL, memory_held = NULL, host = NULL, native_id = NULL, started = NULL, "
                f"       ended = NULL, updated = ?, seq = ?, retry_at = NULL, "
                f"       spec = CASE WHEN ? IS NULL THEN spec ELSE json_set(spec, '$.owner', ?) END "
                f"WHERE id IN {IN_JSON} AND status IN ({REQUEUEABLE_SQL}) "
                f"RETURNING id, task_id", (reason, now, seq, owner, owner, json.dumps(ids))).fetchall()
            _events_per_task(con, moved, now, "requeued", reason)
        return _in_order(ids, moved)

    def set_status(self, job_ids: Iterable[int], status: str, reason: str | None = None, *,
                   host: str | None = None, native_id: str | None = None) -> int:
        """Move jobs between active states; terminal jobs are never touched.

        Sets `started` on the first move to RUNNING. Rows already in exactly this state are left
        alone (no seq bump). Returns the number of jobs changed.
        """
        return self.set_statuses([(job_ids, status, reason, host, native_id)])

    def set_statuses(self, updates: Sequence[tuple[Iterable[int], str, str | None, str | None, str | None]]) -> int:
        """Several `set_status` calls, (job_ids, status, reason, host, native_id) each, in ONE transaction."""
        prepared = []
        for job_ids, status, reason, host, native_id in updates:
            status = _status(status)
            if JobStatus(status) not in ACTIVE:
                raise LedgerError(f"set_status only moves jobs between active states ({ACTIVE_SQL}); "
                                  f"use record_outcomes or cancel for {status}")
            prepared.append((_ids(job_ids), status, reason, host, native_id))
        total = 0
        with self._write() as con:
            seq = _next_seq(con)
            for ids, status, reason, host, native_id in prepared:
                total += self._set_status(con, seq, ids, status, reason, host, native_id)
        return total

    @staticmethod
    def _set_status(con: sqlite3.Connection, seq: int, ids: list[int], status: str, reason: str | None,
                    host: str | None, native_id: str | None) -> int:
        now = time.time()
        p = {"s": status, "r": reason, "h": host, "n": native_id, "now": now, "seq": seq, "ids": json.dumps(ids)}
        changed = con.execute(
            f"UPDATE jobs SET status = :s, reason = :r, host = COALESCE(:h, host), "
            f"       native_id = COALESCE(:n, native_id), updated = :now, seq = :seq, "
            f"       started = CASE WHEN :s = 'RUNNING' AND started IS NULL THEN :now ELSE started END "
            f"WHERE id IN (SELECT value FROM json_each(:ids)) AND status NOT IN ({TERMINAL_SQL}) "
            f"  AND (status IS NOT :s OR reason IS NOT :r "
            f"       OR (:h IS NOT NULL AND host IS NOT :h) "
            f"       OR (:n IS NOT NULL AND native_id IS NOT :n)) "
            f"RETURNING id", p).fetchall()
        if changed and status != JobStatus.SUBMITTED:
            # keep the current attempt's row in step with its job
            con.execute(
                f"UPDATE attempts SET status = :s, host = COALESCE(:h, host), "
                f"       native_id = COALESCE(:n, native_id), "
                f"       started = CASE WHEN :s = 'RUNNING' AND started IS NULL THEN :now ELSE started END "
                f"WHERE status NOT IN ({TERMINAL_SQL}) AND (job_id, number) IN "
                f"      (SELECT id, attempts FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)))",
                {**p, "ids": json.dumps([r[0] for r in changed])})
        return len(changed)

    def start_attempts(self, items: Sequence[AttemptStart], room: tuple[str, int] | None = None) -> list[int]:
        """Begin a new attempt for each job; returns attempt numbers (0 for jobs already terminal).

        `room` = (project, vCPU limit): only the jobs that fit in the project's limit start (in
        order, counted in this write transaction, so processes sharing the ledger never exceed
        it together); the others wait HELD for room, and get 0."""
        items = list(items)
        canonical = {s: _status(s) for s in {it.status for it in items}}  # each distinct status checked once
        for status in canonical.values():
            if JobStatus(status) not in ACTIVE:
                raise LedgerError(f"an attempt starts in an active state, not {status}")
        now = time.time()
        asked = items
        with self._write() as con:
            seq = _next_seq(con)
            if room is not None:
                items = admit(con, items, room, now, seq)
            # bump every live job (many rows a statement), reading back the ones this transaction moved
            # (u.column1..9: job id, status, host, native id, log out, log err, now, seq, sandbox)
            numbers = dict(_many(
                con, f"UPDATE jobs SET attempts = attempts + 1, status = u.column2, reason = NULL, exit_code = NULL, "
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
            seq = _next_seq(con)
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
                _event(con, task_id, o.job_id, now, status.lower(),
                       f"attempt {o.attempt} {status}: {o.reason or 'no reason recorded'}"
                       + (f" ({details})" if details else ""))
                committed.append(o.job_id)
        return committed

    def cancel(self, job_ids: Iterable[int], reason: str = "cancelled by user") -> list[int]:
        """Active -> CANCELLED. Returns the ids cancelled (terminal jobs are left alone)."""
        ids = _ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = _next_seq(con)
            moved = con.execute(
                f"UPDATE jobs SET status = 'CANCELLED', reason = ?, ended = ?, updated = ?, seq = ?, retry_at = NULL "
                f"WHERE id IN {IN_JSON} AND status IN ({ACTIVE_SQL}) RETURNING id, task_id",
                (reason, now, now, seq, json.dumps(ids))).fetchall()
            con.execute(
                f"UPDATE attempts SET status = 'CANCELLED', reason = ?, ended = ? "
                f"WHERE status IN ({ACTIVE_SQL}) AND (job_id, number) IN "
                f"      (SELECT id, attempts FROM jobs WHERE id IN {IN_JSON})",
                (reason, now, json.dumps([r[0] for r in moved])))
            _events_per_task(con, moved, now, "cancelled", reason)
        return _in_order(ids, moved)

    def intend(self, job_ids: Iterable[int], native_id: str, reason: str) -> list[int]:
        """Record that these jobs are about to be sent to a scheduler as `native_id` (HELD until it
        answers). Returns the ids still active: a job cancelled meanwhile, by any process, is not sent."""
        ids = _ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = _next_seq(con)
            moved = con.execute(f"UPDATE jobs SET status = 'HELD', reason = ?, native_id = ?, updated = ?, seq = ? "
                                f"WHERE id IN {IN_JSON} AND status IN ({ACTIVE_SQL}) RETURNING id",
                                (reason, native_id, now, seq, json.dumps(ids))).fetchall()
        return [r[0] for r in moved]

    def claim(self, job_ids: Iterable[int], old_owner: str, new_owner: str) -> list[int]:
        """Make `new_owner` responsible for active jobs still owned by `old_owner` (compare and set:
        of two processes claiming the same jobs, one gets them). Returns the ids claimed."""
        ids = _ids(job_ids)
        with self._write() as con:
            moved = con.execute(
                f"UPDATE jobs SET spec = json_set(spec, '$.owner', ?) WHERE id IN {IN_JSON} "
                f"AND status IN ({ACTIVE_SQL}) AND json_extract(spec, '$.owner') IS ? RETURNING id, task_id",
                (new_owner, json.dumps(ids), old_owner)).fetchall()
            _events_per_task(con, moved, time.time(), "adopted", f"taken over by {new_owner} from {old_owner}")
        return _in_order(ids, moved)

    # --- retries (decided and started by runtime/reconcile.py) -----------------------------------
    # A job whose failed attempt may be retried is SUBMITTED with `retry_at` set (see record_outcomes).

    def retries_due(self, now: float, limit: int = 1000) -> list[JobRow]:
        """Jobs whose retry is due (or still to be decided) by `now`, oldest first."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE retry_at <= ? AND status = 'SUBMITTED' "
                          f"ORDER BY retry_at LIMIT ?", (now, limit))
        return [_job(r) for r in rows]

    def postpone_retry(self, job_id: int, attempt: int, due: float, reason: str) -> bool:
        """The retry of `job_id` after `attempt` is due at `due` (the reason says so); False if the job moved."""
        now = time.time()
        with self._write() as con:
            seq = _next_seq(con)
            return con.execute(f"UPDATE jobs SET retry_at = ?, reason = ?, updated = ?, seq = ? WHERE {RETRY_PENDING}",
                               (due, reason, now, seq, job_id, attempt)).rowcount == 1

    def settle_retry(self, job_id: int, attempt: int, why: str) -> bool:
        """No retry for `job_id` after `attempt`: the job ends as that attempt did, its reason says why."""
        now = time.time()
        with self._write() as con:
            seq = _next_seq(con)
            row = con.execute(
                "UPDATE jobs SET retry_at = NULL, status = a.status, reason = COALESCE(a.reason || '; ', '') || ?, "
                "       updated = ?, seq = ? FROM attempts a WHERE jobs.id = ? AND jobs.attempts = ? "
                "  AND jobs.retry_at IS NOT NULL AND jobs.status = 'SUBMITTED' AND a.job_id = jobs.id "
                "  AND a.number = jobs.attempts RETURNING jobs.task_id, jobs.status",  # RETRY_PENDING, qualified
                (why, now, seq, job_id, attempt)).fetchone()
            if row is not None:
                _event(con, row[0], job_id, now, "not retried", f"attempt {attempt} stays {row[1]}: {why}")
        return row is not None

    def requeue_retry(self, job_id: int, attempt: int, owner: str, spec: dict[str, Any], reason: str) -> bool:
        """Start the due retry of `job_id` after `attempt` (compare and set: of many processes, one
        does it): owned by `owner` from now on, with `spec` keys (memory, timeout) changed. The job is
        then dispatched by the caller."""
        now = time.time()
        patch = _json("retry spec", {**spec, "owner": owner})
        with self._write() as con:
            seq = _next_seq(con)
            row = con.execute(
                "UPDATE jobs SET reason = ?, exit_code = NULL, cpu_s = NULL, max_rss_mib = NULL, memory_held = NULL, "
                "       host = NULL, native_id = NULL, started = NULL, ended = NULL, updated = ?, seq = ?, "
                "       retry_at = NULL, "
                f"       spec = json_patch(spec, ?) WHERE {RETRY_PENDING} RETURNING task_id",
                (reason, now, seq, patch, job_id, attempt)).fetchone()
            if row is not None:
                _event(con, row[0], job_id, now, "retrying", reason)
        return row is not None

    def lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `ttl` seconds. True if `owner` holds it now; False while
        another owner's lease has not expired (of many processes asking, one holds it at a time)."""
        now = time.time()
        with self._write() as con:
            con.execute("INSERT INTO leases (name, owner, expires) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE "
                        "SET owner = ?2, expires = ?3 WHERE leases.owner = ?2 OR leases.expires < ?4",
                        (name, owner, now + ttl, now))
            return con.execute("SELECT owner FROM leases WHERE name = ?", (name,)).fetchone()[0] == owner

    def release(self, name: str, owner: str) -> None:
        """Give the lease up (if `owner` holds it), so another process takes it at once."""
        with self._write() as con:
            con.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # --- owners' heartbeat leases (runtime/owner.py) -------------------------------------------

    def renew_owner(self, owner: str, ttl: float) -> float | None:
        """Renew `owner`'s heartbeat lease for `ttl` seconds; returns when it was due to expire before
        (None: it had none). The leases of other owners that lapsed with no active job left are dropped
        in the same transaction (a lookup by the owner index for each; nothing refers to them)."""
        now = time.time()
        with self._write() as con:
            before = con.execute("SELECT expires FROM owners WHERE owner = ?", (owner,)).fetchone()
            con.execute("INSERT INTO owners (owner, expires) VALUES (?1, ?2) ON CONFLICT (owner) DO UPDATE "
                        "SET expires = ?2", (owner, now + ttl))
            con.execute(f"DELETE FROM owners WHERE expires < ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE "
                        f"json_extract(spec, '$.owner') = owners.owner AND status IN ({ACTIVE_SQL}))", (now,))
        return before[0] if before else None

    def owner_leases(self, owners: Iterable[str]) -> dict[str, float]:
        """When each of `owners`' heartbeat lease expires (an owner that never renewed one is absent)."""
        return dict(self._read(f"SELECT owner, expires FROM owners WHERE owner IN {IN_JSON}",
                               (json.dumps(list(owners)),)))

    def scheduler_jobs(self) -> list[tuple[int, int, int, str, str, int | None]]:
        """Every active job a scheduler has (native id `<array>_<task>...`, no retry pending), in every task:
        (job id, task id, attempt, native id, profile, timeout)."""
        return self._read(f"SELECT id, task_id, attempts, native_id, profile, json_extract(spec, '$.timeout') "
                          f"FROM jobs WHERE status IN ({ACTIVE_SQL}) AND native_id GLOB '[0-9]*_[0-9]*' "
                          f"AND retry_at IS NULL")

    def statuses(self, job_ids: Iterable[int]) -> dict[int, str]:
        """job id -> status, for many jobs in one query."""
        return dict(self._read(f"SELECT id, status FROM jobs WHERE id IN {IN_JSON}", (json.dumps(_ids(job_ids)),)))

    def add_event(self, task_id: int, job_id: int | None, kind: str, message: str) -> int:
        with self._write() as con:
            _require_task(con, task_id)
            return _event(con, task_id, job_id, time.time(), kind, message)

    # --- reads ---------------------------------------------------------------------------

    def job(self, job_id: int) -> JobRow:
        row = self.find_job(job_id)
        if row is None:
            raise LedgerError(f"no job {job_id}")
        return row

    def find_job(self, job_id: int) -> JobRow | None:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, task_id: int, *, status: str | Iterable[str] | None = None, batch_id: int | None = None,
             after_seq: int | None = None, after_id: int | None = None, limit: int | None = None) -> list[JobRow]:
        """A task's jobs ordered by id, optionally filtered by status, batch, change seq, or
        `id > after_id` (pages: pass the last id of the previous page)."""
        where, params = ["task_id = ?"], list[Any]([task_id])
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN {IN_JSON}")
            params.append(json.dumps([_status(s) for s in wanted]))
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
        return [_job(r) for r in self._read(sql, params)]

    def changes(self, task_id: int, after_seq: int) -> tuple[int, list[JobRow]]:
        """(max_seq, jobs changed after `after_seq`) read from one snapshot: poll with the seq returned."""
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND seq > ? ORDER BY id",
                               (task_id, after_seq)).fetchall()
        return seq, [_job(r) for r in rows]

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

    def counts(self, task_id: int) -> dict[str, int]:
        counts = {s.value: 0 for s in JobStatus}
        counts.update(self._read("SELECT status, COUNT(*) FROM jobs WHERE task_id = ? GROUP BY status",
                                 (task_id,)))
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
        the local backend's `local:...`). Reads only the rows in `status`, via (task_id, status)."""
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE task_id = ? AND status = ? AND native_id <> '' "
                              "AND substr(native_id, 1, 6) <> 'local:'", (task_id, _status(status)))[0][0])

    def job_ids(self, task_id: int, status: str | Iterable[str] | None = None) -> list[int]:
        """Ids of a task's jobs (those in `status`), ascending, from the (task_id, status) index alone."""
        if status is None:
            rows = self._read("SELECT id FROM jobs WHERE task_id = ? ORDER BY id", (task_id,))
        else:
            wanted = [status] if isinstance(status, str) else list(status)
            rows = self._read(f"SELECT id FROM jobs WHERE task_id = ? AND status IN {IN_JSON} ORDER BY id",
                              (task_id, json.dumps([_status(s) for s in wanted])))
        return [r[0] for r in rows]

    def last_jobs(self, task_id: int, limit: int) -> list[JobRow]:
        """A task's `limit` newest jobs (highest ids), oldest first."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT id FROM jobs WHERE task_id = ? "
                          f"ORDER BY id DESC LIMIT ?) ORDER BY id DESC", (task_id, limit))  # ids from an index first
        return [_job(r) for r in reversed(rows)]

    def job_at(self, batch_id: int, index: int) -> JobRow | None:
        """Job `index` of a batch. `add_jobs` gives a batch consecutive ids in index order, so the job at
        the batch's first id + `index` is looked at first (two index lookups); else the batch is searched."""
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = (SELECT MIN(id) FROM jobs WHERE batch_id = ?1) "
                          f"+ ?2 AND batch_id = ?1 AND idx = ?2", (batch_id, index))
        if not rows:
            rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ? AND idx = ? ORDER BY id LIMIT 1",
                              (batch_id, index))
        return _job(rows[0]) if rows else None

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
        return [_job(r) for r in rows]

    def view_rows(self, task_id: int, job_ids: Iterable[int] | None = None) -> tuple[int, list[tuple[Any, ...]]]:
        """`view_changes(task_id, 0)` for a live table's first load, in id order: every job of the task,
        or only `job_ids` (looked up by id, so a table of 100 jobs in a 100,000-job task reads 100 rows)."""
        where = "j.task_id = ?"
        params: list[Any] = [task_id]
        if job_ids is not None:  # `+`: look the ids up by primary key, not the task's index
            where, params = f"j.id IN {IN_JSON} AND +j.task_id = ?", [json.dumps(_ids(job_ids)), task_id]
        with self._snapshot() as con:
            seq = con.execute("SELECT seq FROM counter").fetchone()[0]
            rows = con.execute("SELECT j.id, j.name, j.status, j.reason, j.host, j.attempts, j.started, j.ended, "
                               f"       j.params, j.seq, CASE WHEN r.size <= {PREVIEW_BYTES} THEN r.inline END, "
                               f"       {USED_SQL} "
                               f"FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE {where} ORDER BY j.id",
                               params).fetchall()
        return seq, rows

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return self.attempts_of([job_id]).get(job_id, [])

    def attempts_of(self, job_ids: Iterable[int]) -> dict[int, list[AttemptRow]]:
        """Every attempt of many jobs in one query: job id -> attempts in order (jobs with none absent)."""
        rows = self._read(f"SELECT {ATTEMPT_READ} FROM attempts WHERE job_id IN {IN_JSON} ORDER BY job_id, number",
                          (json.dumps(_ids(job_ids)),))
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
                          f"WHERE job_id IN {IN_JSON}", (json.dumps(_ids(job_ids)),))
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
            "FROM limited WHERE f >= m", (json.dumps(_ids(job_ids)),))

    def active_in_batch(self, batch_id: int) -> list[int]:
        """The ids of a batch's jobs that have not ended."""
        return [r[0] for r in self._read(f"SELECT id FROM jobs WHERE batch_id = ? AND status IN ({ACTIVE_SQL})",
                                         (batch_id,))]

    def call_durations(self, job_id: int, payload: str, limit: int = 100) -> list[float]:
        """How long the last `limit` calls of `payload` that succeeded in job `job_id`'s task took
        (seconds, newest first): what a restarted kernel expects its calls to take before it has
        timed any (`DaskJobs`: a pilot near its deadline starts no call that would not fit)."""
        rows = self._read("SELECT ended - started FROM jobs WHERE task_id = (SELECT task_id FROM jobs WHERE id = ?) "
                          "AND status = 'SUCCEEDED' AND started IS NOT NULL AND ended IS NOT NULL "
                          "AND json_extract(spec, '$.payload') = ? ORDER BY id DESC LIMIT ?", (job_id, payload, limit))
        return [r[0] for r in rows]

    def max_seq(self) -> int:
        return int(self._read("SELECT seq FROM counter")[0][0])


# --- helpers ---------------------------------------------------------------------------------

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
    return list(first)


def _upgrade_v1(con: sqlite3.Connection) -> None:
    """v1 -> v2 (then v3 follows): the HELD state joins the CHECK constraints of jobs and attempts,
    and leases appear. A CHECK that admits more values changes no stored row, so the table
    definitions are edited in place (the procedure in SQLite's ALTER TABLE documentation), then the
    schema cookie is bumped and checked."""
    new = sql_list(frozenset(JobStatus))
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name IN "
                "('jobs', 'attempts')", (V1_STATUSES, new))
    con.execute(f"PRAGMA schema_version = {cookie + 1}")
    con.execute("PRAGMA writable_schema = OFF")
    problems = con.execute("PRAGMA integrity_check").fetchall()
    if problems != [("ok",)]:
        raise LedgerError(f"upgrading the ledger to schema {SCHEMA_VERSION} failed: {problems[:3]}")
    con.execute(LEASES_DDL)


def _many(con: sqlite3.Connection, sql: str, row: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run `sql` over `rows`, as many rows a statement as fit in 999 parameters: `{values}` in `sql`
    becomes `row, row, ...`. Returns what the statements return (RETURNING). Much cheaper than
    executemany for big inputs: each statement opens its tables and indexes once, not once per row."""
    if not rows:
        return []
    per = max(1, 999 // len(rows[0]))
    full = sql.replace("{values}", ", ".join([row] * per))
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), per):
        part = rows[start:start + per]
        statement = full if len(part) == per else sql.replace("{values}", ", ".join([row] * len(part)))
        out += con.execute(statement, list(chain.from_iterable(part))).fetchall()
    return out


def _retry(fn: Callable[[], T], path: Path) -> T:
    """Run fn, retrying while another connection holds the lock (beyond sqlite's busy_timeout)."""
    deadline, delay = time.monotonic() + LOCK_WAIT, 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            message = str(e).lower()
            if ("locked" in message or "busy" in message) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            raise LedgerError(f"ledger {path}: {e}") from e
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {path}: {e}") from e


def _next_seq(con: sqlite3.Connection) -> int:
    return int(con.execute("UPDATE counter SET seq = seq + 1 RETURNING seq").fetchone()[0])


def _require_task(con: sqlite3.Connection, task_id: int) -> None:
    if con.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
        raise LedgerError(f"no task {task_id}")


def _event(con: sqlite3.Connection, task_id: int, job_id: int | None, ts: float, kind: str, message: str) -> int:
    cur = con.execute("INSERT INTO events (task_id, job_id, ts, kind, message) VALUES (?, ?, ?, ?, ?)",
                      (task_id, job_id, ts, kind, message))
    return int(cur.lastrowid or 0)


def _events_per_task(con: sqlite3.Connection, moved: list[tuple[int, int]], ts: float, kind: str,
                     reason: str) -> None:
    """One event per task touched (not per job): '3 jobs cancelled: reason (jobs 4, 5, 6)'."""
    by_task: dict[int, list[int]] = {}
    for job_id, task_id in moved:
        by_task.setdefault(task_id, []).append(job_id)
    for task_id, ids in by_task.items():
        if len(ids) == 1:
            _event(con, task_id, ids[0], ts, kind, f"job {kind}: {reason}")
        else:
            shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            _event(con, task_id, None, ts, kind, f"{len(ids)} jobs {kind}: {reason} (jobs {shown})")


def _ids(job_ids: Iterable[int]) -> list[int]:
    ids = list(job_ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise LedgerError(f"job ids are integers, not {i!r}")
    return ids


def _in_order(ids: list[int], moved: list[tuple[Any, ...]]) -> list[int]:
    done = {r[0] for r in moved}
    return [i for i in dict.fromkeys(ids) if i in done]


def _status(status: str) -> str:
    try:
        return JobStatus(status).value
    except ValueError:
        raise LedgerError(f"unknown job status {status!r}; known: {', '.join(s.value for s in JobStatus)}") from None


def _check_text(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} must be a non-empty string, not {value!r}")


def _json(what: str, value: object) -> str:
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as e:
        raise LedgerError(f"{what} cannot be stored as JSON: {e}") from e


def _encode_job(job: NewJob, specs: dict[int, str] | None = None) -> tuple[Any, ...]:
    """A job's column values, validated; `specs` caches spec encodings by object identity (the
    caller keeps every job, hence every spec, alive while the cache is used)."""
    _check_text("job name", job.name)
    if job.kind not in KINDS:
        raise LedgerError(f"job {job.name!r}: kind {job.kind!r} is not one of {', '.join(KINDS)}")
    if job.key is not None and not isinstance(job.key, str):
        raise LedgerError(f"job {job.name!r}: key must be a string or None, not {job.key!r}")
    for field in ("index", "priority"):
        value = getattr(job, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise LedgerError(f"job {job.name!r}: {field} must be an integer, not {value!r}")
    spec = specs.get(id(job.spec)) if specs is not None else None
    if spec is None:
        if not isinstance(job.spec, JobSpec):
            raise LedgerError(f"job {job.name!r}: its spec is a JobSpec, not {type(job.spec).__name__}")
        spec = job.spec.to_json()
        if specs is not None:
            specs[id(job.spec)] = spec
    params = "{}" if type(job.params) is dict and not job.params else _json(f"job {job.name!r} params", job.params)
    return (job.index, job.key, job.name, job.kind, job.profile, job.priority, params, spec)


def _encode_batch(batch: NewBatch) -> tuple[Any, ...]:
    _check_text("batch name", batch.name)
    return (batch.name, batch.size, _json(f"batch {batch.name!r} definition", batch.definition),
            _json(f"batch {batch.name!r} tags", list(batch.tags)))


def _cause(o: Outcome, status: str) -> str | None:
    """Why an attempt failed: what the backend said, else what its status implies."""
    if o.cause is not None:  # checked by _prepare_outcome
        return str(o.cause)
    if status == JobStatus.FAILED:  # backends' convention: a time limit's verdict starts with "timeout"
        return (Cause.TIMEOUT if (o.reason or "").startswith("timeout") else Cause.EXIT).value
    return Cause.LOST.value if status == JobStatus.LOST else None


def _prepare_outcome(o: Outcome) -> tuple[str, int | None]:
    """Validate an outcome before the transaction; returns (status, result size or None)."""
    status = _status(o.status)
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


def _job(r: tuple[Any, ...]) -> JobRow:
    values = list(r)
    values[9], values[10] = json.loads(r[9]), _spec(r[10])  # params, spec
    return JobRow(*values)


# the jobs of a sweep or batch often share one spec: read each distinct one once
_spec = functools.lru_cache(maxsize=4096)(JobSpec.model_validate_json)
