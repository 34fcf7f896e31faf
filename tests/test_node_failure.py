"""A node dies in the middle of an array: every process on it is killed at once (its slurmd, the
slurmstepd of its jobs, the jobs), and the controller is told it is DOWN, as it would conclude by
itself after SlurmdTimeout (60 s here; told at once to keep the test short). SLURM requeues the
array tasks it ran (`--requeue`), they run again on the other node, and the ledger ends with
every job SUCCEEDED once, nothing LOST."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session
from htc_notebook.devcluster import kill_node, revive_node

pytestmark = pytest.mark.slurm


def test_a_node_lost_mid_array_requeues_its_jobs_on_the_other_node(site, slurm_cluster):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"node-fail-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("faults").task("node")
        task.storage.path("runs").mkdir()
        group = task.submit_batch({"jobName": "sim", "batchSize": 4, "htcJobDefinition": {
            "commands": ["sh", "-c", "cat /proc/sys/kernel/hostname >> runs/$HTC_JOB_INDEX; sleep 8"],
            "maxVCpus": 1, "maxMemory": 100}}, profile="cpu")
        deadline = time.monotonic() + 120
        while {j.row.host for j in group if j.status == "RUNNING"} != {"node1", "node2"}:
            assert time.monotonic() < deadline, [(j.status, j.row.host) for j in group]
            time.sleep(0.2)
        time.sleep(1)  # their commands have started
        on_node2 = {j.row.index for j in group if j.row.host == "node2"}
        try:
            assert kill_node("node2")
            subprocess.run(["scontrol", "update", "nodename=node2", "state=down", "reason=test: the node died"],
                           check=True, capture_output=True, timeout=30)
            group.wait(timeout=240)
        finally:
            revive_node("node2")
        # as after a reboot, none of the dead jobs' cgroups is left (slurmstepd would fail a requeued job on it)
        assert not [d for d in Path("/sys/fs/cgroup").glob("*/slurm_node2/**/job_*") if d.is_dir()]
        rows = [j.row for j in group]
        assert [r.status for r in rows] == ["SUCCEEDED"] * 4, [(r.status, r.reason) for r in rows]
        runs = {i: (task.storage.path("runs") / str(i)).read_text().split() for i in range(4)}
        for i, hosts in runs.items():
            if i in on_node2:  # killed with the node, run again on node1
                assert hosts == ["node2", "node1"] and rows[i].host == "node1", (i, hosts)
            else:
                assert len(hosts) == 1, (i, hosts)
        assert not [e for e in s.ledger.events(task_id=task.id) if e.kind == "lost"]
