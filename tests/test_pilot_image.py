"""A profile's `pilot_image` (issue 13 item 3): its SLURM pilots run their dask workers in an image
of the toolkit's registry, with Charliecloud. The image is built here from this machine's own files
(Debian's python3.11, its libraries, and the packages a pilot imports, hard-linked: nothing is
downloaded) with a marker only it has; what the calls return proves where they ran. An image whose
dask is another version, or without htc_notebook, is refused when the pilot starts, naming both."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import dask

import htc_notebook
from htc_notebook import Session, SiteConfig
from htc_notebook.errors import BackendError, SpecError
from htc_notebook.registry import ProjectRegistry, daemon
from htc_notebook.registry.push import push

from conftest import missing, registry_port, run_htc
from test_registry import TOOLS
from test_slurm import SCHEDULER_HOST

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3.11"  # Debian's: the kernel's major.minor (the venv may be another build of 3.11)
SITE = "/usr/local/lib/python3.11/dist-packages"  # on Debian python3.11's path, empty on the host
WORKER_NEEDS = ("distributed", "cloudpickle", "pydantic", "PyYAML")  # what a pilot imports (backends/worker.py)
SKIP = ("test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "__pycache__")


def _closure(names) -> dict[str, md.Distribution]:
    """The installed distributions `names` need, with their requirements (markers evaluated here)."""
    out, todo = {}, list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in out:
            continue
        dist = out[key] = md.distribution(name)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def _hard_link(src, dest) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another file system: a copy
        shutil.copy2(src, dest)


def _link(src: Path, rootfs: Path, inside: str) -> None:
    dest = rootfs / inside.lstrip("/")
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dest, copy_function=_hard_link, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*SKIP))
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest)
        else:
            _hard_link(src, dest)


def python_rootfs(rootfs: Path, marker: str, *, dask_version: str | None = None, with_htc: bool = True) -> Path:
    """A root file system with Debian's python3.11 and the kernel's own dask, distributed, their
    requirements and htc_notebook (hard links); `/etc/pilot-image` says `marker`. `dask_version`:
    dask's version file made to say another version (an image built with another dask)."""
    for top in ("bin", "lib", "lib64", "sbin"):  # Debian's merged /usr
        if Path("/", top).is_symlink():
            rootfs.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(Path("/", top)), rootfs / top)
            (rootfs / top).resolve().mkdir(parents=True, exist_ok=True)
    _link(Path(PYTHON), rootfs, PYTHON)
    os.symlink("python3.11", rootfs / "usr/bin/python3")
    _link(Path("/usr/lib/python3.11"), rootfs, "/usr/lib/python3.11")
    site = Path(dask.__file__).parents[1]
    for dist in _closure(WORKER_NEEDS).values():
        tops = {f.parts[0] for f in dist.files or () if f.parts[0] not in ("..", "__pycache__") and
                not f.parts[0].endswith(".pth")}
        for top in tops:
            if (site / top).exists():
                _link(site / top, rootfs, f"{SITE}/{top}")
    if with_htc:
        _link(Path(htc_notebook.__file__).parent, rootfs, f"{SITE}/htc_notebook")
    if dask_version:
        version = rootfs / SITE.lstrip("/") / "dask" / "_version.py"
        version.unlink()  # a hard link: the kernel's own file is left as it is
        version.write_text(f'__version__ = version = "{dask_version}"\n__version_tuple__ = version_tuple = ()\n'
                           '__commit_id__ = commit_id = None\n')
    # the shared libraries of the interpreter and of every extension module in the image
    sos = [rootfs / PYTHON.lstrip("/"), *rootfs.rglob("*.so"), *rootfs.rglob("*.so.*")]
    out = subprocess.run(["ldd", *map(str, sos)], capture_output=True, text=True).stdout
    for lib in sorted(set(re.findall(r"(/\S+\.so[.\d]*)\s\(0x", out))):
        inside = os.path.realpath(lib)
        for path in {lib, inside}:
            if not (rootfs / path.lstrip("/")).exists() and not (rootfs / path.lstrip("/")).is_symlink():
                _link(Path(path), rootfs, path)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/pilot-image").write_text(marker)
    return rootfs


def where_am_i() -> dict:
    import platform

    with open("/etc/pilot-image") as f:
        marker = f.read()
    return {"marker": marker, "python": sys.executable, "version": platform.python_version(),
            "node": os.uname().nodename, "task_dir": os.listdir(os.environ["HTC_TASK_DIR"]),
            "host_usr_share": os.path.exists("/usr/share/doc")}


