"""A pilot job is scancelled from outside in the middle of a Python sweep: the calls it was
running go to the other pilot (dask reschedules them, or gives up with KilledWorker and the
toolkit requeues them, cause `lost`); every member ends SUCCEEDED with its result once."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid

import pytest

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session, Sweep

pytestmark = pytest.mark.slurm


N = 40


def slow_square(x: int) -> tuple[int, str]:
    time.sleep(1.0)
    with open(os.path.join(os.environ["HTC_TASK_DIR"], "runs"), "a") as f:
        f.write(f"{x}\n")
    return x * x, socket.gethostname()


def test_a_pilot_scancelled_mid_sweep_loses_no_call(site):  # noqa: F811
    root = REPO / "test-output" / f"pilot-fault-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        s.scale("cpu", jobs=2)
        task = s.project("faults").task("pilot")
        group = task.sweep(slow_square, Sweep.grid(x=list(range(N))), profile="cpu")
        deadline = time.monotonic() + 180

        def running_pilots() -> list[str]:
            return subprocess.run(["squeue", "-h", "-n", "htc-pilot-cpu", "-t", "R", "-o", "%i"], capture_output=True,
                                  text=True, check=True).stdout.split()

        while len(running_pilots()) < 2 or not 2 <= group.counts()["SUCCEEDED"] < N // 2:  # both at work
            assert time.monotonic() < deadline, (running_pilots(), {k: v for k, v in group.counts().items() if v})
            time.sleep(0.2)
        subprocess.run(["scancel", running_pilots()[0]], check=True)
        values = group.results(timeout=300)
        assert [v for v, _ in values] == [x * x for x in range(N)]
        assert {r.status for r in group.rows()} == {"SUCCEEDED"}
        assert len(s.ledger.results(group.ids)) == N  # each result committed once
        ran = task.storage.read_text("runs").split()
        assert sorted(set(map(int, ran))) == list(range(N))  # some may have run twice: the pilot died under them
