"""A large sweep is handed over in slices: at most one slice of Launches is alive at once,
every job still runs once (its own attempt), and the sweep is probed once, not once per slice."""

from __future__ import annotations

import gc
import time
from collections import Counter

import pytest

from htc_notebook import Sweep
from htc_notebook.backends.base import Launch

N, SLICE = 20_000, 2_000


class CountedLaunch(Launch):
    """A Launch that counts the jobs with one alive (CPython frees at the last reference), at most
    at once (`peak`) and ever (`jobs`). A job's Launch may be copied (unconfined, `sandbox.confined`
    drops its view: the copy shares its arguments), so Launches are counted per job."""

    live: Counter[int] = Counter()  # job id -> its Launches alive
    peak = 0
    jobs: set[int] = set()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cls = CountedLaunch
        cls.live[self.job_id] += 1
        cls.jobs.add(self.job_id)
        cls.peak = max(cls.peak, len(cls.live))

    def __del__(self):
        live = CountedLaunch.live
        live[self.job_id] -= 1
        if not live[self.job_id]:
            del live[self.job_id]


def add_one(x: int) -> int:
    return x + 1


RECORDS: list[int] = []  # job records alive at each chunk recorded and each slice handed over


def _records() -> int:
    from htc_notebook.ledger import NewJob
    from htc_notebook.runtime.pending import Pending

    return sum(1 for o in gc.get_objects() if type(o) is NewJob or type(o) is Pending)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One N-job sweep dispatched SLICE jobs at a time, with Launches counted; its task stream."""
    from distributed import Client, get_task_stream

    from htc_notebook import Session, SiteConfig
    from htc_notebook.backends import dask_jobs
    from htc_notebook.ledger import submission
    from htc_notebook.runtime import dispatch as dispatch_module, plan as plan_module, sweep_feed

    with pytest.MonkeyPatch.context() as mp:
        # packing decided by the probes whatever the machine's load: quick means under 5 s here,
        # and packs are as large as the threads allow
        mp.setattr(dask_jobs, "PACK_BELOW", 5.0)
        mp.setattr(dask_jobs, "PACK_SECONDS", 1e3)
        mp.setattr(dask_jobs, "PROBE_WAIT", 300.0)
        mp.setattr(dask_jobs, "PROBE_CAP", 300.0)
        mp.setattr(dispatch_module, "DISPATCH_SLICE", SLICE)
        mp.setattr(submission, "ENCODE_CHUNK", SLICE)
        mp.setattr(plan_module, "Launch", CountedLaunch)  # where the Dispatcher builds its Launches
        # the job records alive (NewJob, Pending) each time the ledger encodes a chunk and dispatch hands a slice over
        encode, hand_over = submission._encode_jobs, dispatch_module.Dispatcher._hand_over
        mp.setattr(submission, "_encode_jobs", lambda jobs: (RECORDS.append(_records()), encode(jobs))[1])
        mp.setattr(dispatch_module.Dispatcher, "_hand_over",
                   lambda self, *a, **kw: (RECORDS.append(_records()), hand_over(self, *a, **kw))[1])
        take = sweep_feed.SweepFeed.take  # the slices after the first are fed as the runner's queue drains
        mp.setattr(sweep_feed.SweepFeed, "take", lambda self: (RECORDS.append(_records()), take(self))[1])
        # the scheduler slow to say its threads (as under load): slices handed over meanwhile must
        # still join the probed ones (they were probed a second time: seen twice under make test)
        nthreads = Client.nthreads
        mp.setattr(Client, "nthreads", lambda self, *a, **kw: (time.sleep(1.0), nthreads(self, *a, **kw))[1])
        with Session(tmp_path_factory.mktemp("htc-root"), site=SiteConfig.builtin()) as s:
            client = s.backend(s.profile("local")).client
            task = s.project("p").task("big")
            with get_task_stream(client) as stream:
                group = task.sweep(add_one, Sweep.zip(x=list(range(N))))
                values = group.results(timeout=600)
            yield s, task, group, values, [t["key"] for t in stream.data]


def test_at_most_one_slice_of_launches_is_alive_at_once(swept):
    assert len(CountedLaunch.jobs) == N  # every job got its Launch...
    assert CountedLaunch.peak <= SLICE  # ...but never more than a slice of them lived at once
    assert not CountedLaunch.live


def test_a_sweep_is_recorded_and_handed_over_without_a_record_of_every_member(swept):
    """NewJob and Pending records are made from the sweep's members a chunk at a time (a million
    members' records were ~0.25 kB a member in the kernel at once)."""
    assert len(RECORDS) >= 2 * N // SLICE  # every chunk recorded and every slice handed over was looked at
    assert max(RECORDS) <= SLICE, RECORDS


def test_every_job_runs_once_with_its_own_attempt(swept):
    _, task, group, values, _ = swept
    assert values == [x + 1 for x in range(N)]
    rows = task.jobs().rows()
    assert len(rows) == N and {r.status for r in rows} == {"SUCCEEDED"}
    assert {r.attempts for r in rows} == {1}
    assert len({r.log_out for r in rows}) == N  # each its own log


def test_the_sweep_is_probed_once_not_once_per_slice(swept):
    from htc_notebook.backends.dask_jobs import PROBE_JOBS

    *_, keys = swept
    packs = {k for k in keys if "-x" in k}  # a set: the stream names a task again if dask ran it again
    singles = sorted(set(keys) - packs)
    assert len(singles) == PROBE_JOBS, singles
    assert sum(int(k.rsplit("-x", 1)[1]) for k in packs) == N - PROBE_JOBS


