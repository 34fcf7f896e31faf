"""Python jobs are handed to dask in windows: at most `dask_window` dask tasks in flight.

A real LocalCluster whose profile has a window of 3, so every sweep here is larger than it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from htc_notebook import SpecError, Sweep

WINDOW = 3


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """A session whose local profile keeps at most WINDOW dask tasks in flight."""
    from htc_notebook import Session, SiteConfig

    site = SiteConfig.from_yaml(f"profiles:\n  local: {{dask_window: {WINDOW}}}\n")
    with Session(tmp_path_factory.mktemp("htc-root"), site=site) as s:
        yield s


def _runner(session):
    return session.backend(session.profile("local")).dask_runners()["local"]


def mark_and_nap(i: int, marks: str, nap: float) -> int:
    """Append a line to this job's own file (to count its runs), then sleep `nap` seconds."""
    with open(os.path.join(marks, f"ran-{i}"), "a") as f:
        f.write("ran\n")
    time.sleep(nap)
    return i * 10


def _runs(marks) -> dict[int, int]:
    return {int(p.name.split("-")[1]): len(p.read_text().splitlines()) for p in marks.glob("ran-*")}


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "100"])
def test_the_window_is_a_whole_number_of_at_least_one(value):
    from htc_notebook.spec import PartitionProfile

    with pytest.raises(SpecError) as err:
        PartitionProfile(name="p", cores_per_node=2, memory_per_node="1G", dask_window=value)
    assert err.value.field == "dask_window" and "a whole number >= 1" in str(err.value)


def test_a_bad_window_in_a_site_file_names_the_field_and_line():
    from htc_notebook import HTCError, SiteConfig

    with pytest.raises(HTCError) as err:
        SiteConfig.from_yaml("profiles:\n  local:\n    dask_window: 0\n", file="site.yaml")
    assert "dask_window" in str(err.value) and "site.yaml:3" in str(err.value)


