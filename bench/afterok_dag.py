"""A 3-generation DAG of SLURM command batches on the test cluster (make slurm-up), held in the
ledger against sent at once with sbatch --dependency=afterok, alternating, side by side in one run.

Each generation is a batch of `--width` jobs (`sleep --sleep`), every job of generation k+1 after
every job of generation k; the last generation is one job. Parents with `retries=1` keep their
children in the ledger (released once they SUCCEEDED, then sbatch'ed); with `retries=0` the children
are queued at once behind them (afterok). Figures: wall time from the first submit to the last
job's end, and the gaps between generations (first start of generation k+1 less the last end of
generation k), summed over the two hand-overs.

    .venv/bin/python bench/afterok_dag.py [--pairs 3] [--width 2] [--sleep 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO)]  # this checkout's htc_notebook, whatever the venv installed
from slurm import site  # noqa: E402 - after the path is set


def _batch(name: str, size: int, seconds: float) -> dict:
    return {"jobName": name, "batchSize": size, "htcJobDefinition": {"commands": ["sleep", str(seconds)],
                                                                      "maxVCpus": 1, "maxMemory": 64}}


def run_dag(session, how: str, width: int, seconds: float) -> tuple[float, float]:
    """(wall s, summed gap s) of one DAG; `how`: "ledger" (parents retries=1) or "afterok" (0)."""
    retries = 1 if how == "ledger" else 0
    task = session.project("bench").task(f"dag-{how}-{uuid.uuid4().hex[:6]}")
    t0 = time.time()
    one = task.submit_batch(_batch("one", width, seconds), profile="cpu", retries=retries)
    two = task.submit_batch(_batch("two", width, seconds), profile="cpu", retries=retries, after=list(one))
    three = task.submit_batch(_batch("three", 1, seconds), profile="cpu", after=list(two))
    sent_at_once = three[0].row.native_id is not None  # in SLURM before its grandparents ended
    three.wait(timeout=600)
    rows = [[h.row for h in g] for g in (one, two, three)]
    assert all(r.status == "SUCCEEDED" for g in rows for r in g), [r.reason for g in rows for r in g]
    gaps = sum(min(r.started for r in later) - max(r.ended for r in earlier)
               for earlier, later in zip(rows, rows[1:], strict=False))
    wall = max(r.ended for r in rows[2]) - t0
    print(f"{how:8s} wall {wall:6.2f} s, gaps {gaps:5.2f} s ({'afterok' if sent_at_once else 'ledger'})", flush=True)
    return wall, gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=1.0)
    args = ap.parse_args()
    from htc_notebook import Session

    results: dict[str, list[tuple[float, float]]] = {"ledger": [], "afterok": []}
    with Session(REPO / "test-output" / f"bench-afterok-{uuid.uuid4().hex[:8]}", site=site()) as s:
        for _ in range(args.pairs):
            for how in ("ledger", "afterok"):
                results[how].append(run_dag(s, how, args.width, args.sleep))
    print(f"\n3 generations ({args.width}, {args.width}, 1 jobs of sleep {args.sleep}), {args.pairs} pairs, "
          "alternating, medians:")
    print("| path | wall s | gaps between generations s |\n|---|---|---|")
    for how, got in results.items():
        print(f"| {how} | {statistics.median(w for w, _ in got):.2f} | {statistics.median(g for _, g in got):.2f} |")


if __name__ == "__main__":
    main()
