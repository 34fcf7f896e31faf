"""What dispatch is handed: jobs just added to the ledger, described from what was added (no
read-back), and a sweep's new jobs made from its members a slice at a time.

A million-member sweep is recorded and handed over without ever holding a million records:
`SweepJobs` makes each member's NewJob when the ledger encodes its chunk, `SweepRows` each one's
Pending when dispatch takes its slice, and both are let go once used.

>>> jobs = SweepJobs(Sweep.zip(x=[1, 2, 3]).members, range(3), lambda i, m, keyed: NewJob("f", "python",
...                  m.shared_params(), JobSpec(payload="d"), key=f"k{i}" if keyed else None, index=i))
>>> len(jobs), jobs[1].key, [r.params for r in jobs.pending(range(7, 10))[1:]], jobs.pending(range(7, 10))[2].id
(3, 'k1', [{'x': 2}, {'x': 3}], 9)
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar, overload

from htc_notebook.ledger import NewJob
from htc_notebook.spec import JobSpec, Sweep  # noqa: F401 (the doctest's)
from htc_notebook.spec.sweep import Member


class Pending:
    """A job just added to the ledger, described from what was added (no read-back): a ledger `Envelope` with its id."""

    __slots__ = ("id", "name", "kind", "params", "spec", "index", "profile", "priority", "after")

    def __init__(self, job_id: int, job: NewJob):
        self.id, self.name, self.kind, self.params, self.spec = job_id, job.name, job.kind, job.params, job.spec
        self.index, self.profile, self.priority, self.after = job.index, job.profile, job.priority, job.after


# member position, the member, keyed (False: its key is not needed, and not worked out) -> its job
MakeJob = Callable[[int, Member, bool], NewJob]
T = TypeVar("T")


class _FromMembers(Sequence[T]):
    """Item `k`, made from sweep member `positions[k]` when asked for (`_item`)."""

    def __init__(self, members: Sequence[Member], positions: Sequence[int], make: MakeJob):
        self._members, self._positions, self._make = members, positions, make

    def _item(self, k: int, position: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._item(k, p) for k, p in zip(range(len(self))[i], self._positions[i], strict=True)]
        return self._item(range(len(self))[i], self._positions[i])

    @property
    def distinct(self) -> list[T]:
        """One item standing for all: a sweep's jobs share their name, kind, profile, priority, image
        and cores (what limits, dimensions, first attempts and dispatch's preparation look at)."""
        return self[:1]


class SweepJobs(_FromMembers[NewJob]):
    """The new jobs of a sweep: member `positions[k]`'s NewJob made by `make` when asked for.
    `waiting`: some job may wait for others (then dispatch splits them, as it does a list)."""

    def __init__(self, members: Sequence[Member], positions: Sequence[int], make: MakeJob, waiting: bool = False):
        super().__init__(members, positions, make)
        self.waiting = waiting

    def _item(self, k: int, position: int) -> NewJob:
        return self._make(position, self._members[position], True)

    def pending(self, ids: Sequence[int]) -> SweepRows:
        """Their Pending records, job `k` with id `ids[k]`, made a slice at a time."""
        return SweepRows(ids, self._members, self._positions, self._make)


class SweepRows(_FromMembers[Pending]):
    """The Pending records of a sweep's new jobs (see SweepJobs), made when dispatch takes a slice."""

    def __init__(self, ids: Sequence[int], members: Sequence[Member], positions: Sequence[int], make: MakeJob):
        super().__init__(members, positions, make)
        self._ids = ids

    @property
    def ids(self) -> Sequence[int]:
        return self._ids

    def _item(self, k: int, position: int) -> Pending:
        return Pending(self._ids[k], self._make(position, self._members[position], False))


def distinct(rows: Sequence) -> Sequence:
    """The rows that stand for all of `rows`: one for a sweep's (`SweepJobs`, `SweepRows`), else every one."""
    return rows.distinct if isinstance(rows, _FromMembers) else rows
