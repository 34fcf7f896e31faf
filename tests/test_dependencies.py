"""Jobs that feed each other (issue 27, item 1): a JobHandle among a call's arguments makes the new
job WAIT in the ledger until that job SUCCEEDED, and the function gets its result; a parent that
fails for good fails its descendants (cause `dependency`, naming it), and retrying it lets them
wait again; a DAG whose builder was SIGKILLed is finished by the next session, no job run twice;
of two processes releasing one ready job, one gets it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from htc_notebook import JobFailed, JobGroup, Session, SiteConfig
from htc_notebook.ledger import AttemptStart, Ledger, NewJob
from htc_notebook.server.api import wire_status
from htc_notebook.spec import JobSpec
from htc_notebook.states import Outcome

REPO = Path(__file__).resolve().parents[1]


def add(a, b):
    return a + b


def total(values, extra):
    return sum(values) + sum(extra.values())


def fail_unless(name: str, value: int) -> int:
    """Fails until the file `name` exists in its task directory."""
    if not os.path.exists(os.path.join(os.environ["HTC_TASK_DIR"], name)):
        raise RuntimeError(f"no {name} yet")
    return value


def tally(name: str, value):
    """Appends a line to `name` in its task directory (how many times it ran), returns `value`."""
    with open(os.path.join(os.environ["HTC_TASK_DIR"], name), "a") as f:
        f.write("ran\n")
    return value


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with Session(tmp_path_factory.mktemp("deps"), site=SiteConfig.builtin()) as s:
        yield s


def test_a_chain_and_a_diamond_pass_results_in_place_of_handles(session):
    task = session.project("deps").task("diamond")
    a = task.submit(add, 1, 2)
    b = task.submit(add, a, 10)  # a chain: a -> b
    c = task.submit(add, a, 100)
    d = task.submit(total, [a, b], extra={"c": c, "n": 1000})  # a diamond, handles nested in a list and a dict
    group = task.submit(total, JobGroup(task.parts, task.id, [b.id, c.id], "bc"), {})  # a group: its results
    assert d.result(timeout=120) == 3 + 13 + 103 + 1000
    assert (b.result(timeout=30), c.result(timeout=30), group.result(timeout=30)) == (13, 103, 116)
    ledger = task.parts.ledger
    assert ledger.parents(d.id) == sorted([a.id, b.id, c.id]) and ledger.children(a.id) == [b.id, c.id, d.id]
    assert [x.attempts[-1].number for x in (a, b, c, d)] == [1, 1, 1, 1]  # each ran once
    assert [h.id for h in d.parents()] == sorted([a.id, b.id, c.id])
    assert [h.id for h in b.children()] == [d.id, group.id]
    ax = JobGroup(task.parts, task.id, [d.id, group.id], "tips").graph()  # the tips and all they depend on
    (dots,) = ax.collections
    assert len(dots.get_offsets()) == 5  # a, b, c, d, group
    assert sorted(x for x, _ in dots.get_offsets()) == [0, 1, 1, 2, 2]  # generations: a; b, c; d, group
    from htc_notebook.server.api import HTCApi
    from htc_notebook.server.auth import Auth
    from htc_notebook.ui.jobs_widget import JobsTable

    view = HTCApi(session, Auth(session.root), owner="me").get_job("me", "deps", str(task.id), str(b.id))
    assert (view["dependsOn"], view["dependents"]) == ([str(a.id)], [str(d.id), str(group.id)])

    detail = JobsTable(task.parts, task.id, interval=3600).detail(d.id)
    assert f"depends on jobs {', '.join(map(str, sorted([a.id, b.id, c.id])))}" in detail
    events = [e.message for e in ledger.events(task_id=task.id)]
    # each child went to this session's dask cluster behind its parents' tasks, or (a parent had ended
    # already) was released by the ledger: none ran before its parents
    assert all("sent to its session's dask cluster" in m or "the jobs it depends on succeeded" in m
               for m in events if "released" in m), events
    assert sum("released" in m for m in events) == 4, events


def test_a_failed_parent_fails_its_descendants_and_a_retry_lets_them_run(session):
    task = session.project("deps").task("failing")
    a = task.submit(fail_unless, "go", 5)
    b = task.submit(add, a, 1)
    c = task.submit(add, b, 1)  # a grandchild
    other = task.submit(add, 40, 2)  # another branch: untouched
    e = task.submit(add, other, 0)
    with pytest.raises(JobFailed):
        c.result(timeout=120)
    for child in (b, c):
        row = child.row
        assert row.status == "FAILED" and child.attempts[-1].cause == "dependency", (row.status, row.reason)
    assert f"job {a.id}" in b.row.reason and f"job {b.id}" in c.row.reason
    assert e.result(timeout=60) == 42
    (task.storage.task_dir / "go").write_text("")
    assert a.retry()
    assert {b.status, c.status} <= {"WAITING", "SUBMITTED", "RUNNABLE", "RUNNING", "SUCCEEDED"}
    assert c.result(timeout=120) == 7 and b.result() == 6


def test_a_command_batch_after_a_call_starts_once_the_call_succeeded(session):
    task = session.project("deps").task("after")
    first = task.submit(tally, "first", 1)
    group = task.submit_batch({"jobName": "then", "batchSize": 2, "htcJobDefinition": {
        "commands": ["sh", "-c", "cat first >> seen"]}}, after=[first])
    group.wait(timeout=120)
    assert group.counts()["SUCCEEDED"] == 2
    assert (task.storage.task_dir / "seen").read_text() == "ran\n" * 2  # both saw the call's file
    for job in group:
        assert job.row.started >= first.row.ended


def test_a_waiting_job_is_runnable_in_the_rest_view_saying_what_it_waits_for(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec())]))
        (b,) = list(ledger.add_jobs(task.id, [NewJob("b", "command", {}, JobSpec(), after=(a,))]))
        assert wire_status(ledger.job(b)) == ("RUNNABLE", f"waiting for job {a}")
        assert ledger.ready_rows() == []  # its parent has not succeeded
        with pytest.raises(Exception, match="no job 99"):
            list(ledger.add_jobs(task.id, [NewJob("c", "command", {}, JobSpec(), after=(99,))]))


def _release(path: str, owner: str, ids: list[int], out) -> None:
    with Ledger(path) as ledger:
        numbers = ledger.start_attempts([AttemptStart(i) for i in ids], release_for=owner)
        out.put((owner, [i for i, n in zip(ids, numbers, strict=True) if n]))


def test_of_processes_releasing_the_same_ready_jobs_each_job_goes_to_one(tmp_path):
    path = tmp_path / "race.db"
    with Ledger(path) as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec())]))
        ids = list(ledger.add_jobs(task.id, [NewJob(f"c{i}", "command", {}, JobSpec(), after=(a,))
                                            for i in range(200)]))
        ledger.start_attempts([AttemptStart(a)])
        ledger.record_outcomes([Outcome(a, 1, "SUCCEEDED")])
        assert [r.id for r in ledger.ready_rows()] == ids
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_release, args=(str(path), f"h:{n}", ids, out)) for n in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    released = [j for _, mine in got for j in mine]
    assert sorted(released) == ids  # every job released, none twice
    with Ledger(path) as ledger:
        assert {(r.status, r.attempts) for r in ledger.jobs(task.id) if r.id in ids} == {("RUNNING", 1)}  # started once
        owners = {ledger.job(j).spec.owner for j in ids}
        assert owners <= {f"h:{n}" for n in range(4)}


BUILDER = textwrap.dedent("""
    import os, time
    from htc_notebook import Session, SiteConfig

    def tally(name, value):  # as in the test module; defined here, so they travel by value
        with open(os.path.join(os.environ["HTC_TASK_DIR"], name), "a") as f:
            f.write("ran\\n")
        return value

    def when_told(name, value):
        open(os.path.join(os.environ["HTC_TASK_DIR"], "started-" + name), "a").close()
        while not os.path.exists(os.path.join(os.environ["HTC_TASK_DIR"], name)):
            time.sleep(0.1)
        return value

    def main():
        s = Session({root!r}, site=SiteConfig.builtin())
        task = s.project("deps").task("orphan")
        a = task.submit(tally, "a", 2)
        a.result(timeout=120)
        slow = task.submit(when_told, "gate", 3)  # runs until the test opens the gate: the builder dies first
        b = task.submit(tally, "b", [a, slow])
        big = task.submit(tally, "big", [slow, "x" * 300_000])  # a call too large for the ledger: a file
        while not (task.storage.task_dir / "started-gate").exists():  # its call runs
            time.sleep(0.05)
        print(a.id, slow.id, b.id, big.id, flush=True)
        time.sleep(600)  # SIGKILLed here: b and big wait behind slow in a dask cluster that dies

    if __name__ == "__main__":  # its LocalCluster's workers import this file
        main()
