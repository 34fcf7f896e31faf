"""A request body as the API reads it: JSON, at most `max_depth` levels deep, every integer a
signed 64-bit one (what the ledger stores), no NaN or Infinity. Anything else is refused with a
BadBody naming where, before any operation sees it.

A body that is not JSON is 415 (Unsupported Media Type) unless it says it is JSON
(`Content-Type: application/json`, or none): then it is malformed JSON, 400. A body that is JSON
is read whatever its Content-Type says (`curl -d`, tornado's and browsers' fetch label it as a
form or text by default); browsers' cross-site form posts carry no bearer token, and Jupyter's
cookie requests need its XSRF token.

>>> parse(b'{"projectName": "md"}', "application/json; charset=utf-8")
{'projectName': 'md'}
>>> parse(b'[{"htcJobDefinition": {"maxDiskGiB": 18446744073709551616}}]', "application/json")
Traceback (most recent call last):
...
htc_notebook.server.body.BadBody: [0].htcJobDefinition.maxDiskGiB = 18446744073709551616 is not allowed:
a whole number from -2**63 to 2**63 - 1
>>> parse(b"projectName=md", "application/x-www-form-urlencoded")
Traceback (most recent call last):
...
htc_notebook.server.body.BadBody: the body is not JSON (Content-Type 'application/x-www-form-urlencoded'):
send JSON, with Content-Type: application/json
"""

from __future__ import annotations

import json
from typing import Any

from htc_notebook.errors import HTCError

INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1


class BadBody(HTCError):
    """A body the API does not read: `status` 415 (not JSON by its Content-Type), 413 (too large)
    or 400 (malformed, too deep, a number out of range)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def is_json_type(content_type: str | None) -> bool:
    """Is this Content-Type JSON (`application/json`, `application/*+json`)? An absent one is taken as JSON."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse(raw: bytes, content_type: str | None, max_depth: int = 32) -> Any:
    """The JSON value of a non-empty body, checked (module docstring); BadBody if refused."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadBody(400, f"the body nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints of over 4300 digits
        if not is_json_type(content_type):
            raise BadBody(415, f"the body is not JSON (Content-Type {content_type!r}): send JSON, with "
                               "Content-Type: application/json") from None
        raise BadBody(400, f"the body is not valid JSON: {exc}") from None
    check(value, max_depth)
    return value


def check(value: Any, max_depth: int = 32) -> None:
    """Refuse (BadBody 400, naming the field) nesting deeper than `max_depth` and integers outside
    signed 64 bits. Iterative: any depth is walked without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise BadBody(400, f"the body nests deeper than {max_depth} levels (at {path or 'the top'})")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                stack.append((child, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]", depth + 1))
        elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            raise BadBody(400, f"{path.lstrip('.') or 'the body'} = {item} is not allowed: "
                               "a whole number from -2**63 to 2**63 - 1")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
