"""HTC job definitions and job batches, in python names and in their camelCase wire shape.

>>> batch = JobBatch(job_name="blast", batch_size=3,
...                  htc_job_definition={"commands": ["python", "run.py"], "maxVCpus": 2})
>>> batch.htc_job_definition.max_vcpus, batch.to_wire()["htcJobDefinition"]["maxVCpus"]
(2, 2)
>>> batch.job_env(1)
{'HTC_JOB_INDEX': '1'}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, PlainSerializer, field_validator

from htc_notebook.errors import ConfigError, SpecError

from ._model import SpecModel, as_whole, fail, whole
from .names import EnvName, Name, SafeText, parse_image
from .yaml_loader import LineMap, load_yaml, locate

BATCH_LIMIT = 100_000
INDEX_VAR = "HTC_JOB_INDEX"
PRIORITIES = ("ON_DEMAND_PRIORITY", "ON_DEMAND_ECONOMY")  # HTC priorities; economy runs after the others
Priority = Literal["ON_DEMAND_PRIORITY", "ON_DEMAND_ECONOMY"]


def _alias(wire: str, *more: str) -> dict[str, Any]:
    return {"validation_alias": AliasChoices(wire, *more), "serialization_alias": wire}


def _argv(value: object) -> object:
    if isinstance(value, str):
        raise SpecError("", "", value, 'a list of arguments (argv), e.g. ["python", "run.py"], not one '
                        "string: nothing is split by a shell")
    return value


def _envs(value: object) -> object:
    if isinstance(value, Mapping):  # python convenience: {"NAME": "value"}
        return [{"name": k, "value": v} for k, v in value.items()]
    return value


def _job_tags(value: object) -> object:
    """Job tags: a mapping {"key": "value"} (HTC API clients send them so), or a list of keys."""
    if isinstance(value, Mapping):
        return tuple(value.items())
    if isinstance(value, (list, tuple)):
        return tuple((t, "") if isinstance(t, str) else t for t in value)
    return value


JobTags = Annotated[tuple[tuple[SafeText, SafeText], ...], BeforeValidator(_job_tags),
                    PlainSerializer(dict, return_type=dict)]


def _batch_size(value: object) -> int:
    try:
        return as_whole(value, 1, BATCH_LIMIT)
    except SpecError as exc:
        raise SpecError("", "", value, f"{exc.allowed} (the HTC limit is {BATCH_LIMIT} jobs per batch; "
                        "split larger work into several batches)") from None


class EnvVar(SpecModel):
    """One environment variable for a job."""

    name: EnvName
    value: SafeText


def _image(value: object) -> object:
    if value == "" or value is None:
        return ""
    parse_image(value, field="")
    return value


class BatchTag(SpecModel):
    """A batch tag as the HTC API sends it, `{"key": ..., "value": ...}` (a plain string is a tag too)."""

    key: SafeText
    value: SafeText = ""


class JobDefinition(SpecModel):
    """What every job of a batch runs, with what limits (HTC ``htcJobDefinition``)."""

    # "" runs on the host; else repo:tag or repo@sha256:... of the project's registry (spec/names.py)
    image_name: Annotated[str, BeforeValidator(_image)] = Field("", **_alias("imageName", "image_name"))
    max_vcpus: Annotated[int, whole(1)] = Field(1, **_alias("maxVCpus", "maxVcpus", "max_vcpus"))
    max_memory: Annotated[int | None, whole(1)] = Field(None, **_alias("maxMemory", "max_memory"))
    max_disk_gib: Annotated[int | None, whole(1)] = Field(None, **_alias("maxDiskGiB", "max_disk_gib"))
    max_swap: Annotated[int | None, whole(0)] = Field(None, **_alias("maxSwap", "max_swap"))
    commands: Annotated[tuple[SafeText, ...], BeforeValidator(_argv)] = Field(min_length=1)
    envs: Annotated[tuple[EnvVar, ...], BeforeValidator(_envs)] = ()
    exec_timeout_seconds: Annotated[int | None, whole(1)] = Field(
        None, **_alias("execTimeoutSeconds", "exec_timeout_seconds"))
    architecture: Literal["X86", "AARCH64", "A100"] = "X86"
    priority: Priority = "ON_DEMAND_PRIORITY"
    tags: JobTags = ()  # kept with the batch's record; the backends do not use them
    claims: tuple[Any, ...] = ()  # accepted and kept (HTC API); the local and SLURM backends do not use them

    @field_validator("envs")
    @classmethod
    def _unique_envs(cls, envs: tuple[EnvVar, ...]) -> tuple[EnvVar, ...]:
        seen: set[str] = set()
        for i, env in enumerate(envs):
            if env.name == INDEX_VAR:
                raise fail((i, "name"), env.name, f"a name other than {INDEX_VAR} (set per job)")
            if env.name in seen:
                raise fail((i, "name"), env.name, "a name not already used in envs (duplicate)")
            seen.add(env.name)
        return envs

    def to_wire(self) -> dict[str, Any]:
        """The camelCase, JSON-ready form."""
        return self.model_dump(mode="json", by_alias=True)


class JobBatch(SpecModel):
    """`batch_size` jobs sharing one job definition (HTC job batch)."""

    job_name: Name = Field(**_alias("jobName", "job_name"))
    batch_size: Annotated[int, BeforeValidator(_batch_size)] = Field(**_alias("batchSize", "batch_size"))
    tags: tuple[SafeText | BatchTag, ...] = ()
    region: str | None = None
    # HTC API clients name the cloud of their region; kept with the batch's record (this toolkit
    # runs where its profiles say: a local machine or a SLURM site)
    cloud_provider: Literal["AWS", "GCP"] | None = Field(None, **_alias("cloudProvider", "cloud_provider"))
    htc_job_definition: JobDefinition = Field(**_alias("htcJobDefinition", "htc_job_definition"))

    def to_wire(self) -> dict[str, Any]:
        """The camelCase, JSON-ready form."""
        return self.model_dump(mode="json", by_alias=True)

    def job_env(self, index: int) -> dict[str, str]:
        """Environment of job `index` (0-based): the definition's envs plus HTC_JOB_INDEX."""
        index = as_whole(index, 0, self.batch_size - 1, field="index", model="JobBatch")
        env = {e.name: e.value for e in self.htc_job_definition.envs}
        env[INDEX_VAR] = str(index)
        return env


