"""Many small MPI tasks: packed in one allocation (htc) against one sbatch job per task.

Both sides run the same 2-rank mpi4py program (each rank sleeps `--seconds`, then an
allreduce) `--tasks` times on the test cluster's `cpu` partition (2 nodes x 2 cores),
in the same run, one side after the other (order alternates with --pairs). The
alternative is what a user without htc_notebook writes: one `sbatch` per task whose
script runs `srun --mpi=pmix -n 2 python task.py`, then waits until squeue is empty.
htc: `task.mpi(fn, ranks=2)` per task on the profile's packed allocation (its MPI rank
pool, started once: see backends/mpi_pool.py), until every result is in the ledger.
Both sides' clocks include getting an allocation and starting MPI.

`--local` compares, on the local backend in one Session, the local rank pool against
one `mpirun` per task (a call naming the launcher template `mpirun -np {ranks} {command}`
gets ranks of its own), alternating. The pool's one-time start is reported apart.

    .venv/bin/python bench/mpi.py [--tasks 200] [--seconds 0.2] [--pairs 1] [--write bench/results.md]
    .venv/bin/python bench/mpi.py --local --tasks 40 --seconds 0.05 --pairs 3 [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/
from slurm import site
from throughput import _write

REPO = Path(__file__).resolve().parents[1]

CORES = 4  # the cpu partition: 2 nodes x 2 cores

TASK_PY = """
import sys, time
from mpi4py import MPI
time.sleep(float(sys.argv[1]))
assert MPI.COMM_WORLD.allreduce(1) == MPI.COMM_WORLD.size
"""


def small(comm, seconds):
    import time

    time.sleep(seconds)
    return comm.allreduce(1)


def run_htc(tasks: int, seconds: float) -> float:
    from htc_notebook import Session

    root = REPO / "test-output" / f"bench-mpi-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site()) as s:
        t = s.project("bench").task("packed")
        t0 = time.perf_counter()
        handles = [t.mpi(small, seconds, ranks=2, profile="cpu", name="small") for _ in range(tasks)]
        assert all(h.result(timeout=3600) == 2 for h in handles)
        return time.perf_counter() - t0


def run_sbatch(tasks: int, seconds: float) -> float:
    work = REPO / "test-output" / f"bench-sbatch-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    (work / "task.py").write_text(TASK_PY)
    script = work / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH -p cpu -n 2 --cpus-per-task=1 --mem-per-cpu=500M -t 5\n"
                      f"srun --mpi=pmix -n 2 {sys.executable} {work}/task.py {seconds}\n")
    t0 = time.perf_counter()
    ids = [subprocess.run(["sbatch", "--parsable", f"--chdir={work}", f"--output={work}/%j.out", str(script)],
                          check=True, capture_output=True, text=True).stdout.strip() for _ in range(tasks)]
    while subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    dt = time.perf_counter() - t0
    failed = subprocess.run(["grep", "-l", "-i", "error", *map(str, work.glob("*.out"))],
                            capture_output=True, text=True)
    assert not failed.stdout, f"sbatch tasks failed: {failed.stdout}"
    return dt


PER_TASK = "mpirun -np {ranks} {command}"  # --local: a launcher of its own, so ranks of its own


def run_local(args) -> str:
    """The local rank pool against one mpirun per task; the summary line."""
    import tempfile

    from htc_notebook import Session, SiteConfig

    site_ = SiteConfig.builtin()
    cores = site_.profile("local").cores_per_node
    with tempfile.TemporaryDirectory() as root, Session(root, site=site_) as s:
        def run(i: int, launcher: str | None) -> float:
            t = s.project("bench").task(f"{'pool' if launcher is None else 'mpirun'}-{i}")
            t0 = time.perf_counter()
            handles = [t.mpi(small, args.seconds, ranks=2, launcher=launcher) for _ in range(args.tasks)]
            assert all(h.result(timeout=3600) == 2 for h in handles)
            return time.perf_counter() - t0

        first = run(-1, None)  # the pool starts once per session: reported, not part of the comparison
        pool, per_task = [], []
        for i in range(args.pairs):
            for launcher in ((None, PER_TASK) if i % 2 == 0 else (PER_TASK, None)):
                (pool if launcher is None else per_task).append(run(i, launcher))
            print(f"pair {i}: pool {pool[-1]:.2f} s, mpirun per task {per_task[-1]:.2f} s", flush=True)
    p, m = statistics.median(pool), statistics.median(per_task)
    floor = -(-args.tasks // max(1, cores // 2)) * args.seconds
    return (f"{args.tasks} two-rank mpi4py tasks of {args.seconds:g} s on the local backend ({cores} cores), "
            f"{args.pairs} alternating pairs: rank pool {p:.2f} s vs one mpirun per task {m:.2f} s (medians); "
            f"the pool is **{m / p:.1f}x** faster. The floor (task time alone) is {floor:.2f} s. The pool starts "
            f"once per session, outside these figures: the first {args.tasks} tasks, which started it, took "
            f"{first:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", action="store_true", help="the local rank pool against one mpirun per task")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=0.2)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--write")
    args = ap.parse_args()
    if args.local:
        summary = run_local(args)
        print(summary)
        if args.write:
            _write(Path(args.write), "mpi-local", summary, " ".join(["python"] + sys.argv))
        return 0
    packed, single = [], []
    for i in range(args.pairs):
        order = (("htc", run_htc), ("sbatch", run_sbatch)) if i % 2 == 0 else (("sbatch", run_sbatch), ("htc", run_htc))
        for name, fn in order:
            dt = fn(args.tasks, args.seconds)
            (packed if name == "htc" else single).append(dt)
            print(f"pair {i}: {name:6s} {args.tasks} tasks in {dt:6.1f} s ({args.tasks / dt:5.2f} tasks/s)", flush=True)
    p, s = statistics.median(packed), statistics.median(single)
    rounds = -(-args.tasks // (CORES // 2))  # 2-rank tasks at once on the partition's cores
    bound = s / (rounds * args.seconds)
    summary = (f"{args.tasks} two-rank mpi4py tasks of {args.seconds} s on partition cpu (2 nodes x 2 cores), "
               f"{args.pairs} pair(s): packed in one allocation (rank pool) {p:.1f} s, one sbatch job per "
               f"task {s:.1f} s; packed is **{s / p:.2f}x** faster (target >= 5x). Bound for any packing on these "
               f"{CORES} cores: {rounds} rounds of {args.seconds:g} s = {rounds * args.seconds:.1f} s, i.e. at most "
               f"{bound:.2f}x against this baseline; reached {s / p / bound:.0%} of it")
    print(summary)
    if args.write:
        _write(Path(args.write), "mpi-packing" + ("" if args.seconds == 0.2 else f"-{args.seconds:g}s"), summary,
               f"python bench/mpi.py --tasks {args.tasks} --seconds {args.seconds} --pairs {args.pairs} "
               f"--write {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
