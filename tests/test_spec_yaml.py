import pytest

from htc_notebook.errors import ConfigError, SpecError
from htc_notebook.spec import Resources, load_yaml, locate, located

DOC = """\
profiles:
  cpu:
    cores_per_node: 8
    setup:
      - module load gcc
      - source venv/bin/activate
"""


def test_data_and_lines():
    data, lines = load_yaml(DOC, file="site.yaml")
    assert data["profiles"]["cpu"]["setup"][1] == "source venv/bin/activate"
    assert lines.line(("profiles",)) == 1
    assert lines.line(("profiles", "cpu", "cores_per_node")) == 3
    assert lines.line(("profiles", "cpu", "setup", 1)) == 6
    assert lines.where(("profiles", "cpu", "nope", "deeper")) == "site.yaml:2"  # nearest parent


def test_empty_document():
    assert load_yaml("")[0] is None


@pytest.mark.parametrize("text, line", [
    ("a: 1\nb: 2\na: 3\n", 3),
    ("top:\n  x: 1\n  x: 2\n", 3),
    ("a: {b: 1, b: 2}\n", 1),
    ("1: a\ntrue: b\n1.0: c\n", 2),
])
def test_duplicate_keys(text, line):
    with pytest.raises(ConfigError) as info:
        load_yaml(text, file="d.yaml")
    assert info.value.file == "d.yaml" and info.value.line == line
    assert "duplicate key" in str(info.value) and str(info.value).startswith(f"d.yaml:{line}: ")


@pytest.mark.parametrize("text, tag", [
    ("a: !!python/object/apply:os.system ['echo pwned']\n", "!!python/object/apply:os.system"),
    ("a: !!python/name:os.system\n", "!!python/name:os.system"),
    ("a: 1\nb: !!str 5\n", "!!str"),
    ("a: 1\nb: !foo bar\n", "!foo"),
    ("a: !!map {x: 1}\n", "!!map"),
    ("- !!binary aGVsbG8=\n", "!!binary"),
])
def test_any_tag_refused(text, tag):
    with pytest.raises(ConfigError) as info:
        load_yaml(text, file="t.yaml")
    assert info.value.line == text.count("\n", 0, text.index("!")) + 1
    assert "tags are not allowed" in str(info.value) and tag in str(info.value)


@pytest.mark.parametrize("text, line", [("a: [1, 2\n", 2), ("a: 1\n b: 2\n", 2), ("a:\n\tb: 1\n", 2),
                                        ("a: 'open\n", 2), ("key: value: other\n", 1)])
def test_malformed(text, line):
    with pytest.raises(ConfigError) as info:
        load_yaml(text, file="m.yaml")
    assert info.value.line == line and "malformed YAML" in str(info.value)
    assert str(info.value).startswith(f"m.yaml:{line}: ")


def test_merge_keys_are_plain_yaml_and_allowed():
    data, lines = load_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")
    assert data["c"] == {"x": 3, "y": 2}
    assert lines.line(("c", "x")) == 4 and lines.line(("c", "y")) == 1


def test_alias_bomb_refused():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    with pytest.raises(ConfigError, match="too large"):
        load_yaml("\n".join(lines) + "\n")


def test_spec_errors_get_file_and_line():
    data, lines = load_yaml("job:\n  cores: 4\n  gpus: -1\n", file="job.yaml")
    with pytest.raises(SpecError) as info:
        with located(lines, prefix=("job",)):
            Resources.model_validate(data["job"])
    err = info.value
    assert err.where == "job.yaml:3" and str(err).startswith("job.yaml:3: Resources.gpus = -1")
    again = locate(err, lines)
    assert again is err  # already located
