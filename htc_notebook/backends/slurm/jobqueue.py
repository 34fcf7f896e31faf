"""dask-jobqueue, imported from any thread.

dask-jobqueue 0.9's `runner` module sets a SIGINT handler when it is imported, which only the main
thread may do: imported first from another thread (a new session's reconcile loop starting a retry
on pilots before anything else used them) it raises ValueError, and again at every later try.
Imported from another thread, that handler is left unset (SIGINT is handled as it was).

>>> slurm().SLURMCluster.__name__
'SLURMCluster'
"""

from __future__ import annotations

import signal
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()


def slurm() -> ModuleType:
    """`dask_jobqueue.slurm` (SLURMCluster, SLURMJob); ImportError where it is not installed."""
    with _lock:
        if threading.current_thread() is threading.main_thread():
            import dask_jobqueue.slurm

            return dask_jobqueue.slurm
        original = signal.signal

        def main_thread_only(signum: Any, handler: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                return original(signum, handler)
            return signal.getsignal(signum)

        signal.signal = main_thread_only  # type: ignore[assignment]
        try:
            import dask_jobqueue.slurm
        finally:
            signal.signal = original
        return dask_jobqueue.slurm
