"""Where everything lives under the data root (private: 0700, its files 0600).

    root/ledger.db
    root/dask-tls/cluster-*/                       (0700: a pilot cluster's TLS credentials, while it runs)
    root/projects/<project>/shared/
    root/projects/<project>/tasks/<task>/          (the task's own files)
    root/projects/<project>/tasks/<task>/logs/     (job-<id>.out, job-<id>.err)
    root/projects/<project>/tasks/<task>/.htc/     (results/, payloads/, logs/ (log packs): toolkit internals)
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import StorageAccessDenied

# spec.names' rule for a name, anchored: repeated here, as storage is imported where jobs run (MPI
# ranks, workers), and importing the spec would load pydantic into every rank (a test holds them equal)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
_DIGEST_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
log = logging.getLogger(__name__)


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a safe project/task name, else raise StorageAccessDenied."""
    if not isinstance(name, str) or name in (".", "..") or not _NAME_RE.fullmatch(name):
        raise StorageAccessDenied(name, f"invalid {kind} name; allowed pattern is {NAME_PATTERN}")
    return name


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_dir(path: Path) -> Path:
    """`path` made (0700) if missing; if it is ours and open to others, closed (0700) with a warning.
    The data root is private: other local users of a login or compute node reach nothing in it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        log.warning("data root %s was open to other users (mode %o): made private (0700)", path, st.st_mode & 0o777)
        path.chmod(0o700)
    return path


class Storage:
    """The data root. Every directory is created on first use."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"Storage({str(self.root)!r})"

    @property
    def ledger_path(self) -> Path:
        private_dir(self.root)
        return self.root / "ledger.db"

    @property
    def dask_credentials_path(self) -> Path:
        """Where pilot clusters keep their TLS credentials for the nodes (nothing is created here:
        `backends.dask_security.private_directory` makes it 0700)."""
        return self.root / "dask-tls"

    def project_dir(self, project: str) -> Path:
        return _mkdir(self.root / "projects" / check_name("project", project))

    def shared_path(self, project: str) -> Path:
        """Where the project's shared directory is (nothing is created: see `shared_dir`)."""
        return self.root / "projects" / check_name("project", project) / "shared"

    def task_path(self, project: str, task: str) -> Path:
        """Where the task's directory is (nothing is created: see `task_dir`)."""
        return self.root / "projects" / check_name("project", project) / "tasks" / check_name("task", task)

    def shared_dir(self, project: str) -> Path:
        return _mkdir(self.shared_path(project))

    def task_dir(self, project: str, task: str) -> Path:
        return _mkdir(self.task_path(project, task))

    def internal_dir(self, project: str, task: str) -> Path:
        return _mkdir(self.task_dir(project, task) / ".htc")

    def log_paths(self, project: str, task: str, job_id: int) -> tuple[Path, Path]:
        _mkdir(self.task_dir(project, task) / "logs")
        return log_paths_in(self.task_path(project, task), job_id)

    def result_path(self, project: str, task: str, job_id: int) -> Path:
        return _mkdir(self.internal_dir(project, task) / "results") / f"job-{_job_id(job_id)}.pkl"

    def payload_path(self, project: str, task: str, digest: str) -> Path:
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise StorageAccessDenied(digest, "invalid payload digest; allowed pattern is ^[A-Za-z0-9_-]{1,128}$")
        return _mkdir(self.internal_dir(project, task) / "payloads") / f"{digest}.pkl"


def log_paths_in(task_dir: Path, job_id: int) -> tuple[Path, Path]:
    """A job's standard output and error files in its task directory (nothing is created)."""
    n = _job_id(job_id)
    return task_dir / "logs" / f"job-{n}.out", task_dir / "logs" / f"job-{n}.err"


def _job_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise StorageAccessDenied(job_id, "job id must be a non-negative integer")
    return job_id
