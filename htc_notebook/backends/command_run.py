"""One command job run to its end by this process: its memory limit held, its scratch, its logs, its timeout.

The local runner (`local_commands.CommandRunner`) and a SLURM pilot's worker (`pilot_commands`) run
their command jobs that no zygote runs (MPI programs, jobs in an image) through `run_command`. The
job runs in a session (process group) of its own in its task directory; a timeout or a stop kills
the whole group.

>>> import tempfile; from pathlib import Path; from htc_notebook.spec.jobspec import JobSpec
>>> d = Path(tempfile.mkdtemp())
>>> launch = Launch(job_id=1, attempt=1, kind="command", cwd=d, env={}, log_out=str(d / "o"), log_err=str(d / "e"),
...                 spec=JobSpec(commands=("sh", "-c", "echo hi; exit 3")))
>>> ran = run_command(launch, registered=lambda proc: False, unregistered=lambda: False)
>>> ran.status, ran.exit_code, ran.reason, (d / "o").read_text()
('FAILED', 3, 'exited with code 3', 'hi\\n')
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from htc_notebook.backends.base import JOB_UMASK, Launch, disk_full_reason, oom_reason, watched_oom_reason
from htc_notebook.backends.memory_limit import Verdict, hold
from htc_notebook.backends.mpi_ranks import kill_group
from htc_notebook.backends.scratch_dirs import remove_scratch, unconfined_scratch
from htc_notebook.errors import UntrustedFile
from htc_notebook.states import Outcome
from htc_notebook.storage.untrusted import job_logs


@dataclass(frozen=True)
class Ran:
    """How one command job's run went (the caller makes its Outcome: an MPI job's ranks decide theirs)."""

    status: str  # SUCCEEDED, FAILED or CANCELLED
    reason: str | None
    cause: str | None
    exit_code: int | None
    started: float
    ended: float
    cpu_s: float | None
    memory: Verdict


def trusted_maxrss(usage: Any) -> float | None:
    """A job's peak RSS from wait4's maxrss, but only above this process's own peak. Linux counts in a
    child's maxrss the memory it exec'd from, which for a child that vfork or fork started is this
    process's (seen: a 470 MiB pytest made every job "peak" at 470 MiB), so a figure that could be
    ours is not the job's: not measured (None). Ours is getrusage's maxrss (a system call, not a read
    of /proc/self/status per job; at least VmHWM)."""
    if usage is None:
        return None
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(usage.ru_maxrss / 1024, 1) if usage.ru_maxrss > mine else None


def wait_usage(proc: subprocess.Popen, timeout: float | None) -> tuple[int, Any]:
    """`proc.wait(timeout)` that also returns what the child used (`os.wait4`'s rusage: CPU time,
    peak RSS), None if another thread reaped it first. Polls like Popen.wait does with a timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a cancel's kill)
            return proc.wait(), None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        assert deadline is not None and timeout is not None  # without a deadline wait4 blocked until the end
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        delay = min(delay * 2, remaining, 0.05)
        time.sleep(delay)


def run_command(launch: Launch, *, registered: Callable[[subprocess.Popen], bool],
                unregistered: Callable[[], bool]) -> Ran:
    """Run `launch.command` to its end. `registered(proc)` is called once it started (the caller can
    stop it from then on): True if the job was stopped meanwhile (it is killed at once);
    `unregistered()` once it ended: True if it was stopped while it ran (it ends CANCELLED)."""
    started = time.time()
    reason, exit_code, status, usage, cause, memory = None, None, "FAILED", None, None, None
    limit = hold(  # its own memory cgroup, else the watchdog (memory_limit.py); measured either way
        launch.memory, f"job-{launch.job_id}-{launch.attempt}", swap_mib=launch.swap or 0)
    scratch = None
    try:
        scratch = unconfined_scratch(launch)
        env = {**os.environ, **launch.env, **({"HTC_SCRATCH": scratch, "TMPDIR": scratch} if scratch else {})}
        argv = limit.argv(launch.command)  # joins its memory cgroup first, where it has one
        with job_logs(launch.log_out, launch.log_err) as (out, err):
            try:
                proc = subprocess.Popen(argv, cwd=launch.cwd, env=env, stdout=out, stderr=err, umask=JOB_UMASK,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                proc = None
                reason = f"could not start {launch.command[0]!r}: {exc.strerror or exc}"
            if proc is not None:
                limit.started(proc.pid)  # no cgroup: the watchdog holds its process tree to the limit
                if registered(proc):  # stopped while it was starting: it runs no further
                    kill_group(proc)
                try:
                    exit_code, usage = wait_usage(proc, launch.timeout)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
                    exit_code = proc.wait()
                    reason = f"timeout: killed after execTimeoutSeconds={launch.timeout}"
                cancelled = unregistered()
                memory = limit.ended(trusted_maxrss(usage))
                if cancelled:
                    status, reason = "CANCELLED", "cancelled while running"
                elif reason is None and memory.oom:  # whatever its shell returned (a child was killed)
                    reason, cause = (oom_reason(launch.memory) if memory.how == "cgroup"
                                     else watched_oom_reason(launch.memory, memory.peak_mib)), "memory"
                elif reason is None and exit_code == 0:
                    status = "SUCCEEDED"
                elif reason is None and launch.mpi is None:
                    reason = f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
                    full = disk_full_reason(launch.log_err, launch.disk_gib)
                    reason = f"{reason}; {full}" if full else reason
    except UntrustedFile as exc:  # the job left a link or a FIFO where its log goes: not followed
        reason = f"could not open its log: {exc}"
    except Exception as exc:  # noqa: BLE001 - a runner bug must still end the job
        reason = f"runner error: {type(exc).__name__}: {exc}"
    finally:
        if memory is None:
            memory = limit.ended()
        if scratch is not None:
            remove_scratch(scratch)
    cpu_s = round(usage.ru_utime + usage.ru_stime, 3) if usage is not None else None
    return Ran(status, reason, cause, exit_code, started, time.time(), cpu_s, memory)


def outcome(launch: Launch, ran: Ran, host: str) -> Outcome:
    """The Outcome of a command job that is not MPI."""
    return Outcome(launch.job_id, launch.attempt, ran.status, reason=ran.reason, cause=ran.cause,
                   exit_code=ran.exit_code, host=host, started=ran.started, ended=ran.ended, cpu_s=ran.cpu_s,
                   max_rss_mib=ran.memory.peak_mib, memory_held=ran.memory.how)
