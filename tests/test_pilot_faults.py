"""Pilots that end under a Python sweep. One scancelled from outside: the calls it was running go
to the other pilot (dask reschedules them, or gives up with KilledWorker and the toolkit requeues
them, cause `lost`). Pilots reaching their deadline: replaced a queue wait ahead of it, or as they
drain. Every member ends SUCCEEDED with its result once."""

from __future__ import annotations

import datetime
import logging
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


CALL_SECONDS = 5.0


def timed_call(x: int, seconds: float = CALL_SECONDS) -> int:
    """Notes its start and end, with its pilot's job id and deadline, in the task directory."""
    runs = os.path.join(os.environ["HTC_TASK_DIR"], "timed")
    pilot = f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('HTC_PILOT_DEADLINE')}"
    with open(runs, "a") as f:
        f.write(f"start {x} {pilot} {time.time():.3f}\n")
    time.sleep(seconds)
    with open(runs, "a") as f:
        f.write(f"end {x} {pilot} {time.time():.3f}\n")
    return x


DRAIN_N, DRAIN_CALL_SECONDS = 4, 31.0


def test_pilots_drain_before_their_walltime_and_no_call_runs_twice(site, caplog):  # noqa: F811 - the fixture imported above
    """Pilots of 3 minutes' walltime (a deadline 60 s after start) and 31 s calls: the first pilot's
    two workers run one call each, start no second one (it would end past the deadline) and drain
    ~29 s before the deadline, earlier than their replacement would be asked ahead of it (the
    expected queue wait, 10 s here, plus a 15 s margin): it is asked as they drain (the fallback).
    It takes the rest; every call ran once, ended before its pilot's deadline, and the drained pilot
    ended by itself (COMPLETED, not killed at its walltime)."""
    from test_bundles import with_profile

    caplog.set_level(logging.INFO, logger="htc_notebook.backends.slurm.pilots")
    short = with_profile(site, "short", default_walltime=180, max_pilots=1, pilot_workers=2)
    root = REPO / "test-output" / f"pilot-walltime-{uuid.uuid4().hex[:8]}"
    with Session(root, site=short) as s:
        task = s.project("faults").task("walltime")
        group = task.sweep(timed_call, Sweep.grid(x=list(range(DRAIN_N)), seconds=[DRAIN_CALL_SECONDS]),
                           profile="short")
        assert group.results(timeout=400) == list(range(DRAIN_N))
        assert {(r.status, r.attempts) for r in group.rows()} == {("SUCCEEDED", 1)}
        lines = [line.split() for line in task.storage.read_text("timed").splitlines()]
    starts = sorted(int(x) for kind, x, *_ in lines if kind == "start")
    ends = [(int(x), pilot, float(deadline), float(t)) for kind, x, pilot, deadline, t in lines if kind == "end"]
    assert starts == list(range(DRAIN_N))  # none started twice (dask reruns nothing behind the ledger)
    assert sorted(x for x, *_ in ends) == list(range(DRAIN_N))
    late = [(x, t - deadline) for x, _, deadline, t in ends if t > deadline]
    assert not late, late  # no call ran past its pilot's deadline
    pilots = sorted({pilot for _, pilot, *_ in ends}, key=int)
    assert len(pilots) >= 2, pilots  # the first pilot drained; a replacement took the rest
    first = subprocess.run(["sacct", "-n", "-X", "-P", "-j", pilots[0], "-o", "State"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert first == ["COMPLETED"], first
    asked = [r.getMessage() for r in caplog.records if "asking for its replacement" in r.getMessage()]
    assert asked and "drains before its deadline" in asked[0], asked


IN_TIME_N = 24  # more than one pilot's two workers can run before its deadline (60 s / 5 s x 2): the
# replacement always gets some


def test_a_pilots_replacement_is_asked_a_queue_wait_ahead_of_its_deadline(site, caplog):  # noqa: F811 - the fixture imported above
    """One pilot at a time of 3 minutes' walltime (a deadline 60 s after start) and 5 s calls:
    the client submits the replacement a queue wait (here the floor, 10 s, plus the margin, 15 s)
    before the first pilot's deadline, not once it drains, and the replacement takes calls before
    that deadline while the first pilot works on (it is not scancelled). Every call ran once and
    SUCCEEDED, none past its pilot's deadline."""
    from test_bundles import with_profile

    caplog.set_level(logging.INFO, logger="htc_notebook.backends.slurm.pilots")
    short = with_profile(site, "short", default_walltime=180, max_pilots=1, pilot_workers=2)
    root = REPO / "test-output" / f"pilot-in-time-{uuid.uuid4().hex[:8]}"
    with Session(root, site=short) as s:
        task = s.project("faults").task("in-time")
        group = task.sweep(timed_call, Sweep.grid(x=list(range(IN_TIME_N))), profile="short")
        assert group.results(timeout=300) == list(range(IN_TIME_N))
        assert {(r.status, r.attempts) for r in group.rows()} == {("SUCCEEDED", 1)}
        assert len(s.ledger.results(group.ids)) == IN_TIME_N
        lines = [line.split() for line in task.storage.read_text("timed").splitlines()]
    starts = sorted(int(x) for kind, x, *_ in lines if kind == "start")
    assert starts == list(range(IN_TIME_N))  # none started twice
    calls = [(kind, pilot, float(deadline), float(t)) for kind, _, pilot, deadline, t in lines]
    late = [(pilot, t - deadline) for kind, pilot, deadline, t in calls if kind == "end" and t > deadline]
    assert not late, late
    pilots = sorted({pilot for _, pilot, *_ in calls}, key=int)
    assert len(pilots) >= 2, pilots
    first, second = pilots[:2]
    deadline = next(d for _, pilot, d, _ in calls if pilot == first)
    submitted = subprocess.run(["sacct", "-n", "-X", "-P", "-j", second, "-o", "Submit"], capture_output=True,
                               text=True, check=True).stdout.split()
    asked = datetime.datetime.fromisoformat(submitted[0]).timestamp()  # local time, as time.time() counts
    assert asked < deadline - 2 * CALL_SECONDS, (deadline - asked)  # well before the first could drain
    second_starts = min(t for kind, pilot, _, t in calls if kind == "start" and pilot == second)
    assert second_starts < deadline, (second_starts - deadline)  # at work before the first one left
    first_ends = max(t for kind, pilot, _, t in calls if kind == "end" and pilot == first)
    assert first_ends > asked + CALL_SECONDS, (first_ends - asked)  # the first worked on after it was replaced
    early = [r.getMessage() for r in caplog.records if "asking for its replacement now" in r.getMessage()]
    assert early and f"(SLURM job {first})" in early[0] and "measured: " in early[0], early  # with the waits
