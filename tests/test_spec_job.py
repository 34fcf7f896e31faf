import json

import pytest

from htc_notebook.errors import ConfigError, SpecError, SpecErrors
from htc_notebook.spec import EnvVar, JobBatch, JobDefinition, load_batches

WIRE = {
    "jobName": "blast-run",
    "batchSize": 3,
    "tags": ["t1", {"key": "study", "value": "lj"}],  # batch tags: strings or {key, value}
    "cloudProvider": "AWS",
    "htcJobDefinition": {
        "imageName": "",
        "maxVCpus": 2,
        "maxMemory": 4096,
        "maxDiskGiB": 10,
        "maxSwap": 0,
        "commands": ["python", "run.py", "--in", "a b; c"],
        "envs": [{"name": "MODE", "value": "fast"}],
        "execTimeoutSeconds": 600,
        "architecture": "AARCH64",
        "priority": "ON_DEMAND_ECONOMY",
        "tags": {"stage": "blast"},  # job tags: a mapping, as HTC API clients send them
        "claims": [{"name": "group", "value": "bio"}],
    },
}


def test_wire_round_trip():
    batch = JobBatch.model_validate(WIRE)
    d = batch.htc_job_definition
    assert (d.max_vcpus, d.max_memory, d.max_disk_gib, d.exec_timeout_seconds) == (2, 4096, 10, 600)
    assert d.envs == (EnvVar(name="MODE", value="fast"),) and d.commands[-1] == "a b; c"
    wire = batch.to_wire()
    assert wire["htcJobDefinition"] == {**WIRE["htcJobDefinition"]} and wire["jobName"] == "blast-run"
    assert json.loads(json.dumps(wire)) == wire
    assert JobBatch.model_validate(wire) == batch
    assert wire["tags"] == WIRE["tags"] and wire["cloudProvider"] == "AWS"


def test_job_tags_as_a_list_of_keys_and_an_unknown_cloud_is_refused():
    assert JobDefinition(commands=["x"], tags=["a", "b"]).to_wire()["tags"] == {"a": "", "b": ""}
    with pytest.raises(SpecError, match=r"cloudProvider = 'AZURE' is not allowed: one of AWS, GCP"):
        JobBatch.model_validate({**WIRE, "cloudProvider": "AZURE"})


def test_python_names_and_conveniences():
    d = JobDefinition(commands=["true"], max_vcpus=4, envs={"A": "1", "B": "2"})
    assert d.max_vcpus == 4 and [e.name for e in d.envs] == ["A", "B"]
    assert JobDefinition.model_validate({"commands": ["x"], "maxVcpus": 3}).max_vcpus == 3  # seed spelling
    assert JobDefinition(commands=["x"]).to_wire()["imageName"] == ""


def test_plain_string_command_refused():
    with pytest.raises(SpecError) as info:
        JobDefinition(commands="python run.py")
    assert info.value.field == "commands" and "argv" in info.value.allowed


def test_nul_in_command_refused():
    with pytest.raises(SpecError) as info:
        JobDefinition(commands=["echo", "a\0b"])
    assert info.value.field == "commands[1]" and "NUL" in info.value.allowed


def test_empty_commands_refused():
    with pytest.raises(SpecError, match=r"commands = \(\) is not allowed: at least 1 item|commands = \[\]"):
        JobDefinition(commands=[])


@pytest.mark.parametrize("key, bad, allowed", [
    ("maxVCpus", 0, "a whole number >= 1"), ("maxVCpus", 1.5, "(got float)"), ("maxVCpus", "2", "(got str)"),
    ("maxMemory", -1, ">= 1"), ("maxDiskGiB", True, "(got bool)"), ("maxSwap", -1, ">= 0"),
    ("execTimeoutSeconds", 0, ">= 1"), ("architecture", "ARM", "one of X86, AARCH64, A100"),
    ("priority", "HIGH", "one of ON_DEMAND_PRIORITY, ON_DEMAND_ECONOMY"),
])
def test_bad_definition_fields(key, bad, allowed):
    with pytest.raises(SpecError) as info:
        JobDefinition.model_validate({"commands": ["x"], key: bad})
    assert (info.value.field, info.value.value) == (key, bad) and allowed in info.value.allowed


