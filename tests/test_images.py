"""Jobs in images (issue 13 item 3): `imageName` of the project's registry runs the commands in that
image with Charliecloud (ch-run), inside the bubblewrap sandbox, on the local backend and on two
SLURM nodes. The image is built here from busybox; what the job prints proves where it ran: the
image's own /etc/marker, no host /usr, its task directory writable, the shared one read-only."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from htc_notebook import Session, SiteConfig, use
from htc_notebook.errors import SpecError
from htc_notebook.registry import ProjectRegistry, daemon, pull
from htc_notebook.registry.push import push

from test_notebook_layer import ip  # noqa: F401 - the IPython shell with %htc loaded
from test_registry import TOOLS, busybox_layout
from test_sandbox import _local_site
from conftest import registry_port, run_htc
from conftest import missing

REPO = Path(__file__).resolve().parents[1]
PROBE = ["/bin/sh", "-c", 'cat /etc/marker; cat "$HTC_PROJECT_SHARED/in.txt"; '
         '[ -e /usr/bin/python3 ] && echo host-visible || echo host-hidden; '
         'echo ran > "out-$HTC_JOB_ID" && echo task-writable; '
         '(echo x > "$HTC_PROJECT_SHARED/new") 2>/dev/null && echo shared-writable || echo shared-read-only; '
         '/bin/busybox hostname']


def _registry(root: Path, tmp_path: Path) -> ProjectRegistry:
    import shutil

    absent = [t for t in (*TOOLS, "ch-run", "bwrap") if shutil.which(t) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (make test installs them)")
    daemon.up(root, port=registry_port(), listen="127.0.0.1")
    reg = ProjectRegistry(root, "md")
    push(reg, f"oci:{busybox_layout(tmp_path / 'img', 'inside the busybox image')}:v1", "tools:v1")
    arm = busybox_layout(tmp_path / "arm", "arm")
    subprocess.run(["umoci", "config", "--image", f"{arm}:v1", "--architecture=arm64"], check=True, capture_output=True)
    push(reg, f"oci:{arm}:v1", "armtools:v1")
    return reg


def _run(s: Session, jobs: int, profile: str | None = None, cores: int = 1) -> list[list[str]]:
    task = s.project("md").task(f"img-{uuid.uuid4().hex[:6]}")
    (s.storage.shared_dir("md") / "in.txt").write_text("shared input\n")
    group = task.submit_batch({"jobName": "probe", "batchSize": jobs, "htcJobDefinition": {
        "imageName": "tools:v1", "commands": PROBE, "maxVCpus": cores}}, profile=profile)
    group.wait(timeout=300)
    out = []
    for h in group:
        assert h.status == "SUCCEEDED", (h.row.reason, h.logs("err"))
        out.append(h.logs("out").split())
        assert (task.storage.path(f"out-{h.id}")).read_text() == "ran\n"
    return out


def test_a_batch_runs_in_its_image_on_the_local_backend_and_bad_images_are_refused(ip, tmp_path):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"images-local-{uuid.uuid4().hex[:8]}"  # not under /tmp, which ch-run binds
    try:
        _registry(root, tmp_path)
        with Session(root, site=SiteConfig.builtin()) as s:
            for words in _run(s, 2):
                assert words[:8] == ["inside", "the", "busybox", "image", "shared", "input", "host-hidden",
                                     "task-writable"], words
                assert words[8] == "shared-read-only", words
            task = s.project("md").task("refused")
            for image, field, needle in (("tools:v2", "imageName", "tools:v1"),
                                         ("armtools:v1", "architecture", "arm64")):
                with pytest.raises(SpecError) as err:
                    task.submit_batch({"jobName": "x", "batchSize": 1,
                                       "htcJobDefinition": {"imageName": image, "commands": ["true"]}})
                assert err.value.field.endswith(field) and needle in str(err.value), str(err.value)
            assert task.jobs().rows() == []  # refused before anything was recorded
            with use(s.project("md").task("magic")):  # %htc submit --image, as in a notebook
                shown = ip.run_line_magic("htc", "submit --image tools:v1 -- /bin/busybox cat /etc/marker")
                (job,) = [s.job(i) for i in shown.ids]
                assert job.wait(timeout=60).status == "SUCCEEDED" and job.logs("out") == "inside the busybox image\n"
            digests = [p for p in (root / "registry" / "cache").glob("sha256-*") if p.is_dir()]
            assert len(digests) == 1  # pulled and unpacked once for both jobs
        with Session(root, site=_local_site(sandbox="none")) as s:  # unconfined, but still in the image
            for words in _run(s, 1):
                assert words[:8] == ["inside", "the", "busybox", "image", "shared", "input", "host-hidden",
                                     "task-writable"], words
        # the image every task shares is as unpacked: no mount point of these tasks' directories in it
        # (the whole path: its first part may be a directory the image has, /tmp when run from /tmp)
        inside = str(root.resolve()).lstrip("/")
        assert not (digests[0] / "rootfs" / inside).exists(), inside
    finally:
        daemon.down(root)


@pytest.mark.slurm
def test_a_batch_runs_in_its_image_on_two_slurm_nodes_from_each_nodes_copy(slurm_cluster, tmp_path):
    """With `image_cache` (a node-local directory: here each node's private /tmp), each node copies
    the shared unpack once and its jobs run from that copy."""
    cache = f"/tmp/htc-images-{uuid.uuid4().hex[:6]}"
    site = SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"cpu": {
        "backend": "slurm", "partition": "cpu", "cores_per_node": 2, "memory_per_node": "2G", "max_nodes": 2,
        "bundle": 1, "python": slurm_cluster.python, "image_cache": cache}}}))
    root = REPO / "test-output" / f"images-{uuid.uuid4().hex[:8]}"  # the shared file system: nodes find the image
    try:
        _registry(root, tmp_path)
        with Session(root, site=site) as s:
            out = _run(s, 4, profile="cpu", cores=2)
    finally:
        daemon.down(root)
    for words in out:
        assert words[:9] == ["inside", "the", "busybox", "image", "shared", "input", "host-hidden",
                             "task-writable", "shared-read-only"], words
    assert {words[9] for words in out} == {"node1", "node2"}, out
    (digest,) = [p.name for p in (root / "registry" / "cache").glob("sha256-*") if p.is_dir()]
    for node in ("node1", "node2"):  # one copy on each node, in its own /tmp; none on this machine's
        listed = subprocess.run(["srun", "-p", "cpu", "-w", node, "sh", "-c",
                                 f"cat {cache}/{digest}/rootfs/etc/marker; ls {cache}/{digest}; rm -rf {cache}"],
                                capture_output=True, text=True, timeout=60)
        assert listed.stdout.split() == ["inside", "the", "busybox", "image", "rootfs", "rootfs.lock"], listed
    assert not Path(cache).exists()


def test_a_dry_run_of_a_job_in_an_image_pulls_nothing(tmp_path):
    """The dry run resolves the image to its digest and names where it would be unpacked; it
    neither pulls nor unpacks nor copies it, and records nothing (issue 26)."""
    from htc_notebook.runtime.task import DryRun

    root = REPO / "test-output" / f"dry-image-{uuid.uuid4().hex[:8]}"
    try:
        _registry(root, tmp_path)
        with Session(root, site=SiteConfig.builtin()) as s:
            dry = DryRun(s.parts, "md", "dry")
            dry.submit_batch({"jobName": "p", "batchSize": 1, "htcJobDefinition": {
                "imageName": "tools:v1", "commands": ["/bin/busybox", "true"]}})
            assert "/bin/busybox true" in dry.text and "registry/cache/sha256-" in dry.text, dry.text
            assert not list((root / "registry" / "cache").glob("sha256-*"))
            assert s.reads.find_task("md", "dry") is None
    finally:
        daemon.down(root)


def test_pruned_images_are_unpacked_again_for_the_next_job_and_images_in_use_are_kept(tmp_path):
    """`htc images prune` removes unpacked images no job used for --unused-days (not those of jobs
    that have not ended); a later job of a pruned image, or a retry, pulls and unpacks it again."""
    import os
    import time


    root = REPO / "test-output" / f"prune-{uuid.uuid4().hex[:8]}"
    try:
        reg = _registry(root, tmp_path)
        push(reg, f"oci:{busybox_layout(tmp_path / 'other', 'another image')}:v1", "other:v1")
        with Session(root, site=SiteConfig.builtin()) as s:
            task = s.project("md").task("prune")
            job = {"jobName": "p", "batchSize": 1, "htcJobDefinition": {  # fails once, then succeeds
                "imageName": "tools:v1", "commands": ["/bin/busybox", "sh", "-c",
                                                      "cat /etc/marker; [ -e again ] || { touch again; exit 3; }"]}}
            (done,) = task.submit_batch(job)
            assert done.wait(timeout=60).status == "FAILED", done.row.reason
            (slow,) = task.submit_batch({**job, "htcJobDefinition": {**job["htcJobDefinition"], "imageName": "other:v1",
                                                                      "commands": ["/bin/busybox", "sleep", "60"]}})
            cache = root / "registry" / "cache"
            unpacked = sorted(p for p in cache.glob("sha256-*") if p.is_dir())
            assert len(unpacked) == 2, unpacked
            for p in unpacked:  # not used for 10 days
                old = time.time() - 10 * 86400
                os.utime(p / "used", (old, old))
            assert s.prune_images(30) == []  # used within 30 days
            assert [p.digest for p in s.prune_images(7, dry_run=True)] == [done.row.spec.image.digest]
            out = run_htc("images", "prune", "--unused-days", "7", root=root)
            assert out.returncode == 0 and "1 image(s)" in out.stdout, out.stdout + out.stderr
            assert not (cache / done.row.spec.image.digest.replace(":", "-")).exists()
            assert (cache / slow.row.spec.image.digest.replace(":", "-")).is_dir()  # its job has not ended
            slow.cancel()
            slow.wait(timeout=60)
            with pull.hold(root, slow.row.spec.image.digest):  # as a pilot cluster's kernel holds its image
                assert s.prune_images(7) == []
            assert [p.digest for p in s.prune_images(7)] == [slow.row.spec.image.digest]
            assert s.retry([done.id], "after a prune") == [done.id]
            assert done.wait(timeout=60).status == "SUCCEEDED", done.row.reason  # unpacked again, by digest
            assert done.logs("out") == "inside the busybox image\n" * 2  # both attempts, in the image
            assert (cache / done.row.spec.image.digest.replace(":", "-") / "rootfs").is_dir()
    finally:
        daemon.down(root)


def test_with_an_image_cache_local_jobs_run_from_the_nodes_copy(tmp_path):
    cache = tmp_path / "node-local"
    root = REPO / "test-output" / f"image-cache-{uuid.uuid4().hex[:8]}"
    try:
        _registry(root, tmp_path)
        with Session(root, site=_local_site(image_cache=str(cache))) as s:
            out = _run(s, 3)
    finally:
        daemon.down(root)
    for words in out:
        assert words[:9] == ["inside", "the", "busybox", "image", "shared", "input", "host-hidden",
                             "task-writable", "shared-read-only"], words
    (copy,) = cache.glob("sha256-*/rootfs")  # one copy for the three jobs
    assert (copy / "etc" / "marker").read_text() == "inside the busybox image\n"
    assert not list(cache.glob("sha256-*/*.part"))
