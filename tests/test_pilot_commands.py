"""Command jobs on the session's pilots (`commands: pilots`), on the real test cluster: each keeps its
own logs, exit code, timeout, memory limit, sandbox and ledger row; a cancel stops it; a session that
dies leaves them LOST, never run again unseen."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import yaml

from test_bundles import with_profile
from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session

pytestmark = pytest.mark.slurm


@pytest.fixture
def piloted(site):  # noqa: F811 - the fixture imported above
    return with_profile(site, "fast", commands="pilots", max_nodes=2, max_pilots=2, pilot_workers=2)


@pytest.fixture
def root():
    return REPO / "test-output" / f"pilot-commands-{uuid.uuid4().hex[:8]}"


def test_commands_run_on_the_pilots_each_with_its_own_record(piloted, root):
    n = 40
    with Session(root, site=piloted) as s:
        task = s.project("pc").task("short")
        group = task.submit_batch({"jobName": "short", "batchSize": n, "htcJobDefinition": {
            "commands": ["sh", "-c", 'echo "$HTC_JOB_INDEX $HTC_JOB_ID $PWD $(hostname)"; '
                                     '[ $((HTC_JOB_INDEX % 20)) -ne 7 ] || { echo bad >&2; exit 3; }'],
            "maxVCpus": 1, "maxMemory": 64}}, profile="fast")
        group.wait(timeout=300)
        counts = group.counts()
        assert counts["SUCCEEDED"] == n - 2 and counts["FAILED"] == 2, counts  # indices 7 and 27
        hosts = set()
        for i, job in enumerate(group):
            index, job_id, cwd, host = job.logs().split()
            assert (index, job_id, cwd) == (str(i), str(job.id), str(task.storage.path("."))), i
            row = job.row
            assert row.native_id.startswith("local:") and row.attempts == 1  # no SLURM job of its own
            assert row.host == host and row.exit_code == (3 if i % 20 == 7 else 0)
            assert row.memory_held in ("cgroup", "watched")  # its 64 MiB was held, and it says how
            hosts.add(host)
        assert hosts <= {"node1", "node2"}
        assert "exited with code 3" in group[27].row.reason and group[27].logs("err") == "bad\n"
        # no array was sent: every SLURM job of this session is a pilot
        names = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-10minutes", "-o", "jobname,workdir"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert not [line for line in names if str(root) in line and not line.startswith("htc-pilot")], names


def test_a_timeout_a_cancel_and_a_memory_limit_stop_a_pilot_command(piloted, root):
    with Session(root, site=piloted) as s:
        task = s.project("pc").task("stops")
        marker = task.storage.path("after-sleep")
        slow = task.submit_batch({"jobName": "slow", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", "sleep 60; echo late"], "execTimeoutSeconds": 2}}, profile="fast")[0]
        cancelled = task.submit_batch({"jobName": "cancelled", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", f"echo started; sleep 8; touch {marker}"]}}, profile="fast")[0]
        greedy = task.submit_batch({"jobName": "greedy", "batchSize": 1, "htcJobDefinition": {
            "commands": ["python3", "-c", "import time; b = bytearray(300 << 20); time.sleep(30)"],
            "maxMemory": 64}}, profile="fast")[0]
        deadline = time.time() + 180
        while cancelled.logs() != "started\n":  # running on a pilot
            assert time.time() < deadline and cancelled.status not in ("FAILED", "SUCCEEDED"), cancelled.row
            time.sleep(0.3)
        cancelled.cancel()
        assert cancelled.wait(timeout=60).status == "CANCELLED"
        err = slow.exception(timeout=120)
        assert err.status == "FAILED" and "execTimeoutSeconds=2" in err.reason and slow.logs() == ""
        err = greedy.exception(timeout=120)
        assert err.status == "FAILED" and greedy.attempts[-1].cause == "memory" and "64 MiB" in err.reason
        time.sleep(max(0.0, cancelled.row.ended + 10 - time.time()))  # its sleep would have ended by now
        assert not marker.exists()  # it was stopped, not left running untracked


def test_a_pilot_command_is_confined_to_its_task(piloted, root):
    with Session(root, site=piloted) as s:
        secret = s.project("pc").task("victim").storage.path("secret")
        secret.write_text("the victim's\n")
        job = s.project("pc").task("attacker").submit_batch({"jobName": "peek", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", f"cat {secret} || echo hidden >&2; echo mine > own"]}}, profile="fast")[0]
        job.wait(timeout=180)
        assert job.logs() == "" and "hidden" in job.logs("err")
        assert (s.project("pc").task("attacker").storage.path("own")).read_text() == "mine\n"


def test_pilot_commands_of_a_dead_session_end_lost_and_are_not_run_again_unseen(piloted, root):
    """A kernel SIGKILLed while its pilot runs a command job: the next session marks that attempt LOST
    (it may have run) and requeues it, never feeds it on as held work that was never sent."""
    site_file = root / "site.yaml"
    root.mkdir(parents=True)
    site_file.write_text(yaml.safe_dump({"profiles": {"fast": piloted.profile("fast").model_dump(exclude_none=True,
                                                                                                  exclude={"name"})}}))
    script = textwrap.dedent(f"""
        import os, signal, time
        from htc_notebook import Session
        s = Session({str(root)!r}, site={str(site_file)!r})
        job = s.project("p").task("t").submit_batch({{"jobName": "long", "batchSize": 1, "htcJobDefinition": {{
            "commands": ["sh", "-c", "echo begun; sleep 15; echo ran >> runs"]}}}}, profile="fast")[0]
        deadline = time.time() + 180
        while job.logs() != "begun\\n" and time.time() < deadline:
            time.sleep(0.3)
        print(job.logs(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.stdout == "begun\n\n", out.stderr[-3000:]
    with Session(root, site=site_file) as later:
        job = later.project("p").task("t").jobs()[0]
        row = job.wait(timeout=240)  # its first attempt LOST, then requeued and run here
        first, *rest = job.attempts
        assert first.status == "LOST" and first.cause == "owner", first
        assert row.status == "SUCCEEDED" and len(rest) == 1 and rest[0].status == "SUCCEEDED", job.attempts
