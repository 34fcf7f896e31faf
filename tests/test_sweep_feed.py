"""A large sweep is fed to its dask runner a slice at a time as the runner's queue drains
(runtime/sweep_feed.py): the kernel queues at most a few slices of calls, and the jobs not fed yet are
still the session's to cancel, retry and close, from here or from another process through the
ledger. Which jobs ran is read from dask's task stream (one dask task a job: packing is off)."""

from __future__ import annotations

import time

import pytest

from htc_notebook import Session, SiteConfig, Sweep

N, SLICE, AHEAD = 1000, 100, 200


def slow_one(x: int) -> int:
    time.sleep(0.02)
    return x + 1


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """One sweep of N calls fed SLICE at a time while fewer than AHEAD wait queued. Right after
    `sweep()` returns, jobs not fed yet are cancelled here (Dispatcher.cancel) and from another
    process (the ledger only, as the CLI or another server's REST API does), and one of them is
    retried. Yields what each test reads."""
    from distributed import get_task_stream

    from htc_notebook.backends import dask_jobs
    from htc_notebook.runtime import dispatch

    queued: list[int] = []  # how many calls waited in the runner's queue after each submission to it
    submit = dask_jobs.DaskJobs._submit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "DISPATCH_SLICE", SLICE)
        mp.setattr(dask_jobs, "FEED_AHEAD", AHEAD)
        mp.setattr(dask_jobs, "PACK_BELOW", 0.001)  # 20 ms calls run one to a dask task
        mp.setattr(dask_jobs.DaskJobs, "_submit", lambda self, launches, fed=False: (
            submit(self, launches, fed), queued.append(len(self._waiting)))[0])
        with Session(tmp_path_factory.mktemp("root"), site=SiteConfig.builtin()) as s:
            task = s.project("p").task("feed")
            runner = s.backend(s.profile("local"))
            with get_task_stream(runner.client) as stream:
                group = task.sweep(slow_one, Sweep.zip(x=list(range(N))))
                ids = group.ids
                here, elsewhere, retried = ids[-300:-150], ids[-150:-1], ids[-1]
                unfed = _unfed(s, ids)
                listed = [c["jobs"] for c in s.parts.backends.clusters() if c["profile"] == "local"]
                cancelled = (s.parts.dispatcher.cancel(here + [retried]),
                             s.ledger.cancel(elsewhere, "cancelled from another process"))
                again = s.parts.dispatcher.retry([retried])  # attempt 2, dispatched now
                values = group.results(timeout=600, errors="return")
            yield dict(s=s, ids=ids, here=here, elsewhere=elsewhere, retried=retried, unfed=unfed,
                       cancelled=cancelled, again=again, values=values, ran=_ran(stream), queued=queued,
                       rows={r.id: r for r in task.jobs().rows()}, feeding=set(s.parts.tasks.feeding),
                       left_unfed=_unfed(s, ids), listed=listed)


def _ran(stream) -> set[tuple[int, int]]:
    """(job id, attempt) of every dask task the stream saw (htc-job-<id>-<attempt>)."""
    return {(int(k.split("-")[2]), int(k.split("-")[3])) for k in (t["key"] for t in stream.data)}


def _unfed(s, ids) -> list[int]:
    """Of `ids`, those this session runs but has not handed to its runner yet (still in a feed)."""
    return [i for i in ids if s.parts.tasks.runs_here(i) and i not in s.parts.tasks.here]


def test_a_sweep_waits_as_its_members_and_is_queued_a_few_slices_at_a_time(fed):
    assert len(fed["unfed"]) > N // 2  # right after sweep(): most of it not made into queued calls yet
    assert max(fed["queued"]) <= AHEAD + SLICE, max(fed["queued"])  # before the feed: all N at once
    assert len(fed["queued"]) >= (N - 300) // SLICE
    assert not fed["feeding"] and not fed["left_unfed"]  # used up, and let go
    assert fed["listed"][0] >= len(fed["unfed"])  # the cluster's card counts the jobs not fed yet


