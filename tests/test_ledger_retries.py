"""Retries in the ledger: a failed attempt that may be retried leaves its job SUBMITTED with the
retry due (so a kernel restart forgets none), one process starts it (compare and set), and older
ledgers are upgraded in place to hold it."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from htc_notebook.errors import LedgerError
from htc_notebook.spec import JobSpec, RetryPolicy
from htc_notebook.ledger import SCHEMA_VERSION, AttemptStart, Ledger, NewJob
from htc_notebook.ledger.schema import (DDL, V1_STATUSES, V5_UPGRADE, V6_UPGRADE, V7_UPGRADE, V8_UPGRADE,
                                        V9_STATUSES, V9_UPGRADE, V10_UPGRADE, V11_UPGRADE, V12_UPGRADE, V13_UPGRADE,
                                        V14_UPGRADE, sql_list)
from htc_notebook.states import JobStatus, Outcome


def spec(retries: int = 0, **more) -> JobSpec:
    return JobSpec(cores=1, memory=100, timeout=60, owner="h:1", retry=RetryPolicy(retries=retries, requeues=5), **more)


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.db") as led:
        yield led


def start_and_fail(ledger: Ledger, job_id: int, cause: str | None, status: str = "FAILED") -> int:
    [attempt] = ledger.start_attempts([AttemptStart(job_id, host="n1", native_id="7_0")])
    ledger.record_outcomes([Outcome(job_id, attempt, status, reason=f"{cause or 'plain'} failure", cause=cause,
                                    exit_code=1)])
    return attempt


def test_a_failure_that_may_be_retried_has_not_ended(ledger):
    task = ledger.task("p", "t")
    retried, final, fault = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, spec(retries=1)),
                                                      NewJob("b", "command", {}, spec(retries=0)),
                                                      NewJob("c", "command", {}, spec(retries=0))]))
    start_and_fail(ledger, retried, "memory")
    start_and_fail(ledger, final, "exit")
    start_and_fail(ledger, fault, "node")  # not the job's fault: requeued even with retries=0
    rows = {r.id: r for r in ledger.jobs(task.id)}
    assert rows[retried].status == "SUBMITTED" and rows[retried].retry_at is not None
    assert "a retry is being decided: memory failure" in rows[retried].reason
    assert rows[final].status == "FAILED" and rows[final].retry_at is None
    assert rows[fault].status == "SUBMITTED" and rows[fault].retry_at is not None
    # the attempt keeps the truth: FAILED, why, and what it asked for
    (a,) = ledger.attempts(retried)
    assert (a.status, a.cause, a.request) == ("FAILED", "memory", {"memory": 100, "timeout": 60})
    assert {r.id for r in ledger.retries_due(time.time())} == {retried, fault}
    assert ledger.scheduler_jobs() == []  # its old SLURM id is not polled any more


def test_starting_a_retry_is_compare_and_set(ledger):
    task = ledger.task("p", "t")
    (job,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, spec(retries=2))]))
    attempt = start_and_fail(ledger, job, "memory")
    assert ledger.requeue_retry(job, attempt, "h:2", {"memory": 200}, "retry 1 of 2") is True
    assert ledger.requeue_retry(job, attempt, "h:3", {"memory": 400}, "retry 1 of 2") is False  # one wins
    row = ledger.job(job)
    assert (row.status, row.retry_at, row.spec.memory, row.spec.owner) == ("SUBMITTED", None, 200, "h:2")
    assert row.spec.timeout == 60 and row.native_id is None and row.exit_code is None
    [second] = ledger.start_attempts([AttemptStart(job, host="n2")])
    assert second == 2 and ledger.attempts(job)[1].request == {"memory": 200, "timeout": 60}
    events = [e.kind for e in ledger.events(job_id=job)]
    assert "retrying" in events


def test_settled_jobs_end_as_their_attempt_did_saying_why(ledger):
    task = ledger.task("p", "t")
    failed, lost = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, spec(retries=1)),
                                             NewJob("b", "command", {}, spec())]))
    a1 = start_and_fail(ledger, failed, "memory")
    a2 = start_and_fail(ledger, lost, "lost", status="LOST")
    assert ledger.settle_retry(failed, a1, "out of memory at 100 MiB, the most the profile allows: not retried")
    assert ledger.settle_retry(lost, a2, "requeued 5 times already")
    assert not ledger.settle_retry(failed, a1, "again")  # settled once
    row = ledger.job(failed)
    assert row.status == "FAILED" and row.retry_at is None
    assert row.reason == "memory failure; out of memory at 100 MiB, the most the profile allows: not retried"
    assert ledger.job(lost).status == "LOST"
    assert ledger.retries_due(time.time() + 1000) == []


def test_a_retry_can_be_postponed_and_cancelled(ledger):
    task = ledger.task("p", "t")
    (job,) = list(ledger.add_jobs(task.id, [NewJob("a", "python", {}, spec(retries=3))]))
    attempt = start_and_fail(ledger, job, "exit")
    due = time.time() + 60
    assert ledger.postpone_retry(job, attempt, due, "retry 1 of 3, in 60 s")
    assert ledger.retries_due(time.time()) == [] and ledger.job(job).reason == "retry 1 of 3, in 60 s"
    assert [r.id for r in ledger.retries_due(due)] == [job]
    assert ledger.cancel([job]) == [job]
    row = ledger.job(job)
    assert (row.status, row.retry_at) == ("CANCELLED", None)
    assert not ledger.requeue_retry(job, attempt, "h:2", {}, "too late")


def test_unknown_cause_is_refused_and_nothing_written(ledger):
    task = ledger.task("p", "t")
    (job,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, spec(retries=1))]))
    [attempt] = ledger.start_attempts([AttemptStart(job)])
    with pytest.raises(LedgerError, match="cause 'gremlins' is not one of"):
        ledger.record_outcomes([Outcome(job, attempt, "FAILED", cause="gremlins")])
    assert ledger.job(job).status == "RUNNING"


def test_timeouts_are_a_cause_of_their_own(ledger):
    task = ledger.task("p", "t")
    (job,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, spec(retries=1))]))
    [attempt] = ledger.start_attempts([AttemptStart(job)])
    ledger.record_outcomes([Outcome(job, attempt, "FAILED", reason="timeout: killed after execTimeoutSeconds=60")])
    assert ledger.attempts(job)[0].cause == "timeout"


# -- older ledgers, upgraded in place -------------------------------------------------------------

def _old_ledger(path: Path, version: int) -> None:
    """A ledger as version 1 to 13 of the schema made it: successes queue their logs by trigger (v13), no queue
    of logs to pack (v12), no index of the
    jobs a scheduler queues (v11),
    no stored calls (v10), no dependencies or
    WAITING (v9), no owners' leases (v8), no sandbox (v7), no memory_held (v6), no project dimensions
    (v5), no project limits (v4), no owner index (v3), no retry columns (v2), no HELD, no leases (v1)."""
    con = sqlite3.connect(path)
    for statement in DDL:
        if (statement in V14_UPGRADE or statement in V13_UPGRADE and version < 13
                or statement in V12_UPGRADE and version < 12
                or statement in V11_UPGRADE and version < 11
                or statement in V10_UPGRADE and version < 10
                or statement in V9_UPGRADE and version < 9
                or statement in V8_UPGRADE and version < 8
                or statement in V7_UPGRADE and version < 7 or statement in V6_UPGRADE and version < 6
                or statement in V5_UPGRADE and version < 5):
            continue
        if ("jobs_active_owner" in statement and version < 4 or "jobs_retry_at" in statement and version < 3
                or statement.lstrip().startswith("CREATE TABLE leases") and version == 1):
            continue
        if version < 3:
            statement = re.sub(r",\n\s+retry_at .*", "", statement)  # v3's columns, each on its own line
            statement = re.sub(r"\n\s+(cause|request|cpu_s|max_rss_mib) .*", "", statement)
        if version < 10:
            statement = statement.replace(sql_list(frozenset(JobStatus)), V1_STATUSES if version == 1 else V9_STATUSES)
        con.execute(statement)
    con.execute("INSERT INTO projects VALUES ('p', 0)")
    con.execute("INSERT INTO tasks (id, project, name, created) VALUES (1, 'p', 't', 0)")
    con.execute("INSERT INTO jobs (id, task_id, idx, name, kind, profile, priority, params, spec, status, created, "
                "updated, seq) VALUES (1, 1, 0, 'old', 'command', 'local', 0, '{}', ?, 'RUNNING', 0, 0, 1)",
                ('{"retry": {"retries": 1}, "memory": 50}',))
    con.execute("INSERT INTO attempts (job_id, number, status) VALUES (1, 1, 'RUNNING')")
    con.execute("UPDATE jobs SET attempts = 1")
    con.execute(f"PRAGMA user_version = {version}")
    con.commit()
    con.close()


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
def test_older_ledgers_are_upgraded_and_keep_their_jobs(tmp_path, version):
    path = tmp_path / "old.db"
    _old_ledger(path, version)
    if version < 3:
        with pytest.raises(sqlite3.OperationalError):  # the old schema has no retry column
            sqlite3.connect(path).execute("SELECT retry_at FROM jobs").fetchall()
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'jobs_active_owner'"
    assert bool(sqlite3.connect(path).execute(indexes).fetchall()) == (version >= 4)
    with Ledger(path) as ledger:
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert sqlite3.connect(path).execute(indexes).fetchall()  # owners are counted from the index
        assert ledger.active_owners() == {None: 1}
        (row,) = ledger.jobs(1)
        assert (row.name, row.status, row.attempts) == ("old", "RUNNING", 1)
        # the old running attempt fails for lack of memory: its retry waits in the ledger
        ledger.record_outcomes([Outcome(1, 1, "FAILED", reason="out of memory", cause="memory", memory_held="watched")])
        assert ledger.job(1).status == "SUBMITTED" and ledger.attempts(1)[0].cause == "memory"
        assert ledger.attempts(1)[0].memory_held == "watched"  # v7: how its limit was held
        assert (ledger.job(1).sandbox, ledger.attempts(1)[0].sandbox) == (None, None)  # v8: none recorded then
        ledger.intend([1], "sbatch:x", "held")  # HELD exists in either
        ledger.add_limit("p", "PROJECT_ADMIN", 4)  # v5: project limits
        ledger.set_dimensions("p", [{"region": "local"}])  # v6: project dimensions
        assert ledger.dimensions("p") == [{"region": "local"}]
        assert ledger.vcpu_limit("p") == 4 and ledger.vcpus_in_use("p") == 1  # held for sbatch: given to a backend
        assert ledger.renew_owner("elsewhere:1", 30) is None  # v9: owners' heartbeat leases
        assert ledger.owner_leases(["elsewhere:1", "never:2"]).keys() == {"elsewhere:1"}
    with Ledger(path) as again:  # opening an upgraded ledger again changes nothing
        assert again.job(1).status == "HELD" and again.vcpu_limit("p") == 4
        assert again.start_attempts([AttemptStart(1, sandbox="none")]) == [2]  # v8: the sandbox it runs in
        assert (again.job(1).sandbox, again.attempts(1)[-1].sandbox) == ("none", "none")
        (child,) = list(again.add_jobs(1, [NewJob("child", "command", {}, JobSpec(), after=(1,))]))  # v10: dependencies
        assert again.job(child).status == "WAITING" and again.parents(child) == [1]
        list(again.add_jobs(1, [NewJob("call", "python", {}, JobSpec(payload="d1"), stored=b"pickled")]))  # v11
        assert again.payload(1, "d1") == b"pickled" and again.payload(1, "other") is None
        # v12: the RUNNABLE jobs a scheduler holds are counted from their own index
        queued = "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'jobs_queued'"
        assert sqlite3.connect(path).execute(queued).fetchall()
        assert again.queued_count(1) == 0
        (plain,) = list(again.add_jobs(1, [NewJob("plain", "command", {}, JobSpec())]))
        again.start_attempts([AttemptStart(plain, native_id="sbatch:7_1", status="RUNNABLE")])
        assert again.queued_count(1) == 1
