"""SLURM benchmarks on the test cluster (make slurm-up), each side by side in one run.

(a) launch-to-first-result of a profile's pilot (`task.submit(fn, profile=P).result()` in a
    fresh Session) against plain dask-jobqueue (`SLURMCluster` + `scale(1)` +
    `client.submit(fn).result()`) with the same options (TLS included), alternating; each sample runs in a
    fresh process (timed from just before the cluster/session is made), so neither side
    inherits the other's event loop or pilots; ratio htc/plain (target <= 1.05).
(b) submitting an N-job command batch as job arrays (`task.submit_batch`) against N single
    `sbatch` calls of the same job (all held, then cancelled, so nothing runs); ratio.

    .venv/bin/python bench/slurm.py [--pairs 3] [--jobs 10000] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/
from throughput import _write

REPO = Path(__file__).resolve().parents[1]


def first_result() -> str:
    import socket

    return socket.gethostname()


def site():
    import yaml

    from htc_notebook.backends.slurm.discover import discover
    from htc_notebook.spec import SiteConfig

    return SiteConfig.from_yaml(yaml.safe_dump(discover(scheduler_host="10.77.0.1")))


def latency_htc(site, root: Path) -> float:
    # the libraries both sides use are imported before the clock starts, as latency_plain does
    import dask_jobqueue  # noqa: F401 - imported for the clock's sake, not used
    import distributed  # noqa: F401 - likewise

    from htc_notebook import Session

    t0 = time.perf_counter()
    with Session(root / uuid.uuid4().hex[:8], site=site) as s:
        host = s.project("bench").task("latency").submit(first_result, profile="cpu").result(timeout=300)
        dt = time.perf_counter() - t0
    assert host in ("node1", "node2")
    return dt


def latency_plain(site) -> float:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from htc_notebook.backends.dask_security import cluster_security, forget_credentials, private_directory
    from htc_notebook.backends.slurm.pilots import pilot_options

    logs = str(REPO / "test-output" / "bench-slurm" / "plain-logs")  # as htc keeps its pilots' logs
    t0 = time.perf_counter()
    # TLS as htc's pilots have it (dask-jobqueue's own security= and shared_temp_directory)
    tls = private_directory(REPO / "test-output" / "bench-slurm" / "dask-tls")
    with SLURMCluster(**pilot_options(site.profile("cpu"), log_directory=logs), security=cluster_security(),
                      shared_temp_directory=str(tls)) as cluster, Client(cluster) as client:
        cluster.scale(jobs=1)
        host = client.submit(first_result).result(timeout=300)
        dt = time.perf_counter() - t0
    forget_credentials(tls, cluster)
    assert host in ("node1", "node2")
    return dt


def submit_arrays(site, root: Path, n: int) -> float:
    from htc_notebook import Session

    with Session(root / uuid.uuid4().hex[:8], site=site) as s:
        task = s.project("bench").task("arrays")
        t0 = time.perf_counter()
        group = task.submit_batch({"jobName": "held", "batchSize": n,
                                   "htcJobDefinition": {"commands": ["true"]}}, profile="cpu")
        dt = time.perf_counter() - t0
        arrays = {j.row.native_id.split("_")[0] for j in (group[0], group[-1])}
        subprocess.run(["scancel", *sorted(arrays)], check=False)
        s.cancel(group.ids)
    return dt


def submit_singles(root: Path, n: int) -> float:
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ids = []
    for _ in range(n):
        out = subprocess.run(["sbatch", "--parsable", "--hold", "-p", "cpu", f"--output={root}/single-%j.log",
                              "--wrap", "true"], capture_output=True, text=True, check=True)
        ids.append(out.stdout.strip().split(";")[0])
    dt = time.perf_counter() - t0
    for k in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[k:k + 500]], check=False)
    return dt


def sample(which: str) -> float:
    """One latency sample in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--one", which], capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("seconds=")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{which} sample failed: {out.stderr[-2000:]}")
    return float(lines[-1].split("=")[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=["htc", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--write")
    args = ap.parse_args()
    s = site()
    root = REPO / "test-output" / "bench-slurm"
    if args.one:
        print(f"seconds={latency_htc(s, root) if args.one == 'htc' else latency_plain(s)}")
        return 0
    command = " ".join(["python"] + sys.argv)
    # Both sides import dask from bytecode that pip compiled at install time; compile this
    # checkout's modules likewise (under PYTHONDONTWRITEBYTECODE=1 an editable install never does,
    # and each fresh sample process would compile them from source again).
    compileall.compile_dir(str(REPO / "htc_notebook"), quiet=1)

    htc_t, plain_t = [], []
    for i in range(args.pairs):
        for which in (("htc", "plain") if i % 2 == 0 else ("plain", "htc")):
            (htc_t if which == "htc" else plain_t).append(sample(which))
        print(f"pair {i}: htc {htc_t[-1]:.2f} s, plain dask-jobqueue {plain_t[-1]:.2f} s", flush=True)
    ratio = statistics.median(htc_t) / statistics.median(plain_t)
    diff = statistics.median(h - p for h, p in zip(htc_t, plain_t, strict=True))
    a = (f"launch-to-first-result on profile cpu, {args.pairs} alternating pairs: htc "
         f"{statistics.median(htc_t):.2f} s (range {min(htc_t):.2f}-{max(htc_t):.2f}) vs plain dask-jobqueue "
         f"{statistics.median(plain_t):.2f} s (range {min(plain_t):.2f}-{max(plain_t):.2f}), medians; "
         f"median paired difference {diff * 1000:+.0f} ms; ratio htc/plain = **{ratio:.3f}** (target <= 1.05)")
    print(a)

    if args.jobs <= 0:
        if args.write:
            _write(Path(args.write), "slurm-latency", a, command)
        return 0
    arrays = submit_arrays(s, root, args.jobs)
    singles = submit_singles(root, args.jobs)
    b = (f"submitting {args.jobs} command jobs: as job arrays {arrays:.2f} s (ledger + scripts + sbatch), "
         f"as {args.jobs} single sbatch calls {singles:.2f} s; arrays are **{singles / arrays:.1f}x** faster")
    print(b)
    if args.write:
        _write(Path(args.write), "slurm", a + "\n\n" + b, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