def test_results_read_in_pages_keep_member_order_for_any_ids(swept, monkeypatch):
    from htc_notebook.runtime import handles
    from htc_notebook.runtime.handles import JobGroup

    s, task, group, values, _ = swept
    monkeypatch.setattr(handles, "PAGE", 700)
    picked = list(range(N - 1, -1, -3)) + [0, 3, 8]  # out of order and scattered (distinct: wait() counts jobs)
    ids, expected = [group.ids[i] for i in picked], [values[i] for i in picked]
    assert JobGroup(s.parts, task.id, ids, "mixed").results() == expected


class RefusesSecondSlice:
    """A backend that takes the first submission and refuses the next (say, the site said no)."""

    def __init__(self):
        self.taken: set[int] = set()

    def submit(self, launches):
        from htc_notebook.errors import BackendError

        if self.taken:
            raise BackendError("the site refused the submission")
        self.taken |= {launch.job_id for launch in launches}

    def running(self):
        return set(self.taken)

    def dask_runners(self):
        return {}

    def close(self):
        pass


def test_when_a_slice_is_refused_every_job_not_taken_ends_failed_saying_why(tmp_path, monkeypatch):
    from htc_notebook import HTCError, Session, SiteConfig
    from htc_notebook.runtime import dispatch as dispatch_module

    monkeypatch.setattr(dispatch_module, "DISPATCH_SLICE", 10)
    backend = RefusesSecondSlice()
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        monkeypatch.setattr(s.parts.backends, "get", lambda profile: backend)
        task = s.project("p").task("refused")
        with pytest.raises(HTCError, match="refused"):
            task.sweep(add_one, Sweep.zip(x=list(range(35))))
        rows = task.jobs().rows()
        assert len(rows) == 35 and len(backend.taken) == 10
        assert all(r.status == "RUNNABLE" for r in rows if r.id in backend.taken)
        failed = [r for r in rows if r.id not in backend.taken]
        assert len(failed) == 25 and all(r.status == "FAILED" and "not submitted" in r.reason and r.attempts == 1
                                         for r in failed)


def test_the_kernel_keeps_no_sweep_arguments_once_the_sweep_ended(tmp_path):
    """dask logs each comm's last messages (1,000 by default, for its developers), and each of ours
    carries a pack of calls: the kernel kept ~140 B a call, sweep after sweep. Lowered where a
    cluster starts (`RECENT_MESSAGES`): the bytes dask's messages hold (`Serialized` payloads) do not
    grow once that many sweeps ran (each sweep here is one message of packs)."""
    import gc

    from distributed.protocol.serialize import Serialized

    from htc_notebook import Session
    from htc_notebook.backends.dask_jobs import RECENT_MESSAGES

    def held() -> int:
        gc.collect()
        return sum(len(f) for o in gc.get_objects() if isinstance(o, Serialized) for f in o.frames)

    sizes = []
    with Session(tmp_path / "root") as s:
        for r in range(2 * RECENT_MESSAGES):
            xs = list(range(r * 2000, (r + 1) * 2000))
            assert s.project("m").task(f"s{r}").sweep(add_one, Sweep.zip(x=xs)).results() == [x + 1 for x in xs]
            sizes.append(held())
    # before the change: 0.47 MB after the first sweep, 0.47 MB more after each, 3.8 MB after 8.
    # Now usually 0 throughout; a pack still in flight when the kernel is slow (0.48 MB once, under
    # CI load) is allowed for: at most two sweeps' packs more than after the first.
    assert sizes[-1] <= 1.25 * sizes[0] + 1_000_000, sizes


def test_a_groups_first_look_reads_the_jobs_states_a_page_at_a_time(swept, monkeypatch):
    """A group's first look at its jobs' states read every row of the task as one list (a million
    tuples at once); it reads pages of CHANGES_PAGE rows, and a job that changes between pages is
    counted once, in its new state."""
    from htc_notebook.runtime import handles
    from htc_notebook.runtime.handles import JobGroup

    s, task, group, _, _ = swept
    monkeypatch.setattr(handles, "CHANGES_PAGE", 3000)
    pages, page = [], s.ledger.status_page
    monkeypatch.setattr(s.ledger, "status_page", lambda *a: pages.append(len(rows := page(*a))) or rows)
    again = JobGroup(s.parts, task.id, group.ids, "again")
    assert again.counts()["SUCCEEDED"] == N
    assert max(pages) == 3000 and sum(pages) == N and len(pages) == N // 3000 + 1, pages
    assert sum(again.counts().values()) == N and pages[-1] == 0  # the next look: one page, empty


def test_a_session_with_no_waiting_job_keeps_no_record_of_what_succeeded(tmp_path):
    """The reconcile loop keeps the jobs that succeeded since its last look, to release their
    children; with no child waiting it never looked, and kept every success of the session (a
    million-call sweep: a set of a million ids in the kernel)."""
    from htc_notebook import Session

    with Session(tmp_path / "root") as s:
        xs = list(range(3000))
        assert s.project("m").task("no-children").sweep(add_one, Sweep.zip(x=xs)).results() == [x + 1 for x in xs]
        s.parts.reconciler.release_waiting()  # what its loop does every tick
        assert not s.parts.reconciler._succeeded
