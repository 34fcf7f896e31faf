"""Dependencies on the SLURM test cluster (issue 27): command batches that wait for others in the
ledger, released as their parents succeed, each generation reading what the last one wrote on the
shared file system; a failed parent fails its children without their ever reaching SLURM."""

from __future__ import annotations

import uuid

import pytest
from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session

pytestmark = pytest.mark.slurm


def _batch(name: str, size: int, script: str) -> dict:
    return {"jobName": name, "batchSize": size, "htcJobDefinition": {"commands": ["sh", "-c", script],
                                                                      "maxVCpus": 1, "maxMemory": 64}}


def test_a_slurm_dag_of_command_batches_runs_generation_after_generation(site):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("generations")
        first = task.submit_batch(_batch("first", 2, 'echo "$HTC_JOB_INDEX" > first-$HTC_JOB_INDEX'), profile="cpu")
        second = task.submit_batch(_batch("second", 2, "cat first-0 first-1 > second-$HTC_JOB_INDEX"), profile="cpu",
                                   after=list(first))
        last = task.submit_batch(_batch("last", 1, "cat second-0 second-1 > last"), profile="cpu", after=list(second))
        broken = task.submit_batch(_batch("broken", 1, "exit 3"), profile="cpu")
        never = task.submit_batch(_batch("never", 1, "touch never"), profile="cpu", after=list(broken))
        last.wait(timeout=300)
        never.wait(timeout=300)
        assert last.counts()["SUCCEEDED"] == 1, [h.row.reason for h in last]
        assert (task.storage.task_dir / "last").read_text().split() == ["0", "1", "0", "1"]
        for earlier, later in ((first, second), (second, last)):
            assert max(h.row.ended for h in earlier) <= min(h.row.started for h in later)
        (job,) = never
        assert job.status == "FAILED" and job.attempts[-1].cause == "dependency", job.row.reason
        assert job.row.native_id is None and not (task.storage.task_dir / "never").exists()  # never sent to SLURM
