"""Retries that learn, on the local backend: decided from each attempt's cause by the reconcile
loop, kept in the ledger (a killed kernel forgets none), started once, stopped by a cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import pytest

from test_sandbox import _local_site

from htc_notebook import JobGroup, RetryPolicy, Session, SiteConfig

NOW = RetryPolicy(retries=1, backoff=0)


@pytest.fixture(scope="module")
def unconfined(tmp_path_factory):
    """Python calls in their worker's own process (`sandbox: none`), so a call can SIGKILL its worker:
    for the worker-death tests (a confined call dying with its worker: tests/test_call_sandbox.py)."""
    with Session(tmp_path_factory.mktemp("unconfined"), site=_local_site(sandbox="none")) as s:
        yield s


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def batch(command: list[str], timeout: int | None = None, size: int = 1) -> dict:
    d = {"commands": command}
    if timeout:
        d["execTimeoutSeconds"] = timeout
    return {"jobName": "job", "batchSize": size, "htcJobDefinition": d}


def test_a_timeout_is_retried_with_twice_the_time(session):
    task = session.project("retries").task("timeout")
    (job,) = task.submit_batch(batch(["sleep", "1.5"], timeout=1), retries=NOW)
    row = job.wait(timeout=60)
    assert row.status == "SUCCEEDED", row.reason
    first, second = job.attempts
    assert (first.status, first.cause, first.request["timeout"]) == ("FAILED", "timeout", 1)
    assert (second.status, second.request["timeout"]) == ("SUCCEEDED", 2)
    assert row.spec.timeout == 2
    kinds = [e.message for e in session.ledger.events(job_id=job.id) if e.kind == "retrying"]
    assert kinds and "time limit 1 -> 2 s" in kinds[0]


def test_a_request_that_cannot_grow_is_not_retried(tmp_path):
    site = SiteConfig.from_yaml("profiles:\n  tight:\n    backend: local\n    cores_per_node: 2\n"
                                "    memory_per_node: 1G\n    max_walltime: 1\n")
    with Session(tmp_path / "root", site=site) as s:
        (job,) = s.project("retries").task("tight").submit_batch(batch(["sleep", "5"], timeout=1), profile="tight",
                                                                  retries=RetryPolicy(retries=3, backoff=0))
        row = job.wait(timeout=60)
        assert row.status == "FAILED" and len(job.attempts) == 1
        assert row.reason.endswith("timeout at 1 s, the most the profile allows: not retried")
        assert row.reason.startswith("timeout: killed after execTimeoutSeconds=1")


def test_a_retry_waits_in_the_ledger_and_a_cancel_calls_it_off(session):
    task = session.project("retries").task("cancel")
    group = task.submit_batch(batch(["false"]), retries=RetryPolicy(retries=2, backoff=30, max_backoff=30))
    (job,) = group
    wait_for(lambda: "in 30 s" in (job.row.reason or "") or "in 29 s" in (job.row.reason or ""), what="postponed")
    row = job.row
    assert row.status == "SUBMITTED" and row.retry_at > time.time() + 20
    assert row.reason.startswith("retry 1 of 2, it failed") and "exited with code 1" in row.reason
    with pytest.raises(TimeoutError):  # a job waiting for its retry has not ended
        group.wait(timeout=1)
    assert group.cancel() == [job.id]
    group.wait(timeout=10)
    assert job.status == "CANCELLED" and len(job.attempts) == 1 and job.row.retry_at is None


def test_cancelling_a_job_that_waits_for_its_retry_signals_no_process(session):
    """A job waiting for its retry runs nothing: its cancel must not kill the process group its
    failed attempt had, since that pid may name another process by now (PIDs are reused). The
    attacker's side: a process of this user in its own group, whose pid the ledger's row names
    (written there by hand: a reuse cannot be forced)."""
    task = session.project("retries").task("cancel-reused-pid")
    (job,) = task.submit_batch(batch(["false"]), retries=RetryPolicy(retries=2, backoff=30, max_backoff=30))
    wait_for(lambda: job.row.retry_at is not None, what="postponed")
    assert job.row.native_id.startswith("pid:") and job.attempts[-1].status == "FAILED"
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with session.ledger._write() as con:
            con.execute("UPDATE jobs SET native_id = ? WHERE id = ?", (f"pid:{bystander.pid}", job.id))
        assert job.cancel()
        time.sleep(0.5)
        assert bystander.poll() is None, "the cancel killed a process its job no longer ran"
        assert job.status == "CANCELLED"
    finally:
        bystander.kill()
        bystander.wait()


def test_python_calls_that_lose_their_worker_are_requeued_without_using_retries(unconfined, tmp_path):
    """The worker process running the call dies (SIGKILL), twice: each death ends one attempt
    (cause lost; dask does not rerun it unseen), each is requeued even with retries=0, and the
    third run succeeds: the ledger holds every run."""
    marker = tmp_path / "kills"

    def die_twice():
        kills = len(marker.read_text()) if marker.exists() else 0
        if kills < 2:
            with open(marker, "a") as f:
                f.write("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return kills

    task = unconfined.project("retries").task("worker")
    job = task.submit(die_twice)
    row = job.wait(timeout=120)
    assert row.status == "SUCCEEDED", row.reason
    assert [a.cause for a in job.attempts] == ["lost", "lost", None]
    assert job.result() == 2


@contextmanager
def finished_then_killed(session, gate, runs, before_kill=lambda: None):
    """Hold the collector (it cannot gather while the test holds the runner's lock), let the one
    call finish (`gate`), then SIGKILL the worker that ran it (its pid is the first line of `runs`);
    yields the call's dask future, the collector still held."""
    (calls,) = [b.dask_runners()["local"] for b in session.live_backends() if hasattr(b, "dask_runners")]
    with calls._lock:
        (_, fut), = calls._tasks.values()
        gate.touch()
        wait_for(lambda: fut.status == "finished", what="the call to finish")
        before_kill()
        os.kill(int(runs.read_text().split()[0]), signal.SIGKILL)
        yield fut


def test_a_finished_call_whose_worker_dies_before_its_result_is_collected_is_a_lost_attempt(unconfined, tmp_path):
    """The call finishes, then its worker is SIGKILLed before the collector gathers the result: the
    attempt ends FAILED with cause lost (not "NoneType: None"), dask's own rerun of it is cancelled,
    and the next attempt's result is the one committed."""
    gate, hold, runs = tmp_path / "gate", tmp_path / "hold", tmp_path / "runs"

    def finish_then_wait():
        while not gate.exists():
            time.sleep(0.01)
        with open(runs, "a") as f:
            f.write(f"{os.getpid()}\n")
        while hold.exists():  # dask's rerun inside the same attempt waits here until the test lets go
            time.sleep(0.01)
        return len(runs.read_text().splitlines())

    task = unconfined.project("retries").task("lost-result")
    job = task.submit(finish_then_wait)
    with finished_then_killed(unconfined, gate, runs, before_kill=hold.touch) as fut:
        wait_for(lambda: fut.status == "lost", what="the result to be lost with its worker")
    wait_for(lambda: job.row.attempts == 2, what="the next attempt")
    hold.unlink()
    row = job.wait(timeout=60)
    assert row.status == "SUCCEEDED", row.reason
    first, last = job.attempts
    assert (first.status, first.cause) == ("FAILED", "lost") and "before the result was collected" in first.reason
    assert last.cause is None
    assert job.result() == len(runs.read_text().splitlines())  # the last run's value, committed once


def test_a_lost_result_that_dask_computes_again_before_the_collector_looks_is_still_a_lost_attempt(unconfined,
                                                                                                    tmp_path):
    """As above, but dask's rerun (inside the same attempt) finishes before the collector looks: the
    collector saw no "lost" status, yet dask's remove-worker event named the result lost, so the
    rerun's result is not committed as the first attempt's; the ledger shows a lost attempt."""
    gate, runs = tmp_path / "gate", tmp_path / "runs"

    def finish_then_count():
        while not gate.exists():
            time.sleep(0.01)
        with open(runs, "a") as f:
            f.write(f"{os.getpid()}\n")
        return len(runs.read_text().splitlines())

    task = unconfined.project("retries").task("rerun-first")
    job = task.submit(finish_then_count)
    with finished_then_killed(unconfined, gate, runs) as fut:
        wait_for(lambda: len(runs.read_text().splitlines()) == 2 and fut.status == "finished",
                 what="dask to run it again and finish")
    row = job.wait(timeout=60)
    assert row.status == "SUCCEEDED", row.reason
    assert [a.cause for a in job.attempts] == ["lost", None]
    assert job.result() == 3  # the second attempt's run (the third run in all), committed once


KERNEL = textwrap.dedent("""
    import sys, time
    from htc_notebook import JobGroup, RetryPolicy, Session, SiteConfig
    s = Session(sys.argv[1], site=SiteConfig.builtin())
    task = s.project("p").task("t")
    # fails on its first run, succeeds on the next: each run adds a line to runs
    (job,) = task.submit_batch({"jobName": "flaky", "batchSize": 1, "htcJobDefinition": {"commands": [
        "sh", "-c", "echo run >> runs; [ $(wc -l < runs) -ge 2 ]"]}},
        retries=RetryPolicy(retries=1, backoff=4, max_backoff=4))
    while not (job.row.retry_at or 0) > time.time():
        time.sleep(0.05)
    print(job.id, flush=True)
    time.sleep(300)
""")


def test_a_retry_due_when_the_kernel_died_runs_once_in_the_next_sessions(tmp_path):
    root = tmp_path / "root"
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(root)], stdout=subprocess.PIPE, text=True)
    job_id = int(kernel.stdout.readline())
    kernel.send_signal(signal.SIGKILL)
    kernel.wait()
    # two new sessions (another kernel and this one) both see the retry come due; one runs it
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from htc_notebook import Session, SiteConfig
        with Session(sys.argv[1], site=SiteConfig.builtin()) as s:
            print(s.job(int(sys.argv[2])).wait(timeout=120).status, flush=True)
    """), str(root), str(job_id)], stdout=subprocess.PIPE, text=True)
    with Session(root, site=SiteConfig.builtin()) as s:
        row = s.job(job_id).wait(timeout=120)
        assert row.status == "SUCCEEDED", row.reason
        assert other.communicate(timeout=120)[0].strip() == "SUCCEEDED"
        task_dir = s.storage.task_dir("p", "t")
        assert (task_dir / "runs").read_text().splitlines() == ["run", "run"]  # run twice: the first and its retry
        attempts = s.ledger.attempts(job_id)
        assert [a.status for a in attempts] == ["FAILED", "SUCCEEDED"]
        assert [e.kind for e in s.ledger.events(job_id=job_id)].count("retrying") == 1


def test_a_call_that_loses_its_worker_resumes_from_its_checkpoint(unconfined, tmp_path):
    """`storage.current().checkpoint()` saves state a later run of the same job restores: the
    worker dies at step 20 on the first run; the next run starts at step 20, not 0."""
    marker = tmp_path / "died"

    def steps(n):
        from htc_notebook import storage

        st = storage.current()
        start, total = st.restore(default=(0, 0))
        for i in range(start, n):
            if i == 20 and not marker.exists():
                marker.write_text("x")
                os.kill(os.getpid(), signal.SIGKILL)
            total += i
            st.checkpoint((i + 1, total))
        return start, total

    job = unconfined.project("retries").task("checkpoint").submit(steps, 40)
    assert job.result(timeout=120) == (20, sum(range(40)))


def test_a_group_that_names_a_job_twice_still_ends(session):
    task = session.project("retries").task("twice")
    (job,) = task.submit_batch(batch(["true"]))
    group = JobGroup(session.parts, task.id, [job.id, job.id], "twice")
    assert group.wait(timeout=30) is group and group.counts()["SUCCEEDED"] == 1
