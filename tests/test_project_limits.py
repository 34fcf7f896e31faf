"""A project's vCPU limit (HTC `limits`): its jobs never use more vCPUs at once, across kernels and
backends; the rest wait HELD in the ledger and start, in order, as room appears; a kernel killed
while holding jobs leaves them to the next session, which runs each exactly once.

Concurrency is measured from what the jobs themselves recorded (when each started and ended)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from htc_notebook import Session, Sweep
from htc_notebook.errors import SpecError
from htc_notebook.ledger import AttemptStart, Ledger, NewJob
from htc_notebook.spec import JobSpec
from htc_notebook.states import Outcome

from test_slurm import REPO, site  # noqa: F401 - the SLURM test cluster's site fixture

SPAN = ["python3", "-c", "import time; t = time.time(); time.sleep({s}); print(t, time.time())"]


def nap(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def most_at_once(spans) -> int:
    """The most spans (start, end) that overlap at any moment."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def command_spans(group) -> list[tuple[float, float]]:
    return [tuple(map(float, h.logs().split())) for h in group]


def test_a_projects_jobs_never_use_more_vcpus_than_its_limit(tmp_path):
    with Session(tmp_path) as s:
        project = s.project("md")
        assert project.set_vcpu_limit(1).vcpus == 1
        task = project.task("t")
        group = task.sweep(nap, Sweep.grid(seconds=[0.4 + i / 100 for i in range(6)]))
        time.sleep(0.3)
        held = [h.row for h in group if h.row.status == "HELD"]
        assert held and all("vCPU limit: 1 vCPUs" in r.reason for r in held), [h.row for h in group]
        group.wait(timeout=120)
        assert group.counts()["SUCCEEDED"] == 6
        assert most_at_once([h.result() for h in group]) == 1
        assert all(h.row.attempts == 1 for h in group)  # held is not an attempt


def test_without_a_limit_the_same_sweep_runs_side_by_side(tmp_path):
    """The measurement above could fail: the same sweep, unlimited, overlaps."""
    with Session(tmp_path) as s:
        sweep = Sweep.grid(seconds=[0.6 + i / 100 for i in range(4)])
        group = s.project("md").task("t").sweep(nap, sweep).wait(timeout=120)
        assert most_at_once([h.result() for h in group]) >= 2


def test_two_kernels_submitting_to_one_project_share_its_limit(tmp_path):
    code = ("import sys, json; from htc_notebook import Session, Sweep\n"
            "if __name__ == '__main__':\n"
            "    with Session(sys.argv[1]) as s:\n"
            f"        g = s.project('md').task(sys.argv[2]).sweep({SPAN!r}, Sweep.grid(s=[0.5, 0.51, 0.52, 0.53]))"
            ".wait(timeout=120)\n"
            "        print(json.dumps([h.logs() for h in g]))\n")
    with Session(tmp_path) as s:
        s.project("md").set_vcpu_limit(2)
    kernels = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"k{i}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [k.communicate(timeout=180) for k in kernels]
    assert all(k.returncode == 0 for k in kernels), [err[-2000:] for _, err in outs]
    spans = [tuple(map(float, log.split())) for out, _ in outs for log in json.loads(out.strip().splitlines()[-1])]
    assert len(spans) == 8
    assert most_at_once(spans) <= 2


def test_a_job_above_the_limit_is_refused_before_anything_is_written(tmp_path):
    with Session(tmp_path) as s:
        project = s.project("md")
        project.set_vcpu_limit(1)
        task = project.task("t")
        with pytest.raises(SpecError, match=r"cores = 2 .*vCPU limit of project 'md', 1"):
            task.submit_batch({"jobName": "wide", "batchSize": 3,
                               "htcJobDefinition": {"commands": ["true"], "maxVCpus": 2}})
        assert sum(task.counts().values()) == 0


def test_raising_the_limit_releases_held_jobs_at_once(tmp_path):
    with Session(tmp_path) as s:
        project = s.project("md")
        limit = project.set_vcpu_limit(1)
        task = project.task("t")
        group = task.sweep(nap, Sweep.grid(seconds=[3.0, 3.01]))
        deadline = time.time() + 30
        while task.counts()["HELD"] != 1 and time.time() < deadline:
            time.sleep(0.1)
        assert task.counts()["HELD"] == 1
        project.update_limit(limit.id, 2)
        group.wait(timeout=60)
        assert most_at_once([h.result() for h in group]) == 2  # the held one started before the first ended


