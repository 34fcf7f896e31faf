"""The base model of every spec, and the conversion of pydantic errors into SpecError.

Every spec is a frozen pydantic model that forbids unknown keys. Building one
(``Model(**kw)`` or ``Model.model_validate(d)``) never raises pydantic's
ValidationError: it raises :class:`~htc_notebook.errors.SpecError` (one problem)
or :class:`~htc_notebook.errors.SpecErrors` (several), naming the model, the
field (a dotted path for nested data), the value and what is allowed.

>>> from htc_notebook.spec import Resources
>>> Resources(cores=2.5)
Traceback (most recent call last):
...
htc_notebook.errors.SpecError: Resources.cores = 2.5 is not allowed: a whole number >= 1 (got float)
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from htc_notebook.errors import SpecError, SpecErrors

Loc = tuple[str | int, ...]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ too


def as_whole(value: object, lo: int = 1, hi: int | None = None, *, field: str = "", model: str = "") -> int:
    """Return `value` as an int in lo..hi, refusing bool, float and str.

    >>> as_whole(3)
    3
    >>> as_whole(True, field="cores")
    Traceback (most recent call last):
    ...
    htc_notebook.errors.SpecError: cores = True is not allowed: a whole number >= 1 (got bool)
    """
    allowed = f"a whole number >= {lo}" if hi is None else f"a whole number from {lo} to {hi}"
    if _is_bool(value) or isinstance(value, (float, str, bytes)) or not hasattr(value, "__index__"):
        raise SpecError(model, field, value, f"{allowed} (got {type(value).__name__})")
    number = value.__index__()  # also numpy integers
    if number < lo or (hi is not None and number > hi):
        raise SpecError(model, field, value, allowed)
    return number


def as_number(value: object, lo: float = 0.0, *, field: str = "", model: str = "") -> float:
    """Return `value` (int or float, finite) as a float >= lo, refusing bool and str."""
    allowed = f"a number >= {lo:g}"
    if _is_bool(value) or not isinstance(value, (int, float)):
        raise SpecError(model, field, value, f"{allowed} (got {type(value).__name__})")
    if not math.isfinite(value) or value < lo:
        raise SpecError(model, field, value, allowed)
    return float(value)


def whole(lo: int = 1, hi: int | None = None) -> BeforeValidator:
    """Annotated marker for a strict whole number in lo..hi (None passes through)."""
    return BeforeValidator(lambda v: v if v is None else as_whole(v, lo, hi))


def number(lo: float = 0.0) -> BeforeValidator:
    """Annotated marker for a strict finite number >= lo (None passes through)."""
    return BeforeValidator(lambda v: v if v is None else as_number(v, lo))


def with_where(err: SpecError, where: str | None) -> SpecError:
    """A copy of `err` (same class, same `loc`) carrying `where` ("file:line")."""
    if isinstance(err, SpecErrors):
        new: SpecError = SpecErrors([e if e.where else with_where(e, where) for e in err.errors])
    else:
        new = type(err)(err.model, err.field, err.value, err.allowed, where=where)
    new.loc = getattr(err, "loc", ())
    return new


class SpecModel(BaseModel):
    """Frozen, unknown keys forbidden; construction raises SpecError, never ValidationError."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error(exc, type(self)) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> typing.Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise spec_error(exc, cls) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> typing.Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise spec_error(exc, cls) from None

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Keys accepted in input: the wire name first, then the python name where they differ."""
        return ["/".join(_keys_of(name, f)) for name, f in cls.model_fields.items()]


def _keys_of(name: str, f: Any) -> list[str]:
    """Every key that fills field `name`: wire alias first, python name last."""
    keys = [f.serialization_alias or f.alias]
    va = f.validation_alias
    keys += list(va.choices) if hasattr(va, "choices") else [va]
    out = [k for k in dict.fromkeys(keys + [name]) if isinstance(k, str)]
    return out[:1] + [name] if out[0] != name else [name]


# --- pydantic error -> SpecError ------------------------------------------------------

def format_loc(loc: Sequence[str | int]) -> str:
    """('envs', 0, 'name') -> 'envs[0].name'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp: Any) -> tuple[type[BaseModel] | None, int]:
    """The model type inside an annotation and how many containers wrap it."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, 0
    origin = typing.get_origin(tp)
    container = isinstance(origin, type) and issubclass(origin, (Mapping, Sequence)) and origin is not str
    for arg in typing.get_args(tp):
        model, depth = _unwrap(arg)
        if model is not None:
            return model, depth + (1 if container else 0)
    return None, 0


def _field_named(model: type[BaseModel], key: object) -> Any:
    for name, f in model.model_fields.items():
        if key == name or key in _keys_of(name, f) or key in getattr(f.validation_alias, "choices", ()):
            return f
    return None


def _model_at(cls: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that holds the last element of `loc` (for listing valid keys)."""
    model: type[BaseModel] | None = cls
    skip = 0
    for part in loc:
        if skip:
            skip -= 1
            continue
        f = _field_named(model, part) if model else None
        if f is None:
            return None
        model, skip = _unwrap(f.annotation)
    return model


