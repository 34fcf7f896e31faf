"""Submitting: new jobs (and their batch) inserted as SUBMITTED in one transaction (G1), checked as they go in,
or (`add_jobs(..., start=FirstAttempt(...))`) already in their first attempt with its attempt row, in
that same transaction; jobs that depend on others (`NewJob.after`) as WAITING, with their parents."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import KeyTaken, LedgerError, Limited
from ..spec import JobSpec
from ..states import ACTIVE, JobStatus
from .connection import LedgerCore
from .dependencies import add_parents, waiting_reason
from .encoding import check_text, checked_status, job_row, to_json
from .rows import FirstAttempt, JobRow, NewBatch, NewJob
from .schema import ATTEMPT_COLUMNS, JOB_COLUMNS, REQUEST_SQL
from .statements import IN_JSON, event, many, next_seq, require_task


KINDS = ("python", "command")


class Submission(LedgerCore):
    """`add_jobs` and the look-up of a task's jobs by key."""

    def payload(self, task_id: int, digest: str) -> bytes | None:
        """The pickled call `digest` of task `task_id`, if it is kept in the ledger."""
        rows = self._read("SELECT data FROM payloads WHERE task_id = ? AND digest = ?", (task_id, digest))
        return bytes(rows[0][0]) if rows else None

    def add_jobs(self, task_id: int, jobs: Sequence[NewJob], batch: NewBatch | None = None, *,
                 start: FirstAttempt | None = None) -> range:
        """Insert jobs as SUBMITTED in one transaction, with the calls they carry (`NewJob.stored`);
        returns their ids in input order (consecutive: a range).

        With `start`, each job that waits on no other (`NewJob.after`) is inserted already in its
        first attempt (attempt 1, `start.status`, as `start_attempts` would leave it) and its attempt
        row added, in the same transaction: all of it or nothing is recorded. A batch's runs of
        alike jobs (same name, spec, params, profile, priority, consecutive indexes, no key) go in one
        statement each, their rows made by SQLite.

        A key already used in this task (or twice in `jobs`) raises LedgerError naming it, and
        nothing is inserted. So does `start` when the task's project has a vCPU limit (`Limited`:
        admission into it is `start_attempts`' work), and a job that does not validate.

        `jobs` is read ENCODE_CHUNK jobs at a time, each chunk encoded and inserted inside the one
        transaction: a million jobs' rows are never all built at once (~0.6 kB a job), nor, from a
        sequence that makes its jobs when asked (`runtime.pending.SweepJobs`), the jobs themselves.
        """
        if not isinstance(jobs, Sequence):
            jobs = list(jobs)
        batch_row = _encode_batch(batch) if batch is not None else None
        first_attempt = _check_start(start) if start is not None else None
        if not jobs and batch is None:
            return range(0)
        now = time.time()
        with self._write() as con:
            require_task(con, task_id)
            if first_attempt is not None and con.execute(
                    "SELECT 1 FROM project_limits WHERE project = (SELECT project FROM tasks WHERE id = ?) LIMIT 1",
                    (task_id,)).fetchone():  # read in this transaction: a limit set meanwhile is seen
                raise Limited(f"task {task_id}'s project has a vCPU limit: its jobs start through start_attempts' "
                              "admission, not at insert; nothing was added")
            seq = next_seq(con)
            batch_id = None
            if batch_row is not None:
                batch_id = con.execute(
                    "INSERT INTO batches (task_id, name, size, definition, tags, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (task_id, *batch_row, now)).lastrowid
            # We hold the write lock, so ids from MAX(id)+1 on are ours: no per-row round trips.
            first = con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()[0]
            ids = range(first, first + len(jobs))
            shared = (task_id, batch_id, now, seq)
            specs: set[str] = set()
            stored: dict[str, bytes] = {}
            waiting: list[tuple[int, tuple[int, ...]]] = []
            for at in range(0, len(jobs), ENCODE_CHUNK):  # a bad job fails the whole transaction
                chunk = list(jobs[at:at + ENCODE_CHUNK])  # made now, if `jobs` makes them
                keys = _unique_keys(chunk)
                segments, chunk_specs = _encode_jobs(chunk)
                specs.update(chunk_specs.values())
                try:
                    _insert_jobs(con, first + at, segments, shared, first_attempt)
                except sqlite3.IntegrityError as e:
                    why = _key_error(con, task_id, first, first + at, keys)
                    if why is None:
                        raise
                    raise why from e
                del segments
                stored.update((job.spec.payload, job.stored) for job in chunk
                              if job.stored is not None and job.spec.payload)
                waiting += [(first + at + k, job.after) for k, job in enumerate(chunk) if job.after]
            if first_attempt is not None and ids:
                _insert_first_attempts(con, ids[0], ids[-1], specs)
            if stored:
                con.executemany("INSERT OR IGNORE INTO payloads (task_id, digest, data) VALUES (?, ?, ?)",
                                [(task_id, digest, data) for digest, data in stored.items()])
            if waiting:  # apart, so a plain batch's insert stays as lean as it was
                con.executemany("UPDATE jobs SET status = 'WAITING', reason = ? WHERE id = ?",
                                [(waiting_reason(after), job_id) for job_id, after in waiting])
                add_parents(con, waiting)
            what = f"batch {batch.name!r}: " if batch is not None else ""
            event(con, task_id, ids[0] if len(ids) == 1 else None, now, "submitted",
                   f"{what}{len(ids)} job{'s' if len(ids) != 1 else ''} submitted")
        return ids

    def has_keys(self, task_id: int) -> bool:
        """Has task `task_id` any job with a key (none: no look-up by key can find one)?"""
        return bool(self._read("SELECT 1 FROM jobs WHERE task_id = ? AND key IS NOT NULL LIMIT 1", (task_id,)))

    def jobs_by_key(self, task_id: int, keys: Iterable[str]) -> dict[str, JobRow]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND key IN {IN_JSON}",
                          (task_id, json.dumps(list(keys))))
        return {job.key: job for job in map(job_row, rows) if job.key is not None}

