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
from contextlib import contextmanager
from typing import Iterator

import pytest
import requests
from conftest import HTC, SITE_ENV, run_htc

from htc_notebook import Session, SiteConfig
from htc_notebook.backends import sandbox
from htc_notebook.backends.sandbox import sandbox_problem

pytest_plugins = ["pytest_jupyter.jupyter_server"]

PROBLEM = sandbox_problem()  # why this machine cannot make a sandbox (None: it can)
# a machine without a sandbox: this one, or one whose `htc` finds no bwrap; and the words it gives
NO_SANDBOX, WHY = ({}, PROBLEM) if PROBLEM else ({"PATH": "/nonexistent"}, "bwrap is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(root, *extra: str) -> Iterator[str | None]:
    """`htc serve` on `root` without a sandbox: its API's URL once it listens, None if it exited
    first; stopped at the end, its output then in `_serving.output`."""
    port = _free_port()
    env = {**os.environ, "HTC_ROOT": str(root), "HOME": str(root / "home"), **NO_SANDBOX}
    env.pop("HTC_SITE_CONFIG", None)
    proc = subprocess.Popen([HTC, "serve", "--port", str(port), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    url = f"http://127.0.0.1:{port}/htc/api/v1"
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _serving.output = proc.communicate(timeout=60)[0]  # type: ignore[attr-defined]


def _serves(root, *extra: str) -> bool:
    """Does `htc serve` start (and listen) on `root` without a sandbox? Stopped again either way."""
    with _serving(root, *extra) as url:
        pass
    _serves.output = _serving.output  # type: ignore[attr-defined]
    return url is not None


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


def _token(url: str, key: str) -> requests.Response:
    return requests.get(f"{url}/auth/token", headers={"Authorization": f"Token {key}"}, timeout=30)


def _projects(url: str, token: str) -> requests.Response:
    return requests.get(f"{url}/htc/projects", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_key_made_while_an_unconfined_server_runs_gets_nothing_from_it(tmp_path):
    """The refusal held only when the server started: a key made while it ran (`htc keys create`)
    got a token from it, and that user's jobs ran unconfined, free to read every other user's work;
    so did a token from another server of the same data root that was told to allow it."""
    root = tmp_path / "root"
    with _serving(root) as url:  # nobody else's keys yet: it starts
        assert url is not None, _serving.output
        made = run_htc("keys", "create", "ada", "--project", "md", root=root)
        assert made.returncode == 0, made.stderr
        ada = made.stdout.strip()
        r = _token(url, ada)
        assert r.status_code == 403, r.text
        assert "refusing to serve 1 API user(s) (ada) unconfined" in r.text and WHY in r.text, r.text
        assert "--allow-unconfined" in r.text
        with _serving(root, "--allow-unconfined") as allowed:  # told: ada gets a token there, and it works
            assert allowed is not None, _serving.output
            r = _token(allowed, ada)
            assert r.status_code == 200, r.text
            token = r.json()["tokenValue"]
            assert _projects(allowed, token).status_code == 200
        r = _projects(url, token)  # the same token, at the server nobody told
        assert r.status_code == 403 and "(ada)" in r.text, r.text
    with _serving(root, "--owner", "ada") as url:  # ada is this server's owner: served
        assert url is not None, _serving.output
        assert _token(url, ada).status_code == 200
        bob = run_htc("keys", "create", "bob", root=root).stdout.strip()
        r = _token(url, bob)
        assert r.status_code == 403 and "(bob)" in r.text, r.text


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch):
    """The Jupyter extension where no sandbox can be made: this machine, or (where it can) one
    whose bwrap is not there; not told to serve API users unconfined."""
    monkeypatch.setenv("HTC_ROOT", str(tmp_path / "htc-data"))
    monkeypatch.delenv("HTC_ALLOW_UNCONFINED", raising=False)
    if PROBLEM is None:
        monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-such-bwrap"))
        sandbox.sandbox_problem.cache_clear()
    yield {"ServerApp": {"jpserver_extensions": {"htc_notebook": True}}}
    sandbox.sandbox_problem.cache_clear()  # probed again, with the real bwrap, by the next who asks
    sandbox.check_sandbox.cache_clear()


async def test_the_jupyter_extension_unconfined_refuses_api_users_whose_keys_came_after_it(
        jp_serverapp, jp_fetch, http_server_client, jp_base_url):
    """As `htc serve`: it refuses to start unconfined with other users' keys, and (before, not) a key
    made once it runs gets no token, nor does a token made for it elsewhere get through."""
    htc = jp_serverapp.web_app.settings["htc_api"]
    assert htc.settings.unconfined is not None and WHY in htc.settings.unconfined
    key = htc.auth.create_key("bob", ["cfd"])
    api = f"{jp_base_url}htc/api/v1"
    r = await http_server_client.fetch(f"{api}/auth/token", headers={"Authorization": f"Token {key}"},
                                       raise_error=False)
    assert r.code == 403 and b"refusing to serve 1 API user(s) (bob) unconfined" in r.body, r.body
    token = htc.auth.issue_token(key)["tokenValue"]  # signed with this data root's key, by hand
    r = await http_server_client.fetch(f"{api}/htc/projects", headers={"Authorization": f"Bearer {token}"},
                                       raise_error=False)
    assert r.code == 403 and b"(bob)" in r.body, r.body
    r = await jp_fetch("htc", "api", "v1", "htc", "projects")  # its logged-in user, the owner, is served
    assert r.code == 200


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
        assert look[0].row.sandbox == ("bwrap" if confined else "none")  # its row says how it ran
        limit = "cgroup" if cgroups else "watched"
        assert held[0].row.memory_held == limit
        assert call.row.memory_held == (limit if confined else "none")
        assert (s.unconfined("local") is None) is confined
        if not confined:
            assert checks["bubblewrap sandbox"]["found"] in s.unconfined("local")


def _whereami() -> str:
    return "ran"


@pytest.mark.sandbox  # `boxed` runs in the sandbox
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
        table = JobsTable(s.parts, task.id, interval=3600)
        try:
            assert "ran unconfined" in table.detail(loose.id)
            assert "unconfined" not in table.detail(boxed.id)
        finally:
            table.close()
