"""Command jobs in the bubblewrap sandbox (backends/sandbox.py): the OS refuses what the job may not touch.

One probe job tries each forbidden and each allowed access and prints what the OS said; it runs
on the local backend and on two nodes of the SLURM test cluster. The same probe with
`sandbox: none` reads the sibling's secret: what the sandbox hides is really there.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
import uuid
from pathlib import Path

import pytest
from conftest import missing
import yaml

from htc_notebook import Session, SiteConfig
from htc_notebook.backends import sandbox
from htc_notebook.errors import BackendError, HTCWarning

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, sys
root, sibling, other_shared = sys.argv[1:4]
task, shared, ckpt = os.environ["HTC_TASK_DIR"], os.environ["HTC_PROJECT_SHARED"], os.environ["HTC_CHECKPOINT"]

def attempt(what, fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__ + ":" + (exc.strerror or "")

def write(path):
    with open(path, "w") as f:
        f.write("x")

def read(path):
    with open(path) as f:
        f.read()

out = {
    "read_sibling_task_file": attempt("r", lambda: read(sibling)),
    "read_ledger": attempt("r", lambda: read(os.path.join(root, "ledger.db"))),
    "read_ledger_via_proc": attempt("r", lambda: read("/proc/1/root" + os.path.join(root, "ledger.db"))),
    "read_other_project_shared": attempt("r", lambda: read(other_shared)),
    "read_own_shared": attempt("r", lambda: read(os.path.join(shared, "input.txt"))),
    "write_own_shared": attempt("w", lambda: write(os.path.join(shared, "new.txt"))),
    "write_own_task": attempt("w", lambda: write(os.path.join(task, "out-" + os.environ["HTC_JOB_ID"]))),
    "write_toolkit_internals": attempt("w", lambda: write(os.path.join(task, ".htc", "results", "forged.pkl"))),
    "write_checkpoint": attempt("w", lambda: write(ckpt)),
    "data_root_shows": sorted(os.listdir(root)),
    "host": os.uname().nodename,
}
print(json.dumps(out))
"""


def _prepare(s: Session, name: str) -> tuple[object, list[str]]:
    """A task to probe from, a sibling task and another project holding secrets; the probe's argv."""
    project = s.project(f"sbx-{name}")
    sibling = s.storage.task_dir(project.name, "sibling") / "secret.txt"
    sibling.write_text("the sibling's secret")
    other = s.storage.shared_dir(f"sbx-{name}-other") / "secret.txt"
    other.write_text("another project's secret")
    (s.storage.shared_dir(project.name) / "input.txt").write_text("shared input")
    (s.storage.internal_dir(project.name, "probe") / "results").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", PROBE, str(s.storage.root.resolve()), str(sibling.resolve()), str(other.resolve())]
    return project.task("probe"), argv


def _probe(s: Session, name: str, *, profile: str | None = None, jobs: int = 1, cores: int = 1) -> list[dict]:
    task, argv = _prepare(s, name)
    group = task.submit_batch({"jobName": "probe", "batchSize": jobs,
                               "htcJobDefinition": {"commands": argv, "maxVCpus": cores}}, profile=profile)
    group.wait(timeout=300)
    for h in group:
        assert h.status == "SUCCEEDED", (h.row.reason, h.logs("err"))
    return [json.loads(h.logs("out").strip().splitlines()[-1]) for h in group]


def _assert_confined(seen: dict) -> None:
    assert seen["read_sibling_task_file"].startswith("FileNotFoundError"), seen
    assert seen["read_ledger"].startswith("FileNotFoundError"), seen
    assert seen["read_ledger_via_proc"].startswith("FileNotFoundError"), seen
    assert seen["read_other_project_shared"].startswith("FileNotFoundError"), seen
    assert seen["write_own_shared"] == "OSError:Read-only file system", seen
    assert seen["write_toolkit_internals"] == "OSError:Read-only file system", seen
    assert seen["read_own_shared"] == "ok" and seen["write_own_task"] == "ok" and seen["write_checkpoint"] == "ok", seen
    assert seen["data_root_shows"] == ["projects"], seen  # no ledger.db, no keys: an empty tmpfs with the binds


def _local_site(**fields) -> SiteConfig:
    data = SiteConfig.builtin().model_dump(exclude_defaults=True)
    data["profiles"]["local"].update(fields)
    return SiteConfig.model_validate(data)


@pytest.mark.sandbox
def test_a_local_command_job_sees_only_its_task_and_its_projects_shared_directory(tmp_path):
    with Session(tmp_path / "root", site=_local_site()) as s:
        (seen,) = _probe(s, "local")
    _assert_confined(seen)


def test_with_sandbox_none_the_same_job_reads_what_the_sandbox_hides(tmp_path):
    with Session(tmp_path / "root", site=_local_site(sandbox="none")) as s:
        (seen,) = _probe(s, "none")
    assert seen["read_sibling_task_file"] == "ok" and seen["read_ledger"] == "ok", seen
    assert seen["write_own_shared"] == "ok", seen