_COLUMNS = ("id, task_id, batch_id, idx, key, name, kind, profile, priority, params, spec, status, created, "
            "updated, seq, attempts, host, native_id, log_out, log_err, started, sandbox")
ENCODE_CHUNK = 10_000  # jobs encoded and inserted at a time by add_jobs
RUN = 16  # this many alike jobs in a row, or more, are inserted by one statement that makes their rows
# a run of alike jobs: ids :id.., indexes :idx.., logs named by id (a NULL prefix: no logs)
_RUN_SQL = (f"INSERT INTO jobs ({_COLUMNS}) WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
            f"WHERE i < :count - 1) SELECT :id + i, :task, :batch, :idx + i, NULL, :name, :kind, :profile, "
            f":priority, :params, :spec, :status, :now, :now, :seq, :attempts, :host, :native, "
            f":logs || (:id + i) || '.out', :logs || (:id + i) || '.err', :started, :sandbox FROM n")


def _check_start(start: FirstAttempt) -> FirstAttempt:
    """`start` with its status canonical, checked as `start_attempts` checks one."""
    if not isinstance(start, FirstAttempt):
        raise LedgerError(f"start is a FirstAttempt, not {type(start).__name__}")
    status = checked_status(start.status)
    if JobStatus(status) not in ACTIVE:
        raise LedgerError(f"an attempt starts in an active state, not {status}")
    sandboxes = start.sandbox.values() if isinstance(start.sandbox, Mapping) else [start.sandbox]
    for what, value in (("host", start.host), ("native id", start.native_id), ("logs", start.logs),
                        *(("sandbox", v) for v in sandboxes)):
        if value is not None and not isinstance(value, str):
            raise LedgerError(f"a first attempt's {what} is a string or None, not {value!r}")
    return replace(start, status=status)


def _unique_keys(chunk: list[NewJob]) -> list[str]:
    """The keys of these jobs, none twice (a key twice in one chunk raises LedgerError naming it)."""
    keys = [j.key for j in chunk if j.key is not None]
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise LedgerError(f"duplicate job key {key!r} in one submission; keys are unique per task")
        seen.add(key)
    return keys


def _key_error(con: sqlite3.Connection, task_id: int, first: int, at: int, keys: list[str]) -> Exception | None:
    """Why a chunk's insert broke a constraint (its jobs from id `at` on, the submission's from
    `first`): a key an earlier job of the task has (KeyTaken), or one of an earlier chunk of this
    submission (LedgerError); None if no key is the cause."""
    taken = con.execute(f"SELECT key, id >= ? FROM jobs WHERE task_id = ? AND id < ? AND key IN {IN_JSON} "
                        f"ORDER BY id LIMIT 1", (first, task_id, at, json.dumps(keys))).fetchone()
    if taken is None:
        return None
    if taken[1]:
        return LedgerError(f"duplicate job key {taken[0]!r} in one submission; keys are unique per task")
    return KeyTaken(f"job key {taken[0]!r} already exists in task {task_id}; nothing was submitted")


def _insert_jobs(con: sqlite3.Connection, first: int, segments: list[list[Any]], shared: tuple[Any, ...],
                 start: FirstAttempt | None) -> None:
    """Insert the jobs' rows (ids from `first` on), started in `start` where they wait on nothing:
    runs of alike jobs (`_encode_jobs`' segments) one statement each, the others many rows a statement."""
    task_id, batch_id, now, seq = shared
    logs = start.logs if start is not None else None
    single: list[tuple[Any, ...]] = []
    for k, count, e, waits in segments:
        if start is None or waits:
            status, attempts, host, native, started, sandbox = "SUBMITTED", 0, None, None, None, None
        else:
            status, attempts, host, native = start.status, 1, start.host, start.native_id
            started = now if status == "RUNNING" else None
            sandbox = start.sandbox.get(e[4]) if isinstance(start.sandbox, Mapping) else start.sandbox
        if count >= RUN:
            con.execute(_RUN_SQL, {"count": count, "id": first + k, "task": task_id, "batch": batch_id,
                                   "idx": e[0], "name": e[2], "kind": e[3], "profile": e[4], "priority": e[5],
                                   "params": e[6], "spec": e[7], "status": status, "now": now, "seq": seq,
                                   "attempts": attempts, "host": host, "native": native,
                                   "logs": logs if attempts else None, "started": started, "sandbox": sandbox})
            continue
        for j in range(count):
            job_id = first + k + j
            out = f"{logs}{job_id}.out" if logs is not None and attempts else None
            err = f"{logs}{job_id}.err" if logs is not None and attempts else None
            single.append((job_id, e[0] + j, *e[1:], status, attempts, host, native, out, err, started, sandbox))
    many(con, f"INSERT INTO jobs ({_COLUMNS}) VALUES {{values}}",
         f"(?, {task_id:d}, {'NULL' if batch_id is None else f'{batch_id:d}'}, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
         f"{now!r}, {now!r}, {seq:d}, ?, ?, ?, ?, ?, ?, ?)", single)


