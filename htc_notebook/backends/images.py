"""Command lines that run a job's argv in its image: one pure function per container runtime.

The image is an unpacked root file system (registry/pull.py). The task directory is bound at
its own path and is the working directory; the project's shared directory is bound at its own
path (read-only under the sandbox, which wraps this: backends/sandbox.py); nothing else of the
host's files is seen but the image. Charliecloud (`ch-run`, unprivileged) runs here; Apptainer,
what most sites have, is rendered the same way (not installable on this machine: its lines are
tested as text only).

The site's `container_binds` (its MPI, interconnect libraries) are bound read-only at their own
paths, so an MPI program in an image uses the host's MPI, as sites run them.

The image need not have these paths, and nothing is written to it for them (the unpacked image
is shared by every profile and task): `mount_points` names them, and the bubblewrap around
ch-run (`sandbox.image_root`) shows each job the image with an empty mount point at each path it
lacks. Apptainer makes its own (its underlay or overlay).

>>> print(" ".join(ch_run_argv("/c/rootfs", "/d/t", "/d/s", ["md", "in.lj"])))
ch-run --bind=/d/t --bind=/d/s --cd=/d/t /c/rootfs -- md in.lj
>>> print(" ".join(apptainer_argv("/c/rootfs", "/d/t", "/d/s", ["md"], binds=["/opt/mpi"])))
apptainer exec --contain --no-home --bind /d/t --bind /d/s:/d/s:ro --bind /opt/mpi:/opt/mpi:ro --pwd /d/t /c/rootfs md
"""

from __future__ import annotations

import os
from typing import Sequence


def ch_run_argv(rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
                binds: Sequence[str] = ()) -> list[str]:
    """Charliecloud: the image read-only, the task and shared directories and `binds` bound in
    (ch-run binds read-only but the task directory, which the sandbox holds to its own rights)."""
    return ["ch-run", f"--bind={task_dir}", f"--bind={shared_dir}", *(f"--bind={b}" for b in binds),
            f"--cd={task_dir}", rootfs, "--", *argv]


def apptainer_argv(rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
                   binds: Sequence[str] = ()) -> list[str]:
    """Apptainer (rendering only here): a contained run of the unpacked image (a sandbox directory)."""
    return ["apptainer", "exec", "--contain", "--no-home", "--bind", task_dir, "--bind", f"{shared_dir}:{shared_dir}:ro",
            *(a for b in binds for a in ("--bind", f"{b}:{b}:ro")), "--pwd", task_dir, rootfs, *argv]


RUNTIMES = {"charliecloud": ch_run_argv, "apptainer": apptainer_argv}


def in_image(runtime: str, rootfs: str, task_dir: str, shared_dir: str, argv: Sequence[str],
             binds: Sequence[str] = ()) -> list[str]:
    return RUNTIMES[runtime](rootfs, task_dir, shared_dir, argv, binds)


def mount_points(task_dir: str, shared_dir: str, binds: Sequence[str] = ()) -> tuple[tuple[str, bool], ...]:
    """Where the runtime binds host paths into the image, each with whether it is a directory (a
    bind is what it is on this host: a file or a directory)."""
    return ((task_dir, True), (shared_dir, True), *((b, os.path.isdir(b)) for b in binds))
