"""MPI jobs without SLURM: the launcher matrix as text, validation before submission, and
real mpirun runs on this machine (the local backend)."""

from __future__ import annotations

import shutil
import socket

import pytest
from conftest import missing

from htc_notebook import JobFailed, PartitionProfile, Session, SiteConfig, SpecError, mpi_task, task, use
from htc_notebook.backends.launchers import MpiLayout, launch_argv, launch_env

L22 = MpiLayout(ranks=4, nodes=2, ranks_per_node=2)
HYBRID = MpiLayout(ranks=4, nodes=2, ranks_per_node=2, cpus_per_rank=3)


@pytest.mark.parametrize("launcher, layout, kw, expected", [
    ("srun", L22, {}, "srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=1 "
                      "--kill-on-bad-exit=1 ./md -in x"),
    ("srun", L22, {"mpi": "pmix"}, "srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=1 "
                                   "--kill-on-bad-exit=1 --mpi=pmix ./md -in x"),
    ("srun", HYBRID, {"mpi": "pmi2", "step_mem_per_cpu": 1000},
     "srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=3 --kill-on-bad-exit=1 --mpi=pmi2 "
     "--exact --mem-per-cpu=1000M ./md -in x"),
    ("mpirun", L22, {}, "mpirun -np 4 --map-by ppr:2:node --bind-to core ./md -in x"),
    ("mpirun", HYBRID, {}, "mpirun -np 4 --map-by ppr:2:node:PE=3 --bind-to core ./md -in x"),
    ("mpiexec", L22, {}, "mpiexec -n 4 -ppn 2 -bind-to core:1 ./md -in x"),
    ("mpiexec", HYBRID, {}, "mpiexec -n 4 -ppn 2 -bind-to core:3 ./md -in x"),
    ("ibrun", L22, {}, "ibrun -n 4 -o 0 ./md -in x"),
    ("aprun -n {ranks} -N {ranks_per_node} -d {cpus_per_rank} {command}", HYBRID, {},
     "aprun -n 4 -N 2 -d 3 ./md -in x"),
])
def test_launcher_matrix(launcher, layout, kw, expected):
    assert " ".join(launch_argv(launcher, layout, ["./md", "-in", "x"], **kw)) == expected


def test_template_keeps_arguments_whole():
    argv = launch_argv("mpiexec -n {ranks} {command}", L22, ["./md", "two words", "$(rm -rf /)"])
    assert argv == ["mpiexec", "-n", "4", "./md", "two words", "$(rm -rf /)"]


def test_openmp_settings_follow_cpus_per_rank():
    assert launch_env(L22) == {"OMP_NUM_THREADS": "1"}
    assert launch_env(HYBRID) == {"OMP_NUM_THREADS": "3", "OMP_PLACES": "cores", "OMP_PROC_BIND": "close"}
    assert launch_env(HYBRID, omp_places="threads", omp_proc_bind="spread")["OMP_PLACES"] == "threads"


def test_packing_is_chosen_by_the_profile():
    base = dict(name="cpu", cores_per_node=4, memory_per_node="4G", max_nodes=4)
    assert PartitionProfile(**base).packing == "packed"
    assert PartitionProfile(**base, launcher="mpirun").packing == "per_task"
    assert PartitionProfile(**base, packing="per_task").packing == "per_task"
    assert PartitionProfile(**base, pack_nodes=2).nodes_per_pack == 2
    with pytest.raises(SpecError) as info:
        PartitionProfile(**base, launcher="mpirun", packing="packed")
    assert info.value.field == "packing" and "srun" in info.value.allowed
    with pytest.raises(SpecError) as info:
        PartitionProfile(**base, pack_nodes=5)
    assert info.value.field == "pack_nodes" and "max_nodes=4" in info.value.allowed


SITE = SiteConfig.from_yaml("""
profiles:
  cpu: {cores_per_node: 4, memory_per_node: 4G, max_nodes: 4, pack_nodes: 2}
""")


@pytest.mark.parametrize("kwargs, field, says", [
    (dict(ranks=5, nodes=2), "ranks", "does not split evenly"),
    (dict(ranks=4, nodes=2, ranks_per_node=3), "ranks", "nodes x ranks_per_node = 2 x 3 = 6"),
    (dict(ranks_per_node=8), "ranks_per_node", "more ranks than cores"),
    (dict(ranks=2, cpus_per_rank=4), "ranks_per_node", "2 x 4 = 8 cores per node"),
    (dict(ranks=2, gpus=1), "gpus", "has no GPUs"),
    (dict(ranks=2, launcher="mpirunn"), "launcher", "srun, mpirun, mpiexec, ibrun"),
    (dict(ranks=12, nodes=3), "nodes", "packed allocation"),
    (dict(nodes=2), "ranks", "a number of ranks"),
    (dict(ranks=-1), "ranks", ">= 1"),
])
def test_bad_mpi_requests_are_refused_before_anything_is_written(tmp_path, kwargs, field, says):
    with Session(tmp_path, site=SITE) as s:
        t = s.project("p").task("t")
        with pytest.raises(SpecError) as info:
            t.mpi(lambda comm: 1, profile="cpu", **kwargs)
        assert info.value.field == field and says in str(info.value)
        assert t.counts() == {} or sum(t.counts().values()) == 0
        assert not (tmp_path / "projects" / "p" / "tasks" / "t" / ".htc" / "slurm").exists()