""")


def test_a_dag_whose_builder_was_sigkilled_is_finished_by_the_next_session_with_no_job_run_twice(tmp_path):
    root = tmp_path / "root"
    script = tmp_path / "builder.py"
    script.write_text(BUILDER.format(root=str(root)))
    builder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        a, slow, b, big = map(int, builder.stdout.readline().split())
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait(30)
    with Session(root, site=SiteConfig.builtin()) as s:
        task = s.project("deps").task("orphan")
        # b went behind `slow` in the builder's dask cluster, gone with it: the ledger says so, and this
        # session's reconcile loop marks it LOST and, its parent not done, has it wait: behind slow's retry
        # in this session's dask cluster, or, where slow's retry was not yet dispatched here when b's was
        # (seen under load), in the ledger until slow succeeds. Its retry is started by a tick after the
        # one that found it LOST: CI once looked in between
        waiting = {("RUNNABLE", f"waiting for job {slow} (in this session's dask cluster)"),
                   ("WAITING", "waiting again: a job it was sent behind runs again")}
        deadline = time.monotonic() + 30
        while (s.job(b).status, s.job(b).row.reason) not in waiting and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (s.job(b).status, s.job(b).row.reason) in waiting
        (task.storage.task_dir / "gate").write_text("")  # the killed run of `slow` is LOST and run again here
        assert s.job(b).result(timeout=180) == [2, 3]
        assert s.job(big).result(timeout=180) == [3, "x" * 300_000]
        for name in ("a", "b", "big"):
            assert (task.storage.task_dir / name).read_text() == "ran\n", name  # each ran once
        assert [x.status for x in s.job(slow).attempts] == ["LOST", "SUCCEEDED"]  # its result committed once
        assert s.job(slow).attempts[0].cause == "owner"
        assert [(x.status, x.cause) for x in s.job(b).attempts] == [("LOST", "owner"), ("SUCCEEDED", None)]
        assert s.reconciler.released == 2  # b and big, released here: not by the dead builder
        # their calls came from what the builder stored: b's in the ledger, big's in a file
        small_digest, big_digest = s.job(b).row.spec.payload, s.job(big).row.spec.payload
        assert s.parts.ledger.payload(task.id, small_digest) is not None
        assert s.parts.ledger.payload(task.id, big_digest) is None
        assert s.parts.storage.payload_path("deps", "orphan", big_digest).stat().st_size > 300_000
        assert not s.parts.storage.payload_path("deps", "orphan", small_digest).exists()


def test_a_sweep_over_jobs_calls_each_member_with_its_jobs_result(session):
    from htc_notebook import SpecError, Sweep

    task = session.project("deps").task("sweep-over-jobs")
    starts = [task.submit(add, i, 0) for i in range(3)]
    group = task.sweep(add, Sweep.zip(a=starts, b=[10, 20, 30]))
    assert group.results(timeout=120) == [10, 21, 32]
    assert [task.parts.ledger.parents(j) for j in group.ids] == [[h.id] for h in starts]
    assert group.to_dataframe()["a"].tolist() == [{"$job": h.id} for h in starts]  # the reference, as stored
    again = task.sweep(add, Sweep.zip(a=starts, b=[10, 20, 30]))
    assert again.skipped == 3  # the same jobs: the same members
    with pytest.raises(SpecError, match="after="):
        task.sweep("echo {a}", Sweep.zip(a=starts))


def test_the_lammps_ffs_example_neither_follows_nor_waits_on_what_its_jobs_left(tmp_path):
    """The notebook's LAMMPS FFS writes inputs into, and reads results from, the task directory its
    jobs write: a link a job left is replaced, not followed, and a FIFO is refused, not waited on."""
    from htc_notebook.errors import UntrustedFile
    from htc_notebook.examples import ffs_lammps

    (tmp_path / "outside").write_text("kept")
    os.symlink(tmp_path / "outside", tmp_path / "ffs.in")
    ffs_lammps.write_inputs(tmp_path)
    assert (tmp_path / "outside").read_text() == "kept" and not (tmp_path / "ffs.in").is_symlink()
    assert "fix halt" not in (tmp_path / "ffs.in").read_text() and "langevin" in (tmp_path / "ffs.in").read_text()
    (tmp_path / "flux-0.pts").write_text("-0.7 1.0\n-0.7 2.0\n")
    (tmp_path / "flux-0.time").write_text("400.0\n")
    assert ffs_lammps.rate(tmp_path)["flux"] == 2 / 400.0
    os.mkfifo(tmp_path / "flux-1.pts")
    with pytest.raises(UntrustedFile, match="FIFO"):
        ffs_lammps.rate(tmp_path)
