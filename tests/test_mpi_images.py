"""MPI executables in images, with the host's MPI bound in (issue 13 item 3), as sites run them.

The image is built here: a C MPI program compiled with the host's mpicc, busybox, and the C
runtime it needs from Debian's libc6, but no MPI. The profile's `container_binds` bind the
host's Open MPI (its libraries, plugins and configuration) into it, the list a site's admin
writes (computed here with ldd, as an admin would). Each rank runs in the image with ch-run
inside the sandbox: locally under mpirun, and on node1 + node2 of the SLURM test cluster under
srun. Without the binds the same job fails: the image really has no MPI of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from htc_notebook import Session, SiteConfig
from htc_notebook.errors import SpecError
from htc_notebook.registry import ProjectRegistry, daemon
from htc_notebook.registry.push import push

from test_registry import TOOLS
from conftest import registry_port
from conftest import missing

REPO = Path(__file__).resolve().parents[1]
LIBDIR = "/usr/lib/x86_64-linux-gnu"
OPEN_MPI_DIRS = [f"{LIBDIR}/openmpi", f"{LIBDIR}/pmix2", "/usr/share/openmpi", "/etc/openmpi"]
HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, len; char host[MPI_MAX_PROCESSOR_NAME], marker[64] = "no marker";
    FILE *f = fopen("/etc/marker", "r");
    if (f) { fscanf(f, "%63s", marker); fclose(f); }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    int sum = 0; MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on %s sum %d in %s\n", rank, size, host, sum, marker);
    MPI_Finalize(); return 0;
}
"""
OWN = ("libc.so.6", "libm.so.6")  # the image's own C runtime (copied from Debian's libc6)


def _needs(path: str) -> list[str]:
    """The shared libraries `path` loads (ldd)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return [line.split("=>")[1].split()[0] for line in out.splitlines() if "=> /" in line]


def image_rootfs(where: Path) -> Path:
    """busybox, the MPI program (built here with mpicc) and libc, but no MPI library."""
    if not shutil.which("mpicc"):
        missing("mpicc not installed (make test installs Open MPI's development package)")
    (where / "opt").mkdir(parents=True)
    (where / "opt" / "hello.c").write_text(HELLO_C)
    subprocess.run(["mpicc", "-O1", "-o", str(where / "opt" / "hello"), str(where / "opt" / "hello.c")],
                   check=True, timeout=120)
    for d in ("bin", "etc", "dev", "proc", "sys", "tmp", "home", "mnt", LIBDIR.lstrip("/"), "lib64"):
        (where / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox"), where / "bin" / "busybox")
    (where / "bin" / "sh").symlink_to("busybox")
    (where / "lib").symlink_to("usr/lib")
    for lib in OWN:
        shutil.copy(f"{LIBDIR}/{lib}", where / LIBDIR.lstrip("/") / lib)
    shutil.copy("/lib64/ld-linux-x86-64.so.2", where / "lib64" / "ld-linux-x86-64.so.2")
    (where / "etc" / "marker").write_text("the-mpi-image\n")
    assert not list((where / LIBDIR.lstrip("/")).glob("libmpi*"))
    return where


def host_mpi_binds(program: str) -> list[str]:
    """What a site's admin lists in `container_binds` for Debian's Open MPI: its directories, and
    every library the program and Open MPI's plugins load that the image lacks (links and files)."""
    plugins = [os.path.join(d, f) for top in OPEN_MPI_DIRS[:2] for d, _, fs in os.walk(top) for f in fs if ".so" in f]
    libs = {lib for obj in [program, *plugins] for lib in _needs(obj)}
    binds = set()
    for lib in libs:
        name = os.path.basename(lib)
        if name not in OWN:
            binds |= {f"{LIBDIR}/{name}", f"{LIBDIR}/{os.path.basename(os.path.realpath(lib))}"}
    return sorted(b for b in binds if os.path.exists(b)) + [d for d in OPEN_MPI_DIRS if os.path.exists(d)]


