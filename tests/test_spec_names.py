import pytest

from htc_notebook.errors import SpecError
from htc_notebook.spec import EnvVar, JobBatch, PartitionProfile, check_name

HOSTILE = ["a;b", "a\nb", "a'b", 'a"b', "$(reboot)", "`id`", "a b", "a/b", "../x", "a|b", "a&b", "", "-rf",
           "a\0b", "x" * 129]


@pytest.mark.parametrize("good", ["sweep", "sweep-01.v2", "A_b", "9lives", "x" * 128])
def test_check_name_accepts(good):
    assert check_name(good) == good


@pytest.mark.parametrize("bad", HOSTILE)
def test_check_name_refuses_shell_characters(bad):
    with pytest.raises(SpecError) as info:
        check_name(bad, field="job_name")
    assert info.value.field == "job_name" and info.value.value == bad
    assert "letters, digits" in info.value.allowed


def test_check_name_says_which_character():
    with pytest.raises(SpecError, match=r"found ';'"):
        check_name("a;b")
    with pytest.raises(SpecError, match=r"got 129 characters"):
        check_name("x" * 129)
    with pytest.raises(SpecError, match=r"got int"):
        check_name(5)


@pytest.mark.parametrize("bad", HOSTILE[:-1] + ["1ABC", "A-B", "A.B"])
def test_env_names_refused(bad):
    with pytest.raises(SpecError) as info:
        EnvVar(name=bad, value="x")
    assert info.value.field == "name" and info.value.model == "EnvVar"


def test_env_values_are_free_text_but_not_nul():
    assert EnvVar(name="X", value="a; b $(c) 'd'\n").value == "a; b $(c) 'd'\n"
    with pytest.raises(SpecError, match="NUL"):
        EnvVar(name="X", value="a\0b")


@pytest.mark.parametrize("field", ["partition", "account", "qos", "economy_qos"])
@pytest.mark.parametrize("bad", ["a;b", "a\nb", "a'b", "$(x)", "a b"])
def test_scheduler_names_refused(field, bad):
    with pytest.raises(SpecError) as info:
        PartitionProfile(name="cpu", cores_per_node=4, memory_per_node="4G", **{field: bad})
    assert info.value.field == field and info.value.value == bad


def test_constraints_allow_feature_expressions_only():
    p = PartitionProfile(name="cpu", cores_per_node=4, memory_per_node="4G",
                         constraints=["skylake|cascadelake", "[ib&gpu*2]", "!knl"])
    assert p.constraints == ("skylake|cascadelake", "[ib&gpu*2]", "!knl")
    with pytest.raises(SpecError) as info:
        PartitionProfile(name="cpu", cores_per_node=4, memory_per_node="4G", constraints=["ok", "a;b"])
    assert info.value.field == "constraints[1]" and "found ';'" in str(info.value)


def test_job_name_refused_in_batch():
    with pytest.raises(SpecError) as info:
        JobBatch(job_name="x$(rm)", batch_size=1, htc_job_definition={"commands": ["true"]})
    assert info.value.field == "job_name" and info.value.value == "x$(rm)"


def test_storage_keeps_the_specs_name_rule():
    """storage/layout.py repeats the rule (it must not import the spec: see there); they agree."""
    from htc_notebook.spec.names import _RULES
    from htc_notebook.storage.layout import NAME_PATTERN

    assert NAME_PATTERN == f"^{_RULES['name'][0].pattern}$"