def test_the_ledger_admits_atomically_across_processes(tmp_path):
    """Eight processes start attempts for their own jobs at once, under one limit: never more
    vCPUs admitted than the limit, whatever the interleaving."""
    db = tmp_path / "ledger.db"
    with Ledger(db) as led:
        led.add_limit("md", "PROJECT_ADMIN", 5)
        tasks = [led.task("md", f"t{i}").id for i in range(8)]
        ids = [list(led.add_jobs(t, [NewJob(f"j{k}", "command", {}, JobSpec(cores=2)) for k in range(3)]))
               for t in tasks]
    code = ("import sys, json; from htc_notebook.ledger import Ledger, AttemptStart\n"
            "with Ledger(sys.argv[1]) as led:\n"
            "    print(json.dumps(led.start_attempts([AttemptStart(int(i), status='RUNNABLE') for i in sys.argv[2:]],"
            " ('md', 5))))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), *map(str, group)],
                              stdout=subprocess.PIPE, text=True) for group in ids]
    started = [n for p in procs for n in json.loads(p.communicate(timeout=60)[0])]
    assert sum(1 for n in started if n) == 2  # 2 x 2 vCPUs fit in 5; a third would need 6
    every = sum(ids, [])
    with Ledger(db) as led:
        assert led.vcpus_in_use("md") == 4
        held = [i for i in every if led.job(i).status == "HELD"]
        assert len(held) == 22 and all(led.job(i).attempts == 0 for i in held)
        # room appears as a job ends: exactly one more fits (2 + 2 <= 5), the first held in order
        first = next(i for i, n in zip(every, started, strict=True) if n)
        led.record_outcomes([Outcome(first, 1, "SUCCEEDED")])
        again = led.start_attempts([AttemptStart(i, status="RUNNABLE") for i in held], ("md", 5))
        assert [i for i, n in zip(held, again, strict=True) if n] == held[:1]


KERNEL = """
import os, sys, time
from htc_notebook import Session, Sweep
if __name__ == '__main__':
    s = Session(sys.argv[1])
    s.project('md').set_vcpu_limit(1)
    g = s.project('md').task('killed').sweep(%r, Sweep.grid(i=list(range(5))))
    t = s.project('md').task('killed')
    while t.counts()['RUNNING'] + t.counts()['RUNNABLE'] < 1:
        time.sleep(0.05)
    print(t.counts()['HELD'], flush=True)
    os.kill(os.getpid(), 9)
"""


