"""Files a task of many command jobs leaves on the file system, before and after its logs are packed
(issue 28, "few files at scale"), and what packing costs.

    python bench/files_left.py [--jobs 10000] [--profile local|cpu] [--site site.yaml] [--write bench/results.md]

Each job prints a line to stdout and one to stderr (so both logs are packed, none merely removed).
The packer runs as the reconcile loop would, but at once (its grace period skipped), timed; then every
job's stdout is read back through `job.logs()` and checked.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from htc_notebook import Session, SiteConfig
from htc_notebook.runtime.log_packer import GRACE


def count(top: Path) -> tuple[int, int]:
    """(files, bytes) under `top`."""
    files = size = 0
    for d, _, names in os.walk(top):
        for name in names:
            try:
                size += os.lstat(os.path.join(d, name)).st_size
                files += 1
            except FileNotFoundError:
                pass  # removed meanwhile (the SLURM watch removing an ended array's state files)
    return files, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--profile", default="local")
    ap.add_argument("--site", help="a site file (default: the built-in local site)")
    ap.add_argument("--root", help="data root (default: a temporary directory; on SLURM, one the nodes see)")
    ap.add_argument("--write", help="append the table to this markdown file")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    site = SiteConfig.load(args.site) if args.site else SiteConfig.builtin()
    with tempfile.TemporaryDirectory(dir=args.root) as tmp, Session(tmp, site=site) as s:
        task = s.project("bench").task("files")
        t0 = time.monotonic()
        group = task.submit_batch({"jobName": "echo", "batchSize": args.jobs, "htcJobDefinition": {
            "commands": ["sh", "-c", 'echo "out $HTC_JOB_INDEX"; echo "err $HTC_JOB_INDEX" >&2'],
            "maxVCpus": 1, "maxMemory": 64}}, profile=args.profile)
        group.wait(timeout=24 * 3600)
        ran = time.monotonic() - t0
        assert group.counts()["SUCCEEDED"] == args.jobs, group.counts()
        task_dir = s.storage.task_path("bench", "files")
        state, deadline = task_dir / ".htc" / "slurm", time.monotonic() + 300
        while state.is_dir() and any(n.endswith((".start", ".exit")) for n in os.listdir(state)):
            assert time.monotonic() < deadline, "state files of ended arrays still there after 300 s"
            time.sleep(1)  # the SLURM watch's last polls: state files of ended arrays go
        before = count(task_dir)
        packer = s.parts.reconciler.packer
        t1 = time.monotonic()
        while packer.pack_due(time.time() + GRACE + 1):
            pass
        packed = time.monotonic() - t1
        after = count(task_dir)
        t2 = time.monotonic()
        bad = [j.id for j in group if j.logs() != f"out {j.row.index}\n"]
        read = time.monotonic() - t2
        assert not bad, bad[:10]
    rows = [("jobs", f"{args.jobs:,}"), ("profile", args.profile), ("ran in", f"{ran:.1f} s"),
            ("files in the task before packing", f"{before[0]:,} ({before[1] / 2**20:.1f} MiB)"),
            ("files after packing", f"{after[0]:,} ({after[1] / 2**20:.1f} MiB)"),
            ("packing took", f"{packed:.2f} s ({packed / args.jobs * 1e6:.0f} µs per job)"),
            ("every job's stdout read back (job.logs())", f"{read:.2f} s ({read / args.jobs * 1e6:.0f} µs per job)")]
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n`python bench/files_left.py --jobs {args.jobs} --profile {args.profile}`\n\n{table}")


if __name__ == "__main__":
    main()
