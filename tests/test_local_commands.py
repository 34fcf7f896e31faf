"""The local command runner: a job cancelled, or a runner closed, in the instant between taking a
job from its queue and registering its process must not leave that process running untracked
(the ledger says CANCELLED; seen as a `sleep 60` orphan after test_server's cancel of a retry)."""

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from htc_notebook.backends import local_commands
from htc_notebook.backends.base import Launch
from htc_notebook.states import Outcome


class Reports:
    def __init__(self):
        self.ended: dict[int, Outcome] = {}
        self.done = threading.Event()

    def started(self, job_id, attempt, host, native_id):
        pass

    def finished(self, outcome: Outcome):
        self.ended[outcome.job_id] = outcome
        self.done.set()


@pytest.fixture
def held_popen(monkeypatch):
    """Popen that waits, once inside, until the test lets it go: the race window held open."""
    inside, go, procs = threading.Event(), threading.Event(), []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        inside.set()
        assert go.wait(30)
        proc = real(*args, **kwargs)
        procs.append(proc)
        return proc

    monkeypatch.setattr(local_commands.subprocess, "Popen", popen)
    return inside, go, procs


def _launch(tmp_path: Path) -> Launch:
    return Launch(job_id=7, attempt=2, kind="command", cwd=tmp_path, env={}, log_out=str(tmp_path / "o"),
                  log_err=str(tmp_path / "e"), command=("sleep", "60"))


def _gone(proc: subprocess.Popen, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.poll() is not None


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_a_job_stopped_while_its_process_starts_is_killed_not_left_running(tmp_path, held_popen, how):
    inside, go, procs = held_popen
    reports = Reports()
    runner = local_commands.CommandRunner(2, reports, pools=lambda launch: None)
    runner.submit([_launch(tmp_path)])
    assert inside.wait(30)  # taken from the queue, its process not started yet
    assert 7 in runner.running()  # still the runner's to stop
    closer = threading.Thread(target=runner.close) if how == "close" else None
    if closer is None:
        runner.cancel([7])
    else:
        closer.start()
        time.sleep(0.2)  # close() has looked at what runs
    go.set()
    assert reports.done.wait(30)
    (proc,) = procs
    assert _gone(proc), f"pid {proc.pid} (sleep 60) still runs after its job was stopped"
    assert reports.ended[7].status == "CANCELLED"
    if closer is not None:
        closer.join(30)
    else:
        runner.close()
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # its whole process group is gone
