"""Waiting on many jobs the way Python code already does: `as_completed`, a `concurrent.futures`
Executor whose futures are ledger jobs, and `await` on handles (issue 27, items 2 to 4).

All of them are fed by the session's one `Completions` watcher (runtime/completions.py): no loop
over handles, no thread per job.

>>> for job in as_completed(task.submit(simulate, T) for T in temperatures):  # doctest: +SKIP
...     print(job.id, job.result())
>>> with task.executor(resources={"cores": 1}) as ex:                     # doctest: +SKIP
...     values = list(ex.map(simulate, temperatures))
>>> value = await task.submit(simulate, 2.3)                               # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from htc_notebook.runtime.handles import JobHandle, failure
from htc_notebook.runtime.results import load_result

Submit = Callable[[Callable[..., Any], tuple, Mapping[str, Any]], JobHandle]  # fn, args, kwargs -> its job


def as_completed(handles: Iterable[JobHandle], timeout: float | None = None) -> Iterator[JobHandle]:
    """The handles, each as its job ends (SUCCEEDED or not), in the order they end; a job that has
    already ended comes first. TimeoutError (naming how many are unfinished) if they have not all
    ended within `timeout` seconds of the call, as `concurrent.futures.as_completed`."""
    handles = list({h.id: h for h in handles}.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: queue.Queue[JobHandle] = queue.Queue()
    callbacks = [(h, functools.partial(_put, ended, h)) for h in handles]
    by_parts: dict[int, list] = {}
    for h, callback in callbacks:
        by_parts.setdefault(id(h.parts), []).append((h, callback))
    for group in by_parts.values():  # one watcher per session: two reads each, however many handles
        group[0][0].parts.completions.watch_many([(h.id, h.task_id, callback) for h, callback in group])
    try:
        for left in range(len(handles), 0, -1):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield ended.get(timeout=wait)
            except queue.Empty:
                raise TimeoutError(f"{left} (of {len(handles)}) jobs unfinished") from None
    finally:
        for h, callback in callbacks:
            h.parts.completions.forget(h.id, callback)


def _put(q: queue.Queue, handle: JobHandle, job_id: int, status: str) -> None:
    q.put(handle)


class JobFuture(concurrent.futures.Future):
    """A stdlib Future that is a ledger job (`handle`): it stays pending until the job ends, then
    holds its result or its JobFailed; `cancel()` cancels the job (if it has not ended)."""

    def __init__(self, handle: JobHandle):
        super().__init__()
        self.handle = handle
        self._notify = threading.Lock()  # `cancel()` here and the job's CANCELLED seen by Completions race
        self._notified = False

    def cancel(self) -> bool:
        if self.done():
            return False
        self.handle.cancel()
        return self._cancelled()

    def _cancelled(self) -> bool:
        """Cancelled, and its waiters told once (`concurrent.futures.wait` counts only a notified cancel;
        a second notification raises)."""
        with self._notify:
            if self._notified:
                return True
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()
            self._notified = True
            return True

    def _settle(self, job_id: int, status: str) -> None:
        """The job ended (`Completions` calls this): its value, its failure, or cancelled."""
        if self.done():
            return
        try:
            if status == "SUCCEEDED":
                self.set_result(load_result(self.handle.parts.ledger, self.handle.row))
            elif status == "CANCELLED":
                self._cancelled()  # cancelled elsewhere (the table, another process): so is the future
            else:
                self.set_exception(failure(self.handle.row))
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass
        except Exception as exc:  # noqa: BLE001 - a result that cannot be loaded is the future's error
            self.set_exception(exc)


class TaskExecutor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` over a task: each `submit` is one ledger job (write-ahead,
    retried as `retries` says, outliving the kernel), its Future a `JobFuture`. Code written for
    ProcessPoolExecutor or executorlib runs unchanged; `concurrent.futures.wait`, `as_completed`
    and callbacks work.

    >>> with task.executor(resources={"cores": 2}) as ex:  # doctest: +SKIP
    ...     futures = [ex.submit(simulate, T, steps=1000) for T in temperatures]
    ...     done, _ = concurrent.futures.wait(futures)
    """

    def __init__(self, call: Submit):
        self._call = call  # `Task.call` with the executor's profile, resources and retries
        self._futures: list[JobFuture] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            handle = self._call(fn, args, kwargs)
            future = JobFuture(handle)
            self._futures = [f for f in self._futures if not f.done()] + [future]
        handle.parts.completions.watch(handle.id, handle.task_id, future._settle)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait:
            concurrent.futures.wait(futures)