def test_held_jobs_of_a_killed_kernel_run_once_in_the_next_session(tmp_path):
    command = ["sh", "-c", "echo {i} >> ran.txt; sleep 1"]
    proc = subprocess.run([sys.executable, "-c", KERNEL % (command,), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert int(proc.stdout.split()[-1]) == 4
    with Session(tmp_path) as s:
        s.resume()
        task = s.project("md").task("killed")
        group = task.jobs().wait(timeout=120)
        counts = group.counts()
        # the one that was running died with its kernel (LOST, cause owner: local jobs do not outlive
        # it, and that is not the job's fault) and is requeued here; the four it held run here, once each
        assert counts["SUCCEEDED"] == 5, counts
        [lost] = [h for h in group if h.row.attempts == 2]
        assert [(a.status, a.cause) for a in s.ledger.attempts(lost.id)] == [("LOST", "owner"), ("SUCCEEDED", None)]
        ran = (task.storage.task_dir / "ran.txt").read_text().split()
        again = str(lost.row.params["i"])  # it may have echoed before the kernel was killed
        assert sorted(set(ran)) == [str(i) for i in range(5)] and len(ran) - ran.count(again) == 4
        assert "taken over by" in " ".join(e.message for e in s.ledger.events(task_id=task.id))


@pytest.mark.slurm
def test_a_slurm_profile_keeps_the_projects_limit(site):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"limits-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        project = s.project("md")
        project.set_vcpu_limit(2)
        group = project.task("t").sweep(SPAN, Sweep.grid(s=[2, 2.01, 2.02, 2.03]), profile="cpu").wait(timeout=300)
        assert group.counts()["SUCCEEDED"] == 4, [h.row.reason for h in group]
        assert most_at_once(command_spans(group)) <= 2
        assert {h.row.host for h in group} <= {"node1", "node2"}


# -- task retention (HTC `task-retention-policy`) ----------------------------------------------
def _backdate(db, task_id: int, hours: float, column: str) -> None:
    """Move a task's last activity (its jobs' updates) or its archiving `hours` into the past: the
    policy counts hours, a test cannot wait them."""
    import sqlite3

    con = sqlite3.connect(db)
    if column == "updated":
        con.execute("UPDATE jobs SET updated = updated - ? WHERE task_id = ?", (hours * 3600, task_id))
        con.execute("UPDATE tasks SET created = created - ? WHERE id = ?", (hours * 3600, task_id))
    else:
        con.execute("UPDATE tasks SET archived = archived - ? WHERE id = ?", (hours * 3600, task_id))
    con.commit()
    con.close()


def test_a_retention_policy_archives_idle_tasks_then_deletes_their_files(tmp_path):
    with Session(tmp_path) as s:
        project = s.project("md")
        assert project.retention() is None
        project.set_retention(archive_after=24, delete_after=48)
        idle, busy, fresh = (project.task(n) for n in ("idle", "busy", "fresh"))
        idle.submit_batch({"jobName": "w", "batchSize": 1,
                           "htcJobDefinition": {"commands": ["sh", "-c", "echo kept > out.txt"]}}).wait(timeout=60)
        fresh.submit_batch({"jobName": "w", "batchSize": 1,
                            "htcJobDefinition": {"commands": ["true"]}}).wait(timeout=60)
        running = busy.submit_batch({"jobName": "w", "batchSize": 1, "htcJobDefinition": {"commands": ["sleep", "60"]}})
        for t in (idle, busy):
            _backdate(s.ledger.path, t.id, 25, "updated")
        archived, deleted = s.reconciler.apply_retention()
        assert (archived, deleted) == (["md/idle"], [])  # busy has a job running, fresh did something lately
        assert [t.name for t in s.ledger.tasks("md") if t.lifecycle == "ARCHIVED"] == ["idle"]
        assert (idle.storage.task_dir / "out.txt").read_text() == "kept\n"  # archived: its files stay
        _backdate(s.ledger.path, idle.id, 47, "archived")
        assert s.reconciler.apply_retention() == ([], [])  # 47 h < deleteAfter
        _backdate(s.ledger.path, idle.id, 2, "archived")
        assert s.reconciler.apply_retention() == ([], ["md/idle"])
        assert not s.storage.task_path("md", "idle").exists()
        assert s.reconciler.apply_retention() == ([], [])  # once
        events = [e.kind for e in s.ledger.events(task_id=idle.id)]
        assert "archived" in events and "deleted" in events
        assert idle.counts()["SUCCEEDED"] == 1  # the record is kept
        running.cancel()
        assert project.delete_retention() and project.retention() is None


def test_the_workspace_policy_holds_for_projects_without_their_own(tmp_path):
    with Session(tmp_path) as s:
        assert s.retention() is None
        own, other = s.project("own"), s.project("other")
        own.set_retention(archive_after=0)  # its own: never archive
        tasks = {p.name: p.task("t") for p in (own, other)}
        for t in tasks.values():
            t.submit_batch({"jobName": "w", "batchSize": 1,
                            "htcJobDefinition": {"commands": ["true"]}}).wait(timeout=60)
            _backdate(s.ledger.path, t.id, 25, "updated")
        assert s.reconciler.apply_retention() == ([], [])  # no workspace policy yet
        assert s.set_retention(archive_after=24).archive_after == 24 and s.retention().archive_after == 24
        assert s.reconciler.apply_retention() == (["other/t"], [])  # own keeps its own rule
        assert [r.project for r in s.ledger.retention_in_force()] == ["other", "own"]


def test_a_retention_policy_with_bad_hours_is_refused_naming_the_field(tmp_path):
    with Session(tmp_path) as s:
        for bad in (-1, 2.5, "a day"):
            with pytest.raises(SpecError, match="archive_after|archiveAfter"):
                s.project("md").set_retention(archive_after=bad)
        assert s.project("md").retention() is None


def test_only_the_data_roots_owner_sets_the_workspace_policy_through_the_api(tmp_path):
    from htc_notebook.server.api import WORKSPACE_ID, ApiError, HTCApi
    from htc_notebook.server.auth import Auth

    with Session(tmp_path) as s:
        api = HTCApi(s, Auth(s.root), owner="me")
        assert api.put_workspace_retention("me", WORKSPACE_ID, {"archiveAfter": 24}) == {"archiveAfter": 24,
                                                                                          "deleteAfter": 0}
        assert api.get_workspace_retention("ada", WORKSPACE_ID)["archiveAfter"] == 24
        for user, workspace, status in (("ada", WORKSPACE_ID, 403), ("me", "other", 404)):
            with pytest.raises(ApiError) as refused:
                api.put_workspace_retention(user, workspace, {"archiveAfter": 1})
            assert refused.value.status == status
        with pytest.raises(ApiError) as bad:
            api.put_workspace_retention("me", WORKSPACE_ID, {"archiveAfter": -1})
        assert bad.value.status == 400 and "archiveAfter" in str(bad.value)
        assert s.retention().archive_after == 24
