"""Chaos soak for G9: after any fault every job ends SUCCEEDED once, or failed with a reason naming the fault.

    .venv/bin/python bench/chaos.py [--seed 1] [--jobs 600] [--faults 12] [--kinds worker,scancel,node,controller]
                                    [--timeout 600] [--write bench/results.md]

Needs the test cluster (`make slurm-up`; run as root: it kills nodes and stops the controller).
One process runs the same mixed workload twice, one run after the other, on fresh data roots
under test-output/ (each node has a private /tmp): once without faults ("clean"), once with a
seeded injector firing faults every few seconds ("faults"). The workload is the same in both
(the same --seed: the same jobs, the same durations):

- command jobs on the SLURM `cpu` profile, one `task.submit_batch` (sh -c, 0.5-2 s each; every
  run appends a `start <host>` and an `end` line to runs/cmd-<index> in task storage);
- 2 jobs that run out of memory on purpose (300 MiB under maxMemory 128: the cgroup kills them and
  the retries ask for 256, then 512 MiB), counted as memory escalations;
- 3 MPI command jobs, `task.mpi([... sh -c ...], nodes=2, ranks_per_node=1, profile="cpu")`,
  rank 0 appending to runs/mpi-<k>;
- Python calls on the local backend, `task.sweep(fn, Sweep.grid(member=..., seed=[seed]))`,
  0.2-1 s each, each run appending to runs/py-<member>.

About 55% of --jobs are commands, 45% Python calls. Every job has `RetryPolicy(retries=2, backoff=0)`.

Faults (random.Random(seed); one at a time, each after a pause of 3-8 s, until --faults were fired
or the work is done; one that finds nothing to hit is counted as skipped, not fired):
- worker: SIGKILL one dask worker process of the local LocalCluster (pids from `client.run(os.getpid)`);
- scancel: `scancel` one RUNNING array task of the command batch from outside the toolkit (its jobs
  end CANCELLED "from outside": counted as such, not as losses; a bundled task takes its whole bundle);
- node: `kill_node(node1|node2)` (every process in its namespace SIGKILLed), `scontrol ... state=down`,
  revived 10-20 s later (and always before the run ends);
- controller: slurmctld SIGSTOPped for 5-10 s, then SIGCONT.

Checked after both runs end (from the ledger and the run files): jobs SUCCEEDED; CANCELLED from
outside; FAILED/other with their reasons grouped; LOST (target 0); still active after the wait
(must be 0); results committed twice (jobs with two SUCCEEDED attempts, results rows of jobs not
SUCCEEDED or of an attempt that did not succeed: must be 0); SUCCEEDED jobs whose run files show no
finished run (must be 0); failed attempts whose reason names no fault (cause `exit` or none: the
workload never fails by itself, so such an attempt came from a fault it does not name; must be 0);
jobs run more than once (fine after a fault; reported, and how many ran more often than they have
attempts); nodes SLURM left down or drained (`sinfo -R`, then returned to service); and the extra
wall time of the fault run over the clean run (submission to every job ended).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_HOST = "10.77.0.1"  # the test cluster's bridge: where nodes reach this process
KINDS = ("worker", "scancel", "node", "controller")
CPU_NODES = ("node1", "node2")
OOM_JOBS, MPI_JOBS = 2, 3
ACTIVE = {"SUBMITTED", "HELD", "RUNNABLE", "STARTING", "RUNNING"}


def chaos_call(member: int, seed: int) -> int:
    """A Python job: 0.2-1 s (fixed by member and seed), each run recorded in runs/py-<member>."""
    import os
    import random
    import time

    runs = os.path.join(os.environ["HTC_TASK_DIR"], "runs", f"py-{member}")
    with open(runs, "a") as f:
        f.write(f"start {os.getpid()}\n")
    time.sleep(random.Random(seed * 1_000_003 + member).uniform(0.2, 1.0))
    with open(runs, "a") as f:
        f.write("end\n")
    return member


def _site(work: Path):
    """The test cluster's site, discovered as a user would (`htc profiles discover`)."""
    from htc_notebook import SiteConfig

    out = work / "site.yaml"
    subprocess.run([str(REPO / ".venv" / "bin" / "htc"), "profiles", "discover", "--scheduler-host",
                    SCHEDULER_HOST, "-o", str(out)], check=True, capture_output=True, text=True, timeout=120)
    data = yaml.safe_load(out.read_text())
    assert "cpu" in data["profiles"], data
    return SiteConfig.load(out)


