"""A dask WorkerPlugin that stops a cancelled task's confined calls (registered by `DaskJobs` on
every cluster it starts: local, SLURM pilots).

dask cannot stop the thread that runs a task: a task cancelled while it runs (its jobs cancelled,
a session closing) would run its call on, untracked, holding its worker, and then the rest of its
pack. A confined call runs in a child process (`call_sandbox`): it is SIGKILLed at once and the
task's thread starts no other call. A call running unconfined, in the worker's own thread, cannot
be stopped so and runs to its end. A command job on a pilot (`pilot_commands`) is killed.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from htc_notebook.backends.call_sandbox import stop_calls_of
from htc_notebook.backends.pilot_commands import stop_command_of

log = logging.getLogger(__name__)

NAME = "htc-stop-cancelled-calls"


class StopCancelledCalls(WorkerPlugin):
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if start != "executing" or finish not in ("cancelled", "released", "forgotten"):
            return
        if stop_command_of(str(key)):
            log.info("task %s was cancelled: its command job was stopped", key)
            return
        with self.worker.active_threads_lock:
            threads = [t for t, k in self.worker.active_threads.items() if k == key]
        for thread in threads:
            if stop_calls_of(thread):
                log.info("task %s was cancelled: its running call was stopped", key)
