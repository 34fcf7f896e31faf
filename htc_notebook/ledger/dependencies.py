"""Dependencies between jobs: a job added with parents (`NewJob.after`) waits WAITING until every
parent SUCCEEDED; then one process releases it with its first attempt (WAITING -> SUBMITTED ->
RUNNABLE, a compare-and-set in `start_attempts`' write transaction, so across kernels and servers
of the data root it is released once). A parent
that ended without succeeding for good (FAILED, CANCELLED or LOST with no retry due) fails its
waiting children with cause `dependency`, naming it, and theirs in turn; requeueing that parent
(a retry) lets the children it failed wait again (`rearm_children`).

>>> [row.id for row in ledger.ready_rows()]  # doctest: +SKIP
[12]
>>> ledger.start_attempts([AttemptStart(12)], release_for="host:42")  # doctest: +SKIP
[1]
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence

from .connection import LedgerCore
from .encoding import checked_ids, job_row
from .rows import JobRow
from .schema import JOB_COLUMNS, REQUEST_SQL
from .statements import IN_JSON, events_per_task, next_seq

FAILED_PARENT = "status IN ('FAILED', 'CANCELLED', 'LOST')"  # ended for good: a retry due keeps a job SUBMITTED
# waiting jobs all of whose parents SUCCEEDED
READY_SQL = ("SELECT j.id, json_extract(j.spec, '$.owner') FROM jobs j WHERE j.status = 'WAITING' AND NOT EXISTS "
             "(SELECT 1 FROM deps d JOIN jobs p ON p.id = d.parent WHERE d.child = j.id AND p.status <> 'SUCCEEDED') "
             "ORDER BY j.id LIMIT ?")


def waiting_reason(parents: Sequence[int]) -> str:
    shown = ", ".join(map(str, parents[:10])) + (f" and {len(parents) - 10} more" if len(parents) > 10 else "")
    return f"waiting for job{'s' if len(parents) != 1 else ''} {shown}"


def add_parents(con: sqlite3.Connection, children: Sequence[tuple[int, Sequence[int]]]) -> None:
    """Record each child's parents (inside `add_jobs`' transaction); every parent must exist."""
    rows = [(child, parent) for child, parents in children for parent in dict.fromkeys(parents)]
    wanted = sorted({parent for _, parent in rows})
    known = {r[0] for r in con.execute(f"SELECT id FROM jobs WHERE id IN {IN_JSON}", (json.dumps(wanted),))}
    missing = [p for p in wanted if p not in known]
    if missing:
        from ..errors import LedgerError

        raise LedgerError(f"no job {missing[0]} in this ledger to depend on; nothing was submitted")
    con.executemany("INSERT INTO deps (child, parent) VALUES (?, ?)", rows)


def rearm_children(con: sqlite3.Connection, parents: list[int], seq: int, now: float) -> list[tuple[int, int]]:
    """The descendants of `parents` that FAILED for them (cause `dependency`) wait again (inside the
    transaction that requeued the parents); (job id, task id) of each."""
    return con.execute(
        f"WITH RECURSIVE down(id) AS (SELECT child FROM deps WHERE parent IN {IN_JSON} "
        f"  UNION SELECT d.child FROM deps d JOIN down ON d.parent = down.id) "
        f"UPDATE jobs SET status = 'WAITING', reason = 'waiting again: a job it depends on was retried', "
        f"       ended = NULL, updated = ?, seq = ? "
        f"WHERE id IN (SELECT id FROM down) AND status = 'FAILED' AND EXISTS (SELECT 1 FROM attempts a "
        f"  WHERE a.job_id = jobs.id AND a.number = jobs.attempts AND a.cause = 'dependency') "
        f"RETURNING id, task_id", (json.dumps(parents), now, seq)).fetchall()


def release(con: sqlite3.Connection, ids: Sequence[int], owner: str, now: float, seq: int) -> list[tuple]:
    """WAITING -> SUBMITTED, owned by `owner`, for those of `ids` still waiting with every parent
    SUCCEEDED (a compare-and-set inside the caller's write transaction); their job rows."""
    rows = con.execute(
        f"UPDATE jobs SET status = 'SUBMITTED', reason = 'the jobs it depends on succeeded', updated = ?, "
        f"       seq = ?, spec = json_set(spec, '$.owner', ?) "
        f"WHERE id IN {IN_JSON} AND status = 'WAITING' AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs p "
        f"  ON p.id = d.parent WHERE d.child = jobs.id AND p.status <> 'SUCCEEDED') "
        f"RETURNING {JOB_COLUMNS}", (now, seq, owner, json.dumps(list(ids)))).fetchall()
    events_per_task(con, [(r[0], r[1]) for r in rows], now, "released", "the jobs it depends on succeeded")
    return rows


class Dependencies(LedgerCore):
    """Jobs waiting for others: which are ready, releasing them once, failing them for a parent."""

    def ready_rows(self, limit: int = 1000) -> list[JobRow]:
        """The rows of waiting jobs whose parents all SUCCEEDED, oldest first (a read: they are
        released with their first attempt, `start_attempts(..., release_for=owner)`)."""
        return [job_row(r) for r in self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT id FROM ({READY_SQL})) ORDER BY id", (limit,))]

    def fail_dependents(self) -> list[tuple[int, int]]:
        """Fail (cause `dependency`) every waiting job a parent of which ended without succeeding, and
        theirs in turn; (job id, attempt) of each. The failure is recorded as an attempt that never ran."""
        failed: list[tuple[int, int]] = []
        if not self._read(f"SELECT 1 FROM jobs j JOIN deps d ON d.child = j.id JOIN jobs p ON p.id = d.parent "
                          f"WHERE j.status = 'WAITING' AND p.{FAILED_PARENT} LIMIT 1"):
            return failed  # the usual case, read without taking the write lock
        now = time.time()
        with self._write() as con:
            seq = None
            while True:
                found = con.execute(
                    f"SELECT j.id, j.task_id, j.attempts + 1, p.id, p.status, p.reason FROM jobs j "
                    f"JOIN deps d ON d.child = j.id JOIN jobs p ON p.id = d.parent "
                    f"WHERE j.status = 'WAITING' AND p.{FAILED_PARENT} GROUP BY j.id").fetchall()
                if not found:
                    break
                seq = seq if seq is not None else next_seq(con)
                for job_id, _task, number, parent, status, why in found:
                    reason = f"job {parent}, which it depends on, ended {status}" + (f" ({why})" if why else "")
                    con.execute(f"INSERT INTO attempts (job_id, number, status, reason, ended, cause, request) "
                                f"SELECT id, ?, 'FAILED', ?, ?, 'dependency', {REQUEST_SQL} FROM jobs WHERE id = ?",
                                (number, reason, now, job_id))
                    con.execute("UPDATE jobs SET status = 'FAILED', reason = ?, attempts = ?, ended = ?, updated = ?, "
                                "seq = ? WHERE id = ?", (reason, number, now, now, seq, job_id))
                    failed.append((job_id, number))
                events_per_task(con, [(r[0], r[1]) for r in found], now, "failed", "a job it depends on did not "
                                "succeed")
        return failed

    def parents(self, job_id: int) -> list[int]:
        return [r[0] for r in self._read("SELECT parent FROM deps WHERE child = ? ORDER BY parent", (job_id,))]

    def children(self, job_id: int) -> list[int]:
        return [r[0] for r in self._read("SELECT child FROM deps WHERE parent = ? ORDER BY child", (job_id,))]

    def edges(self, job_ids: Iterable[int]) -> list[tuple[int, int]]:
        """(parent, child) of every dependency of these jobs (as child or as parent)."""
        ids = json.dumps(checked_ids(job_ids))
        return [(int(p), int(c)) for p, c in self._read(
            f"SELECT parent, child FROM deps WHERE child IN {IN_JSON} UNION "
            f"SELECT parent, child FROM deps WHERE parent IN {IN_JSON} ORDER BY 2, 1", (ids, ids))]

    def has_waiting(self) -> bool:
        """Does any job of the data root wait for others (an index look-up)."""
        return bool(self._read("SELECT 1 FROM jobs WHERE status = 'WAITING' LIMIT 1"))
