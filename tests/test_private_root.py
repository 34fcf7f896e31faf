"""The data root is private, and jobs share no corners (issue 24, items 6 and 8; docs/security.md).

Another local user of the login node (a throw-away account this test makes) tries to read a new
data root's ledger, logs and outputs; before, the root was 0755 and its files 0644, and every one
of those reads worked. A job leaves a file in /tmp for the next job of another task to find;
before, both saw the host's /tmp.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import missing

from htc_notebook import Session

STRANGER = "htc-stranger"


@pytest.fixture(scope="module")
def stranger() -> str:
    """A local user with no business in anyone's data root."""
    if os.geteuid() != 0:
        missing("making another local user needs root (make test runs as root)")
    if subprocess.run(["id", STRANGER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", STRANGER],
                       check=True)
    return STRANGER


def _as(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def open_parent():
    """A directory others may enter (unlike pytest's tmp_path, 0700): only the root's own modes protect it."""
    d = Path(tempfile.mkdtemp(prefix="htc-private-"))
    d.chmod(0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.mark.root
def test_a_new_data_root_and_its_files_are_its_users_alone(open_parent, stranger):
    root = open_parent / "root"
    with Session(root) as s:
        task = s.project("p").task("t")
        (job,) = task.submit_batch({"jobName": "out", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", "echo secret-output; echo secret-file > result.txt"]}})
        job.wait(timeout=120)
        assert job.status == "SUCCEEDED", job.row.reason
        log, made = Path(job.row.log_out), s.storage.task_path("p", "t") / "result.txt"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for f in (root / "ledger.db", log, made):
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f, oct(f.stat().st_mode))
    for f in (root / "ledger.db", log, made):
        seen = _as(stranger, "cat", str(f))
        assert seen.returncode != 0 and "Permission denied" in seen.stderr, (f, seen.stdout)
    assert _as(stranger, "ls", str(root)).returncode != 0


def test_an_existing_data_root_open_to_others_is_closed(open_parent):
    root = open_parent / "old-root"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    with Session(root, reconcile=False):
        pass
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.sandbox
def test_a_jobs_tmp_is_its_own(tmp_path):
    mark = f"left-{uuid.uuid4().hex[:8]}"
    with Session(tmp_path / "root") as s:
        leave = s.project("p").task("leaves").submit_batch({"jobName": "leave", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", f"echo planted > /tmp/{mark}; ls /tmp"]}})
        leave.wait(timeout=120)
        look = s.project("p").task("looks").submit_batch({"jobName": "look", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", f"cat /tmp/{mark} || echo not-there"]}})
        look.wait(timeout=120)
        assert [h.status for h in (*leave, *look)] == ["SUCCEEDED", "SUCCEEDED"]
        assert mark in leave[0].logs()  # it did write its /tmp
        assert look[0].logs().strip() == "not-there"
    assert not Path("/tmp", mark).exists()


def _leave_in_rank(comm, secret_path):
    import builtins

    builtins.htc_left_behind = "task A was here"  # what a call could leave in a long-lived rank
    return comm.Get_size()


def _look_in_rank(comm, secret_path):
    import builtins

    try:
        with open(secret_path) as f:
            seen = f.read()
    except OSError as exc:
        seen = type(exc).__name__
    return getattr(builtins, "htc_left_behind", None), seen


@pytest.mark.sandbox
def test_a_rank_pool_serves_one_tasks_calls_confined_to_that_task(tmp_path):
    """Packed MPI functions run on long-lived ranks; before, one pool served every task unconfined:
    task B's call found what task A's left in its rank, and read task A's files."""
    with Session(tmp_path / "root") as s:
        a, b = s.project("p").task("a"), s.project("p").task("b")
        secret = s.storage.task_dir("p", "a") / "secret.txt"
        secret.write_text("task A's data")
        assert a.mpi(_leave_in_rank, str(secret), ranks=2).result(timeout=180) == 2
        left, seen = b.mpi(_look_in_rank, str(secret), ranks=2).result(timeout=180)
    assert left is None
    assert seen == "FileNotFoundError"


@pytest.mark.sandbox
def test_a_toolkit_that_lives_under_tmp_is_still_seen_by_jobs_over_their_own_tmp(tmp_path, monkeypatch):
    """A checkout or venv under /tmp (as a CI run may have): jobs still run its programs, read-only."""
    venv = Path(tempfile.mkdtemp(prefix="htc-venv-"))
    try:
        (venv / "bin").mkdir()
        tool = venv / "bin" / "tool"
        tool.write_text("#!/bin/sh\necho tool ran\n")
        tool.chmod(0o755)
        monkeypatch.setattr(sys, "prefix", str(venv))  # as if this Python lived there
        with Session(tmp_path / "root") as s:
            (job,) = s.project("p").task("t").submit_batch({"jobName": "tool", "batchSize": 1, "htcJobDefinition": {
                "commands": ["sh", "-c", f"{tool}; touch {venv}/written || echo read-only"]}})
            job.wait(timeout=120)
            assert job.status == "SUCCEEDED", (job.row.reason, job.logs("err"))
            assert job.logs().split() == ["tool", "ran", "read-only"]
    finally:
        subprocess.run(["rm", "-rf", str(venv)], check=False)
