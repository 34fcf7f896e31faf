"""Scale benchmarks: how the toolkit holds up at 100,000 jobs (the ledger: 1,000,000). One subcommand per part.

    .venv/bin/python bench/scale.py ledger [--sizes 1000,10000,100000,1000000] [--repeats 3] [--write bench/results.md]
    .venv/bin/python bench/scale.py python [--sizes 1000,10000,100000] [--window 4000] [--write bench/results.md]
    .venv/bin/python bench/scale.py commands [--sizes 10000,100000] [--before DIR] [--write bench/results.md]
    .venv/bin/python bench/scale.py slurm [--jobs 2000] [--limit 500] [--short 2000] [--write bench/results.md]

`ledger`: on a fresh data root (a temp dir), for each task size, side by side in one run:
- record: writing a batch as `Task.submit_batch` does: the dispatcher's `first_attempt` and
  `Ledger.add_jobs(..., start=)` (one spec shared by the batch; each job recorded in its first
  attempt, RUNNABLE with its log paths, in one transaction); beside it, alternating, the way before
  (`add_jobs`, then `start_attempts` over every row, as a vCPU-limited project still does); a new
  task each repeat; the jobs are built before the clock starts, the old way's attempts (which need
  the ids) after it (targets < 1 s at 100,000, < 5 s at 1,000,000);
- summary-statistics: the REST operation (`HTCApi.summary_statistics`), in-process, no HTTP
  (target < 50 ms at 1,000,000); beside it, the same counts by reading every job row (how it was done
  before; up to --rows-up-to);
- `htc status --task P/T`: the whole command in-process (session, queries, table), output discarded;
- live table first load: `TableModel.poll()` on a new model (everything the widget gets first), and
  the peak RSS it adds;
- recording the largest size (at most --limited-size) under a project vCPU limit of 64 against none,
  and the reconcile loop's per-tick reads with those jobs held.
Figures are medians of `--repeats` runs.

`commands`: a batch of `true` command jobs on the local backend (each confined, run by its view's
command zygote), each size in a fresh process: the kernel's peak RSS growth once `submit_batch`
returned and once every job ended, and the time to every job's end. With `--before DIR` (a checkout
of other code), the same runs of that code's toolkit (PYTHONPATH=DIR), sides alternating.

`slurm`: command jobs through a per-user submit limit (htc's feeder against a plain shell loop that
waits for room), and 0.1 s commands bundled against one array task per job: bench/slurm_scale.py.

`python`: trivial Python calls through `task.sweep` on the local backend against raw `Client.map`
in the same window of dask tasks in flight; each size and side in a fresh process, sides alternating:
time to every result, peak RSS growth of the kernel (the LocalCluster scheduler runs in it), the
most tasks the scheduler held, and memory per job over raw futures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _rss_mb(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def bench_ledger(args: argparse.Namespace) -> str:
    """Record / summary-statistics / htc status / live table first load, per task size; returns the summary."""
    from htc_notebook import Session, SiteConfig
    from htc_notebook import cli
    from htc_notebook.ledger import AttemptStart, NewBatch, NewJob
    from htc_notebook.runtime.task import Task
    from htc_notebook.server.api import HTCApi, wire_status
    from htc_notebook.server.auth import Auth
    from htc_notebook.spec import JobDefinition
    from htc_notebook.ui.table import TableModel

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="htc-scale-") as root, Session(root, site=SiteConfig.builtin()) as s:
        api = HTCApi(s, Auth(root), owner="bench")
        project = s.project("bench")
        first_attempt = getattr(s.parts.dispatcher, "first_attempt", None)  # None: a ledger before issue 28
        for n in sizes:
            record_times, before_times, task_ids = [], [], []
            sides = ["now"] + (["before"] if first_attempt is not None and n <= args.before_up_to else [])
            _reset_peak()
            for r in range(args.repeats):
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    task = project.task(f"batch-{n}-{r}" + ("-before" if side == "before" else ""))
                    # what Task.submit_batch and Session.dispatch hand the ledger
                    definition = JobDefinition(commands=["echo", "hi"])
                    _, _, spec, priority = Task(s.parts, task.row)._command_spec(None, definition, 0)
                    jobs = [NewJob(name="batch", kind="command", params={}, spec=spec, index=i, profile="local",
                                   priority=priority) for i in range(n)]
                    prefix = f"{s.storage.log_paths('bench', task.name, 0)[0].parent}/job-"
                    batch = NewBatch("batch", n, {"jobName": "batch"})
                    t0 = time.perf_counter()
                    if side == "now" and first_attempt is not None:  # as Task._add: one transaction
                        ids = s.ledger.add_jobs(task.id, jobs, batch, start=first_attempt(task.row, jobs))
                    else:  # as before: add_jobs, then start_attempts over every row
                        ids = s.ledger.add_jobs(task.id, jobs, batch)
                        s.ledger.start_attempts([AttemptStart(i, host=s.owner.host, native_id=f"local:{s.owner}",
                                                              log_out=f"{prefix}{i}.out", log_err=f"{prefix}{i}.err",
                                                              status="RUNNABLE") for i in ids])
                    (record_times if side == "now" else before_times).append(time.perf_counter() - t0)
                    if side == "now":
                        task_ids.append(task.id)
                    del jobs, ids
            record_peak = _rss_mb()  # while recording, the jobs' inputs (built by the bench) included
            task_id = task_ids[0]
            summary = _median_ms(lambda task_id=task_id: api.summary_statistics("bench", "bench", str(task_id)),
                                 args.repeats)
            assert sum(api.summary_statistics("bench", "bench", str(task_id))["jobStatuses"].values()) == n
            if n <= args.rows_up_to:
                rows_ms = _median_ms(lambda task_id=task_id: [wire_status(j) for j in s.ledger.jobs(task_id)],
                                     args.repeats)
            else:
                rows_ms = float("nan")
            argv = ["--root", root, "status", "--task", f"bench/batch-{n}-0"]

            def status(argv: list[str] = argv) -> None:
                with contextlib.redirect_stdout(io.StringIO()):
                    assert cli.main(argv) == 0

            status_ms = _median_ms(status, args.repeats)
            rss = _rss_mb("VmRSS")
            _reset_peak()
            table_ms = _median_ms(lambda task_id=task_id: TableModel(s.reads, task_id).poll(), args.repeats)
            table_rss = max(0.0, _rss_mb() - rss)  # peak growth over the first loads (a model is dropped after each)
            before = statistics.median(before_times) * 1e3 if before_times else float("nan")
            rows.append((n, statistics.median(record_times) * 1e3, before, summary, rows_ms, status_ms, table_ms,
                         table_rss, record_peak))
            print(f"{n:>7} jobs: record {rows[-1][1]:8.1f} ms (before: {before:8.1f} ms)  summary-statistics "
                  f"{summary:6.1f} ms  (by reading rows {rows_ms:6.0f} ms)  htc status {status_ms:6.1f} ms  "
                  f"table first load {table_ms:6.1f} ms (peak RSS +{table_rss:.0f} MB); peak RSS while recording "
                  f"{record_peak:.0f} MB",
                  flush=True)
        # the reconcile loop's look at every owner (every few seconds), over all the active jobs above,
        # and the same query told not to use the owner index
        active = sum(s.ledger.active_owners().values())
        plain = s.ledger._read  # the ledger's own read path, for the NOT INDEXED twin
        from htc_notebook.ledger.schema import ACTIVE_SQL

        owners_ms = _median_ms(s.ledger.active_owners, args.repeats * 3)
        unindexed_ms = _median_ms(lambda: plain(f"SELECT json_extract(spec, '$.owner'), COUNT(*) FROM jobs NOT INDEXED "
                                                f"WHERE status IN ({ACTIVE_SQL}) GROUP BY 1"), args.repeats * 3)
        print(f"owners of {active} active jobs: {owners_ms:.1f} ms (without the index {unindexed_ms:.1f} ms)",
              flush=True)
        limited_n = min(max(sizes), args.limited_size)
        limited = _limited(s, limited_n, args.repeats)

    def fmt(ms: float, digits: int = 0) -> str:
        return "-" if ms != ms else f"{ms:.{digits}f} ms"

    table = ("| jobs in the task | record a batch (`add_jobs(..., start=)`, one transaction) | before: `add_jobs` "
             "then `start_attempts` | summary-statistics | (the same by reading every row) | `htc status --task` "
             "| live table first load | its peak RSS growth | peak RSS while recording (inputs included) |\n"
             "|---|---|---|---|---|---|---|---|---|\n"
             + "".join(f"| {n:,} | **{fmt(rec)}** | {fmt(bef)} | **{fmt(summ, 1)}** | {fmt(by_rows)} | {fmt(st)} "
                       f"| {fmt(tb)} | {tr:.0f} MB | {peak:.0f} MB |\n"
                       for n, rec, bef, summ, by_rows, st, tb, tr, peak in rows))
    return (f"Medians of {args.repeats} runs, each size in its own task of one fresh data root; the two ways of "
            f"recording alternate, each in a new task (\"before\" only up to {args.before_up_to:,} jobs):\n\n"
            f"{table}\n"
            f"The reconcile loop's count of active jobs per owner (`Ledger.active_owners`, every few seconds) over "
            f"all {active:,} active jobs of that root: {owners_ms:.1f} ms through the owner index, "
            f"{unindexed_ms:.1f} ms without it (`NOT INDEXED`, same run): **{unindexed_ms / owners_ms:.1f}x**.\n\n"
            "Targets: record < 1 s at 100,000 and < 5 s at 1,000,000; summary-statistics < 50 ms at 1,000,000.\n\n"
            f"Under a project vCPU limit of 64 (`start_attempts(..., room=)`: 64 jobs start, the rest are held in the "
            f"same transaction; a limited project's jobs are not started at insert), recording {limited_n:,} jobs: "
            f"{limited['held']:.0f} ms against {limited['free']:.0f} ms without a limit through the same two calls, "
            f"same run (**{limited['held'] / limited['free']:.2f}x**); with them held, what the "
            f"reconcile loop reads each tick: the owner's held jobs (first 1,000) {limited['list']:.1f} ms, the "
            f"project's vCPUs in use {limited['in_use']:.1f} ms.")


def _limited(s, n: int, repeats: int) -> dict[str, float]:
    """Recording `n` jobs with start_attempts under a vCPU limit of 64 against none (alternating, a
    new task each), then the reconcile loop's per-tick reads with them held."""
    from htc_notebook.ledger import AttemptStart, NewJob
    from htc_notebook.spec import JobSpec

    spec = JobSpec(commands=("echo", "hi"), owner=str(s.owner))
    s.project("limited").set_vcpu_limit(64)
    times: dict[str, list[float]] = {"held": [], "free": []}
    for r in range(repeats):
        for side in (("held", "free") if r % 2 == 0 else ("free", "held")):
            project = "limited" if side == "held" else "free"
            task = s.ledger.task(project, f"t{r}")
            jobs = [NewJob(name="b", kind="command", params={}, spec=spec, index=i) for i in range(n)]
            t0 = time.perf_counter()
            ids = s.ledger.add_jobs(task.id, jobs)
            started = s.ledger.start_attempts([AttemptStart(i, status="RUNNABLE") for i in ids],
                                              ("limited", 64) if side == "held" else None)
            times[side].append(time.perf_counter() - t0)
            assert sum(1 for x in started if x) == (64 if side == "held" and r == 0 else 0 if side == "held" else n)
    out = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out["list"] = _median_ms(lambda: s.ledger.held_for_room(str(s.owner)), repeats * 3)
    out["in_use"] = _median_ms(lambda: s.ledger.vcpus_in_use("limited"), repeats * 3)
    print(f"record {n} under a limit: {out['held']:.0f} ms, without {out['free']:.0f} ms; held list "
          f"{out['list']:.1f} ms, in use {out['in_use']:.1f} ms", flush=True)
    return out


