import pytest

from htc_notebook.errors import SpecError
from htc_notebook.spec import format_walltime, parse_memory_mib, parse_walltime_seconds


@pytest.mark.parametrize("text, mib", [
    (512, 512), ("4G", 4096), ("4g", 4096), ("4GiB", 4096), ("4Gi", 4096), ("4096MiB", 4096),
    ("4096M", 4096), ("4096", 4096), ("1T", 1024 * 1024), ("2048K", 2), ("1K", 1),
    ("4GB", 3815), ("4000MB", 3815), ("1TB", 953675), ("1.5G", 1536), (" 8 G ", 8192),
    ("1048576B", 1),
])
def test_memory_units(text, mib):
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("bad, got", [
    (-4, None), (0, None), ("0G", None), ("-4G", None), ("abc", None), ("4X", None), ("", None),
    (True, "bool"), (2.5, "float"), (2.0, "float"), (None, "NoneType"), ([4], "list"),
])
def test_memory_rejects(bad, got):
    with pytest.raises(SpecError) as info:
        parse_memory_mib(bad, field="mem")
    err = info.value
    assert err.field == "mem" and err.value == bad
    assert "'4G'" in err.allowed and "'4GB'" in err.allowed
    if got:
        assert f"(got {got})" in str(err)


@pytest.mark.parametrize("text, seconds", [
    (90, 90), ("90", 90), ("01:30", 90), ("90:00", 5400), ("25:00:00", 90000), ("1:02:03", 3723),
    ("2-00", 172800), ("1-02:03", 93780), ("1-02:03:04", 93784), (" 00:00:01 ", 1),
])
def test_walltime_formats(text, seconds):
    assert parse_walltime_seconds(text) == seconds


@pytest.mark.parametrize("bad", ["abc", "-1", "25:61:00", "10:60", "1-24:00", "1:2:3:4", "0", "00:00",
                                 "", 0, -5, True, 2.5])
def test_walltime_rejects_with_formats(bad):
    with pytest.raises(SpecError) as info:
        parse_walltime_seconds(bad)
    err = info.value
    assert err.field == "walltime" and err.value == bad
    for fmt in ("'HH:MM:SS'", "'MM:SS'", "'D-HH:MM:SS'", "'D-HH'"):
        assert fmt in str(err)


def test_walltime_field_name_is_used():
    with pytest.raises(SpecError, match=r"^max_walltime = 'abc'"):
        parse_walltime_seconds("abc", field="max_walltime")


@pytest.mark.parametrize("seconds, text", [(1, "00:00:01"), (3600, "01:00:00"), (86399, "23:59:59"),
                                           (86400, "1-00:00:00"), (93784, "1-02:03:04"), (0, "00:00:00")])
def test_format_walltime_round_trips(seconds, text):
    assert format_walltime(seconds) == text
    if seconds:
        assert parse_walltime_seconds(text) == seconds


def test_format_walltime_rejects_negative():
    with pytest.raises(SpecError):
        format_walltime(-1)