def test_every_job_still_to_run_runs_once(fed):
    ids, rows = fed["ids"], fed["rows"]
    assert fed["values"][:-300] == [x + 1 for x in range(N - 300)]
    assert {(i, 1) for i in ids[:-300]} <= fed["ran"]
    assert {rows[i].status for i in ids[:-300]} == {"SUCCEEDED"}


def test_jobs_cancelled_before_they_are_fed_never_run(fed):
    """Cancelled here or in the ledger by another process: the feed reads which of its next slice
    are still RUNNABLE in their first attempt."""
    here, elsewhere, rows = fed["here"], fed["elsewhere"], fed["rows"]
    assert set(here) | set(elsewhere) <= set(fed["unfed"])  # they were not fed when cancelled
    assert sorted(fed["cancelled"][0]) == sorted(here + [fed["retried"]]) and fed["cancelled"][1] == elsewhere
    assert all(rows[i].status == "CANCELLED" and rows[i].attempts == 1 for i in here + elsewhere)
    assert not {i for i, _ in fed["ran"]} & set(here + elsewhere)


def test_a_job_retried_before_it_is_fed_runs_once_in_its_new_attempt(fed):
    last = fed["retried"]
    assert last in fed["unfed"] and fed["again"] == [last]
    assert (last, 2) in fed["ran"] and (last, 1) not in fed["ran"]  # the feed skipped attempt 1 when it came to it
    assert fed["rows"][last].attempts == 2 and fed["rows"][last].status == "SUCCEEDED"
    assert fed["values"][-1] == N


def test_closing_the_session_ends_the_jobs_not_fed_cancelled(tmp_path, monkeypatch):
    from htc_notebook.backends import dask_jobs
    from htc_notebook.runtime import dispatch

    monkeypatch.setattr(dispatch, "DISPATCH_SLICE", SLICE)
    monkeypatch.setattr(dask_jobs, "FEED_AHEAD", AHEAD)
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        group = s.project("p").task("close").sweep(slow_one, Sweep.zip(x=list(range(N))))
        ids = group.ids
        assert len(_unfed(s, ids)) > N // 2
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as again:
        rows = again.project("p").task("close").jobs().rows()
        assert len(rows) == N
        assert {r.status for r in rows} <= {"SUCCEEDED", "CANCELLED"}  # nothing left RUNNABLE, nothing lost
        cancelled = [r for r in rows if r.status == "CANCELLED"]
        assert len(cancelled) > N // 2
        assert all(r.reason == "session closed before the job finished" for r in cancelled)


def test_a_feed_that_breaks_ends_its_jobs_failed_not_runnable(tmp_path, monkeypatch):
    """A feed makes its own slices' failures FAILED; should it raise all the same (a bug), the jobs
    it had not given end FAILED (cause submit) instead of staying RUNNABLE with nothing to run them."""
    from htc_notebook.backends import dask_jobs
    from htc_notebook.runtime import dispatch, sweep_feed

    monkeypatch.setattr(dispatch, "DISPATCH_SLICE", SLICE)
    monkeypatch.setattr(dask_jobs, "FEED_AHEAD", AHEAD)

    def broken(self):
        raise RuntimeError("a bug in the feed")

    monkeypatch.setattr(sweep_feed.SweepFeed, "take", broken)
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("broken")
        group = task.sweep(slow_one, Sweep.zip(x=list(range(N))))
        group.wait(timeout=300)
        rows = sorted(task.jobs().rows(), key=lambda r: r.id)
        assert {r.status for r in rows[:SLICE]} == {"SUCCEEDED"}  # the first slice, handed over at once
        rest = rows[SLICE:]
        assert len(rest) == N - SLICE
        assert all(r.status == "FAILED" and "the sweep's feed failed: RuntimeError" in r.reason for r in rest)
