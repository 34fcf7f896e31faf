"""How often a failed job is retried, and how long to wait in between.

>>> policy = RetryPolicy(retries=3, backoff=2.0, max_backoff=5.0)
>>> [policy.delay(a) for a in (1, 2, 3)]
[2.0, 4.0, 5.0]
"""

from __future__ import annotations

from typing import Annotated

from pydantic import model_validator

from htc_notebook.errors import SpecError

from ._model import SpecModel, number, whole


class RetryPolicy(SpecModel):
    """`retries` extra attempts after the first; waits grow exponentially up to `max_backoff` s."""

    retries: Annotated[int, whole(0)] = 0
    backoff: Annotated[float, number(0.0)] = 1.0
    max_backoff: Annotated[float, number(0.0)] = 60.0

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
