"""One status poll of SLURM per data root, however many kernels, `htc status` and `htc serve` use it.

Every Session that has a SLURM backend runs a `SlurmWatch`, from its reconcile loop. Each round it
asks the ledger for the lease `slurm-status-poll` (a row with an owner and an expiry, taken in one
write transaction: one process holds it at a time). The holder adopts every active job SLURM has in
the ledger, whichever process submitted it, and polls them all (squeue, the jobs' exit-code files,
scontrol/sacct for the ones that left the queue); what it learns is committed to the ledger, which every other process
reads. The others only drop from their watch what the ledger says has ended. When the holder
closes it gives the lease up; when it dies, the lease expires and another process takes over.

The interval grows with the number of array tasks watched (a bundle of short jobs counts once) and
with how long squeue takes (the quickest of the last SLOW_POLLS polls: a controller that stalled once,
say while it restarted, is not then left alone for a minute), and backs off while squeue fails:

>>> poll_interval(2, 0, 0.01, 0), poll_interval(2, 10_000, 0.01, 0), poll_interval(2, 10, 1.5, 0)
(2.0, 12.0, 15.0)
>>> poll_interval(2, 10, 0.01, 3), poll_interval(2, 10**6, 0.01, 0)
(16.08, 60.0)
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Sequence

from htc_notebook.errors import HTCError
from htc_notebook.ledger import Ledger
from htc_notebook.runtime.live_backends import LiveBackends
from htc_notebook.states import TERMINAL_NAMES

Adopt = Callable[[Sequence[tuple[int, int, int, str, str, int | None]]], None]  # Dispatcher.adopt_all

LEASE = "slurm-status-poll"
JOBS_PER_STEP = 2000  # the interval grows by `base` for every this many array tasks watched
MAX_INTERVAL = 60.0
SLOW_POLLS = 3  # squeue counts as slow once this many polls in a row were
# a holder silent this long (and 3 intervals) is taken over; two pollers for a moment are harmless
LEASE_MIN_SECONDS = 10.0


def poll_interval(base: float, watched: int, took: float, failures: int) -> float:
    """Seconds until the next poll: `base` (more with many array tasks), at least 10x what squeue
    took last time (a slow controller is left alone), doubled for each failure in a row; at most
    MAX_INTERVAL."""
    interval = max(base * (1 + watched / JOBS_PER_STEP), 10 * took) * 2 ** min(failures, 5)
    return round(min(interval, MAX_INTERVAL), 2)


class SlurmWatch:
    """The SLURM status poll of one Session, run by its reconcile loop (`tick` when `due`); polls
    only while this process holds the data root's lease."""

    def __init__(self, ledger: Ledger, owner: str, backends: LiveBackends, adopt: Adopt, base: float):
        self.ledger, self.owner, self.backends, self.adopt = ledger, owner, backends, adopt
        self.base = float(base)
        self.interval = self.base
        self.failures = 0
        self.took: deque[float] = deque(maxlen=SLOW_POLLS)  # seconds the last polls took
        self.polls = 0  # rounds this process polled SLURM (for tests)
        self.holder = False
        self.next = 0.0  # time.monotonic() of the next round

    def due(self, now: float) -> bool:
        return now >= self.next

    def tick(self) -> None:
        """One round, the next due an `interval` after its start (a failure counts toward the backoff)."""
        try:
            self._round()
        except HTCError:
            self.failures += 1
            raise
        finally:
            self.next = time.monotonic() + self.interval

    def _round(self) -> None:
        ledger = self.ledger
        self.holder = ledger.lease(LEASE, self.owner, ttl=max(LEASE_MIN_SECONDS, 3 * self.interval))
        runners = [b.arrays for b in self.backends.slurm()]
        if not self.holder:
            for runner in runners:
                ids = runner.tracked()
                if ids:
                    status = ledger.statuses(ids)
                    runner.forget([i for i in ids if status.get(i, "LOST") in TERMINAL_NAMES])
            return
        rows = ledger.scheduler_jobs()
        self.adopt(rows)
        took = 0.0
        try:
            for b in self.backends.slurm():
                took += b.arrays.poll()
            self.failures = 0
        except HTCError:
            self.failures += 1
        self.polls += 1
        self.took.append(took)
        tasks = len({native.split("/")[0] for _, _, _, native, _, _ in rows})  # what squeue lists: bundles once
        self.interval = poll_interval(self.base, tasks, min(self.took), self.failures)

    def close(self) -> None:
        """Give the lease up if this process holds it (another takes over at once)."""
        if self.holder:
            self.ledger.release(LEASE, self.owner)
