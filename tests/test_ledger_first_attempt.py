"""`add_jobs(..., start=FirstAttempt(...))`: jobs recorded already in their first attempt, in the one
transaction that adds them, leave exactly the rows `add_jobs` then `start_attempts` leave; a failure
anywhere in it leaves nothing; the G3 trigger still guards every later update."""

from __future__ import annotations

import sqlite3

import pytest

from htc_notebook.errors import KeyTaken, LedgerError
from htc_notebook.ledger import AttemptStart, FirstAttempt, Ledger, NewBatch, NewJob
from htc_notebook.ledger.submission import RUN
from htc_notebook.spec import JobSpec
from htc_notebook.states import Outcome

SPEC = JobSpec(commands=("echo", "hi"), owner="h:1")
OTHER = JobSpec(cores=2, memory=512, timeout=60, owner="h:1")


def _jobs(parent: int | None = None) -> list[NewJob]:
    """Runs of alike jobs (long and short), keyed jobs, params, two specs, and one that waits."""
    jobs = [NewJob("batch", "command", {}, SPEC, index=i) for i in range(3 * RUN)]  # one run
    jobs += [NewJob("batch", "command", {}, SPEC, index=i) for i in range(100, 100 + RUN - 1)]  # too short
    jobs += [NewJob("swept", "python", {"x": i}, OTHER, index=i, profile="gpu", priority=2) for i in range(5)]
    jobs += [NewJob("keyed", "command", {}, SPEC, key=f"k{i}", index=i) for i in range(RUN + 2)]  # keys: no run
    jobs += [NewJob("batch", "command", {}, OTHER, index=i, profile="gpu") for i in range(2 * RUN)]  # another run
    if parent is not None:
        jobs.insert(RUN + 3, NewJob("child", "command", {}, SPEC, after=(parent,)))  # inside a would-be run
    return jobs


def _state(led: Ledger, task_id: int, logs: str) -> tuple[list[tuple], list[tuple]]:
    """Every job and attempt column but the ones a clock or counter sets, ids relative to the task's first."""
    con = sqlite3.connect(led.path)
    first = con.execute("SELECT MIN(id) FROM jobs WHERE task_id = ?", (task_id,)).fetchone()[0]
    jobs = con.execute("SELECT id - ?2, idx, key, name, kind, profile, priority, params, spec, status, reason, "
                       "exit_code, attempts, host, native_id, log_out = ?3 || id || '.out', "
                       "log_err = ?3 || id || '.err', log_out IS NULL, "
                       "started IS NULL, ended, retry_at, cpu_s, max_rss_mib, memory_held, sandbox "
                       "FROM jobs WHERE task_id = ?1 ORDER BY id", (task_id, first, logs)).fetchall()
    attempts = con.execute("SELECT job_id - ?2, number, a.status, a.reason, a.host, a.native_id, a.exit_code, "
                           "a.started IS NULL, a.ended, a.log_out = ?3 || job_id || '.out', "
                           "a.log_err = ?3 || job_id || '.err', a.log_out IS NULL, a.cause, a.request, a.sandbox "
                           "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.task_id = ?1 "
                           "ORDER BY job_id, number",
                           (task_id, first, logs)).fetchall()
    con.close()
    return jobs, attempts


@pytest.mark.parametrize("status", ["RUNNABLE", "RUNNING"])
def test_started_in_one_transaction_leaves_what_two_calls_leave(tmp_path, status):
    with Ledger(tmp_path / "l.db") as led:
        t0, t1, t2 = led.task("p", "parent"), led.task("p", "two-calls"), led.task("p", "one-call")
        (parent,) = list(led.add_jobs(t0.id, [NewJob("parent", "command", {}, SPEC)]))
        sandbox = {"local": "bwrap", "gpu": "none"}
        ids = list(led.add_jobs(t1.id, _jobs(parent), NewBatch("b", 1, {})))
        logs = str(tmp_path / "logs" / "job-")
        rows = {r.id: r for r in led.jobs(t1.id)}
        led.start_attempts([AttemptStart(i, host="h", native_id="local:h:1", log_out=f"{logs}{i}.out",
                                         log_err=f"{logs}{i}.err", status=status, sandbox=sandbox[rows[i].profile])
                            for i in ids if not rows[i].status == "WAITING"])
        got = list(led.add_jobs(t2.id, _jobs(parent), NewBatch("b", 1, {}),
                           start=FirstAttempt(status, host="h", native_id="local:h:1", logs=logs, sandbox=sandbox)))
        assert len(got) == len(ids) and got == list(range(got[0], got[0] + len(ids)))
        assert _state(led, t2.id, logs) == _state(led, t1.id, logs)
        jobs, attempts = _state(led, t2.id, logs)
        assert {j[9] for j in jobs} == {status, "WAITING"} and len(attempts) == len(ids) - 1
        assert led.counts(t2.id) == led.counts(t1.id)
        assert led.job(got[0]).log_out == f"{logs}{got[0]}.out"
        assert (led.job(got[0]).started is not None) == (status == "RUNNING")
        # and they go on as any started job does: an outcome for attempt 1, a second attempt
        led.record_outcomes([Outcome(got[0], 1, "SUCCEEDED", result=b"r"), Outcome(got[1], 1, "FAILED", reason="x")])
        assert led.job(got[0]).status == "SUCCEEDED" and led.attempts(got[1])[0].status == "FAILED"
        assert led.start_attempts([AttemptStart(got[1]), AttemptStart(got[2])]) == [0, 2]  # FAILED is terminal


