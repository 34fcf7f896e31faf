"""Python calls sent behind their parents in their session's dask cluster (backends/dask_chain.py):
a call whose unfinished parents are calls this session runs is SUBMITTED at once, saying what it
waits for, and dask starts it when they end, with their values, loaded in its own sandbox. A parent
that fails for good fails it (cause `dependency`, naming it), one that is retried or lost sends it
back to wait in the ledger, a cancelled one fails it; each call runs once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.dask_chain import RECENT_BYTES, UNFOUND_SECONDS, Behind, Chains
from htc_notebook.backends.worker import JobRunner, Upstream, run_after
from htc_notebook.spec import RetryPolicy

SENT = "sent to its session's dask cluster behind the calls it depends on"


def add(a, b):
    return a + b


def tally(name: str, value):
    """Appends a line to `name` in its task directory (how many times it ran), returns `value`."""
    with open(os.path.join(os.environ["HTC_TASK_DIR"], name), "a") as f:
        f.write("ran\n")
    return value


def when_told(name: str, value):
    """Says it started (the file started-`name`), waits until the file `name` exists in its task
    directory, then returns `value`."""
    open(os.path.join(os.environ["HTC_TASK_DIR"], "started-" + name), "w").close()
    while not os.path.exists(os.path.join(os.environ["HTC_TASK_DIR"], name)):
        time.sleep(0.05)
    return value


def fail_once(name: str, value):
    """Fails the first time (leaving `name` behind), returns `value` the next."""
    path = os.path.join(os.environ["HTC_TASK_DIR"], name)
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return value


def broken(value):
    raise ValueError(f"no good: {value}")


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with Session(tmp_path_factory.mktemp("chained"), site=SiteConfig.builtin()) as s:
        yield s


def sent_behind(task, job_id: int) -> bool:
    return any(SENT in e.message for e in task.parts.ledger.events(job_id=job_id))


def test_a_chain_goes_to_dask_at_once_saying_what_it_waits_for_and_each_call_runs_once(session):
    task = session.project("chain").task("plain")
    gate = task.storage.task_dir / "gate"
    first = task.submit(when_told, "gate", 1)
    chain = [first]
    for i in range(5):
        chain.append(task.submit(add, chain[-1], 10 ** i))
    nested = task.submit(tally, "nested", {"x": [chain[1], (chain[2],)]})  # markers nested in a dict
    # all sent before the first parent ended: SUBMITTED or RUNNABLE in the ledger, never WAITING
    for parent, child in zip(chain, chain[1:], strict=False):
        assert sent_behind(task, child.id)
        row = child.row
        assert row.status in ("SUBMITTED", "RUNNABLE"), row.status
        assert row.reason == f"waiting for job {parent.id} (in this session's dask cluster)"
    gate.write_text("")
    assert chain[-1].result(timeout=120) == 1 + 11111
    assert nested.result(timeout=60) == {"x": [2, (12,)]}
    assert (task.storage.task_dir / "nested").read_text() == "ran\n"
    assert all([a.number for a in h.attempts] == [1] for h in chain)  # each ran once


def test_a_parent_that_fails_for_good_fails_its_chain_naming_it_and_spares_the_other_branch(session):
    task = session.project("chain").task("failed")
    gate = task.storage.task_dir / "gate"
    root = task.submit(when_told, "gate", 5)
    bad = task.submit(broken, root)
    child = task.submit(tally, "child", bad)
    grandchild = task.submit(tally, "grandchild", child)
    other = task.submit(tally, "other", root)
    assert sent_behind(task, child.id) and sent_behind(task, grandchild.id)
    gate.write_text("")
    assert other.result(timeout=120) == 5
    for h in (child, grandchild):
        wait_for(lambda h=h: h.row if h.row.status == "FAILED" else None, what=f"job {h.id} to fail")
        assert h.attempts[-1].cause == "dependency", h.attempts[-1]
    assert f"job {bad.id}, which it depends on, ended FAILED" in child.row.reason, child.row.reason
    assert f"job {child.id}, which it depends on, ended FAILED" in grandchild.row.reason
    assert not (task.storage.task_dir / "child").exists() and not (task.storage.task_dir / "grandchild").exists()


def test_a_retried_parent_sends_its_child_back_to_wait_and_the_child_runs_once_with_the_retry(session):
    task = session.project("chain").task("retried")
    parent = task.submit(fail_once, "failed-once", 7, retries=RetryPolicy(retries=1, backoff=0))
    child = task.submit(tally, "child", parent)
    assert child.result(timeout=120) == 7
    assert [a.status for a in parent.attempts] == ["FAILED", "SUCCEEDED"]
    assert (task.storage.task_dir / "child").read_text() == "ran\n"  # once, with the retry's value
    # sent behind the first attempt, then back in the ledger once it was retried, released after the second
    assert [(a.status, a.reason) for a in child.attempts] == [
        ("CANCELLED", "not run: a job it was sent behind runs again; it waits in the ledger"), ("SUCCEEDED", None)]
    assert [e.message for e in task.parts.ledger.events(job_id=child.id)][1:] == [
        f"job released: {SENT}", "job waiting: a job it was sent behind runs again",
        "job released: the jobs it depends on succeeded"]


def test_a_cancelled_parent_fails_its_chained_child_which_never_runs(session):
    task = session.project("chain").task("cancelled")
    parent = task.submit(when_told, "never", 1)
    child = task.submit(tally, "child", parent)
    assert sent_behind(task, child.id)
    wait_for(lambda: (task.storage.task_dir / "started-never").exists(), what="the parent to start")
    parent.cancel()
    row = wait_for(lambda: child.row if child.row.status == "FAILED" else None, what="the child to fail")
    assert child.attempts[-1].cause == "dependency" and f"job {parent.id}" in row.reason, row.reason
    assert "cancelled in its session's dask cluster, where it waited behind it" in row.reason, row.reason
    backend = session.parts.backends.get(session.parts.profiles.get("local"))
    wait_for(lambda: child.id not in backend.running(), what="the child's dask task to be dropped")
    (task.storage.task_dir / "never").write_text("")  # had the parent run on, the child would not start either
    time.sleep(0.5)
    assert not (task.storage.task_dir / "child").exists()


@pytest.mark.sandbox
def test_a_parents_value_is_loaded_in_its_childs_sandbox_never_in_the_worker(session):
    """A parent's value is the parent's code: unpickling it may run anything. It is loaded where the
    child runs, confined: a value that writes into another task on load cannot, there."""
    other = session.project("chain").task("victim")
    target = str(other.storage.task_dir / "pwned")
    task = session.project("chain").task("attacker")

    def evil(path):
        class Payload:
            def __reduce__(self):
                return (open, (path, "w"))
        return Payload()

    parent = task.submit(evil, target)
    child = task.submit(tally, "child", parent)
    row = child.wait(timeout=120)
    assert not os.path.exists(target)  # its load failed in the sandbox (the data root hides other tasks)
    assert row.status == "FAILED" and "could not load the result of a job it depends on" in row.reason, row.reason


def test_run_after_fails_with_its_parents_message_and_fills_values_where_it_runs(tmp_path):
    runner = JobRunner(lambda a, b: a + b[0], str(tmp_path), {})
    job = (1, 0, (Upstream(7),), {"b": [Upstream(8)]}, (str(tmp_path / "o"), str(tmp_path / "e")))
    import cloudpickle

    ok = {"ok": True, "value": cloudpickle.dumps(40)}
    (report,) = run_after(runner, job, {7: (ok, 0), 8: ([{"ok": False, "message": "boom"}, ok], 1)})
    assert report["ok"] and cloudpickle.loads(report["value"]) == 80  # a pack's list: its own place in it
    (report,) = run_after(runner, job, {7: (ok, 0), 8: ([ok, {"ok": False, "message": "boom"}], 1)})
    assert (report["ok"], report["cause"], report["message"]) == (False, "dependency",
                                                                  "job 8, which it depends on, failed: boom")


def test_chains_wait_for_parents_still_queued_and_find_collected_ones_among_recent_reports():
    chains = Chains()
    b = Behind((3, 0, (), {}, ("o", "e")), 1, JobRunner(len, "/", {}), (1, 2))
    assert chains.inputs(b, {1: ("future", 0)}, waiting={2: 1}, now=0.0) is None  # 2 queued: not yet
    # 2 found nowhere: another thread may be handing it over; lost only once that has taken too long
    assert chains.inputs(b, {1: ("future", 0)}, waiting={}, now=100.0) is None
    assert chains.inputs(b, {1: ("future", 0)}, waiting={}, now=100.0 + UNFOUND_SECONDS - 1) is None
    assert chains.inputs(b, {1: ("future", 0)}, waiting={}, now=100.0 + UNFOUND_SECONDS) is False
    chains.collected(2, {"ok": True, "value": b"x"})
    assert chains.inputs(b, {1: ("future", 0)}, waiting={}, now=200.0) == {1: ("future", 0),
                                                                          2: ({"ok": True, "value": b"x"}, 0)}
    chains.collecting.add(1)
    assert chains.inputs(b, {}, waiting={}, now=200.0) is None  # its report is being gathered
    chains.collected(4, {"ok": True, "value": b"x" * (2 << 20)})  # too large to keep
    assert 4 not in chains.recent
    big = b"x" * (1 << 20)  # kept, but no more than RECENT_BYTES of them all together: the oldest go
    for job in range(100, 100 + (RECENT_BYTES >> 20) + 5):
        chains.collected(job, {"ok": True, "value": big})
    assert len(chains.recent) <= RECENT_BYTES >> 20 and 100 not in chains.recent and job in chains.recent


def test_a_lost_parent_is_requeued_and_its_child_waits_for_it_then_runs_once(tmp_path):
    """The parent's worker is SIGKILLed under it (sandbox none: the call is the worker): the parent is
    requeued (cause lost), its child's dask task went with it and is not reported; the child waits in
    the ledger again and runs once, with the parent's second value."""
    site = SiteConfig.from_yaml("profiles:\n  local:\n    sandbox: none\n")
    marker = tmp_path / "kills"

    def die_once():
        if not marker.exists():
            marker.write_text("x")
            time.sleep(0.3)  # its child is sent behind it meanwhile
            os.kill(os.getpid(), signal.SIGKILL)
        return 42

    with Session(tmp_path / "root", site=site) as s:
        task = s.project("chain").task("lost")
        parent = task.submit(die_once)
        child = task.submit(tally, "child", parent)
        assert sent_behind(task, child.id)
        assert child.result(timeout=120) == 42
        assert [a.cause for a in parent.attempts] == ["lost", None]
        assert (task.storage.task_dir / "child").read_text() == "ran\n"
        assert child.attempts[-1].status == "SUCCEEDED"
