"""Calls back when watched jobs end: what `as_completed`, the Executor's futures and `await` on
handles wait with (runtime/futures.py, handles.py).

One watcher per session: a thread, running while something is watched, that reads only the rows
that changed since its last look (per task, by the ledger's change sequence), woken by this
process's own commits (the session's change mark) and every POLL_SECONDS for other processes'.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from htc_notebook.ledger import Ledger
from htc_notebook.runtime.changes import Changes
from htc_notebook.states import TERMINAL_NAMES

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # the longest an end committed by another process goes unseen

Ended = Callable[[int, str], None]  # called with (job id, terminal status) in the watcher's thread


class Completions:
    """Calls back once when each watched job ends. One per session (`Parts.completions`); its
    thread runs while something is watched."""

    def __init__(self, ledger: Ledger, changes: Changes):
        self._ledger, self._changes = ledger, changes
        self._closed = False
        self._lock = threading.Lock()
        self._watched: dict[int, list[Ended]] = {}  # job id -> callbacks
        self._task_of: dict[int, int] = {}  # job id -> task id
        self._seq: dict[int, int] = {}  # task id -> the change sequence seen so far
        self._thread: threading.Thread | None = None

    def watch(self, job_id: int, task_id: int, ended: Ended) -> None:
        """Call `ended(job_id, status)` when the job ends (at once, here, if it has)."""
        self.watch_many([(job_id, task_id, ended)])

    def watch_many(self, items: list[tuple[int, int, Ended]]) -> None:
        """`watch` for many jobs at once: two reads in all, not two per job."""
        if not items:
            return
        ledger = self._ledger
        with self._lock:
            if any(task_id not in self._seq for _, task_id, _ in items):
                seq = ledger.max_seq()  # before the look below: no end between them is missed
                for _, task_id, _ in items:
                    self._seq.setdefault(task_id, seq)
            for job_id, task_id, ended in items:
                self._watched.setdefault(job_id, []).append(ended)
                self._task_of[job_id] = task_id
        statuses = ledger.statuses({job_id for job_id, _, _ in items})
        self._fire([(job_id, s) for job_id, s in statuses.items() if s in TERMINAL_NAMES])
        with self._lock:
            if self._watched and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._loop, name="htc-completions", daemon=True)
                self._thread.start()

    def forget(self, job_id: int, ended: Ended) -> None:
        """Stop calling `ended` for this job."""
        with self._lock:
            rest = [c for c in self._watched.get(job_id, []) if c is not ended]
            if rest:
                self._watched[job_id] = rest
            else:
                self._watched.pop(job_id, None)
                self._task_of.pop(job_id, None)

    def _fire(self, ended: list[tuple[int, str]]) -> None:
        calls = []
        with self._lock:
            for job_id, status in ended:
                calls += [(c, job_id, status) for c in self._watched.pop(job_id, [])]
                self._task_of.pop(job_id, None)
        for callback, job_id, status in calls:
            try:
                callback(job_id, status)
            except Exception:  # one waiter's failure must not stop the others being told
                log.exception("a callback for the end of job %s failed", job_id)

    def close(self) -> None:
        """Stop watching (the session is closing); callbacks not yet called never are."""
        self._closed = True

    def _loop(self) -> None:
        while not self._closed:
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return
                tasks = dict(self._seq)
            mark = self._changes.mark()
            try:
                ended = []
                for task_id, seq in tasks.items():
                    new_seq, changed = self._ledger.status_changes(task_id, seq)
                    with self._lock:
                        self._seq[task_id] = max(self._seq.get(task_id, 0), new_seq)
                        ended += [(j, s) for j, s in changed if s in TERMINAL_NAMES and j in self._watched]
                self._fire(ended)
            except Exception:  # logged, looked at again next round
                log.exception("looking for ended jobs failed; looking again in %s s", POLL_SECONDS)
            self._changes.wait(timeout=POLL_SECONDS, since=mark)
