"""The site: every partition profile a user can run on, layered from YAML files.

Layers, later wins, per profile field by field: the built-in ``local`` profile <
``~/.config/htc_notebook/site.yaml`` < ``$HTC_SITE_CONFIG`` < an explicit path.

>>> site = SiteConfig.from_yaml('''
... profiles:
...   cpu: {cores_per_node: 32, memory_per_node: 128G}
... ''', file="site.yaml")
>>> site.names()[-1], site.profile("cpu").cores_per_node
('cpu', 32)
>>> site.profile("cpx")
Traceback (most recent call last):
...
htc_notebook.errors.UnknownProfile: unknown profile 'cpx'. Did you mean 'cpu'? Known profiles: local, cpu
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import PrivateAttr, field_serializer, field_validator, model_validator

from htc_notebook.errors import ConfigError, SpecError, UnknownProfile

from ._model import SpecModel, fail, whole
from .job import PRIORITIES, Dimension
from .profile import PartitionProfile
from .units import MIB
from .yaml_loader import LineMap, load_yaml, located

ENV_VAR = "HTC_SITE_CONFIG"
USER_FILE = Path(".config", "htc_notebook", "site.yaml")
BATCH_LIMIT = 100_000


def _suggest(name: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]


def _physical_memory_mib() -> int:
    try:
        return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or unknown name
        return 1024


class SiteConfig(SpecModel):
    """All profiles of a site (an immutable mapping name -> PartitionProfile)."""

    profiles: Mapping[str, PartitionProfile]
    default_profile: str = "local"
    max_batch_size: Annotated[int, whole(1, BATCH_LIMIT)] = BATCH_LIMIT
    # SLURM: one process per data root polls every `poll_seconds`, longer with many jobs tracked
    # (runtime/watch.py); a job gone from the queue without its exit-code file waits
    # `exit_file_grace` seconds for it (a shared file system may show it late) before SLURM's
    # own record decides, or the job is called LOST
    poll_seconds: Annotated[int, whole(1, 3600)] = 2
    exit_file_grace: Annotated[int, whole(0, 3600)] = 30
    _lines: LineMap = PrivateAttr(default_factory=LineMap)  # where each key was set (the layered files)

    def source(self, *path: str) -> str | None:
        """"file:line" where the key at `path` was set, e.g. `site.source("profiles", "cpu", "sandbox")`;
        None if no site file sets it (a built-in value or a default)."""
        return self._lines.exact(path)

    @field_validator("profiles", mode="before")
    @classmethod
    def _name_from_key(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # in YAML the key is the name: fill it in
            return {k: {"name": k, **v} if isinstance(v, Mapping) and "name" not in v else v
                    for k, v in value.items()}
        return value

    @field_validator("profiles", mode="after")
    @classmethod
    def _freeze(cls, value: Mapping[str, PartitionProfile]) -> Mapping[str, PartitionProfile]:
        for key, profile in value.items():
            if profile.name != key:
                raise fail((key, "name"), profile.name, f"the profile's key, {key!r}")
        return MappingProxyType(dict(value))

    @field_serializer("profiles", mode="wrap")
    def _dump_profiles(self, value: Mapping[str, PartitionProfile], handler: Any) -> Any:
        return handler(dict(value))

    @model_validator(mode="after")
    def _default_exists(self) -> SiteConfig:
        if self.default_profile not in self.profiles:
            known = list(self.profiles)
            hint = _suggest(self.default_profile, known)
            raise fail("default_profile", self.default_profile,
                       f"one of the profiles: {', '.join(known) or '(none)'}"
                       + (f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""))
        return self

    def profile(self, name: str | None = None) -> PartitionProfile:
        """The profile called `name` (the default profile if None); UnknownProfile if none."""
        name = self.default_profile if name is None else name
        try:
            return self.profiles[name]
        except (KeyError, TypeError):
            known = self.names()
            raise UnknownProfile(str(name), known, _suggest(str(name), known)) from None

    def names(self) -> list[str]:
        """Profile names, in definition order."""
        return list(self.profiles)

    def dimensions(self) -> list[Dimension]:
        """Every compute environment the site offers (HTC workspace ``dimensions``): each profile as a
        region, with its architecture, at either priority."""
        return [Dimension(region=p.name, machine_architecture=p.architecture, priority=priority)
                for p in self.profiles.values() for priority in PRIORITIES]

    @classmethod
    def builtin(cls) -> SiteConfig:
        """One ``local`` profile describing this machine."""
        local = PartitionProfile(name="local", backend="local", cores_per_node=os.cpu_count() or 1,
                                 memory_per_node=_physical_memory_mib(), max_nodes=1, launcher="mpirun")
        return cls(profiles={"local": local}, default_profile="local")

    @classmethod
    def from_yaml(cls, text: str, file: str = "<string>", *, builtin: bool = True) -> SiteConfig:
        """A site from YAML text, layered over the built-in ``local`` profile unless builtin=False."""
        return cls._layered([(text, file)], builtin=builtin)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> SiteConfig:
        """The site: builtin < ~/.config/htc_notebook/site.yaml < $HTC_SITE_CONFIG < `path`."""
        files = []
        user = Path(os.path.expanduser("~")) / USER_FILE
        if user.is_file():
            files.append(user)
        if os.environ.get(ENV_VAR):
            env = Path(os.environ[ENV_VAR])
            if not env.is_file():
                raise ConfigError(f"${ENV_VAR} names a file that does not exist", file=str(env))
            files.append(env)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError("site config file does not exist", file=str(path))
            files.append(Path(path))
        return cls._layered([(_read(f), str(f)) for f in files], builtin=True)

    @classmethod
    def _layered(cls, sources: list[tuple[str, str]], *, builtin: bool) -> SiteConfig:
        merged: dict[str, Any] = {"profiles": {}}
        if builtin:
            merged = cls.builtin().model_dump(exclude_defaults=True)
            merged["profiles"] = {k: dict(v) for k, v in merged["profiles"].items()}
        lines = LineMap()
        for text, file in sources:
            data, file_lines = load_yaml(text, file)
            _merge(merged, data, file_lines)
            lines = lines.merged(file_lines)
        with located(lines):
            site = cls.model_validate(merged)
        site._lines = lines
        return site


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read site config: {exc}", file=str(path)) from None


def _merge(merged: dict[str, Any], data: object, lines: LineMap) -> None:
    """Fold one file's data into `merged`: top-level keys replace, profiles merge field by field."""
    if data is None:
        return
    shape = "a mapping with keys default_profile, max_batch_size, profiles"
    if not isinstance(data, dict):
        raise SpecError("SiteConfig", "", data, shape, where=lines.where(()))
    for key, value in data.items():
        if key != "profiles":
            merged[key] = value
            continue
        if not isinstance(value, dict):
            raise SpecError("SiteConfig", "profiles", value, "a mapping of profile name -> profile fields",
                            where=lines.where(("profiles",)))
        for name, body in value.items():
            body = {} if body is None else body
            if not isinstance(body, dict):
                raise SpecError("SiteConfig", f"profiles.{name}", body, "a mapping of profile fields",
                                where=lines.where(("profiles", name)))
            merged["profiles"].setdefault(name, {}).update(body)
