"""End to end with plain `requests` against `htc serve`, as a script or another tool would:
key -> token -> project -> task -> batch of 20 jobs -> poll until SUCCEEDED -> logs -> summary
statistics -> cancel of a second batch. Once on the local backend, once on the SLURM test cluster."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from htc_notebook.backends.sandbox import sandbox_problem

REPO = Path(__file__).resolve().parents[1]
HTC = str(Path(sys.executable).parent / "htc")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, key: str, tries: int = 150) -> requests.Session:
    """A requests session with a bearer token from `key`, once the server at `url` answers."""
    for _ in range(tries):
        try:
            r = requests.get(f"{url}/auth/token", headers={"Authorization": f"Token {key}"}, timeout=5)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        raise AssertionError(f"no server answered at {url} ({tries} tries)")
    assert r.status_code == 200, r.text
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {r.json()['tokenValue']}"
    return s


def flow(root: Path, site: str | None, region: str) -> None:
    base = ["--root", str(root)] + (["--site", site] if site else [])
    key = subprocess.run([HTC, *base, "keys", "create", "ada", "--project", "md"], check=True,
                         capture_output=True, text=True).stdout.strip()
    port = _port()
    # where no sandbox can be made a server refuses ada's key unless told (tests/test_unconfined.py)
    unconfined = ["--allow-unconfined"] if region == "local" and sandbox_problem() is not None else []
    server = subprocess.Popen([HTC, *base, "serve", "--port", str(port), *unconfined], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/htc/api/v1"
    try:
        s = api(url, key)
        assert s.post(f"{url}/htc/projects", json={"projectName": "md"}).status_code == 201
        task = s.post(f"{url}/htc/projects/md/tasks", json={"taskName": "e2e"}).json()
        t = f"{url}/htc/projects/md/tasks/{task['taskId']}"
        definition = {"commands": ["sh", "-c", "echo job $HTC_JOB_INDEX on $(hostname)"], "maxVCpus": 1,
                      "maxMemory": 100, "execTimeoutSeconds": 120}
        r = s.post(f"{t}/jobs/batch", json=[{"jobName": "e2e", "batchSize": 20, "region": region,
                                             "htcJobDefinition": definition}])
        assert r.status_code == 201, r.text
        parent = r.json()[0]["parentJobId"]
        deadline = time.monotonic() + 240
        while True:
            stats = s.get(f"{t}/summary-statistics").json()["jobStatuses"]
            if stats["SUCCEEDED"] == 20 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert stats["SUCCEEDED"] == 20, stats
        jobs, url_next = [], f"{t}/jobs?pageSize=7"
        while url_next:
            page = s.get(url_next).json()
            jobs += page["items"]
            url_next = page.get("next")  # absent on the last page
        assert [j["jobUUID"] for j in jobs] == [f"{parent}:{i}" for i in range(20)]
        hosts = set()
        for i in (0, 19):
            lines = s.get(f"{t}/jobs/{parent}:{i}/logs").json()["items"]
            assert lines[0]["message"].startswith(f"job {i} on ")
            hosts.add(lines[0]["message"].rsplit(" ", 1)[1])
        r = s.post(f"{t}/jobs/batch", json=[{"jobName": "slow", "batchSize": 3, "region": region,
                                             "htcJobDefinition": {**definition, "commands": ["sleep", "300"]}}])
        slow_parent = r.json()[0]["parentJobId"]
        cancelled = s.post(f"{t}/jobs/cancel", json={"jobIds": [f"{slow_parent}:{i}" for i in range(3)]}).json()
        assert cancelled["cancelled"] == 3
        for i in range(3):
            job = s.get(f"{t}/jobs/{slow_parent}:{i}").json()
            assert job["status"] == "FAILED" and job["statusReason"].startswith("CANCELLED")
        return hosts
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_rest_flow_on_the_local_backend(tmp_path):
    hosts = flow(tmp_path / "data", None, "local")
    assert hosts == {socket.gethostname()}


@pytest.mark.slurm
def test_rest_flow_on_slurm(slurm_cluster, tmp_path):
    site = tmp_path / "site.yaml"
    subprocess.run([HTC, "profiles", "discover", "--scheduler-host", "10.77.0.1", "-o", str(site)], check=True,
                   capture_output=True)
    hosts = flow(REPO / "test-output" / f"rest-{uuid.uuid4().hex[:8]}", str(site), "cpu")
    assert hosts <= {"node1", "node2"} and hosts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_htc_serve_stops_on_sigint_and_sigterm_also_when_started_with_sigint_ignored(tmp_path, sig):
    """A script's `htc serve &` starts with SIGINT ignored (so Python raises no KeyboardInterrupt):
    it stopped on nothing but SIGKILL. It stops, and closes its session, on SIGINT and on SIGTERM."""
    port = _port()
    proc = subprocess.Popen([HTC, "--root", str(tmp_path / "root"), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "HTC API on" in out and "Traceback" not in out, out
