"""The SLURM backend on the real multi-node test cluster (make slurm-up).

Data roots live under the checkout, not /tmp: each node has a private /tmp,
and jobs must see the task directories (a shared file system, as on a real cluster).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from htc_notebook import JobFailed, Session, SiteConfig, Sweep
from htc_notebook.errors import BackendError

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
SCHEDULER_HOST = "10.77.0.1"  # the test cluster's bridge: where nodes reach this kernel


@pytest.fixture(scope="module")
def site(slurm_cluster, tmp_path_factory):
    """The test cluster's site, discovered with `htc profiles discover` as a user would."""
    out = tmp_path_factory.mktemp("site") / "site.yaml"
    htc = REPO / ".venv" / "bin" / "htc"
    proc = subprocess.run([str(htc), "profiles", "discover", "--scheduler-host", SCHEDULER_HOST, "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(out.read_text())
    assert {"cpu", "gpu", "knl"} <= set(data["profiles"])
    assert data["profiles"]["gpu"]["gpus_per_node"] == 2
    assert data["profiles"]["knl"]["cores_per_node"] == 64
    assert data["profiles"]["cpu"]["max_nodes"] == 2
    # a 64-core node on a 2-core machine: two dask worker processes per pilot are plenty
    data["profiles"]["knl"]["pilot_workers"] = 2
    out.write_text(yaml.safe_dump(data))
    return SiteConfig.load(out)


@pytest.fixture
def session(site):
    root = REPO / "test-output" / f"slurm-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        yield s


def hostname_after(seconds: float, i: int = 0) -> str:
    time.sleep(seconds)
    return socket.gethostname()


def gpu_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_pilot_workers_land_on_both_cpu_nodes(session):
    session.scale("cpu", jobs=2)
    task = session.project("slurm").task("pilots")
    hosts = task.sweep(hostname_after, Sweep.grid(seconds=[1.0], i=list(range(16))), profile="cpu")
    assert set(hosts.results(timeout=240)) == {"node1", "node2"}


def gpu_device_after(seconds: float) -> str | None:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_gpu_pilot_runs_one_worker_per_gpu_each_seeing_only_its_own(session):
    """Issue 14: one dask worker per GPU of the pilot job, each with its own CUDA_VISIBLE_DEVICES
    (SLURM gives the job both GPUs of node3)."""
    task = session.project("p").task("gpus")
    jobs = [task.submit(gpu_device_after, 3, profile="gpu") for _ in range(4)]  # both workers busy at once
    devices = [j.result(timeout=300) for j in jobs]
    assert all(d and "," not in d for d in devices), devices
    assert len(set(devices)) == 2, devices
    workers = session.backend(session.profile("gpu")).pilots.client.scheduler_info()["workers"].values()
    assert len(workers) == 2 and {w["nthreads"] for w in workers} == {2}  # 4 cores, 2 GPUs


def test_cpu_gpu_and_knl_clusters_run_side_by_side(session):
    task = session.project("slurm").task("three-profiles")
    jobs = {p: task.submit(hostname_after, 0.1, profile=p) for p in ("cpu", "gpu", "knl")}
    gpu = task.submit(gpu_devices, profile="gpu")
    hosts = {p: h.result(timeout=300) for p, h in jobs.items()}
    assert hosts["cpu"] in {"node1", "node2"} and hosts["gpu"] == "node3" and hosts["knl"] == "node4"
    assert gpu.result(timeout=120) not in (None, "")  # SLURM set it from the GRES


def test_rejected_pilot_raises_with_the_schedulers_message_fast(session):
    bad = SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"nope": {
        "backend": "slurm", "partition": "nope", "cores_per_node": 2, "memory_per_node": "1G"}}}))
    with Session(session.root, site=bad) as s:
        task = s.project("slurm").task("rejected")
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="(?i)invalid partition"):
            task.submit(hostname_after, 0, profile="nope")
        assert time.monotonic() - t0 < 30
        (job,) = task.jobs()
        assert job.status == "FAILED" and "invalid partition" in job.row.reason.lower()