@pytest.mark.slurm
def test_slurm_array_jobs_on_two_nodes_are_confined_the_same_way(slurm_cluster, tmp_path):
    site = SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"cpu": {
        "backend": "slurm", "partition": "cpu", "cores_per_node": 2, "memory_per_node": "2G", "max_nodes": 2,
        "bundle": 1, "python": slurm_cluster.python}}}))
    root = REPO / "test-output" / f"sandbox-{uuid.uuid4().hex[:8]}"  # a shared file system: nodes see it
    with Session(root, site=site) as s:
        seen = _probe(s, "slurm", profile="cpu", jobs=4, cores=2)  # a whole node each: both nodes run some
    for one in seen:
        _assert_confined(one)
    assert {one["host"] for one in seen} == {"node1", "node2"}, [one["host"] for one in seen]


def test_a_machine_that_cannot_make_a_sandbox_runs_local_jobs_unconfined_and_says_so_once(tmp_path, monkeypatch):
    """No bwrap (as without user namespaces): the check still refuses a profile that needs one (SLURM
    nodes, images), but the owner's own local jobs run unconfined, with one warning per session
    naming what is off, how to turn it back on, and the site file to say `sandbox: none` in."""
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-such-bwrap"))
    monkeypatch.setenv("HTC_SITE_CONFIG", str(tmp_path / "site.yaml"))
    (tmp_path / "site.yaml").write_text("profiles: {}\n")
    sandbox.check_sandbox.cache_clear()
    sandbox.sandbox_problem.cache_clear()
    try:
        with pytest.raises(BackendError, match=r"bwrap is not installed.*sandbox: none"):
            sandbox.check_sandbox("local")
        with Session(tmp_path / "root", site=_local_site()) as s:
            task = s.project("sbx").task("unconfined")
            with pytest.warns(HTCWarning) as said:
                group = task.submit_batch({"jobName": "echo", "batchSize": 2,
                                           "htcJobDefinition": {"commands": ["sh", "-c", "ls /tmp >/dev/null"]}})
            group.wait(timeout=60)
            assert [h.status for h in group] == ["SUCCEEDED", "SUCCEEDED"]
            (message,) = [str(w.message) for w in said]
            assert "runs jobs unconfined" in message and "bwrap is not installed" in message
            assert "task isolation" in message and "maxDiskGiB" in message and "user namespaces" in message
            assert str(tmp_path / "site.yaml") in message  # where to say `sandbox: none` on purpose
            assert s.unconfined("local") == message
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # once per session: the next submission says nothing
                task.submit_batch({"jobName": "again", "batchSize": 1, "htcJobDefinition": {"commands": ["true"]}})
    finally:
        sandbox.check_sandbox.cache_clear()
        sandbox.sandbox_problem.cache_clear()


def test_sandbox_none_set_by_hand_warns_naming_its_file_and_line(tmp_path):
    site = SiteConfig.from_yaml("profiles:\n  local:\n    sandbox: none\n", file=str(tmp_path / "site.yaml"))
    with Session(tmp_path / "root", site=site) as s:
        with pytest.warns(HTCWarning,
                          match=rf"sandbox: none` at {re.escape(str(tmp_path))}/site.yaml:3.*task isolation"):
            s.project("p").task("t").submit_batch({"jobName": "x", "batchSize": 1,
                                                   "htcJobDefinition": {"commands": ["true"]}})


@pytest.mark.sandbox
def test_an_images_mount_points_are_laid_out_over_it_and_not_written_into_it(tmp_path):
    """`image_root`: the job sees the image with a mount point at each path it lacks (through the
    image's own link lib -> usr/lib), its own entries bound back as they are; the image is unchanged."""
    import shutil
    import subprocess

    from htc_notebook.backends.images import mount_points

    if shutil.which("bwrap") is None:
        missing("bubblewrap (bwrap) not installed: make test installs it")
    img = tmp_path / "img"
    (img / "usr" / "lib").mkdir(parents=True)
    (img / "usr" / "lib" / "libc.so.6").write_text("the image's libc")
    (img / "lib").symlink_to("usr/lib")
    (img / "tmp").mkdir(mode=0o1777)
    (img / "tmp").chmod(0o1777)
    before = sorted((str(p.relative_to(img)), p.is_symlink(), p.stat().st_mode) for p in img.rglob("*"))
    host_dir = tmp_path / "mpi"
    host_dir.mkdir()
    points = mount_points("/data/t", "/data/s", ["/lib/libmpi.so.40", str(host_dir)])
    layout = sandbox.image_root(str(img), points)
    show = ("cd $0; for p in lib/libc.so.6 lib/libmpi.so.40 data/t data/s " + str(host_dir).lstrip("/") + "; "
            "do [ -e $p ] && echo $p; done; readlink lib; stat -c %a tmp; cat usr/lib/libc.so.6; echo; "
            "touch usr/x 2>/dev/null || echo read-only")
    done = subprocess.run(["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev",
                           *layout, "--", "sh", "-c", show, str(img)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["lib/libc.so.6", "lib/libmpi.so.40", "data/t", "data/s",
                                       str(host_dir).lstrip("/"), "usr/lib", "1777", "the image's libc",
                                       "read-only", ""], done.stdout
    assert sorted((str(p.relative_to(img)), p.is_symlink(), p.stat().st_mode) for p in img.rglob("*")) == before
    assert not (img / "usr" / "lib" / "libmpi.so.40").exists() and not (img / "data").exists()
