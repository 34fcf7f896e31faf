"""Moving jobs between states, many at a time: active-state changes, requeue, cancel, the intent to
send to a scheduler, and claims by a new owner. Terminal jobs are never touched by an active-state
update, SUCCEEDED never moves (G3): the rules are in the WHERE clauses."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence

from ..errors import LedgerError
from ..states import ACTIVE, REQUEUEABLE, JobStatus
from .connection import LedgerCore
from .dependencies import rearm_children
from .encoding import checked_ids, checked_status
from .schema import ACTIVE_SQL, TERMINAL_SQL, sql_list
from .statements import IN_JSON, events_per_task, in_order, next_seq


REQUEUEABLE_SQL = sql_list(REQUEUEABLE)
# The jobs a move names, a table n(id, native) from one JSON parameter :named: job ids that share
# one native id (:native; None: each keeps its own), or (job id, native id) pairs.
SHARED = "(SELECT value AS id, :native AS native FROM json_each(:named)) AS n"
PAIRS = ("(SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS native "
         "FROM json_each(:named)) AS n")


class JobStates(LedgerCore):
    """Status changes of many jobs, each one write transaction."""

    def requeue(self, job_ids: Iterable[int], reason: str, owner: str | None = None) -> list[int]:
        """FAILED/CANCELLED/LOST -> SUBMITTED, owned by `owner` from now on (if given: the process
        that will run them); the jobs that failed for them (cause `dependency`) wait again. Returns
        the ids moved; SUCCEEDED never moves."""
        ids = checked_ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            moved = con.execute(
                f"UPDATE jobs SET status = 'SUBMITTED', reason = ?, exit_code = NULL, cpu_s = NULL, "
                f"       max_rss_mib = NULL, memory_held = NULL, host = NULL, native_id = NULL, started = NULL, "
                f"       ended = NULL, updated = ?, seq = ?, retry_at = NULL, "
                f"       spec = CASE WHEN ? IS NULL THEN spec ELSE json_set(spec, '$.owner', ?) END "
                f"WHERE id IN {IN_JSON} AND status IN ({REQUEUEABLE_SQL}) "
                f"RETURNING id, task_id", (reason, now, seq, owner, owner, json.dumps(ids))).fetchall()
            events_per_task(con, moved, now, "requeued", reason)
            if moved:
                rearmed = rearm_children(con, [m[0] for m in moved], seq, now)
                events_per_task(con, rearmed, now, "waiting", "a job it depends on was retried")
        return in_order(ids, moved)

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
            status = checked_status(status)
            if JobStatus(status) not in ACTIVE:
                raise LedgerError(f"set_status only moves jobs between active states ({ACTIVE_SQL}); "
                                  f"use record_outcomes or cancel for {status}")
            prepared.append((checked_ids(job_ids), status, reason, host, native_id))
        total = 0
        with self._write() as con:
            seq = next_seq(con)
            for ids, status, reason, host, native_id in prepared:
                total += self._move(con, seq, ids, None, native_id, status, reason, host)
        return total

    def set_native_ids(self, native_ids: Mapping[int, str], status: str, reason: str | None) -> int:
        """Move these jobs to `status` (an active one) with `reason`, each with its own native id (job
        id -> native id), as `set_status` would: one transaction of two statements whatever their
        number. (As one UPDATE a job, the 100,000 jobs of one sbatch took 80 s with the write lock
        held, and this process's heartbeat waited behind it.) Returns how many changed."""
        status = checked_status(status)
        if JobStatus(status) not in ACTIVE:
            raise LedgerError(f"set_native_ids only moves jobs between active states ({ACTIVE_SQL}), not to {status}")
        ids, natives = checked_ids(native_ids), [str(n) for n in native_ids.values()]
        with self._write() as con:
            return self._move(con, next_seq(con), ids, natives, None, status, reason, None)

    @staticmethod
    def _move(con: sqlite3.Connection, seq: int, ids: Sequence[int], natives: Sequence[str] | None,
              native: str | None, status: str, reason: str | None, host: str | None) -> int:
        """Jobs `ids` to `status`, `reason` and `host` (if given), with the native ids `natives` (one
        a job) or else `native` (all of them; None: each keeps its own); their current attempts with
        them. Terminal jobs, WAITING ones (only released: ledger/dependencies.py, so a report about
        one is stale) and jobs already so are left alone. Returns how many changed."""
        table = SHARED if natives is None else PAIRS

        def named(keep: set[int] | None = None) -> str:
            """:named, the jobs in `keep` (None: all): ids, or (id, native id) pairs."""
            rows: Sequence[object] = ids if natives is None else list(zip(ids, natives, strict=True))
            return json.dumps([r for i, r in zip(ids, rows, strict=True) if keep is None or i in keep])

        now = time.time()
        p = {"s": status, "r": reason, "h": host, "now": now, "seq": seq, "native": native, "named": named()}
        changed = con.execute(
            f"UPDATE jobs SET status = :s, reason = :r, host = COALESCE(:h, jobs.host), "
            f"       native_id = COALESCE(n.native, jobs.native_id), updated = :now, seq = :seq, "
            f"       started = CASE WHEN :s = 'RUNNING' AND jobs.started IS NULL THEN :now ELSE jobs.started END "
            f"FROM {table} WHERE jobs.id = n.id AND jobs.status NOT IN ({TERMINAL_SQL}) AND jobs.status <> 'WAITING' "
            f"  AND (jobs.status IS NOT :s OR jobs.reason IS NOT :r "
            f"       OR (:h IS NOT NULL AND jobs.host IS NOT :h) "
            f"       OR (n.native IS NOT NULL AND jobs.native_id IS NOT n.native)) "
            f"RETURNING jobs.id", p).fetchall()
        if changed and status != JobStatus.SUBMITTED:  # the current attempt's row in step with its job
            p["named"] = named({i for (i,) in changed})
            con.execute(
                f"UPDATE attempts SET status = :s, host = COALESCE(:h, attempts.host), "
                f"       native_id = COALESCE(n.native, attempts.native_id), "
                f"       started = CASE WHEN :s = 'RUNNING' AND attempts.started IS NULL THEN :now "
                f"                 ELSE attempts.started END "
                f"FROM {table} JOIN jobs j ON j.id = n.id "
                f"WHERE attempts.job_id = j.id AND attempts.number = j.attempts "
                f"  AND attempts.status NOT IN ({TERMINAL_SQL})", p)
        return len(changed)

    def cancel(self, job_ids: Iterable[int], reason: str = "cancelled by user") -> list[int]:
        """Active -> CANCELLED. Returns the ids cancelled (terminal jobs are left alone)."""
        ids = checked_ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            moved = con.execute(
                f"UPDATE jobs SET status = 'CANCELLED', reason = ?, ended = ?, updated = ?, seq = ?, retry_at = NULL "
                f"WHERE id IN {IN_JSON} AND status IN ({ACTIVE_SQL}) RETURNING id, task_id",
                (reason, now, now, seq, json.dumps(ids))).fetchall()
            con.execute(
                f"UPDATE attempts SET status = 'CANCELLED', reason = ?, ended = ? "
                f"WHERE status IN ({ACTIVE_SQL}) AND (job_id, number) IN "
                f"      (SELECT id, attempts FROM jobs WHERE id IN {IN_JSON})",
                (reason, now, json.dumps([r[0] for r in moved])))
            events_per_task(con, moved, now, "cancelled", reason)
        return in_order(ids, moved)

    def intend(self, job_ids: Iterable[int], native_id: str, reason: str) -> list[int]:
        """Record that these jobs are about to be sent to a scheduler as `native_id` (HELD until it
        answers). Returns the ids still active: a job cancelled meanwhile, by any process, is not sent."""
        ids = checked_ids(job_ids)
        now = time.time()
        with self._write() as con:
            seq = next_seq(con)
            moved = con.execute(f"UPDATE jobs SET status = 'HELD', reason = ?, native_id = ?, updated = ?, seq = ? "
                                f"WHERE id IN {IN_JSON} AND status IN ({ACTIVE_SQL}) AND status <> 'WAITING' "
                                f"RETURNING id",
                                (reason, native_id, now, seq, json.dumps(ids))).fetchall()
        return [r[0] for r in moved]

    def claim(self, job_ids: Iterable[int], old_owner: str, new_owner: str) -> list[int]:
        """Make `new_owner` responsible for active jobs still owned by `old_owner` (compare and set:
        of two processes claiming the same jobs, one gets them). Returns the ids claimed."""
        ids = checked_ids(job_ids)
        with self._write() as con:
            moved = con.execute(
                f"UPDATE jobs SET spec = json_set(spec, '$.owner', ?) WHERE id IN {IN_JSON} "
                f"AND status IN ({ACTIVE_SQL}) AND json_extract(spec, '$.owner') IS ? RETURNING id, task_id",
                (new_owner, json.dumps(ids), old_owner)).fetchall()
            events_per_task(con, moved, time.time(), "adopted", f"taken over by {new_owner} from {old_owner}")
        return in_order(ids, moved)
