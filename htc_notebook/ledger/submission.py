"""Submitting: new jobs (and their batch) inserted as SUBMITTED in one transaction (G1), checked first;
jobs that depend on others (`NewJob.after`) as WAITING, with their parents."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import KeyTaken, LedgerError
from ..spec import JobSpec
from .connection import LedgerCore
from .dependencies import add_parents, waiting_reason
from .encoding import check_text, job_row, to_json
from .rows import JobRow, NewBatch, NewJob
from .schema import JOB_COLUMNS
from .statements import IN_JSON, event, many, next_seq, require_task


KINDS = ("python", "command")


class Submission(LedgerCore):
    """`add_jobs` and the look-up of a task's jobs by key."""

    def payload(self, task_id: int, digest: str) -> bytes | None:
        """The pickled call `digest` of task `task_id`, if it is kept in the ledger."""
        rows = self._read("SELECT data FROM payloads WHERE task_id = ? AND digest = ?", (task_id, digest))
        return bytes(rows[0][0]) if rows else None

    def add_jobs(self, task_id: int, jobs: Sequence[NewJob], batch: NewBatch | None = None) -> list[int]:
        """Insert jobs as SUBMITTED in one transaction, with the calls they carry (`NewJob.stored`);
        returns their ids in input order.

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
            require_task(con, task_id)
            seq = next_seq(con)
            batch_id = None
            if batch_row is not None:
                batch_id = con.execute(
                    "INSERT INTO batches (task_id, name, size, definition, tags, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (task_id, *batch_row, now)).lastrowid
            # We hold the write lock, so ids from MAX(id)+1 on are ours: no per-row round trips.
            first = con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()[0]
            ids = list(range(first, first + len(jobs)))
            try:
                many(con, "INSERT INTO jobs (id, task_id, batch_id, idx, key, name, kind, profile, priority, "
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
            stored = {job.spec.payload: job.stored for job in jobs if job.stored is not None and job.spec.payload}
            if stored:
                con.executemany("INSERT OR IGNORE INTO payloads (task_id, digest, data) VALUES (?, ?, ?)",
                                [(task_id, digest, data) for digest, data in stored.items()])
            waiting = [(job_id, job.after) for job_id, job in zip(ids, jobs, strict=True) if job.after]
            if waiting:  # apart, so a plain batch's insert stays as lean as it was
                con.executemany("UPDATE jobs SET status = 'WAITING', reason = ? WHERE id = ?",
                                [(waiting_reason(after), job_id) for job_id, after in waiting])
                add_parents(con, waiting)
            what = f"batch {batch.name!r}: " if batch is not None else ""
            event(con, task_id, ids[0] if len(ids) == 1 else None, now, "submitted",
                   f"{what}{len(ids)} job{'s' if len(ids) != 1 else ''} submitted")
        return ids

    def jobs_by_key(self, task_id: int, keys: Iterable[str]) -> dict[str, JobRow]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ? AND key IN {IN_JSON}",
                          (task_id, json.dumps(list(keys))))
        return {job.key: job for job in map(job_row, rows) if job.key is not None}

def _encode_job(job: NewJob, specs: dict[int, str] | None = None) -> tuple[Any, ...]:
    """A job's column values, validated; `specs` caches spec encodings by object identity (the
    caller keeps every job, hence every spec, alive while the cache is used)."""
    check_text("job name", job.name)
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
    params = "{}" if type(job.params) is dict and not job.params else to_json(f"job {job.name!r} params", job.params)
    return (job.index, job.key, job.name, job.kind, job.profile, job.priority, params, spec)


def _encode_batch(batch: NewBatch) -> tuple[Any, ...]:
    check_text("batch name", batch.name)
    return (batch.name, batch.size, to_json(f"batch {batch.name!r} definition", batch.definition),
            to_json(f"batch {batch.name!r} tags", list(batch.tags)))
