"""A scratch directory of its own for a job that asks for one (maxDiskGiB) but runs unconfined."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

from htc_notebook.backends.base import Launch

log = logging.getLogger(__name__)


def unconfined_scratch(launch: Launch) -> str | None:
    """A scratch of its own for a job that asks for one (maxDiskGiB) but runs unconfined, where the
    sandbox's tmpfs at $HTC_SCRATCH is not made (`sandbox.confined` sets it for a confined job): a new
    private (0700) directory under this machine's temp directory, without a size limit (the session's
    warning says so), removed when the job ends. None for any other job."""
    if not launch.disk_gib or launch.mpi is not None or "HTC_SCRATCH" in launch.env:
        return None
    return tempfile.mkdtemp(prefix=f"htc-scratch-{launch.job_id}-{launch.attempt}-")


def remove_scratch(path: str) -> None:
    """Remove an unconfined job's scratch; what cannot be removed (a directory the job made
    unwritable) is logged and left."""
    def failed(_func: Any, where: str, exc_info: Any) -> None:
        log.warning("could not remove %s of the job scratch %s: %s", where, path, exc_info[1])

    shutil.rmtree(path, onerror=failed)  # Python 3.11: onexc is 3.12's