class ProjectLimit(SpecModel):
    """A project's vCPU limit (HTC ``limits``): at most `vcpus` vCPUs of its jobs in use at once,
    across every kernel and server of the data root; jobs beyond it wait HELD in the ledger.

    >>> ProjectLimit.model_validate({"modifierRole": "PROJECT_ADMIN", "vCPUs": 8}).to_wire()
    {'modifierRole': 'PROJECT_ADMIN', 'vCPUs': 8}
    """

    modifier_role: Literal["PROJECT_ADMIN", "WORKSPACE_ADMIN"] = Field(
        "PROJECT_ADMIN", **_alias("modifierRole", "modifier_role"))
    vcpus: Annotated[int, whole(1)] = Field(**_alias("vCPUs", "vcpus"))

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class RetentionPolicy(SpecModel):
    """A project's task retention policy (HTC ``task-retention-policy``), in hours; 0 turns a rule off.

    >>> RetentionPolicy.model_validate({"archiveAfter": 720, "deleteAfter": 0}).to_wire()
    {'archiveAfter': 720, 'deleteAfter': 0}
    """

    archive_after: Annotated[int, whole(0)] = Field(0, **_alias("archiveAfter", "archive_after"))
    delete_after: Annotated[int, whole(0)] = Field(0, **_alias("deleteAfter", "delete_after"))

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _no_hyperthreading(value: object) -> object:
    if value not in (False, None):
        raise SpecError("", "", value, "false: the site's profiles say nothing of hyperthreading (SLURM "
                        "schedules cores), so a dimension cannot ask for it")
    return False


class Dimension(SpecModel):
    """One compute environment a project may use (HTC ``dimensions``): a region, which is a profile
    of the site, with that profile's machine architecture and a priority.

    >>> Dimension.model_validate({"region": "cpu"}).to_wire()
    {'region': 'cpu', 'machineArchitecture': 'X86', 'priority': 'ON_DEMAND_PRIORITY', 'hyperthreading': False}
    """

    region: Name
    machine_architecture: Literal["X86", "AARCH64"] = Field(
        "X86", **_alias("machineArchitecture", "machine_architecture"))
    priority: Priority = "ON_DEMAND_PRIORITY"
    hyperthreading: Annotated[bool, BeforeValidator(_no_hyperthreading)] = False

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def load_batches(path: str | Path) -> list[JobBatch]:
    """Job batches from a .json/.yaml/.yml file holding one batch object or a list of them."""
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError("job batch files must end in .json, .yaml or .yml", file=file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job batch file: {exc}", file=file) from None
    data, lines = _load_json(text, file) if suffix == ".json" else load_yaml(text, file)
    prefixes: list[tuple[int, ...]]  # where each batch is in the file
    if isinstance(data, Mapping):
        items, prefixes = [data], [()]
    elif isinstance(data, list) and data:
        items, prefixes = data, [(i,) for i in range(len(data))]
    else:
        raise SpecError("", "jobBatch", data, "one job batch object or a non-empty list of them",
                        where=lines.where(()))
    batches = []
    for item, prefix in zip(items, prefixes, strict=True):
        try:
            batches.append(JobBatch.model_validate(item))
        except SpecError as exc:
            raise locate(exc, lines, prefix) from None
    return batches


def _no_constant(name: str) -> Any:
    raise ConfigError(f"malformed JSON: {name} is not a JSON number")


def _load_json(text: str, file: str) -> tuple[object, LineMap]:
    """Strict JSON (duplicate keys and NaN refused); line numbers borrowed from the YAML parser."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        lines: LineMap | None = load_yaml(text, file)[1]  # JSON is YAML: it knows the lines
    except ConfigError as exc:
        lines, yaml_error = None, exc
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON: {exc.msg} (column {exc.colno})", file=file,
                          line=exc.lineno) from None
    except ConfigError as exc:
        if lines is None and "duplicate" in str(yaml_error):
            raise yaml_error from None  # same problem, with its line
        raise ConfigError(str(exc), file=file) from None
    return data, lines or LineMap()
