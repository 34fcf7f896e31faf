"""A layered DAG of trivial Python calls through the ledger: what releasing a ready job costs.

`--layers` x `--width` jobs; each layer is one sweep over the handles of the layer before (a Sweep
ranging over jobs), so each job takes the results of two jobs of the layer before (its own
column's and its neighbour's). Two ways, alternating in one session: as a user gets it, each job
after the first layer goes at once to the session's dask cluster behind its parents' tasks
(`chained`, backends/dask_chain.py); and held in the ledger (`ledger`: the same with that path
switched off in this process), each job WAITING until its parents SUCCEEDED, then released by the
reconcile loop with its first attempt (one write transaction per tick for all that are ready) and
dispatched with its parents' results. Reported: the wall time of the whole DAG each way, against
the same number of independent calls (one `task.sweep`), and the reconcile loop's own time per
job it released (failing dependents, finding ready jobs, releasing, building and handing over
their Launches; the target is under 1 ms).

    .venv/bin/python bench/dag.py [--layers 100] [--width 100] [--pairs 1] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write  # the sibling script's results writer


def step(a: int = 0, b: int = 0, x: int = 0) -> int:
    """One more than the deeper parent (the first layer's `x` is ignored)."""
    return 1 + max(a, b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--unconfined", action="store_true", help="the local profile with `sandbox: none`")
    ap.add_argument("--write", help="update this section of this results file")
    args = ap.parse_args()

    from htc_notebook import Session, SiteConfig, Sweep
    from htc_notebook.runtime import dispatch, reconcile

    spent = {"seconds": 0.0, "released": 0}
    original = reconcile.Reconciler.release_waiting

    def timed(self) -> int:
        t0 = time.perf_counter()
        n = original(self)
        spent["seconds"] += time.perf_counter() - t0
        spent["released"] += n
        return n

    reconcile.Reconciler.release_waiting = timed  # type: ignore[method-assign]
    chaining = dispatch.Dispatcher._send_in_session
    n = args.layers * args.width
    site = (SiteConfig.from_yaml("profiles:\n  local:\n    sandbox: none\n") if args.unconfined
            else SiteConfig.builtin())
    with tempfile.TemporaryDirectory() as root, Session(root, site=site) as session:
        project = session.project("bench")
        project.task("warm").sweep(step, Sweep.zip(x=list(range(200)))).results()

        def dag(i: int, chained: bool) -> float:
            task = project.task(f"dag-{'chained' if chained else 'ledger'}-{i}")
            dispatch.Dispatcher._send_in_session = (  # type: ignore[method-assign]
                chaining if chained else lambda self, task, children: [])
            before = spent["released"]
            t0 = time.perf_counter()
            layer = list(task.sweep(step, Sweep.zip(x=list(range(args.width))), name="l0"))
            for k in range(1, args.layers):
                layer = list(task.sweep(step, Sweep.zip(a=layer, b=layer[1:] + layer[:1]), name=f"l{k}"))
            submitted = time.perf_counter() - t0
            values = [h.result(timeout=3600) for h in layer]
            dt = time.perf_counter() - t0
            assert values == [args.layers] * args.width, values[:5]
            sent = sum(1 for row in task.jobs().rows() if row.spec.afterok)  # each went behind its parents
            print(f"  dag ({'chained' if chained else 'ledger'}): {n} jobs submitted in {submitted:.1f} s, done in "
                  f"{dt:.1f} s; {sent} sent behind their parents' tasks, {spent['released'] - before} released by "
                  f"the reconcile loop", flush=True)
            return dt

        def flat(i: int) -> float:
            task = project.task(f"flat-{i}")
            t0 = time.perf_counter()
            out = task.sweep(step, Sweep.zip(x=list(range(n)))).results()
            dt = time.perf_counter() - t0
            assert len(out) == n
            return dt

        chained_t: list[float] = []
        dag_t: list[float] = []
        flat_t: list[float] = []
        for i in range(args.pairs):
            sides = [("chained", lambda i: dag(i, True), chained_t), ("ledger", lambda i: dag(i, False), dag_t),
                     ("flat", flat, flat_t)]
            for _, side, times in (sides if i % 2 == 0 else sides[::-1]):
                times.append(side(i))
            print(f"round {i}: chained {chained_t[-1]:.1f} s, ledger {dag_t[-1]:.1f} s, flat {flat_t[-1]:.1f} s",
                  flush=True)

    per_release = 1000 * spent["seconds"] / max(1, spent["released"])
    kind = "unconfined" if args.unconfined else "confined"
    summary = (f"{args.layers} x {args.width} layered DAG of trivial {kind} calls (each layer a sweep over the "
               f"last one's handles, each job taking two of their results), {args.pairs} run(s) each way, medians: "
               f"**{statistics.median(chained_t):.1f} s** chained in dask (as submitted), "
               f"{statistics.median(dag_t):.1f} s held in the ledger, against {statistics.median(flat_t):.1f} s for "
               f"the same {n} calls as one independent sweep; held in the ledger, the reconcile loop spent "
               f"**{per_release:.2f} ms per released "
               f"job** ({spent['released']} released, {spent['seconds']:.1f} s in all; target < 1 ms)")
    print(summary)
    if args.write:
        section = "dag-unconfined" if args.unconfined else "dag"
        _write(Path(args.write), section, summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
