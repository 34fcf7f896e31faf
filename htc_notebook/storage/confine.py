"""Resolve a user-supplied relative path under a base directory, or refuse it."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StorageAccessDenied


def confine(base: Path, rel: str | os.PathLike[str]) -> Path:
    """Return the real path of `rel` under `base`; raise StorageAccessDenied if it would leave `base`.

    Refuses: empty strings, NUL bytes, absolute paths, `..` that escapes, symlinks (file or
    directory, anywhere in the chain) whose target lies outside `base`, and sibling-prefix
    escapes (`/x/t1` vs `/x/t10`). Paths that stay inside after normalisation (`a/../b`) and
    not-yet-existing files are allowed. `base` itself (rel ".") is allowed.
    """
    if isinstance(rel, bytes):
        raise StorageAccessDenied(rel, "paths must be text, not bytes")
    try:
        text = os.fspath(rel)
    except TypeError:
        raise StorageAccessDenied(rel, "not a path") from None
    if not isinstance(text, str):
        raise StorageAccessDenied(rel, "paths must be text, not bytes")
    if text == "":
        raise StorageAccessDenied(rel, "empty path")
    if "\x00" in text:
        raise StorageAccessDenied(rel, "path contains a NUL byte")
    if os.path.isabs(text):
        raise StorageAccessDenied(rel, "absolute paths are not allowed; give a path relative to the storage directory")
    real_base = os.path.realpath(base)
    # realpath follows every existing symlink in the chain and keeps the missing tail as is.
    target = os.path.realpath(os.path.join(real_base, text))
    if os.path.commonpath([real_base, target]) != real_base:
        raise StorageAccessDenied(rel, f"resolves outside {real_base}")
    return Path(target)
