"""`htc serve` is SIGKILLed in the middle of a batch it is feeding through a QOS limit, and started
again on the same data root: the new server watches the SLURM jobs the old one sent, claims the
held ones and feeds them; every job SUCCEEDED, each command run exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest
import yaml

from test_feeder import CAP, capped_site  # noqa: F401 - the site with the `capped` QOS profile
from test_server_e2e import HTC, _port, api
from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

pytestmark = pytest.mark.slurm
N = 16


def serve(base: list[str], port: int) -> subprocess.Popen:
    return subprocess.Popen([HTC, *base, "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_htc_serve_killed_mid_batch_and_restarted_finishes_it_once(capped_site, tmp_path):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"serve-restart-{uuid.uuid4().hex[:8]}"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"profiles": {n: capped_site.profile(n).model_dump(
        exclude_none=True, exclude={"name"}) for n in capped_site.names()}}))
    base = ["--root", str(root), "--site", str(site_file)]
    key = subprocess.run([HTC, *base, "keys", "create", "ada", "--project", "md"], check=True,
                         capture_output=True, text=True).stdout.strip()
    port = _port()
    url = f"http://127.0.0.1:{port}/htc/api/v1"
    server = serve(base, port)
    try:
        s = api(url, key)
        assert s.post(f"{url}/htc/projects", json={"projectName": "md"}).status_code == 201
        task = s.post(f"{url}/htc/projects/md/tasks", json={"taskName": "fed"}).json()
        t = f"{url}/htc/projects/md/tasks/{task['taskId']}"
        definition = {"commands": ["sh", "-c", "echo $HTC_JOB_INDEX >> runs-$HTC_JOB_INDEX; sleep 2"],
                      "maxVCpus": 1, "maxMemory": 64}
        r = s.post(f"{t}/jobs/batch", json=[{"jobName": "fed", "batchSize": N, "region": "capped",
                                             "htcJobDefinition": definition}])
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 120
        while s.get(f"{t}/summary-statistics").json()["jobStatuses"]["SUCCEEDED"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        server.send_signal(signal.SIGKILL)  # mid-batch: some done, some in SLURM, the rest held
        server.wait(timeout=30)
        server = serve(base, port)
        s = api(url, key)
        deadline = time.monotonic() + 300
        while (stats := s.get(f"{t}/summary-statistics").json()["jobStatuses"])["SUCCEEDED"] < N:
            assert time.monotonic() < deadline, stats
            time.sleep(1)
        assert stats["SUCCEEDED"] == N and stats["FAILED"] == 0, stats
    finally:
        server.terminate()
        server.wait(timeout=30)
    task_dir = next(root.rglob("runs-0")).parent
    assert {p.name: p.read_text().split() for p in task_dir.glob("runs-*")} == {
        f"runs-{i}": [str(i)] for i in range(N)}  # each ran exactly once
    assert N > CAP
