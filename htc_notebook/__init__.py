"""htc_notebook: high-throughput computing from Jupyter notebooks.

>>> from htc_notebook import Session, Sweep                       # doctest: +SKIP
>>> task = Session().project("demo").task("sweep-1")              # doctest: +SKIP
>>> jobs = task.sweep(simulate, Sweep.grid(T=[1.5, 2.3], seed=[1, 2]))  # doctest: +SKIP
>>> jobs.wait(progress=True).to_dataframe(results=True)           # doctest: +SKIP
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names and the module each lives in. Imported on first use (PEP 562), so that code
# running on a node (htc_notebook.backends.worker, .mpi_ranks) does not import the runtime,
# dask and pydantic just because it lives in this package.
_EXPORTS = {
    "htc_notebook.runtime": ("Session", "Project", "Task", "JobHandle", "JobGroup", "CommandResult"),
    "htc_notebook.runtime.decorators": ("on_cluster", "task", "mpi_task", "use", "current_task"),
    "htc_notebook.runtime.futures": ("as_completed",),
    "htc_notebook.spec": ("Sweep", "Resources", "JobBatch", "JobDefinition", "PartitionProfile", "SiteConfig",
                          "RetryPolicy"),
    "htc_notebook.errors": ("HTCError", "SpecError", "JobFailed", "StorageAccessDenied"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [name for names in _EXPORTS.values() for name in names]

if TYPE_CHECKING:  # the same names for type checkers (`name as name`: an explicit re-export)
    from htc_notebook.errors import (HTCError as HTCError, JobFailed as JobFailed, SpecError as SpecError,
                                     StorageAccessDenied as StorageAccessDenied)
    from htc_notebook.runtime import (CommandResult as CommandResult, JobGroup as JobGroup, JobHandle as JobHandle,
                                      Project as Project, Session as Session, Task as Task)
    from htc_notebook.runtime.decorators import (current_task as current_task, mpi_task as mpi_task,
                                                 on_cluster as on_cluster, task as task, use as use)
    from htc_notebook.runtime.futures import as_completed as as_completed
    from htc_notebook.spec import (JobBatch as JobBatch, JobDefinition as JobDefinition,
                                   PartitionProfile as PartitionProfile, Resources as Resources,
                                   RetryPolicy as RetryPolicy, SiteConfig as SiteConfig, Sweep as Sweep)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'htc_notebook' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def code_digest() -> str:
    """A digest of this package's Python source (names and bytes): kernels and pilots of one
    version may still run different code (an edited checkout), and calls pickled by one fail or
    misbehave on the other (`backends.slurm.pilots.check_python` compares it)."""
    import hashlib
    from pathlib import Path

    h, top = hashlib.sha256(), Path(__file__).parent
    for path in sorted(top.rglob("*.py")):
        h.update(str(path.relative_to(top)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def load_ipython_extension(ipython) -> None:
    """`%load_ext htc_notebook`: registers the `%htc` / `%%htc` magics."""
    from htc_notebook.ui.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter finds the REST API extension here (htc_notebook.server.extension)."""
    return [{"module": "htc_notebook.server.extension"}]
