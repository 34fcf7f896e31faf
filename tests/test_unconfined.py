"""Where no sandbox can be made (no user namespaces, no bubblewrap): the owner's own work still
runs, unconfined and said so; a server other API users reach refuses to (issue 25, item 3).

A machine without bwrap is made by starting `htc` with a PATH that has none: the toolkit finds
its programs on its own PATH only (backends/programs.py), so bwrap is then "not installed".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HTC, run_htc

NO_BWRAP = {"PATH": "/nonexistent"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serves(root, *extra: str) -> bool:
    """Does `htc serve` start (and listen) on `root` without bwrap? Stopped again either way."""
    port = _free_port()
    env = {**os.environ, "HTC_ROOT": str(root), "HOME": str(root / "home"), **NO_BWRAP}
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
    assert "runs jobs unconfined" in _serves.output and "bwrap is not installed" in _serves.output
    made = run_htc("keys", "create", "ada", "--project", "md", root=root)
    assert made.returncode == 0, made.stderr
    assert not _serves(root)
    out = _serves.output
    assert "refusing to serve 1 API user(s) (ada) unconfined" in out and "--allow-unconfined" in out, out
    assert "Traceback" not in out
    assert _serves(root, "--allow-unconfined")  # said explicitly: it serves


@pytest.mark.root
def test_without_user_namespaces_an_ordinary_users_demo_runs_unconfined_and_says_so(tmp_path):
    """The ENOSPC flavour of a site with user.max_user_namespaces=0 (tests/restrictive.py), as an
    ordinary user: before, every job of the main job was refused at submit."""
    from conftest import missing
    from restrictive import USER_VENV, as_user, ensure_user

    if os.geteuid() != 0:
        missing("a restrictive site is made by root (make test runs as root)")
    if not (USER_VENV / "bin" / "htc").exists():
        missing(f"{USER_VENV} (Debian's Python, for ordinary users): made by make test")
    user = ensure_user("htc-user")
    work = Path(user.pw_dir) / f"demo-{os.getpid()}"
    probe = as_user("htc-user", ["bwrap", "--ro-bind", "/", "/", "--", "true"], userns=False)
    assert probe.returncode != 0 and "ENOSPC" in probe.stderr, probe.stderr  # the site is what it says
    try:
        as_user("htc-user", ["mkdir", "-p", str(work)], userns=False)
        done = as_user("htc-user", [str(USER_VENV / "bin" / "htc"), "demo"], userns=False, cwd=work)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "2D Ising" in done.stdout and "64/64" in done.stdout
        said = [line for line in done.stderr.splitlines() if "runs jobs unconfined" in line]
        assert len(said) == 1, done.stderr  # once
        assert "ENOSPC" in said[0] and "task isolation" in said[0]
        assert f"{user.pw_dir}/.config/htc_notebook/site.yaml" in said[0]
        assert (work / "htc-data").stat().st_uid == user.pw_uid
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


SEES_LEDGER = r"""
import json, os, sys, warnings
from htc_notebook import Session
warnings.simplefilter("ignore")
with Session(sys.argv[1]) as s:
    (job,) = s.project("p").task("t").submit_batch({"jobName": "look", "batchSize": 1, "htcJobDefinition": {
        "commands": ["sh", "-c", f"test -e {s.root}/ledger.db && echo sees || echo hidden"]}})
    job.wait(timeout=120)
    print(json.dumps({"status": job.status, "out": job.logs().strip(), "sandbox": job.row.sandbox}))
"""


@pytest.mark.root
def test_htc_doctor_says_what_then_happens_as_an_ordinary_user_with_and_without_user_namespaces():
    from conftest import missing
    from restrictive import USER_VENV, as_user, ensure_user

    if os.geteuid() != 0 or not (USER_VENV / "bin" / "htc").exists():
        missing(f"root and {USER_VENV} (made by make test)")
    user = ensure_user("htc-user")
    for userns in (True, False):
        root = Path(user.pw_dir) / f"doctor-{os.getpid()}-{userns}"
        try:
            said = as_user("htc-user", [str(USER_VENV / "bin" / "htc"), "--root", str(root), "doctor", "--json",
                                        "--no-slurm"], userns=userns)
            assert said.returncode == 0, said.stderr
            checks = {c["name"]: c for c in json.loads(said.stdout)}
            assert checks["user namespaces"]["ok"] is userns, checks["user namespaces"]
            assert checks["memory cgroups"]["ok"] is False  # v1's memory tree is root's: no delegation here
            if not userns:
                assert "ENOSPC" in checks["user namespaces"]["found"]
                assert "unconfined" in checks["user namespaces"]["instead"]
            ran = as_user("htc-user", [str(USER_VENV / "bin" / "python"), "-c", SEES_LEDGER, str(root)],
                          userns=userns)
            assert ran.returncode == 0, ran.stderr[-2000:]
            seen = json.loads(ran.stdout.strip().splitlines()[-1])
            assert seen["status"] == "SUCCEEDED"
            confined = checks["bubblewrap sandbox"]["ok"]
            assert seen["out"] == ("hidden" if confined else "sees"), (checks["bubblewrap sandbox"], seen)
            assert seen["sandbox"] == ("bwrap" if confined else "none")  # its row says how it ran
        finally:
            subprocess.run(["rm", "-rf", str(root)], check=False)


def _whereami() -> str:
    return "ran"


def test_each_job_records_the_sandbox_it_ran_in(tmp_path):
    """A job that ran unconfined says so on its own row, its attempts, the DataFrame, the live
    table's detail and the REST job view, not only in the session's one warning."""
    from htc_notebook import Session, SiteConfig
    from htc_notebook.errors import HTCWarning
    from htc_notebook.server.api import HTCApi
    from htc_notebook.ui.jobs_widget import JobsTable

    site = SiteConfig.from_yaml(("profiles:\n  local: {}\n  open:\n    backend: local\n    cores_per_node: 2\n"
                                 "    memory_per_node: 4096\n    sandbox: none\n"),
                                file=str(tmp_path / "site.yaml"))
    with Session(tmp_path / "root", site=site) as s:
        task = s.project("p").task("t")
        def batch(name: str) -> dict:
            return {"jobName": name, "batchSize": 1, "htcJobDefinition": {"commands": ["true"]}}

        (boxed,) = task.submit_batch(batch("boxed"))
        with pytest.warns(HTCWarning, match=r"profile 'open' runs jobs unconfined .*site.yaml:7"):
            (loose,) = task.submit_batch(batch("loose"), profile="open")
        call = task.submit(_whereami, profile="open")
        for job in (boxed, loose, call):
            job.wait(timeout=120)
            assert job.status == "SUCCEEDED", job.row.reason
        assert (boxed.row.sandbox, loose.row.sandbox, call.row.sandbox) == ("bwrap", "none", "none")
        assert [a.sandbox for a in s.ledger.attempts(loose.id)] == ["none"]
        df = task.jobs().to_dataframe()
        assert dict(zip(df.name, df.sandbox, strict=True)) == {"boxed": "bwrap", "loose": "none", "whereami": "none"}
        api = HTCApi(s, None)
        assert [api.job_json(task.row, j.row)["sandbox"] for j in (boxed, loose)] == ["bwrap", "none"]
        table = JobsTable(s, task.id, interval=3600)
        try:
            assert "ran unconfined" in table.detail(loose.id)
            assert "unconfined" not in table.detail(boxed.id)
        finally:
            table.close()
