"""The test cluster as a realistic site: accounting (slurmdbd + MariaDB), QOS with per-user limits
and preemption, cgroups that confine memory. Checked with SLURM's own tools and through htc."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session
from htc_notebook.storage import checkpoint_path

pytestmark = pytest.mark.slurm


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO / "test-output")
    assert not check or out.returncode == 0, f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def sacct_state(job_id: str, timeout: float = 60) -> list[str]:
    """`sacct -X` lines of a job (accounting is written a moment after the job ends)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sh("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,QOS,ExitCode").stdout.split()
        done = rows and all(not r.split("|")[1].startswith(("RUNNING", "PENDING", "COMPLETING"))
                            and r.split("|")[2] != "Unknown" for r in rows)
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def test_accounting_answers_with_qos_and_associations(slurm_cluster):
    qos = {line.split("|")[0]: line.split("|")[1:] for line in
           sh("sacctmgr", "-n", "-P", "show", "qos", "format=name,priority,preempt,maxsubmitpu").stdout.split()}
    assert qos["normal"][0] == "100" and qos["normal"][1] == "economy" and int(qos["normal"][2]) > 0
    assert qos["economy"][0] == "0" and qos["capped"][2] == "6"
    assoc = sh("sacctmgr", "-n", "-P", "show", "assoc", "where", "user=root", "format=account,qos,defaultqos").stdout
    assert "htc|capped,economy,normal|normal" in assoc.split()
    config = sh("scontrol", "show", "config").stdout
    for setting in ("accounting_storage/slurmdbd", "associations,limits,qos", "proctrack/cgroup", "task/cgroup",
                    "preempt/qos", "priority/multifactor", "jobacct_gather/linux"):
        assert setting in config, setting
    job = sh("sbatch", "--parsable", "-p", "cpu", "-o", "/dev/null", "--wrap", "true").stdout.strip()
    (row,) = sacct_state(job)
    assert row.split("|")[1:] == ["COMPLETED", "normal", "0:0"]


def test_cgroup_kills_a_job_above_its_memory(slurm_cluster):
    """ConstrainRAMSpace: 300 MiB in a job that asked for 100 MiB is killed (sacct: OUT_OF_MEMORY)."""
    grow = f"{slurm_cluster.python} -c 'x = bytearray(300 << 20); import time; time.sleep(1)'"
    job = sh("sbatch", "--parsable", "-p", "cpu", "--mem=100M", "-o", "/dev/null", "--wrap", grow).stdout.strip()
    (row,) = sacct_state(job)
    assert row.split("|")[1] == "OUT_OF_MEMORY"
    ok = sh("sbatch", "--parsable", "-p", "cpu", "--mem=400M", "-o", "/dev/null", "--wrap", grow).stdout.strip()
    assert sacct_state(ok)[0].split("|")[1] == "COMPLETED"


def test_cgroup_confines_cores(slurm_cluster):
    out = sh("srun", "-p", "cpu", "-c", "1", "sh", "-c", "grep Cpus_allowed_list /proc/self/status").stdout
    assert out.split()[-1] in ("0", "1")  # one core of the node's two


def test_qos_submit_limit_refuses_with_slurms_reason(slurm_cluster):
    first = sh("sbatch", "--parsable", "--qos=capped", "-p", "cpu", "--array=0-5", "-o", "/dev/null",
               "--hold", "--wrap", "true").stdout.strip()
    try:
        refused = sh("sbatch", "--qos=capped", "-p", "cpu", "-o", "/dev/null", "--wrap", "true", check=False)
        assert refused.returncode != 0 and "QOSMaxSubmitJobPerUserLimit" in refused.stderr
    finally:
        sh("scancel", first)


# 12 steps of 1 s; each step's number is saved in $HTC_CHECKPOINT (the same file for every run of the
# job), and a run starts after the last saved step; runs/<index> gets the step each run started at
RESUMABLE = """i=$(cat "$HTC_CHECKPOINT" 2>/dev/null || echo 0); echo "$i" >> runs/$HTC_JOB_INDEX
while [ "$i" -lt 12 ]; do sleep 1; i=$((i + 1)); echo "$i" > "$HTC_CHECKPOINT"; done"""


def test_economy_jobs_are_preempted_requeued_and_succeed_once(site, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """ON_DEMAND_ECONOMY -> the economy QOS. Priority jobs that need the cores preempt them; SLURM
    requeues them; each resumes from its checkpoint and ends SUCCEEDED once, in one attempt, having
    started twice."""
    root = REPO / "test-output" / f"site-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("site").task("preempt")
        task.storage.path("runs").mkdir()
        economy = task.submit_batch({"jobName": "econ", "batchSize": 4, "htcJobDefinition": {
            "commands": ["sh", "-c", RESUMABLE], "maxVCpus": 1,
            "maxMemory": 100, "priority": "ON_DEMAND_ECONOMY"}}, profile="cpu")
        deadline = time.monotonic() + 120
        while economy.counts()["RUNNING"] < 4:
            assert time.monotonic() < deadline, economy.counts()
            time.sleep(0.5)
        saved = [Path(checkpoint_path(task.storage.path("."), j.id)) for j in economy]
        while not all(p.exists() and p.read_text().strip() not in ("", "0", "1") for p in saved):
            assert time.monotonic() < deadline, [p.exists() and p.read_text() for p in saved]
            time.sleep(0.2)  # each has saved a step or two
        qos = sh("squeue", "-h", "-o", "%q", "-j", economy[0].row.native_id.split("_")[0]).stdout.split()
        assert set(qos) == {"economy"}
        urgent = task.submit_batch({"jobName": "urgent", "batchSize": 2, "htcJobDefinition": {
            "commands": ["sh", "-c", "sleep 1"], "maxVCpus": 2, "maxMemory": 100}}, profile="cpu")
        urgent.wait(timeout=120)
        assert urgent.counts()["SUCCEEDED"] == 2
        economy.wait(timeout=240)
        assert economy.counts()["SUCCEEDED"] == 4
        runs = {p.name: p.read_text().split() for p in task.storage.path("runs").iterdir()}
        assert sorted(runs) == ["0", "1", "2", "3"]
        assert all(len(r) == 2 for r in runs.values()), runs  # each was preempted once and ran again
        assert all(r[0] == "0" and int(r[1]) > 0 for r in runs.values()), runs  # ... resuming from its checkpoint
        for job in economy:
            assert job.row.attempts == 1 and job.row.exit_code == 0
            assert [a.status for a in s.ledger.attempts(job.id)] == ["SUCCEEDED"]
