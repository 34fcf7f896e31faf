"""Short command jobs bundled several to a SLURM array task, each keeping its own environment,
directory, logs, exit code, timeout and ledger row, and cancellable alone (real cluster)."""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.slurm.feeder import PROBES

pytestmark = pytest.mark.slurm


def with_profile(site, name: str, **changes) -> SiteConfig:  # noqa: F811 - the fixture imported above
    data = {"profiles": {n: site.profile(n).model_dump(exclude_none=True, exclude={"name"}) for n in site.names()}}
    data["profiles"][name] = {**data["profiles"]["cpu"], **changes}
    return SiteConfig.from_yaml(yaml.safe_dump(data))


@pytest.fixture
def root():
    return REPO / "test-output" / f"bundle-{uuid.uuid4().hex[:8]}"


def test_short_commands_are_timed_then_bundled_and_keep_their_own_records(site, root):  # noqa: F811 - the fixture imported above
    n = 60
    with Session(root, site=site) as s:
        task = s.project("bundle").task("short")
        group = task.submit_batch({"jobName": "short", "batchSize": n, "htcJobDefinition": {
            "commands": ["sh", "-c", 'echo "$HTC_JOB_INDEX $HTC_JOB_ID $PWD"; sleep 0.05; '
                                     '[ $((HTC_JOB_INDEX % 25)) -ne 7 ] || exit 3'],
            "maxVCpus": 1, "maxMemory": 64}}, profile="cpu")
        group.wait(timeout=300)
        counts = group.counts()
        assert counts["SUCCEEDED"] == n - 3 and counts["FAILED"] == 3, counts  # indices 7, 32 and 57
        tasks = {j.row.native_id.split("/")[0] for j in group}
        assert len(tasks) < n - PROBES  # bundled: fewer array tasks than jobs
        assert all("/" not in j.row.native_id for j in group[:PROBES])  # the timed probes ran alone
        assert any("/" in j.row.native_id for j in group[PROBES:])
        for i, job in enumerate(group):
            out = job.logs().split()  # loose, or packed once it ended GRACE s ago
            assert out == [str(i), str(job.id), str(task.storage.path("."))], (i, out)
            assert job.row.exit_code == (3 if i % 25 == 7 else 0) and job.row.attempts == 1
        assert "code 3" in group[32].row.reason


def test_one_job_of_a_bundle_is_cancelled_alone_and_a_timeout_is_its_own(site, root):  # noqa: F811 - the fixture imported above
    bundled = with_profile(site, "bundled", bundle=4, max_nodes=1)
    with Session(root, site=bundled) as s:
        task = s.project("bundle").task("cancel")
        group = task.submit_batch({"jobName": "slow", "batchSize": 4, "htcJobDefinition": {
            "commands": ["sh", "-c", 'echo start; case $HTC_JOB_INDEX in 0) sleep 30;; 1) sleep 60;; esac; sleep 1'],
            "maxVCpus": 1, "maxMemory": 64, "execTimeoutSeconds": 4}}, profile="bundled")
        assert len({j.row.native_id for j in group}) == 1 and group[0].row.native_id.endswith("/4")
        deadline = time.monotonic() + 120
        while group[0].status != "RUNNING":
            assert time.monotonic() < deadline, group.counts()
            time.sleep(0.2)
        cancelled = time.time()
        s.cancel([group[0].id, group[3].id])  # the running one, and one waiting its turn
        group.wait(timeout=180)
        status = [j.status for j in group]
        assert status == ["CANCELLED", "FAILED", "SUCCEEDED", "CANCELLED"], [j.row.reason for j in group]
        assert "execTimeoutSeconds=4" in group[1].row.reason  # its own timeout, not the bundle's
        assert group[2].logs() == "start\n"
        # the first was stopped by TERM, not left to run its 30 s: the third (after the second's 4 s
        # timeout) started soon after the cancel, as its start file said
        assert group[2].row.started - cancelled < 20
        assert not (task.storage.path("logs") / f"job-{group[3].id}.out").exists()  # never started


def test_a_bundles_time_limit_stays_within_the_partitions():
    """78 jobs with execTimeoutSeconds=3600 each would ask for 3 days; the partition allows 2."""
    from htc_notebook.backends.slurm.arrays import _bundle_time
    from htc_notebook.spec import PartitionProfile

    knl = PartitionProfile(name="knl", cores_per_node=64, memory_per_node="64G", max_walltime="2-00:00:00",
                           default_walltime="01:00:00")
    assert _bundle_time(3600, 78, knl) == 2 * 86400
    assert _bundle_time(30, 4, knl) == 4 * (30 + 10) + 60
    assert _bundle_time(None, 50, knl) == 3600
