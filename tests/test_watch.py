"""One status poll of SLURM per data root: two kernels and `htc serve` on the same root share it
(a lease in the ledger), counted at squeue itself; when the holder goes, another takes over."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import yaml

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session
from htc_notebook.runtime.watch import LEASE

pytestmark = pytest.mark.slurm
HTC = str(REPO / ".venv" / "bin" / "htc")

KERNEL = textwrap.dedent("""
    import sys, time
    from htc_notebook import Session, SiteConfig
    s = Session(sys.argv[1], site=SiteConfig.load(sys.argv[2]))
    task = s.project("watch").task("shared")
    if sys.argv[3] == "submit":
        task.submit_batch({"jobName": "slow", "batchSize": 4, "htcJobDefinition": {
            "commands": ["sh", "-c", "sleep 45"], "maxVCpus": 1, "maxMemory": 64}}, profile="knl")
    print("ready", flush=True)
    while True:
        task.jobs()          # a reader: adopts what it finds, polls only while it holds the lease
        time.sleep(1)
""")


def _shim(where, log):
    where.mkdir()
    real = shutil.which("squeue")
    path = where / "squeue"
    path.write_text(f"#!/bin/sh\necho \"$(date +%s.%N) $PPID\" >> {log}\nexec {real} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{where}:{os.environ['PATH']}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_kernels_and_htc_serve_make_one_poll_per_interval(site, tmp_path):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"watch-{uuid.uuid4().hex[:8]}"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"profiles": {n: site.profile(n).model_dump(exclude_none=True,
                                         exclude={"name"}) for n in site.names()}, "default_profile": "cpu"}))
    log = tmp_path / "squeue.log"
    env = _shim(tmp_path / "bin", log)
    procs = []
    try:
        for mode in ("submit", "read"):
            p = subprocess.Popen([sys.executable, "-c", KERNEL, str(root), str(site_file), mode], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert p.stdout.readline().strip() == "ready"
            procs.append(p)
        procs.append(subprocess.Popen([HTC, "--root", str(root), "--site", str(site_file), "serve", "--port",
                                       str(_port())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3)  # everyone has opened the root and found the jobs
        log.write_text("")
        window = 12.0
        time.sleep(window)
        calls = [line.split() for line in log.read_text().splitlines()]
        # the jobs are in SLURM, so someone polls (every 2 s), and only one process does
        assert 3 <= len(calls) <= window / 2 + 2, calls
        assert len({ppid for _, ppid in calls}) == 1, calls
        holder = int(calls[-1][1])
        with Session(root) as s:  # a lease row names the holder
            owner = s.ledger._read("SELECT owner FROM leases WHERE name = ?", (LEASE,))[0][0]
        assert owner.endswith(f":{holder}")
        # the holder dies: its lease expires and another process takes the poll over
        victim = next(p for p in procs if p.pid == holder)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        log.write_text("")
        time.sleep(16)  # the lease lasts 10 s past the holder's last renewal
        after = {int(ppid) for _, ppid in (line.split() for line in log.read_text().splitlines())}
        assert after and holder not in after and len(after) == 1, after
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    with Session(root, site=site) as s:
        group = s.project("watch").task("shared").jobs()
        group.wait(timeout=120)
        assert group.counts()["SUCCEEDED"] == 4


def test_a_controller_that_stalled_once_is_polled_again_soon_after(site, tmp_path):  # noqa: F811 - the fixture imported above
    """squeue hangs while slurmctld is stopped and returns once it is continued: that one slow poll
    must not stretch the interval to ten times its length (a minute without news)."""
    from test_feeder import controller_paused

    with Session(tmp_path / "root", site=site) as s:
        task = s.project("watch").task("stall")
        group = task.submit_batch({"jobName": "slow", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", "sleep 120"], "maxVCpus": 1, "maxMemory": 64}}, profile="knl")
        watch = s.reconciler.watch
        deadline = time.monotonic() + 60
        while watch.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        with controller_paused():
            time.sleep(8)
        polls = watch.polls
        deadline = time.monotonic() + 40
        while watch.polls < polls + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        took = list(watch.took)
        group.cancel()
        assert max(took) >= 4, f"the stall was not measured: {took}"
        assert watch.polls >= polls + 3, (f"{watch.polls - polls} polls in 40 s after the stall; took {took}, "
                                          f"interval {watch.interval}")
