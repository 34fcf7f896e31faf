"""Confined command jobs forked by their view's zygote (backends/command_zygote.py, command_zygotes.py,
zygote_jobs.py): each job still gets what a bwrap of its own gave it, and plays the attacker here.

- a job sees no other process but its own (a sibling job of the same task running at that moment, its
  zygote, the runner), and what it signals (kill -9 -1) is its own: the sibling and the zygote live on
  and the zygote serves the next job;
- a job holds no capability and gains none (no new privileges), so it cannot umount its view;
- what a job leaves running (a double-forked daemon in a new session) dies when the job ends;
- the data root's tmpfs is read-only: nothing one job writes there reaches the next job of its task;
- a link a job planted where the next job of its zygote logs is not followed;
- timeout and cancel kill the job's whole PID namespace, and the zygote serves on;
- unconfined (`sandbox: none`, one zygote per runner): a timeout SIGTERMs the job's process group and
  SIGKILLs what ignores it 5 s later, as for a job of its own Popen; its scratch directory is removed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import pytest

from htc_notebook import Session, SiteConfig
from htc_notebook.backends import command_zygotes


SNOOP = r"""
import json, os, signal, sys, time
task = os.environ["HTC_TASK_DIR"]
procs = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    os.kill(-1, signal.SIGKILL)  # everything this job may signal, but itself
    killed = "sent"
except ProcessLookupError:
    killed = "nothing to kill"
import ctypes
tried = {"umount_root": ctypes.CDLL(None, use_errno=True).umount2(sys.argv[1].encode(), 2)}
try:
    open(os.path.join(sys.argv[1], "left-by-a-job"), "w").write("x")
    tried["write_root"] = "ok"
except OSError as exc:
    tried["write_root"] = exc.strerror
