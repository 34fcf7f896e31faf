"""Credentials and listening addresses of the dask clusters the toolkit starts (G10: every dask comm
is authenticated; docs/security.md).

Each cluster gets a key and a self-signed certificate of its own, made when it starts
(`distributed.Security.temporary()`: in memory, never reused). Its scheduler, workers, nannies and
client all hold them and speak mutual TLS only (`require_encryption`): a peer that shows no
certificate, or another one, is refused during the TLS handshake, before dask reads a message of it.
A local cluster listens on loopback only; a pilot cluster's scheduler listens where the nodes reach it
(the profile's `scheduler_host`). Dashboards listen on loopback (the Jupyter server's proxy or an ssh
tunnel reach them there). Pilots read their copy of the credentials from a directory of the data
root that the nodes share (`private_directory`: 0700; dask-jobqueue writes the files 0600),
removed when the backend closes.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from htc_notebook.errors import BackendError

if TYPE_CHECKING:
    from distributed import Security

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DASHBOARD_ADDRESS = f"{LOOPBACK}:0"  # a free port on loopback
PROTOCOL = "tls://"
# a pilot's dask worker: its HTTP endpoint (health, metrics) on the node's loopback, no dashboard
WORKER_HTTP_ARGS = ["--dashboard-address", DASHBOARD_ADDRESS, "--no-dashboard"]


def cluster_security() -> "Security":
    """New credentials for one cluster: mutual TLS required, key and certificate in memory."""
    try:
        from distributed import Security

        return Security.temporary()
    except ImportError as exc:  # distributed says what is missing (cryptography)
        raise BackendError(f"dask clusters need TLS credentials: {exc}") from None


def private_directory(parent: str | os.PathLike) -> Path:
    """A new directory (0700) inside `parent` for one cluster's credentials. `parent` is made
    0700 if missing; BackendError if it is a symbolic link, not this user's, or open to others
    (its mode is tightened only when this user made it and it is merely group/world readable)."""
    parent = Path(parent)
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = parent.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BackendError(f"{parent} must be a directory, not a link: dask credentials are kept there")
    if st.st_uid != os.geteuid():
        raise BackendError(f"{parent} belongs to uid {st.st_uid}, not to this user: dask credentials are kept there")
    if st.st_mode & 0o077:
        log.warning("%s was open to others (mode %o): made 0700", parent, stat.S_IMODE(st.st_mode))
        os.chmod(parent, 0o700)
    return Path(tempfile.mkdtemp(prefix="cluster-", dir=parent))  # 0700


def forget_credentials(directory: str | os.PathLike, cluster: object | None = None) -> None:
    """Remove a closed cluster's credentials directory. dask-jobqueue deletes the files it wrote
    there when it closes them (`cluster._job_<field>`, temporary files it keeps open), so they are
    closed first; without the cluster (it was not made) the directory goes only if it is empty.
    A failure is logged."""
    if cluster is not None:
        for name in ("_job_ca_file", "_job_cert", "_job_key"):
            temporary = getattr(cluster, name, None)
            if temporary is not None and hasattr(temporary, "close"):
                temporary.close()
    try:
        if cluster is not None:
            shutil.rmtree(directory)
        else:
            os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the dask credentials directory %s: %s", directory, exc)


def rendered_security() -> "Security":
    """What a dry run shows for a pilot cluster's credentials: the files the workers would read,
    named (shell-quoted placeholders), not made."""
    from distributed import Security

    where = "<data root>/dask-tls/cluster-<id>/.dask-jobqueue.worker"
    files = (("ca_file", "ca_file"), ("worker_cert", "cert"), ("worker_key", "key"))
    return Security(require_encryption=True,
                    **{f"tls_{name}": shlex.quote(f"{where}.{field}.<id>") for name, field in files})


def dashboard_link(port: int | None) -> str | None:
    """The link to a toolkit cluster's dashboard listening on loopback at `port` (dask's link
    template: through the Jupyter server's proxy when a Session set it, runtime/dashboard.py)."""
    if not port:
        return None
    from distributed.utils import format_dashboard_link

    return format_dashboard_link(LOOPBACK, port)