def test_a_sweep_larger_than_the_window_runs_every_job_once_and_never_overfills_dask(windowed, tmp_path):
    client, runner = windowed.backend(windowed.profile("local")).client, _runner(windowed)
    seen, stop = [0], threading.Event()

    def watch():  # how many tasks the scheduler itself holds, every few ms
        while not stop.is_set():
            seen[0] = max(seen[0], client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        n = 40  # 20 ms jobs: too slow to pack, so 40 dask tasks through a window of 3
        group = windowed.project("w").task("once").sweep(
            mark_and_nap, Sweep.zip(i=list(range(n)), marks=[str(tmp_path)] * n, nap=[0.02] * n))
        values = group.results(timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert values == [10 * i for i in range(n)]
    assert _runs(tmp_path) == {i: 1 for i in range(n)}
    assert runner.peak_in_flight == WINDOW  # filled, never more
    # the scheduler forgets released tasks a moment after their results are gathered, so its count
    # may briefly include a finished window too; without a window it would reach all 40
    assert 1 <= seen[0] <= 2 * WINDOW
    assert not runner.running()


def quick(x: int) -> int:
    return x + 1


def test_quick_jobs_are_still_packed_within_the_window(windowed):
    from distributed import get_task_stream

    from htc_notebook.backends.dask_jobs import PROBE_JOBS

    client = windowed.backend(windowed.profile("local")).client
    with get_task_stream(client) as stream:
        values = windowed.project("w").task("packed").sweep(quick, Sweep.zip(x=list(range(600)))).results(timeout=120)
    assert values == [x + 1 for x in range(600)]
    keys = [t["key"] for t in stream.data]
    packs = [k for k in keys if "-x" in k]
    assert len(keys) - len(packs) == PROBE_JOBS
    assert sum(int(k.rsplit("-x", 1)[1]) for k in packs) == 600 - PROBE_JOBS
    assert _runner(windowed).peak_in_flight <= WINDOW


def test_cancelled_jobs_waiting_for_room_never_run_and_the_rest_do(windowed, tmp_path):
    n = 12  # a small submission (no probes): jobs 0-2 in flight, 3-11 wait for room
    task = windowed.project("w").task("cancel-queued")
    group = task.sweep(mark_and_nap, Sweep.zip(i=list(range(n)), marks=[str(tmp_path)] * n, nap=[0.3] * n))
    drop = [group[i].id for i in (5, 7, 11)]
    assert windowed.cancel(drop) == drop
    values = group.results(timeout=120, errors="return")
    time.sleep(0.5)  # past the moment a wrongly released job would have started
    assert [group[i].status for i in (5, 7, 11)] == ["CANCELLED"] * 3
    kept = [i for i in range(n) if i not in (5, 7, 11)]
    assert [values[i] for i in kept] == [10 * i for i in kept]
    assert _runs(tmp_path) == {i: 1 for i in kept}
    assert {k: v for k, v in task.counts().items() if v} == {"SUCCEEDED": n - 3, "CANCELLED": 3}


def test_cancelling_a_whole_queued_sweep_stops_it(windowed, tmp_path):
    n = 30  # probes (8) first; 3 of them reach dask, everything else waits
    task = windowed.project("w").task("cancel-all")
    group = task.sweep(mark_and_nap, Sweep.zip(i=list(range(n)), marks=[str(tmp_path)] * n, nap=[0.5] * n))
    assert len(group.cancel()) == n
    group.wait(timeout=60)
    time.sleep(1.5)
    assert {k: v for k, v in task.counts().items() if v} == {"CANCELLED": n}
    assert set(_runs(tmp_path)) <= set(range(WINDOW))
    assert not _runner(windowed).running()


def test_a_queued_job_cancelled_then_retried_runs_once(windowed, tmp_path):
    n = 10  # jobs 0-2 in flight; job 8 is cancelled while it waits, then retried (a new attempt)
    task = windowed.project("w").task("cancel-retry")
    group = task.sweep(mark_and_nap, Sweep.zip(i=list(range(n)), marks=[str(tmp_path)] * n, nap=[0.2] * n))
    windowed.cancel([group[8].id])
    assert task.retry().ids == [group[8].id]
    assert group.results(timeout=120) == [10 * i for i in range(n)]
    time.sleep(0.5)
    assert _runs(tmp_path) == {i: 1 for i in range(n)}  # the cancelled attempt's queue entry never ran
    assert [a.number for a in group[8].attempts] == [1, 2]


def test_a_launch_whose_logs_are_named_otherwise_is_refused_before_anything_is_queued(tmp_path):
    """DaskJobs keeps one log prefix per task (`log_prefix`): a launch of a submission whose logs
    do not follow it is refused with a BackendError (which dispatch turns into FAILED jobs, saying
    why), and none of that submission is held, queued or run."""
    from pathlib import Path

    from distributed import LocalCluster

    from htc_notebook import HTCError
    from htc_notebook.backends.base import Call, Launch
    from htc_notebook.backends.dask_jobs import DaskJobs

    def launch(job_id: int, out: str, err: str) -> Launch:
        return Launch(job_id, 1, "python", Path(tmp_path), {}, out, err, call=Call(abs, (-job_id,), {}))

    runner = DaskJobs(lambda: LocalCluster(n_workers=1, processes=False, dashboard_address=None), reporter=None)
    try:
        good = launch(1, f"{tmp_path}/j1.out", f"{tmp_path}/j1.err")
        odd = launch(2, f"{tmp_path}/j2.out", f"{tmp_path}/other.err")
        with pytest.raises(HTCError, match=r"job 2's logs are not <prefix>2.out and .err"):
            runner.submit([good, odd])
        assert runner.running() == set()  # not even the good one waits
        time.sleep(0.5)
        assert not (tmp_path / "j1.out").exists()  # and did not run
    finally:
        runner.close()


def test_a_packed_sweep_keeps_a_few_packs_a_worker_thread_in_flight_not_the_whole_sweep(tmp_path, monkeypatch):
    """Packs hold up to MAX_PACK calls each: the window of dask tasks alone would let a sweep of a
    million calls into the scheduler at once. At most PACKS_AHEAD packs a worker thread are in flight
    (1 here, on 2 workers of 1 thread: 2), the rest wait in the queue, and every call runs once."""
    from distributed import get_task_stream

    from htc_notebook import Session
    from htc_notebook.backends import dask_jobs

    monkeypatch.setattr(dask_jobs, "PACKS_AHEAD", 1)
    with Session(tmp_path / "root") as s:
        runner = _runner(s)
        threads = sum(runner.client.nthreads().values())
        with get_task_stream(runner.client) as stream:
            values = s.project("w").task("packs").sweep(quick, Sweep.zip(x=list(range(4000)))).results(timeout=120)
        assert values == [x + 1 for x in range(4000)]
        packs = [t["key"] for t in stream.data if "-x" in t["key"]]
        assert len(packs) > 2 * threads, packs  # enough packs that the cap had work to do
        assert 1 <= runner.peak_packs_in_flight <= threads, runner.peak_packs_in_flight


def test_no_more_calls_go_to_dask_while_the_recorder_is_behind(tmp_path, monkeypatch):
    """Results are not taken in faster than the ledger commits them: with a slow ledger, the
    recorder's queue stays near BACKLOG (plus what was in flight) instead of taking every result."""
    from htc_notebook import Session, SiteConfig
    from htc_notebook.backends import dask_jobs
    from htc_notebook.ledger import Ledger
    from htc_notebook.runtime.recorder import Recorder

    monkeypatch.setattr(dask_jobs, "BACKLOG", 10)
    monkeypatch.setattr(dask_jobs, "PACK_BELOW", 0.0)  # never packed: one call a dask task, WINDOW at most in flight
    record = Ledger.record_outcomes
    monkeypatch.setattr(Ledger, "record_outcomes", lambda self, o: (time.sleep(0.03 * len(o)), record(self, o))[1])
    most = [0]
    put = Recorder._put
    monkeypatch.setattr(Recorder, "_put", lambda self, item: (put(self, item), most.__setitem__(
        0, max(most[0], self._pending)))[0])
    site = SiteConfig.from_yaml("profiles:\n  local: {dask_window: 10}\n")
    with Session(tmp_path / "root", site=site) as s:
        values = s.project("w").task("slow").sweep(quick, Sweep.zip(x=list(range(300)))).results(timeout=300)
    assert values == [x + 1 for x in range(300)]
    assert 10 < most[0] <= 10 + 10 + 2, most[0]  # behind, but by BACKLOG and the window, not by the sweep
