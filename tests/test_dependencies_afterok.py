"""Which jobs go to SLURM at once behind their parents (`sbatch --dependency=afterok`) and what is
sent, without a cluster (issue 27): the pure decision (`runtime.dependencies.afterok`), the sbatch
command line, arrays split by what they wait for, the feeder not probing them, and the ledger's
side: sent once (a compare-and-set), failed with its parent (cause `dependency`, naming it) and
waiting again when that parent is retried. The real thing runs in tests/test_dependencies_slurm.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from htc_notebook.backends.base import Launch
from htc_notebook.backends.slurm.arrays import _groups
from htc_notebook.backends.slurm.feeder import PROBES, Feeder
from htc_notebook.backends.slurm.script import sbatch_argv
from htc_notebook.errors import SpecError
from htc_notebook.ledger import AttemptStart, Ledger, NewJob
from htc_notebook.runtime.dependencies import ParentState, afterok
from htc_notebook.spec import JobSpec, PartitionProfile, RetryPolicy
from htc_notebook.states import Outcome


def running(job_id: int, native: str | None = "301_0", **kw) -> ParentState:
    return ParentState(**{"id": job_id, "status": "RUNNABLE", "kind": "command", "profile": "cpu",
                          "native_id": native, "retries": 0, **kw})


def test_command_jobs_behind_slurm_command_jobs_of_their_profile_with_no_retries_use_afterok():
    parents = [running(1, "301_0"), running(2, "301_1", status="RUNNING"), running(3, "302_0", status="SUCCEEDED")]
    assert afterok("command", "cpu", True, False, parents) == ("301_0", "301_1")  # a parent done needs no dependency
    assert afterok("command", "cpu", True, False, [running(1), running(1)]) == ("301_0",)
    assert afterok("command", "cpu", True, False, [running(1, status="SUCCEEDED")]) is None  # released by the ledger


@pytest.mark.parametrize("parent", [
    running(1, retries=1),  # a retry would be a new SLURM job
    running(1, retry_due=True),
    running(1, "sbatch:4f2a"),  # held by the feeder: not in SLURM yet
    running(1, None, status="SUBMITTED"),
    running(1, "301_0/5"),  # bundled: its array task also runs other jobs
    running(1, profile="gpu"),
    running(1, kind="python"),  # a call on a pilot
    running(1, "local:host:1"),
    running(1, mpi=True),
    running(1, status="WAITING"),
    running(1, status="HELD"),
    running(1, status="FAILED"),  # the ledger fails the child
    running(1, status="CANCELLED"),
])
def test_any_other_unfinished_parent_keeps_the_job_in_the_ledger(parent):
    assert afterok("command", "cpu", True, False, [running(2, "301_1"), parent]) is None


def test_only_slurm_command_jobs_use_afterok():
    assert afterok("python", "cpu", True, False, [running(1)]) is None
    assert afterok("command", "cpu", False, False, [running(1)]) is None  # a local profile
    assert afterok("command", "cpu", True, True, [running(1)]) is None  # MPI
    assert afterok("command", "cpu", True, False, []) is None


def test_the_sbatch_line_carries_the_dependency_and_keeps_a_never_satisfied_job_pending():
    argv = sbatch_argv("/d/a.sh", wrapper_log="/d/a.log", chdir="/d", comment="htc:t", after=("12_0", "12_1", "13"))
    assert argv == ["sbatch", "--parsable", "--output=/d/a.log", "--open-mode=append", "--chdir=/d", "--comment=htc:t",
                    "--dependency=afterok:12_0:12_1:13", "--kill-on-invalid-dep=no", "/d/a.sh"]
    assert not any(a.startswith(("--dependency", "--kill-on")) for a in sbatch_argv("/d/a.sh", wrapper_log="l",
                                                                                   chdir="/d"))
    for bad in ("12_0;rm -rf ~", "sbatch:4f2a", "12_0/5", ""):
        with pytest.raises(SpecError):
            sbatch_argv("/d/a.sh", wrapper_log="l", chdir="/d", after=(bad,))


def _launch(job_id: int, index: int, after: tuple[str, ...] = (), after_jobs: tuple[int, ...] = ()) -> Launch:
    return Launch(job_id=job_id, attempt=1, kind="command", cwd=Path("/d"), env={"HTC_JOB_INDEX": str(index)},
                  log_out="/d/o", log_err="/d/e", spec=JobSpec(commands=("true",)), after=after, after_jobs=after_jobs)


def test_jobs_waiting_for_other_parents_go_in_other_arrays_and_are_not_probed():
    launches = [_launch(10 + i, i, ("301_0",), (1,)) for i in range(3)] + [_launch(13, 3, ("302_0",), (2,))]
    assert [[launch.job_id for launch in g] for g in _groups(launches)] == [[10, 11, 12], [13]]
    profile = PartitionProfile(name="cpu", backend="slurm", cores_per_node=2, memory_per_node="2G")
    feeder = Feeder(profile, None, send=lambda *a: None, track=lambda *a: None)  # type: ignore[arg-type]
    feeder.add([[_launch(100 + i, i, ("301_0",), (1,)) for i in range(4 * PROBES)]])
    feeder.add([[_launch(200 + i, i) for i in range(4 * PROBES)]])
    chunks = list(feeder._held)
    assert [(len(c.launches), c.bundle) for c in chunks] == [(4 * PROBES, 1), (PROBES, 1), (3 * PROBES, None)]


def test_the_ledger_sends_a_job_once_fails_it_with_its_parent_and_lets_it_wait_again_on_a_retry(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        a, b = ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec()), NewJob("b", "command", {}, JobSpec())])
        ledger.start_attempts([AttemptStart(a), AttemptStart(b)])
        ledger.set_status([a], "RUNNABLE", native_id="301_0")
        ledger.set_status([b], "RUNNABLE", native_id="301_1")
        (child,) = list(ledger.add_jobs(task.id, [NewJob("c", "command", {}, JobSpec(), after=(a, b))]))
        (grandchild,) = list(ledger.add_jobs(task.id, [NewJob("g", "command", {}, JobSpec(), after=(child,))]))
        assert ledger.parent_states([a]) == [(a, "RUNNABLE", "command", "local", "301_0", 0, False, False)]
        sent = ledger.send_after({child: ("waiting for jobs 1, 2 (SLURM afterok)", ["301_0", "301_1"])}, "h:1")
        assert [(r.id, r.status, r.reason, r.spec.owner, r.spec.afterok) for r in sent] == [
            (child, "SUBMITTED", "waiting for jobs 1, 2 (SLURM afterok)", "h:1", ("301_0", "301_1"))]
        assert ledger.send_after({child: ("again", ["301_0"])}, "h:2") == []  # of two processes, one sends it
        assert ledger.send_after({grandchild: ("x", [])}, "h:1") == []  # its parent is not in SLURM yet: not sent
        ledger.start_attempts([AttemptStart(child)])
        ledger.set_status([child], "RUNNABLE", native_id="302_0")
        assert ledger.send_after({grandchild: ("behind 302_0", ["302_0"])}, "h:1")[0].id == grandchild
        ledger.start_attempts([AttemptStart(grandchild)])
        ledger.set_status([grandchild], "RUNNABLE", native_id="303_0")
        assert ledger.fail_sent_dependents() == []  # no parent failed
        ledger.record_outcomes([Outcome(b, 1, "SUCCEEDED"), Outcome(a, 1, "FAILED", reason="exited with code 3",
                                                                   cause="exit")])
        assert ledger.fail_sent_dependents([b]) == []  # b succeeded: an index look-up finds nothing
        failed = ledger.fail_sent_dependents([a])
        assert sorted((j, n, native) for j, n, _, native in failed) == [(child, 1, "302_0"), (grandchild, 1, "303_0")]
        row = ledger.job(child)
        assert row.status == "FAILED" and row.reason.startswith(f"job {a}, which it depends on, ended FAILED "
                                                                "(exited with code 3)")
        assert [(t.number, t.status, t.cause) for t in ledger.attempts(child)] == [(1, "FAILED", "dependency")]
        assert ledger.job(grandchild).reason.startswith(f"job {child}, which it depends on, ended FAILED")
        assert ledger.fail_sent_dependents() == [] and ledger.fail_sent_dependents([a]) == []
        ledger.requeue([a], "retried by user")  # they wait again, in the ledger
        assert {ledger.job(j).status for j in (child, grandchild)} == {"WAITING"}


def test_a_job_retried_alone_while_its_parent_failed_is_not_taken_for_one_sent_with_afterok(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec())]))
        (child,) = list(ledger.add_jobs(task.id, [NewJob("c", "command", {}, JobSpec(), after=(a,))]))
        ledger.start_attempts([AttemptStart(a)])
        ledger.record_outcomes([Outcome(a, 1, "FAILED", cause="exit")])
        assert ledger.fail_dependents() == [(child, 1)]
        assert ledger.requeue([child], "retried by user") == [child]  # run as the user asked
        ledger.start_attempts([AttemptStart(child, native_id="310_0", status="RUNNABLE")])
        assert ledger.fail_sent_dependents([a]) == ledger.fail_sent_dependents() == []
        assert ledger.rewait_sent_children([a]) == ledger.rewait_stale_sent() == []
        assert ledger.job(child).status == "RUNNABLE"


def test_a_job_sent_behind_a_parent_requeued_by_a_process_that_died_waits_again_on_the_next_look(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec())]))
        ledger.start_attempts([AttemptStart(a, native_id="301_0", status="RUNNABLE")])
        (child,) = list(ledger.add_jobs(task.id, [NewJob("c", "command", {}, JobSpec(), after=(a,))]))
        assert ledger.send_after({child: ("behind 301_0", ["301_0"])}, "h:1")
        ledger.start_attempts([AttemptStart(child, native_id="302_0", status="RUNNABLE")])
        assert ledger.rewait_stale_sent() == []  # its parent is the job it waits for
        ledger.record_outcomes([Outcome(a, 1, "LOST", reason="gone", cause="lost")])
        assert ledger.rewait_stale_sent() == []  # a retry is due, not started
        (row,) = [r for r in ledger.retries_due(time.time() + 1, 10) if r.id == a]
        assert ledger.requeue_retry(a, row.attempts, "h:2", {}, "requeued")  # ... and h:2 died here
        assert ledger.rewait_stale_sent() == [(child, 1, task.id, "302_0")]
        row = ledger.job(child)
        assert (row.status, row.native_id, row.spec.afterok) == ("WAITING", None, None)


def test_a_parent_sent_with_retries_is_not_followed_by_afterok(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec(retry=RetryPolicy(retries=2)))]))
        ledger.start_attempts([AttemptStart(a)])
        ledger.set_status([a], "RUNNABLE", native_id="301_0")
        assert afterok("command", "local", True, False, [ParentState(*ledger.parent_states([a])[0])]) is None


def test_jobs_sent_behind_a_parent_that_runs_again_wait_in_the_ledger_and_late_reports_change_nothing(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        (a,) = list(ledger.add_jobs(task.id, [NewJob("a", "command", {}, JobSpec())]))
        ledger.start_attempts([AttemptStart(a)])
        ledger.set_status([a], "RUNNABLE", native_id="301_0")
        (child,) = list(ledger.add_jobs(task.id, [NewJob("c", "command", {}, JobSpec(), after=(a,))]))
        (grandchild,) = list(ledger.add_jobs(task.id, [NewJob("g", "command", {}, JobSpec(), after=(child,))]))
        assert ledger.send_after({child: ("behind 301_0", ["301_0"])}, "h:1")
        ledger.start_attempts([AttemptStart(child)])
        ledger.set_status([child], "RUNNABLE", native_id="302_0")
        assert ledger.send_after({grandchild: ("behind 302_0", ["302_0"])}, "h:1")
        ledger.start_attempts([AttemptStart(grandchild)])
        ledger.set_status([grandchild], "RUNNABLE", native_id="303_0")
        # its node failed: requeued (a new SLURM job, which afterok does not follow)
        ledger.record_outcomes([Outcome(a, 1, "FAILED", reason="node failure", cause="node")])
        assert ledger.job(a).retry_at is not None
        assert ledger.rewait_sent_children([a]) == [(child, 1, task.id, "302_0"), (grandchild, 1, task.id, "303_0")]
        for j in (child, grandchild):
            row = ledger.job(j)
            assert (row.status, row.native_id) == ("WAITING", None), row
            assert [(t.number, t.status) for t in ledger.attempts(j)] == [(1, "CANCELLED")]
        # what the poller says late of the jobs SLURM had changes nothing
        ledger.set_status([child], "RUNNABLE", reason="pending: DependencyNeverSatisfied")
        ledger.record_outcomes([Outcome(child, 1, "CANCELLED", reason="cancelled in SLURM")])
        assert ledger.intend([child], "sbatch:4f2a", "being submitted") == []
        assert ledger.job(child).status == "WAITING"
        assert ledger.rewait_sent_children([a]) == []
        ledger.record_outcomes([Outcome(a, 1, "SUCCEEDED")])  # the retry (any attempt) succeeds: released as usual
        assert [r.id for r in ledger.ready_rows()] == [child]
        # held work of a dead session that can no longer go behind its parents waits in the ledger again
        assert ledger.send_after({child: ("behind 301_0", ["301_0"])}, "h:1")
        ledger.start_attempts([AttemptStart(child)])
        ledger.intend([child], "sbatch:4f2a", "being submitted")
        assert ledger.rewait([child, grandchild], "its parents changed") == [child]  # the grandchild waits already
        assert (ledger.job(child).status, ledger.job(child).reason) == ("WAITING", "waiting again: its parents changed")
        assert [t.status for t in ledger.attempts(child)] == ["CANCELLED", "CANCELLED"]
