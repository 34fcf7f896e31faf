"""Command templates: one argv per sweep member, never through a shell.

A template is a string (split like a shell would, with `shlex`) or an argv
list; each argument may hold `{name}` fields filled from the member's
parameters. A value with spaces or `;` stays one argument.

>>> render_command("lmp -in in.melt -var T {T}", {"T": 300})
('lmp', '-in', 'in.melt', '-var', 'T', '300')
"""

from __future__ import annotations

import shlex
import string
from typing import Any, Mapping, Sequence

from htc_notebook.errors import SpecError

_FORMATTER = string.Formatter()


def template_argv(template: str | Sequence[str]) -> tuple[str, ...]:
    """Split a template into argv tokens and check its fields are plain names."""
    if isinstance(template, str):
        try:
            argv = tuple(shlex.split(template))
        except ValueError as exc:
            raise SpecError("command", "template", template, f"a shell-like command line ({exc})") from None
    else:
        argv = tuple(template)
        if not all(isinstance(a, str) for a in argv):
            raise SpecError("command", "template", template, "a string or a list of strings")
    if not argv:
        raise SpecError("command", "template", template, "a non-empty command")
    for token in argv:
        if "\0" in token:
            raise SpecError("command", "template", token, "arguments without NUL bytes")
        for field in template_fields(token):
            if not field.isidentifier():
                raise SpecError("command", "template field", "{" + field + "}",
                                "plain parameter names like {T}; no attributes, indexes or conversions")
    return argv


def template_fields(token: str) -> list[str]:
    """The `{field}` names in one argument (empty for a literal)."""
    try:
        return [f for _, f, _, _ in _FORMATTER.parse(token) if f is not None]
    except ValueError as exc:
        raise SpecError("command", "template", token,
                        f"balanced braces; use {{{{ and }}}} for literal braces ({exc})") from None


def render_command(template: str | Sequence[str], params: Mapping[str, Any]) -> tuple[str, ...]:
    """Fill a template with one member's parameters."""
    argv = template_argv(template)
    missing = sorted({f for token in argv for f in template_fields(token)} - set(params))
    if missing:
        raise SpecError("command", "template field", "{" + missing[0] + "}",
                        f"one of the sweep's parameters: {', '.join(sorted(params)) or '(none)'}")
    return tuple(token.format_map(params) for token in argv)


def plain_argv(value: object, model: str = "mpi_task", field: str = "command") -> tuple[str, ...]:
    """A program's argv from a list of strings, or from a command string split like a shell would."""
    argv: object = value
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise SpecError(model, field, value, f"a shell-like command line ({exc})") from None
    if (isinstance(argv, (list, tuple)) and argv and all(isinstance(a, str) and "\0" not in a for a in argv)):
        return tuple(argv)
    raise SpecError(model, field, value, "the program's argv: a non-empty list of strings (no NUL bytes), "
                    "or a command string")