def _site(slurm_cluster, image: str, **more) -> SiteConfig:
    return SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"cpu": {
        "backend": "slurm", "partition": "cpu", "cores_per_node": 2, "memory_per_node": "2000M", "max_nodes": 2,
        "pilot_image": image, "max_pilots": 2, "scheduler_host": SCHEDULER_HOST, **more}}}))


def test_pilots_run_their_workers_in_the_profiles_image_and_a_mismatch_is_refused(slurm_cluster, tmp_path):
    absent = [t for t in (*TOOLS, "ch-run") if shutil.which(t) is None]
    if absent or not Path(PYTHON).exists():
        missing(f"{', '.join(absent) or PYTHON} not installed (make test installs them)")
    root = REPO / "test-output" / f"pilot-image-{uuid.uuid4().hex[:8]}"  # the shared file system
    try:
        daemon.up(root, port=registry_port(), listen="127.0.0.1")
        reg = ProjectRegistry(root, "site")
        push(reg, str(python_rootfs(tmp_path / "good", "inside the pilot image")), "dask:v1")
        push(reg, str(python_rootfs(tmp_path / "old", "old", dask_version="2023.1.0")), "dask:old")
        push(reg, str(python_rootfs(tmp_path / "bare", "bare", with_htc=False)), "dask:bare")
        cache = f"/tmp/htc-images-{uuid.uuid4().hex[:6]}"  # each node's private /tmp: a copy on each
        with Session(root, site=_site(slurm_cluster, "site/dask:v1", image_cache=cache)) as s:
            s.scale("cpu", jobs=2)
            task = s.project("md").task("where")
            task.storage.path("input").write_text("x")
            seen = [h.result(timeout=300) for h in [task.submit(where_am_i, profile="cpu") for _ in range(4)]]
            # its pilots' image, unused by any job for 10 days, is kept from a prune while they run
            (unpacked,) = [p for p in (root / "registry" / "cache").glob("sha256-*") if p.is_dir()]
            old = time.time() - 10 * 86400
            os.utime(unpacked / "used", (old, old))
            kept = run_htc("images", "prune", "--unused-days", "7", root=root)
            assert kept.returncode == 0 and "0 image(s)" in kept.stdout, kept.stdout + kept.stderr
            assert (unpacked / "rootfs").is_dir()
        pruned = run_htc("images", "prune", "--unused-days", "7", root=root)  # its session closed: pruned
        assert pruned.returncode == 0 and "1 image(s)" in pruned.stdout, pruned.stdout + pruned.stderr
        assert not unpacked.exists()
        for r in seen:
            assert r["marker"] == "inside the pilot image", r
            assert r["python"] == "/usr/bin/python3" and r["version"].startswith("3.11"), r
            assert "input" in r["task_dir"] and not r["host_usr_share"], r  # its task's files; not the host's
        assert {r["node"] for r in seen} <= {"node1", "node2"}
        for node in {r["node"] for r in seen}:  # the pilots ran from the node's own copy
            copy = subprocess.run(["srun", "-p", "cpu", "-w", node, "sh", "-c",
                                   f"cat {cache}/*/rootfs*/etc/pilot-image; rm -rf {cache}"],
                                  capture_output=True, text=True, timeout=60)
            assert copy.stdout == "inside the pilot image", copy
        shutil.rmtree(cache, ignore_errors=True)  # the check ran on this machine: its copy is here
        for image, words in (("site/dask:old", ["dask 2023.1.0", f"(this kernel: {dask.__version__})"]),
                             ("site/dask:bare", ["cannot load what pilots run", "No module named 'htc_notebook'"]),
                             ("site/dask:nope", ["PartitionProfile.pilot_image", "site", "dask:v1"])):
            with Session(root, site=_site(slurm_cluster, image)) as s:
                with pytest.raises((BackendError, SpecError)) as refused:
                    s.scale("cpu", jobs=1)  # before any pilot is asked for
                assert "pilot_image" in str(refused.value) and image.split("/")[1] in str(refused.value), refused.value
                assert all(w in str(refused.value) for w in words), refused.value
                assert not subprocess.run(["squeue", "-h", "-n", "htc-pilot-cpu"], capture_output=True,
                                          text=True).stdout.strip()
    finally:
        daemon.down(root)
