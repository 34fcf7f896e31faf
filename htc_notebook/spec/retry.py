"""How a failed job is retried: how often, after how long, and with what it asks for next.

Each attempt fails for a cause (the ledger's `Cause`). A program that failed (`exit`) is run again
as it was; one killed for `memory` asks for `memory_factor` times the memory, one killed at its
time limit (`timeout`) for `time_factor` times the time, each up to the most the profile allows.
These three use up `retries`. A node that failed, a preemption, a worker or scheduler job that
vanished, or the session that ran it exiting (`owner`) is not the job's fault: it is requeued as
it was, up to `requeues` times, without using up `retries`. A request that cannot grow any more is
not retried, and the decision says so.

>>> policy = RetryPolicy(retries=3, backoff=2.0, max_backoff=5.0)
>>> [policy.delay(a) for a in (1, 2, 3)]
[2.0, 4.0, 5.0]
>>> d = policy.decide("memory", Request(memory=1000, timeout=60), [], Limits(memory=4096))
>>> d.retry, d.request, d.why
(True, Request(memory=2000, timeout=60), 'retry 1 of 3, out of memory: memory 1000 -> 2000 MiB')
>>> policy.decide("memory", Request(memory=4096), ["memory"] * 2, Limits(memory=4096)).why
'out of memory at 4096 MiB, the most the profile allows: not retried'
>>> policy.decide("node", Request(), ["exit"] * 3, Limits()).retry   # retries used up, but not its fault
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Sequence

from pydantic import model_validator

from htc_notebook.errors import SpecError
from htc_notebook.states import REQUEUE_CAUSES, Cause

from ._model import SpecModel, number, whole

# how each cause (states.Cause, one home) is retried: not the job's fault, they use up `requeues`;
# the scheduler refused it: a person decides; the others use up `retries`
REQUEUED = REQUEUE_CAUSES
NEVER = frozenset({Cause.SUBMIT})


@dataclass(frozen=True)
class Request:
    """What an attempt asks for that a retry may change: memory (MiB) and time limit (s)."""

    memory: int | None = None
    timeout: int | None = None


@dataclass(frozen=True)
class Limits:
    """The most a job of this profile may ask for (None: no limit known)."""

    memory: int | None = None
    timeout: int | None = None


@dataclass(frozen=True)
class Decision:
    """Retry or not; if so, after `delay` s, with `request`. `why` is said either way."""

    retry: bool
    why: str
    delay: float = 0.0
    request: Request = Request()


class RetryPolicy(SpecModel):
    """`retries` extra attempts for the job's own failures (waits grow exponentially up to
    `max_backoff` s); `requeues` for faults of the machine; growth factors for memory and time."""

    retries: Annotated[int, whole(0)] = 0
    backoff: Annotated[float, number(0.0)] = 1.0
    max_backoff: Annotated[float, number(0.0)] = 60.0
    memory_factor: Annotated[float, number(1.0)] = 2.0
    time_factor: Annotated[float, number(1.0)] = 2.0
    requeues: Annotated[int, whole(0)] = 5

    @model_validator(mode="after")
    def _ordered(self) -> RetryPolicy:
        if self.max_backoff < self.backoff:
            raise SpecError("", "max_backoff", self.max_backoff, f"a number >= backoff ({self.backoff:g})")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1 = first retry): backoff x 2^(attempt-1)."""
        if attempt < 1:
            return 0.0
        return min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 1023))

    def decide(self, cause: str, request: Request, earlier: Sequence[str | None], limits: Limits) -> Decision:
        """What to do after an attempt failed for `cause`, asking for `request`; `earlier` are the
        causes of the job's attempts before it (None: not recorded, counted as the job's own)."""
        if cause in NEVER:
            return Decision(False, "not retried automatically: the scheduler refused it")
        if cause in REQUEUED:
            used = sum(1 for c in earlier if c in REQUEUED)
            if used >= self.requeues:
                return Decision(False, f"requeued {used} times already (requeues={self.requeues}): not again")
            return Decision(True, f"requeued ({used + 1} of {self.requeues}) after {_WORDS[cause]}", 0.0, request)
        used = sum(1 for c in earlier if c not in REQUEUED)
        if used >= self.retries:
            return Decision(False, f"no retries left ({self.retries} allowed)" if self.retries else "retries=0")
        if cause == "memory":
            grown = _grow(request.memory, self.memory_factor, limits.memory)
            if grown is None:
                return Decision(False, f"out of memory at {request.memory} MiB, the most the profile allows: "
                                       "not retried" if request.memory else
                                "out of memory with no memory request to raise: give memory (maxMemory)")
            why, request = f"out of memory: memory {request.memory} -> {grown} MiB", Request(grown, request.timeout)
        elif cause == "timeout":
            grown = _grow(request.timeout, self.time_factor, limits.timeout)
            if grown is None:
                return Decision(False, f"timeout at {request.timeout} s, the most the profile allows: not retried"
                                if request.timeout else "timeout with no time limit to raise")
            why, request = f"timeout: time limit {request.timeout} -> {grown} s", Request(request.memory, grown)
        else:
            why = "it failed"
        return Decision(True, f"retry {used + 1} of {self.retries}, {why}", self.delay(used + 1), request)


_WORDS = {"node": "its node failed", "preempted": "preemption", "lost": "it was lost",
          "owner": "the session that ran it exited"}


def _grow(value: int | None, factor: float, limit: int | None) -> int | None:
    """`value` x `factor`, at most `limit`; None when it cannot grow."""
    if not value or factor <= 1.0:
        return None
    grown = math.ceil(value * factor)
    if limit is not None:
        grown = min(grown, limit)
    return grown if grown > value else None