# -- python: trivial calls through task.sweep vs raw Client.map in windows ---------------------------------

def add_one(x: int) -> int:
    """A trivial Python call."""
    return x + 1


def _rss_kb(field: str) -> int:
    """VmRSS or VmHWM (peak since the last reset) of this process, in kB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _python_side(side: str, jobs: int, window: int | None) -> dict:
    """One measured run in this (fresh) process: `jobs` calls of add_one through `side`.

    The LocalCluster's scheduler runs in this process (asserted), so RSS here is kernel +
    scheduler. The input (the Sweep, or the list of arguments) is built before the baseline.
    Peaks are VmHWM, reset through /proc/self/clear_refs at the start; task.sweep's peak is
    read after each phase (sweep() returned, every job ended, results in hand).
    """
    import tempfile
    import threading
    from collections import deque

    from distributed import Scheduler

    from htc_notebook import Session, SiteConfig, Sweep
    from htc_notebook.backends.dask_jobs import WINDOW

    window = window or WINDOW
    site = SiteConfig.from_yaml(f"profiles:\n  local: {{dask_window: {window}}}\n")
    with tempfile.TemporaryDirectory() as root, Session(root, site=site) as session:
        backend = session.backend(session.profile("local"))
        client, scheduler = backend.client, backend.dask_runners()["local"].cluster.scheduler
        assert isinstance(scheduler, Scheduler), "the LocalCluster's scheduler is not in this process"
        client.gather(client.map(add_one, range(200)))  # warm up workers and imports, both paths
        session.project("bench").task("warm-up").sweep(add_one, Sweep.zip(x=list(range(2000)))).results()
        xs = list(range(jobs))
        work = Sweep.zip(x=xs, limit=max(jobs, 100_000)) if side == "htc" else None
        tasks, stop = [0], threading.Event()

        def count_tasks():  # the most tasks the scheduler held at once
            while not stop.wait(0.05):
                tasks[0] = max(tasks[0], len(scheduler.tasks))

        watcher = threading.Thread(target=count_tasks, daemon=True)
        watcher.start()
        base, peaks = _rss_kb("VmRSS"), {}
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        t0 = time.perf_counter()
        if side == "htc":
            group = session.project("bench").task("run").sweep(add_one, work)
            peaks["submitted"] = _rss_kb("VmHWM")
            group.wait()
            peaks["ran"] = _rss_kb("VmHWM")
            out = group.results()
        else:  # Client.map in quarter-window chunks, at most `window` tasks in flight
            out, flight, chunk = [], deque(), max(1, window // 4)
            for i in range(0, jobs, chunk):
                if len(flight) == 4:
                    out += client.gather(flight.popleft())
                flight.append(client.map(add_one, xs[i:i + chunk]))
            while flight:
                out += client.gather(flight.popleft())
        seconds = time.perf_counter() - t0
        peaks["results"] = _rss_kb("VmHWM")
        stop.set()
        watcher.join()
        assert out == [x + 1 for x in xs]
    return {"side": side, "jobs": jobs, "window": window, "seconds": seconds, "tasks": tasks[0],
            "growth_mb": {phase: (kb - base) / 1024 for phase, kb in peaks.items()}}


def _python_table(args: argparse.Namespace) -> str:
    """Each (size, side) in a fresh process, sides alternating; returns the summary (a table)."""
    import json
    import os
    import subprocess

    sizes = [int(s) for s in args.sizes.split(",")]
    by = {}
    for k, jobs in enumerate(sizes):
        for side in (("raw", "htc") if k % 2 == 0 else ("htc", "raw")):
            cmd = [sys.executable, __file__, "python", "--side", side, "--sizes", str(jobs)]
            cmd += ["--window", str(args.window)] if args.window else []
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = by[side, jobs] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{side} {jobs:>7}: {r['seconds']:7.2f} s, peak RSS +{r['growth_mb']['results']:.1f} MB, "
                  f"at most {r['tasks']} scheduler tasks", flush=True)
    lines = ["| jobs | raw Client.map | task.sweep | time htc/raw (< 1: htc faster) "
             "| scheduler tasks at most (raw / htc) | peak RSS growth, raw "
             "| peak RSS growth, htc: sweep() / all ended / results() "
             "| htc over raw, per job |", "|---|---|---|---|---|---|---|---|"]
    for jobs in sizes:
        raw, htc = by["raw", jobs], by["htc", jobs]
        g = htc["growth_mb"]
        per_job = (g["results"] - raw["growth_mb"]["results"]) * 1024 / jobs
        lines.append(f"| {jobs:,} | {raw['seconds']:.2f} s | {htc['seconds']:.2f} s "
                     f"| **{htc['seconds'] / raw['seconds']:.3f}** | {raw['tasks']:,} / {htc['tasks']:,} "
                     f"| {raw['growth_mb']['results']:.1f} MB "
                     f"| {g['submitted']:.1f} / {g['ran']:.1f} / **{g['results']:.1f}** MB | {per_job:+.2f} kB |")
    spread = {side: [by[side, j]["growth_mb"]["results"] for j in sizes] for side in ("raw", "htc")}
    spread = {side: max(v) - min(v) for side, v in spread.items()}
    return (f"Trivial Python calls on the local backend (LocalCluster, {os.cpu_count()} workers), at most "
            f"{by['raw', sizes[0]]['window']:,} dask tasks in flight on both sides (task.sweep: the "
            f"profile's `dask_window`; raw: `Client.map` in quarter-window chunks). Each run in a fresh "
            f"process, sides alternating. The scheduler runs in the kernel process, so RSS is kernel + "
            f"scheduler. Time: from the call to every result in hand. Peak RSS growth: VmHWM minus RSS "
            f"just before the call (the Sweep or argument list already built).\n\n" + "\n".join(lines) +
            f"\n\nFrom {min(sizes):,} to {max(sizes):,} jobs the peak grows by "
            f"**{spread['htc']:.1f} MB** with task.sweep and {spread['raw']:.1f} MB with raw Client.map "
            f"(targets: flat within 100 MB; within +0.5 kB per job over raw futures).")


def _commands_side(jobs: int) -> dict:
    """One measured run in this (fresh) process: a batch of `jobs` `true` commands, to every job's end."""
    import gc
    import tempfile

    from htc_notebook import Session, SiteConfig

    batch = {"jobName": "true", "batchSize": jobs, "htcJobDefinition": {"commands": ["true"]}}
    with tempfile.TemporaryDirectory() as root, Session(root, site=SiteConfig.builtin()) as session:
        project = session.project("bench")
        project.task("warm-up").submit_batch({**batch, "batchSize": 20}).wait()  # the view's zygote, imports
        gc.collect()
        base, peaks = _rss_kb("VmRSS"), {}
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        t0 = time.perf_counter()
        group = project.task("run").submit_batch(batch)
        peaks["submitted"], submitted = _rss_kb("VmHWM"), time.perf_counter() - t0
        group.wait()
        seconds = time.perf_counter() - t0
        peaks["ended"] = _rss_kb("VmHWM")
        assert group.counts().get("SUCCEEDED") == jobs, group.counts()
    return {"jobs": jobs, "seconds": seconds, "submitted_s": submitted,
            "growth_mb": {phase: (kb - base) / 1024 for phase, kb in peaks.items()}}


