"""The same local workloads through this toolkit and its peers (issue 28, item 1, the local part).

Sides: htc (`Session(tmp).project(...).task(...)`: `task.sweep`, `task.submit_batch`, handles as
arguments), plain dask (`distributed.Client.map` on a 2-worker LocalCluster; what dask-jobqueue is
off a scheduler), executorlib (`SingleNodeExecutor`, block allocation, 2 workers), Parsl
(`HighThroughputExecutor` on a `LocalProvider`, 2 workers), submitit (`LocalExecutor`, its real
local path: `DebugExecutor` runs jobs in the calling process, for debugging), HyperQueue (its
Python package's `LocalCluster`: server and one 2-core worker). Each peer is installed from PyPI
into a venv of its own (`--setup` makes /work/peer-venvs/<name>); htc runs from this checkout with
the interpreter running this script.

Every round runs each side once, in a fresh process of its own (the order alternates between
rounds), which does, in turn:
  first   spawn -> executor up -> one call submitted -> its result (seconds, cold);
  cold    spawn -> `--calls` trivial calls x -> x + 1, all results in hand (includes start-up and
          the one call above);
  warm    `--calls` more trivial calls on the same executor;
  cmds    `--cmds` `true` commands (Parsl bash apps, HyperQueue programs, htc a job batch;
          executorlib, dask and submitit run functions that call subprocess.run(["true"]));
  cpu     `--cpu-calls` calls of `--work-ms` of CPU each;
  chain   `--chain` calls, each taking the previous one's future/handle as its argument (htc,
          dask, executorlib, Parsl; submitit and HyperQueue pass no values between jobs).
Each side asserts its results (sums, exit codes, the chain's end value) so a broken run posts no
figure. Sides whose every call starts interpreters (submitit, HyperQueue functions) run at most
`--slow-cap` calls per call workload, and submitit as many commands (the table says so).
HyperQueue's Python client waits for a job in steps of about a second (`wait_for_jobs`; the `hq`
binary, whose `hq job wait` could do better, is not on PyPI), so its times are rounded up to that.
Reported: medians over rounds, and ratios of speed htc/peer (above 1: htc is faster).

    python bench/peers.py --setup                 # the peer venvs (pip, once)
    .venv/bin/python bench/peers.py [--rounds 3] [--calls 2000] [--cmds 500] [--cpu-calls 300] [--chain 100]
        [--sides htc,dask,executorlib,parsl,submitit,hyperqueue] [--write bench/results.md]
    full size (issue 28): --calls 10000 --cmds 2000 --cpu-calls 1000 --chain 1000
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = Path(os.environ.get("PEER_VENVS", "/work/peer-venvs"))
SIDES = ["htc", "dask", "executorlib", "parsl", "submitit", "hyperqueue"]
PACKAGES = {"dask": ["dask", "distributed"], "executorlib": ["executorlib"], "parsl": ["parsl"],
            "submitit": ["submitit"], "hyperqueue": ["hyperqueue"]}
PHASES = ["first", "cold", "warm", "cmds", "cpu", "chain"]


# ---------------------------------------------------------------- the work (pickled by value from __main__)

def inc(x: int) -> int:
    return x + 1


def busy(x: int, ms: float) -> int:
    import time  # Parsl ships a function's code without its module's globals

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return x + 1


def run_true(i: int) -> int:
    import subprocess

    return subprocess.run(["true"]).returncode


def step(prev: int) -> int:
    return prev + 1


def print_inc(x: int) -> None:  # HyperQueue functions return nothing to the client: the value goes to stdout
    print(x + 1)


def print_busy(x: int, ms: float) -> None:
    import time

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    print(x + 1)


# ---------------------------------------------------------------- one side, in its own process

class Side:
    """One library's way to run the workloads. `start` brings its executor up."""

    chain_ok = True

    def __init__(self, tmp: str, a: argparse.Namespace):
        self.tmp, self.a = tmp, a

    def version(self) -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def calls(self, xs: list[int]) -> list[int]: ...
    def cpu(self, xs: list[int], ms: float) -> list[int]: ...
    def cmds(self, n: int) -> None: ...
    def chain(self, n: int) -> int: ...


