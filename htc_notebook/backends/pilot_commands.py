"""Command jobs on a SLURM pilot's dask worker (a `commands: pilots` profile): a dask task each.

A confined job (or one of a `sandbox: none` profile) runs in its view's zygote, as on the local
runner (`zygote_jobs`, `command_zygotes`): a fork inside a sandbox made once per view and worker,
not a bwrap each. The zygotes are started by one thread of the worker that lives as long as the
worker does (bwrap's `--die-with-parent` follows the thread that started it, and a dask task's thread
is not the worker's to keep). A job in an image runs under its own bwrap (`command_run`).

A job's timeout is a limit, not what it is expected to take, so it does not make a pilot near its
deadline leave (`worker.leave_if_late`): a job the pilot's end kills is LOST and requeued. A cancel
of its dask task stops it (`stop_command_of`, from `stop_cancelled.StopCancelledCalls`).
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
from typing import Sequence

from htc_notebook.backends.base import Launch
from htc_notebook.backends.command_run import outcome, run_command
from htc_notebook.backends.mpi_ranks import kill_group
from htc_notebook.backends.zygote_jobs import ZygoteJobs
from htc_notebook.states import Outcome

KEY_PREFIX = "htc-command-"  # the dask key of a command job's task: htc-command-<job id>-<attempt>


def task_key(launch: Launch) -> str:
    return f"{KEY_PREFIX}{launch.job_id}-{launch.attempt}"


class WorkerCommands:
    """This worker process's command jobs: started, stopped, and their outcomes handed back to the dask
    tasks that wait for them. A `Reporter` to its `ZygoteJobs`."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._host = socket.gethostname()
        self._outcomes: dict[int, Outcome] = {}
        self._active: set[int] = set()  # job ids handed in whose outcome was not taken yet
        self._stopped: set[int] = set()  # jobs whose dask task was cancelled while executing
        self._procs: dict[int, subprocess.Popen] = {}  # jobs under a bwrap of their own: their process
        self._starts: queue.SimpleQueue[Launch] = queue.SimpleQueue()
        self._zygote_jobs = ZygoteJobs(self, self._host, self._lock, lambda launch: None)
        threading.Thread(target=self._start_loop, name="htc-pilot-commands", daemon=True).start()

    def run(self, launch: Launch) -> Outcome:
        """Run `launch` to its end (on the calling dask task's thread)."""
        with self._lock:
            self._active.add(launch.job_id)
        try:
            if launch.zygote is None:
                return outcome(launch, run_command(launch, registered=lambda proc: self._registered(launch, proc),
                                                   unregistered=lambda: self._unregistered(launch)), self._host)
            self._starts.put(launch)
            with self._lock:
                while launch.job_id not in self._outcomes:
                    self._lock.wait()
                return self._outcomes.pop(launch.job_id)
        finally:
            with self._lock:
                self._active.discard(launch.job_id)
                self._stopped.discard(launch.job_id)

    def stop(self, job_id: int) -> bool:
        """Stop job `job_id`, now or as soon as it starts (its dask task is executing: it is handed in
        now, or was); whether it had been handed in."""
        with self._lock:
            self._stopped.add(job_id)
            if job_id not in self._active:
                return False
            proc = self._procs.get(job_id)
        if proc is not None:
            kill_group(proc)
        self._zygote_jobs.cancel({job_id})
        return True

    def _start_loop(self) -> None:
        while True:
            launch = self._starts.get()
            try:
                self._zygote_jobs.start(launch, lambda job_id: job_id in self._stopped)
            except Exception as exc:  # noqa: BLE001 - a runner bug must still end the job
                self.finished(Outcome(launch.job_id, launch.attempt, "FAILED", host=self._host,
                                      reason=f"runner error: {type(exc).__name__}: {exc}"))

    def _registered(self, launch: Launch, proc: subprocess.Popen) -> bool:
        with self._lock:
            self._procs[launch.job_id] = proc
            return launch.job_id in self._stopped

    def _unregistered(self, launch: Launch) -> bool:
        with self._lock:
            self._procs.pop(launch.job_id, None)
            return launch.job_id in self._stopped

    # -- a Reporter, for the zygotes' jobs -------------------------------------------------
    def started(self, job_id: int, attempt: int, host: str, native_id: str | None) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes[outcome.job_id] = outcome
            self._lock.notify_all()

    def sending(self, job_ids: Sequence[int], native_id: str, reason: str) -> set[int]:
        return set(job_ids)

    def backlog(self) -> int:
        return 0

    def submitted(self, native_ids: dict[int, str], reason: str) -> None:
        pass

    def update(self, job_ids: Sequence[int], status: str, **kwargs: object) -> None:
        pass


_commands: WorkerCommands | None = None
_made = threading.Lock()


def _here() -> WorkerCommands:
    global _commands
    with _made:
        if _commands is None:
            _commands = WorkerCommands()
        return _commands


def run_on_worker(launch: Launch) -> Outcome:
    """The dask task of a command job on a pilot: run it to its end."""
    return _here().run(launch)


def stop_command_of(key: str) -> bool:
    """Stop the command job of dask task `key` (cancelled while executing); whether one ran here."""
    if not key.startswith(KEY_PREFIX):
        return False
    try:
        job_id = int(key[len(KEY_PREFIX):].split("-")[0])
    except ValueError:
        return False
    return _here().stop(job_id)
