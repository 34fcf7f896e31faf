"""Jobs that take other jobs' results: a JobHandle among a call's arguments (also inside lists,
tuples and dicts) makes the new job depend on it. The call is stored with a `ParentResult` marker
in the handle's place; the job waits WAITING in the ledger (ledger/dependencies.py) until every
parent SUCCEEDED, and when it is released its markers are replaced by the parents' results
(`ParentValues.fill`, in the dispatcher), so the function gets values, never handles.

>>> a = task.submit(simulate, 300.0)                      # doctest: +SKIP
>>> b = task.submit(analyse, [a, task.submit(simulate, 310.0)])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from htc_notebook.ledger import Ledger
from htc_notebook.runtime.results import load_result
from htc_notebook.spec.sweep import job_ref


def refs_in(params: Mapping[str, Any]) -> tuple[int, ...]:
    """The jobs a sweep member's parameters refer to (their results are its arguments)."""
    return tuple(job for v in params.values() if (job := job_ref(v)) is not None)


@dataclass(frozen=True)
class ParentResult:
    """Where a call takes the result of job `job_id` (what a JobHandle among its arguments becomes)."""

    job_id: int


def replace_in(value: Any, pick: Callable[[Any], bool], to: Callable[[Any], Any]) -> Any:
    """`value` with every item `pick` chooses replaced by `to(item)`, looking inside lists, tuples
    (named ones too) and dicts' values; anything else is left as it is (not copied)."""
    if pick(value):
        return to(value)
    kind = type(value)
    if kind is list:
        return [replace_in(v, pick, to) for v in value]
    if kind is dict:
        return {k: replace_in(v, pick, to) for k, v in value.items()}
    if isinstance(value, tuple):
        items = [replace_in(v, pick, to) for v in value]
        return kind(*items) if hasattr(value, "_fields") else kind(items)
    return value


def parents_in(args: tuple, kwargs: Mapping[str, Any]) -> list[int]:
    """The jobs whose results these arguments take (their markers), each once, in order of appearance."""
    found: list[int] = []

    def note(marker: ParentResult) -> ParentResult:
        found.append(marker.job_id)
        return marker

    replace_in((args, dict(kwargs)), lambda v: isinstance(v, ParentResult), note)
    return list(dict.fromkeys(found))


class ParentValues:
    """Parents' results for the calls of one dispatch, each read from the ledger once (a parent
    often feeds several children released together)."""

    def __init__(self, ledger: Ledger):
        self._ledger = ledger
        self._values: dict[int, Any] = {}

    def value(self, marker: ParentResult) -> Any:
        if marker.job_id not in self._values:
            self._values[marker.job_id] = load_result(self._ledger, self._ledger.job(marker.job_id))
        return self._values[marker.job_id]

    def fill_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A sweep member's parameters with each job reference (`{"$job": id}`) replaced by that job's result."""
        return {name: self.value(ParentResult(job)) if (job := job_ref(v)) is not None else v
                for name, v in params.items()}

    def fill(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """The arguments with each parent's marker replaced by its result."""
        def pick(v: Any) -> bool:
            return isinstance(v, ParentResult)

        return replace_in(tuple(args), pick, self.value), replace_in(dict(kwargs), pick, self.value)