def _slurm(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _queue_empty(timeout: float) -> bool:
    """Wait until root has nothing in squeue (array tasks, MPI allocations, pilots)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out = _slurm("squeue", "-h", "-u", "root", "-o", "%i")
            if out.returncode == 0 and not out.stdout.strip():
                return True
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
    return False


def _nodes_state() -> dict[str, str]:
    out = _slurm("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
    return dict(zip(out[::2], out[1::2], strict=True))


def _restore_nodes() -> None:
    """Return every cpu node that is down or drained to service (the faults' leftovers)."""
    from htc_notebook.devcluster import revive_node

    for node, st in _nodes_state().items():
        if node in CPU_NODES and st.rstrip("*~#") not in ("idle", "mix", "alloc"):
            print(f"reviving {node} ({st})", flush=True)
            revive_node(node)


# -- the injector ------------------------------------------------------------------------------------
class Injector(threading.Thread):
    """Fires faults drawn from `kinds` with random.Random(seed), one at a time, every 3-8 s."""

    def __init__(self, session, task, batch_ids: set[int], seed: int, faults: int, kinds: tuple[str, ...]):
        super().__init__(daemon=True, name="chaos-injector")
        self.session, self.task, self.batch_ids = session, task, batch_ids
        self.rng, self.budget, self.kinds = random.Random(seed), faults, kinds
        self.stop = threading.Event()
        self.fired: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.log: list[str] = []
        self.errors: list[str] = []
        self.dead: tuple[str, float] | None = None  # (node, revive at)
        self.stopped_ctld: int | None = None
        self.scancelled: set[str] = set()  # array tasks scancelled
        self.t0 = time.monotonic()

    def note(self, kind: str, what: str) -> None:
        line = f"{time.monotonic() - self.t0:6.1f} s {kind}: {what}"
        self.log.append(line)
        print(f"  fault {line}", flush=True)

    def run(self) -> None:
        try:
            while not self.stop.is_set() and sum(self.fired.values()) < self.budget:
                if self.stop.wait(self.rng.uniform(3, 8)):
                    break
                self._revive_if_due()
                kinds = [k for k in self.kinds if not (k == "node" and self.dead)]
                kind = self.rng.choice(kinds)
                try:
                    done = getattr(self, f"_{kind}")()
                except Exception as e:  # noqa: BLE001 - an injector that breaks is reported, not hidden
                    self.errors.append(f"{kind}: {type(e).__name__}: {e}")
                    done = False
                (self.fired if done else self.skipped)[kind] += 1
            while self.dead and not self.stop.is_set():  # the last node goes back on schedule
                if self.stop.wait(0.5):
                    break
                self._revive_if_due()
        finally:
            self.cleanup()

    def _revive_if_due(self, now: bool = False) -> None:
        if self.dead and (now or time.monotonic() >= self.dead[1]):
            from htc_notebook.devcluster import revive_node

            node = self.dead[0]
            revive_node(node)
            self.dead = None
            self.note("node", f"{node} revived")

    def cleanup(self) -> None:
        """SIGCONT the controller and revive a dead node, whatever happened."""
        if self.stopped_ctld:
            try:
                os.kill(self.stopped_ctld, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped_ctld = None
        if self.dead:
            self._revive_if_due(now=True)

    # the faults: each returns True when it hit something
    def _worker(self) -> bool:
        client = self.session.backend(self.session.profile("local")).client
        pids = client.run(os.getpid, on_error="ignore")
        if not pids:
            self.note("worker", "no dask worker to kill (skipped)")
            return False
        addr = self.rng.choice(sorted(pids))
        os.kill(pids[addr], signal.SIGKILL)
        self.note("worker", f"SIGKILL dask worker pid {pids[addr]} ({addr})")
        return True

    def _scancel(self) -> bool:
        """As a user would: the batch's array tasks that squeue shows RUNNING, one scancelled."""
        rows = [r for r in self.session.ledger.jobs(self.task.id) if r.id in self.batch_ids]
        arrays = sorted({r.native_id.split("_")[0] for r in rows if r.native_id and r.native_id[0].isdigit()})
        out = _slurm("squeue", "-h", "-r", "-t", "R", "-o", "%i", "-j", ",".join(arrays)) if arrays else None
        tasks = sorted(set(out.stdout.split()) - self.scancelled) if out and out.returncode == 0 else []
        if not tasks:
            c = Counter(r.status for r in rows)
            self.note("scancel", f"no running array task of the batch in squeue (skipped; the batch in the "
                                 f"ledger: {dict(sorted(c.items()))})")
            return False
        target = self.rng.choice(tasks)
        jobs = [r.id for r in rows if r.native_id and r.native_id.split("/")[0] == target]
        out = _slurm("scancel", target)
        if out.returncode != 0:
            self.note("scancel", f"scancel {target} refused: {out.stderr.strip()} (skipped)")
            return False
        self.scancelled.add(target)
        self.note("scancel", f"scancel {target} (the array task of jobs {_ids(jobs)})")
        return True

    def _node(self) -> bool:
        from htc_notebook.devcluster import kill_node

        out = _slurm("squeue", "-h", "-t", "R", "-p", "cpu", "-o", "%N")  # a node that runs something, if any
        busy = sorted({n for n in CPU_NODES if n in out.stdout}) if out.returncode == 0 else []
        node = self.rng.choice(busy or list(CPU_NODES))
        pids = kill_node(node)
        self.dead = (node, time.monotonic() + self.rng.uniform(10, 20))
        _slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=chaos", timeout=60)
        self.note("node", f"kill_node({node}): {len(pids)} processes SIGKILLed, marked DOWN")
        return True

    def _controller(self) -> bool:
        pids = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True, check=False).stdout.split()
        if not pids:
            self.note("controller", "no slurmctld (skipped)")
            return False
        pid, pause = int(pids[0]), self.rng.uniform(5, 10)
        os.kill(pid, signal.SIGSTOP)
        self.stopped_ctld = pid
        self.note("controller", f"SIGSTOP slurmctld {pid} for {pause:.1f} s")
        self.stop.wait(pause)
        os.kill(pid, signal.SIGCONT)
        self.stopped_ctld = None
        return True


# -- one run -----------------------------------------------------------------------------------------
def _sizes(jobs: int) -> tuple[int, int]:
    """(command jobs, Python calls) for --jobs in all (the OOM and MPI jobs included)."""
    rest = max(2, jobs - OOM_JOBS - MPI_JOBS)
    py = max(1, round(rest * 0.45))
    return rest - py, py


def _submit(task, args, runs: Path):
    """The whole workload; returns {kind: [job ids]}."""
    from htc_notebook import RetryPolicy, Sweep

    policy = RetryPolicy(retries=2, backoff=0)
    n_cmd, n_py = _sizes(args.jobs)
    # 500-2000 ms, fixed by the index and the seed; appended to before and after, so a run counts
    cmd = ("f=runs/cmd-$HTC_JOB_INDEX; echo \"start $(cat /proc/sys/kernel/hostname)\" >> $f; "
           f"t=$(( 500 + (HTC_JOB_INDEX * 7919 + {args.seed} * 104729) % 1501 )); "
           "sleep $((t / 1000)).$(printf %03d $((t % 1000))); echo end >> $f")
    ids: dict[str, list[int]] = {}
    py = task.sweep(chaos_call, Sweep.grid(member=list(range(n_py)), seed=[args.seed]), profile="local",
                    retries=policy)
    ids["python"] = list(py.ids)
    batch = task.submit_batch({"jobName": "cmd", "batchSize": n_cmd, "htcJobDefinition": {
        "commands": ["sh", "-c", cmd], "maxVCpus": 1, "maxMemory": 200}}, profile="cpu", retries=policy)
    ids["command"] = list(batch.ids)
    grow = ("import os, time; open('runs/oom-' + os.environ['HTC_JOB_INDEX'], 'a').write('start\\n'); "
            "x = bytearray(300 << 20); time.sleep(0.5); open('runs/oom-' + os.environ['HTC_JOB_INDEX'], 'a')"
            ".write('end\\n')")
    oom = task.submit_batch({"jobName": "oom", "batchSize": OOM_JOBS, "htcJobDefinition": {
        "commands": [task.parts.profiles.get("cpu").python or sys.executable, "-c", grow], "maxMemory": 128}},
        profile="cpu", retries=policy)
    ids["oom"] = list(oom.ids)
    ids["mpi"] = []
    for k in range(MPI_JOBS):
        f = shlex.quote(str(runs / f"mpi-{k}"))
        rank0 = (f'if [ "${{SLURM_PROCID:-0}}" = 0 ]; then echo "start $(cat /proc/sys/kernel/hostname)" >> {f}; '
                 f'fi; sleep 1; cat /proc/sys/kernel/hostname; if [ "${{SLURM_PROCID:-0}}" = 0 ]; then '
                 f'echo end >> {f}; fi')
        h = task.mpi(["sh", "-c", rank0], nodes=2, ranks_per_node=1, profile="cpu", retries=policy,
                     name=f"mpi-{k}")
        ids["mpi"].append(h.id)
    return ids


def _run_files(runs: Path, ids: dict[str, list[int]], ledger, task_id: int) -> dict[int, tuple[int, int]]:
    """job id -> (runs started, runs finished) from the run files."""
    rows = {r.id: r for r in ledger.jobs(task_id)}
    out = {}
    for kind, job_ids in ids.items():
        for k, job_id in enumerate(job_ids):
            r = rows[job_id]
            name = {"python": f"py-{r.params.get('member')}", "command": f"cmd-{r.index}",
                    "oom": f"oom-{r.index}", "mpi": f"mpi-{k}"}[kind]
            p = runs / name
            lines = p.read_text().splitlines() if p.exists() else []
            out[job_id] = (sum(1 for x in lines if x.startswith("start")), lines.count("end"))
    return out


def _shape(reason: str | None) -> str:
    """A reason with its numbers and ids blanked, to group alike ones."""
    text = re.sub(r"\d+(\.\d+)?", "N", reason or "no reason recorded")
    return text[:160]


def run_once(label: str, site, args, inject: bool) -> dict:
    from htc_notebook import Session

    root = REPO / "test-output" / f"chaos-{uuid.uuid4().hex[:8]}-{label}"
    print(f"{label}: data root {root}", flush=True)
    with Session(root, site=site) as s:
        task = s.project("chaos").task(label)
        runs = task.storage.path("runs")
        runs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ids = _submit(task, args, runs)
        all_ids = [j for v in ids.values() for j in v]
        print(f"{label}: submitted {len(all_ids)} jobs ({', '.join(f'{k} {len(v)}' for k, v in ids.items())}) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        injector = None
        if inject:
            injector = Injector(s, task, set(ids["command"]), args.seed, args.faults, tuple(args.kinds))
            injector.start()
        timed_out, done = None, threading.Event()

        def progress():  # a line every 15 s: where the run is
            while not done.wait(15):
                c = Counter(r.status for r in s.ledger.jobs(task.id))
                print(f"  {label} {time.perf_counter() - t0:6.1f} s: {dict(sorted(c.items()))}", flush=True)

        threading.Thread(target=progress, daemon=True).start()
        group = task.jobs()
        try:
            group.wait(timeout=args.timeout)
        except TimeoutError as e:
            timed_out = str(e)
        wall = time.perf_counter() - t0
        done.set()
        if injector:
            injector.stop.set()
            injector.join(timeout=120)
            injector.cleanup()
        time.sleep(1)  # let a last report land before looking
        led = s.ledger
        rows = {r.id: r for r in led.jobs(task.id)}
        attempts = led.attempts_of(rows)
        results = led.results(rows)
        files = _run_files(runs, ids, led, task.id)
        status = Counter(r.status for r in rows.values())
        active = sorted(j for j, r in rows.items() if r.status in ACTIVE)
        outside = [j for j, r in rows.items() if r.status == "CANCELLED" and "outside" in (r.reason or "")]
        others = defaultdict(list)  # ended neither SUCCEEDED nor cancelled from outside
        for j, r in rows.items():
            if r.status not in ACTIVE and r.status != "SUCCEEDED" and j not in outside:
                others[(r.status, _shape(r.reason))].append(j)
        twice = sorted(j for j, a in attempts.items() if sum(1 for x in a if x.status == "SUCCEEDED") > 1)
        bad_results = sorted(j for j, res in results.items()
                             if rows[j].status != "SUCCEEDED"
                             or not any(a.number == res.attempt and a.status == "SUCCEEDED" for a in attempts[j]))
        no_run = sorted(j for j, r in rows.items() if r.status == "SUCCEEDED" and files[j][1] == 0)
        py_missing = sorted(j for j in ids["python"] if rows[j].status == "SUCCEEDED" and j not in results)
        more = sorted(j for j, (started, _) in files.items() if started > 1)
        # run more often than the ledger has attempts: SLURM ran it again inside one attempt (a
        # requeue after a node failure), or dask re-ran a call whose worker died; not a loss
        beyond = sorted(j for j in more if files[j][0] > len(attempts[j]))
        # the workload never fails by itself (but for the OOM jobs): a failed attempt whose cause is an
        # exit code or none at all came from a fault its reason does not name
        unnamed = defaultdict(list)
        for j, a in attempts.items():
            for x in a:
                if x.status != "SUCCEEDED" and x.cause in (None, "exit") and x.status in ("FAILED", "LOST"):
                    unnamed[f"{x.status} ({x.cause or 'no cause'}): {_shape(x.reason)}"].append(j)
        hit = set(injector.scancelled) if injector else set()
        stray = sorted(j for j in outside if (rows[j].native_id or "").split("/")[0] not in hit)
        drained = _slurm("sinfo", "-h", "-R", "-o", "%n: %E (%H)").stdout.strip().splitlines()
        escalations = sum(1 for j in ids["oom"] for a in attempts[j] if a.cause == "memory")
        causes = Counter(a.cause for a in (x for v in attempts.values() for x in v) if a.cause)
        out = {"label": label, "root": str(root), "jobs": len(rows), "wall": wall, "timed_out": timed_out,
               "status": dict(status), "active": active, "outside": sorted(outside),
               "others": {f"{st}: {shape}": sorted(v) for (st, shape), v in others.items()},
               "twice": twice, "bad_results": bad_results, "no_run": no_run, "py_missing": py_missing,
               "more": more, "beyond": beyond, "runs_hist": dict(Counter(files[j][0] for j in more)),
               "escalations": escalations,
               "oom": [(j, rows[j].status, [a.request.get("memory") if a.request else None for a in attempts[j]])
                       for j in ids["oom"]],
               "causes": dict(causes), "attempts": sum(len(v) for v in attempts.values()),
               "unnamed": {k: sorted(set(v)) for k, v in unnamed.items()}, "stray": stray, "drained": drained,
               "lost": sorted(j for j, r in rows.items() if r.status == "LOST"),
               "fired": dict(injector.fired) if injector else {}, "skipped": dict(injector.skipped) if injector else {},
               "fault_log": injector.log if injector else [], "injector_errors": injector.errors if injector else [],
               "reasons": {j: rows[j].reason for j in active + sorted(j for v in others.values() for j in v)}}
        if active:  # stop what is left so the next run (and the cluster) starts clean
            task.cancel()
    if not _queue_empty(180):
        print(f"{label}: squeue still not empty 180 s after the run", flush=True)
    print(f"{label}: {len(rows)} jobs in {wall:.1f} s: {dict(status)}", flush=True)
    return out


# -- the report --------------------------------------------------------------------------------------
def _ids(ids: list[int], most: int = 12) -> str:
    shown = ", ".join(str(j) for j in ids[:most])
    return f"{shown}, ... ({len(ids)})" if len(ids) > most else shown


def _table(clean: dict, chaos: dict, args) -> str:
    def both(fn):
        return f"| {fn(clean)} | {fn(chaos)} |"

    fired = ", ".join(f"{k} {chaos['fired'].get(k, 0)}" for k in args.kinds)
    skipped = ", ".join(f"{k} {v}" for k, v in chaos["skipped"].items()) or "none"

    def failed(r):
        n = sum(len(v) for v in r["others"].values())
        return f"{n}" + (" (reasons below)" if n else "")

    lines = [
        "| | clean | faults |", "|---|---|---|",
        f"| faults injected | 0 | {sum(chaos['fired'].values())}: {fired} (skipped, nothing to hit: {skipped}) |",
        "| jobs " + both(lambda r: f"{r['jobs']:,}"),
        "| SUCCEEDED " + both(lambda r: f"{r['status'].get('SUCCEEDED', 0):,}"),
        "| CANCELLED from outside (scancel) " + both(lambda r: f"{len(r['outside'])}"),
        "| FAILED / CANCELLED otherwise " + both(failed),
        "| LOST (target 0) " + both(lambda r: f"**{len(r['lost'])}**"),
        "| still active after the wait (must be 0) " + both(lambda r: f"**{len(r['active'])}**"),
        "| results committed twice (must be 0) " + both(lambda r: f"**{len(r['twice']) + len(r['bad_results'])}**"),
        "| SUCCEEDED without a finished run in its file (must be 0) " + both(lambda r: f"{len(r['no_run'])}"),
        "| jobs run more than once (from the run files) "
        + both(lambda r: f"{len(r['more'])}"
               + (f" ({', '.join(f'{n} runs: {c}' for n, c in sorted(r['runs_hist'].items()))})" if r['more'] else "")),
        "| of which run more often than they have attempts " + both(lambda r: f"{len(r['beyond'])}"),
        "| attempts recorded (causes of failed ones) "
        + both(lambda r: f"{r['attempts']:,} "
               f"({', '.join(f'{k} {v}' for k, v in sorted(r['causes'].items())) or 'none'})"),
        "| failed attempts whose reason names no fault (must be 0) "
        + both(lambda r: f"**{sum(len(v) for v in r['unnamed'].values())}**"),
        "| memory escalations of the 2 OOM jobs " + both(lambda r: f"{r['escalations']}"),
        "| wall time, submission to every job ended " + both(lambda r: f"{r['wall']:.1f} s"
                                                             + (" (timed out)" if r['timed_out'] else "")),
        f"| faults / clean | | **{chaos['wall'] / clean['wall']:.2f}x** (+{chaos['wall'] - clean['wall']:.1f} s) |",
    ]
    notes = []
    for r in (clean, chaos):
        for what, ids in r["others"].items():
            notes.append(f"- {r['label']}: {len(ids)} {what} (jobs {_ids(ids)})")
        for key, title in (("active", "still active"), ("twice", "two SUCCEEDED attempts"),
                           ("bad_results", "a result not matching a SUCCEEDED attempt"),
                           ("no_run", "SUCCEEDED with no finished run in its file"),
                           ("py_missing", "Python job SUCCEEDED without a result row"),
                           ("stray", "CANCELLED from outside, but not in an array task the injector scancelled")):
            if r[key]:
                notes.append(f"- {r['label']}: {title}: jobs {_ids(r[key])}")
        for what, ids in r["unnamed"].items():
            notes.append(f"- {r['label']}: an attempt {what} (jobs {_ids(ids)})")
        for line in r["drained"]:
            notes.append(f"- {r['label']}: at the end of the run SLURM had node {line}")
        if r["injector_errors"]:
            notes.append(f"- {r['label']}: injector errors: {'; '.join(r['injector_errors'])}")
    n_cmd, n_py = _sizes(args.jobs)
    head = (f"Seed {args.seed}. Workload per run: {n_cmd} command jobs (SLURM `cpu`, one submit_batch, 0.5-2 s), "
            f"{OOM_JOBS} out-of-memory jobs (300 MiB under maxMemory 128), {MPI_JOBS} MPI jobs (2 nodes x 1 rank), "
            f"{n_py} Python calls (local backend, 0.2-1 s); `RetryPolicy(retries=2, backoff=0)`. The clean run first, "
            f"then the fault run, one process, fresh data roots. A fault every 3-8 s, one at a time, until "
            f"{args.faults} were fired or the work ended.\n\n")
    log = ("\n\nFaults fired (seconds after the injector started):\n\n```\n" + "\n".join(chaos["fault_log"]) + "\n```"
           if chaos["fault_log"] else "")
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=600, help="jobs per run (commands, Python calls, 2 OOM, 3 MPI)")
    ap.add_argument("--faults", type=int, default=12, help="faults to fire in the fault run")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated fault kinds ({', '.join(KINDS)})")
    ap.add_argument("--timeout", type=float, default=600, help="seconds each run may take to end")
    ap.add_argument("--write", help="update this section of this results file")
    args = ap.parse_args()
    import distributed  # noqa: F401 - its logging set up first, then quietened

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines at each Session's close
    args.kinds = [k for k in args.kinds.split(",") if k]
    if bad := set(args.kinds) - set(KINDS):
        ap.error(f"unknown fault kinds {sorted(bad)}; known: {', '.join(KINDS)}")
    state = _nodes_state()
    if not state:
        ap.error("sinfo does not answer: bring the test cluster up (`.venv/bin/htc slurm up`, as root)")
    with tempfile.TemporaryDirectory(prefix="htc-chaos-") as work:  # read by this process only
        site = _site(Path(work))
    _queue_empty(120)
    try:
        clean = run_once("clean", site, args, inject=False)
        _restore_nodes()
        chaos = run_once("faults", site, args, inject=True)
    finally:
        _restore_nodes()
    summary = _table(clean, chaos, args)
    print(summary)
    print(f"nodes at the end: {_nodes_state()}")
    if args.write:
        _write(Path(args.write), "chaos", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
