"""What the bubblewrap sandbox costs a short command job, against a bare process.

Two ways, side by side in this one process, alternating (A B, B A, ...) so machine noise hits both:
(1) the process alone: `subprocess.run(["true"])` against the same `true` under the sandbox's
    bwrap command line (`backends/sandbox.py::bwrap_argv`), `--jobs` times each;
(2) whole jobs: a batch of `--jobs` `true` jobs on the local backend with `sandbox: none`
    against the same batch with `sandbox: bwrap`, from submit to every job committed.
Reported: milliseconds per job (medians) and the ratios bwrap / bare.

    .venv/bin/python bench/sandbox.py [--jobs 200] [--pairs 5] [--write bench/results.md]
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
from throughput import _write  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--write", help="update the sandbox section of this results file")
    args = ap.parse_args()

    from htc_notebook import Session, SiteConfig
    from htc_notebook.backends.sandbox import JobView, bwrap_argv

    def site(mode: str) -> SiteConfig:
        data = SiteConfig.builtin().model_dump(exclude_defaults=True)
        data["profiles"]["local"]["sandbox"] = mode
        return SiteConfig.model_validate(data)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        view = JobView(str(root), str(root / "t"), str(root / "s"))
        for d in (root / "t" / ".htc" / "checkpoints", root / "s"):
            d.mkdir(parents=True)

        def processes(mode: str) -> float:
            argv = ["true"] if mode == "none" else bwrap_argv(view, ["true"])
            t0 = time.perf_counter()
            for _ in range(args.jobs):
                subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
            return (time.perf_counter() - t0) / args.jobs

        sessions = {mode: Session(root / mode, site=site(mode)) for mode in ("none", "bwrap")}
        runs = iter(range(10**6))

        def jobs(mode: str) -> float:
            task = sessions[mode].project("bench").task(f"run-{next(runs)}")
            t0 = time.perf_counter()
            group = task.submit_batch({"jobName": "true", "batchSize": args.jobs,
                                       "htcJobDefinition": {"commands": ["true"]}})
            group.wait(timeout=600)
            dt = (time.perf_counter() - t0) / args.jobs
            assert group.counts()["SUCCEEDED"] == args.jobs, group.counts()
            return dt

        try:
            jobs("none"), jobs("bwrap")  # warm up both
            times: dict[tuple[str, str], list[float]] = {}
            for i in range(args.pairs):
                order = ("none", "bwrap") if i % 2 == 0 else ("bwrap", "none")
                for what, fn in (("process", processes), ("job", jobs)):
                    for mode in order:
                        times.setdefault((what, mode), []).append(fn(mode))
                print("pair", i, " ".join(f"{w}/{m} {v[-1] * 1e3:.2f} ms" for (w, m), v in times.items()), flush=True)
        finally:
            for s in sessions.values():
                s.close()

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    summary = "\n".join([
        f"{args.jobs} `true` per run x {args.pairs} alternating pairs, local backend, medians:",
        "",
        "| | bare | bwrap sandbox | ratio bwrap/bare |",
        "|---|---|---|---|",
        f"| process alone (subprocess.run) | {med['process', 'none']:.2f} ms | {med['process', 'bwrap']:.2f} ms "
        f"| **{med['process', 'bwrap'] / med['process', 'none']:.2f}** |",
        f"| whole job (submit to committed) | {med['job', 'none']:.2f} ms | {med['job', 'bwrap']:.2f} ms "
        f"| **{med['job', 'bwrap'] / med['job', 'none']:.2f}** |",
    ])
    print(summary)
    if args.write:
        _write(Path(args.write), "sandbox", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
