"""Jobs that take other jobs' results: a JobHandle among a call's arguments (also inside lists,
tuples and dicts) makes the new job depend on it. The call is stored with a `ParentResult` marker
in the handle's place; the job waits WAITING in the ledger (ledger/dependencies.py) until every
parent SUCCEEDED, and when it is released its markers are replaced by the parents' results
(`ParentValues.fill`, in the dispatcher), so the function gets values, never handles.

A SLURM command job whose unfinished parents are all SLURM array tasks of command jobs of its own
profile, none of which may be retried, is not held in the ledger: it is sent at once behind them,
`sbatch --dependency=afterok:<their array tasks>` (`afterok` decides; runtime/dispatch.py
`send_after` sends). The ledger still records it with its parents; it is SUBMITTED (RUNNABLE once
sbatch answered, with its native id), saying "waiting for jobs 12, 13 (SLURM afterok)".

A Python call whose unfinished parents are all Python calls this session runs now on the same
profile is not held in the ledger either: it is sent at once to the session's dask cluster behind
its parents' dask tasks (`follows` decides; backends/dask_chain.py), SUBMITTED, saying "waiting for
jobs 12, 13 (in this session's dask cluster)", so a chain of calls runs as dask chains futures.

>>> a = task.submit(simulate, 300.0)                      # doctest: +SKIP
>>> b = task.submit(analyse, [a, task.submit(simulate, 310.0)])  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

from htc_notebook.backends.worker import Upstream
from htc_notebook.ledger import Ledger
from htc_notebook.runtime.results import load_result
from htc_notebook.spec.sweep import job_ref


SENT_PARENT = frozenset({"SUBMITTED", "RUNNABLE", "STARTING", "RUNNING"})  # statuses of a parent SLURM has
ARRAY_TASK = re.compile(r"^[0-9]+_[0-9]+$")  # one array task of its own (not a bundle's `_3/5`, not `sbatch:<token>`)


@dataclass(frozen=True)
class ParentState:
    """What `afterok` needs to know of a parent (ledger `Dependencies.parent_states`)."""

    id: int
    status: str
    kind: str
    profile: str
    native_id: str | None
    retries: int  # the retries its RetryPolicy allows
    mpi: bool = False
    retry_due: bool = False


def afterok(kind: str, profile: str, slurm: bool, mpi: bool, parents: Sequence[ParentState]) -> tuple[str, ...] | None:
    """The SLURM array tasks a new job may be sent behind at once (`sbatch --dependency=afterok`),
    or None: it waits in the ledger (WAITING) until its parents all SUCCEEDED.

    Only a command job (not MPI) on a SLURM profile (`slurm`), and only if each of its parents
    either SUCCEEDED (no dependency needed) or is a command job (not MPI) of the same profile that
    SLURM has as an array task of its own, with no retry to spend (`retries` 0, none due): a retry
    would be a new SLURM job, which afterok would not follow. A parent held by the feeder, bundled,
    WAITING, failed, on another profile or backend, or a Python call keeps the job in the ledger.
    With every parent SUCCEEDED there is nothing to wait for: the ledger releases it at once.

    >>> p = ParentState(12, "RUNNING", "command", "cpu", "301_0", retries=0)
    >>> afterok("command", "cpu", True, False, [p, ParentState(13, "SUCCEEDED", "python", "gpu", None, 2)])
    ('301_0',)
    >>> afterok("command", "cpu", True, False, [ParentState(12, "RUNNING", "command", "cpu", "301_0", retries=1)])
    """
    if kind != "command" or not slurm or mpi or not parents:
        return None
    tasks: list[str] = []
    for p in parents:
        if p.status == "SUCCEEDED":
            continue
        if (p.status not in SENT_PARENT or p.kind != "command" or p.profile != profile or p.mpi or p.retries
                or p.retry_due or not p.native_id or not ARRAY_TASK.match(p.native_id)):
            return None
        tasks.append(p.native_id)
    return tuple(dict.fromkeys(tasks)) or None


def follows(profile: str, parents: Sequence[ParentState], here: str) -> tuple[int, ...] | None:
    """The parents a new Python call (not MPI) of `profile` may be sent behind in its session's dask
    cluster (none: every parent SUCCEEDED, it may run now), or None: it waits in the ledger. Each
    parent either SUCCEEDED (its value is read from the ledger) or is a Python call (not MPI) of the
    same profile that this session (`here`, its native id `local:<owner>`) runs now, with no retry
    due. A retry of a parent sends its children back to wait in the ledger
    (`Dispatcher.rewait_sent`), as for SLURM afterok.

    >>> p = ParentState(12, "RUNNING", "python", "local", "local:h:1", retries=2)
    >>> follows("local", [p, ParentState(9, "SUCCEEDED", "command", "cpu", None, 0)], "local:h:1")
    (12,)
    >>> follows("local", [p], "local:h:2"), follows("gpu", [p], "local:h:1")
    (None, None)
    >>> follows("gpu", [ParentState(9, "SUCCEEDED", "python", "cpu", None, 0)], "local:h:1")
    ()
    """
    waits: list[int] = []
    for p in parents:
        if p.status == "SUCCEEDED":
            continue
        if (p.status not in SENT_PARENT or p.kind != "python" or p.mpi or p.profile != profile or p.retry_due
                or p.native_id != here):
            return None
        waits.append(p.id)
    return tuple(dict.fromkeys(waits))


def in_session_reason(parents: Sequence[int]) -> str:
    """What a call sent behind its parents in its session's dask cluster waits for, in words.

    >>> in_session_reason([12, 13])
    "waiting for jobs 12, 13 (in this session's dask cluster)"
    """
    shown = ", ".join(str(p) for p in parents[:10]) + (f" and {len(parents) - 10} more" if len(parents) > 10 else "")
    return f"waiting for job{'s' if len(parents) != 1 else ''} {shown} (in this session's dask cluster)"


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

    def value(self, marker: ParentResult, pending: Collection[int] = ()) -> Any:
        """Parent `marker.job_id`'s result; for one of `pending` (not ended: the call goes behind it in
        its session's dask cluster) an `Upstream` marker, filled where the call runs."""
        if marker.job_id in pending:
            return Upstream(marker.job_id)
        if marker.job_id not in self._values:
            self._values[marker.job_id] = load_result(self._ledger, self._ledger.job(marker.job_id))
        return self._values[marker.job_id]

    def fill_params(self, params: Mapping[str, Any], pending: Collection[int] = ()) -> dict[str, Any]:
        """A sweep member's parameters with each job reference (`{"$job": id}`) replaced by that job's
        result (see `value` for `pending`)."""
        return {name: self.value(ParentResult(job), pending) if (job := job_ref(v)) is not None else v
                for name, v in params.items()}

    def fill(self, args: tuple, kwargs: Mapping[str, Any],
             pending: Collection[int] = ()) -> tuple[tuple, dict[str, Any]]:
        """The arguments with each parent's marker replaced by its result (see `value` for `pending`)."""
        def pick(v: Any) -> bool:
            return isinstance(v, ParentResult)

        def to(marker: ParentResult) -> Any:
            return self.value(marker, pending)

        return replace_in(tuple(args), pick, to), replace_in(dict(kwargs), pick, to)