def test_a_batch_refused_for_its_account_says_what_to_ask_the_site_for(session):
    """SLURM's 'Invalid account or account/partition combination' names no remedy: the job's
    reason adds one (scheduler.HINTS), as for a user the site gave no association."""
    bad = SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"cpu": {
        "backend": "slurm", "partition": "cpu", "account": "nosuch", "cores_per_node": 2, "memory_per_node": "1G"}}}))
    with Session(session.root, site=bad) as s:
        task = s.project("slurm").task("no-account")
        with pytest.raises(BackendError, match="Invalid account") as refused:
            task.submit_batch({"jobName": "x", "batchSize": 1, "htcJobDefinition": {"commands": ["true"]}},
                              profile="cpu")
        assert "ask the site for one (sacctmgr add user" in str(refused.value)
        (job,) = task.jobs()
        assert job.status == "FAILED" and "no association" in job.row.reason, job.row.reason


def test_a_batch_bigger_than_max_array_size_runs_every_index_exactly_once(site, session):
    # bundling off (bundle: 1): one array task per job, so 1,100 jobs need two arrays (MaxArraySize 1001)
    n = 1100
    data = {"profiles": {n: site.profile(n).model_dump(exclude_none=True, exclude={"name"}) for n in site.names()}}
    data["profiles"]["knl"]["bundle"] = 1
    session = Session(session.root, site=SiteConfig.from_yaml(yaml.safe_dump(data)))
    task = session.project("slurm").task("big-batch")
    batch = {"jobName": "many", "batchSize": n,
             "htcJobDefinition": {"commands": ["sh", "-c", 'echo "$HTC_JOB_INDEX $(hostname)" >> out/$HTC_JOB_INDEX'],
                                  "maxVCpus": 1, "maxMemory": 64}}
    task.storage.path("out").mkdir()
    group = task.submit_batch(batch, profile="knl")
    natives = {j.row.native_id.split("_")[0] for j in group[:1]} | {group[-1].row.native_id.split("_")[0]}
    assert len(natives) == 2  # more than one array: MaxArraySize is 1001 on the test cluster
    group.wait(timeout=900)
    assert group.counts()["SUCCEEDED"] == n
    out = task.storage.path("out")
    lines = {int(p.name): p.read_text().splitlines() for p in out.iterdir()}
    assert sorted(lines) == list(range(n))
    assert all(len(v) == 1 and v[0].endswith("node4") for v in lines.values())
    assert all("/" not in j.row.native_id for j in group)  # not bundled
    session.close()


def test_exit_code_3_is_failed_with_code_and_log(session):
    task = session.project("slurm").task("exit3")
    job = task.submit_batch({"jobName": "three", "batchSize": 1,
                             "htcJobDefinition": {"commands": ["sh", "-c", "echo bad >&2; exit 3"]}},
                            profile="cpu")[0]
    err = job.exception(timeout=180)
    assert isinstance(err, JobFailed) and err.status == "FAILED"
    assert job.row.exit_code == 3 and "code 3" in err.reason
    assert err.native_id and "_" in err.native_id and err.host in {"node1", "node2"}
    assert Path(err.log_path).read_text() == "bad\n"


def test_scancel_from_outside_shows_cancelled(session):
    task = session.project("slurm").task("scancel")
    job = task.submit_batch({"jobName": "sleeper", "batchSize": 1,
                             "htcJobDefinition": {"commands": ["sleep", "300"]}}, profile="cpu")[0]
    deadline = time.time() + 120
    while job.status != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    assert job.status == "RUNNING"
    subprocess.run(["scancel", job.row.native_id], check=True)
    row = job.wait(timeout=120)
    assert row.status == "CANCELLED" and "outside" in row.reason


def test_pending_reasons_are_readable_and_a_timeout_explains_itself(session):
    task = session.project("slurm").task("pending")
    cores = session.profile("gpu").cores_per_node  # the gpu partition is one node: fill it
    blockers = task.submit_batch({"jobName": "block", "batchSize": 1,
                                  "htcJobDefinition": {"commands": ["sleep", "15"], "maxVCpus": cores}},
                                 profile="gpu")
    late = task.submit_batch({"jobName": "late", "batchSize": 1,
                              "htcJobDefinition": {"commands": ["sleep", "300"], "maxVCpus": cores,
                                                   "execTimeoutSeconds": 2}}, profile="gpu")[0]
    deadline = time.time() + 60
    while late.status != "RUNNABLE" or not (late.row.reason or "").startswith("waiting"):
        assert time.time() < deadline, late.row
        time.sleep(0.5)
    assert "resources" in late.row.reason or "priority" in late.row.reason
    err = late.exception(timeout=240)
    assert err.status == "FAILED" and "execTimeoutSeconds=2" in err.reason
    blockers.wait(timeout=120)


