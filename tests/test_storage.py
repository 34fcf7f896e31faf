"""Isolation (G6) and atomic writes: every way out of a task or shared dir is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from htc_notebook.errors import HTCError, StorageAccessDenied
from htc_notebook.storage import ProjectStorage, Storage, TaskStorage, atomic_write, confine, current


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "root")


@pytest.fixture
def view(storage: Storage) -> TaskStorage:
    return TaskStorage(storage.task_dir("p", "t1"), storage.shared_dir("p"))


# --- confine -------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", ["..", "../x", "a/../../x", "./../t10/x", "a/b/../../../x"])
def test_dotdot_escape_refused(tmp_path: Path, rel: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(StorageAccessDenied, match="outside"):
        confine(base, rel)


@pytest.mark.parametrize("rel", ["/etc/passwd", "/", "//x"])
def test_absolute_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(StorageAccessDenied, match="absolute"):
        confine(tmp_path, rel)


def test_absolute_inside_base_still_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageAccessDenied):
        confine(tmp_path, str(tmp_path / "x"))


def test_sibling_prefix_refused(tmp_path: Path) -> None:
    (tmp_path / "t1").mkdir()
    (tmp_path / "t10").mkdir()
    (tmp_path / "t10" / "secret").write_text("s")
    with pytest.raises(StorageAccessDenied):
        confine(tmp_path / "t1", "../t10/secret")
    # and a symlink to the sibling, which a startswith() check would wave through
    os.symlink(tmp_path / "t10", tmp_path / "t1" / "link")
    with pytest.raises(StorageAccessDenied):
        confine(tmp_path / "t1", "link/secret")


def test_nul_and_empty_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageAccessDenied, match="NUL"):
        confine(tmp_path, "a\x00b")
    with pytest.raises(StorageAccessDenied, match="empty"):
        confine(tmp_path, "")
    with pytest.raises(StorageAccessDenied):
        confine(tmp_path, b"a")  # type: ignore[arg-type]


def test_symlink_file_out_refused(tmp_path: Path) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside.txt"
    base.mkdir()
    outside.write_text("secret")
    os.symlink(outside, base / "f")
    with pytest.raises(StorageAccessDenied):
        confine(base, "f")


def test_dangling_symlink_out_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    os.symlink(tmp_path / "not-yet", base / "f")  # writing through it would create a file outside
    with pytest.raises(StorageAccessDenied):
        confine(base, "f")


def test_symlink_dir_out_refused(tmp_path: Path) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    os.symlink(outside, base / "d")
    for rel in ("d", "d/x", "d/new/deeper.txt"):
        with pytest.raises(StorageAccessDenied):
            confine(base, rel)


def test_symlink_inside_allowed(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "real").mkdir(parents=True)
    (base / "real" / "f").write_text("ok")
    os.symlink(base / "real", base / "alias")
    os.symlink("real/f", base / "relfile")
    assert confine(base, "alias/f").read_text() == "ok"
    assert confine(base, "relfile").read_text() == "ok"


def test_normalised_inside_allowed(tmp_path: Path) -> None:
    assert confine(tmp_path, "a/../b") == Path(os.path.realpath(tmp_path)) / "b"
    assert confine(tmp_path, ".") == Path(os.path.realpath(tmp_path))
    assert confine(tmp_path, Path("x/y/z.txt")).name == "z.txt"  # not-yet-existing


def test_base_behind_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert confine(tmp_path / "alias", "f") == Path(os.path.realpath(tmp_path / "real")) / "f"


# --- layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/b", ";rm", "a\nb", "x\n", "$(id)", "..", ".", "", ".hidden",
                                  "-rf", "a b", "a" * 129, "é"])
def test_bad_names_refused(storage: Storage, name: str) -> None:
    with pytest.raises(StorageAccessDenied, match="allowed pattern"):
        storage.project_dir(name)
    with pytest.raises(StorageAccessDenied, match="allowed pattern"):
        storage.task_dir("p", name)
    assert not (storage.root / "x").exists()


def test_layout(storage: Storage) -> None:
    root = storage.root
    assert storage.ledger_path == root / "ledger.db"
    assert storage.shared_dir("p").is_dir()
    assert storage.shared_dir("p") == root / "projects/p/shared"
    assert storage.task_dir("p", "t.1_a-b") == root / "projects/p/tasks/t.1_a-b"
    assert storage.internal_dir("p", "t") == root / "projects/p/tasks/t/.htc"
    out, err = storage.log_paths("p", "t", 7)
    assert (out.name, err.name) == ("job-7.out", "job-7.err") and out.parent.is_dir()
    assert storage.result_path("p", "t", 7) == root / "projects/p/tasks/t/.htc/results/job-7.pkl"
    assert storage.payload_path("p", "t", "ab12") == root / "projects/p/tasks/t/.htc/payloads/ab12.pkl"
    with pytest.raises(StorageAccessDenied):
        storage.payload_path("p", "t", "../x")


# --- views ---------------------------------------------------------------------------------

def test_task_view_read_write(view: TaskStorage) -> None:
    p = view.write_text("out/a.txt", "hello")
    assert p.parent.name == "out"
    assert view.read_text("out/a.txt") == "hello"
    view.write_bytes("b.bin", b"\x00\x01")
    assert view.read_bytes("b.bin") == b"\x00\x01"
    with view.open("c.txt", "w") as f:
        f.write("c")
    assert view.list() == ["b.bin", "c.txt", "out"]
    assert view.list("out") == ["a.txt"]


def test_task_view_refuses_escape(storage: Storage, view: TaskStorage) -> None:
    storage.task_dir("p", "t10")
    for rel in ("../t10/x", "/etc/passwd", "..", "a\x00", "", ".htc/results/job-1.pkl", ".htc"):
        with pytest.raises(StorageAccessDenied):
            view.path(rel)
    with pytest.raises(StorageAccessDenied):
        view.write_text("../t10/x", "no")
    for rel in ("..", ".htc"):
        with pytest.raises(StorageAccessDenied):
            view.list(rel)
    assert not (storage.task_dir("p", "t10") / "x").exists()


def test_shared_is_read_only(storage: Storage, view: TaskStorage, tmp_path: Path) -> None:
    src = tmp_path / "input.csv"
    src.write_text("1,2\n")
    ProjectStorage(storage.shared_dir("p")).put(src, "data/input.csv")
    assert view.shared("data/input.csv").read_text() == "1,2\n"
    with view.open_shared("data/input.csv") as f:
        assert f.read() == "1,2\n"
    with view.open_shared("data/input.csv", "rb") as f:
        assert f.read() == b"1,2\n"
    for mode in ("w", "a", "x", "r+", "wb", "ab", "rb+"):
        with pytest.raises(StorageAccessDenied, match="read-only"):
            view.open_shared("data/input.csv", mode)
    assert view.shared("data/input.csv").read_text() == "1,2\n"
    for rel in ("../tasks/t1/x", "/etc/passwd", "../../other/shared/x"):
        with pytest.raises(StorageAccessDenied):
            view.shared(rel)


def test_project_storage(storage: Storage, tmp_path: Path) -> None:
    ps = ProjectStorage(storage.shared_dir("p"))
    src = tmp_path / "f.txt"
    src.write_text("v1")
    ps.put(src, "f.txt")
    src.write_text("v2")
    assert ps.put(src, "f.txt").read_text() == "v2"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "g").write_text("g")
    ps.put(tree, "tree")
    assert ps.list() == ["f.txt", "tree"]
    assert ps.path("tree/sub/g").read_text() == "g"
    with pytest.raises(StorageAccessDenied):
        ps.put(src, "../escape.txt")
    assert not (storage.project_dir("p") / "escape.txt").exists()


def test_current(monkeypatch: pytest.MonkeyPatch, storage: Storage) -> None:
    monkeypatch.delenv("HTC_TASK_DIR", raising=False)
    monkeypatch.delenv("HTC_PROJECT_SHARED", raising=False)
    with pytest.raises(HTCError, match="inside a job"):
        current()
    monkeypatch.setenv("HTC_TASK_DIR", str(storage.task_dir("p", "t")))
    monkeypatch.setenv("HTC_PROJECT_SHARED", str(storage.shared_dir("p")))
    cur = current()
    cur.write_text("x", "1")
    assert (storage.task_dir("p", "t") / "x").read_text() == "1"


# --- atomic_write --------------------------------------------------------------------------

def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.pkl"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["r.pkl"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "r.pkl"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["r.pkl"]
