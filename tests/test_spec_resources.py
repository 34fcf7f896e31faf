import pytest

from htc_notebook.errors import SpecError, SpecErrors
from htc_notebook.spec import Resources

INT_FIELDS = {"cores": 1, "gpus": 0, "nodes": 1, "ranks": 1, "ranks_per_node": 1, "cpus_per_rank": 1}


def test_defaults():
    r = Resources()
    assert (r.cores, r.memory, r.gpus, r.nodes, r.ranks, r.walltime, r.is_mpi) == (1, None, 0, 1, None, None, False)


def test_units_are_parsed():
    r = Resources(memory="4G", walltime="1-00:00:00")
    assert (r.memory, r.walltime) == (4096, 86400)


@pytest.mark.parametrize("field, low", INT_FIELDS.items())
@pytest.mark.parametrize("bad, got", [(-4, None), (2.5, "float"), (2.0, "float"), (True, "bool"),
                                      ("4", "str"), ([1], "list")])
def test_bad_whole_numbers(field, low, bad, got):
    with pytest.raises(SpecError) as info:
        Resources(**{field: bad})
    err = info.value
    assert (err.model, err.field, err.value) == ("Resources", field, bad)
    assert f"a whole number >= {low}" in err.allowed
    if got:
        assert f"(got {got})" in err.allowed
    assert f"Resources.{field} = {bad!r} is not allowed" in str(err)


@pytest.mark.parametrize("field", ["cores", "nodes", "ranks", "ranks_per_node", "cpus_per_rank"])
def test_zero_refused_where_at_least_one(field):
    with pytest.raises(SpecError, match=rf"{field} = 0 is not allowed: a whole number >= 1"):
        Resources(**{field: 0})


def test_zero_gpus_fine():
    assert Resources(gpus=0).gpus == 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "lots"])
def test_bad_memory(bad):
    with pytest.raises(SpecError) as info:
        Resources(memory=bad)
    assert info.value.field == "memory" and info.value.value == bad and "'4G'" in info.value.allowed


@pytest.mark.parametrize("bad", ["abc", "-1", "25:61:00"])
def test_bad_walltime(bad):
    with pytest.raises(SpecError) as info:
        Resources(walltime=bad)
    assert info.value.field == "walltime" and "'HH:MM:SS'" in str(info.value)


def test_several_errors_at_once():
    with pytest.raises(SpecErrors) as info:
        Resources(cores=-1, gpus=-1, memory="x")
    assert [e.field for e in info.value.errors] == ["cores", "memory", "gpus"]
    assert str(info.value).count("is not allowed") == 3


def test_unknown_key_lists_valid_keys():
    with pytest.raises(SpecError) as info:
        Resources(corez=4)
    assert info.value.field == "corez"
    assert "unknown key; valid keys: cores, memory, gpus, nodes, ranks" in str(info.value)


def test_model_validate_converts_errors_too():
    with pytest.raises(SpecError, match=r"Resources.nodes = 0"):
        Resources.model_validate({"nodes": 0})
    with pytest.raises(SpecError, match=r"^Resources = \[1\] is not allowed: a mapping"):
        Resources.model_validate([1])


def test_infer_ranks_from_nodes_and_ranks_per_node():
    r = Resources(nodes=2, ranks_per_node=4, cpus_per_rank=2)
    assert (r.ranks, r.cores, r.is_mpi) == (8, 16, True)


def test_infer_ranks_per_node():
    assert Resources(ranks=8, nodes=2).ranks_per_node == 4
    r = Resources(ranks=5)
    assert (r.nodes, r.ranks_per_node, r.cores) == (1, 5, 5)


def test_ranks_that_do_not_split_show_arithmetic():
    with pytest.raises(SpecError) as info:
        Resources(ranks=5, nodes=2)
    assert info.value.field == "ranks"
    assert "ranks=5 does not split evenly over nodes=2 (5 / 2 = 2.5)" in str(info.value)


def test_inconsistent_ranks_show_arithmetic():
    with pytest.raises(SpecError, match=r"nodes x ranks_per_node = 2 x 2 = 4, but ranks = 5"):
        Resources(ranks=5, nodes=2, ranks_per_node=2)
    assert Resources(ranks=4, nodes=2, ranks_per_node=2).ranks == 4


def test_too_few_cores_for_ranks():
    with pytest.raises(SpecError) as info:
        Resources(ranks=4, cpus_per_rank=2, cores=4)
    assert info.value.field == "cores"
    assert "ranks x cpus_per_rank = 4 x 2 = 8 cores needed, but cores = 4" in str(info.value)
    assert Resources(ranks=4, cpus_per_rank=2, cores=10).cores == 10


def test_frozen_and_round_trips():
    r = Resources(ranks=8, nodes=2, memory="1G")
    with pytest.raises(ValueError, match="frozen"):
        r.cores = 3
    assert Resources(**r.model_dump()) == r
    assert hash(r) == hash(Resources(**r.model_dump()))
