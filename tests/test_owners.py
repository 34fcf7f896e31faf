"""Owners anywhere (issue 26): a kernel on another host (a compute node under Open OnDemand or
batchspawner) that dies is settled by a session here once its heartbeat lease lapses; `htc status`
only reads.

"Another host" is real here: the kernel runs in a UTS namespace of its own (bubblewrap), whose host
name is not this one, so the session on this host cannot use its pid; it is really SIGKILLed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from htc_notebook import Session, SiteConfig, cli
from htc_notebook.errors import SpecError
from htc_notebook.ledger import Ledger
from htc_notebook.runtime.owner import HEARTBEAT_ENV, LEASE_LAPSE

from conftest import missing

FAR = "elsewhere"  # the other host's name
BEAT = 1.0  # heartbeat interval for these tests: a lease of LEASE_LAPSE s
# two jobs run (1 core each, the project's limit is 2), the third waits HELD for room; each runs
# until the test makes `go` in the task directory
KERNEL = """
import os, sys, time
from htc_notebook import Session, SiteConfig
s = Session(sys.argv[1], site=SiteConfig.builtin())
s.project("p").set_vcpu_limit(2)
t = s.project("p").task("t")
t.submit_batch({"jobName": "far", "batchSize": 3,
                "htcJobDefinition": {"commands": ["sh", "-c", 'test -e "$HTC_TASK_DIR/go" || sleep 300']}})
deadline = time.monotonic() + 60
while (t.counts()["RUNNING"] < 2 or t.counts()["HELD"] < 1) and time.monotonic() < deadline:
    time.sleep(0.05)
if time.monotonic() < deadline:
    print(os.getpid(), s.owner, flush=True)
else:
    print("not started:", t.counts(), flush=True)
