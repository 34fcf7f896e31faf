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


def test_a_pilot_scancelled_mid_sweep_loses_no_call(site):  # noqa: F811 - the fixture imported above
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


WALLTIME_N, CALL_SECONDS = 30, 5.0


def timed_call(x: int) -> int:
    """Notes its start and end, with its pilot's job id and deadline, in the task directory."""
    runs = os.path.join(os.environ["HTC_TASK_DIR"], "timed")
    pilot = f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('HTC_PILOT_DEADLINE')}"
    with open(runs, "a") as f:
        f.write(f"start {x} {pilot} {time.time():.3f}\n")
    time.sleep(CALL_SECONDS)
    with open(runs, "a") as f:
        f.write(f"end {x} {pilot} {time.time():.3f}\n")
    return x


def test_pilots_drain_before_their_walltime_and_no_call_runs_twice(site):  # noqa: F811 - the fixture imported above
    """Pilots of 3 minutes' walltime (a deadline 60 s after start) and 5 s calls: 75 s of work for
    one pilot's two workers. The first pilot starts no call it cannot finish by its deadline, its
    replacement takes the rest, and every call ran once, ended before its pilot's deadline, and
    the drained pilot ended by itself (COMPLETED, not killed at its walltime)."""
    from test_bundles import with_profile

    short = with_profile(site, "short", default_walltime=180, max_pilots=1, pilot_workers=2)
    root = REPO / "test-output" / f"pilot-walltime-{uuid.uuid4().hex[:8]}"
    with Session(root, site=short) as s:
        task = s.project("faults").task("walltime")
        group = task.sweep(timed_call, Sweep.grid(x=list(range(WALLTIME_N))), profile="short")
        assert group.results(timeout=400) == list(range(WALLTIME_N))
        assert {(r.status, r.attempts) for r in group.rows()} == {("SUCCEEDED", 1)}
        lines = [line.split() for line in task.storage.read_text("timed").splitlines()]
    starts = sorted(int(x) for kind, x, *_ in lines if kind == "start")
    ends = [(int(x), pilot, float(deadline), float(t)) for kind, x, pilot, deadline, t in lines if kind == "end"]
    assert starts == list(range(WALLTIME_N))  # none started twice (dask reruns nothing behind the ledger)
    assert sorted(x for x, *_ in ends) == list(range(WALLTIME_N))
    late = [(x, t - deadline) for x, _, deadline, t in ends if t > deadline]
    assert not late, late  # no call ran past its pilot's deadline
    pilots = sorted({pilot for _, pilot, *_ in ends})
    assert len(pilots) >= 2, pilots  # the first pilot drained; a replacement took the rest
    first = subprocess.run(["sacct", "-n", "-X", "-P", "-j", pilots[0], "-o", "State"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert first == ["COMPLETED"], first