def test_jobs_outlive_the_session_and_a_new_one_adopts_them(session, site):
    """Submit from a process that exits at once; a later session finds the jobs' real outcome."""
    root = session.root
    site_file = root / "site.yaml"
    site_file.write_text(yaml.safe_dump({"profiles": {n: site.profile(n).model_dump(exclude_none=True)
                                                      for n in ("cpu",)}}))
    script = textwrap.dedent(f"""
        from htc_notebook import Session
        s = Session({str(root)!r}, site={str(site_file)!r})
        g = s.project("p").task("t").submit_batch({{"jobName": "ok", "batchSize": 3,
            "htcJobDefinition": {{"commands": ["sh", "-c", "sleep 2; exit $HTC_JOB_INDEX"]}}}}, profile="cpu")
        print(len(g))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "3", out.stderr
    with Session(root, site=site_file) as later:
        jobs = later.project("p").task("t").jobs()
        jobs.wait(timeout=180)
        assert [j.status for j in jobs] == ["SUCCEEDED", "FAILED", "FAILED"]
        assert [j.row.exit_code for j in jobs] == [0, 1, 2]


def test_throttle_limits_how_many_array_tasks_run_at_once(session):
    task = session.project("slurm").task("throttle")
    group = task.submit_batch({"jobName": "thr", "batchSize": 6,
                               "htcJobDefinition": {"commands": ["sleep", "2"], "maxVCpus": 1}},
                              profile="knl", throttle=2)
    group.wait(timeout=180)
    rows = [j.row for j in group]
    assert all(r.status == "SUCCEEDED" for r in rows)
    # never more than 2 running at once: check overlaps of [started, ended]
    events = sorted([(r.started, 1) for r in rows] + [(r.ended, -1) for r in rows])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2


def test_a_profiles_own_sbatch_options_reach_slurm(site):
    """The site's escape hatch (`sbatch_options`): SLURM itself shows the option on the job."""
    data = {"profiles": {n: site.profile(n).model_dump(exclude_none=True, exclude={"name"}) for n in site.names()}}
    data["profiles"]["nice"] = {**data["profiles"]["cpu"], "sbatch_options": ["--nice=7"]}
    root = REPO / "test-output" / f"slurm-{uuid.uuid4().hex[:8]}"
    with Session(root, site=SiteConfig.from_yaml(yaml.safe_dump(data))) as s:
        group = s.project("p").task("nice").submit_batch(
            {"jobName": "n", "batchSize": 1, "htcJobDefinition": {"commands": ["sleep", "1"]}}, profile="nice")
        row = group.wait(timeout=300)[0].row
        assert row.status == "SUCCEEDED", row.reason
        shown = subprocess.run(["scontrol", "show", "job", row.native_id], capture_output=True, text=True).stdout
        assert "Nice=7" in shown, shown


def test_an_ended_array_leaves_a_few_files_and_its_logs_read_per_job(session):
    """Few files at scale (issue 28): once no task of an array is in the queue, its jobs' start and
    exit files go; their logs go into the task's pack; the array keeps its script, id list and one
    file of its script's own output (not one per array task)."""
    task = session.project("slurm").task("few-files")
    n = 12
    group = task.submit_batch({"jobName": "echo", "batchSize": n, "htcJobDefinition": {
        "commands": ["sh", "-c", 'echo "job $HTC_JOB_INDEX on $(hostname)"'], "maxVCpus": 1, "maxMemory": 64}},
        profile="cpu")
    group.wait(timeout=300)
    assert group.counts()["SUCCEEDED"] == n
    state = task.storage.path(".") / ".htc" / "slurm"
    deadline = time.monotonic() + 60
    while any(p.suffix in (".start", ".exit") for p in state.iterdir()):  # the watch's next polls
        assert time.monotonic() < deadline, sorted(p.name for p in state.iterdir())
        time.sleep(0.5)
    (array,) = {j.row.native_id.split("_")[0] for j in group}
    assert sorted(p.suffix for p in state.iterdir()) == [".ids", ".log", ".sh"], sorted(state.iterdir())
    assert session.parts.reconciler.packer.pack_due(time.time() + 3600) == n
    assert list(task.storage.path("logs").iterdir()) == []
    for job in group:
        assert job.logs().startswith(f"job {job.row.index} on node") and job.logs("err") == ""
    assert subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout == ""
