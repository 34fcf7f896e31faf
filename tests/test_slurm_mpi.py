"""MPI jobs on the real multi-node SLURM test cluster: packed steps and per-task allocations,
srun and mpirun, mpi4py functions and a C MPI program built here."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from htc_notebook import JobFailed, Session, mpi_task, on_cluster, use

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

pytestmark = pytest.mark.slurm

MPI_HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, len; char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    int sum = 0; MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on %s sum %d\n", rank, size, host, sum);
    MPI_Finalize(); return 0;
}
"""


@pytest.fixture
def session(site):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"slurm-mpi-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        with use(s.project("mpi").task(f"t-{uuid.uuid4().hex[:6]}")) as task:
            yield task


@pytest.fixture(scope="module")
def mpi_hello(tmp_path_factory):
    """A small C MPI program, compiled here with mpicc, in the checkout (the nodes see it)."""
    if not shutil.which("mpicc"):
        pytest.fail("mpicc missing: `make test` installs Open MPI's development package", pytrace=False)
    out = REPO / "test-output" / "bin"
    out.mkdir(parents=True, exist_ok=True)
    src = out / "mpi_hello.c"
    src.write_text(MPI_HELLO_C)
    subprocess.run(["mpicc", "-O1", "-o", str(out / "mpi_hello"), str(src)], check=True, timeout=120)
    return str(out / "mpi_hello")


def where(comm, value):
    import os
    import socket

    rows = comm.gather((comm.rank, socket.gethostname(), os.environ.get("SLURM_JOB_ID")))
    return (value, rows) if comm.rank == 0 else None


def falsy(comm, value):
    comm.Barrier()
    return value if comm.rank == 0 else "not rank 0"


def fails_on_rank_3(comm):
    if comm.rank == 3:
        raise RuntimeError("diverged at step 17")
    comm.Barrier()
    return "unreachable"


def stamps(comm, seconds):
    import os
    import time

    t0 = time.time()
    time.sleep(seconds)
    return comm.gather((t0, time.time(), os.environ.get("SLURM_JOB_ID")))


def test_four_ranks_on_two_nodes_return_rank0_value(session):
    value, rows = session.mpi(where, "rank 0 says hi", nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    assert value == "rank 0 says hi"
    assert [r for r, _, _ in rows] == [0, 1, 2, 3]
    assert {h for _, h, _ in rows} == {"node1", "node2"}


@pytest.mark.parametrize("value", [0, "", []])
def test_falsy_result_comes_back_as_itself(session, value):
    assert session.mpi(falsy, value, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=180) == value


def test_exception_on_rank_3_names_rank_and_host(session):
    h = session.mpi(fails_on_rank_3, nodes=2, ranks_per_node=2, profile="cpu")
    with pytest.raises(JobFailed) as info:
        h.result(timeout=180)
    text = str(info.value)
    assert "rank 3 on node2 raised RuntimeError: diverged at step 17" in text
    assert "fails_on_rank_3" in text  # the traceback


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_c_mpi_program_across_two_nodes(session, mpi_hello, launcher):
    res = session.mpi([mpi_hello], nodes=2, ranks_per_node=2, launcher=launcher, profile="cpu").result(timeout=180)
    lines = sorted(line for line in res.stdout.splitlines() if line.startswith("rank"))
    assert res.exit_code == 0 and len(lines) == 4
    assert {line.split()[5] for line in lines} == {"node1", "node2"}
    assert all(line.endswith("sum 6") for line in lines)  # the allreduce really spanned all ranks


def test_eight_small_tasks_share_one_packed_allocation_and_overlap(session):
    handles = [session.mpi(stamps, 1.5, ranks=2, profile="cpu") for _ in range(8)]
    runs = [h.result(timeout=300) for h in handles]
    jobs = {job for run in runs for _, _, job in run}
    assert len(jobs) == 1, f"expected one SLURM allocation, got {jobs}"
    spans = [(min(t0 for t0, _, _ in run), max(t1 for _, t1, _ in run)) for run in runs]
    overlaps = sum(1 for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1])
    assert overlaps >= 2, spans


def ranks_of(comm):
    import os
    import socket

    return comm.gather((os.getpid(), socket.gethostname(), os.environ.get("SLURM_STEP_ID")))


def test_packed_python_tasks_run_on_one_rank_pool_that_survives_a_failed_task(session):
    first = session.mpi(ranks_of, nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    assert {h for _, h, _ in first} == {"node1", "node2"} and len({s for _, _, s in first}) == 1
    again = session.mpi(ranks_of, nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    assert again == first  # the same rank processes (pids, hosts, srun step) served both tasks
    with pytest.raises(JobFailed, match="rank 3 on node2 raised RuntimeError: diverged at step 17"):
        session.mpi(fails_on_rank_3, nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    after = session.mpi(ranks_of, nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    assert {p for p, _, _ in after}.isdisjoint({p for p, _, _ in first})  # stuck ranks were replaced
    assert after[0][2] != first[0][2]  # by a new pool step


def test_an_executable_step_runs_beside_a_running_rank_pool(session, mpi_hello):
    first = session.mpi(ranks_of, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=180)  # starts the pool
    res = session.mpi([mpi_hello], nodes=2, ranks_per_node=2, profile="cpu").result(timeout=180)
    assert res.exit_code == 0 and sum(line.endswith("sum 6") for line in res.stdout.splitlines()) == 4
    again = session.mpi(ranks_of, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=180)
    assert again == first  # the pool was not disturbed by the step


def test_per_task_profile_gives_each_task_its_own_allocation(site, tmp_path):  # noqa: F811 - the fixture imported above
    data = site.profile("cpu").model_dump()
    per_task = site.profile("cpu").model_validate({**data, "name": "cpu-alone", "packing": "per_task"})
    from htc_notebook import SiteConfig

    alone = SiteConfig(profiles={**site.profiles, "cpu-alone": per_task}, default_profile="cpu-alone")
    root = REPO / "test-output" / f"slurm-mpi-{uuid.uuid4().hex[:8]}"
    with Session(root, site=alone) as s:
        t = s.project("mpi").task("alone")
        handles = [t.mpi(stamps, 0.1, ranks=2) for _ in range(2)]
        jobs = [{j for _, _, j in h.result(timeout=180)} for h in handles]
        assert all(len(j) == 1 for j in jobs) and jobs[0] != jobs[1]
        assert all(h.row.native_id and "_" in h.row.native_id for h in handles)  # array tasks


def test_decorated_mpi_task_inside_on_cluster(session):
    @mpi_task(nodes=2, ranks_per_node=1)
    def total(comm, x):
        return comm.allreduce(x)

    @on_cluster(profile="cpu")
    def study(xs):
        return [total(x) for x in xs]

    futures = study([1, 2])
    assert [f.result(timeout=180) for f in futures] == [2, 4]
    assert {f.row.profile for f in futures} == {"cpu"}
