"""Command jobs as SLURM job arrays, submitted with sbatch so they outlive the kernel.

A group of launches that share a job definition becomes one array per
`MaxArraySize` chunk. Chunks are **fed** as the site allows (design G8): never more of the
user's jobs queued than the tightest limit (`limits.py`: the QOS's and association's submit
limits, MaxJobCount, the profile's `max_queued`, or what sbatch's refusals taught); the rest
wait HELD, with the reason in words, and go out as the queue drains. Each chunk's intent
(`sbatch:<token>` as native id, `--comment=htc:<token>` on the job) is in the ledger before
sbatch runs, so a chunk whose sbatch timed out, or whose submitter died, is looked up in
`squeue` by its comment before it is ever sent again. A poller thread turns what SLURM and the jobs' own files
say into reports: squeue for queued and running tasks (with the pending reason
in words), the exit-code file each task writes when it ends, and `scontrol`
for tasks that left the queue without one (cancelled, timed out, node failure).
A task unknown to all three is LOST, never SUCCEEDED (design G5).
"""

from __future__ import annotations

import getpass
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from htc_notebook.backends.base import PER_JOB_ENV, Launch, Reporter
from htc_notebook.backends.mpi_ranks import is_python_job, rank_dir, read_outcome
from htc_notebook.backends.slurm import limits as site_limits
from htc_notebook.backends.slurm import scheduler
from htc_notebook.errors import BackendError
from htc_notebook.backends.slurm.script import (KILL_AFTER, SLURM_MARGIN, TIMEOUT_EXIT, command_line,
                                                render_array, sbatch_argv)
from htc_notebook.backends.slurm.states import end_reason, explain_pending, htc_status
from htc_notebook.ledger import Outcome
from htc_notebook.ledger.states import TERMINAL_NAMES
from htc_notebook.spec import PartitionProfile
from htc_notebook.storage import atomic_write

FEED_SECONDS = 2.0  # how often held work is looked at (statuses are polled by runtime/watch.py)
EXIT_FILE_GRACE = 30.0  # seconds a job gone from the queue may take to show its exit-code file
PROBES = 8  # a large batch's first jobs run one per array task and are timed
PROBE_WAIT = 120.0  # seconds the rest of the batch waits for the probes before it is sent unbundled
BUNDLE_SECONDS = 20.0  # about this much work per array task when short jobs are bundled
MAX_BUNDLE = 200
LIMITS_TTL = 300.0  # seconds before the site's limits are read again (and a learned one forgotten)
MAX_BACKOFF = 60.0  # seconds between tries while sbatch fails transiently