print(json.dumps({"pid": os.getpid(), "procs": procs, "killed": killed, "cap_eff": status["CapEff"].strip(),
                  "cap_bnd": status["CapBnd"].strip(), "cap_prm": status["CapPrm"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "tried": tried,
                  "sees_left": os.path.exists(os.path.join(sys.argv[1], "left-by-a-job"))}))
"""


def _zygote_pids() -> set[int]:
    """This process's command zygotes (their bwrap), by pid."""
    import gc

    return {z.pid for z in gc.get_objects() if isinstance(z, command_zygotes.Zygote) and z.proc.poll() is None}


def _one(task, name: str, commands: list[str], **definition):
    (job,) = task.submit_batch({"jobName": name, "batchSize": 1,
                                "htcJobDefinition": {"commands": commands, **definition}})
    return job


@pytest.mark.sandbox
def test_a_job_sees_and_signals_nothing_but_itself_and_holds_no_capability(tmp_path):
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        marker = s.storage.task_path("p", "t") / "sibling-ran"
        sibling = _one(task, "sibling", ["sh", "-c", f"sleep 3; echo done > {marker}"])
        deadline = time.monotonic() + 60
        while sibling.status != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        zygotes = _zygote_pids()
        assert zygotes, "the sibling runs in a zygote"
        root = str(s.storage.root.resolve())
        snoop = _one(task, "snoop", [sys.executable, "-c", SNOOP, root])
        assert snoop.wait(timeout=60).status == "SUCCEEDED", (snoop.row.reason, snoop.logs("err"))
        seen = json.loads(snoop.logs("out").strip().splitlines()[-1])
        assert seen["pid"] == 1 and seen["procs"] == [1], seen  # no sibling, no zygote, no runner
        assert seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0000000000000000", seen
        assert seen["no_new_privs"] == "1", seen
        assert seen["tried"]["umount_root"] == -1, seen  # EPERM: its view stays
        assert seen["tried"]["write_root"] == "Read-only file system", seen
        assert sibling.wait(timeout=60).status == "SUCCEEDED", sibling.row.reason  # kill -9 -1 did not reach it
        assert marker.read_text().strip() == "done"
        assert _zygote_pids() == zygotes  # the zygote lives on, and serves the next job
        again = _one(task, "again", [sys.executable, "-c", SNOOP, root])
        assert again.wait(timeout=60).status == "SUCCEEDED", again.row.reason
        assert json.loads(again.logs("out").strip().splitlines()[-1])["sees_left"] is False
        assert _zygote_pids() == zygotes


def _processes_with(token: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    with open(f"/proc/{p}/stat") as g:
                        if g.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(p))
        except OSError:
            continue
    return found


@pytest.mark.sandbox
def test_what_a_job_leaves_running_dies_when_it_ends(tmp_path):
    token = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"  # a sleep no one else runs
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        daemon = f"(setsid sleep {token} &) ; (nohup sleep {token} >/dev/null 2>&1 &) ; sleep 0.3; echo started"
        job = _one(task, "leaves", ["sh", "-c", daemon])
        assert job.wait(timeout=60).status == "SUCCEEDED", (job.row.reason, job.logs("err"))
        assert "started" in job.logs("out")
        deadline = time.monotonic() + 10
        while _processes_with(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(token) == [], "a process the job left still runs"


@pytest.mark.sandbox
def test_timeout_and_cancel_kill_the_jobs_namespace_and_the_zygote_serves_on(tmp_path):
    token = f"{400 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        slow = _one(task, "slow", ["sh", "-c", f"sleep {token} & sleep {token}"], execTimeoutSeconds=1)
        row = slow.wait(timeout=60)
        assert row.status == "FAILED" and row.reason.startswith("timeout"), row.reason
        doomed = _one(task, "doomed", ["sh", "-c", f"sleep {token} & sleep {token}"])
        deadline = time.monotonic() + 60
        while doomed.status != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        task.cancel()
        assert doomed.wait(timeout=60).status == "CANCELLED"
        deadline = time.monotonic() + 10
        while _processes_with(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(token) == []
        after = _one(task, "after", ["true"])
        assert after.wait(timeout=60).status == "SUCCEEDED", after.row.reason


@pytest.mark.sandbox
def test_a_link_a_job_planted_for_the_next_jobs_log_is_not_followed(tmp_path):
    """A job of a zygote plants a link where the next job of its task (the same zygote) will log: that
    job fails saying why, and nothing is written through the link (its logs are opened by the runner,
    without following links, and only their descriptors reach the zygote)."""
    victim = tmp_path / "victim.txt"  # a file of the runner's user, outside the data root
    victim.write_text("untouched\n")
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        plant = f'n=$((HTC_JOB_ID + 1)); ln -sf {victim} "logs/job-$n.out"; ln -sf {victim} "logs/job-$n.err"'
        first = _one(task, "plant", ["sh", "-c", plant])
        assert first.wait(timeout=60).status == "SUCCEEDED", (first.row.reason, first.logs("err"))
        second = _one(task, "next", ["sh", "-c", "echo GOTCHA; echo GOTCHA >&2"])
        assert second.id == first.id + 1
        row = second.wait(timeout=60)
        assert row.status == "FAILED" and "could not open its log" in row.reason, row.reason
        third = _one(task, "third", ["true"])  # the zygote serves on
        assert third.wait(timeout=60).status == "SUCCEEDED", third.row.reason
    assert victim.read_text() == "untouched\n"


def test_unconfined_a_timeout_kills_the_jobs_group_even_what_ignores_sigterm(tmp_path):
    token = f"{500 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    site = SiteConfig.from_yaml("profiles:\n  local:\n    sandbox: none\n")
    with pytest.warns(Warning), Session(tmp_path / "root", site=site) as s:
        task = s.project("p").task("t")
        stubborn = f'trap "" TERM; echo "$HTC_SCRATCH"; sleep {token} & wait; sleep {token}'
        job = _one(task, "stubborn", ["sh", "-c", stubborn], execTimeoutSeconds=1, maxDiskGiB=1)
        started = time.monotonic()
        row = job.wait(timeout=60)
        assert row.status == "FAILED" and row.reason.startswith("timeout"), row.reason
        assert time.monotonic() - started >= 1
        assert _processes_with(token) == []
        scratch = job.logs("out").strip()
        assert scratch and not os.path.exists(scratch), scratch  # its own, removed when it ended
        after = _one(task, "after", ["true"])
        assert after.wait(timeout=60).status == "SUCCEEDED", after.row.reason
