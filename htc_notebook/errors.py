"""One exception tree for everything htc_notebook raises on purpose.

Every error a user can cause names what was wrong (the field, the value) and
what is allowed, so no user mistake ends in a bare traceback.

>>> try:
...     raise SpecError("Resources", "cores", -4, "a whole number >= 1")
... except HTCError as e:
...     print(e)
Resources.cores = -4 is not allowed: a whole number >= 1
"""

from __future__ import annotations

from typing import Any


class HTCError(Exception):
    """Base of every error htc_notebook raises on purpose."""


class SpecError(HTCError, ValueError):
    """Bad input to a spec: names the model, the field, the value and what is allowed."""

    loc: tuple[str | int, ...]  # the field's path in the model, where validation knows it (absent otherwise)

    def __init__(self, model: str, field: str, value: Any, allowed: str, *, where: str | None = None):
        self.model, self.field, self.value, self.allowed, self.where = model, field, value, allowed, where
        prefix = f"{where}: " if where else ""
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        name = f"{model}.{field}" if model else field
        super().__init__(f"{prefix}{name} = {shown} is not allowed: {allowed}")


class SpecErrors(SpecError):
    """Several spec errors found at once; `errors` lists each one."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        first = errors[0]
        HTCError.__init__(self, "\n".join(str(e) for e in errors))
        self.model, self.field, self.value, self.allowed, self.where = (
            first.model, first.field, first.value, first.allowed, first.where)


class ConfigError(HTCError, ValueError):
    """A site or batch file that cannot be read: malformed YAML, duplicate keys, tags.

    `file` and `line` say where; `line` is 1-based.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.file, self.line = file, line
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")


class UnknownProfile(HTCError, KeyError):
    """A profile or partition name that the site does not define."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]):
        self.name, self.known, self.suggestions = name, known, suggestions
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown profile {name!r}.{hint} Known profiles: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ResourceLimitError(SpecError):
    """A request that does not fit the profile's limits (cores, memory, GPUs, nodes, walltime)."""


class StorageAccessDenied(HTCError, PermissionError):
    """A path outside the storage a job or task may touch."""

    def __init__(self, path: object, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"access to {path!r} denied: {reason}")


class UntrustedFile(HTCError, PermissionError):
    """A file a job could have touched is not a plain file of its own (a link, a FIFO, a directory,
    a device, a hard link): refused, never followed (storage/untrusted.py)."""

    def __init__(self, path: object, found: str):
        self.path, self.found = str(path), found
        super().__init__(f"refused {path}: {found} (a job's file is never followed)")


class LedgerError(HTCError):
    """The ledger database cannot be opened or written."""


class KeyTaken(LedgerError):
    """A job key already used in the task (another process may have just added it); nothing was added."""


class Limited(LedgerError):
    """Jobs were to start at insert (`add_jobs(..., start=)`) but their project has a vCPU limit:
    nothing was added (start them through `start_attempts`' admission instead)."""


class BackendError(HTCError):
    """A backend could not submit, query or cancel work (the scheduler's message is kept)."""


class UnsupportedFeature(HTCError):
    """Something the toolkit does not support yet, e.g. container images."""


class JobFailed(HTCError):
    """A job ended FAILED, CANCELLED or LOST. Carries everything needed to act on it."""

    def __init__(self, job_id: int, status: str, reason: str | None, *, attempt: int | None = None,
                 host: str | None = None, native_id: str | None = None,
                 log_path: str | None = None, hint: str | None = None):
        self.job_id, self.status, self.reason = job_id, status, reason
        self.attempt, self.host, self.native_id, self.log_path, self.hint = (
            attempt, host, native_id, log_path, hint)
        parts = [f"job {job_id} {status}: {reason or 'no reason recorded'}"]
        details = [f"{k}={v}" for k, v in
                   (("attempt", attempt), ("host", host), ("native id", native_id), ("log", log_path))
                   if v is not None]
        if details:
            parts.append("(" + ", ".join(details) + ")")
        if hint:
            parts.append(f"Next: {hint}")
        super().__init__(" ".join(parts))


class HTCWarning(UserWarning):
    """Warnings about input that was accepted but probably not meant (empty sweep, duplicates)."""


class DevClusterError(BackendError):
    """The local multi-node SLURM test cluster (`htc slurm up`) could not be built, checked or removed."""
