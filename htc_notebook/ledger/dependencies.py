"""Dependencies between jobs: a job added with parents (`NewJob.after`) waits WAITING until every
parent SUCCEEDED; then one process releases it with its first attempt (WAITING -> SUBMITTED ->
RUNNABLE, a compare-and-set in `start_attempts`' write transaction, so across kernels and servers
of the data root it is released once). A parent
that ended without succeeding for good (FAILED, CANCELLED or LOST with no retry due) fails its
waiting children with cause `dependency`, naming it, and theirs in turn; requeueing that parent
(a retry) lets the children it failed wait again (`rearm_children`).

A SLURM command job whose parents SLURM already has may instead be sent at once behind them
(`send_after`: WAITING -> SUBMITTED, sbatch --dependency=afterok); if one of those parents then
ends without succeeding for good, `fail_sent_dependents` fails it (cause `dependency`, naming the
parent) for the runtime to scancel.

>>> [row.id for row in ledger.ready_rows()]  # doctest: +SKIP
[12]
>>> ledger.start_attempts([AttemptStart(12)], release_for="host:42")  # doctest: +SKIP
[1]
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence

from .connection import LedgerCore
from .encoding import checked_ids, job_row
from .rows import JobRow
from .schema import JOB_COLUMNS, REQUEST_SQL
from .statements import IN_JSON, events_per_task, next_seq

FAILED_PARENT = "status IN ('FAILED', 'CANCELLED', 'LOST')"  # ended for good: a retry due keeps a job SUBMITTED
# a job sent before its parents ended (afterok): active, not waiting in the ledger, no retry due
SENT_CHILD = "j.status IN ('SUBMITTED', 'HELD', 'RUNNABLE', 'STARTING', 'RUNNING') AND j.retry_at IS NULL"
SENT_AFTEROK = f"{SENT_CHILD} AND json_extract(j.spec, '$.afterok') IS NOT NULL"  # and it was (JobSpec.afterok)
# a parent a job may be sent behind (afterok): SUCCEEDED, or SLURM has it as an array task of its own, no retry due
IN_SLURM_OR_DONE = ("(p.status = 'SUCCEEDED' OR (p.status IN ('SUBMITTED', 'RUNNABLE', 'STARTING', 'RUNNING') "
                    "AND p.retry_at IS NULL AND p.native_id GLOB '[0-9]*_[0-9]*' "
                    "AND p.native_id NOT GLOB '*[^0-9_]*'))")
# a parent a call may be sent behind in its session's dask cluster: SUCCEEDED, or that session runs it now
IN_SESSION_OR_DONE = ("(p.status = 'SUCCEEDED' OR (p.status IN ('SUBMITTED', 'RUNNABLE', 'STARTING', 'RUNNING') "
                      "AND p.retry_at IS NULL AND p.native_id = ?))")
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


def _rewait(con: sqlite3.Connection, found: Sequence[tuple], now: float, why: str) -> None:
    """(job id, attempt, task id, native id) rows: back to WAITING, their attempt CANCELLED (never ran)."""
    if not found:
        return
    seq = next_seq(con)
    for job_id, attempt, _task, _native in found:
        con.execute("UPDATE attempts SET status = 'CANCELLED', reason = ?, ended = ? WHERE job_id = ? AND number = ? "
                    "AND status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'LOST')",
                    (f"not run: {why}; it waits in the ledger", now, job_id, attempt))
    con.execute(f"UPDATE jobs SET status = 'WAITING', reason = ?, native_id = NULL, host = NULL, started = NULL, "
                f"ended = NULL, updated = ?, seq = ?, spec = json_remove(spec, '$.afterok') WHERE id IN {IN_JSON}",
                (f"waiting again: {why}", now, seq, json.dumps([r[0] for r in found])))
    events_per_task(con, [(r[0], r[2]) for r in found], now, "waiting", why)


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


def send_behind(con: sqlite3.Connection, sends: Mapping[int, tuple[str, Sequence[str]]], owner: str,
                in_session: bool, now: float, seq: int) -> list[tuple]:
    """`Dependencies.send_after` inside the caller's write transaction (`start_attempts(..., behind=)`
    starts their attempts in the same one): the rows of the jobs sent."""
    by_reason: dict[tuple[str, str], list[int]] = {}
    for job_id, (reason, tasks) in sends.items():
        by_reason.setdefault((reason, json.dumps(list(tasks))), []).append(job_id)
    parent_ok, here = (IN_SESSION_OR_DONE, (f"local:{owner}",)) if in_session else (IN_SLURM_OR_DONE, ())
    rows: list = []
    for (reason, tasks), ids in by_reason.items():
        rows += con.execute(
            f"UPDATE jobs SET status = 'SUBMITTED', reason = ?, updated = ?, seq = ?, "
            f"       spec = json_set(spec, '$.owner', ?, '$.afterok', json(?)) "
            f"WHERE id IN {IN_JSON} AND status = 'WAITING' AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs p "
            f"  ON p.id = d.parent WHERE d.child = jobs.id AND NOT COALESCE({parent_ok}, 0)) "
            f"RETURNING {JOB_COLUMNS}",
            (reason, now, seq, owner, tasks, json.dumps(checked_ids(ids)), *here)).fetchall()
    events_per_task(con, [(r[0], r[1]) for r in rows], now, "released",
                    "sent to its session's dask cluster behind the calls it depends on" if in_session
                    else "sent to SLURM behind the jobs it depends on (afterok)")
    return rows


class Dependencies(LedgerCore):
    """Jobs waiting for others: which are ready, releasing them once, failing them for a parent."""

    def ready_rows(self, limit: int = 1000, parents: Iterable[int] | None = None) -> list[JobRow]:
        """The rows of waiting jobs whose parents all SUCCEEDED, oldest first (a read: they are
        released with their first attempt, `start_attempts(..., release_for=owner)`); with `parents`,
        only children of those (an index look-up, where the whole look reads every waiting job)."""
        if parents is None:
            return [job_row(r) for r in self._read(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT id FROM ({READY_SQL})) ORDER BY id", (limit,))]
        return [job_row(r) for r in self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id IN (SELECT child FROM deps WHERE parent IN {IN_JSON}) "
            f"AND j.status = 'WAITING' AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs p ON p.id = d.parent "
            f"WHERE d.child = j.id AND p.status <> 'SUCCEEDED') ORDER BY j.id LIMIT ?",
            (json.dumps(checked_ids(parents)), limit))]

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

    def parent_states(self, parent_ids: Iterable[int]) -> list[tuple]:
        """(id, status, kind, profile, native id, retries, mpi, retry due) of these jobs: what
        `runtime.dependencies.afterok` decides from."""
        ids = json.dumps(checked_ids(parent_ids))
        return [(r[0], r[1], r[2], r[3], r[4], int(r[5] or 0), bool(r[6]), r[7] is not None) for r in self._read(
            f"SELECT id, status, kind, profile, native_id, json_extract(spec, '$.retry.retries'), "
            f"json_extract(spec, '$.mpi') IS NOT NULL, retry_at FROM jobs WHERE id IN {IN_JSON}", (ids,))]

    def send_after(self, sends: Mapping[int, tuple[str, Sequence[str]]], owner: str, *,
                   in_session: bool = False) -> list[JobRow]:
        """WAITING -> SUBMITTED, owned by `owner`, with its reason ("waiting for jobs 12, 13 (SLURM
        afterok)") and what it goes behind (`JobSpec.afterok`): `sends` maps job id -> (reason, the
        parents' native ids). For those of these jobs still waiting each of whose parents SUCCEEDED or
        (a compare-and-set, as `release_waiting`: a parent that failed or was requeued meanwhile keeps
        it waiting) is in SLURM as an array task of its own with no retry due: they are sent to SLURM
        at once behind their parents; with `in_session`, is instead a call `owner` runs now (its
        native id `local:<owner>`), with no retry due: they are sent to `owner`'s dask cluster at
        once, behind their parents' futures. Returns their rows."""
        with self._write() as con:
            rows = send_behind(con, sends, owner, in_session, time.time(), next_seq(con))
        return [job_row(r) for r in sorted(rows)]

    def rewait_unready(self, job_ids: Iterable[int], why: str) -> list[int]:
        """Those of these jobs about to run again (SUBMITTED, no retry due: a requeue) a parent of which
        has not SUCCEEDED (a call sent behind a parent in its session's dask cluster, the two lost
        together) wait in the ledger again (WAITING), the ids moved."""
        ids = json.dumps(checked_ids(job_ids))
        query = (f"SELECT j.id, j.attempts, j.task_id, j.native_id FROM jobs j WHERE j.id IN {IN_JSON} "
                 f"AND j.status = 'SUBMITTED' AND j.retry_at IS NULL AND EXISTS (SELECT 1 FROM deps d "
                 f"JOIN jobs p ON p.id = d.parent WHERE d.child = j.id AND p.status <> 'SUCCEEDED')")
        if ids == "[]" or not self._read(query + " LIMIT 1", (ids,)):
            return []
        with self._write() as con:
            found = con.execute(query, (ids,)).fetchall()
            _rewait(con, found, time.time(), why)
        return [int(r[0]) for r in found]

    def fail_sent_dependents(self, parent_ids: Iterable[int] | None = None) -> list[tuple[int, int, int, str | None]]:
        """Fail (cause `dependency`, naming the parent) every job sent before its parents ended
        (`send_after`) a parent of which (of `parent_ids`, jobs that just ended without succeeding:
        an index look-up; None: any, a scan of every dependency) ended without succeeding for good;
        its attempt ends so. Jobs sent behind those follow; their waiting children follow in
        `fail_dependents`. (job id, attempt, task id, native id) of each, for the runtime to scancel:
        SLURM keeps such a job pending (DependencyNeverSatisfied). Such jobs carry the array tasks
        they wait for (`JobSpec.afterok`): a job a user retried alone while its parent had failed is
        not one, and runs as asked."""
        failed: list[tuple[int, int, int, str | None]] = []
        query = (f"SELECT j.id, j.task_id, MAX(j.attempts, 1), j.native_id, p.id, p.status, p.reason FROM jobs j "
                 f"JOIN deps d ON d.child = j.id JOIN jobs p ON p.id = d.parent "
                 f"WHERE {SENT_AFTEROK} AND p.{FAILED_PARENT} {{among}} GROUP BY j.id")
        among = f"AND d.parent IN {IN_JSON}"
        frontier = None if parent_ids is None else json.dumps(checked_ids(parent_ids))
        first = (query.format(among=among), (frontier,)) if frontier is not None else (query.format(among=""), ())
        if frontier == "[]" or not self._read(first[0] + " LIMIT 1", first[1]):
            return failed
        now = time.time()
        with self._write() as con:
            seq = None
            found = con.execute(*first).fetchall()
            while found:
                seq = seq if seq is not None else next_seq(con)
                for job_id, task_id, number, native, parent, status, why in found:
                    reason = (f"job {parent}, which it depends on, ended {status}" + (f" ({why})" if why else "")
                              + ("; cancelled in its session's dask cluster, where it waited behind it"
                                 if (native or "").startswith("local:")
                                 else "; cancelled in SLURM, where it waited behind it (afterok)"))
                    con.execute(f"INSERT INTO attempts (job_id, number, status, reason, ended, cause, request) "
                                f"SELECT id, ?, 'FAILED', ?, ?, 'dependency', {REQUEST_SQL} FROM jobs WHERE id = ? "
                                f"ON CONFLICT (job_id, number) DO UPDATE SET status = 'FAILED', "
                                f"reason = excluded.reason, ended = excluded.ended, cause = 'dependency'",
                                (number, reason, now, job_id))
                    con.execute("UPDATE jobs SET status = 'FAILED', reason = ?, attempts = ?, ended = ?, updated = ?, "
                                "seq = ?, retry_at = NULL WHERE id = ?", (reason, number, now, now, seq, job_id))
                    failed.append((job_id, number, task_id, native))
                events_per_task(con, [(r[0], r[1]) for r in found], now, "failed", "a job it depends on did not "
                                "succeed (cancelled in SLURM)")
                found = con.execute(query.format(among=among), (json.dumps([r[0] for r in found]),)).fetchall()
        return failed

    def rewait_sent_children(self, parent_ids: Iterable[int]) -> list[tuple[int, int, int, str | None]]:
        """The jobs sent to SLURM behind these parents (afterok), and those sent behind them, wait in
        the ledger again (WAITING): each parent is about to run again as a new SLURM job, which
        their dependency does not name. Their attempt ends CANCELLED (never ran), so a late report of
        it changes nothing. (job id, attempt, task id, native id) of each, for the runtime to scancel."""
        ids = json.dumps(checked_ids(parent_ids))
        now = time.time()
        with self._write() as con:
            found = con.execute(
                f"WITH RECURSIVE down(id) AS (SELECT j.id FROM deps d JOIN jobs j ON j.id = d.child "
                f"  WHERE d.parent IN {IN_JSON} AND {SENT_AFTEROK} "
                f"  UNION SELECT j.id FROM deps d JOIN down ON d.parent = down.id JOIN jobs j ON j.id = d.child "
                f"  WHERE {SENT_AFTEROK}) "
                f"SELECT id, attempts, task_id, native_id FROM jobs WHERE id IN (SELECT id FROM down) ORDER BY id",
                (ids,)).fetchall()
            _rewait(con, found, now, "a job it was sent behind runs again")
        return [(int(a), int(b), int(c), d) for a, b, c, d in found]

    def rewait_stale_sent(self) -> list[tuple[int, int, int, str | None]]:
        """Jobs sent behind their parents (afterok) a parent of which is neither done nor the SLURM job
        they were sent behind any longer (it runs again, and the process that requeued it did not
        live to say so) wait in the ledger again, as `rewait_sent_children` does. A scan of every
        dependency of such jobs (the reconcile loop's look once a minute)."""
        query = (f"SELECT j.id, j.attempts, j.task_id, j.native_id FROM jobs j JOIN deps d ON d.child = j.id "
                 f"JOIN jobs p ON p.id = d.parent WHERE {SENT_AFTEROK} AND p.status NOT IN ('SUCCEEDED', 'FAILED', "
                 f"'CANCELLED', 'LOST') AND (p.native_id IS NULL OR p.native_id NOT IN "
                 f"(SELECT value FROM json_each(j.spec, '$.afterok'))) GROUP BY j.id ORDER BY j.id")
        if not self._read(query + " LIMIT 1"):
            return []  # the usual case, read without taking the write lock
        with self._write() as con:
            found = con.execute(query).fetchall()
            _rewait(con, found, time.time(), "a job it was sent behind runs again")
        return [(int(a), int(b), int(c), d) for a, b, c, d in found]

    def rewait(self, job_ids: Iterable[int], why: str) -> list[int]:
        """These jobs, sent (or about to be sent) behind their parents but not run, wait in the ledger
        again (WAITING), their attempt ending CANCELLED: the ids moved (those still active)."""
        ids = json.dumps(checked_ids(job_ids))
        with self._write() as con:
            found = con.execute(f"SELECT id, attempts, task_id, native_id FROM jobs j WHERE id IN {IN_JSON} "
                                f"AND {SENT_CHILD}", (ids,)).fetchall()
            _rewait(con, found, time.time(), why)
        return [int(r[0]) for r in found]

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
