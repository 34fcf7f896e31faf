"""Work beyond a site's limits waits HELD in the ledger and is fed to SLURM as room appears, exactly
once: through a QOS submit limit, a controller that stops answering, and a kernel killed mid-feed.

The test cluster's QOS `capped` allows 6 queued jobs per user (docs/test-cluster.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import yaml

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.slurm.limits import classify
from htc_notebook.devcluster import daemons, spec
from htc_notebook.errors import SpecError

pytestmark = pytest.mark.slurm
CAP = 6


@pytest.fixture(scope="module")
def capped_site(site):  # noqa: F811 - the fixture imported above
    """The discovered site plus a profile whose jobs ask for the `capped` QOS."""
    data = {"profiles": {name: site.profile(name).model_dump(exclude_none=True, exclude={"name"})
                         for name in site.names()}}
    data["profiles"]["capped"] = {**data["profiles"]["cpu"], "qos": "capped"}
    return SiteConfig.from_yaml(yaml.safe_dump(data))


def batch(n: int, seconds: float = 0.5) -> dict:
    return {"jobName": "fed", "batchSize": n, "htcJobDefinition": {
        "commands": ["sh", "-c", f"echo $HTC_JOB_INDEX >> out/$HTC_JOB_INDEX; sleep {seconds}"],
        "maxVCpus": 1, "maxMemory": 64}}


def queued(qos: str = "capped") -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-q", qos, "-o", "%i"], capture_output=True, text=True, timeout=60)
    return len(out.stdout.split()) if out.returncode == 0 else -1


class QueueWatch(threading.Thread):
    """Samples how many `capped` jobs SLURM has queued, until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append(queued())
            time.sleep(0.2)


def outputs(task) -> dict[int, list[str]]:
    return {int(p.name): p.read_text().split() for p in task.storage.path("out").iterdir()}


def feeding(s, name: str, n: int):
    """A batch of n 1-second jobs through the capped QOS, once the first two have succeeded."""
    task = s.project("feed").task(name)
    task.storage.path("out").mkdir()
    group = task.submit_batch(batch(n, seconds=1), profile="capped")
    deadline = time.monotonic() + 60
    while group.counts()["SUCCEEDED"] < 2:  # feeding is under way
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return task, group


def ran_once(task, group, n: int) -> None:
    group.wait(timeout=300)
    assert group.counts()["SUCCEEDED"] == n, group.counts()
    assert outputs(task) == {i: [str(i)] for i in range(n)}  # every index, exactly once
    assert all(j.row.attempts == 1 for j in group)


@contextmanager
def controller_paused():
    """A hung controller: slurmctld SIGSTOPped (sbatch and squeue time out), then continued."""
    pid = daemons.pidfile_alive(spec().slurmctld_pidfile, "slurmctld")
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_batch_above_the_qos_limit_is_fed_and_runs_every_index_once(capped_site):
    root = REPO / "test-output" / f"feed-{uuid.uuid4().hex[:8]}"
    watch = QueueWatch()
    watch.start()
    with Session(root, site=capped_site) as s:
        task = s.project("feed").task("cap")
        task.storage.path("out").mkdir()
        group = task.submit_batch(batch(20), profile="capped")
        s.flush()  # backend reports are committed by the recorder thread
        held = task.jobs("HELD")
        assert len(held) >= 20 - CAP, task.counts()
        assert f"the QOS capped allows {CAP}" in held[0].row.reason and held[0].row.reason.startswith("held: ")
        group.wait(timeout=300)
        watch.done.set()
        watch.join()
        assert group.counts()["SUCCEEDED"] == 20
        assert outputs(task) == {i: [str(i)] for i in range(20)}  # every index, exactly once
        assert all(j.row.attempts == 1 for j in group)
    assert CAP - 1 <= max(watch.samples) <= CAP, watch.samples


def test_held_jobs_cancelled_from_another_process_are_never_sent(capped_site):
    root = REPO / "test-output" / f"feed-{uuid.uuid4().hex[:8]}"
    with Session(root, site=capped_site) as s:
        task = s.project("feed").task("cancel-held")
        task.storage.path("out").mkdir()
        group = task.submit_batch(batch(14, seconds=1), profile="capped")
        s.flush()
        late = [j.id for j in group[9:]]  # held behind the limit of 6
        with Session(root, site=capped_site) as other:  # another kernel, or the REST API
            assert other.cancel(late) == late
        group.wait(timeout=300)
        assert [j.status for j in group] == ["SUCCEEDED"] * 9 + ["CANCELLED"] * 5
        assert sorted(outputs(task)) == list(range(9))  # the cancelled ones never ran


