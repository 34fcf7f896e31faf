"""Safe YAML loading that remembers where every key came from.

Built on ``yaml.SafeLoader``, and stricter: duplicate keys and explicit tags (``!!python/...``,
``!foo``, even ``!!str``) are refused. Every problem is a ConfigError naming ``file:line``.

>>> data, lines = load_yaml("profiles:\\n  cpu:\\n    cores_per_node: 8\\n", file="site.yaml")
>>> data["profiles"]["cpu"]["cores_per_node"], lines.where(("profiles", "cpu", "cores_per_node"))
(8, 'site.yaml:3')
>>> load_yaml("a: 1\\na: 2\\n", file="x.yaml")
Traceback (most recent call last):
...
htc_notebook.errors.ConfigError: x.yaml:2: duplicate key 'a' (first at line 1)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

from htc_notebook.errors import ConfigError, SpecError

from ._model import with_where

MAX_NODES = 1_000_000  # aliases can make a small file expand enormously ("billion laughs")
_MERGE = "tag:yaml.org,2002:merge"


class LineMap:
    """Key path -> (file, 1-based line). Lookups fall back to the nearest parent path."""

    def __init__(self, entries: Mapping[tuple[str, ...], tuple[str, int]] | None = None):
        self._entries = dict(entries or {})

    @staticmethod
    def _key(path: Sequence[object]) -> tuple[str, ...]:
        return tuple(str(p) for p in path)

    def _find(self, path: Sequence[object]) -> tuple[str, int] | None:
        key = self._key(path)
        for n in range(len(key), -1, -1):
            if key[:n] in self._entries:
                return self._entries[key[:n]]
        return None

    def line(self, path: Sequence[object]) -> int | None:
        """1-based line of `path` (or of its nearest parent that has one)."""
        found = self._find(path)
        return found[1] if found else None

    def where(self, path: Sequence[object]) -> str | None:
        """"file:line" of `path` (or of its nearest parent), None if unknown."""
        found = self._find(path)
        return f"{found[0]}:{found[1]}" if found else None

    def exact(self, path: Sequence[object]) -> str | None:
        """"file:line" of `path` itself (no parent's), None if no file sets it."""
        found = self._entries.get(self._key(path))
        return f"{found[0]}:{found[1]}" if found else None

    def merged(self, later: LineMap) -> LineMap:
        """A new map where the entries of `later` win (for layered config files)."""
        return LineMap({**self._entries, **later._entries})

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        """Where a value was written is not part of the value: two sites with the same profiles are
        equal whatever files they came from (SiteConfig keeps its LineMap for messages only)."""
        return isinstance(other, LineMap)

    __hash__ = None  # type: ignore[assignment]  # unhashable, as it defines __eq__ (typeshed: a method)

    def __repr__(self) -> str:
        return f"LineMap({len(self._entries)} entries)"


def locate(err: SpecError, lines: LineMap, prefix: Sequence[object] = ()) -> SpecError:
    """`err` with `where="file:line"` of its field path (under `prefix`) in the loaded data."""
    if err.where:
        return err
    if hasattr(err, "errors"):  # SpecErrors: locate each one
        from htc_notebook.errors import SpecErrors
        return SpecErrors([locate(e, lines, prefix) for e in err.errors])
    loc = tuple(err.loc) if hasattr(err, "loc") else ((err.field,) if err.field else ())
    return with_where(err, lines.where(tuple(prefix) + loc))


@contextmanager
def located(lines: LineMap, prefix: Sequence[object] = ()) -> Iterator[None]:
    """Re-raise any SpecError from the block with `where="file:line"` filled in."""
    try:
        yield
    except SpecError as exc:
        raise locate(exc, lines, prefix) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses explicit tags and duplicate keys."""

    file = "<string>"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag is not None:
            tag = tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise ConfigError(f"YAML tags are not allowed (found {tag!r}); write plain values",
                              file=self.file, line=event.start_mark.line + 1)
        return super().compose_node(parent, index)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # merge keys may repeat; complex keys are refused when constructed
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (first at line {seen[key]})", file=self.file, line=line)
            seen[key] = line
        return node


def _walk(node: Any, path: tuple[str, ...], out: dict[tuple[str, ...], tuple[str, int]], file: str,
          budget: list[int], *, merged: bool = False) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"document too large (more than {MAX_NODES} nodes after expanding aliases)", file=file)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:  # "<<: *base" merges keys into this mapping
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    _walk(src, path, out, file, budget, merged=True)
                continue
            child = path + (str(key_node.value),)
            if merged:
                out.setdefault(child, (file, key_node.start_mark.line + 1))
            else:
                out[child] = (file, key_node.start_mark.line + 1)
            _walk(value_node, child, out, file, budget, merged=merged)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = path + (str(i),)
            out.setdefault(child, (file, item.start_mark.line + 1))
            _walk(item, child, out, file, budget, merged=merged)


def load_yaml(text: str, file: str = "<string>") -> tuple[object, LineMap]:
    """Parse `text` safely; return the data and a LineMap of its keys."""
    loader = _StrictLoader(text)
    loader.file = file
    try:
        node = loader.get_single_node()
        if node is None:
            return None, LineMap()
        entries: dict[tuple[str, ...], tuple[str, int]] = {(): (file, node.start_mark.line + 1)}
        _walk(node, (), entries, file, [MAX_NODES])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ConfigError(f"malformed YAML: {problem}{context}", file=file,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return data, LineMap(entries)