def test_envs_duplicates_and_reserved():
    with pytest.raises(SpecError) as info:
        JobDefinition(commands=["x"], envs=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])
    assert info.value.field == "envs[1].name" and "duplicate" in str(info.value)
    with pytest.raises(SpecError, match="HTC_JOB_INDEX"):
        JobDefinition(commands=["x"], envs={"HTC_JOB_INDEX": "3"})
    with pytest.raises(SpecError) as info:
        JobDefinition(commands=["x"], envs=[{"name": "A;rm -rf /", "value": "1"}])
    assert info.value.field == "envs[0].name"


@pytest.mark.parametrize("bad", [0, -1, 100_001, 2.0, True])
def test_batch_size_limit(bad):
    with pytest.raises(SpecError) as info:
        JobBatch.model_validate({**WIRE, "batchSize": bad})
    assert info.value.field == "batchSize" and "100000" in str(info.value)


def test_nested_errors_have_dotted_paths_and_valid_keys():
    wire = {**WIRE, "htcJobDefinition": {**WIRE["htcJobDefinition"], "maxVCPUs": 2, "maxMemory": 0}}
    with pytest.raises(SpecErrors) as info:
        JobBatch.model_validate(wire)
    fields = {e.field: e for e in info.value.errors}
    assert set(fields) == {"htcJobDefinition.maxMemory", "htcJobDefinition.maxVCPUs"}
    assert "valid keys: imageName/image_name, maxVCpus/max_vcpus" in fields["htcJobDefinition.maxVCPUs"].allowed


def test_job_env():
    batch = JobBatch.model_validate(WIRE)
    assert batch.job_env(0) == {"MODE": "fast", "HTC_JOB_INDEX": "0"}
    assert batch.job_env(2)["HTC_JOB_INDEX"] == "2"
    with pytest.raises(SpecError, match=r"index = 3 is not allowed: a whole number from 0 to 2"):
        batch.job_env(3)


def test_load_batches_json_and_yaml(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(WIRE, indent=2))
    assert [b.job_name for b in load_batches(one)] == ["blast-run"]
    many = tmp_path / "many.yaml"
    many.write_text("- jobName: a\n  batchSize: 1\n  htcJobDefinition: {commands: [x]}\n"
                    "- jobName: b\n  batchSize: 2\n  htcJobDefinition: {commands: [y]}\n")
    assert [b.batch_size for b in load_batches(many)] == [1, 2]


def test_load_batches_errors_have_file_line(tmp_path):
    bad = tmp_path / "bad.json"
    wire = {**WIRE, "htcJobDefinition": {**WIRE["htcJobDefinition"], "maxVCpus": -2}}
    bad.write_text(json.dumps(wire, indent=2))
    expected = json.dumps(wire, indent=2).splitlines().index('    "maxVCpus": -2,') + 1
    with pytest.raises(SpecError) as info:
        load_batches(bad)
    assert info.value.where == f"{bad}:{expected}" and info.value.field == "htcJobDefinition.maxVCpus"

    many = tmp_path / "many.yml"
    many.write_text("- jobName: a\n  batchSize: 1\n  htcJobDefinition: {commands: [x]}\n"
                    "- jobName: b\n  batchSize: 1\n  colour: red\n  htcJobDefinition: {commands: [y]}\n")
    with pytest.raises(SpecError) as info:
        load_batches(many)
    assert info.value.where == f"{many}:6" and "valid keys: jobName/job_name" in str(info.value)


def test_load_batches_refuses_duplicates_tags_and_garbage(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text('{\n  "jobName": "a",\n  "jobName": "b"\n}\n')
    with pytest.raises(ConfigError) as info:
        load_batches(dup)
    assert info.value.line == 3 and "duplicate key 'jobName'" in str(info.value)

    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "jobName": "a",\n}\n')
    with pytest.raises(ConfigError) as info:
        load_batches(broken)
    assert info.value.line == 3 and "malformed JSON" in str(info.value)

    nan = tmp_path / "nan.json"
    nan.write_text('{"jobName": "a", "batchSize": NaN}')
    with pytest.raises(ConfigError, match="NaN"):
        load_batches(nan)

    tagged = tmp_path / "t.yaml"
    tagged.write_text("jobName: !!python/object/apply:os.system [id]\n")
    with pytest.raises(ConfigError, match=r"t.yaml:1: YAML tags"):
        load_batches(tagged)

    for text in ("[]", "5", "null"):
        empty = tmp_path / "e.json"
        empty.write_text(text)
        with pytest.raises(SpecError, match="one job batch object or a non-empty list"):
            load_batches(empty)

    with pytest.raises(ConfigError, match=r"\.json, \.yaml or \.yml"):
        load_batches(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="cannot read"):
        load_batches(tmp_path / "absent.json")
