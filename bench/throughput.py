"""Trivial-task throughput: `task.sweep` against raw `Client.map` on the same LocalCluster.

Both sides run in this one process against one cluster, alternating (A B, B A,
...), so machine noise hits both alike. Each side goes from the user's call to
having every result in hand; the htc side also records every job, attempt and
result durably in the ledger. Reported: the ratio of median throughputs
(htc / raw); the target is >= 0.97. task.sweep packs quick jobs several to a dask
task (see backends/dask_jobs.py); `--no-pack` turns that off to show the per-job cost.

    .venv/bin/python bench/throughput.py [--jobs 2000] [--pairs 7] [--work-ms 0] [--no-pack] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


WORK_SECONDS = 0.0


def trivial(x: int) -> int:
    """x + 1, after busy-working WORK_SECONDS of CPU (0 = a trivial task)."""
    end = time.perf_counter() + WORK_SECONDS
    while time.perf_counter() < end:
        pass
    return x + 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--work-ms", type=float, default=0.0, help="CPU work per job in ms (default 0: trivial)")
    ap.add_argument("--no-pack", action="store_true",
                    help="run every job as its own dask task (measures the per-job overhead packing hides)")
    ap.add_argument("--write", help="update this section of this results file (named after the options)")
    args = ap.parse_args()
    global WORK_SECONDS
    WORK_SECONDS = args.work_ms / 1000
    if args.no_pack:
        from htc_notebook.backends import dask_jobs

        dask_jobs.PROBE_JOBS = 10**9  # no submission is large enough to be probed, so none is packed

    from htc_notebook import Session, SiteConfig, Sweep

    with tempfile.TemporaryDirectory() as root, Session(root, site=SiteConfig.builtin()) as session:
        project = session.project("bench")
        client = session.backend(session.profile("local")).client
        client.gather(client.map(trivial, range(200)))  # warm up workers and imports

        def raw(i: int) -> float:
            xs = range(i * args.jobs, (i + 1) * args.jobs)
            t0 = time.perf_counter()
            out = client.gather(client.map(trivial, xs))
            dt = time.perf_counter() - t0
            assert out[-1] == xs[-1] + 1
            return dt

        def htc(i: int) -> float:
            xs = list(range(i * args.jobs, (i + 1) * args.jobs))
            task = project.task(f"run-{i}")
            t0 = time.perf_counter()
            out = task.sweep(trivial, Sweep.zip(x=xs)).results()
            dt = time.perf_counter() - t0
            assert out[-1] == xs[-1] + 1 and len(out) == len(xs)
            return dt

        htc(10_000)  # warm up the htc path too
        raw_t, htc_t = [], []
        for i in range(args.pairs):
            if i % 2 == 0:
                raw_t.append(raw(i)), htc_t.append(htc(i))
            else:
                htc_t.append(htc(i)), raw_t.append(raw(i))
            print(f"pair {i}: raw {args.jobs / raw_t[-1]:8.0f} jobs/s   htc {args.jobs / htc_t[-1]:8.0f} jobs/s",
                  flush=True)
        workers = len(client.scheduler_info()["workers"])

    raw_med, htc_med = args.jobs / statistics.median(raw_t), args.jobs / statistics.median(htc_t)
    ratio = htc_med / raw_med
    kind = (f"{args.work_ms:g} ms CPU" if args.work_ms else "trivial") + (" unpacked" if args.no_pack else "")
    summary = (f"{args.jobs} {kind} jobs x {args.pairs} alternating pairs, LocalCluster with {workers} "
               f"workers: raw Client.map {raw_med:.0f} jobs/s (median), task.sweep {htc_med:.0f} jobs/s "
               f"(median); ratio htc/raw = **{ratio:.3f}** (target >= 0.97)")
    print(summary)
    if args.write:
        section = ("throughput" + (f"-{args.work_ms:g}ms" if args.work_ms else "")
                   + ("-unpacked" if args.no_pack else ""))
        _write(Path(args.write), section, summary, " ".join(["python"] + sys.argv))
    return 0


def _write(path: Path, section: str, summary: str, command: str) -> None:
    """Replace (or add) one section of bench/results.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    block = (f"{start}\n## {section}\n\n{time.strftime('%Y-%m-%d')}, {platform.node()} "
             f"({platform.machine()}, Python {platform.python_version()}).\n\n"
             f"Command: `{command}`\n\n{summary}\n{end}")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
