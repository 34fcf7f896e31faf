"""Where no sandbox can be made (no user namespaces, no bubblewrap): the owner's own work still
runs, unconfined and said so; a server other API users reach refuses to (issue 25).

These tests hold on whatever site runs them, and `make test` runs them on three: as root, as an
ordinary user, and as that user without user namespaces (the ENOSPC flavour of a site with
`user.max_user_namespaces=0`, tests/restrictive.py). Where this machine can make a sandbox, a
machine without one is stood in for by starting `htc` with a PATH that has no bwrap: the toolkit
finds its programs on its own PATH only (backends/programs.py), so bwrap is then "not installed".
Where it cannot, the site itself is used.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

from conftest import HTC, SITE_ENV, run_htc

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.sandbox import sandbox_problem

PROBLEM = sandbox_problem()  # why this machine cannot make a sandbox (None: it can)
# a machine without a sandbox: this one, or one whose `htc` finds no bwrap; and the words it gives
NO_SANDBOX, WHY = ({}, PROBLEM) if PROBLEM else ({"PATH": "/nonexistent"}, "bwrap is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serves(root, *extra: str) -> bool:
    """Does `htc serve` start (and listen) on `root` without a sandbox? Stopped again either way."""
    port = _free_port()
    env = {**os.environ, "HTC_ROOT": str(root), "HOME": str(root / "home"), **NO_SANDBOX}
    env.pop("HTC_SITE_CONFIG", None)
    proc = subprocess.Popen([HTC, "serve", "--port", str(port), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return True
            time.sleep(0.2)
        return False
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        _serves.output = out  # type: ignore[attr-defined]


def test_a_server_with_other_api_users_refuses_to_run_their_jobs_unconfined(tmp_path):
    root = tmp_path / "root"
    assert _serves(root)  # nobody else's keys yet: the owner's own server runs (unconfined, said so)
    assert "runs jobs unconfined" in _serves.output and WHY in _serves.output, _serves.output
    made = run_htc("keys", "create", "ada", "--project", "md", root=root)
    assert made.returncode == 0, made.stderr
    assert not _serves(root)
    out = _serves.output
    assert "refusing to serve 1 API user(s) (ada) unconfined" in out and "--allow-unconfined" in out, out
    assert WHY in out and "Traceback" not in out, out
    assert _serves(root, "--allow-unconfined")  # said explicitly: it serves


def test_the_demo_runs_here_and_says_once_whether_its_jobs_run_unconfined(tmp_path):
    """`htc demo` (the main job) as whoever runs this test. Where no sandbox can be made it runs
    unconfined and warns once, naming why, what is off and the site file that takes `sandbox: none`
    (before, every job of it was refused at submit); where one can, it warns of nothing."""
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    for var in ("HTC_SITE_CONFIG", "HTC_ROOT"):
        env.pop(var, None)
    done = subprocess.run([HTC, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "2D Ising" in done.stdout and "64/64" in done.stdout, done.stdout[-2000:]
    said = [line for line in done.stderr.splitlines() if "runs jobs unconfined" in line]
    if PROBLEM is None:
        assert said == [], said
    else:
        assert len(said) == 1, done.stderr  # once
        assert PROBLEM in said[0] and "task isolation" in said[0], said[0]
        assert f"{home}/.config/htc_notebook/site.yaml" in said[0], said[0]
    assert (tmp_path / "htc-data").stat().st_uid == os.getuid()


def call_sees(ledger: str) -> str:
    return "sees" if os.path.exists(ledger) else "hidden"


def test_htc_doctor_says_what_then_happens_here(tmp_path):
    """`htc doctor`'s verdicts on this machine, then the jobs that show them: a command that looks
    for the ledger (hidden only by a sandbox), a Python call and a command with a memory limit (held
    by a memory cgroup, the watchdog, or for an unconfined call nothing)."""
    root = tmp_path / "root"
    said = run_htc("doctor", "--json", "--no-slurm", root=root)
    assert said.returncode == 0, said.stderr
    checks = {c["name"]: c for c in json.loads(said.stdout)}
    userns, confined, cgroups = (checks[n]["ok"] for n in ("user namespaces", "bubblewrap sandbox", "memory cgroups"))
    if SITE_ENV in os.environ:  # a run for a site (tests/restrictive.py): doctor names that site
        assert userns is (os.environ[SITE_ENV] == "1"), checks["user namespaces"]
    if not userns:
        assert "unconfined" in checks["user namespaces"]["instead"], checks["user namespaces"]
        assert "ENOSPC" in checks["user namespaces"]["found"] or "EPERM" in checks["user namespaces"]["found"]
    assert confined is (PROBLEM is None), (checks["bubblewrap sandbox"], PROBLEM)
    ledger = str(root / "ledger.db")
    with warnings.catch_warnings(record=True), Session(root, site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        look, held = task.submit_batch({"jobName": "look", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", f"test -e {ledger} && echo sees || echo hidden"]}}), \
            task.submit_batch({"jobName": "held", "batchSize": 1, "htcJobDefinition": {
                "commands": [sys.executable, "-c", "pass"], "maxMemory": 256}})
        call = task.submit(call_sees, ledger, resources={"memory": "256M"})
        assert call.result(timeout=120) == ("hidden" if confined else "sees")
        for group in (look, held):
            group.wait(timeout=120)
            assert group[0].status == "SUCCEEDED", group[0].row.reason
        assert look[0].logs().strip() == ("hidden" if confined else "sees")
        limit = "cgroup" if cgroups else "watched"
        assert held[0].row.memory_held == limit
        assert call.row.memory_held == (limit if confined else "none")
        assert (s.unconfined("local") is None) is confined
        if not confined:
            assert checks["bubblewrap sandbox"]["found"] in s.unconfined("local")