class Htc(Side):
    def version(self):
        import htc_notebook

        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        return f"htc_notebook {getattr(htc_notebook, '__version__', '0.1.0')} ({rev})"

    def start(self):
        from htc_notebook import Session, SiteConfig

        self.session = Session(self.tmp, site=SiteConfig.builtin())
        self.project = self.session.project("bench")
        self.n = 0

    def _task(self):
        self.n += 1
        return self.project.task(f"t{self.n}")

    def calls(self, xs):
        from htc_notebook import Sweep

        if len(xs) == 1:
            return [self._task().submit(inc, xs[0]).result()]
        return self._task().sweep(inc, Sweep.zip(x=xs)).results()

    def cpu(self, xs, ms):
        from htc_notebook import Sweep

        return self._task().sweep(busy, Sweep.zip(x=xs, ms=[ms] * len(xs))).results()

    def cmds(self, n):
        group = self._task().submit_batch({"jobName": "true", "batchSize": n,
                                           "htcJobDefinition": {"commands": ["true"]}}).wait()
        counts = group.counts()
        assert counts.get("SUCCEEDED", 0) == n, counts

    def chain(self, n):
        task = self._task()
        h = task.submit(step, 0)
        for _ in range(n - 1):
            h = task.submit(step, h)
        return h.result()

    def stop(self):
        self.session.close()


class Dask(Side):
    def version(self):
        import dask
        import distributed

        return f"dask {dask.__version__}, distributed {distributed.__version__}"

    def start(self):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    local_directory=self.tmp)
        self.client = Client(self.cluster)

    def calls(self, xs):
        return self.client.gather(self.client.map(inc, xs))

    def cpu(self, xs, ms):
        return self.client.gather(self.client.map(busy, xs, [ms] * len(xs)))

    def cmds(self, n):
        codes = self.client.gather(self.client.map(run_true, range(n)))
        assert codes == [0] * n

    def chain(self, n):
        f = self.client.submit(step, 0)
        for _ in range(n - 1):
            f = self.client.submit(step, f)
        return f.result()

    def stop(self):
        self.client.close()
        self.cluster.close()


class Executorlib(Side):
    def version(self):
        from importlib.metadata import version

        return f"executorlib {version('executorlib')}"

    def start(self):
        from executorlib import SingleNodeExecutor

        self.ex = SingleNodeExecutor(max_workers=2, block_allocation=True, cache_directory=None)
        self.ex.__enter__()

    def calls(self, xs):
        return [f.result() for f in [self.ex.submit(inc, x) for x in xs]]

    def cpu(self, xs, ms):
        return [f.result() for f in [self.ex.submit(busy, x, ms) for x in xs]]

    def cmds(self, n):
        codes = [f.result() for f in [self.ex.submit(run_true, i) for i in range(n)]]
        assert codes == [0] * n

    def chain(self, n):
        f = self.ex.submit(step, 0)
        for _ in range(n - 1):
            f = self.ex.submit(step, f)
        return f.result()

    def stop(self):
        self.ex.__exit__(None, None, None)