@pytest.fixture
def registry(tmp_path):
    absent = [t for t in (*TOOLS, "ch-run", "bwrap", "mpirun") if shutil.which(t) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (make test installs them)")
    root = REPO / "test-output" / f"mpi-images-{uuid.uuid4().hex[:8]}"  # the shared file system: nodes see it
    daemon.up(root, port=registry_port(), listen="127.0.0.1")
    try:
        rootfs = image_rootfs(tmp_path / "rootfs")
        push(ProjectRegistry(root, "md"), str(rootfs), "hello:v1")
        yield root, host_mpi_binds(str(rootfs / "opt" / "hello"))
    finally:
        daemon.down(root)


def _site(profile: dict) -> SiteConfig:
    return SiteConfig.from_yaml(yaml.safe_dump({"profiles": {profile.pop("name"): profile}}))


IMAGE_TOP = ["bin", "dev", "etc", "home", "lib", "lib64", "mnt", "opt", "proc", "sys", "tmp", "usr"]


def _unpacked(root: Path) -> list[str]:
    """The top of the image's unpacked root file system, after checking that none of the binds is
    in it (they are bound in for each job, not written into the image every profile shares)."""
    (rootfs,) = (root / "registry" / "cache").glob("sha256-*/rootfs")
    made = [p for p in (rootfs / LIBDIR.lstrip("/")).iterdir() if p.name not in OWN]
    assert made == [], made
    return sorted(p.name for p in rootfs.iterdir())


def _ranks(job) -> list[list[str]]:
    row = job.wait(timeout=300)
    assert row.status == "SUCCEEDED", (row.reason, job.logs("err")[-3000:])
    return sorted(line.split() for line in job.logs("out").splitlines() if line.startswith("rank "))


def test_an_mpi_program_runs_in_its_image_with_the_hosts_mpi_bound_in(registry):
    root, binds = registry
    local = {"name": "local", "backend": "local", "cores_per_node": 2, "memory_per_node": "4G", "max_nodes": 1,
             "launcher": "mpirun"}
    with Session(root, site=_site({**local, "container_binds": binds})) as s:
        task = s.project("md").task("mpi-image")
        job = task.mpi(["/opt/hello"], ranks_per_node=2, image="hello:v1")
        ranks = _ranks(job)
        copy = Path(job.row.spec.image.rootfs)  # the image's copy for these binds (hard links), made once
        assert copy.name.startswith("rootfs-binds-") and all(os.path.lexists(copy / b.lstrip("/")) for b in binds)
        assert [r[:4] for r in ranks] == [["rank", "0", "of", "2"], ["rank", "1", "of", "2"]], ranks
        assert all(r[6:] == ["sum", "1", "in", "the-mpi-image"] for r in ranks), ranks  # allreduce, in the image
        with pytest.raises(SpecError, match="no image for a Python function"):
            task.mpi(print, ranks_per_node=2, image="hello:v1")
        with pytest.raises(SpecError, match=r"image = 'hello:v2'.*hello:v1"):
            task.mpi(["/opt/hello"], ranks_per_node=2, image="hello:v2")
    assert _unpacked(root) == IMAGE_TOP  # the binds' and the task's mount points are not in the shared image
    with Session(root, site=_site(local)) as s:  # no binds: the image has no MPI of its own
        job = s.project("md").task("no-binds").mpi(["/opt/hello"], ranks_per_node=2, image="hello:v1")
        assert job.wait(timeout=300).status == "FAILED"
        err = job.logs("err")  # not found, not an empty file that the other profile's binds left in the image
        assert "error while loading shared libraries" in err and "libmpi.so.40" in err, err[-2000:]
        assert "No such file or directory" in err and "file too short" not in err, err[-2000:]
    assert _unpacked(root) == IMAGE_TOP


@pytest.mark.slurm
def test_an_mpi_program_in_its_image_spans_two_slurm_nodes(slurm_cluster, registry):
    root, binds = registry
    cpu = {"name": "cpu", "backend": "slurm", "partition": "cpu", "cores_per_node": 2, "memory_per_node": "2G",
           "max_nodes": 2, "packing": "per_task", "mpi": "pmix", "python": slurm_cluster.python,
           "container_binds": binds}
    with Session(root, site=_site(cpu)) as s:
        job = s.project("md").task("mpi-image-slurm").mpi(["/opt/hello"], nodes=2, ranks_per_node=1,
                                                          image="hello:v1", profile="cpu")
        ranks = _ranks(job)
    assert [r[1] for r in ranks] == ["0", "1"] and {r[5] for r in ranks} == {"node1", "node2"}, ranks
    assert _unpacked(root) == IMAGE_TOP
    assert all(r[6:] == ["sum", "1", "in", "the-mpi-image"] for r in ranks), ranks
