"""Command jobs as SLURM job arrays, submitted with sbatch so they outlive the kernel.

A group of launches that share a job definition becomes one array per
`MaxArraySize` chunk, sent as the site has room (`feeder.py`, design G8). Each chunk's intent
(`sbatch:<token>` as native id, `--comment=htc:<token>` on the job) is in the ledger before
sbatch runs, so a chunk whose sbatch timed out, or whose submitter died, is looked up in
`squeue` by its comment before it is ever sent again. `poll()` (called by the data root's one
poller, runtime/watch.py) turns what SLURM and the jobs' own files say into reports: squeue for
queued and running tasks (with the pending reason in words), the exit-code file each task writes
when it ends, and `scontrol` for tasks that left the queue without one (cancelled, timed out, node
failure).
A task unknown to all three is LOST, never SUCCEEDED (design G5).

Once no task of an array is in the queue any more, the start, exit and cancel files of its jobs
that were reported are removed (`_forget_state`): before that, a requeued array task (a node lost, a
preemption) skips the jobs of its bundle that have an exit file. What stays of an array is its
script, id list, commands and its script's own output: four files for up to MaxArraySize jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from htc_notebook.backends.base import PER_JOB_ENV, Launch, Reporter, afterok_reason, disk_full_reason, oom_reason
from htc_notebook.backends.mpi_ranks import is_python_job, rank_dir, read_outcome
from htc_notebook.backends.slurm import limits as site_limits
from htc_notebook.backends.slurm import scheduler
from htc_notebook.backends.slurm.feeder import FEED_SECONDS, Chunk, Feeder
from htc_notebook.errors import BackendError, UntrustedFile
from htc_notebook.backends.slurm.script import (KILL_AFTER, SLURM_MARGIN, TIMEOUT_EXIT, command_line,
                                                render_array, sbatch_argv)
from htc_notebook.backends.slurm.states import end_cause, end_reason, explain_pending, htc_status
from htc_notebook.states import TERMINAL_NAMES, Cause, Outcome
from htc_notebook.spec import PartitionProfile
from htc_notebook.storage import atomic_write
from htc_notebook.storage.untrusted import open_dir_below, open_in

log = logging.getLogger(__name__)

EXIT_FILE_GRACE = 30.0  # seconds a job gone from the queue may take to show its exit-code file


@dataclass
class Tracked:
    """One array task this process watches."""

    job_id: int
    attempt: int
    native_id: str  # "<array job id>_<task id>", or "<array job id>_<task id>/<bundle>" for a bundled job
    state_dir: Path
    timeout: int | None = None
    memory: int | None = None  # MiB asked for (to say so when the cgroup kills it)
    disk_gib: int | None = None  # its scratch (to say so when it fills up)
    last: tuple | None = None  # last (status, reason, host) reported
    waits: str | None = None  # sent behind its parents (afterok): what it waits for, in words
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
        self._reported: dict[str, list[Tracked]] = {}  # by array id: jobs whose state files may go
        self._dirs = StateDirs()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_array: int | None = None
        self.feeder = Feeder(profile, reporter, send=self._submit_chunk, track=self._track)

    # -- submitting --------------------------------------------------------------
    @property
    def max_array(self) -> int:
        """The cluster's MaxArraySize, asked of SLURM once."""
        if self._max_array is None:
            self._max_array = scheduler.max_array_size()
        return self._max_array

    def submit(self, launches: Sequence[Launch]) -> None:
        """Send what the site has room for now; hold the rest (fed by the poller as room appears).

        Raises BackendError with sbatch's words when SLURM refuses the first chunk of this call
        for good (bad partition, QOS, request) - then nothing of this call is held or sent."""
        if not launches:
            return
        self.feeder.max_array = self.max_array
        self.feeder.feed(call=self.feeder.add(_groups(launches)))
        self._ensure_poller()

    def has_room(self, launches: Sequence[Launch]) -> bool:
        """Would these launches go to sbatch now: nothing held before them and room in the site's
        limits (G8)? Raises BackendError when SLURM does not answer."""
        if not launches or self.feeder.held():
            return not launches
        return self.feeder.room_for(launches[0], len(launches))

    def hold(self, launches: Sequence[Launch], tokens: dict[int, str]) -> None:
        """Take over held work of an earlier session (`tokens`: job id -> the intent token of a chunk
        whose sbatch may have gone through); fed like this session's own."""
        self.feeder.max_array = self.max_array
        self.feeder.hold(_groups(launches), tokens)
        self._ensure_poller()

    def _submit_chunk(self, chunk: list[Launch], of: Chunk) -> None:
        first = chunk[0]
        sdir = state_dir(first.cwd)
        sdir.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:16]
        # the intent, before sbatch: a restart looks this chunk up by its comment instead of sending it
        # twice; a job cancelled meanwhile (by any process) gets its .cancel file, so its array task skips it
        live = self._reporter.sending([launch.job_id for launch in chunk], f"sbatch:{token}",
                                      "being submitted to SLURM")
        if not live:
            return  # all cancelled while they waited: nothing to send
        for launch in chunk:
            if launch.job_id not in live:
                stop_bundled(sdir, launch.job_id, launch.attempt)
        stem = sdir / f"array-{first.job_id}-{first.attempt}"
        ids_file = Path(f"{stem}.ids")
        atomic_write(ids_file, "".join(f"{launch.job_id} {launch.attempt}\n" for launch in chunk).encode())
        commands_file = None
        if any(launch.command != first.command for launch in chunk):
            commands_file = Path(f"{stem}.commands")
            atomic_write(commands_file, "".join(command_line(launch.command) + "\n" for launch in chunk).encode())
        script = Path(f"{stem}.sh")
        atomic_write(script, array_script(self.profile, chunk, str(ids_file),
                                          str(commands_file) if commands_file else None, of.bundle or 1).encode())
        try:
            job = scheduler.sbatch(sbatch_argv(str(script), wrapper_log=f"{stem}.log", chdir=str(first.cwd),
                                               comment=f"htc:{token}", after=first.after))
        except BackendError as exc:
            if site_limits.classify(str(exc)) == "transient":
                of.token = token  # no clear answer: it may be in SLURM
            raise
        self._track(chunk, job, of.bundle or 1, live)

    def _track(self, chunk: list[Launch], job: str, bundle: int, live: set[int] | None = None) -> None:
        """Watch array `job` (job i of the chunk is in task i // bundle) and record the native ids now
        (of the `live` jobs: the others were cancelled before sbatch and are skipped by their task)."""
        sdir = state_dir(chunk[0].cwd)
        natives = {launch.job_id: f"{job}_{i // bundle}" + (f"/{bundle}" if bundle > 1 else "")
                   for i, launch in enumerate(chunk) if live is None or launch.job_id in live}
        waits = afterok_reason(chunk[0].after_jobs) if chunk[0].after else None
        with self._lock:
            for launch in chunk:
                if launch.job_id in natives:
                    self._tracked[launch.job_id] = Tracked(launch.job_id, launch.attempt, natives[launch.job_id], sdir,
                                                           launch.timeout, launch.memory, launch.disk_gib,
                                                           waits=waits)
        what = f"as array {job}" + (f", {bundle} jobs per array task" if bundle > 1 else "")
        self._reporter.submitted(natives, reason=f"{waits}: submitted to SLURM {what}" if waits
                                 else f"submitted to SLURM {what}")

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
        self.feeder.cancel(wanted)
        with self._lock:
            tracked = [self._tracked[j] for j in wanted if j in self._tracked]
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
            tracked = set(self._tracked)
        return tracked | self.feeder.held()

    def close(self) -> None:
        """Stop watching. The jobs keep running in SLURM; a later session adopts them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._dirs.close()

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
                self.feeder.feed()
            except Exception:  # feeding goes on next round
                log.exception("feeding SLURM array chunks failed; trying again in %s s", FEED_SECONDS)
            self._stop.wait(FEED_SECONDS)

    def poll(self) -> float:
        """One look at every tracked task; reports what changed. Called by the data root's one
        poller (runtime/watch.py); raises BackendError when squeue fails (the poller backs off).
        Returns the seconds squeue took. Jobs of pending array tasks are not looked for on disk."""
        with self._lock:
            tracked = list(self._tracked.values())
            reported = set(self._reported)
        if not tracked and not reported:
            return 0.0
        t0 = time.monotonic()
        arrays = {t.task.split("_")[0] for t in tracked}
        queue = scheduler.squeue(arrays | reported)
        took = time.monotonic() - t0
        self._forget_state(reported - arrays - {task.split("_")[0] for task in queue})
        missing: list[Tracked] = []
        for t in tracked:
            entry = queue.get(t.task)
            status = htc_status(entry.state) if entry else None
            ended = _read_exit(t, self._dirs) if status != "RUNNABLE" else None
            if ended is not None:
                self._finish(t, ended)
            elif entry is not None:
                assert status is not None  # the state of an entry squeue lists
                reason = explain_pending(entry.reason) if status == "RUNNABLE" else None
                if t.waits and status == "RUNNABLE" and entry.reason.strip("()") == "Dependency":
                    reason = t.waits  # which jobs, not only that it waits for some
                elif t.waits and status == "RUNNABLE" and entry.reason.strip("()") == "DependencyNeverSatisfied":
                    reason = f"{t.waits}: one of them did not succeed (SLURM DependencyNeverSatisfied); it fails for it"
                host = _read_start_host(t, self._dirs) if status != "RUNNABLE" else None
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
        ended = _read_exit(t, self._dirs)  # it may have finished between squeue and now
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
        if status == "SUCCEEDED":  # SLURM says the script ended well, but the job wrote no exit file
            started = _read_start(t, self._dirs) is not None
            what = ("started (its start file is there) but wrote no exit-code file: it was stopped before "
                    "it finished" if started else "ended without running it (no start or exit file)")
            self._finish(t, Outcome(t.job_id, t.attempt, "LOST", reason=(
                f"array task {t.task} {what}. Retry it [{t.native_id} {state}]"), ended=time.time()))
            return
        code = fields.get("ExitCode", "0:0").split(":")
        exit_code = int(code[0]) if code[0].isdigit() else None
        reason = end_reason(state) or (f"exited with code {exit_code}" if status == "FAILED" else None)
        if status == "CANCELLED":
            reason = "cancelled in SLURM (scancel from outside htc_notebook, or an administrator)"
        host = fields.get("BatchHost") or fields.get("NodeList")
        self._finish(t, Outcome(t.job_id, t.attempt, status, reason=f"{reason} [{t.native_id} {state}]"
                                if reason else None, exit_code=exit_code, host=host, ended=time.time(),
                                cause=end_cause(state) if status == "FAILED" else None))

    def _finish(self, t: Tracked, outcome: Outcome) -> None:
        with self._lock:
            if self._tracked.get(t.job_id) is t:
                del self._tracked[t.job_id]
            self._reported.setdefault(t.task.split("_")[0], []).append(t)
        self.feeder.timed(t.job_id, outcome)
        self._reporter.finished(outcome)

    def _forget_state(self, arrays: set[str]) -> None:
        """Remove the start, exit and cancel files of the reported jobs of `arrays`, which have no
        task left in the queue (nothing can run them again), from their state directories opened
        without following a link (a job may have replaced `.htc` or its files)."""
        for array_id in arrays:
            with self._lock:
                done = self._reported.pop(array_id, [])
            try:
                for t in done:
                    self._dirs.remove(t)
            except (OSError, UntrustedFile) as exc:
                log.warning("state files of array %s left: %s", array_id, exc)


def _bundle_time(timeout: int | None, bundle: int, profile: PartitionProfile) -> int | None:
    """The array task's --time: each job's timeout (plus the kill margin) for every job of the bundle,
    at most the partition's limit (bundled jobs were measured short; a bundle that still runs out
    of time leaves its unrun jobs to SLURM's TIMEOUT verdict); without a timeout, the profile's default."""
    if not timeout:
        return profile.default_walltime
    wanted = bundle * (timeout + KILL_AFTER) + SLURM_MARGIN
    return min(wanted, profile.max_walltime) if profile.max_walltime else wanted


def array_script(p: PartitionProfile, chunk: list[Launch], ids_file: str, commands_file: str | None,
                 bundle: int = 1) -> str:
    """The sbatch script of one array: the jobs of `chunk` (one group of `_groups`), `bundle` per array task."""
    first = chunk[0]
    env = {k: v for k, v in first.env.items() if k not in PER_JOB_ENV}
    same_command = all(launch.command == first.command for launch in chunk)
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
        throttle=first.throttle, setup=p.setup, env=env, bundle=bundle, options=p.sbatch_options)


def array_scripts(profile: PartitionProfile, launches: Sequence[Launch],
                  max_array: int) -> list[tuple[list[Launch], str]]:
    """(chunk, script) pairs: the arrays `ArrayRunner.submit` would send, with placeholder file names."""
    return [(chunk, array_script(profile, chunk, ids_file="<ids>", commands_file="<commands>"))
            for group in _groups(launches)
            for chunk in (group[i:i + max_array] for i in range(0, len(group), max_array))]


def stop_bundled(sdir: Path | str, job_id: int, attempt: int) -> None:
    """Cancel one job of a bundle: its array task skips it, or stops it (TERM) if it is running."""
    Path(sdir, f"job-{job_id}-{attempt}.cancel").touch()


def _groups(launches: Sequence[Launch]) -> list[list[Launch]]:
    """Launches that can share one array script: same directory, resources, env and priority."""
    groups: dict[tuple, list[Launch]] = {}
    for launch in launches:
        env = tuple(sorted((k, v) for k, v in launch.env.items() if k not in PER_JOB_ENV))
        key = (str(launch.cwd), launch.cores, launch.mpi, launch.memory, launch.disk_gib, launch.gpus, launch.timeout,
               launch.priority, launch.throttle, env, launch.after, launch.after_jobs)
        groups.setdefault(key, []).append(launch)
    out = []
    for group in groups.values():
        # HTC_JOB_INDEX must run consecutively inside one array: split where it does not
        run = [group[0]]
        for launch in group[1:]:
            if int(launch.env.get("HTC_JOB_INDEX", -2)) == int(run[-1].env.get("HTC_JOB_INDEX", -9)) + 1:
                run.append(launch)
            else:
                out.append(run)
                run = [launch]
        out.append(run)
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat's unit, on the nodes as here


def _epoch(text: str) -> float:
    """A time the job script wrote (bash's EPOCHREALTIME has the locale's decimal point)."""
    return float(text.replace(",", "."))


def _read_exit(t: Tracked, dirs: StateDirs) -> Outcome | None:
    """The task's own record of how it ended: "<rc> <host> <epoch> <ok|oom> <cpu ticks> <peak bytes|-|?>"
    (None if not there yet; files of older scripts end after <epoch>)."""
    try:
        rc, host, when, *rest = dirs.words(t, "exit")
        ended = _epoch(when)
    except (FileNotFoundError, ValueError):
        return None
    except UntrustedFile as exc:
        return Outcome(t.job_id, t.attempt, "FAILED", reason=f"its exit file is not the toolkit's: {exc}",
                       ended=time.time())
    code = int(rc)
    how, cpu, peak = (rest + ["ok", "-", "-"][len(rest):])[:3]
    used: dict[str, Any] = {
        "cpu_s": round(int(cpu) / CLOCK_TICKS, 2) if cpu.isdigit() else None,
        "max_rss_mib": round(int(peak) / 2**20, 1) if peak.isdigit() else None,
        # a peak means the script found the job's memory cgroup: the site's, which holds --mem
        # (`?`: found, but a job of a bundle whose peak it could not tell apart from those before)
        "memory_held": ("cgroup" if peak.isdigit() or peak == "?" else "none") if t.memory else None}
    started = _read_start(t, dirs)
    ranks = rank_dir(t.state_dir.parent.parent, t.job_id, t.attempt)
    if is_python_job(ranks):  # an MPI function: the ranks' reports decide, and carry rank 0's value
        status, reason, result = read_outcome(ranks, code)
        return Outcome(t.job_id, t.attempt, status, reason=reason, exit_code=code, host=host,
                       started=started, ended=ended, result=result)
    if code == 0 and how != "oom":  # a process the OOM killer stopped fails the job, whatever its shell returned
        return Outcome(t.job_id, t.attempt, "SUCCEEDED", exit_code=0, host=host,
                       started=started, ended=ended, **used)
    cause = Cause.EXIT
    if how == "oom":
        reason, cause = oom_reason(t.memory), Cause.MEMORY
    elif code == TIMEOUT_EXIT and t.timeout:
        reason, cause = f"timeout: killed after execTimeoutSeconds={t.timeout}", Cause.TIMEOUT
    elif code > 128:
        reason = f"killed by signal {code - 128}"
    else:
        reason = f"exited with code {code}"
        full = disk_full_reason(t.state_dir.parent.parent / "logs" / f"job-{t.job_id}.err", t.disk_gib)
        reason = f"{reason}; {full}" if full else reason
    return Outcome(t.job_id, t.attempt, "FAILED", reason=reason, exit_code=code, host=host,
                   started=started, ended=ended, cause=cause, **used)


def _read_start(t: Tracked, dirs: StateDirs) -> float | None:
    try:
        return _epoch(dirs.words(t, "start")[1])
    except (FileNotFoundError, ValueError, IndexError, UntrustedFile):
        return None


def _read_start_host(t: Tracked, dirs: StateDirs) -> str | None:
    try:
        return dirs.words(t, "start")[0]
    except (FileNotFoundError, IndexError, UntrustedFile):
        return None


class StateDirs:
    """The state directories (task/.htc/slurm) a runner reads start and exit files in, each opened
    once without following links and kept open (a job that replaces `.htc` later does not move
    them), the most recently used MAX_OPEN of them; each file opened by name in it, as untrusted
    input (`storage.untrusted.open_in`). A poll looks for the exit file of every job of every running
    array task: by path, each look cost a dozen path operations (seconds per poll at 10,000 jobs)."""

    MAX_OPEN = 64

    def __init__(self) -> None:
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._lock = threading.Lock()

    def _dir(self, sdir: Path) -> int:
        fd = self._fds.get(sdir)
        if fd is not None:
            self._fds.move_to_end(sdir)
            return fd
        fd = open_dir_below(sdir.parent.parent, ".htc", "slurm", create=False)
        if fd is None:
            raise FileNotFoundError(sdir)
        self._fds[sdir] = fd
        if len(self._fds) > self.MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def words(self, t: Tracked, kind: str) -> list[str]:
        """The words of job `t`'s start or exit file (`kind`): a few, read as untrusted input."""
        name = f"job-{t.job_id}-{t.attempt}.{kind}"
        with self._lock:
            fd = open_in(self._dir(t.state_dir), name, f"{t.state_dir}/{name}")
        try:
            return os.pread(fd, 4096, 0).decode(errors="replace").split()
        finally:
            os.close(fd)

    def remove(self, t: Tracked) -> None:
        """Remove job `t`'s start, exit and cancel files."""
        with self._lock:
            fd = self._dir(t.state_dir)
            for kind in ("start", "exit", "cancel"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"job-{t.job_id}-{t.attempt}.{kind}", dir_fd=fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