time.sleep(300)
"""


def _far_kernel(root: Path) -> tuple[subprocess.Popen, int, str]:
    """A kernel on host FAR with jobs running and held: (its bwrap process, its pid, its owner record)."""
    if socket.gethostname() == FAR or shutil.which("bwrap") is None:
        missing(f"bubblewrap (for a UTS namespace whose host is {FAR!r}, not this one)")
    argv = ["bwrap", "--die-with-parent", "--unshare-uts", "--hostname", FAR, "--dev-bind", "/", "/", "--",
            sys.executable, "-c", KERNEL, str(root)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2:
        proc.kill()
        pytest.fail(f"the kernel on {FAR} did not start its jobs: {proc.wait()} {line}")
    return proc, int(line[0]), line[1]


@pytest.fixture
def far(tmp_path, monkeypatch):
    """A data root whose jobs a kernel on host FAR ran and held until it was SIGKILLed: (root, its
    owner record, its lease's expiry, the process groups of its running jobs)."""
    monkeypatch.setenv(HEARTBEAT_ENV, str(BEAT))  # for the kernel and the sessions here
    root = tmp_path / "root"
    proc, pid, owner = _far_kernel(root)
    groups: list[int] = []
    try:
        with Ledger(root / "ledger.db") as led:
            rows = led.jobs(led.find_task("p", "t").id)
            assert owner == f"{FAR}:{pid}" and {r.spec.owner for r in rows} == {owner}
            groups = [int(r.native_id[4:]) for r in rows if r.status == "RUNNING"]
            os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
            expires = led.owner_leases([owner])[owner]
        yield root, owner, expires, groups
    finally:
        proc.kill()
        for pgid in groups:  # what is left of its jobs, if anything (a session here does not kill another host's)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_killed_kernel_on_another_host_is_settled_here_once_its_lease_lapses(far):
    root, owner, expires, _ = far
    with Session(root, site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        (task.storage.task_dir / "go").touch()  # the retries end at once
        group = task.jobs().wait(timeout=LEASE_LAPSE * BEAT + 60)
        assert [h.status for h in group] == ["SUCCEEDED"] * 3
        attempts = {h.id: s.ledger.attempts(h.id) for h in group}
        lost = [a[0] for a in attempts.values() if len(a) == 2]
        assert [(a.status, a.cause) for a in lost] == [("LOST", "owner")] * 2
        for a in lost:
            assert "stopped renewing its heartbeat lease" in a.reason and owner in a.reason
            assert "was not reached" in a.reason and a.host == FAR  # a pid of another host: not killed here
            # not before its lease lapsed (its pid means nothing here), and soon after (looked at every heartbeat)
            assert expires <= a.ended < expires + 10 * BEAT + 5, (a.ended - expires)
        # retried here (requeued: not the job's fault), the held one claimed and run here, each once
        assert sorted(len(a) for a in attempts.values()) == [1, 2, 2]
        assert {a[-1].host for a in attempts.values()} == {socket.gethostname()}
        assert {h.row.spec.owner for h in group} == {str(s.owner)}
        taken = [e.message for e in s.ledger.events(task_id=task.id) if e.kind == "adopted"]
        assert taken == [f"job adopted: taken over by {s.owner} from {owner}"]


def test_htc_status_leaves_the_ledger_file_byte_identical(far, capsys):
    """Even once the kernel's lease has lapsed: a session would settle its jobs, a look does not."""
    root, owner, expires, _ = far
    time.sleep(max(0.0, expires - time.time()))
    db = root / "ledger.db"
    con = sqlite3.connect(db)  # what the killed kernel left in the write-ahead log, into the file
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    con.close()
    before = db.read_bytes()
    for args in (["status"], ["status", "--task", "p/t"], ["status", "--task", "p/t", "--json"]):
        assert cli.main(["--root", str(root), *args]) == 0
    assert "RUNNING" in capsys.readouterr().out
    assert db.read_bytes() == before
    with Ledger(db) as led:
        assert sorted(r.status for r in led.jobs(led.find_task("p", "t").id)) == ["HELD", "RUNNING", "RUNNING"]
        assert led.owner_leases([owner])[owner] < time.time()


def test_a_heartbeat_that_fails_or_comes_after_its_lease_lapsed_is_logged(tmp_path, caplog):
    from htc_notebook.runtime.reconcile import Reconciler

    with Session(tmp_path, site=SiteConfig.builtin(), reconcile=False) as s:
        p = s.parts
        late = Reconciler(ledger=p.ledger, storage=p.storage, owner=p.owner, profiles=p.profiles, backends=p.backends,
                          dispatcher=p.dispatcher, tasks=p.tasks, changes=p.changes, packer=p.reconciler.packer,
                          poll_seconds=2, heartbeat=0.01)
        assert late.beat()
        time.sleep(LEASE_LAPSE * 0.01 + 0.05)  # past its lease
        assert late.beat()
        assert "had lapsed" in caplog.text and str(s.owner) in caplog.text
        s.ledger.close()
        assert not late.beat()
        assert "was not renewed" in caplog.text and "closed" in caplog.text


def slow_insert(real, seconds):
    def insert(*args, **kwargs):
        time.sleep(seconds)  # as a million jobs' rows take, inside the write transaction
        return real(*args, **kwargs)
    return insert


def test_a_submission_that_holds_the_write_lock_past_the_lease_extends_the_lease_first(tmp_path, caplog,
                                                                                    monkeypatch):
    """Recording holds the ledger's write lock, so the heartbeat cannot renew meanwhile: a large
    submission first extends the lease, and another host looking while it records (a read) never
    sees it lapsed."""
    from htc_notebook.ledger import submission
    from htc_notebook.runtime import task as task_module

    beat = 0.1  # a lease of LEASE_LAPSE * 0.1 s; the insert takes longer
    monkeypatch.setattr(task_module, "LONG_SUBMISSION", 10)
    monkeypatch.setattr(task_module, "RECORDING_SECONDS", 0.2)  # 20 jobs: 4 s more
    monkeypatch.setattr(submission, "_insert_jobs", slow_insert(submission._insert_jobs, LEASE_LAPSE * beat + 1.5))
    with Session(tmp_path, site=SiteConfig.builtin(), heartbeat=beat) as s:
        owner, seen = str(s.owner), []

        def look():  # another host's look at the lease while the rows are inserted
            with Ledger(s.ledger.path) as other:
                for _ in range(3):
                    time.sleep(LEASE_LAPSE * beat)
                    seen.append(other.owner_leases([owner])[owner] - time.time())

        looker = threading.Thread(target=look)
        looker.start()
        s.project("p").task("t").submit_batch({"jobName": "j", "batchSize": 20,
                                               "htcJobDefinition": {"commands": ["true"]}})
        looker.join()
    assert len(seen) == 3 and min(seen) > 0, seen  # always ahead of the clock
    assert "had lapsed" not in caplog.text


@pytest.mark.parametrize("heartbeat", [0, -1.0, float("nan"), float("inf")])
def test_a_heartbeat_that_is_not_a_positive_number_is_refused(tmp_path, heartbeat):
    with pytest.raises(SpecError, match="heartbeat"):
        Session(tmp_path, site=SiteConfig.builtin(), heartbeat=heartbeat)
    assert not (tmp_path / "ledger.db").exists()  # refused before anything was written


def test_the_heartbeat_interval_comes_from_the_environment_and_a_bad_one_is_said(monkeypatch, caplog):
    from htc_notebook.runtime.owner import HEARTBEAT_SECONDS, heartbeat_seconds

    monkeypatch.setenv(HEARTBEAT_ENV, "0.5")
    assert heartbeat_seconds() == 0.5
    for bad in ("abc", "0", "-3", "inf"):
        monkeypatch.setenv(HEARTBEAT_ENV, bad)
        assert heartbeat_seconds() == HEARTBEAT_SECONDS
        assert f"{HEARTBEAT_ENV}={bad!r} is not a positive number" in caplog.text


def test_a_reconcile_loop_held_up_past_the_lease_does_not_let_it_lapse(tmp_path, monkeypatch, caplog):
    """The lease says the process lives: a tick stuck for several leases (a long release, a busy
    ledger) must not let sessions elsewhere mark this live process's jobs LOST."""
    from htc_notebook.runtime.reconcile import Reconciler

    beat, stuck = 0.25, threading.Event()  # a lease of 1.5 s

    def held_up(self, now):
        stuck.set()
        time.sleep(4 * beat * LEASE_LAPSE)  # 6 s: 4 leases
        return 0

    monkeypatch.setattr(Reconciler, "start_retries", held_up)
    with Session(tmp_path, site=SiteConfig.builtin(), heartbeat=beat) as s:
        assert stuck.wait(30)
        lapses = 0
        for _ in range(20):  # 5 s of the stall, looked at every heartbeat
            time.sleep(beat)
            lapses += s.ledger.owner_leases([str(s.owner)])[str(s.owner)] < time.time()
        assert lapses == 0
        assert "had lapsed" not in caplog.text