def test_a_controller_that_stops_answering_mid_batch_loses_and_duplicates_nothing(capped_site):
    root = REPO / "test-output" / f"feed-{uuid.uuid4().hex[:8]}"
    with Session(root, site=capped_site) as s:
        task, group = feeding(s, "hung", 16)
        reasons = set()
        with controller_paused():
            for _ in range(25):  # longer than sbatch's and squeue's message timeout (10 s)
                time.sleep(1)
                reasons |= {j.row.reason for j in task.jobs("HELD")}
        ran_once(task, group, 16)
        assert any("SLURM does not answer" in r for r in reasons), reasons


@contextmanager
def controller_stopped(seconds: float):
    """slurmctld stopped (SIGTERM, as an admin's restart), down for `seconds`, started again from
    its saved state."""
    s = spec()
    pid = daemons.pidfile_alive(s.slurmctld_pidfile, "slurmctld")
    assert pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while daemons.pidfile_alive(s.slurmctld_pidfile, "slurmctld"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    try:
        yield
        time.sleep(seconds)
    finally:
        daemons.start_slurmctld(s, clean=False)


def test_a_controller_restarted_mid_batch_loses_and_duplicates_nothing(capped_site):
    root = REPO / "test-output" / f"feed-{uuid.uuid4().hex[:8]}"
    with Session(root, site=capped_site) as s:
        task, group = feeding(s, "restarted", 14)
        with controller_stopped(6):
            pass
        ran_once(task, group, 14)


KERNEL = textwrap.dedent("""
    import sys, yaml
    from htc_notebook import Session, SiteConfig
    site = SiteConfig.from_yaml(open(sys.argv[2]).read())
    s = Session(sys.argv[1], site=site)
    task = s.project("feed").task("killed")
    task.storage.path("out").mkdir()
    task.submit_batch({"jobName": "fed", "batchSize": 18, "htcJobDefinition": {
        "commands": ["sh", "-c", "echo $HTC_JOB_INDEX >> out/$HTC_JOB_INDEX; sleep 1"],
        "maxVCpus": 1, "maxMemory": 64}}, profile="capped")
    s.flush()
    print(task.counts()["HELD"], flush=True)
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)   # the kernel dies with work held
""")


def test_held_work_survives_a_killed_kernel_and_the_next_session_feeds_it_once(capped_site, tmp_path):
    root = REPO / "test-output" / f"feed-{uuid.uuid4().hex[:8]}"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"profiles": {n: capped_site.profile(n).model_dump(
        exclude_none=True, exclude={"name"}) for n in capped_site.names()}}))
    proc = subprocess.run([sys.executable, "-c", KERNEL, str(root), str(site_file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert int(proc.stdout.split()[-1]) >= 18 - CAP
    with Session(root, site=capped_site) as s:
        task = s.project("feed").task("killed")
        group = task.jobs()  # reconcile: the dead kernel's held jobs are claimed and fed here
        assert len(group) == 18
        group.wait(timeout=300)
        assert group.counts()["SUCCEEDED"] == 18, group.counts()
        assert outputs(task) == {i: [str(i)] for i in range(18)}
        assert all(j.row.attempts == 1 for j in group)
        events = " ".join(e.message for e in s.ledger.events(task_id=task.id))
        assert "taken over by" in events


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "many"])
def test_bad_max_queued_is_refused_with_the_field_named(bad):
    with pytest.raises(SpecError, match="max_queued"):
        SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"p": {
            "backend": "slurm", "cores_per_node": 2, "memory_per_node": "1G", "max_queued": bad}}}))


@pytest.mark.parametrize("field,bad", [("poll_seconds", 0), ("poll_seconds", "fast"), ("exit_file_grace", -1),
                                       ("exit_file_grace", 1.5)])
def test_bad_site_poll_settings_are_refused_with_the_field_named(field, bad):
    with pytest.raises(SpecError, match=field):
        SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"p": {"backend": "slurm", "cores_per_node": 2,
                                                                 "memory_per_node": "1G"}},
                                             "default_profile": "p", field: bad}))


def test_sbatch_words_are_sorted_into_limit_transient_refused():
    assert classify("sbatch: error: AssocMaxSubmitJobLimit") == "limit"
    assert classify("Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's "
                    "size and/or time limits)") == "limit"
    assert classify("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation") \
        == "transient"
    assert classify("sbatch did not answer within 60 s (is slurmctld up?)") == "transient"
    assert classify("sbatch: error: Batch job submission failed: Invalid partition name specified") == "refused"
