"""What confining a Python call to its task (backends/call_sandbox.py) costs, against running it bare.

Side by side in this one process, alternating (A B, B A, ...) so machine noise hits both:
(1) the call alone, `--calls` times: `fn()` in this process; the same in a confined child
    (`run_confined`: forks, namespaces, mounts); and the obvious alternative, a new interpreter per
    call under bwrap that imports what a call needs at least (cloudpickle, the toolkit's worker
    module; the user's own modules would come on top);
(2) whole jobs on the local backend, submit to every result committed, `sandbox: none` against
    `sandbox: bwrap`: a sweep of `--jobs` calls of 20 ms each (one per dask task), and a sweep of
    10 x `--jobs` trivial calls (packed several to a dask task: one confined child per pack).
Reported: milliseconds per call or job (medians) and the ratios to bare.

    .venv/bin/python bench/call_sandbox.py [--calls 200] [--jobs 200] [--pairs 5] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write


def nap(i: int) -> int:
    time.sleep(0.02)
    return i


def nothing(i: int) -> int:
    return i


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--write", help="update the call-sandbox section of this results file")
    args = ap.parse_args()

    import cloudpickle

    from htc_notebook import Session, SiteConfig, Sweep
    from htc_notebook.backends.call_sandbox import run_confined
    from htc_notebook.backends.sandbox import JobView, bwrap_argv

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def site(mode: str) -> SiteConfig:
        data = SiteConfig.builtin().model_dump(exclude_defaults=True)
        data["profiles"]["local"]["sandbox"] = mode
        return SiteConfig.model_validate(data)

    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        view = JobView(str(root / "data"), str(root / "data/projects/p/tasks/t"), str(root / "data/projects/p/shared"))
        for d in (view.checkpoints, view.shared_dir):
            Path(d).mkdir(parents=True)
        # the least a call run by a new interpreter needs: cloudpickle and the toolkit's worker module
        interpreter = bwrap_argv(view, [sys.executable, "-c", "import cloudpickle, htc_notebook.backends.worker"])
        calls = {"bare": lambda: nothing(1), "confined": lambda: run_confined(view, lambda: nothing(1)),
                 "interpreter": lambda: subprocess.run(interpreter, check=True, stdin=subprocess.DEVNULL)}

        def alone(mode: str) -> float:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                calls[mode]()
            return (time.perf_counter() - t0) / args.calls

        modes = {"none": "bare", "bwrap": "confined"}
        sessions = {mode: Session(root / mode, site=site(mode)) for mode in modes}
        runs = iter(range(10**6))

        def sweep(mode: str, fn, n: int) -> float:
            task = sessions[mode].project("bench").task(f"run-{next(runs)}")
            t0 = time.perf_counter()
            group = task.sweep(fn, Sweep.grid(i=list(range(n))))
            values = group.results(timeout=900)
            dt = (time.perf_counter() - t0) / n
            assert values == list(range(n)), group.counts()
            return dt

        try:
            for mode in modes:
                sweep(mode, nothing, 20)  # warm up: the cluster and its workers start
            for i in range(args.pairs):
                order = list(modes) if i % 2 == 0 else list(modes)[::-1]
                forward = ["bare", "confined", "interpreter"]
                for mode in (forward if i % 2 == 0 else forward[::-1]):
                    times.setdefault(("alone", mode), []).append(alone(mode))
                for mode in order:
                    times.setdefault(("nap", modes[mode]), []).append(sweep(mode, nap, args.jobs))
                    times.setdefault(("quick", modes[mode]), []).append(sweep(mode, nothing, 10 * args.jobs))
                print("pair", i, " ".join(f"{w}/{m} {v[-1] * 1e3:.3f} ms" for (w, m), v in times.items()), flush=True)
        finally:
            for s in sessions.values():
                s.close()

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    def a(m):
        return med["alone", m]

    summary = "\n".join([
        f"{args.pairs} alternating rounds, local backend (2 dask workers), medians:",
        "",
        "| per call or job | bare | confined | confined/bare |",
        "|---|---|---|---|",
        f"| the call alone ({args.calls} calls) | {a('bare'):.4f} ms | {a('confined'):.2f} ms "
        f"| +{a('confined') - a('bare'):.2f} ms |",
        *[f"| {label} | {med[k, 'bare']:.2f} ms | {med[k, 'confined']:.2f} ms "
          f"| **{med[k, 'confined'] / med[k, 'bare']:.2f}** |"
          for label, k in ((f"sweep of {args.jobs} calls of 20 ms (submit to committed)", "nap"),
                           (f"sweep of {10 * args.jobs} trivial calls, packed", "quick"))],
        "",
        f"The alternative, a new interpreter per call under bwrap importing cloudpickle and the toolkit's "
        f"worker module: {a('interpreter'):.2f} ms per call, **{a('interpreter') / a('confined'):.1f}x** "
        "the confined fork (measured in this benchmark's process, larger than a worker: a fork costs more here).",
    ])
    print(summary)
    if args.write:
        _write(Path(args.write), "call-sandbox", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
