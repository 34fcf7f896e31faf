"""Command lines that run a job's argv in its image: one pure function per container runtime.

The image is an unpacked root file system (registry/pull.py). The task directory is bound at
its own path and is the working directory; the project's shared directory is bound at its own
path (read-only under the sandbox, which wraps this: backends/sandbox.py); nothing else of the
host's files is seen but the image. Charliecloud (`ch-run`, unprivileged) runs here; Apptainer,
what most sites have, is rendered the same way (not installable on this machine: its lines are
tested as text only).

The site's `container_binds` (its MPI, interconnect libraries) are bound read-only at their own
paths, so an MPI program in an image uses the host's MPI, as sites run them.

The image need not have these paths, and nothing is written to the unpacked image for them (it is
shared by every profile and task). A profile's binds get their mount points in a copy of the image
made once per set of binds (`with_binds`: hard links, so only its directories take room); the
task's and shared directories, which differ per task, are laid out for each job by the bubblewrap
around ch-run (`sandbox.image_root`, on the image's top directories only). Apptainer makes its
own (its underlay or overlay).

>>> print(" ".join(ch_run_argv("/c/rootfs", "/d/t", "/d/s", ["md", "in.lj"])))
ch-run --bind=/d/t --bind=/d/s --cd=/d/t /c/rootfs -- md in.lj
>>> print(" ".join(apptainer_argv("/c/rootfs", "/d/t", "/d/s", ["md"], binds=["/opt/mpi"])))
apptainer exec --contain --no-home --bind /d/t --bind /d/s:/d/s:ro --bind /opt/mpi:/opt/mpi:ro --pwd /d/t /c/rootfs md
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from htc_notebook.errors import BackendError
from htc_notebook.backends.programs import program


def ch_run_argv(rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
                binds: Sequence[str] = ()) -> list[str]:
    """Charliecloud: the image read-only, the task and shared directories and `binds` bound in
    (ch-run binds read-only but the task directory, which the sandbox holds to its own rights)."""
    return ["ch-run", f"--bind={task_dir}", f"--bind={shared_dir}", *(f"--bind={b}" for b in binds),
            f"--cd={task_dir}", rootfs, "--", *argv]


def apptainer_argv(rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
                   binds: Sequence[str] = ()) -> list[str]:
    """Apptainer (rendering only here): a contained run of the unpacked image (a sandbox directory)."""
    return ["apptainer", "exec", "--contain", "--no-home",
            "--bind", task_dir, "--bind", f"{shared_dir}:{shared_dir}:ro",
            *(a for b in binds for a in ("--bind", f"{b}:{b}:ro")), "--pwd", task_dir, rootfs, *argv]


RUNTIMES = {"charliecloud": ch_run_argv, "apptainer": apptainer_argv}


def worker_argv(runtime: str, rootfs: str, data_root: str, python: str, binds: Sequence[str] = ()) -> list[str]:
    """The interpreter `python` of the unpacked image `rootfs`, for a pilot's dask workers: the whole
    data root bound read-write (a worker writes every task's results and logs; its calls confine
    themselves to their task's, `call_sandbox`), `binds` read-only, started in the data root.

    >>> print(" ".join(worker_argv("charliecloud", "/c/rootfs", "/d", "python3")))
    ch-run --bind=/d --cd=/d /c/rootfs -- python3
    """
    if runtime == "apptainer":
        return ["apptainer", "exec", "--contain", "--no-home", "--bind", data_root,
                *(a for b in binds for a in ("--bind", f"{b}:{b}:ro")), "--pwd", data_root, rootfs, python]
    return ["ch-run", f"--bind={data_root}", *(f"--bind={b}" for b in binds), f"--cd={data_root}", rootfs, "--", python]


def in_image(runtime: str, rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
             binds: Sequence[str] = ()) -> list[str]:
    return RUNTIMES[runtime](rootfs, task_dir, shared_dir, argv, binds)


def node_local(rootfs: str, cache: str) -> str:
    """Where a profile's `image_cache` holds its copy of the unpacked image `rootfs` on a node.

    >>> node_local("/d/registry/cache/sha256-ab/rootfs-binds-1f", "/local/img")
    '/local/img/sha256-ab/rootfs-binds-1f'
    """
    return posixpath.join(cache, posixpath.basename(posixpath.dirname(rootfs)), posixpath.basename(rootfs))


# $1: the shared unpack, $2: the node's copy; then the command. The first job of an image on a
# node copies it (under a lock, renamed into place), the others find it
COPY_TO_NODE = ('[ -d "$2" ] || { mkdir -p "${2%/*}" && exec 9>"$2.lock" && flock 9 && { [ -d "$2" ] || '
                '{ rm -rf "$2.part" && cp -a "$1" "$2.part" && mv "$2.part" "$2"; }; } && exec 9>&-; } '
                '|| { echo "htc: could not copy image $1 to $2" >&2; exit 70; }; shift 2; exec "$@"')


def on_node(rootfs: str, local: str, argv: Sequence[str]) -> list[str]:
    """`argv` run after the image `rootfs` is copied to `local` on this node, if it is not there yet.

    >>> on_node("/d/c/sha256-ab/rootfs", "/l/sha256-ab/rootfs", ["ch-run"])[-3:]
    ['/d/c/sha256-ab/rootfs', '/l/sha256-ab/rootfs', 'ch-run']
    """
    return [program("sh"), "-c", COPY_TO_NODE, "htc-image", rootfs, local, *argv]


def relocated(options: Sequence[str], rootfs: str, local: str) -> tuple[str, ...]:
    """bwrap `options` laid out for the image at `rootfs` (`sandbox.image_root`) pointed at its copy `local`."""
    return tuple(local + o[len(rootfs):] if o == rootfs or o.startswith(rootfs + "/") else o for o in options)


def mount_points(task_dir: str, shared_dir: str, binds: Sequence[str] = ()) -> tuple[tuple[str, bool], ...]:
    """Where the runtime binds host paths into the image, each with whether it is a directory (a
    bind is what it is on this host: a file or a directory)."""
    return ((task_dir, True), (shared_dir, True), *((b, os.path.isdir(b)) for b in binds))


def with_binds(rootfs: str | os.PathLike[str], binds: Sequence[str]) -> Path:
    """The unpacked image `rootfs` with a mount point at each of `binds` (a profile's
    container_binds, at their own paths): `rootfs` itself if it has them all, else its copy for
    this set of binds, made once (files hard-linked, directories new, an empty file or directory
    where each bind goes). `rootfs` is never written: a profile without these binds sees the
    image as it was built. Laying such points out per job instead costs a bind per entry of
    their directories (1.8 s a job for a file in a directory of 1,500: bench/results.md)."""
    root = Path(rootfs)
    points = [(b, os.path.isdir(b)) for b in binds]
    if not any(deepest(str(root), path)[1] for path, _ in points):
        return root
    key = hashlib.sha256("\n".join(f"{p}:{d}" for p, d in sorted(points)).encode()).hexdigest()[:12]
    final = root.with_name(f"{root.name}-binds-{key}")
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root.parent))
    try:
        done = subprocess.run(["cp", "-al", "--", str(root), str(tmp / "rootfs")], capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendError(f"could not copy image {root} for its container_binds: {done.stderr.strip()}")
        copy = tmp / "rootfs"
        for path, is_dir in points:
            have, missing = deepest(str(copy), path)
            if not missing:
                continue
            point = Path(host_path(str(copy), posixpath.join(have, *missing)))
            if is_dir:
                point.mkdir(parents=True, exist_ok=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch()
        try:
            copy.rename(final)  # another process may have made it meanwhile: then theirs is used
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def host_path(rootfs: str, inside: str) -> str:
    return os.path.join(rootfs, inside.lstrip("/")).rstrip("/") or "/"


def deepest(rootfs: str, path: str) -> tuple[str, list[str]]:
    """The deepest directory of the image on the way to container path `path` (links followed
    inside the image) and the components below it that the image lacks ([] if it has `path`, or
    if no mount point can be made for it: the runtime says why)."""
    todo, have, links = [c for c in path.split("/") if c not in ("", ".")], "/", 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            have = posixpath.dirname(have)
            continue
        host = host_path(rootfs, posixpath.join(have, name))
        if os.path.islink(host):
            links += 1
            if links > 40:
                return have, []
            target = os.readlink(host)
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
            have = "/" if target.startswith("/") else have
        elif os.path.isdir(host):
            have = posixpath.join(have, name)
        else:
            return have, [] if os.path.lexists(host) else [name, *todo]
    return have, []


