"""The rest of a large sweep, handed to its dask runner a slice at a time as the runner's queue
drains (`backends.base.Feed`, `DaskJobs.feed`).

Dispatch hands a sweep's first slice over at once (its probes decide how the rest is packed); a
sweep of more calls than that leaves the rest as its members and a position. Each `take()` reads
which of the next slice's jobs are still RUNNABLE in their first attempt (one indexed range read:
a cancel or a retry from here or from another process meanwhile is seen) and makes only those
into Launches. So a million-call sweep waits in the kernel as its members, not as a million queued
records.

>>> feed = SweepFeed(rows, rows.ids, make, ledger.first_attempts_left, fail, start=5000, size=5000)  # doctest: +SKIP
>>> runner.feed(feed)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from htc_notebook.backends.base import Launch
from htc_notebook.runtime.pending import Pending

log = logging.getLogger(__name__)


class SweepFeed:
    """Jobs `rows[start:]` (a sweep's, in their first attempt, ids `ids` contiguous and rising), made
    into Launches by `make` a slice of `size` at a time; `left_of(first, last)` says which of ids first..last are
    still RUNNABLE in attempt 1; `fail(ids, reason)` ends jobs FAILED (cause `submit`).
    `on_close` is called once nothing more will be taken."""

    def __init__(self, rows: Sequence[Pending], ids: range, make: Callable[[Sequence[Pending]], list[Launch]],
                 left_of: Callable[[int, int], set[int]], fail: Callable[[Sequence[int], str], None], *,
                 start: int = 0, size: int, on_close: Callable[[SweepFeed], None] = lambda feed: None):
        assert len(ids) == len(rows) and ids.step == 1, "a sweep's feed takes contiguous ids"
        self._rows, self._ids, self._make, self._left_of, self._fail = rows, ids, make, left_of, fail
        self._size, self._on_close = size, on_close
        self._at = start  # rows[:_at] were taken (or handed over before)

    def left(self) -> range:
        return self._ids[self._at:]

    def take(self) -> list[Launch]:
        while self._at < len(self._rows):
            start, end = self._at, min(self._at + self._size, len(self._rows))
            try:
                still = self._left_of(self._ids[start], self._ids[end - 1])
                launches = self._make([row for row in self._rows[start:end] if row.id in still]) if still else []
            except Exception as exc:  # this slice and the rest end FAILED, saying why
                log.error("jobs %d..%d of a sweep could not be handed over: %s: %s", self._ids[start],
                          self._ids[-1], type(exc).__name__, exc, exc_info=True)
                rest, self._at = self._ids[start:], len(self._rows)
                self._fail(rest, f"not submitted: could not be prepared: {type(exc).__name__}: {exc}")
                return []
            self._at = end  # after `make`: a job is in the runner's `here` before it leaves `left()`
            if launches:
                return launches
        return []

    def close(self) -> None:
        self._at = len(self._rows)
        self._on_close(self)
