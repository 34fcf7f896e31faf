"""Ledger rules on a real SQLite file: state machine (G3), exactly-once results (G2), seq, errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from htc_notebook.spec import JobSpec
from htc_notebook.errors import LedgerError
from htc_notebook.ledger import SCHEMA_VERSION, AttemptStart, Ledger, NewBatch, NewJob, TaskRow
from htc_notebook.states import JobStatus, Outcome


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.db") as led:
        yield led


@pytest.fixture
def task(ledger: Ledger) -> TaskRow:
    return ledger.task("proj", "sweep")


def new_jobs(n: int, prefix: str = "k") -> list[NewJob]:
    return [NewJob(f"job{i}", "python", {"x": i}, JobSpec(cores=1), key=f"{prefix}{i}", index=i) for i in range(n)]


def run_ok(ledger: Ledger, job_id: int, result: bytes = b"R") -> None:
    [attempt] = ledger.start_attempts([AttemptStart(job_id, host="n1", native_id="42")])
    assert ledger.record_outcomes([Outcome(job_id, attempt, "SUCCEEDED", exit_code=0, result=result)]) == [job_id]


def run_fail(ledger: Ledger, job_id: int, reason: str = "boom") -> int:
    [attempt] = ledger.start_attempts([AttemptStart(job_id, host="n1", native_id="42")])
    assert ledger.record_outcomes([Outcome(job_id, attempt, "FAILED", reason=reason, exit_code=1)]) == [job_id]
    return attempt


# --- opening -------------------------------------------------------------------------------

def test_open_creates_versioned_wal_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.db"
    Ledger(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with Ledger(path) as again:  # reopening keeps the data
        assert again.projects() == []


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LedgerError, match=str(blocker)):
        Ledger(blocker / "ledger.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="junk.db"):
        Ledger(junk)


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(LedgerError, match="schema version"):
        Ledger(path)


def test_closed_ledger_refuses(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.projects()


# --- projects and tasks --------------------------------------------------------------------

def test_projects_and_tasks(ledger: Ledger) -> None:
    t = ledger.task("p", "t")
    assert ledger.task("p", "t") == t  # get-or-create
    assert [p.name for p in ledger.projects()] == ["p"]
    assert ledger.project("q").name == "q"
    assert ledger.find_task("p", "t") == t and ledger.find_task("p", "nope") is None
    assert ledger.get_task(t.id) == t
    with pytest.raises(LedgerError, match="no task 999"):
        ledger.get_task(999)
    ledger.task("q", "u")
    assert [x.name for x in ledger.tasks("p")] == ["t"] and len(ledger.tasks()) == 2
    ledger.set_lifecycle(t.id, "ARCHIVED")
    assert ledger.get_task(t.id).lifecycle == "ARCHIVED"
    with pytest.raises(LedgerError):
        ledger.set_lifecycle(t.id, "GONE")
    with pytest.raises(LedgerError, match="no task"):
        ledger.set_lifecycle(999, "ACTIVE")


# --- submitting ----------------------------------------------------------------------------

def test_add_jobs_rows_batch_and_one_event(ledger: Ledger, task: TaskRow) -> None:
    ids = list(ledger.add_jobs(task.id, new_jobs(3), NewBatch("b1", 3, {"fn": "f"}, ("sweep",))))
    assert ids == sorted(ids) and len(ids) == 3
    rows = ledger.jobs(task.id)
    assert [r.id for r in rows] == ids
    j = rows[1]
    assert (j.status, j.key, j.index, j.params, j.spec, j.attempts, j.kind) == (
        "SUBMITTED", "k1", 1, {"x": 1}, JobSpec(cores=1), 0, "python")
    [batch] = ledger.batches(task.id)
    assert (batch.name, batch.size, batch.definition, batch.tags) == ("b1", 3, {"fn": "f"}, ("sweep",))
    assert all(r.batch_id == batch.id for r in rows)
    assert [e.kind for e in ledger.events(task_id=task.id)] == ["submitted"]
    assert ledger.counts(task.id)["SUBMITTED"] == 3 and ledger.counts(task.id)["LOST"] == 0
    assert list(ledger.add_jobs(task.id, [])) == []


def test_duplicate_keys_rejected_nothing_inserted(ledger: Ledger, task: TaskRow) -> None:
    list(ledger.add_jobs(task.id, new_jobs(3)))
    before = (ledger.jobs(task.id), ledger.events(), ledger.batches(task.id), ledger.max_seq())
    clash = [NewJob("a", "python", {}, JobSpec(), key="fresh"), NewJob("b", "python", {}, JobSpec(), key="k2")]
    with pytest.raises(LedgerError, match="'k2'"):
        list(ledger.add_jobs(task.id, clash, NewBatch("b2", 2, {})))
    with pytest.raises(LedgerError, match="'dup'"):
        list(ledger.add_jobs(task.id, [NewJob("a", "python", {}, JobSpec(), key="dup"),
                                  NewJob("b", "python", {}, JobSpec(), key="dup")]))
    assert (ledger.jobs(task.id), ledger.events(), ledger.batches(task.id), ledger.max_seq()) == before
    # keys are per task; None keys never clash
    other = ledger.task("proj", "other")
    list(ledger.add_jobs(other.id, new_jobs(3)))
    list(ledger.add_jobs(task.id, [NewJob("n", "python", {}, JobSpec()), NewJob("n", "python", {}, JobSpec())]))


def test_add_jobs_validates_before_writing(ledger: Ledger, task: TaskRow) -> None:
    with pytest.raises(LedgerError, match="JSON"):
        list(ledger.add_jobs(task.id, [NewJob("a", "python", {"f": object()}, JobSpec())]))
    with pytest.raises(LedgerError, match="kind"):
        list(ledger.add_jobs(task.id, [NewJob("a", "shell", {}, JobSpec())]))
    with pytest.raises(LedgerError, match="no task 999"):
        list(ledger.add_jobs(999, new_jobs(1)))
    assert ledger.jobs(task.id) == [] and ledger.events() == []


def test_a_bad_job_after_the_first_chunk_leaves_nothing_recorded(ledger: Ledger, task: TaskRow, monkeypatch) -> None:
    """add_jobs encodes and inserts its rows a chunk at a time inside one transaction: a job that
    does not validate in a later chunk undoes the chunks already inserted (G1: all or nothing)."""
    from htc_notebook.ledger import submission

    monkeypatch.setattr(submission, "ENCODE_CHUNK", 4)
    seq = ledger.max_seq()
    jobs = new_jobs(10)
    jobs[9] = NewJob("bad", "python", {"f": object()}, JobSpec(cores=1), key="k9", index=9)
    with pytest.raises(LedgerError, match="JSON"):
        list(ledger.add_jobs(task.id, jobs))
    assert ledger.jobs(task.id) == [] and ledger.events() == [] and ledger.max_seq() == seq
    ids = list(ledger.add_jobs(task.id, new_jobs(10)))  # and the same jobs, valid, in three chunks
    assert [(j.id, j.key, j.index) for j in ledger.jobs(task.id)] == [(i, f"k{n}", n) for n, i in enumerate(ids)]


def test_jobs_by_key_many(ledger: Ledger, task: TaskRow) -> None:
    ids = list(ledger.add_jobs(task.id, new_jobs(5000)))
    found = ledger.jobs_by_key(task.id, [f"k{i}" for i in range(5000)] + ["missing"])
    assert len(found) == 5000 and found["k4999"].id == ids[-1]


# --- state rules ---------------------------------------------------------------------------

def test_native_ids_of_many_jobs_are_set_in_two_statements_as_set_status_would(ledger: Ledger, task: TaskRow) -> None:
    """What an sbatch of an array records for each of its jobs (job id -> its array task), in one
    transaction of two statements that look jobs and attempts up by key: no per-job statement."""
    a, b, c, d = list(ledger.add_jobs(task.id, new_jobs(4)))
    ledger.start_attempts([AttemptStart(j, host="n1", status="RUNNABLE") for j in (a, b)])
    run_fail(ledger, c)
    statements: list[str] = []
    con = ledger._con()
    con.set_trace_callback(statements.append)
    try:
        assert ledger.set_native_ids({a: "7_0", b: "7_1", c: "7_2"}, "RUNNABLE", "submitted to SLURM") == 2
    finally:
        con.set_trace_callback(None)
    updates = list(dict.fromkeys(q for q in statements if q.lstrip().upper().startswith("UPDATE")))
    assert len(updates) == 3  # the change counter, the jobs, their attempts (the trace repeats a statement's text)
    for q in updates[1:]:
        plan = " | ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + q))
        assert "SCAN jobs" not in plan and "SCAN attempts" not in plan, plan
    rows = {j: ledger.job(j) for j in (a, b, c, d)}
    assert [(rows[j].status, rows[j].native_id, rows[j].reason) for j in (a, b)] == [
        ("RUNNABLE", "7_0", "submitted to SLURM"), ("RUNNABLE", "7_1", "submitted to SLURM")]
    assert [ledger.attempts(j)[-1].native_id for j in (a, b)] == ["7_0", "7_1"]
    assert rows[c].status == "FAILED" and rows[c].native_id != "7_2"  # ended: never moved back
    assert ledger.set_native_ids({a: "7_0", b: "7_1"}, "RUNNABLE", "submitted to SLURM") == 0  # nothing new
    with pytest.raises(LedgerError, match="active"):
        ledger.set_native_ids({a: "7_0"}, "SUCCEEDED", None)


def test_set_status_active_only(ledger: Ledger, task: TaskRow) -> None:
    a, b, c = list(ledger.add_jobs(task.id, new_jobs(3)))
    run_fail(ledger, c)
    assert ledger.set_status([a, b, c], "RUNNABLE", "pending: Resources") == 2
    assert ledger.job(c).status == "FAILED"
    assert ledger.set_status([a, b], "RUNNABLE", "pending: Resources") == 0  # nothing changed
    assert ledger.set_status([a], JobStatus.RUNNING, host="n7", native_id="99") == 1
    ja = ledger.job(a)
    assert (ja.status, ja.host, ja.native_id, ja.reason) == ("RUNNING", "n7", "99", None)
    assert ja.started is not None
    for bad in ("SUCCEEDED", "FAILED", "CANCELLED", "LOST"):
        with pytest.raises(LedgerError, match="active"):
            ledger.set_status([a], bad)
    with pytest.raises(LedgerError, match="unknown job status"):
        ledger.set_status([a], "DONE")


def test_succeeded_is_sticky(ledger: Ledger, task: TaskRow) -> None:
    [j] = list(ledger.add_jobs(task.id, new_jobs(1)))
    run_ok(ledger, j)
    seq = ledger.job(j).seq
    assert ledger.set_status([j], "RUNNING") == 0
    assert ledger.set_status([j], "SUBMITTED") == 0
    assert ledger.record_outcomes([Outcome(j, 1, "FAILED", reason="late")]) == []
    assert ledger.record_outcomes([Outcome(j, 2, "LOST")]) == []
    assert ledger.requeue([j], "again") == []
    assert ledger.cancel([j]) == []
    assert ledger.start_attempts([AttemptStart(j)]) == [0]
    job = ledger.job(j)
    assert (job.status, job.attempts, job.seq) == ("SUCCEEDED", 1, seq)
    # even raw SQL cannot move it (trigger)
    con = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="final"):
        con.execute("UPDATE jobs SET status = 'FAILED' WHERE id = ?", (j,))
    con.close()


def test_result_committed_exactly_once(ledger: Ledger, task: TaskRow) -> None:
    [j] = list(ledger.add_jobs(task.id, new_jobs(1)))
    run_ok(ledger, j, b"first")
    # the same attempt reported twice, and a duplicate run reporting success: both no-ops
    assert ledger.record_outcomes([Outcome(j, 1, "SUCCEEDED", result=b"second")]) == []
    assert ledger.record_outcomes([Outcome(j, 2, "SUCCEEDED", result=b"third")]) == []
    res = ledger.result(j)
    assert res is not None and (res.inline, res.attempt, res.size) == (b"first", 1, 5)
    # twice in one call: only the first counts
    [k] = list(ledger.add_jobs(task.id, new_jobs(1, "z")))
    assert ledger.record_outcomes([Outcome(k, 1, "SUCCEEDED", result=b"a"),
                                   Outcome(k, 1, "SUCCEEDED", result=b"b")]) == [k]
    assert ledger.result(k).inline == b"a"  # type: ignore[union-attr]


def test_result_by_path(ledger: Ledger, task: TaskRow, tmp_path: Path) -> None:
    [j, k] = list(ledger.add_jobs(task.id, new_jobs(2)))
    f = tmp_path / "job.pkl"
    f.write_bytes(b"12345678")
    assert ledger.record_outcomes([Outcome(j, 1, "SUCCEEDED", result_path=str(f))]) == [j]
    res = ledger.result(j)
    assert res is not None and (res.path, res.inline, res.size) == (str(f), None, 8)
    with pytest.raises(LedgerError, match="cannot be read"):
        ledger.record_outcomes([Outcome(k, 1, "SUCCEEDED", result_path=str(tmp_path / "missing"))])
    with pytest.raises(LedgerError, match="not both"):
        ledger.record_outcomes([Outcome(k, 1, "SUCCEEDED", result=b"x", result_path=str(f))])
    with pytest.raises(LedgerError, match="terminal"):
        ledger.record_outcomes([Outcome(k, 1, "RUNNING")])
    assert ledger.job(k).status == "SUBMITTED"


def test_requeue_failed_and_attempts_accumulate(ledger: Ledger, task: TaskRow) -> None:
    [j] = list(ledger.add_jobs(task.id, new_jobs(1)))
    assert run_fail(ledger, j, "exit 1") == 1
    job = ledger.job(j)
    assert (job.status, job.reason, job.exit_code) == ("FAILED", "exit 1", 1)
    [ev] = [e for e in ledger.events(job_id=j) if e.kind != "submitted"]
    assert (ev.kind, ev.task_id) == ("failed", task.id) and "exit 1" in ev.message and "n1" in ev.message
    assert ledger.requeue([j], "retry 1/3") == [j]
    job = ledger.job(j)
    assert (job.status, job.reason, job.exit_code, job.ended) == ("SUBMITTED", "retry 1/3", None, None)
    # a late duplicate of attempt 1's failure does not undo the requeue
    assert ledger.record_outcomes([Outcome(j, 1, "FAILED", reason="dup")]) == []
    run_ok(ledger, j)
    job = ledger.job(j)
    assert (job.status, job.attempts) == ("SUCCEEDED", 2)
    assert [(a.number, a.status) for a in ledger.attempts(j)] == [(1, "FAILED"), (2, "SUCCEEDED")]
    assert ledger.result(j).attempt == 2  # type: ignore[union-attr]


def test_requeue_only_moves_failed_cancelled_lost(ledger: Ledger, task: TaskRow) -> None:
    ids = list(ledger.add_jobs(task.id, new_jobs(5)))
    run_fail(ledger, ids[0])
    ledger.cancel([ids[1]])
    ledger.record_outcomes([Outcome(ids[2], 0, "LOST", reason="its owner exited", cause="owner")])
    assert ledger.job(ids[2]).retry_at is not None  # not the job's fault: its requeue is due...
    assert ledger.settle_retry(ids[2], 0, "no requeues left")  # ...and refused, it ends LOST
    run_ok(ledger, ids[3])
    assert ledger.requeue(reversed(ids), "again") == [ids[2], ids[1], ids[0]]
    assert [j.status for j in ledger.jobs(task.id)] == ["SUBMITTED"] * 3 + ["SUCCEEDED", "SUBMITTED"]


def test_stale_attempt_cannot_fail_a_newer_one(ledger: Ledger, task: TaskRow) -> None:
    [j] = list(ledger.add_jobs(task.id, new_jobs(1)))
    ledger.start_attempts([AttemptStart(j)])
    ledger.start_attempts([AttemptStart(j)])  # e.g. resubmitted while the first was presumed gone
    assert ledger.record_outcomes([Outcome(j, 1, "FAILED", reason="old")]) == []
    assert ledger.job(j).status == "RUNNING"
    assert [a.status for a in ledger.attempts(j)] == ["FAILED", "RUNNING"]
    # but a success from the old attempt is a real result
    assert ledger.record_outcomes([Outcome(j, 1, "SUCCEEDED", result=b"ok")]) == [j]


def test_cancel(ledger: Ledger, task: TaskRow) -> None:
    a, b, c = list(ledger.add_jobs(task.id, new_jobs(3)))
    ledger.start_attempts([AttemptStart(b, status="STARTING")])
    run_ok(ledger, c)
    assert ledger.cancel([a, b, c], "user said stop") == [a, b]
    assert [j.status for j in ledger.jobs(task.id)] == ["CANCELLED", "CANCELLED", "SUCCEEDED"]
    assert ledger.attempts(b)[0].status == "CANCELLED"
    assert ledger.events(task_id=task.id, limit=1)[0].message.startswith("2 jobs cancelled: user said stop")


def test_start_attempts(ledger: Ledger, task: TaskRow) -> None:
    a, b = list(ledger.add_jobs(task.id, new_jobs(2)))
    ledger.cancel([b])
    nums = ledger.start_attempts([AttemptStart(a, "n1", "7_1", "/l/job.out", "/l/job.err"),
                                  AttemptStart(b, "n1")])
    assert nums == [1, 0]
    job = ledger.job(a)
    assert (job.status, job.host, job.native_id, job.log_out, job.attempts) == (
        "RUNNING", "n1", "7_1", "/l/job.out", 1)
    [att] = ledger.attempts(a)
    assert (att.number, att.status, att.log_err, att.started is not None) == (1, "RUNNING", "/l/job.err", True)
    with pytest.raises(LedgerError):
        ledger.start_attempts([AttemptStart(a, status="SUCCEEDED")])


# --- change tracking -----------------------------------------------------------------------

def test_seq_and_after_seq(ledger: Ledger, task: TaskRow) -> None:
    ids = list(ledger.add_jobs(task.id, new_jobs(10)))
    s0 = ledger.max_seq()
    assert all(j.seq == s0 for j in ledger.jobs(task.id))
    assert ledger.jobs(task.id, after_seq=s0) == []
    ledger.set_status(ids[2:4], "RUNNING")
    s1 = ledger.max_seq()
    assert s1 > s0
    assert [j.id for j in ledger.jobs(task.id, after_seq=s0)] == ids[2:4]
    run_ok(ledger, ids[5])
    assert [j.id for j in ledger.jobs(task.id, after_seq=s1)] == [ids[5]]
    seq, changed = ledger.changes(task.id, s0)
    assert seq == ledger.max_seq() and [j.id for j in changed] == [ids[2], ids[3], ids[5]]
    assert ledger.max_seq() > s1


def test_job_filters_and_reads(ledger: Ledger, task: TaskRow) -> None:
    ids = list(ledger.add_jobs(task.id, new_jobs(4), NewBatch("b", 4, {})))
    more = list(ledger.add_jobs(task.id, new_jobs(2, "m"), NewBatch("c", 2, {})))
    run_ok(ledger, ids[0])
    assert [j.id for j in ledger.jobs(task.id, status="SUCCEEDED")] == [ids[0]]
    assert len(ledger.jobs(task.id, status=[JobStatus.SUBMITTED, "SUCCEEDED"])) == 6
    assert [j.id for j in ledger.jobs(task.id, batch_id=ledger.batches(task.id)[1].id)] == more
    assert [j.id for j in ledger.jobs(task.id, limit=2)] == ids[:2]
    with pytest.raises(LedgerError, match="no job 12345"):
        ledger.job(12345)
    assert ledger.result(ids[1]) is None and ledger.attempts(ids[1]) == []
    eid = ledger.add_event(task.id, ids[1], "note", "hello")
    assert ledger.events(job_id=ids[1])[-1].id == eid
    assert [e.kind for e in ledger.events(task_id=task.id, limit=2)] == ["submitted", "note"]


def test_threads_share_one_ledger(ledger: Ledger, task: TaskRow) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                [j] = list(ledger.add_jobs(task.id, [NewJob("t", "python", {}, JobSpec(), key=f"{n}-{i}")]))
                run_ok(ledger, j)
        except BaseException as e:  # noqa: BLE001 - reported below  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledger.counts(task.id)["SUCCEEDED"] == 160


def test_owner_leases_are_renewed_and_dropped_once_lapsed_with_no_active_job(ledger: Ledger, task: TaskRow) -> None:
    assert ledger.renew_owner("far:1", 30) is None  # its first lease
    first = ledger.owner_leases(["far:1"])["far:1"]
    assert ledger.renew_owner("far:1", 60) == first and ledger.owner_leases(["far:1"])["far:1"] > first
    list(ledger.add_jobs(task.id, [NewJob("j", "python", {}, JobSpec(owner="far:2"), key="o", index=0)]))
    ledger.renew_owner("far:2", -1)  # lapsed, with an active job: kept (a session settles it)
    ledger.renew_owner("far:3", -1)  # lapsed, nothing active: nothing refers to it
    assert ledger.owner_leases(["far:1", "far:2", "far:3", "never:4"]).keys() == {"far:1", "far:2"}
    ledger.cancel(ledger.job_ids(task.id))
    ledger.renew_owner("far:1", 30)
    assert ledger.owner_leases(["far:1", "far:2"]).keys() == {"far:1"}
