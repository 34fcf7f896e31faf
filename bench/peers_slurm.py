"""This toolkit against its peers on the SLURM test cluster's `cpu` partition (two nodes of 2 cores):
the same workloads through htc (pilots for Python calls; commands on the pilots too, `commands: pilots`,
and, as `htc-arrays`, as job arrays, the default), plain
dask-jobqueue (`SLURMCluster`, two pilot jobs), Parsl (HighThroughputExecutor on a SlurmProvider,
two blocks) and submitit (`map_array`), each peer from PyPI in a venv of its own (bench/peers.py
`--setup` makes them). Each side runs in a fresh process per round, sides alternating; medians.

Workloads: `--calls` trivial Python calls; `--cmds` `true` commands (Parsl bash apps; htc a job
batch; dask-jobqueue and submitit run functions that call `true`); a chain of `--chain` calls each
taking the last one's value. Times from the side's start (its pilots or blocks asked for) to every
result in hand, so the pilots' start-up is in the first workload only, as a user meets it.

    .venv/bin/python bench/peers_slurm.py [--rounds 2] [--calls 400] [--cmds 400] [--chain 20]
        [--write bench/results.md]

The cluster must be up (`make slurm-up`). HyperQueue and executorlib's SLURM executor are not run
here: HyperQueue's PyPI package brings no `hq` binary to start workers in SLURM jobs, and
executorlib's SLURM path needs flux or pysqa, which this cluster does not have.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("PEERS_VENVS", "/work/peer-venvs"))
HOST = "10.77.0.1"  # the test cluster's bridge: where the nodes reach this machine
SIDES = ("htc", "htc-arrays", "dask-jobqueue", "parsl", "submitit")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def inc(x: int) -> int:
    return x + 1


def run_true(_: int) -> int:
    return subprocess.run(["true"], check=False).returncode


def step(prev: int) -> int:
    return prev + 1


def htc_side(a: argparse.Namespace, work: Path, commands: str = "pilots") -> dict:
    import yaml

    from htc_notebook import Session, SiteConfig, Sweep
    from htc_notebook.backends.slurm.discover import discover

    found = discover(scheduler_host=HOST)
    found["profiles"]["cpu"]["commands"] = commands
    site = SiteConfig.from_yaml(yaml.safe_dump(found))
    out: dict = {}
    t0 = time.perf_counter()
    with Session(work / "root", site=site) as s:
        project = s.project("peers")
        values = project.task("calls").sweep(inc, Sweep.zip(x=list(range(a.calls))), profile="cpu").results(
            timeout=a.timeout)
        assert values == [x + 1 for x in range(a.calls)]
        out["calls"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        group = project.task("cmds").submit_batch({"jobName": "true", "batchSize": a.cmds,
                                                   "htcJobDefinition": {"commands": ["true"]}}, profile="cpu")
        group.wait(timeout=a.timeout)
        assert group.counts()["SUCCEEDED"] == a.cmds, group.counts()
        out["cmds"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        task = project.task("chain")
        h = task.submit(step, 0, profile="cpu")
        for _ in range(a.chain - 1):
            h = task.submit(step, h, profile="cpu")
        assert h.result(timeout=a.timeout) == a.chain
        out["chain"] = time.perf_counter() - t2
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out["version"] = f"htc_notebook {commit} (commands: {commands})"
    return out


def dask_side(a: argparse.Namespace, work: Path) -> dict:
    import dask_jobqueue
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    out: dict = {}
    t0 = time.perf_counter()
    with SLURMCluster(queue="cpu", cores=2, processes=2, memory="1GiB", walltime="00:20:00",
                      python=sys.executable, log_directory=str(work / "logs"),
                      scheduler_options={"host": HOST, "dashboard_address": ":0"}) as cluster, Client(cluster) as c:
        cluster.scale(jobs=2)
        assert c.gather(c.map(inc, range(a.calls))) == [x + 1 for x in range(a.calls)]
        out["calls"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        assert c.gather(c.map(run_true, range(a.cmds))) == [0] * a.cmds
        out["cmds"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        f = c.submit(step, 0)
        for _ in range(a.chain - 1):
            f = c.submit(step, f)
        assert f.result() == a.chain
        out["chain"] = time.perf_counter() - t2
    out["version"] = f"dask-jobqueue {dask_jobqueue.__version__}"
    return out


def parsl_side(a: argparse.Namespace, work: Path) -> dict:
    import parsl
    from parsl import bash_app, python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher
    from parsl.providers import SlurmProvider

    config = Config(run_dir=str(work / "runinfo"), executors=[HighThroughputExecutor(
        label="htex", address=HOST, max_workers_per_node=2, provider=SlurmProvider(
            partition="cpu", nodes_per_block=1, init_blocks=2, min_blocks=0, max_blocks=2, walltime="00:20:00",
            launcher=SingleNodeLauncher(), worker_init=f"export PATH={Path(sys.executable).parent}:$PATH"))])
    out: dict = {}
    t0 = time.perf_counter()
    with parsl.load(config):
        app = python_app(inc, executors=["htex"])
        assert [f.result() for f in [app(x) for x in range(a.calls)]] == [x + 1 for x in range(a.calls)]
        out["calls"] = time.perf_counter() - t0

        def true_cmd():
            return "true"

        true = bash_app(true_cmd, executors=["htex"])
        t1 = time.perf_counter()
        assert [f.result() for f in [true() for _ in range(a.cmds)]] == [0] * a.cmds
        out["cmds"] = time.perf_counter() - t1
        chained = python_app(step, executors=["htex"])
        t2 = time.perf_counter()
        f = chained(0)
        for _ in range(a.chain - 1):
            f = chained(f)
        assert f.result() == a.chain
        out["chain"] = time.perf_counter() - t2
    out["version"] = f"parsl {parsl.__version__}"
    return out


def submitit_side(a: argparse.Namespace, work: Path) -> dict:
    import submitit

    ex = submitit.AutoExecutor(folder=str(work / "submitit"), cluster="slurm")
    ex.update_parameters(slurm_partition="cpu", timeout_min=20, cpus_per_task=1, mem_gb=0.2,
                         slurm_array_parallelism=4)
    out: dict = {}
    t0 = time.perf_counter()
    jobs = ex.map_array(inc, list(range(a.calls)))
    assert [j.result() for j in jobs] == [x + 1 for x in range(a.calls)]
    out["calls"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    jobs = ex.map_array(run_true, list(range(a.cmds)))
    assert [j.result() for j in jobs] == [0] * a.cmds
    out["cmds"] = time.perf_counter() - t1
    out["version"] = f"submitit {submitit.__version__}"  # no chain: a job takes no other job's value
    return out


KINDS = {"htc": htc_side, "htc-arrays": lambda a, work: htc_side(a, work, "arrays"), "dask-jobqueue": dask_side,
         "parsl": parsl_side, "submitit": submitit_side}


def python_of(side: str) -> str:
    return sys.executable if side in ("htc", "htc-arrays", "dask-jobqueue") else str(VENVS / side / "bin" / "python")


def one(side: str, a: argparse.Namespace) -> dict:
    work = REPO / "test-output" / "peers-slurm" / f"{side}-{uuid.uuid4().hex[:8]}"  # seen by the nodes
    work.mkdir(parents=True)
    argv = [python_of(side), __file__, "--side", side, "--work", str(work), "--calls", str(a.calls),
            "--cmds", str(a.cmds), "--chain", str(a.chain), "--timeout", str(a.timeout)]
    # the side's venv first on PATH: Parsl starts its interchange as a command (`interchange.py`)
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench"),
           "PATH": f"{Path(python_of(side)).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3 * a.timeout, env=env, cwd=work)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer in {3 * a.timeout:.0f} s"}
    finally:
        scancel_under(work)  # what the side left in the queue (only its own: others may share the cluster)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PEERS-RESULT ")), None)
    if line is None:
        return {"error": (done.stderr.strip().splitlines() or ["no result"])[-1][:300]}
    return json.loads(line.removeprefix("PEERS-RESULT "))


def scancel_under(work: Path) -> None:
    """Cancel the queued jobs whose working directory is `work` or below it."""
    queue = subprocess.run(["squeue", "-h", "-u", str(os.getuid()), "-o", "%i|%Z"], capture_output=True, text=True)
    mine = [job for job, _, cwd in (ln.partition("|") for ln in queue.stdout.splitlines())
            if cwd == str(work) or cwd.startswith(f"{work}/")]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def table(results: dict[str, list[dict]], a: argparse.Namespace) -> str:
    def med(side: str, key: str) -> float | None:
        xs = [r[key] for r in results[side] if r.get(key) is not None]
        return statistics.median(xs) if xs else None

    lines = [f"{a.rounds} rounds, sides alternating, each a fresh process; medians. {a.calls} trivial Python calls "
             f"(from the start: pilots or blocks asked for), then {a.cmds} `true` commands, then a chain of "
             f"{a.chain} calls. Seconds (lower is better); the ratio is the side's time over htc's (commands on "
             "pilots; above 1: htc is faster).", "",
             "| side | calls (cold) | `true` commands | chain | errors |", "|---|---|---|---|---|"]
    htc = {k: med("htc", k) for k in ("calls", "cmds", "chain")}
    for side, runs in results.items():
        version = next((r["version"] for r in runs if "version" in r), side)
        cells = []
        for key in ("calls", "cmds", "chain"):
            m = med(side, key)
            ratio = f" ({m / htc[key]:.2f})" if m is not None and htc[key] and side != "htc" else ""
            cells.append("n/a" if m is None else f"{m:.1f} s{ratio}")
        errors = "; ".join(sorted({r["error"] for r in runs if "error" in r}))
        lines.append(f"| {version} | {' | '.join(cells)} | {errors} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--cmds", type=int, default=400)
    ap.add_argument("--chain", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--write", help="update the section `peers-slurm` of this results file")
    a = ap.parse_args()
    if a.side:
        out = KINDS[a.side](a, Path(a.work))
        print("PEERS-RESULT " + json.dumps(out), flush=True)
        return 0
    sides = a.sides.split(",")
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(a.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            res = one(side, a)
            results[side].append(res)
            print(f"round {r} {side}: {res}", flush=True)
    text = table(results, a)
    print(text)
    if a.write:
        from throughput import _write

        _write(Path(a.write), "peers-slurm", text, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
