"""Python calls sent behind their parents in one session's dask cluster, so a chain of calls runs
as dask chains futures, with no round trip through the ledger between a parent's end and its
child's start.

The runtime sends a call here at once (its parents still running) when every parent that has not
ended is a plain Python call this session runs now on the same profile (runtime/dependencies.py
`follows`); the ledger records it SUBMITTED, "waiting for jobs 12, 13 (in this session's dask
cluster)". Here it waits (`Chains.behind`) until each parent is a dask task, then goes to dask as
`worker.run_after` over the parents' futures: dask starts it where and when they end, with their
reports, and it runs with their values (loaded in its sandbox), or fails (cause `dependency`)
naming a parent that did not succeed. A parent whose dask task ended already is found among the
reports this client collected last (`recent`); one not here yet (the ledger says this session runs
it, and another thread is handing it over) is waited for; one still found nowhere after
UNFOUND_SECONDS fails the call as lost (it is requeued, and waits in the ledger for its parents,
runtime/reconcile.py).

A parent that is lost (its worker died) or cancelled takes its children's dask tasks with it;
those children are not reported (`orphans`): the ledger decides for them as it does for SLURM
afterok (`Dispatcher.rewait_sent` when the parent runs again, `fail_sent` when it failed for
good), and the runtime then cancels them here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from htc_notebook.backends.worker import JobRunner

RECENT_REPORTS = 1024  # the last reports collected, kept for children sent after their parent ended
RECENT_VALUE_BYTES = 1 << 20  # a larger value is not kept (its child is requeued, and released by the ledger)
RECENT_BYTES = 64 << 20  # and the values kept, all together, at most this: the oldest go first
UNFOUND_SECONDS = 10.0  # how long a call waits here for a parent found nowhere (being handed over) before it is lost


@dataclass(eq=False)
class Behind:
    """A call waiting here until each of its parents is a dask task (or a collected report)."""

    job: tuple[int, int, tuple, dict, tuple[str, str]]  # (job id, index, args, kwargs, logs): `run_jobs`'s
    attempt: int
    runner: JobRunner
    parents: tuple[int, ...]
    unfound_since: float | None = None  # time.monotonic() when a parent was first found nowhere


class Chains:
    """What DaskJobs keeps for calls sent behind their parents (used with DaskJobs' lock held)."""

    def __init__(self) -> None:
        self.behind: list[Behind] = []
        self.recent: OrderedDict[int, dict[str, Any]] = OrderedDict()  # job id -> its report, collected
        self._recent_bytes = 0  # the values' sizes in `recent`
        self.follows: dict[str, list[Any]] = {}  # a child's dask key -> its parents' futures
        self.orphans: dict[int, int] = {}  # job id -> attempt: its parent's task was lost; the ledger decides
        self.collecting: set[int] = set()  # jobs whose dask task ended, their reports being gathered

    def collected(self, job_id: int, report: Any) -> None:
        """Keep a parent's report for a child that comes after its end (not a large value)."""
        size = len(report.get("value") or b"") if isinstance(report, dict) else RECENT_VALUE_BYTES + 1
        if size > RECENT_VALUE_BYTES:
            return
        old = self.recent.pop(job_id, None)
        self._recent_bytes += size - (len(old.get("value") or b"") if old else 0)
        self.recent[job_id] = report
        while len(self.recent) > RECENT_REPORTS or self._recent_bytes > RECENT_BYTES:
            _, gone = self.recent.popitem(last=False)
            self._recent_bytes -= len(gone.get("value") or b"")

    def inputs(self, behind: Behind, in_flight: Mapping[int, tuple[Any, int]],
               waiting: Mapping[int, int], now: float) -> dict[int, tuple[Any, int]] | None | Literal[False]:
        """Each parent's (future or report, place in it) for `run_after`; None while a parent is still
        to become a dask task (or found nowhere for less than UNFOUND_SECONDS); False if one has been
        found nowhere for that long (its report is gone)."""
        found: dict[int, tuple[Any, int]] = {}
        for parent in behind.parents:
            if parent in in_flight:
                found[parent] = in_flight[parent]
            elif parent in self.recent:
                found[parent] = (self.recent[parent], 0)
            elif parent in waiting or parent in self.collecting:
                return None
            elif behind.unfound_since is None:
                behind.unfound_since = now
                return None
            else:
                return None if now - behind.unfound_since < UNFOUND_SECONDS else False
        return found

    def orphaned(self, key: str) -> bool:
        """Did the dask task `key` (ended without a result) end because a parent's task did?"""
        return any(getattr(f, "status", "finished") != "finished" for f in self.follows.get(key, ()))