def test_one_start_for_all_and_no_logs(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        ids = list(led.add_jobs(t.id, [NewJob("b", "command", {}, SPEC, index=i) for i in range(50)],
                           start=FirstAttempt(sandbox="none")))
        rows = led.jobs(t.id)
        assert {(r.status, r.attempts, r.log_out, r.log_err, r.sandbox, r.host) for r in rows} == {
            ("RUNNABLE", 1, None, None, "none", None)}
        assert [len(led.attempts(i)) for i in ids] == [1] * 50
        assert led.attempts(ids[7])[0].request == {"memory": None, "timeout": None}
        assert list(led.add_jobs(t.id, [], start=FirstAttempt())) == []


def test_a_failed_insert_leaves_nothing(tmp_path):
    """A key already taken (found after the run of alike jobs went in), a parent that does not exist:
    no job, no attempt, no batch, no event, no change counter step of that call is left."""
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        list(led.add_jobs(t.id, [NewJob("old", "command", {}, SPEC, key="taken")]))

        def tables() -> list[int]:
            con = sqlite3.connect(led.path)
            try:
                return [con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
                        for name in ("jobs", "attempts", "batches", "events", "deps")] + [
                    con.execute("SELECT seq FROM counter").fetchone()[0]]
            finally:
                con.close()

        before = tables()
        start = FirstAttempt(host="h", logs="/l/job-")
        with pytest.raises(KeyTaken, match="'taken' already exists"):
            list(led.add_jobs(t.id, [NewJob("b", "command", {}, SPEC, index=i) for i in range(5 * RUN)]
                         + [NewJob("k", "command", {}, SPEC, key="taken")], NewBatch("b", 1, {}), start=start))
        assert tables() == before
        with pytest.raises(LedgerError):
            list(led.add_jobs(t.id, [NewJob("b", "command", {}, SPEC, index=i) for i in range(5 * RUN)]
                         + [NewJob("child", "command", {}, SPEC, after=(10**6,))], start=start))
        assert tables() == before
        with pytest.raises(LedgerError, match="no task"):
            list(led.add_jobs(10**6, [NewJob("b", "command", {}, SPEC)], start=start))
        assert tables() == before


@pytest.mark.parametrize("start, message", [
    (FirstAttempt(status="SUCCEEDED"), "active state"),
    (FirstAttempt(status="nope"), "unknown job status"),
    (FirstAttempt(host=3), "host is a string"),  # type: ignore[arg-type]
    (FirstAttempt(sandbox={"local": 1}), "sandbox is a string"),  # type: ignore[dict-item]
    (AttemptStart(1), "a FirstAttempt"),
])
def test_a_bad_start_is_refused_before_anything_is_written(tmp_path, start, message):
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        with pytest.raises(LedgerError, match=message):
            list(led.add_jobs(t.id, [NewJob("b", "command", {}, SPEC)], start=start))
        assert led.jobs(t.id) == []


def test_succeeded_stays_final_for_jobs_started_at_insert(tmp_path):
    """Inserted in their first attempt, they never went through the UPDATE the G3 trigger watches:
    it still guards every update after."""
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        ids = list(led.add_jobs(t.id, [NewJob("b", "command", {}, SPEC, index=i) for i in range(2 * RUN)],
                           start=FirstAttempt()))
        led.record_outcomes([Outcome(ids[0], 1, "SUCCEEDED")])
        con = sqlite3.connect(led.path)
        with pytest.raises(sqlite3.IntegrityError, match="SUCCEEDED job is final"):
            con.execute("UPDATE jobs SET status = 'RUNNABLE' WHERE id = ?", (ids[0],))
        con.close()
        assert led.start_attempts([AttemptStart(ids[0]), AttemptStart(ids[1])]) == [0, 2]


def test_validation_is_unchanged_by_sharing(tmp_path):
    """What many jobs share is checked once, but a job that differs is still checked."""
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        good = [NewJob("b", "command", {}, SPEC, index=i) for i in range(3)]
        for bad, message in ((NewJob("b", "command", {}, SPEC, priority=True), "priority"),  # type: ignore[arg-type]
                             (NewJob("b", "command", {}, SPEC, index=1.5), "index"),  # type: ignore[arg-type]
                             (NewJob("b", "shell", {}, SPEC), "kind"),
                             (NewJob(["b"], "command", {}, SPEC), "name"),  # type: ignore[arg-type]
                             (NewJob("b", "command", {}, {"cores": 1}), "JobSpec"),  # type: ignore[arg-type]
                             (NewJob("b", "command", {"f": object()}, SPEC), "JSON"),
                             (NewJob("b", "command", {}, SPEC, key=5), "key")):  # type: ignore[arg-type]
            with pytest.raises(LedgerError, match=message):
                list(led.add_jobs(t.id, good + [bad] + good, start=FirstAttempt()))
        assert led.jobs(t.id) == []
