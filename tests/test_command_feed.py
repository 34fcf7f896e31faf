"""A large batch of local command jobs is fed to the command runner a slice at a time as its queue
drains (runtime/sweep_feed.py, `LocalBackend.feed`): the kernel holds at most a few slices of queued
Launches, and the jobs not fed yet are still the session's to cancel, retry and close, from here or
from another process through the ledger. Which jobs ran is read from the file each one appends its id
to, and from the attempts that started."""

from __future__ import annotations

import threading
import time

import pytest

from htc_notebook import Session, SiteConfig

N, SLICE, LOW = 600, 60, 40
RUN = ["sh", "-c", 'echo "$HTC_JOB_ID" >> ran.txt']


def _batch(task, n: int = N):
    return task.submit_batch({"jobName": "mark", "batchSize": n, "htcJobDefinition": {"commands": RUN}})


def _unfed(s, ids) -> list[int]:
    """Of `ids`, those this session runs but has not handed to its runner yet (still in a feed)."""
    return [i for i in ids if s.parts.tasks.runs_here(i) and i not in s.parts.tasks.here]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """One batch of N commands fed SLICE at a time whenever fewer than LOW wait queued. Right after
    `submit_batch()` returns, jobs not fed yet are cancelled here (Dispatcher.cancel) and from another
    process (the ledger only, as the CLI or another server's REST API does), and one of them is
    retried. Yields what each test reads."""
    from htc_notebook.backends import local_commands
    from htc_notebook.runtime import dispatch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "DISPATCH_SLICE", SLICE)
        mp.setattr(local_commands, "FEED_LOW", LOW)
        with Session(tmp_path_factory.mktemp("root"), site=SiteConfig.builtin()) as s:
            task = s.project("p").task("feed")
            commands = s.backend(s.profile("local"))._commands
            queued, done = [0], threading.Event()

            def sample():  # the most launches the runner's queue held at once
                while not done.is_set():
                    queued[0] = max(queued[0], len(commands._queue))
                    time.sleep(0.002)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            group = _batch(task)
            ids = group.ids
            here, elsewhere, retried = ids[-200:-100], ids[-100:-1], ids[-1]
            unfed = _unfed(s, ids)
            cancelled = (s.parts.dispatcher.cancel(here + [retried]),
                         s.ledger.cancel(elsewhere, "cancelled from another process"))
            again = s.parts.dispatcher.retry([retried])  # attempt 2, dispatched now
            group.wait(timeout=600)
            done.set()
            sampler.join()
            ran = [int(line) for line in task.storage.path("ran.txt").read_text().split()]
            attempts = {(a.job_id, a.number): a for rows in s.ledger.attempts_of(list(ids)).values() for a in rows}
            yield dict(s=s, ids=ids, here=here, elsewhere=elsewhere, retried=retried, unfed=unfed,
                       cancelled=cancelled, again=again, ran=ran, queued=queued[0], attempts=attempts,
                       rows={r.id: r for r in task.jobs().rows()}, feeding=set(s.parts.tasks.feeding),
                       left_unfed=_unfed(s, ids))


def test_a_batch_waits_as_its_rows_and_is_queued_a_few_slices_at_a_time(fed):
    assert len(fed["unfed"]) > N // 2  # right after submit_batch(): most of it not made into Launches yet
    assert fed["queued"] <= LOW + 2 * SLICE, fed["queued"]  # before the feed: all N queued at once
    assert not fed["feeding"] and not fed["left_unfed"]  # used up, and let go


def test_every_job_still_to_run_runs_once(fed):
    ids, rows, ran = fed["ids"], fed["rows"], fed["ran"]
    to_run = ids[:-200]
    assert sorted(i for i in ran if i in set(to_run)) == list(to_run)  # each once
    assert {rows[i].status for i in to_run} == {"SUCCEEDED"}


def test_jobs_cancelled_before_they_are_fed_never_run(fed):
    """Cancelled here or in the ledger by another process: the feed reads which of its next slice
    are still RUNNABLE in their first attempt."""
    here, elsewhere, rows = fed["here"], fed["elsewhere"], fed["rows"]
    assert set(here) | set(elsewhere) <= set(fed["unfed"])  # they were not fed when cancelled
    assert sorted(fed["cancelled"][0]) == sorted(here + [fed["retried"]]) and fed["cancelled"][1] == elsewhere
    assert all(rows[i].status == "CANCELLED" and rows[i].attempts == 1 for i in here + elsewhere)
    assert not set(fed["ran"]) & set(here + elsewhere)
    assert all(fed["attempts"][(i, 1)].started is None for i in here + elsewhere)


def test_a_job_retried_before_it_is_fed_runs_once_in_its_new_attempt(fed):
    last, attempts = fed["retried"], fed["attempts"]
    assert last in fed["unfed"] and fed["again"] == [last]
    assert fed["ran"].count(last) == 1
    assert attempts[(last, 1)].started is None and attempts[(last, 2)].status == "SUCCEEDED"
    assert fed["rows"][last].attempts == 2 and fed["rows"][last].status == "SUCCEEDED"


def test_closing_the_session_ends_the_jobs_not_fed_cancelled(tmp_path, monkeypatch):
    from htc_notebook.backends import local_commands
    from htc_notebook.runtime import dispatch

    monkeypatch.setattr(dispatch, "DISPATCH_SLICE", SLICE)
    monkeypatch.setattr(local_commands, "FEED_LOW", LOW)
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        ids = _batch(s.project("p").task("close")).ids
        assert len(_unfed(s, ids)) > N // 2
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as again:
        task = again.project("p").task("close")
        rows = task.jobs().rows()
        assert len(rows) == N
        assert {r.status for r in rows} <= {"SUCCEEDED", "CANCELLED"}  # nothing left RUNNABLE, nothing lost
        cancelled = [r for r in rows if r.status == "CANCELLED"]
        assert len(cancelled) > N // 2
        assert {r.reason for r in cancelled} <= {"session closed before the job started", "cancelled while running"}
        ran = set(map(int, task.storage.path("ran.txt").read_text().split())) if task.storage.path(
            "ran.txt").exists() else set()
        assert not ran & {r.id for r in cancelled if r.reason == "session closed before the job started"}


def test_a_command_sweep_is_fed_too(tmp_path, monkeypatch):
    """A sweep of a command template makes its members' jobs a slice at a time (SweepRows) and feeds
    them as a batch's; each member's command is its own."""
    from htc_notebook import Sweep
    from htc_notebook.backends import local_commands
    from htc_notebook.runtime import dispatch

    monkeypatch.setattr(dispatch, "DISPATCH_SLICE", SLICE)
    monkeypatch.setattr(local_commands, "FEED_LOW", LOW)
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("sweep")
        group = task.sweep(["sh", "-c", "echo {x} >> ran.txt"], Sweep.zip(x=list(range(N))))
        assert len(_unfed(s, group.ids)) > N // 2
        group.wait(timeout=600)
        assert group.counts()["SUCCEEDED"] == N
        assert sorted(map(int, task.storage.path("ran.txt").read_text().split())) == list(range(N))
