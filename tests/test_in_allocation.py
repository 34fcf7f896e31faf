"""Jupyter inside an allocation (Open OnDemand, batchspawner): a session running in a SLURM job
submits a batch, a pilot call and an MPI task; each gets what its profile asks for, not the
kernel's allocation (no SLURM_*/SBATCH_* variables of the kernel's job reach them)."""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid

import pytest

from test_slurm import REPO

pytestmark = pytest.mark.slurm

KERNEL = textwrap.dedent("""
    import json, os, socket, subprocess, sys, yaml
    from htc_notebook import Session, SiteConfig
    root, out = sys.argv[1], sys.argv[2]
    me = socket.gethostbyname(socket.gethostname())   # the node's address: pilots connect back here
    text = subprocess.run([os.path.join(sys.prefix, "bin", "htc"), "profiles", "discover", "--scheduler-host", me],
                          capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(text)
    data["profiles"]["knl"]["pilot_workers"] = 2

    def where():
        return {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_MEM_PER_NODE")}

    def ranks(comm):
        return comm.size, os.environ.get("SLURM_JOB_PARTITION"), os.environ.get("SLURM_JOB_ID")

    with Session(root, site=SiteConfig.from_yaml(yaml.safe_dump(data))) as s:
        task = s.project("alloc").task("inside")
        batch = task.submit_batch({"jobName": "env", "batchSize": 2, "htcJobDefinition": {
            "commands": ["sh", "-c", "env > env-$HTC_JOB_INDEX.txt"], "maxVCpus": 1}}, profile="knl")
        pilot = task.submit(where, profile="knl")
        mpi = task.mpi(ranks, ranks=2, profile="gpu")   # a packed allocation of node3 with its rank pool
        batch.wait(timeout=240)
        report = {"outer": os.environ["SLURM_JOB_ID"], "node": socket.gethostname(),
                  "batch": batch.counts()["SUCCEEDED"], "pilot": pilot.result(timeout=240),
                  "mpi": mpi.result(timeout=240),
                  "envs": [dict(l.split("=", 1) for l in task.storage.path(f"env-{i}.txt").read_text().splitlines()
                                if "=" in l) for i in range(2)]}
    with open(out, "w") as fh:
        json.dump(report, fh)
""")


def test_a_session_inside_an_allocation_gives_jobs_their_own_resources(slurm_cluster):
    work = REPO / "test-output" / f"alloc-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    script, out = work / "kernel.py", work / "report.json"
    script.write_text(KERNEL)
    # the "kernel" is a batch job on cpu with its own cores and memory, as batchspawner starts one;
    # SBATCH_TIMELIMIT stands for what a user's profile or a spawner exports
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "SBATCH_TIMELIMIT": "00:01:00",
           "HOME": str(work), "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    proc = subprocess.run(["sbatch", "--wait", "-p", "cpu", "-c", "2", "--mem=1500M", "-t", "00:10:00",
                           "-o", str(work / "kernel.log"), "--wrap",
                           f"{slurm_cluster.python} {script} {work / 'root'} {out}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=work)
    log = (work / "kernel.log").read_text() if (work / "kernel.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{log}"
    report = json.loads(out.read_text())
    outer = report["outer"]
    assert report["node"] in ("node1", "node2") and report["batch"] == 2
    for env in report["envs"]:
        assert env["SLURM_JOB_PARTITION"] == "knl" and env["SLURM_CPUS_PER_TASK"] == "1"
        assert env.get("SLURM_ARRAY_JOB_ID") != outer
        assert "SLURM_MEM_PER_NODE" not in env, "the kernel's --mem=1500M leaked into an array job"
        assert outer not in {v for k, v in env.items() if k.startswith("SLURM_")}
        assert env.get("SBATCH_TIMELIMIT") is None
    pilot = report["pilot"]
    assert pilot["SLURM_JOB_PARTITION"] == "knl" and pilot["SLURM_JOB_ID"] != outer
    assert pilot["SLURM_MEM_PER_NODE"] != "1500"
    size, partition, job = report["mpi"]
    assert size == 2 and partition == "gpu" and job != outer