def _literal_choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


_TYPE_WORDS = {
    "string_type": "text (a string)",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping of keys to values", "mapping_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values", "model_attributes_type": "a mapping of keys to values",
    "float_type": "a number", "int_type": "a whole number", "bool_type": "true or false",
}


def _convert(err: Mapping[str, Any], cls: type[BaseModel]) -> list[SpecError]:
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, SpecError):  # raised by our validators or a nested SpecModel: keep its words
        found = inner.errors if isinstance(inner, SpecErrors) else [inner]
        return [_make(cls, loc + _loc_of(e), e.value, e.allowed) for e in found]
    if kind == "missing":
        value, allowed = MISSING, "a value is required"
    elif kind == "extra_forbidden":
        holder = _model_at(cls, loc[:-1])
        keys = ", ".join(holder.valid_keys()) if holder and issubclass(holder, SpecModel) else "?"
        allowed = f"unknown key; valid keys: {keys}"
    elif kind in ("too_short", "too_long"):
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        allowed = f"at {'least' if kind == 'too_short' else 'most'} {limit} item(s)"
    elif kind == "literal_error":
        allowed = f"one of {_literal_choices(ctx.get('expected', ''))}"
    elif kind in _TYPE_WORDS:
        allowed = f"{_TYPE_WORDS[kind]} (got {type(value).__name__})"
    else:
        allowed = str(inner) if inner is not None else err.get("msg", kind)
    return [_make(cls, loc, value, allowed)]


def _loc_of(err: SpecError) -> Loc:
    if hasattr(err, "loc"):
        return tuple(err.loc)
    return (err.field,) if err.field else ()


def _make(cls: type[BaseModel], loc: Loc, value: object, allowed: str) -> SpecError:
    # with no field path, the model itself is what is wrong: "Resources = [1] is not allowed"
    result = SpecError(cls.__name__, format_loc(loc), value, allowed) if loc else \
        SpecError("", cls.__name__, value, allowed)
    result.loc = loc
    return result


def spec_error(exc: ValidationError, cls: type[BaseModel]) -> SpecError:
    """Convert a pydantic ValidationError raised while building `cls`."""
    errors = [one for e in exc.errors(include_url=False) for one in _convert(e, cls)]
    return errors[0] if len(errors) == 1 else SpecErrors(errors)


def fail(loc: Sequence[str | int] | str, value: object, allowed: str, model: str = "") -> SpecError:
    """A SpecError for the field at `loc` (a path relative to the model being validated)."""
    loc = (loc,) if isinstance(loc, str) else tuple(loc)
    err = SpecError(model, format_loc(loc), value, allowed)
    err.loc = loc
    return err