def bundle_size(median: float | None, jobs: int, slots: int) -> int:
    """How many jobs of `median` seconds an array task runs in turn: about BUNDLE_SECONDS of work,
    but at least two array tasks per slot of the partition (so bundling never leaves it idle).

    >>> bundle_size(0.1, 10_000, 4), bundle_size(30.0, 10_000, 4), bundle_size(None, 50, 4), bundle_size(0.1, 40, 4)
    (200, 1, 1, 5)
    """
    if median is None:
        return 1
    by_time = int(BUNDLE_SECONDS / max(median, 0.01))
    return max(1, min(MAX_BUNDLE, by_time, jobs // (2 * max(slots, 1))))


@dataclass
class Chunk:
    """Launches that go out as one array (one script, consecutive HTC_JOB_INDEX), maybe not yet sent.

    `token` is set once an sbatch of it was attempted without a clear answer: it may be in SLURM
    (looked up by its comment before it is sent again)."""

    launches: list[Launch]
    qos: str | None
    token: str | None = None
    key: object = field(default=None)  # the submit() call that made it
    bundle: int | None = 1  # jobs per array task; None: decided once `probes` have run
    probes: frozenset[int] = frozenset()
    since: float = field(default_factory=time.monotonic)

@dataclass
class Tracked:
    """One array task this process watches."""

    job_id: int
    attempt: int
    native_id: str  # "<array job id>_<task id>", or "<array job id>_<task id>/<bundle>" for a bundled job
    state_dir: Path
    timeout: int | None = None
    last: tuple | None = None  # last (status, reason, host) reported
    gone_since: float | None = None  # monotonic time it was first missing from squeue

    @property
    def task(self) -> str:
        """The array task (squeue's id): one per job, or shared by a bundle."""
        return self.native_id.split("/")[0]

    @property
    def bundled(self) -> bool:
        return "/" in self.native_id


def state_dir(cwd: Path | str) -> Path:
    """Where array scripts, id lists and start/exit files of a task live."""
    return Path(cwd) / ".htc" / "slurm"


class ArrayRunner:
    """Submits command launches as job arrays on one profile and reports on them."""

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *, grace: float = EXIT_FILE_GRACE):
        self.profile = profile
        self._reporter = reporter
        self._grace = grace
        self._tracked: dict[int, Tracked] = {}  # by ledger job id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_array: int | None = None
        self._held: deque[Chunk] = deque()
        self._feed_lock = threading.Lock()
        self._limits: list[site_limits.Limit] = []
        self._limits_read = -LIMITS_TTL  # monotonic time of the last read
        self._learned: site_limits.Limit | None = None  # from sbatch refusing more
        self._retry_at = 0.0
        self._backoff = 1.0
        self._said: dict[int, str] = {}  # held job id -> the reason it was last reported HELD with
        self._timed: dict[int, float | None] = {}  # probe job id -> its run time (None: ended without one)

    # -- submitting --------------------------------------------------------------
    def plan(self, launches: Sequence[Launch]) -> list[tuple[list[Launch], str]]:
        """(chunk, script) pairs: what `submit` would send, without sending it."""
        max_array = self._max_array or scheduler.max_array_size()
        self._max_array = max_array
        plans = []
        for group in _groups(launches):
            for start in range(0, len(group), max_array):
                chunk = group[start:start + max_array]
                plans.append((chunk, self._script(chunk, ids_file="<ids>", commands_file="<commands>")))
        return plans

    def submit(self, launches: Sequence[Launch]) -> None:
        """Send what the site has room for now; hold the rest (fed by the poller as room appears).

        Raises BackendError with sbatch's words when SLURM refuses the first chunk of this call
        for good (bad partition, QOS, request) - then nothing of this call is held or sent."""
        if not launches:
            return
        self._max_array = self._max_array or scheduler.max_array_size()
        call = object()
        with self._lock:
            for group in _groups(launches):
                qos, fixed = self._qos(group[0]), self.profile.bundle
                if fixed is None and len(group) > 2 * PROBES and not group[0].mpi:
                    probes, group = group[:PROBES], group[PROBES:]
                    self._timed.update(dict.fromkeys((l.job_id for l in probes), -1.0))
                    self._held.append(Chunk(probes, qos, key=call))
                    self._held.append(Chunk(group, qos, key=call, bundle=None,
                                            probes=frozenset(l.job_id for l in probes)))
                    continue
                step = self._max_array * (fixed or 1)
                for start in range(0, len(group), step):
                    self._held.append(Chunk(group[start:start + step], qos, key=call, bundle=fixed or 1))
        self._feed(call=call)
        self._ensure_poller()

    def hold(self, launches: Sequence[Launch], tokens: dict[int, str]) -> None:
        """Take over held work of an earlier session (`tokens`: job id -> the intent token of a chunk
        whose sbatch may have gone through); fed like this session's own."""
        self._max_array = self._max_array or scheduler.max_array_size()
        with self._lock:
            for group in _groups(launches):
                by_token: dict[str | None, list[Launch]] = {}
                for l in group:
                    by_token.setdefault(tokens.get(l.job_id), []).append(l)
                for token, part in by_token.items():
                    for start in range(0, len(part), self._max_array):
                        self._held.append(Chunk(part[start:start + self._max_array], self._qos(part[0]),
                                                token=token))
        self._ensure_poller()

    def _decide(self, chunk: Chunk) -> bool:
        """Choose an undecided chunk's bundle size once its probes ran (or PROBE_WAIT passed), and
        split it into arrays of at most MaxArraySize tasks. False while it still waits."""
        times = [self._timed.get(j, -1.0) for j in chunk.probes]
        if any(t is not None and t < 0 for t in times) and time.monotonic() - chunk.since < PROBE_WAIT:
            return False
        ran = sorted(t for t in times if t is not None and t >= 0)
        p = self.profile
        slots = p.cores_per_node * p.max_nodes // max(1, chunk.launches[0].cores)
        k = bundle_size(ran[len(ran) // 2] if ran else None, len(chunk.launches), slots)
        step = (self._max_array or 1) * k
        parts = [Chunk(chunk.launches[i:i + step], chunk.qos, key=chunk.key, bundle=k)
                 for i in range(0, len(chunk.launches), step)]
        with self._lock:
            if self._held and self._held[0] is chunk:
                self._held.popleft()
                self._held.extendleft(reversed(parts))
            for j in chunk.probes:
                self._timed.pop(j, None)
        return True

    def _qos(self, launch: Launch) -> str | None:
        p = self.profile
        return (p.economy_qos or p.qos) if launch.priority else p.qos

    # -- feeding ---------------------------------------------------------------------
    def _site(self) -> list[site_limits.Limit]:
        """The site's limits (read every LIMITS_TTL s), the profile's own cap, and a learned one."""
        now = time.monotonic()
        if now - self._limits_read > LIMITS_TTL:
            self._limits_read = now
            self._learned = None
            try:
                self._limits = site_limits.read_limits()
            except BackendError:
                self._limits = []  # the controller does not answer: refusals will teach us
        out = list(self._limits)
        if self.profile.max_queued:
            part = self.profile.partition or self.profile.name
            out.append(site_limits.Limit(f"partition:{part}", self.profile.max_queued,
                                         f"profile {self.profile.name} allows {self.profile.max_queued:,} (max_queued)"))
        if self._learned:
            out.append(self._learned)
        return out

    def _room(self, chunk: Chunk) -> tuple[int, str | None]:
        limits = site_limits.for_qos(self._site(), chunk.qos)
        return site_limits.room(limits, site_limits.queued_counts()) if limits else (len(chunk.launches), None)

    def _feed(self, call: object | None = None) -> None:
        """Send held chunks while there is room; say why the rest waits."""
        with self._feed_lock:
            sent_of_call = False
            while True:
                with self._lock:
                    chunk = self._held[0] if self._held else None
                if chunk is None or time.monotonic() < self._retry_at:
                    break
                if chunk.bundle is None and not self._decide(chunk):
                    self._say_held(f"held: timing the first {PROBES} jobs of the batch, to choose how many "
                                   "to run per array task")
                    break
                if chunk.bundle is None:
                    continue
                try:
                    if chunk.token and self._resolve(chunk):
                        continue
                    free, why = self._room(chunk)
                except BackendError as exc:  # squeue or the controller: try again later
                    self._transient(exc)
                    break
                if free <= 0:
                    self._say_held(why)
                    break
                part = chunk.launches[:free * chunk.bundle]
                try:
                    self._submit_chunk(part, chunk)
                except BackendError as exc:
                    kind = site_limits.classify(str(exc))
                    if kind == "limit":  # the queue is full (maybe with others' jobs): wait a round
                        used = site_limits.queued_counts().get("user", 0)
                        self._learned = site_limits.Limit("user", max(used, 1),
                                                          f"sbatch refused more ({_first_line(exc)})")
                        self._retry_at = time.monotonic() + FEED_SECONDS
                        self._say_held(f"held: {used:,} of your jobs are queued; sbatch refused more "
                                       f"({_first_line(exc)})")
                        break
                    if kind == "transient":
                        self._transient(exc)
                        break
                    self._refused(chunk, exc, raise_it=call is not None and chunk.key is call and not sent_of_call,
                                  call=call)
                    continue
                sent_of_call = sent_of_call or chunk.key is call
                self._backoff = 1.0
                with self._lock:
                    chunk.launches = chunk.launches[len(part):]
                    chunk.token = None
                    if not chunk.launches and self._held and self._held[0] is chunk:
                        self._held.popleft()

    def _transient(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._say_held(f"held: SLURM does not answer ({_first_line(exc)}); trying again in {self._backoff / 2:.0f} s")

    def _refused(self, chunk: Chunk, exc: BackendError, *, raise_it: bool, call: object | None) -> None:
        """SLURM will not take this chunk: its jobs fail with sbatch's words; nothing else is touched."""
        with self._lock:
            if raise_it:  # the caller hears it: nothing of its call is held any longer
                self._held = deque(c for c in self._held if c.key is not call)
            else:
                self._held.popleft()
        if raise_it:
            raise exc
        for l in chunk.launches:
            self._reporter.finished(Outcome(l.job_id, l.attempt, "FAILED", reason=f"not submitted: {exc}",
                                            ended=time.time()))

    def _say_held(self, why: str) -> None:
        """Report held jobs HELD with `why` (each job once per new reason)."""
        with self._lock:
            ids = [l.job_id for c in self._held for l in c.launches]
        new = [i for i in ids if self._said.get(i) != why]
        if new:
            self._reporter.update(new, "HELD", reason=why)
        self._said = {i: self._said.get(i, why) for i in ids} | dict.fromkeys(new, why)

    def _resolve(self, chunk: Chunk) -> bool:
        """Was a chunk whose sbatch gave no clear answer accepted? Look for its comment in squeue.
        True (and tracked) if it was; False if SLURM answers without it (then it is sent again)."""
        found = scheduler.squeue_comments(getpass.getuser()).get(f"htc:{chunk.token}")
        if not found:
            chunk.token = None
            return False
        self._track(chunk.launches, found, chunk.bundle or 1)
        with self._lock:
            if self._held and self._held[0] is chunk:
                self._held.popleft()
        return True

    def _submit_chunk(self, chunk: list[Launch], of: Chunk) -> None:
        first = chunk[0]
        sdir = state_dir(first.cwd)
        sdir.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:16]
        # the intent, before sbatch: a restart looks this chunk up by its comment instead of sending it
        # twice; a job cancelled meanwhile (by any process) gets its .cancel file, so its array task skips it
        live = self._reporter.sending([l.job_id for l in chunk], f"sbatch:{token}", "being submitted to SLURM")
        if not live:
            return  # all cancelled while they waited: nothing to send
        for l in chunk:
            if l.job_id not in live:
                stop_bundled(sdir, l.job_id, l.attempt)
        stem = sdir / f"array-{first.job_id}-{first.attempt}"
        ids_file = Path(f"{stem}.ids")
        atomic_write(ids_file, "".join(f"{l.job_id} {l.attempt}\n" for l in chunk).encode())
        commands_file = None
        if any(l.command != first.command for l in chunk):
            commands_file = Path(f"{stem}.commands")
            atomic_write(commands_file, "".join(command_line(l.command) + "\n" for l in chunk).encode())
        script = Path(f"{stem}.sh")
        atomic_write(script, self._script(chunk, str(ids_file), str(commands_file) if commands_file else None,
                                          of.bundle or 1).encode())
        try:
            job = scheduler.sbatch(sbatch_argv(str(script), wrapper_log=f"{stem}-%a.log", chdir=str(first.cwd),
                                               comment=f"htc:{token}"))
        except BackendError as exc:
            if site_limits.classify(str(exc)) == "transient":
                of.token = token  # no clear answer: it may be in SLURM
            raise
        self._track(chunk, job, of.bundle or 1, live)

    def _track(self, chunk: list[Launch], job: str, bundle: int, live: set[int] | None = None) -> None:
        """Watch array `job` (job i of the chunk is in task i // bundle) and record the native ids now
        (of the `live` jobs: the others were cancelled before sbatch and are skipped by their task)."""
        sdir = state_dir(chunk[0].cwd)
        natives = {l.job_id: f"{job}_{i // bundle}" + (f"/{bundle}" if bundle > 1 else "")
                   for i, l in enumerate(chunk) if live is None or l.job_id in live}
        with self._lock:
            for l in chunk:
                if l.job_id in natives:
                    self._tracked[l.job_id] = Tracked(l.job_id, l.attempt, natives[l.job_id], sdir, l.timeout)
        what = f"as array {job}" + (f", {bundle} jobs per array task" if bundle > 1 else "")
        self._reporter.submitted(natives, reason=f"submitted to SLURM {what}")

    def _script(self, chunk: list[Launch], ids_file: str, commands_file: str | None, bundle: int = 1) -> str:
        first, p = chunk[0], self.profile
        env = {k: v for k, v in first.env.items() if k not in PER_JOB_ENV}
        same_command = all(l.command == first.command for l in chunk)
        return render_array(
            job_name=f"htc-{first.name}"[:64], size=len(chunk), ids_file=ids_file,
            offset=int(first.env.get("HTC_JOB_INDEX", 0)), task_dir=str(first.cwd),
            log_dir=str(Path(first.log_out).parent), state_dir=str(state_dir(first.cwd)),
            partition=p.partition or p.name, command=first.command if same_command else None,
            commands_file=None if same_command else (commands_file or "<commands>"),
            cpus_per_task=first.mpi.cpus_per_rank if first.mpi else first.cores,
            nodes=first.mpi.nodes if first.mpi else None,
            ntasks_per_node=first.mpi.ranks_per_node if first.mpi else None,
            mem_mib=first.memory, tmp_gib=first.disk_gib,
            timeout_s=first.timeout, time_s=_bundle_time(first.timeout, bundle, p),
            account=p.account, qos=(p.economy_qos or p.qos) if first.priority else p.qos,
            constraints=p.constraints, gres=f"gpu:{first.gpus}" if first.gpus else None,
            throttle=first.throttle, setup=p.setup, env=env, bundle=bundle)

    # -- adopting jobs submitted by an earlier process ------------------------------
    def adopt(self, job_id: int, attempt: int, native_id: str, cwd: str | Path, timeout: int | None) -> None:
        with self._lock:
            if job_id in self._tracked:
                return
            self._tracked[job_id] = Tracked(job_id, attempt, native_id, state_dir(cwd), timeout)
        self._ensure_poller()

    # -- the rest of the backend interface --------------------------------------------
    def cancel(self, job_ids: Sequence[int]) -> None:
        wanted = set(job_ids)
        with self._lock:
            tracked = [self._tracked[j] for j in wanted if j in self._tracked]
            for c in self._held:  # held jobs just leave the queue (the ledger already says CANCELLED)
                if c.token is None:
                    c.launches = [l for l in c.launches if l.job_id not in wanted]
            self._held = deque(c for c in self._held if c.launches)
        for t in tracked:
            if t.bundled:  # the others of its array task go on
                stop_bundled(t.state_dir, t.job_id, t.attempt)
        scheduler.scancel([t.task for t in tracked if not t.bundled])

    def forget(self, job_ids: Sequence[int]) -> None:
        """Stop watching jobs another process has recorded as ended (the data root's one poller)."""
        with self._lock:
            for j in job_ids:
                self._tracked.pop(j, None)

    def tracked(self) -> set[int]:
        """Jobs in SLURM this runner watches."""
        with self._lock:
            return set(self._tracked)

    def running(self) -> set[int]:
        """Jobs this runner is responsible for: tracked in SLURM or held for feeding."""
        with self._lock:
            return set(self._tracked) | {l.job_id for c in self._held for l in c.launches}

    def close(self) -> None:
        """Stop watching. The jobs keep running in SLURM; a later session adopts them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- watching --------------------------------------------------------------------
    def _ensure_poller(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._feed_loop, name="htc-slurm-feed", daemon=True)
                self._thread.start()

    def _feed_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._feed()
            except Exception as exc:  # noqa: BLE001 - feeding goes on next round
                self._last_error = exc
            self._stop.wait(FEED_SECONDS)

    def poll(self) -> float:
        """One look at every tracked task; reports what changed. Called by the data root's one
        poller (runtime/watch.py); raises BackendError when squeue fails (the poller backs off).
        Returns the seconds squeue took. Jobs of pending array tasks are not looked for on disk."""
        with self._lock:
            tracked = list(self._tracked.values())
        if not tracked:
            return 0.0
        t0 = time.monotonic()
        queue = scheduler.squeue({t.task.split("_")[0] for t in tracked})
        took = time.monotonic() - t0
        missing: list[Tracked] = []
        for t in tracked:
            entry = queue.get(t.task)
            status = htc_status(entry.state) if entry else None
            ended = _read_exit(t) if status != "RUNNABLE" else None
            if ended is not None:
                self._finish(t, ended)
            elif entry is not None:
                reason = explain_pending(entry.reason) if status == "RUNNABLE" else None
                host = _read_start_host(t) if status != "RUNNABLE" else None
                if t.bundled and status == "RUNNING" and host is None:
                    status, reason = "RUNNABLE", f"waiting its turn in array task {t.task} (bundled jobs run in turn)"
                self._report(t, status, reason, host or (entry.nodes or None))
            else:
                missing.append(t)
        for array_id in {t.task.split("_")[0] for t in missing}:
            group = [m for m in missing if m.task.startswith(array_id + "_")]
            known = scheduler.scontrol_jobs(array_id)
            if any(m.task not in known for m in group):  # scontrol forgets after MinJobAge: accounting
                known = {**scheduler.sacct_jobs(array_id), **known}
            for t in group:
                self._resolve_missing(t, known.get(t.task))
        return took

    def _report(self, t: Tracked, status: str, reason: str | None, host: str | None) -> None:
        if t.last == (status, reason, host):
            return
        t.last = (status, reason, host)
        self._reporter.update([t.job_id], status, reason=reason, host=host)

    def _resolve_missing(self, t: Tracked, fields: dict[str, str] | None) -> None:
        ended = _read_exit(t)  # it may have finished between squeue and now
        if ended is not None:
            self._finish(t, ended)
            return
        if t.bundled and (t.state_dir / f"job-{t.job_id}-{t.attempt}.cancel").exists():
            self._finish(t, Outcome(t.job_id, t.attempt, "CANCELLED", reason="cancelled before its turn in "
                                    f"bundle {t.task}", ended=time.time()))
            return
        now = time.monotonic()
        t.gone_since = t.gone_since or now
        waited = now - t.gone_since
        if fields is None:
            if waited >= self._grace:
                self._finish(t, Outcome(t.job_id, t.attempt, "LOST", reason=(
                    f"SLURM job {t.native_id} is not in squeue, unknown to scontrol and accounting, and wrote "
                    f"no exit-code file within {self._grace:.0f} s: it did not finish normally. Retry it")))
            return
        state = fields.get("JobState", "")
        status = htc_status(state)
        if status not in TERMINAL_NAMES:
            t.gone_since = None  # SLURM still has it (requeued, completing)
            self._report(t, status, None, fields.get("NodeList") or None)
            return
        if state.split()[0] in ("COMPLETED", "FAILED") and waited < self._grace:
            return  # its script ran to the end: the exit-code file may still be on its way
        code = fields.get("ExitCode", "0:0").split(":")
        exit_code = int(code[0]) if code[0].isdigit() else None
        if status == "SUCCEEDED" and t.bundled:  # its array task ended, but this job wrote no exit file
            self._finish(t, Outcome(t.job_id, t.attempt, "LOST", reason=(
                f"array task {t.task} ended without running it (no start or exit file). Retry it"),
                ended=time.time()))
            return
        if status == "SUCCEEDED" and exit_code not in (0, None):
            status = "FAILED"
        reason = end_reason(state) or (f"exited with code {exit_code}" if status == "FAILED" else None)
        if status == "CANCELLED":
            reason = "cancelled in SLURM (scancel from outside htc_notebook, or an administrator)"
        host = fields.get("BatchHost") or fields.get("NodeList")
        self._finish(t, Outcome(t.job_id, t.attempt, status, reason=f"{reason} [{t.native_id} {state}]"
                                if reason else None, exit_code=exit_code, host=host, ended=time.time()))

    def _finish(self, t: Tracked, outcome: Outcome) -> None:
        with self._lock:
            if self._tracked.get(t.job_id) is t:
                del self._tracked[t.job_id]
            if t.job_id in self._timed:  # a probe: how long it ran decides the bundle size
                ran = outcome.ended - outcome.started if outcome.started and outcome.ended else None
                self._timed[t.job_id] = ran
        self._reporter.finished(outcome)


def _bundle_time(timeout: int | None, bundle: int, profile: PartitionProfile) -> int | None:
    """The array task's --time: each job's timeout (plus the kill margin) for every job of the bundle,
    at most the partition's limit (bundled jobs were measured short; a bundle that still runs out
    of time leaves its unrun jobs to SLURM's TIMEOUT verdict); without a timeout, the profile's default."""
    if not timeout:
        return profile.default_walltime
    wanted = bundle * (timeout + KILL_AFTER) + SLURM_MARGIN
    return min(wanted, profile.max_walltime) if profile.max_walltime else wanted


def stop_bundled(sdir: Path | str, job_id: int, attempt: int) -> None:
    """Cancel one job of a bundle: its array task skips it, or stops it (TERM) if it is running."""
    Path(sdir, f"job-{job_id}-{attempt}.cancel").touch()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _groups(launches: Sequence[Launch]) -> list[list[Launch]]:
    """Launches that can share one array script: same directory, resources, env and priority."""
    groups: dict[tuple, list[Launch]] = {}
    for l in launches:
        env = tuple(sorted((k, v) for k, v in l.env.items() if k not in PER_JOB_ENV))
        key = (str(l.cwd), l.cores, l.mpi, l.memory, l.disk_gib, l.gpus, l.timeout, l.priority, l.throttle, env)
        groups.setdefault(key, []).append(l)
    out = []
    for group in groups.values():
        # HTC_JOB_INDEX must run consecutively inside one array: split where it does not
        run = [group[0]]
        for l in group[1:]:
            if int(l.env.get("HTC_JOB_INDEX", -2)) == int(run[-1].env.get("HTC_JOB_INDEX", -9)) + 1:
                run.append(l)
            else:
                out.append(run)
                run = [l]
        out.append(run)
    return out


def _epoch(text: str) -> float:
    """A time the job script wrote (bash's EPOCHREALTIME has the locale's decimal point)."""
    return float(text.replace(",", "."))


def _read_exit(t: Tracked) -> Outcome | None:
    """The task's own record of how it ended: "<rc> <host> <epoch>" (None if not there yet)."""
    try:
        rc, host, when = (t.state_dir / f"job-{t.job_id}-{t.attempt}.exit").read_text().split()[:3]
        ended = _epoch(when)
    except (FileNotFoundError, ValueError):
        return None
    code = int(rc)
    started = _read_start(t)
    ranks = rank_dir(t.state_dir.parent.parent, t.job_id, t.attempt)
    if is_python_job(ranks):  # an MPI function: the ranks' reports decide, and carry rank 0's value
        status, reason, result = read_outcome(ranks, code)
        return Outcome(t.job_id, t.attempt, status, reason=reason, exit_code=code, host=host,
                       started=started, ended=ended, result=result)
    if code == 0:
        return Outcome(t.job_id, t.attempt, "SUCCEEDED", exit_code=0, host=host,
                       started=started, ended=ended)
    if code == TIMEOUT_EXIT and t.timeout:
        reason = f"timeout: killed after execTimeoutSeconds={t.timeout}"
    elif code > 128:
        reason = f"killed by signal {code - 128}"
    else:
        reason = f"exited with code {code}"
    return Outcome(t.job_id, t.attempt, "FAILED", reason=reason, exit_code=code, host=host,
                   started=started, ended=ended)


def _read_start(t: Tracked) -> float | None:
    try:
        return _epoch((t.state_dir / f"job-{t.job_id}-{t.attempt}.start").read_text().split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _read_start_host(t: Tracked) -> str | None:
    try:
        return (t.state_dir / f"job-{t.job_id}-{t.attempt}.start").read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None
