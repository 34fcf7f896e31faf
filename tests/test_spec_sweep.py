import hashlib
import os
import subprocess
import sys
import warnings

import pytest

from htc_notebook.errors import HTCWarning, SpecError
from htc_notebook.spec import Member, Sweep


def test_grid_order_last_axis_fastest():
    s = Sweep.grid(x=[1, 2], mode=["a", "b", "c"])
    assert len(s) == 6
    assert s.params()[:4] == [{"x": 1, "mode": "a"}, {"x": 1, "mode": "b"}, {"x": 1, "mode": "c"},
                              {"x": 2, "mode": "a"}]
    assert all(isinstance(m, Member) for m in s) and len(set(s.keys())) == 6


def test_zip():
    s = Sweep.zip(a=[1, 2, 3], b=("x", "y", "z"))
    assert s.params() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]
    with pytest.raises(SpecError, match=r"equal length \(got lengths a=3, b=2\)"):
        Sweep.zip(a=[1, 2, 3], b=[1, 2])


def test_from_list_and_keys():
    s = Sweep.from_list([{"a": 1, "b": None}, {"a": 2.5, "b": True}])
    assert s[0].key == Sweep.member_key({"b": None, "a": 1})
    assert len(s[0].key) == 16 and int(s[0].key, 16) >= 0
    assert Sweep.member_key({"a": 1}) != Sweep.member_key({"a": True}) != Sweep.member_key({"a": "1"})


def test_member_key_is_stable_across_processes():
    code = ("from htc_notebook.spec import Sweep; "
            "print(Sweep.member_key({'zeta': 1.5, 'alpha': 'x', 'mid': None, 'flag': True}), "
            "Sweep.member_key({'flag': True, 'mid': None, 'alpha': 'x', 'zeta': 1.5}))")
    outs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        a, b = out.stdout.split()
        assert a == b
        outs.add(a)
    assert outs == {Sweep.member_key({"alpha": "x", "flag": True, "mid": None, "zeta": 1.5})}
    canonical = '{"alpha":"x","flag":true,"mid":null,"zeta":1.5}'
    assert outs == {hashlib.sha256(canonical.encode()).hexdigest()[:16]}


def test_immutable():
    s = Sweep.grid(x=[1])
    with pytest.raises(AttributeError):
        s.members = ()
    with pytest.raises(TypeError):
        s[0].params["x"] = 2
    assert isinstance(s.members, tuple)


def test_empty_sweep_warns():
    with pytest.warns(HTCWarning, match="empty sweep"):
        assert len(Sweep.grid(x=[])) == 0
    with pytest.warns(HTCWarning, match="empty sweep"):
        assert len(Sweep.from_list([])) == 0


def test_duplicates_dropped_with_warning():
    with pytest.warns(HTCWarning, match=r"2 duplicate member\(s\).*2 members left"):
        s = Sweep.from_list([{"a": 1}, {"a": 2}, {"a": 1}, {"a": 1}])
    assert s.params() == [{"a": 1}, {"a": 2}]


def test_no_warning_for_clean_sweep():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sweep.grid(a=[1, 2])


def test_huge_sweeps_need_explicit_limit():
    with pytest.raises(SpecError) as info:
        Sweep.grid(a=range(1000), b=range(1000))
    assert "limit=100000" in str(info.value) and "pass limit=1000000" in str(info.value)
    assert len(Sweep.grid(a=range(10), b=range(10), limit=100)) == 100
    with pytest.raises(SpecError, match="limit=5"):
        Sweep.from_list(({"i": i} for i in range(10**9)), limit=5)  # stops early, never materialised
    with pytest.raises(SpecError, match="limit=3"):
        Sweep.zip(a=[1, 2, 3, 4], limit=3)
    with pytest.raises(SpecError, match="limit=3"):
        Sweep.random(4, seed=0, a=[1, 2], limit=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [1], {"x": 1}, object()])
def test_values_must_be_json_scalars(bad):
    with pytest.raises(SpecError) as info:
        Sweep.from_list([{"a": bad}])
    assert info.value.field == "a"


@pytest.mark.parametrize("name", ["1a", "a-b", "a b", "", "x;y"])
def test_names_must_be_identifiers(name):
    with pytest.raises(SpecError, match="python identifier"):
        Sweep.from_list([{name: 1}])


def test_axes_must_be_lists():
    with pytest.raises(SpecError, match="a list of values"):
        Sweep.grid(a="abc")
    with pytest.raises(SpecError, match="a list of values"):
        Sweep.grid(a=5)


class FakeScalar:
    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v


class FakeFrame:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def to_dict(self, orient):
        assert orient == "records"
        return self.rows


def test_from_dataframe_duck_typed():
    s = Sweep.from_dataframe(FakeFrame([{"a": FakeScalar(1), "b": FakeScalar("x")}, {"a": 2, "b": "y"}]))
    assert s.params() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert type(s.params()[0]["a"]) is int
    with pytest.raises(SpecError, match="limit=1"):
        Sweep.from_dataframe(FakeFrame([{"a": 1}, {"a": 2}]), limit=1)
    with pytest.raises(SpecError, match="DataFrame"):
        Sweep.from_dataframe([{"a": 1}])


def test_from_dataframe_numpy_scalars():
    np = pytest.importorskip("numpy")
    s = Sweep.from_dataframe(FakeFrame([{"a": np.int64(3), "b": np.float64(0.5), "c": np.bool_(True)}]))
    assert s.params() == [{"a": 3, "b": 0.5, "c": True}]
    assert [type(v) for v in s.params()[0].values()] == [int, float, bool]


def test_random_is_seeded_and_typed():
    a = Sweep.random(20, seed=7, lr=(0.001, 0.1), depth=(1, 8), act=["relu", "tanh", "gelu"])
    b = Sweep.random(20, seed=7, lr=(0.001, 0.1), depth=(1, 8), act=["relu", "tanh", "gelu"])
    assert a == b and len(a) == 20
    for p in a.params():
        assert 0.001 <= p["lr"] <= 0.1 and isinstance(p["lr"], float)
        assert 1 <= p["depth"] <= 8 and isinstance(p["depth"], int)
        assert p["act"] in ("relu", "tanh", "gelu")
    assert Sweep.random(20, seed=8, lr=(0.001, 0.1)).keys() != a.keys()


@pytest.mark.parametrize("bad", [[], (1, 2, 3), (5, 1), ("a", "b"), "abc", 3])
def test_random_bad_distributions(bad):
    with pytest.raises(SpecError, match="list of choices"):
        Sweep.random(3, seed=0, x=bad)
