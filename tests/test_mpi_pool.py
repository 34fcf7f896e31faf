"""The MPI rank pool's driver with real MPI ranks on this machine (mpirun starts the pool here;
on SLURM it is an srun step of a packed allocation: tests/test_slurm_mpi.py)."""

from __future__ import annotations

import shutil
import sys
import threading
import time

import cloudpickle
import pytest

from conftest import missing
from htc_notebook.backends.mpi_pool import FAIL_GRACE, PoolSpec, RankPool
from htc_notebook.backends.mpi_ranks import pool_argv

ROOT_OK = (("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    if not shutil.which("mpirun"):
        missing("mpirun missing: `make test` installs Open MPI")
    log = tmp_path_factory.mktemp("pool") / "pool.log"
    spec = PoolSpec(argv=("mpirun", "-np", "4", "--oversubscribe", *pool_argv(sys.executable)),
                    env=ROOT_OK, size=4, log=str(log))
    p = RankPool(spec)
    yield p
    p.close()


def run(pool, tmp_path, fn, *args, ranks=2, timeout=None):
    out = pool.run(cloudpickle.dumps((fn, args, {})), nodes=1, ranks_per_node=ranks, cpus_per_rank=1,
                   cwd=str(tmp_path), env={"HTC_JOB_ID": "7"}, logs=(str(tmp_path / "out"), str(tmp_path / "err")),
                   timeout=timeout)
    if out["ok"]:
        out["value"] = cloudpickle.loads(out["value"])
    return out


def who(comm, x):
    import os

    print(f"rank {comm.rank} here")
    return comm.allreduce(x), comm.size, comm.gather(os.getpid()), os.environ["HTC_JOB_ID"], os.getcwd()


def falsy(comm):
    comm.Barrier()
    return 0 if comm.rank == 0 else "not rank 0"


def raises_on_rank_1(comm):
    if comm.rank == 1:
        raise ValueError("rank one diverged")
    comm.Barrier()  # rank 0 waits here for a rank that never comes


def dies_on_rank_1(comm):
    import os

    if comm.rank == 1:
        os._exit(3)
    comm.Barrier()


def nap(comm, seconds):
    import time

    t0 = time.time()
    time.sleep(seconds)
    comm.Barrier()
    return t0, time.time()


def test_ranks_outlive_tasks_and_each_task_gets_its_own_communicator(pool, tmp_path):
    first = run(pool, tmp_path, who, 1)
    assert first["ok"], first
    total, size, pids, job, cwd = first["value"]
    assert (total, size, job, cwd) == (2, 2, "7", str(tmp_path))
    again = [run(pool, tmp_path, who, i)["value"] for i in range(5)]
    assert [v[0] for v in again] == [2 * i for i in range(5)]
    assert {tuple(v[2]) for v in again} == {tuple(pids)}  # the same processes served every task
    assert run(pool, tmp_path, falsy)["value"] == 0
    assert (tmp_path / "out").read_text().count("rank 0 here") == 6  # prints go to the job's log


def test_tasks_run_side_by_side_on_disjoint_ranks(pool, tmp_path):
    outs = [None, None]

    def go(i):
        outs[i] = run(pool, tmp_path, nap, 1.0)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    (a0, a1), (b0, b1) = outs[0]["value"], outs[1]["value"]
    assert a0 < b1 and b0 < a1, outs  # both 2-rank tasks ran at once on the 4 ranks


def test_a_rank_that_raises_fails_its_task_without_a_hang_and_the_pool_is_replaced(pool, tmp_path):
    before = pool.generation
    t0 = time.monotonic()
    out = run(pool, tmp_path, raises_on_rank_1)
    assert not out["ok"]
    assert out["message"].startswith("rank 1 on ") and "ValueError: rank one diverged" in out["message"]
    assert "raises_on_rank_1" in out["message"]  # the traceback's tail
    assert time.monotonic() - t0 < FAIL_GRACE + 10
    after = run(pool, tmp_path, who, 2, ranks=4)  # rank 0 was stuck in a barrier: a fresh pool serves this
    assert after["ok"] and after["value"][:2] == (8, 4)
    assert pool.generation == before + 1


def test_a_rank_that_dies_fails_its_task_and_the_next_task_runs(pool, tmp_path):
    out = run(pool, tmp_path, dies_on_rank_1)
    assert not out["ok"] and "died" in out["message"]
    assert run(pool, tmp_path, who, 1)["value"][:2] == (2, 2)


def test_timeout_and_impossible_layouts_are_reported(pool, tmp_path):
    out = run(pool, tmp_path, nap, 30, timeout=1)
    assert not out["ok"] and out["message"].startswith("timeout: ran longer than 1 s")
    too_big = pool.run(cloudpickle.dumps((who, (1,), {})), nodes=2, ranks_per_node=2, cpus_per_rank=1,
                       cwd=str(tmp_path), env={}, logs=(str(tmp_path / "o"), str(tmp_path / "e")), timeout=None)
    assert not too_big["ok"] and "cannot place 2 nodes x 2 ranks" in too_big["message"]


def test_a_pool_that_cannot_start_fails_the_task_with_the_reason(tmp_path):
    broken = RankPool(PoolSpec(argv=("no-such-mpirun", "-np", "2"), env=(), size=2, log=str(tmp_path / "p.log")))
    out = run(broken, tmp_path, who, 1)
    assert not out["ok"] and "could not start the MPI rank pool with 'no-such-mpirun'" in out["message"]
    exits = RankPool(PoolSpec(argv=("sh", "-c", "echo no ranks here >&2; exit 7"), env=(), size=2,
                              log=str(tmp_path / "q.log")))
    out = run(exits, tmp_path, who, 1)
    assert not out["ok"] and "0 of 2 ranks connected (launcher exit code 7)" in out["message"]
    assert "no ranks here" in out["message"]  # the tail of the pool's log