class Parsl(Side):
    def version(self):
        import parsl

        return f"parsl {parsl.__version__}"

    def start(self):
        import parsl
        from parsl.app.app import bash_app, python_app
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        config = Config(executors=[HighThroughputExecutor(
            label="htex", address="127.0.0.1", max_workers_per_node=2, cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
            run_dir=os.path.join(self.tmp, "runinfo"), usage_tracking=0)
        self.dfk = parsl.load(config)
        self.inc, self.busy, self.step = (python_app(f, executors=["htex"]) for f in (inc, busy, step))

        def true_cmd():
            return "true"

        self.true = bash_app(true_cmd, executors=["htex"])

    def calls(self, xs):
        return [f.result() for f in [self.inc(x) for x in xs]]

    def cpu(self, xs, ms):
        return [f.result() for f in [self.busy(x, ms) for x in xs]]

    def cmds(self, n):
        codes = [f.result() for f in [self.true() for _ in range(n)]]
        assert codes == [0] * n

    def chain(self, n):
        f = self.step(0)
        for _ in range(n - 1):
            f = self.step(f)
        return f.result()

    def stop(self):
        self.dfk.cleanup()


class Submitit(Side):
    """LocalExecutor: every job is a controller process and a job process, with no limit on how many
    run at once; this side keeps 2 jobs in flight (the 2 workers of the others)."""

    chain_ok = False

    def version(self):
        import submitit

        return f"submitit {submitit.__version__}"

    def start(self):
        import submitit

        self.ex = submitit.LocalExecutor(folder=os.path.join(self.tmp, "submitit"))
        self.ex.update_parameters(timeout_min=60)

    def _run(self, fn, argss):
        out, running, todo = [None] * len(argss), {}, list(enumerate(argss))
        while todo or running:
            while todo and len(running) < 2:
                i, args = todo.pop(0)
                running[i] = self.ex.submit(fn, *args)
            for i, job in list(running.items()):
                if job.done():
                    out[i] = job.result()
                    del running[i]
            time.sleep(0.002)
        return out

    def calls(self, xs):
        return self._run(inc, [(x,) for x in xs])

    def cpu(self, xs, ms):
        return self._run(busy, [(x, ms) for x in xs])

    def cmds(self, n):
        assert self._run(run_true, [(i,) for i in range(n)]) == [0] * n


class HyperQueue(Side):
    """The PyPI package's LocalCluster runs the server and a worker from the package's own library
    (no `hq` binary). Python functions each start an interpreter and hand no value back: each
    prints its value to its task's stdout file, read back here."""

    chain_ok = False

    def version(self):
        from importlib.metadata import version

        return f"hyperqueue {version('hyperqueue')}"

    def start(self):
        from hyperqueue.cluster import LocalCluster, WorkerConfig
        from hyperqueue.task.function import PythonEnv

        self.cluster = LocalCluster(server_dir=str(Path(self.tmp) / "hq"), worker_config=WorkerConfig(cores=2))
        self.client = self.cluster.client(python_env=PythonEnv(python_bin=sys.executable))
        self.n = 0

    def _job(self, build):
        from hyperqueue import Job

        self.n += 1
        out = Path(self.tmp) / f"out{self.n}"
        out.mkdir()
        job = Job(default_workdir=out)
        build(job, out)
        submitted = self.client.submit(job)
        assert self.client.wait_for_jobs([submitted], raise_on_error=True)
        return out

    def _values(self, fn, argss):
        def build(job, out):
            for i, args in enumerate(argss):
                job.function(fn, args=args, stdout=out / f"{i}.out", stderr=None)

        out = self._job(build)
        return [int((out / f"{i}.out").read_text()) for i in range(len(argss))]

    def calls(self, xs):
        return self._values(print_inc, [(x,) for x in xs])

    def cpu(self, xs, ms):
        return self._values(print_busy, [(x, ms) for x in xs])

    def cmds(self, n):
        def build(job, out):
            for _ in range(n):
                job.program(["true"], stdout=None, stderr=None)

        self._job(build)  # wait_for_jobs raised if any failed

    def stop(self):
        self.cluster.stop()


KINDS = {"htc": Htc, "dask": Dask, "executorlib": Executorlib, "parsl": Parsl, "submitit": Submitit,
         "hyperqueue": HyperQueue}


def run_side(a: argparse.Namespace) -> int:
    """In a fresh process: every workload once; one JSON line on stdout."""
    t_spawn = float(os.environ["PEERS_T_SPAWN"])
    out: dict = {"errors": {}}
    slow = a.side in ("submitit", "hyperqueue")
    n_calls = min(a.calls, a.slow_cap) if slow else a.calls
    n_cpu = min(a.cpu_calls, a.slow_cap) if slow else a.cpu_calls
    with tempfile.TemporaryDirectory(prefix=f"peers-{a.side}-") as tmp:
        side = KINDS[a.side](tmp, a)
        side.start()
        try:
            assert side.calls([41]) == [42]
            out["first"] = time.time() - t_spawn
            xs = list(range(n_calls))
            res = side.calls(xs)
            assert len(res) == n_calls and sum(res) == sum(xs) + n_calls, "wrong results"
            out["cold"] = n_calls / (time.time() - t_spawn)
            out["n_calls"] = n_calls

            def phase(name, fn):
                try:
                    t0 = time.perf_counter()
                    fn()
                    out[name] = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001 - a phase that fails is reported in the table
                    out["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]

            def warm():
                xs2 = list(range(n_calls, 2 * n_calls))
                res = side.calls(xs2)
                assert len(res) == n_calls and sum(res) == sum(xs2) + n_calls, "wrong results"

            def cpu():
                xs3 = list(range(n_cpu))
                res = side.cpu(xs3, a.work_ms)
                assert len(res) == n_cpu and sum(res) == sum(xs3) + n_cpu, "wrong results"

            def chain():
                assert side.chain(a.chain) == a.chain, "wrong chain end"

            phase("warm", warm)
            out["warm"] = n_calls / out["warm"] if "warm" in out else None
            n_cmds = min(a.cmds, a.slow_cap) if a.side == "submitit" else a.cmds  # submitit: a function per command
            if n_cmds:
                phase("cmds", lambda: side.cmds(n_cmds))
                out["cmds"] = n_cmds / out["cmds"] if "cmds" in out else None
                out["n_cmds"] = n_cmds
            if a.cpu_calls:
                phase("cpu", cpu)
                out["cpu"] = n_cpu / out["cpu"] if "cpu" in out else None
                out["n_cpu"] = n_cpu
            if a.chain and side.chain_ok:
                phase("chain", chain)
                out["chain"] = 1000 * out["chain"] / a.chain if "chain" in out else None
            out["version"] = side.version()
        finally:
            side.stop()
    print("PEERS-RESULT " + json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------- the driver

def python_of(side: str) -> str:
    return sys.executable if side == "htc" else str(VENVS / side / "bin" / "python")


def setup(sides: list[str]) -> dict[str, str]:
    """Makes /work/peer-venvs/<name> with pip; returns what failed, per side."""
    VENVS.mkdir(parents=True, exist_ok=True)
    failed = {}
    for side in sides:
        if side == "htc":
            continue
        venv = VENVS / side
        log = VENVS / f"{side}.log"
        cmd = f"python3 -m venv {venv} && {venv}/bin/pip install {' '.join(PACKAGES[side])}"
        with open(log, "w") as f:
            rc = subprocess.run(cmd, shell=True, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc:
            failed[side] = f"pip install failed (exit {rc}), see {log}"
        print(f"{side}: {'ok' if not rc else failed[side]}", flush=True)
    return failed


def one(side: str, a: argparse.Namespace) -> dict:
    if not Path(python_of(side)).exists():
        return {"fatal": f"not installed (no {python_of(side)}; run --setup)"}
    args = [python_of(side), str(Path(__file__).resolve()), "--side", side, "--calls", str(a.calls),
            "--cmds", str(a.cmds), "--cpu-calls", str(a.cpu_calls), "--work-ms", str(a.work_ms),
            "--chain", str(a.chain), "--slow-cap", str(a.slow_cap)]
    env = dict(os.environ, PEERS_T_SPAWN=repr(time.time()))
    if side == "htc":
        env["PYTHONPATH"] = str(REPO)  # this checkout's code
    else:  # as an activated venv: Parsl starts its interchange and workers by their commands
        env["PATH"] = f"{VENVS / side / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    try:
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=a.timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"fatal": f"timed out after {a.timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("PEERS-RESULT "):
            return json.loads(line[len("PEERS-RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"fatal": f"exit {p.returncode}: {tail[:200]}"}


def fmt(phase: str, v: float | None) -> str:
    if v is None:
        return "-"
    if phase == "first":
        return f"{v:.2f} s"
    if phase == "chain":
        return f"{v:.1f} ms/job"
    return f"{v:.0f}/s"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--setup", action="store_true", help="make the peer venvs with pip, then exit")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000, help="trivial calls, cold and warm (full: 10000)")
    ap.add_argument("--cmds", type=int, default=500, help="`true` commands (full: 2000)")
    ap.add_argument("--cpu-calls", type=int, default=300, help="calls of --work-ms CPU each (full: 1000)")
    ap.add_argument("--work-ms", type=float, default=20.0)
    ap.add_argument("--chain", type=int, default=100, help="length of the chain of dependent calls (full: 1000)")
    ap.add_argument("--slow-cap", type=int, default=100,
                    help="at most this many calls per call workload for submitit and HyperQueue (and "
                         "commands for submitit, which runs each as a function)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for one side's process")
    ap.add_argument("--write", help="update the section `peers` of this results file")
    a = ap.parse_args()
    if a.side:
        return run_side(a)
    sides = a.sides.split(",")
    if a.setup:
        setup(sides)
        return 0
    if "htc" in sides:  # as an install does (this machine may set PYTHONDONTWRITEBYTECODE): peers' venvs are compiled
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "htc_notebook")], check=False)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(a.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            res = one(side, a)
            runs[side].append(res)
            shown = res.get("fatal") or " ".join(f"{p} {fmt(p, res.get(p))}" for p in PHASES) + (
                f" errors {res['errors']}" if res.get("errors") else "")
            print(f"round {r} {side:12s} {shown}", flush=True)

    med: dict[str, dict] = {}
    notes: dict[str, str] = {}
    versions: dict[str, str] = {}
    for side in sides:
        ok = [x for x in runs[side] if "fatal" not in x]
        fatal = [x["fatal"] for x in runs[side] if "fatal" in x]
        if fatal:
            notes[side] = f"{len(fatal)} of {a.rounds} rounds failed: {fatal[0]}"
        med[side] = {}
        for p in PHASES:
            vals = [x[p] for x in ok if x.get(p) is not None]
            med[side][p] = statistics.median(vals) if vals else None
            errs = [x["errors"][p] for x in ok if p in x.get("errors", {})]
            if errs:
                notes[side] = (notes.get(side, "") + f"; {p} failed in {len(errs)} round(s): {errs[0]}").lstrip("; ")
        if ok:
            versions[side] = ok[0].get("version", side)
            for k in ("n_calls", "n_cmds", "n_cpu"):
                med[side][k] = ok[0].get(k)

    head = ("| side | first result (cold) | trivial calls, cold | warm | `true` commands | "
            f"{a.work_ms:g} ms CPU calls | chain |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for side in sides:
        cells = [fmt(p, med[side].get(p)) for p in PHASES]
        for col, k, full in ((1, "n_calls", a.calls), (2, "n_calls", a.calls), (3, "n_cmds", a.cmds),
                             (4, "n_cpu", a.cpu_calls)):
            n = med[side].get(k)
            if n is not None and n != full and cells[col] != "-":
                cells[col] += f" ({n})"
        if side in ("submitit", "hyperqueue") and a.chain:
            cells[5] = "n/a (no values between jobs)"
        lines.append(f"| {versions.get(side, side)} | " + " | ".join(cells) + " |")
    ratio_lines = ["| htc / peer (speed) | " + " | ".join(["first", "cold", "warm", "commands", "cpu", "chain"]) + " |",
                   "|---|---|---|---|---|---|---|"]
    h = med.get("htc", {})
    for side in sides:
        if side == "htc":
            continue
        cells = []
        for p in PHASES:
            hv, pv = h.get(p), med[side].get(p)
            if not hv or not pv:
                cells.append("-")
            elif p == "cold" and med[side].get("n_calls") != h.get("n_calls"):
                cells.append("- (fewer calls)")  # start-up is spread over a different number of calls
            else:  # first and chain are times: the speed ratio is peer time / htc time
                cells.append(f"{(pv / hv if p in ('first', 'chain') else hv / pv):.2f}")
        ratio_lines.append(f"| {side} | " + " | ".join(cells) + " |")
    sizes = (f"{a.rounds} rounds, each side a fresh process per round (order alternating); medians. "
             f"{a.calls} trivial calls (submitit and HyperQueue: {min(a.calls, a.slow_cap)}), {a.cmds} `true` "
             f"commands (submitit: {min(a.cmds, a.slow_cap)}), {a.cpu_calls} calls of {a.work_ms:g} ms CPU "
             "(submitit and HyperQueue: "
             f"{min(a.cpu_calls, a.slow_cap)}), a chain of {a.chain} dependent calls; 2 workers everywhere. "
             "Throughputs in jobs/s; first result in s from process spawn; chain in ms per job.")
    summary = "\n".join([sizes, "", *lines, "", "Speed ratios (above 1: htc is faster):", "", *ratio_lines])
    if notes:
        summary += "\n\n" + "\n".join(f"- {s}: {n}" for s, n in notes.items())
    print(summary)
    if a.write:
        sys.path.insert(0, str(HERE))
        from throughput import _write  # the sibling script's results writer

        _write(Path(a.write), "peers", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