def bench_commands(args: argparse.Namespace) -> str:
    """`commands`: each size (and side, with --before) in a fresh process, sides alternating; the table."""
    import json
    import os
    import subprocess

    if args.child:
        return json.dumps(_commands_side(int(args.sizes)))
    sizes = [int(s) for s in args.sizes.split(",")]
    sides = {"now": str(Path(__file__).resolve().parents[1])} | ({"before": args.before} if args.before else {})
    by = {}
    for k, jobs in enumerate(sizes):
        for r in range(args.repeats):
            for side in (list(sides) if (k + r) % 2 == 0 else list(sides)[::-1]):
                env = {**os.environ, "PYTHONPATH": sides[side]}
                run = subprocess.run([sys.executable, __file__, "commands", "--child", "--sizes", str(jobs)],
                                     capture_output=True, text=True, check=True, env=env)
                out = json.loads(run.stdout.strip().splitlines()[-1])
                by.setdefault((side, jobs), []).append(out)
                print(f"{side} {jobs:>7}: {out['seconds']:7.1f} s, submitted in {out['submitted_s']:.1f} s, "
                      f"peak RSS +{out['growth_mb']['submitted']:.0f} / +{out['growth_mb']['ended']:.0f} MB",
                      flush=True)
    lines = ["| code | jobs | submit_batch returned | every job ended | jobs/s | peak RSS growth: submitted / ended |",
             "|---|---|---|---|---|---|"]
    for jobs in sizes:
        for side in sides:
            runs = by[side, jobs]
            med = statistics.median
            lines.append(f"| {side} | {jobs:,} | {med(r['submitted_s'] for r in runs):.1f} s "
                         f"| {med(r['seconds'] for r in runs):.1f} s | {med(jobs / r['seconds'] for r in runs):.0f} "
                         f"| {med(r['growth_mb']['submitted'] for r in runs):.0f} / "
                         f"**{med(r['growth_mb']['ended'] for r in runs):.0f}** MB |")
    return (f"Batches of `true` command jobs on the local backend ({os.cpu_count()} cores; each job confined, "
            f"forked by its view's command zygote), each run in a fresh process, medians of {args.repeats}"
            + (f"; `before` is the code in {args.before}, sides alternating" if args.before else "")
            + ". Peak RSS growth: the kernel's VmHWM minus its RSS just before `submit_batch`.\n\n"
            + "\n".join(lines))


