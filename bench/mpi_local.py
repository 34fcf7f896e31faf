"""Small MPI tasks on the local backend: the rank pool against one `mpirun` per task.

Both sides are `task.mpi(fn, ranks=2)` calls in one Session on this machine, through
the same core slots, alternating in one run. The pool side uses the local profile's
launcher (so the tasks run on the local rank pool); the other side names a launcher
template, `mpirun -np {ranks} {command}`, so each task starts its own ranks, which is
what running each task under mpirun costs.

    .venv/bin/python bench/mpi_local.py [--tasks 40] [--seconds 0.05] [--pairs 3] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from throughput import _write  # noqa: E402

PER_TASK = "mpirun -np {ranks} {command}"


def small(comm, seconds):
    import time

    time.sleep(seconds)
    return comm.allreduce(1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=0.05)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--write")
    args = ap.parse_args()

    from htc_notebook import Session, SiteConfig

    site = SiteConfig.builtin()
    cores = site.profile("local").cores_per_node
    with tempfile.TemporaryDirectory() as root, Session(root, site=site) as s:
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
    summary = (f"{args.tasks} two-rank mpi4py tasks of {args.seconds:g} s on the local backend ({cores} cores), "
               f"{args.pairs} alternating pairs: rank pool {p:.2f} s vs one mpirun per task {m:.2f} s (medians); "
               f"the pool is **{m / p:.1f}x** faster. The floor (task time alone) is {floor:.2f} s. The pool starts "
               f"once per session, outside these figures: the first {args.tasks} tasks, which started it, took "
               f"{first:.2f} s")
    print(summary)
    if args.write:
        _write(Path(args.write), "mpi-local", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
