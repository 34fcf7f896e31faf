"""When to ask for a pilot's replacement: a queue wait before its deadline.

A pilot takes calls until its deadline (its start plus its lifetime), then drains and leaves. Its
replacement must wait in SLURM's queue; asked for only then, the work would stall for that wait at
each pilot's end. `PilotLifetimes` follows one cluster's pilots as the client looks at them: when
each entered the cluster's plan (was asked for: counted from the look before the one that saw it)
and when its first worker arrived. The difference is the pilot's queue wait (start-up included,
and up to a look's interval more). A pilot's deadline is taken as its arrival plus its lifetime
(late by the worker's start-up, which MARGIN covers). A pilot is due for replacement once
`deadline - now <= expected wait + MARGIN`; the expected wait is the p95 of the last WAITS_KEPT
waits, at least FLOOR_WAIT, or DEFAULT_WAIT before any was measured.

A pilot that ended before its deadline (scancelled, its node lost, its `dask worker` exited) stays in
the cluster's plan, where nothing asks for another in its place: the calls requeued from it would wait
for ever. So a pilot none of whose workers has been seen for LOST_AFTER s, after one was, is lost
(`lost`), and replaced too. Bookkeeping with an injected clock: `pilots.replace_pilots_in_time` acts on it."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Collection

from htc_notebook.backends.worker import p95

DEFAULT_WAIT = 60.0  # s: the queue wait expected before one of this cluster's pilots was measured
FLOOR_WAIT = 10.0  # s: the least queue wait expected (an idle test cluster's 1 s is no promise)
MARGIN = 15.0  # s: asked this much earlier still (the deadline's estimate is late by the start-up)
WAITS_KEPT = 20  # the last queue waits the expected one is taken from
# s without a worker of a pilot whose workers arrived: it is lost. dask's own wait for a worker that left
# (`distributed.deploy.lost-worker-timeout`); a nanny restarting a killed worker takes ~1 s.
LOST_AFTER = 15.0


@dataclass
class _Pilot:
    asked: float | None  # the earliest it can have been asked for: the look before it was seen; None: unknown
    arrived: float | None = None  # when its first worker was seen
    replaced: bool = False  # due() or lost() returned it
    missing: float | None = None  # since when none of its workers is seen, after one was


class PilotLifetimes:
    """The pilots of one cluster, by job name, and the queue waits measured for them."""

    def __init__(self, lifetime: float, *, clock: Callable[[], float] = time.monotonic):
        """`lifetime`: seconds from a pilot's start to its deadline (`pilots.pilot_lifetime`)."""
        self.lifetime = lifetime
        self._clock = clock
        self._pilots: dict[str, _Pilot] = {}
        self._waits: deque[float] = deque(maxlen=WAITS_KEPT)
        self._looked: float | None = None  # when due() was called last

    @property
    def waits(self) -> tuple[float, ...]:
        """The queue waits measured (the last WAITS_KEPT), oldest first."""
        return tuple(self._waits)

    def expected_wait(self) -> float:
        """The queue wait a pilot asked for now is expected to have."""
        return max(FLOOR_WAIT, p95(self._waits)) if self._waits else DEFAULT_WAIT

    def due(self, planned: Collection[str], arrived: Collection[str]) -> dict[str, float]:
        """Note the pilots `planned` now (in the cluster's plan) and those of them with a worker
        `arrived`; return the ones to replace now, each with the seconds left to its deadline.
        A pilot is returned once; one with no worker yet never."""
        now = self._clock()
        for job in set(self._pilots) - set(planned):  # left the plan: replaced, scaled down or ended
            del self._pilots[job]
        for job in planned:
            pilot = self._pilots.setdefault(job, _Pilot(asked=self._looked))  # asked since the last look
            if job in arrived:
                pilot.missing = None
            elif pilot.arrived is not None and pilot.missing is None:
                pilot.missing = now
            if pilot.arrived is None and job in arrived:
                pilot.arrived = now
                if pilot.asked is not None:  # else already planned at the first look: its wait is unknown
                    self._waits.append(now - pilot.asked)
        self._looked = now
        ahead = self.expected_wait() + MARGIN
        due = {job: pilot.arrived + self.lifetime - now for job, pilot in self._pilots.items()
               if pilot.arrived is not None and not pilot.replaced and pilot.arrived + self.lifetime - now <= ahead}
        for job in due:
            self._pilots[job].replaced = True
        return due

    def lost(self, grace: float = LOST_AFTER) -> list[str]:
        """The pilots none of whose workers was seen for `grace` s at the last look (`due`), after one
        was: they ended before their deadline. A pilot is returned once, and not after `due` did."""
        now = self._looked
        if now is None:
            return []
        lost = [job for job, pilot in self._pilots.items()
                if not pilot.replaced and pilot.missing is not None and now - pilot.missing >= grace]
        for job in lost:
            self._pilots[job].replaced = True
        return lost
