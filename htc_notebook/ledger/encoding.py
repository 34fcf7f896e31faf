"""Values on their way into the ledger (checked, JSON-encoded) and job rows on their way out (decoded)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from ..errors import LedgerError
from ..spec import JobSpec
from ..states import JobStatus
from .rows import JobRow

_ENCODER = json.JSONEncoder(separators=(",", ":"))


def checked_ids(job_ids: Iterable[int]) -> list[int]:
    ids = list(job_ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise LedgerError(f"job ids are integers, not {i!r}")
    return ids


def checked_status(status: str) -> str:
    try:
        return JobStatus(status).value
    except ValueError:
        raise LedgerError(f"unknown job status {status!r}; known: {', '.join(s.value for s in JobStatus)}") from None


def check_text(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} must be a non-empty string, not {value!r}")


def to_json(what: str, value: object) -> str:
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as e:
        raise LedgerError(f"{what} cannot be stored as JSON: {e}") from e


def job_row(r: tuple[Any, ...]) -> JobRow:
    values = list(r)
    values[9], values[10] = json.loads(r[9]), _spec(r[10])  # params, spec
    return JobRow(*values)


# the jobs of a sweep or batch often share one spec: read each distinct one once
_spec = functools.lru_cache(maxsize=4096)(JobSpec.model_validate_json)