def bench_python(args: argparse.Namespace) -> str:
    """`python`: the side-by-side table, or (--side, in a child process) one measured run as JSON."""
    if args.side:
        import json

        return json.dumps(_python_side(args.side, int(args.sizes), args.window))
    return _python_table(args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    led = sub.add_parser("ledger", help="recording a batch and the read paths, at 1,000 to 1,000,000 jobs")
    led.add_argument("--sizes", default="1000,10000,100000", help="comma-separated task sizes")
    led.add_argument("--repeats", type=int, default=3)
    led.add_argument("--before-up-to", type=int, default=100_000,
                     help="also record the old way (add_jobs, then start_attempts) for sizes up to this")
    led.add_argument("--rows-up-to", type=int, default=100_000,
                     help="also read every row (the old summary) for sizes up to this")
    led.add_argument("--limited-size", type=int, default=100_000,
                     help="jobs recorded under a vCPU limit (at most the largest size)")
    led.add_argument("--write", help="update this section of this results file")
    led.set_defaults(func=bench_ledger, section="scale-ledger")
    py = sub.add_parser("python", help="trivial Python calls, task.sweep vs raw Client.map in windows: time, peak RSS")
    py.add_argument("--sizes", default="1000,10000,100000", help="comma-separated sweep sizes")
    py.add_argument("--window", type=int, help="dask tasks in flight on both sides (default: dask_jobs.WINDOW)")
    py.add_argument("--side", choices=("htc", "raw"), help=argparse.SUPPRESS)  # a child: one run of one size
    py.add_argument("--write", help="update this section of this results file")
    py.set_defaults(func=bench_python, section="scale-python")
    cmds = sub.add_parser("commands", help="a local batch of `true` commands: the kernel's peak RSS, time")
    cmds.add_argument("--sizes", default="10000,100000", help="comma-separated batch sizes")
    cmds.add_argument("--repeats", type=int, default=1)
    cmds.add_argument("--before", help="also run the toolkit checked out in this directory (PYTHONPATH)")
    cmds.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one run of one size, as JSON
    cmds.add_argument("--write", help="update this section of this results file")
    cmds.set_defaults(func=bench_commands, section="scale-commands")
    from slurm_scale import add_parser as add_slurm  # needs the test cluster (make slurm-up)

    add_slurm(sub)
    args = ap.parse_args()
    summary = args.func(args)
    print(summary)
    if getattr(args, "write", None):
        _write(Path(args.write), args.section, summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
