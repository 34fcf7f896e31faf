"""Parameter sweeps: an immutable, de-duplicated list of members with stable keys.

A member's key is the first 16 hex characters of the sha256 of its parameters as
canonical JSON, so it is the same in every process, whatever PYTHONHASHSEED or dict order.

>>> s = Sweep.grid(x=[1, 2], mode=["a", "b"])
>>> len(s), s.params()[1]
(4, {'x': 1, 'mode': 'b'})
>>> Sweep.member_key({"x": 1, "mode": "b"}) == Sweep.member_key({"mode": "b", "x": 1})
True

A sweep of a Python function may range over jobs (anything with an integer `__htc_job_id__`, such
as a JobHandle): such a value is the job reference `{"$job": id}`, and each member waits for its
job and is called with that job's result in its place (`Task.sweep`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

from htc_notebook.errors import HTCWarning, SpecError

from ._model import as_whole

LIMIT = 100_000
Scalar = Union[int, float, str, bool, None]


JOB_REF = "$job"  # a parameter that is a job's result: {"$job": id}


def job_ref(value: Any) -> int | None:
    """The job id of a job reference (`{"$job": id}`), else None."""
    if type(value) is dict and len(value) == 1 and type(value.get(JOB_REF)) is int:
        return value[JOB_REF]
    return None


def _scalar(name: str, value: Any) -> Scalar | dict[str, int]:
    job = getattr(value, "__htc_job_id__", None)
    if type(job) is int:
        return {JOB_REF: job}
    if job_ref(value) is not None:
        return dict(value)
    if type(value) not in (int, float, str, bool, type(None)) and hasattr(value, "item"):
        value = value.item()  # numpy / pandas scalars (np.float64 subclasses float: convert it too)
    if value is None or isinstance(value, (int, str, bool)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise SpecError("Sweep", name, value, "a finite number (NaN and infinity have no JSON form)")
    raise SpecError("Sweep", name, value,
                    f"a JSON scalar: int, float, str, bool or None (got {type(value).__name__})")


def _clean(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise SpecError("Sweep", "member", params, f"a mapping of parameter names to values "
                        f"(got {type(params).__name__})")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError("Sweep", "parameter name", name, "a python identifier (letters, digits, _)")
        out[name] = _scalar(name, value)
    return out


@dataclass(frozen=True, eq=True)
class Member:
    """One point of a sweep: its parameters (read-only) and its stable key."""

    params: Mapping[str, Scalar]
    key: str
    _own: dict[str, Scalar] = field(default_factory=dict, repr=False, compare=False)  # what `params` shows

    def shared_params(self) -> dict[str, Scalar]:
        """The parameters themselves, not a copy: the toolkit's records of the member's job share
        them (a dict a job less: ~0.2 GB over a million members). Never changed by anyone.

        >>> m = Sweep.zip(x=[1])[0]; m.shared_params() is m.shared_params(), m.shared_params() == m.params
        (True, True)
        >>> Member({"x": 2}, "k").shared_params()  # made by hand: a copy
        {'x': 2}
        """
        return self._own if self._own or not self.params else dict(self.params)

    def __hash__(self) -> int:
        return hash(self.key)


class Sweep:
    """An immutable sequence of Members; build one with grid, zip, from_list, from_dataframe or random."""

    __slots__ = ("_members",)
    _members: tuple[Member, ...]

    def __init__(self, members: Iterable[Member] = ()):
        object.__setattr__(self, "_members", tuple(members))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Sweep is immutable")

    @property
    def members(self) -> tuple[Member, ...]:
        return self._members

    @staticmethod
    def member_key(params: Mapping[str, Any]) -> str:
        """16 hex characters of sha256 over canonical JSON of `params`."""
        text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members)

    def __getitem__(self, index: int) -> Member:
        return self._members[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sweep) and self._members == other._members

    def __hash__(self) -> int:
        return hash(tuple(m.key for m in self._members))

    def __repr__(self) -> str:
        return f"Sweep({len(self)} members)"

    def params(self) -> list[dict[str, Scalar]]:
        """Each member's parameters as a new dict."""
        return [dict(m.params) for m in self._members]

    def keys(self) -> list[str]:
        """Each member's key."""
        return [m.key for m in self._members]

    # --- constructors -----------------------------------------------------------------

    @classmethod
    def from_list(cls, rows: Iterable[Mapping[str, Any]], *, limit: int = LIMIT) -> Sweep:
        """One member per mapping, in order."""
        if isinstance(rows, (str, bytes, Mapping)):
            raise SpecError("Sweep", "rows", rows, "a list of mappings, one per member")
        limit = as_whole(limit, 1, field="limit", model="Sweep")
        return cls._build(itertools.islice(rows, limit + 1), limit)

    @classmethod
    def grid(cls, *, limit: int = LIMIT, **axes: Iterable[Any]) -> Sweep:
        """Cartesian product of the axes; the last axis varies fastest."""
        limit = as_whole(limit, 1, field="limit", model="Sweep")
        values = {name: _axis(name, v) for name, v in axes.items()}
        size = math.prod(len(v) for v in values.values()) if values else 0
        _check_limit(size, limit)
        names = list(values)
        combos = itertools.product(*values.values()) if values else ()
        return cls._build((dict(zip(names, combo, strict=True)) for combo in combos), limit)

    @classmethod
    def zip(cls, *, limit: int = LIMIT, **axes: Iterable[Any]) -> Sweep:
        """Member i takes element i of every axis; all axes must have the same length."""
        limit = as_whole(limit, 1, field="limit", model="Sweep")
        values = {name: _axis(name, v) for name, v in axes.items()}
        lengths = {name: len(v) for name, v in values.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n}={k}" for n, k in lengths.items())
            raise SpecError("Sweep", "zip", lengths, f"axes of equal length (got lengths {shown})")
        _check_limit(next(iter(lengths.values()), 0), limit)
        names = list(values)
        return cls._build((dict(zip(names, combo, strict=True)) for combo in zip(*values.values(), strict=True)), limit)

    @classmethod
    def from_dataframe(cls, df: Any, *, limit: int = LIMIT) -> Sweep:
        """One member per row of a DataFrame (anything with ``to_dict("records")``)."""
        if not hasattr(df, "to_dict"):
            raise SpecError("Sweep", "df", type(df).__name__, "a DataFrame (an object with to_dict('records'))")
        limit = as_whole(limit, 1, field="limit", model="Sweep")
        _check_limit(len(df), limit)
        return cls._build(df.to_dict("records"), limit)

    @classmethod
    def random(cls, n: int, *, seed: int, limit: int = LIMIT, **dists: Any) -> Sweep:
        """`n` members drawn with ``random.Random(seed)``, so the same seed gives the same sweep.

        Each distribution is: a list -> one of its elements; a 2-tuple of ints (lo, hi) -> an
        int in lo..hi inclusive; a 2-tuple with a float -> a float uniform in [lo, hi].
        Duplicate draws are dropped (with a warning), so a sweep may have fewer than `n` members.

        >>> Sweep.random(3, seed=1, lr=(0.001, 0.1), depth=(1, 8), act=["relu", "tanh"]).keys() \\
        ...     == Sweep.random(3, seed=1, lr=(0.001, 0.1), depth=(1, 8), act=["relu", "tanh"]).keys()
        True
        """
        n = as_whole(n, 0, field="n", model="Sweep")
        limit = as_whole(limit, 1, field="limit", model="Sweep")
        _check_limit(n, limit)
        draws = {name: _dist(name, d) for name, d in dists.items()}
        rng = random.Random(seed)
        return cls._build(({name: draw(rng) for name, draw in draws.items()} for _ in range(n)), limit)

    @classmethod
    def _build(cls, rows: Iterable[Any], limit: int) -> Sweep:
        members: dict[str, Member] = {}
        dropped = count = 0
        for row in rows:
            count += 1
            _check_limit(count, limit)
            params = _clean(row)
            key = cls.member_key(params)
            if key in members:
                dropped += 1
            else:
                members[key] = Member(MappingProxyType(params), key, params)
        if not members:
            warnings.warn("empty sweep: it has no members, so nothing will run", HTCWarning, stacklevel=3)
        if dropped:
            warnings.warn(f"sweep had {dropped} duplicate member(s); dropped them, keeping the first "
                          f"of each ({len(members)} members left)", HTCWarning, stacklevel=3)
        return cls(members.values())


def _check_limit(size: int, limit: int) -> None:
    if size > limit:
        raise SpecError("Sweep", "size", size, f"at most limit={limit} members; pass limit={size} "
                        "(or larger) to allow a sweep this big")


def _axis(name: str, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise SpecError("Sweep", name, values, "a list of values for this axis")
    return list(values)


def _dist(name: str, dist: Any) -> Any:
    if isinstance(dist, list) and dist:
        return lambda rng: rng.choice(dist)
    if isinstance(dist, tuple) and len(dist) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in dist) and dist[0] <= dist[1]:
        lo, hi = dist
        if isinstance(lo, int) and isinstance(hi, int):
            return lambda rng: rng.randint(lo, hi)
        return lambda rng: rng.uniform(lo, hi)
    raise SpecError("Sweep", name, dist, "a non-empty list of choices, or a (low, high) tuple of numbers "
                    "with low <= high: ints -> randint, any float -> uniform")