def _insert_first_attempts(con: sqlite3.Connection, low: int, high: int, specs: set[str]) -> None:
    """The attempt rows of jobs `low`..`high` inserted in their first attempt, from the rows themselves;
    what the attempt asks for worked out once if they share one spec (of `specs`, those of the jobs)."""
    if len(specs) == 1:
        request = "?3"
        params: tuple[Any, ...] = (low, high, con.execute(f"SELECT {REQUEST_SQL} FROM (SELECT ? AS spec)",
                                                          (next(iter(specs)),)).fetchone()[0])
    else:
        request, params = REQUEST_SQL, (low, high)
    con.execute(f"INSERT INTO attempts ({ATTEMPT_COLUMNS}, sandbox, request) "
                f"SELECT id, 1, status, NULL, host, native_id, NULL, started, NULL, log_out, log_err, sandbox, "
                f"       {request} FROM jobs WHERE id BETWEEN ?1 AND ?2 AND attempts = 1", params)


def _encode_jobs(jobs: list[NewJob]) -> tuple[list[list[Any]], dict[int, str]]:
    """The jobs validated and encoded, as segments [k, count, values, waits]: jobs k .. k+count-1 share
    every column value (idx, key, name, kind, profile, priority, params, spec) but their indexes,
    consecutive from values[0] (a run: no key, no parents); `waits`: they depend on others. With the
    spec JSON of each distinct spec, by identity. What many jobs share (name, kind, priority, spec: a
    batch's) is checked and encoded once (every job, hence every spec, stays alive while this runs)."""
    specs: dict[int, str] = {}
    checked: set[tuple[Any, ...]] = set()
    segments: list[list[Any]] = []
    seg: list[Any] = [0, 0, (), True]
    prev: NewJob | None = None
    for k, job in enumerate(jobs):
        same = prev is not None and (job.spec is prev.spec and job.name is prev.name and job.kind is prev.kind
                                     and job.priority is prev.priority)  # then checked as the job before
        if not same:
            shape = (job.name, job.kind, job.priority, type(job.priority), id(job.spec))
            try:
                known = shape in checked
            except TypeError:  # an unhashable name or priority: checked below, and refused
                known = False
            if not known:
                specs[id(job.spec)] = _check_shape(job)
                checked.add(shape)
        prev = job
        key, index, params, after = job.key, job.index, job.params, job.after
        if key is not None and type(key) is not str and not isinstance(key, str):
            raise LedgerError(f"job {job.name!r}: key must be a string or None, not {key!r}")
        if type(index) is not int and (isinstance(index, bool) or not isinstance(index, int)):
            raise LedgerError(f"job {job.name!r}: index must be an integer, not {index!r}")
        text = "{}" if type(params) is dict and not params else to_json(f"job {job.name!r} params", params)
        e = seg[2]
        if (same and key is None and not after and not seg[3] and e[1] is None and index == e[0] + seg[1]
                and text == e[6] and job.profile == e[4]):
            seg[1] += 1
            continue
        seg = [k, 1, (index, key, job.name, job.kind, job.profile, job.priority, text, specs[id(job.spec)]),
               bool(after)]
        segments.append(seg)
    return segments, specs


def _check_shape(job: NewJob) -> str:
    """Check what a job may share with others (name, kind, priority, spec); returns its spec's JSON."""
    check_text("job name", job.name)
    if job.kind not in KINDS:
        raise LedgerError(f"job {job.name!r}: kind {job.kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(job.priority, bool) or not isinstance(job.priority, int):
        raise LedgerError(f"job {job.name!r}: priority must be an integer, not {job.priority!r}")
    if not isinstance(job.spec, JobSpec):
        raise LedgerError(f"job {job.name!r}: its spec is a JobSpec, not {type(job.spec).__name__}")
    return job.spec.to_json()


def _encode_batch(batch: NewBatch) -> tuple[Any, ...]:
    check_text("batch name", batch.name)
    return (batch.name, batch.size, to_json(f"batch {batch.name!r} definition", batch.definition),
            to_json(f"batch {batch.name!r} tags", list(batch.tags)))
