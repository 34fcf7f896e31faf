"""What TLS costs the local backend: trivial Python calls with the toolkit's TLS on and off, side by side.

Two Sessions in this one process: one as the toolkit always runs (its LocalCluster speaks mutual
TLS, backends/dask_security.py), one whose LocalCluster is made as before TLS (plain TCP, on
loopback too; this bench only, by swapping `LocalBackend._make_cluster` while its backend is made).
They are measured alternately (A B, B A, ...) so machine noise hits both alike:

- start: a new Session to the first call's result (the cluster starts, with TLS its key is made);
- sweep: `task.sweep` of trivial calls to every result in hand (packed, as users get them);
- unpacked: the same, one dask task per call (every call is scheduler and worker messages of its
  own: what TLS adds per message shows most here);
- raw: `Client.map` + `gather` of trivial calls on the same cluster, no toolkit.

Reported: medians, TLS/plain as the ratio of the medians' throughputs (of times for start: above 1 is
slower), and the median of the ratios within each pair (what drift over the run does not bias).

    .venv/bin/python bench/tls.py [--jobs 2000] [--unpacked-jobs 300] [--pairs 7] [--starts 3] \\
        [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from throughput import _write, trivial  # bench/ is this script's directory

from htc_notebook import Session, SiteConfig, Sweep
from htc_notebook.backends import dask_jobs
from htc_notebook.backends.dask_jobs import ALLOWED_FAILURES
from htc_notebook.backends.local import LocalBackend


def plain_cluster(self: LocalBackend):
    """The local backend's cluster as it was made before TLS (loopback, plain TCP)."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=self.profile.cores_per_node, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0",
                        scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES})


@contextmanager
def session(root: str, tls: bool) -> Iterator[Session]:
    """A Session whose local cluster is started now, with the toolkit's TLS or without."""
    original = LocalBackend._make_cluster
    with Session(root, site=SiteConfig.builtin()) as s:
        if not tls:
            LocalBackend._make_cluster = plain_cluster  # bound when the backend is made, just below
        try:
            s.backend(s.profile("local")).client  # noqa: B018 - starts it
        finally:
            LocalBackend._make_cluster = original
        yield s


@contextmanager
def unpacked(on: bool) -> Iterator[None]:
    """Every call its own dask task (no submission is large enough to be probed and packed)."""
    saved = dask_jobs.PROBE_JOBS
    dask_jobs.PROBE_JOBS = 10**9 if on else saved
    try:
        yield
    finally:
        dask_jobs.PROBE_JOBS = saved


def alternate(pairs: int, measure: Callable[[bool, int], float]) -> tuple[list[float], list[float]]:
    """`measure(tls, i)` for TLS on and off, `pairs` times each, alternating which goes first."""
    on, off = [], []
    for i in range(pairs):
        for tls in ((True, False) if i % 2 == 0 else (False, True)):
            (on if tls else off).append(measure(tls, i))
    return on, off


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--unpacked-jobs", type=int, default=300, help="calls per unpacked sweep (~50-100/s here)")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--starts", type=int, default=3, help="pairs of session starts measured")
    ap.add_argument("--write", help="update the `tls` section of this results file")
    args = ap.parse_args()
    rows = []

    def start(tls: bool, i: int) -> float:
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            with session(root, tls) as s:
                assert s.project("bench").task("start").submit(trivial, 1).result(timeout=120) == 2
                return time.perf_counter() - t0

    alternate(1, start)  # warm up: the first start of each kind imports what later ones find loaded
    on, off = alternate(args.starts, start)
    rows.append(("start: new Session to first result", statistics.median(on), statistics.median(off),
                 statistics.median(a / b for a, b in zip(on, off, strict=True)), "s"))
    print(f"start: TLS {on}  plain {off}", flush=True)

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            session(a, True) as with_tls, session(b, False) as without:
        sessions = {True: with_tls, False: without}
        for s in sessions.values():  # warm up workers, imports and both paths
            c = s.backend(s.profile("local")).client
            c.gather(c.map(trivial, range(200)))
            s.project("bench").task("warm").sweep(trivial, Sweep.zip(x=list(range(200)))).results()

        def sweep(no_pack: bool) -> Callable[[bool, int], float]:
            def run(tls: bool, i: int) -> float:
                xs = list(range(args.unpacked_jobs if no_pack else args.jobs))
                task = sessions[tls].project("bench").task(f"{'u' if no_pack else 'p'}-{i}")
                with unpacked(no_pack):
                    t0 = time.perf_counter()
                    out = task.sweep(trivial, Sweep.zip(x=xs)).results()
                    dt = time.perf_counter() - t0
                assert out[-1] == xs[-1] + 1
                return dt
            return run

        def raw(tls: bool, i: int) -> float:
            client = sessions[tls].backend(sessions[tls].profile("local")).client
            xs = range(i * args.jobs, (i + 1) * args.jobs)
            t0 = time.perf_counter()
            out = client.gather(client.map(trivial, xs))
            dt = time.perf_counter() - t0
            assert out[-1] == xs[-1] + 1
            return dt

        for name, measure, n, pairs in (("task.sweep, packed", sweep(False), args.jobs, 2 * args.pairs),
                                        ("task.sweep, unpacked", sweep(True), args.unpacked_jobs, args.pairs),
                                        ("raw Client.map", raw, args.jobs, args.pairs)):
            on, off = alternate(pairs, measure)
            rows.append((f"{name} ({n} calls x {pairs} pairs)", n / statistics.median(on), n / statistics.median(off),
                         statistics.median(b / a for a, b in zip(on, off, strict=True)), "jobs/s"))
            print(f"{name}: TLS {[round(n / t) for t in on]}  plain {[round(n / t) for t in off]}", flush=True)
        workers = len(with_tls.backend(with_tls.profile("local")).client.scheduler_info()["workers"])

    lines = [f"Trivial calls, local backend, LocalCluster with {workers} workers, TLS on vs off alternating in one "
             f"process ({args.starts} pairs of starts after one of warm-up):", "",
             "| measure | TLS (median) | plain TCP (median) | TLS / plain, of medians | TLS / plain, median of pairs |",
             "|---|---|---|---|---|"]
    for name, tls, plain, paired, unit in rows:
        value, what = ("{:.2f} s", "time") if unit == "s" else ("{:.0f} jobs/s", "throughput")
        lines.append(f"| {name} | {value.format(tls)} | {value.format(plain)} | **{tls / plain:.3f}** ({what}) | "
                     f"{paired:.3f} |")
    summary = "\n".join(lines)
    print(summary)
    if args.write:
        _write(Path(args.write), "tls", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
