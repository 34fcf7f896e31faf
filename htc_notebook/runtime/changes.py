"""This process's change mark: what waiters sleep on until the next commit, and who hears of each.

Every commit this process makes (the recorder's, a cancel's, a LOST marking's) bumps one counter;
`wait(since=mark)` sleeps until it moves (other processes' commits are seen by polling the ledger,
so every wait has a timeout). Listeners (the reconcile loop) are told of each commit's outcomes.

>>> changes = Changes(); mark = changes.mark(); changes.committed([]); changes.mark() == mark + 1
True
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from htc_notebook.states import Outcome

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # a wait's default timeout: the longest another process's commit goes unseen

Listener = Callable[[Sequence[Outcome]], None]


class Changes:
    """The change mark of one Session, and the listeners told of every commit."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call `listener(outcomes)` after every commit (in the committing thread: keep it short)."""
        self._listeners.append(listener)

    def committed(self, outcomes: Sequence[Outcome] = ()) -> None:
        """Something was committed (with these outcomes): wake the waiters, tell the listeners."""
        self.moved()
        for listener in self._listeners:
            try:
                listener(outcomes)
            except Exception:
                log.exception("a listener of committed changes failed")

    def moved(self) -> None:
        """Jobs changed state without ending (released to run): wake the waiters only."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def mark(self) -> int:
        """A mark to pass to `wait`: take it before looking at the ledger."""
        with self._changed:
            return self._generation

    def wait(self, timeout: float = POLL_SECONDS, since: int | None = None) -> None:
        """Sleep until this process commits something after `since` (a `mark`), or `timeout`. With
        the mark, a commit between the look and the wait is not missed."""
        with self._changed:
            if since is None:
                self._changed.wait(timeout)
            else:
                self._changed.wait_for(lambda: self._generation != since, timeout)