def test_unpicklable_mpi_function_fails_at_submit(tmp_path):
    import threading

    lock = threading.Lock()
    with Session(tmp_path, site=SITE) as s:
        t = s.project("p").task("t")
        with pytest.raises(SpecError) as info:
            t.mpi(lambda comm: lock.locked(), ranks=2, profile="cpu")
        assert info.value.field == "fn" and "picklable" in info.value.allowed
        assert sum(t.counts().values()) == 0


def test_decorators_have_no_side_effects_until_called(tmp_path, monkeypatch):
    monkeypatch.setenv("HTC_ROOT", str(tmp_path / "nothing-here"))

    @mpi_task(ranks=2, nodes=1)
    def f(comm):
        return comm.rank

    @task(pure=True)
    def g(x):
        return x

    assert f.remote.__name__ == "f" and g.__name__ == "g"
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(SpecError) as info:
        mpi_task(ranks=3, nodes=2)
    assert info.value.field == "ranks"
    assert not (tmp_path / "nothing-here").exists()


# -- real MPI on this machine --------------------------------------------------------
def _need_mpi():
    absent = [t for t in ("mpirun",) if not shutil.which(t)]
    try:
        import mpi4py  # noqa: F401 - only whether it imports
    except ImportError:
        absent.append("mpi4py")
    if absent:
        missing(f"MPI not available here ({', '.join(absent)}); `make test` installs Open MPI and mpi4py")


@pytest.fixture
def local(tmp_path):
    _need_mpi()
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("mpi")
        with use(t):
            yield t


def ranks_and_hosts(comm, x):
    return comm.gather((comm.rank, socket.gethostname(), x * comm.rank))


def falsy(comm, value):
    comm.Barrier()
    return value if comm.rank == 0 else "not rank 0"


def fails_on_last_rank(comm):
    if comm.rank == comm.size - 1:
        raise ValueError(f"bad input on rank {comm.rank}")
    comm.Barrier()  # the other ranks wait here: the abort must free them
    return "unreachable"


def test_mpi4py_function_runs_on_every_rank(local):
    out = local.mpi(ranks_and_hosts, 10, ranks=2).result(timeout=120)
    assert [r for r, _, _ in out] == [0, 1] and [v for _, _, v in out] == [0, 10]


@pytest.mark.parametrize("value", [0, "", [], None, False])
def test_falsy_rank0_value_comes_back_as_itself(local, value):
    assert local.mpi(falsy, value, ranks=2).result(timeout=120) == value
    assert type(local.mpi(falsy, value, ranks=2).result(timeout=120)) is type(value)


def test_exception_on_one_rank_names_rank_host_and_traceback_without_hanging(local):
    h = local.mpi(fails_on_last_rank, ranks=2)
    with pytest.raises(JobFailed) as info:
        h.result(timeout=120)
    text = str(info.value)
    assert "rank 1 on " + socket.gethostname() in text
    assert "ValueError: bad input on rank 1" in text and "fails_on_last_rank" in text
    assert "bad input on rank 1" in h.row.reason


def test_mpi_executable_gives_exit_code_and_output(local):
    @mpi_task(ranks=2, executable=True)
    def hello(word):
        return ["sh", "-c", f"echo {word} $OMPI_COMM_WORLD_RANK"]

    res = hello("rank").result(timeout=120)
    assert res.exit_code == 0 and sorted(res.stdout.split("\n")[:2]) == ["rank 0", "rank 1"]

    @mpi_task(ranks=2, executable=True)
    def failing():
        return "sh -c 'exit 3'"

    with pytest.raises(JobFailed) as info:
        failing().result(timeout=120)
    assert "MPI program exited with code" in str(info.value)


def test_pure_task_reuses_equal_calls(local):
    @task(pure=True)
    def square(x):
        return x * x

    a, b, c = square(3), square(3), square(4)
    assert a.id == b.id != c.id and a.result(timeout=60) == 9 and c.result(timeout=60) == 16


def pids(comm):
    import os

    return comm.gather(os.getpid())


def test_local_mpi_functions_share_a_rank_pool_unless_they_name_a_launcher(local):
    first = local.mpi(pids, ranks=2).result(timeout=120)
    assert local.mpi(pids, ranks=2).result(timeout=120) == first  # the same ranks served both
    own = local.mpi(pids, ranks=2, launcher="mpirun -np {ranks} --oversubscribe {command}").result(timeout=120)
    assert set(own).isdisjoint(first)  # a launcher of its own: ranks of its own
