"""htc_notebook: high-throughput computing from Jupyter notebooks.

>>> from htc_notebook import Session, Sweep                       # doctest: +SKIP
>>> task = Session().project("demo").task("sweep-1")              # doctest: +SKIP
>>> jobs = task.sweep(simulate, Sweep.grid(T=[1.5, 2.3], seed=[1, 2]))  # doctest: +SKIP
>>> jobs.wait(progress=True).to_dataframe(results=True)           # doctest: +SKIP
"""

from htc_notebook.errors import HTCError, JobFailed, SpecError, StorageAccessDenied
from htc_notebook.runtime import CommandResult, JobGroup, JobHandle, Project, Session, Task
from htc_notebook.runtime.decorators import current_task, mpi_task, on_cluster, task, use
from htc_notebook.spec import (JobBatch, JobDefinition, PartitionProfile, Resources, RetryPolicy,
                               SiteConfig, Sweep)

__version__ = "0.1.0"

__all__ = [
    "Session", "Project", "Task", "JobHandle", "JobGroup", "CommandResult",
    "Sweep", "Resources", "JobBatch", "JobDefinition", "PartitionProfile", "SiteConfig", "RetryPolicy",
    "HTCError", "SpecError", "JobFailed", "StorageAccessDenied",
    "on_cluster", "task", "mpi_task", "use", "current_task",
]


def load_ipython_extension(ipython) -> None:
    """`%load_ext htc_notebook`: registers the `%htc` / `%%htc` magics."""
    from htc_notebook.ui.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter finds the REST API extension here (htc_notebook.server.extension)."""
    return [{"module": "htc_notebook.server.extension"}]
