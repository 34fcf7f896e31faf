"""Waiting on jobs the way Python code already does (issue 27, items 2 to 4): `as_completed` in
the order jobs end, a `concurrent.futures` Executor whose futures are ledger jobs, `await` on
handles and groups. Jobs that must end in a given order wait for a marker file the test writes
in their task directory: the order is the test's, not the machine's speed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import pytest

from htc_notebook import JobFailed, Session, SiteConfig, Sweep, as_completed


def when_told(name: str, value: int = 0, patience: float = 60.0) -> int:
    """Waits (up to `patience` s) for the file `name` in its task directory, then returns `value`.
    A cancelled call runs on in its worker until it returns: the ones never told are short-lived."""
    path = os.path.join(os.environ["HTC_TASK_DIR"], name)
    for _ in range(int(patience * 10)):
        if os.path.exists(path):
            return value
        time.sleep(0.1)
    raise TimeoutError(f"nobody wrote {name}")


def square(x: int, *, name: str = "kw") -> tuple[int, str]:
    return x * x, name


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with Session(tmp_path_factory.mktemp("futures"), site=SiteConfig.builtin()) as s:
        yield s


def tell(task, name: str) -> None:
    task.storage.path(name).write_text("go")


def test_as_completed_yields_jobs_in_the_order_they_end(session):
    task = session.project("f").task("order")
    done = task.submit(square, 3)
    assert done.result(timeout=60) == (9, "kw")
    a, b, c = (task.submit(when_told, n, i) for i, n in enumerate("abc"))  # two at a time (two workers)
    seen = []
    for job in as_completed([a, b, c, done], timeout=120):
        seen.append(job.id)
        if len(seen) == 1:  # the one that had ended comes first; then the order the test tells
            tell(task, "b")
        elif job is b:
            tell(task, "c")
        elif job is c:
            tell(task, "a")
    assert seen == [done.id, b.id, c.id, a.id]
    assert [h.result() for h in (a, b, c)] == [0, 1, 2]


def test_as_completed_times_out_naming_what_is_unfinished(session):
    task = session.project("f").task("timeout")
    waiting, quick = task.submit(when_told, "never", patience=8), task.submit(square, 2)
    ended = []
    with pytest.raises(TimeoutError, match=r"1 \(of 2\) jobs unfinished"):
        for job in as_completed([waiting, quick], timeout=5):
            ended.append(job.id)
    assert ended == [quick.id]
    waiting.cancel()


def test_the_executor_runs_under_concurrent_futures(session):
    task = session.project("f").task("executor")
    called = []
    with task.executor() as ex:
        futures = [ex.submit(square, i, name=f"n{i}") for i in range(4)]  # `name` is square's, not submit's
        futures[0].add_done_callback(lambda f: called.append(f.result()))
        done, pending = concurrent.futures.wait(futures, timeout=120)
        assert not pending and {f.result() for f in done} == {(i * i, f"n{i}") for i in range(4)}
        assert list(ex.map(square, [5, 6], timeout=120)) == [(25, "kw"), (36, "kw")]
        broken = ex.submit(fail, 7)
        assert isinstance(broken.exception(timeout=120), JobFailed) and "bad 7" in str(broken.exception())
        slow = ex.submit(when_told, "never", patience=3)
        assert slow.cancel() and slow.cancelled()
        assert [f.handle.row.status for f in (futures[0], slow)] == ["SUCCEEDED", "CANCELLED"]
        ended = [f for f in concurrent.futures.as_completed([futures[1], broken], timeout=60)]
        assert set(ended) == {futures[1], broken}
    assert called == [(0, "n0")]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_await_a_handle_and_a_group_without_blocking_the_loop(session):
    task = session.project("f").task("await")

    async def main():
        first = task.submit(when_told, "go", 42)
        ticks = 0

        async def tick():
            nonlocal ticks
            while not first.done():
                ticks += 1
                if ticks == 3:
                    tell(task, "go")  # the loop runs on while the job waits
                await asyncio.sleep(0.05)

        value, _ = await asyncio.gather(first, tick())
        group = task.jobs()
        values = await group
        with pytest.raises(JobFailed, match="bad 1"):
            await task.submit(fail, 1)
        return value, ticks, values

    value, ticks, values = asyncio.run(main())
    assert value == 42 and ticks >= 3
    assert values == [42]


def test_as_completed_over_many_handles_reads_the_ledger_twice_not_twice_per_handle(session, monkeypatch):
    task = session.project("futures").task("many")
    group = task.sweep(square, Sweep.zip(x=list(range(60))))
    group.wait(timeout=120)
    handles = list(group)
    ledger = task.parts.ledger
    reads = {"statuses": 0, "max_seq": 0}
    for name in reads:
        real = getattr(ledger, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            reads[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ledger, name, counted)
    assert sorted(h.id for h in as_completed(handles, timeout=60)) == sorted(h.id for h in handles)
    assert reads == {"statuses": 1, "max_seq": 1}  # before: 60 of each


def test_a_job_future_notifies_its_cancel_once_whichever_side_sees_it_first(session):
    """`cancel()` cancels the job, and the job's CANCELLED reaches the future from the Completions
    thread too: both notify it. The second used to raise "Future in unexpected state" (seen once in
    CI, from `slow.cancel()` above)."""
    from htc_notebook.runtime.futures import JobFuture

    handle = session.project("f").task("cancel-once").submit(when_told, "never", patience=3)
    future = JobFuture(handle)
    waiter = concurrent.futures.wait([future], timeout=0)  # nothing done yet
    assert waiter.not_done == {future}
    assert future._cancelled() and future._cancelled()  # the user's side and the job's, either order
    assert future.cancelled() and future.done()
    assert concurrent.futures.wait([future], timeout=5).done == {future}
    handle.cancel()
