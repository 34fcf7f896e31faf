"""Decorators that run functions and MPI programs remotely: `on_cluster`, `task`, `mpi_task`.

Nothing happens at import or decoration time (no session, no cluster, no scaling);
the first call does the work. A decorated call returns a `JobHandle` (a future:
`.result()`, `.done()`, `.cancel()`) recorded in the current task's ledger, so it
shows up in live views like any other job.

>>> from htc_notebook import on_cluster, mpi_task, task          # doctest: +SKIP
>>> @mpi_task(profile="cpu", nodes=2, ranks_per_node=2)           # doctest: +SKIP
... def energy(comm, x):
...     return comm.allreduce(x * comm.rank)
>>> @on_cluster(profile="cpu", adapt=(0, 4))                      # doctest: +SKIP
... def study(xs):
...     return [energy(x) for x in xs]                            # futures, running at once
>>> [f.result() for f in study(range(10))]                        # doctest: +SKIP

The current task is the one given to `use(task)`; without one, the first call opens
`Session()` (data root `$HTC_ROOT` or ./htc-data) and uses its task "default/default".
"""

from __future__ import annotations

import functools
import hashlib
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable

import cloudpickle

from htc_notebook.errors import SpecError
from htc_notebook.runtime.commands import plain_argv
from htc_notebook.spec import Resources

if TYPE_CHECKING:
    from htc_notebook.runtime.handles import JobHandle
    from htc_notebook.runtime.task import Task

_task: ContextVar["Task | None"] = ContextVar("htc_task", default=None)
_profile: ContextVar[str | None] = ContextVar("htc_profile", default=None)
_default: list["Task"] = []
_default_lock = threading.Lock()
_configured: set[tuple[int, str]] = set()  # (id of a session's parts, profile) already scaled by on_cluster


class use:
    """Make `task` the current task: `use(task)` for the rest of the notebook, or `with use(task):`."""

    def __init__(self, task: "Task"):
        self._token = _task.set(task)

    def __enter__(self) -> "Task":
        task = _task.get()
        assert task is not None  # set by __init__
        return task

    def __exit__(self, *exc: object) -> None:
        _task.reset(self._token)


def current_task() -> "Task":
    """The task decorated calls are recorded in (see `use`)."""
    task = _task.get()
    if task is not None:
        return task
    with _default_lock:
        if not _default:
            from htc_notebook.runtime.session import Session

            _default.append(Session().project("default").task("default"))
        return _default[0]


def on_cluster(fn: Callable | None = None, *, profile: str | None = None, jobs: int | None = None,
               adapt: tuple[int, int] | None = None) -> Callable:
    """Run the decorated function here, with `profile` as the default for tasks it calls.

    On its first call, a SLURM profile's pilots are scaled to `jobs` or set to adapt
    between `adapt=(min, max)` jobs (not both). Calls of `task`/`mpi_task` functions
    inside go to `profile` unless they name their own.
    """
    if jobs is not None and adapt is not None:
        raise SpecError("on_cluster", "jobs", jobs, "either jobs= or adapt=(min, max), not both")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0):
        raise SpecError("on_cluster", "jobs", jobs, "a whole number >= 0")
    if adapt is not None and not (isinstance(adapt, tuple) and len(adapt) == 2
                                  and all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in adapt)
                                  and adapt[0] <= adapt[1]):
        raise SpecError("on_cluster", "adapt", adapt, "a pair (min, max) of whole numbers with min <= max")

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            parts = current_task().parts
            prof = parts.profiles.get(profile)
            if prof.backend == "slurm" and (jobs is not None or adapt is not None):
                with _default_lock:
                    first = (id(parts), prof.name) not in _configured
                    _configured.add((id(parts), prof.name))
                if first:
                    if jobs is not None:
                        parts.backends.scale(prof.name, jobs)
                    elif adapt is not None:
                        parts.backends.adapt(prof.name, *adapt)
            token = _profile.set(prof.name)
            try:
                return f(*args, **kwargs)
            finally:
                _profile.reset(token)

        return run

    return decorate(fn) if fn is not None else decorate


def task(fn: Callable | None = None, *, profile: str | None = None, retries: int = 0, pure: bool = False,
         resources: Resources | dict | None = None) -> Callable:
    """Run each call of the decorated function as a job; the call returns its JobHandle.

    `pure=True`: calls with equal arguments are one job (its result is reused, and a
    failed one is run again).
    """
    res = _resources(resources)

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def submit(*args: Any, **kwargs: Any) -> "JobHandle":
            return current_task().submit(f, *args, profile=profile or _profile.get(), resources=res,
                                         retries=retries, key=_key(f, args, kwargs) if pure else None, **kwargs)

        submit.remote = f  # type: ignore[attr-defined]  # the undecorated function (a function attribute)
        return submit

    return decorate(fn) if fn is not None else decorate


def mpi_task(fn: Callable | None = None, *, profile: str | None = None, nodes: int = 1,
             ranks_per_node: int | None = None, ranks: int | None = None, cpus_per_rank: int = 1,
             launcher: str | None = None, memory: int | str | None = None, walltime: int | str | None = None,
             executable: bool = False, retries: int = 0, pure: bool = False) -> Callable:
    """Run each call as an MPI job of `ranks` = `nodes` x `ranks_per_node` ranks.

    By default the function runs on every rank with mpi4py (a parameter named `comm`
    gets the communicator) and the result is rank 0's return value. With
    `executable=True` the function is called here and returns the argv of an MPI
    program; the result is a CommandResult (exit code, stdout, stderr).
    """
    layout = Resources(nodes=nodes, ranks=ranks, ranks_per_node=ranks_per_node,  # pure: fails early
                       cpus_per_rank=cpus_per_rank, memory=memory, walltime=walltime)
    if not layout.is_mpi:
        raise SpecError("mpi_task", "ranks", ranks, "a number of ranks: give ranks=, or ranks_per_node= (with nodes=)")
    asked: dict[str, Any] = dict(nodes=layout.nodes, ranks=layout.ranks, cpus_per_rank=cpus_per_rank, memory=memory,
                                 walltime=walltime, launcher=launcher, retries=retries)

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def submit(*args: Any, **kwargs: Any) -> "JobHandle":
            key = _key(f, args, kwargs) if pure else None
            where: dict[str, Any] = dict(profile=profile or _profile.get(), key=key, **asked)
            if executable:
                argv = plain_argv(f(*args, **kwargs), "mpi_task", f"{f.__name__}() (executable=True) return value")
                return current_task().mpi(argv, name=f.__name__, **where)
            return current_task().mpi(f, *args, **where, **kwargs)

        submit.remote = f  # type: ignore[attr-defined]  # the undecorated function (a function attribute)
        return submit

    return decorate(fn) if fn is not None else decorate


def _resources(resources: Resources | dict | None) -> Resources | None:
    if resources is None or isinstance(resources, Resources):
        return resources
    return Resources(**resources)


def _key(fn: Callable, args: tuple, kwargs: dict) -> str:
    """Equal calls get equal keys: the function's name and its pickled arguments."""
    try:
        blob = cloudpickle.dumps((args, sorted(kwargs.items())))
    except Exception as exc:  # noqa: BLE001 - pickling raises whatever an argument's __reduce__ raises
        raise SpecError("task", "args", args, f"picklable arguments ({type(exc).__name__}: {exc})") from None
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"
    return "call:" + hashlib.sha256(name.encode() + b"\0" + blob).hexdigest()[:32]
