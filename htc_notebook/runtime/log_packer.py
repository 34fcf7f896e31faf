"""Ended jobs' logs moved into their task's packs (storage/log_packs.py), a while after they ended.

The ledger queues every job with logs that reaches a terminal state (a trigger: whichever process
ended it); the reconcile loop calls `pack_due` every PACK_EVERY s. A job is packed GRACE s after it
ended, so that a process still writing to its log (a cancelled job's last words) has finished; one
running again by then (a retry) is taken off the queue and queued anew when it ends. Packing is
idempotent (the index's last entry for a log wins), so two processes packing at once, or a
process killed halfway, lose nothing: at worst a log's bytes are in its pack twice.
"""

from __future__ import annotations

import logging
import os
import time

from htc_notebook.ledger import Ledger
from htc_notebook.states import TERMINAL_NAMES
from htc_notebook.storage.log_packs import pack_logs

log = logging.getLogger(__name__)

PACK_EVERY = 10.0  # seconds between two rounds
GRACE = 30.0  # seconds after its end before a job's logs are packed
PER_ROUND = 5000  # jobs a round takes from the queue at once
ROUND_SECONDS = 1.0  # a round takes more while it has taken less time than this (a sweep of 1,000,000 calls
# ends faster than 5,000 jobs every PACK_EVERY s)


class LogPacker:
    """Packs the logs of the data root's ended jobs, PER_ROUND at a time."""

    def __init__(self, ledger: Ledger, *, grace: float = GRACE):
        self.ledger, self.grace = ledger, grace
        self.packed = 0  # logs packed (or, empty, removed) by this process (for tests and figures)

    def pack_due(self, now: float | None = None) -> int:
        """One round: the logs of jobs that ended `grace` s before `now` (or earlier) packed, task by
        task, PER_ROUND jobs at a time for up to ROUND_SECONDS; returns how many jobs left the queue."""
        before, start, done = (now or time.time()) - self.grace, time.monotonic(), 0
        while True:
            took = self._pack_some(before)
            done += took
            if took < PER_ROUND or time.monotonic() - start >= ROUND_SECONDS:
                return done

    def _pack_some(self, before: float) -> int:
        due = self.ledger.logs_due(before, PER_ROUND)
        by_task: dict[str, list[str]] = {}
        for _, status, out, err in due:
            if status in TERMINAL_NAMES:
                for path in (out, err):
                    if path:  # task/logs/job-<id>.out
                        by_task.setdefault(os.path.dirname(os.path.dirname(path)), []).append(path)
        for task_dir, paths in by_task.items():
            try:
                self.packed += pack_logs(task_dir, paths)
            except FileNotFoundError:
                pass  # the task's files were deleted (retention)
            except (OSError, ValueError) as exc:  # a job replaced `.htc` or `logs` (UntrustedFile), a full disk
                # their logs stay loose (read as before); the other tasks' are packed all the same
                log.warning("%d logs of %s left loose: %s", len(paths), task_dir, exc)
        if due:
            self.ledger.logs_done([job_id for job_id, *_ in due])
        return len(due)
