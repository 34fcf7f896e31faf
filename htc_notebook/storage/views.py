"""What a job (or a user, for one task or project) may touch: confined views of storage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Any

from ..errors import HTCError, StorageAccessDenied
from .atomic import atomic_write
from .confine import confine

INTERNAL = ".htc"
_WRITE_CHARS = set("wax+")


def checkpoint_path(task_dir: Path | str, job_id: int) -> str:
    """Where a job keeps its checkpoint: the same file for every attempt of the job (jobs see it as
    `$HTC_CHECKPOINT`; Python calls use `storage.current().checkpoint()` / `.restore()`).
    A string: one is made for every job of a sweep, and a Path interns each of its parts (Python's
    table of interned strings would grow to the sweep's size, and never shrinks)."""
    return os.path.join(task_dir, INTERNAL, "checkpoints", f"job-{int(job_id)}")


def _is_write_mode(mode: str) -> bool:
    return bool(_WRITE_CHARS & set(mode))


def _list(directory: Path, *, hide: tuple[str, ...] = ()) -> list[str]:
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in hide)


class TaskStorage:
    """One task's files (read/write) plus its project's shared files (read-only).

    Every path goes through `confine`; the toolkit's own `.htc/` directory is off limits.
    """

    def __init__(self, task_dir: Path | str, shared_dir: Path | str, job_id: int | None = None):
        self.task_dir = Path(os.path.realpath(task_dir))
        self.shared_dir = Path(os.path.realpath(shared_dir))
        self.job_id = job_id  # inside a job: whose checkpoint checkpoint()/restore() use

    def __repr__(self) -> str:
        return f"TaskStorage(task_dir={str(self.task_dir)!r}, shared_dir={str(self.shared_dir)!r})"

    def path(self, rel: str | os.PathLike[str]) -> Path:
        """A path in the task directory (for reading or writing)."""
        p = confine(self.task_dir, rel)
        internal = self.task_dir / INTERNAL
        if p == internal or internal in p.parents:
            raise StorageAccessDenied(rel, f"{INTERNAL}/ holds the toolkit's internal files")
        return p

    def shared(self, rel: str | os.PathLike[str]) -> Path:
        """A path in the project's shared directory, for reading only."""
        return confine(self.shared_dir, rel)

    def open(self, rel: str | os.PathLike[str], mode: str = "r", **kwargs: Any) -> IO[Any]:
        p = self.path(rel)
        if _is_write_mode(mode):
            p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, mode, **kwargs)

    def open_shared(self, rel: str | os.PathLike[str], mode: str = "r", **kwargs: Any) -> IO[Any]:
        if _is_write_mode(mode):
            raise StorageAccessDenied(rel, f"project shared storage is read-only for jobs (mode {mode!r})")
        return open(self.shared(rel), mode, **kwargs)

    def read_text(self, rel: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        return self.path(rel).read_text(encoding=encoding)

    def read_bytes(self, rel: str | os.PathLike[str]) -> bytes:
        return self.path(rel).read_bytes()

    def write_text(self, rel: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        return self.write_bytes(rel, text.encode(encoding))

    def write_bytes(self, rel: str | os.PathLike[str], data: bytes) -> Path:
        """Atomically write `data` (parents created); returns the path written."""
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, data)
        return p

    def list(self, rel: str | os.PathLike[str] = ".") -> list[str]:
        """Sorted entry names in a task subdirectory (internal `.htc` hidden)."""
        d = self.path(rel)
        return _list(d, hide=(INTERNAL,) if d == self.task_dir else ())

    # -- inside a job: state that survives a requeue (preemption, node failure, a lost worker) --
    def checkpoint(self, state: Any) -> None:
        """Save `state` (anything cloudpickle can pickle) for a later attempt of this job, atomically.

        >>> def simulate(steps):                                  # doctest: +SKIP
        ...     st = storage.current()
        ...     i, x = st.restore(default=(0, 0.0))
        ...     for i in range(i, steps):
        ...         x = step(x)
        ...         st.checkpoint((i + 1, x))
        ...     return x
        """
        import cloudpickle

        path = self._checkpoint()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, cloudpickle.dumps(state))

    def restore(self, default: Any = None) -> Any:
        """What the last `checkpoint()` of this job saved (in this or an earlier attempt), else `default`."""
        import cloudpickle

        try:
            return cloudpickle.loads(self._checkpoint().read_bytes())
        except FileNotFoundError:
            return default

    def _checkpoint(self) -> Path:
        if self.job_id is None:
            raise HTCError("checkpoint() and restore() work inside a job run by htc_notebook (HTC_JOB_ID is not set)")
        return Path(checkpoint_path(self.task_dir, self.job_id))


class ProjectStorage:
    """A project's shared directory, as the user sees it (jobs only read it)."""

    def __init__(self, shared_dir: Path | str):
        self.shared_dir = Path(os.path.realpath(shared_dir))

    def __repr__(self) -> str:
        return f"ProjectStorage({str(self.shared_dir)!r})"

    def path(self, rel: str | os.PathLike[str]) -> Path:
        return confine(self.shared_dir, rel)

    def put(self, src: str | os.PathLike[str], dest_rel: str | os.PathLike[str]) -> Path:
        """Copy a local file (or directory tree) into shared storage at `dest_rel`."""
        dest = self.path(dest_rel)
        src = Path(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            atomic_write(dest, src.read_bytes())
        return dest

    def write_text(self, rel: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        """Put a small input file into shared storage (atomically), for every task's jobs to read."""
        dest = self.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, text.encode(encoding))
        return dest

    def list(self, rel: str | os.PathLike[str] = ".") -> list[str]:
        return _list(self.path(rel))


def current() -> TaskStorage:
    """The storage view of the job this process runs as (from HTC_TASK_DIR, HTC_PROJECT_SHARED)."""
    task_dir, shared = os.environ.get("HTC_TASK_DIR"), os.environ.get("HTC_PROJECT_SHARED")
    if not task_dir or not shared:
        raise HTCError("storage.current() only works inside a job run by htc_notebook: "
                       "HTC_TASK_DIR and HTC_PROJECT_SHARED are not set. "
                       "Outside a job, use a Session's task or project storage instead.")
    job = os.environ.get("HTC_JOB_ID")
    return TaskStorage(task_dir, shared, int(job) if job and job.isdigit() else None)
