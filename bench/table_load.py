"""A live table over a big task, side by side across code trees: what its first load and a refresh
cost the kernel, and what the kernel keeps.

For each size, each tree (a checkout given by its path, run with it first on PYTHONPATH) runs in
a fresh process, trees alternating: a fresh data root gets N command jobs (not timed); then a
`JobsTable` is built (its first load: wall ms and the peak RSS it adds), a browser connects (the
"ready" message: bytes and messages it is sent), 1,000 jobs start and the next refresh runs (kernel
CPU ms, bytes); at the end, the RSS the table holds. Bytes are JSON-encoded message content
(no Jupyter envelope). Medians over --rounds.

    .venv/bin/python bench/table_load.py --trees /work/main,. --sizes 100000,1000000 [--rounds 2]
        [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def one(n: int) -> dict:
    """In this process: the figures for one table over n jobs."""
    import ipywidgets as w

    from htc_notebook import Session, SiteConfig
    from htc_notebook.ledger import AttemptStart, NewJob
    from htc_notebook.spec import JobSpec
    from htc_notebook.ui.jobs_widget import JobsTable

    sent: list[int] = []
    w.Widget._send = lambda self, msg, buffers=None: sent.append(len(json.dumps(msg, separators=(",", ":"))))
    with tempfile.TemporaryDirectory(prefix="htc-table-") as root, Session(root, site=SiteConfig.builtin()) as s:
        t = s.project("bench").task("table")
        ids = s.ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"T": round(i / 7, 3), "seed": i % 9},
                                              spec=JobSpec(), index=i, profile="local") for i in range(n)])
        before = _rss_mb()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        t0 = time.perf_counter()
        table = JobsTable(s.parts, t.id, interval=3600)
        load_ms = (time.perf_counter() - t0) * 1e3
        load_peak = _rss_mb("VmHWM") - before
        sent.clear()
        table._on_front_end(table, {"t": "ready"}, [])
        ready_bytes, ready_msgs = sum(sent), len(sent)
        s.ledger.start_attempts([AttemptStart(i, host=f"node{i % 4}", native_id=None, log_out=None, log_err=None,
                                              status="RUNNING") for i in ids[:1000]])
        model = table.model
        if hasattr(model, "due"):  # a table that re-reads its window (and counts) when due: due now
            model.due = 0
        sent.clear()
        c0 = time.process_time()
        table.refresh()
        refresh_ms = (time.process_time() - c0) * 1e3
        refresh_bytes = sum(sent)
        held = _rss_mb() - before
        table.close()
    return {"n": n, "load_ms": load_ms, "load_peak_mb": load_peak, "ready_kb": ready_bytes / 1e3,
            "ready_msgs": ready_msgs, "refresh_ms": refresh_ms, "refresh_kb": refresh_bytes / 1e3, "held_mb": held}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=".", help="checkouts to compare, comma-separated")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run in this process
    ap.add_argument("--write")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    trees = [str(Path(p).resolve()) for p in args.trees.split(",")]
    heads = {t: subprocess.run(["git", "-C", t, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
             .stdout.strip() for t in trees}
    results: dict[tuple[str, int], list[dict]] = {}
    for n in [int(x) for x in args.sizes.split(",")]:
        for r in range(args.rounds):
            for tree in (trees if r % 2 == 0 else trees[::-1]):
                env = {**os.environ, "PYTHONPATH": tree}
                out = subprocess.run([sys.executable, __file__, "--one", str(n)], env=env, capture_output=True,
                                     text=True, check=True).stdout
                results.setdefault((tree, n), []).append(json.loads(out.splitlines()[-1]))
                print(tree, results[(tree, n)][-1], flush=True)

    def med(tree: str, n: int, key: str) -> float:
        return statistics.median(x[key] for x in results[(tree, n)])

    lines = ["| tree | jobs | first load | its peak RSS growth | a browser connects | 1,000 start: next refresh "
             "| RSS the table holds |", "|---|---|---|---|---|---|---|"]
    for n in sorted({n for _, n in results}):
        for tree in trees:
            lines.append(f"| {heads[tree]} ({tree}) | {n:,} | {med(tree, n, 'load_ms'):.0f} ms "
                         f"| {med(tree, n, 'load_peak_mb'):.0f} MB | {med(tree, n, 'ready_kb'):.0f} kB in "
                         f"{med(tree, n, 'ready_msgs'):.0f} messages | {med(tree, n, 'refresh_ms'):.1f} ms CPU, "
                         f"{med(tree, n, 'refresh_kb'):.1f} kB | {med(tree, n, 'held_mb'):.0f} MB |")
    summary = (f"Each tree in a fresh process per size and round ({args.rounds} rounds, trees alternating), "
               f"medians:\n\n" + "\n".join(lines))
    print(summary)
    if args.write:
        _write(Path(args.write), "table-load", summary,
               f"python bench/table_load.py --trees {args.trees} --sizes {args.sizes} --rounds {args.rounds} "
               f"--write {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
