"""Command jobs in a bubblewrap sandbox: what a job may see of the host and of the data root.

The job sees the host's system read-only, its task directory read-write (but the toolkit's
`.htc/` in it read-only, except `checkpoints/`), its project's shared directory read-only, and
nothing else of the data root: other tasks, other projects, the ledger and the keys are hidden
under an empty tmpfs. /tmp is the job's own (an empty tmpfs, charged to its memory), except for MPI
ranks, which share memory through the node's /dev and /tmp.
A job that is not an MPI rank also gets its own PID namespace, so it cannot reach other
processes' files through /proc/<pid>/root; the job is the namespace's pid 1 (so its CPU time
reaches the runner's wait4, and a signal it has no handler for does not kill it; SIGKILL does).
Open MPI's shared-memory transport crashes across PID namespaces (seen with Open MPI 4.1: vader
segfaults), so MPI ranks keep the node's.

>>> view = JobView(root="/d", task_dir="/d/projects/p/tasks/t", shared_dir="/d/projects/p/shared")
>>> print(" ".join(bwrap_argv(view, ["./md", "in.lj"])))  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
/...bwrap --die-with-parent --ro-bind / / --dev-bind /dev /dev --proc /proc --tmpfs /tmp --tmpfs /d
 --ro-bind /d/projects/p/shared /d/projects/p/shared --bind /d/projects/p/tasks/t /d/projects/p/tasks/t
 --ro-bind /d/projects/p/tasks/t/.htc /d/projects/p/tasks/t/.htc
 --bind /d/projects/p/tasks/t/.htc/checkpoints /d/projects/p/tasks/t/.htc/checkpoints
 --chdir /d/projects/p/tasks/t --unshare-pid --as-pid-1 -- ./md in.lj
"""

from __future__ import annotations

import functools
import os
import posixpath
import pwd
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from htc_notebook.backends.base import Launch
from htc_notebook.backends.call_sandbox import check_call_sandbox
from htc_notebook.backends.programs import program, split_env
from htc_notebook.backends.images import deepest, host_path, in_image, mount_points, node_local, on_node, relocated
from htc_notebook.errors import BackendError
from htc_notebook.spec import PartitionProfile

BWRAP = program("bwrap")  # by absolute path: never through a PATH a job set (programs.py)


@dataclass(frozen=True)
class JobView:
    """What of the data root a job of one task may see (paths as the job sees them, absolute)."""

    root: str
    task_dir: str
    shared_dir: str

    @property
    def internal(self) -> str:
        return os.path.join(self.task_dir, ".htc")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.internal, "checkpoints")


SCRATCH = "/tmp/htc-scratch"  # each job's own tmpfs of maxDiskGiB, mounted here in its namespace


def bwrap_argv(view: JobView, argv: Sequence[str], *, pid_namespace: bool = True, image: Sequence[str] = (),
               scratch_gib: int | None = None, writable: Sequence[str] = (),
               setenv: Mapping[str, str] | None = None, keep: Sequence[str] = ()) -> list[str]:
    """The argv that runs `argv` confined to `view` (a pure function: nothing is checked on disk);
    `image`: the options that show the root file system under the data root that `argv` runs in
    (`image_root`, read-only);
    `scratch_gib` gives the job a scratch tmpfs of that size at SCRATCH; `writable`: directories
    of the task's `.htc/` the job may write (an MPI function's rank directory); `setenv`: variables set
    inside the sandbox only (a job's PATH, LD_*: `programs.split_env`); `keep`: paths under /tmp the job
    still sees, read-only, over its own /tmp (the toolkit's Python where it lives there: `kept_under_tmp`)."""
    task, shared = view.task_dir, view.shared_dir
    tmp = ["--tmpfs", "/tmp", *(a for p in keep for a in ("--ro-bind", p, p))] if pid_namespace \
        else ["--bind", "/tmp", "/tmp"]  # MPI ranks share the node's
    out = [BWRAP, "--die-with-parent", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
           *tmp, "--tmpfs", view.root, "--ro-bind", shared, shared, "--bind", task, task,
           "--ro-bind", view.internal, view.internal, "--bind", view.checkpoints, view.checkpoints,
           *(a for d in writable for a in ("--bind", d, d)),
           *image,
           *(["--size", str(scratch_gib << 30), "--tmpfs", SCRATCH] if scratch_gib else []), "--chdir", task]
    if pid_namespace:  # the job is its pid 1: bwrap's own reaper would hide its CPU time from wait4
        out += ["--unshare-pid", "--as-pid-1"]
    return out + [a for k, v in (setenv or {}).items() for a in ("--setenv", k, v)] + ["--", *argv]


def confined(launch: Launch, profile: PartitionProfile) -> Launch:
    """A launch as it runs on `profile`. A command: in its image (if it has one) with the profile's
    container runtime, in the sandbox unless the profile says `sandbox: none` (a command in an
    image is still under bwrap then, which only lays out the image: `image_root`). A Python call keeps
    its view, which its worker confines it to (`call_sandbox`), or each rank of an MPI function
    under bwrap (`mpi_jobs.wrap`), unless the profile says `sandbox: none`. A rank pool (packed
    MPI functions) serves every task and is not confined."""
    if launch.kind == "python" and profile.sandbox == "none":
        return replace(launch, view=None)
    if launch.kind != "command" or launch.view is None:
        return launch
    argv, env = list(launch.command), launch.env
    image: tuple[str, ...] = ()
    rootfs = None
    if launch.image:
        rootfs = node_local(launch.image, profile.image_cache) if profile.image_cache else launch.image
        image = relocated(image_root(launch.image, mount_points(launch.view.task_dir, launch.view.shared_dir,
                                                                profile.container_binds)), launch.image, rootfs)
        argv = in_image(profile.container_runtime, rootfs, launch.view.task_dir, launch.view.shared_dir, argv,
                        profile.container_binds)
        env = {"USER": os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name, **env}  # ch-run wants it
        if launch.mpi is not None:  # each rank in a user namespace of its own: Open MPI's CMA cannot cross them
            env = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none", **env}
    if profile.sandbox != "none":
        # maxDiskGiB: a scratch of that size for a job that is not MPI (ranks on one node share /tmp)
        scratch = launch.disk_gib if launch.mpi is None else None
        if scratch:
            env = {**env, "HTC_SCRATCH": SCRATCH, "TMPDIR": SCRATCH}
        env, inside = split_env(env)  # the job's PATH, LD_* hold inside only: bwrap is not theirs to choose
        argv = bwrap_argv(launch.view, argv, pid_namespace=launch.mpi is None, image=image, scratch_gib=scratch,
                          setenv=inside, keep=kept_under_tmp(profile.python))
    elif image:  # unconfined: the host as it is, but the image's mount points are still laid out, not written
        env, inside = split_env(env)
        argv = [BWRAP, "--die-with-parent", "--dev-bind", "/", "/", *image,
                *(a for k, v in inside.items() for a in ("--setenv", k, v)), "--", *argv]
    # the node's copy, made by the first job of the image there
    if launch.image and rootfs is not None and rootfs != launch.image:
        argv = on_node(launch.image, rootfs, argv)
    return replace(launch, command=tuple(argv), env=env)


def kept_under_tmp(python: str | None = None) -> tuple[str, ...]:
    """What of the host's /tmp a job still sees over its own /tmp, read-only: this Python's prefixes,
    the toolkit's own directory and the profile's `python`'s venv, where they live under /tmp (a
    checkout or a venv there, as a CI run may have). Found once per prefixes and `python`: it is
    asked for every launch."""
    return _kept_under_tmp(sys.prefix, sys.base_prefix, python)


@functools.lru_cache(maxsize=16)
def _kept_under_tmp(prefix: str, base_prefix: str, python: str | None) -> tuple[str, ...]:
    import htc_notebook

    places = [prefix, base_prefix, os.path.dirname(os.path.dirname(htc_notebook.__file__))]
    if python:
        places.append(os.path.dirname(os.path.dirname(python)))
    return tuple(dict.fromkeys(p for p in map(os.path.realpath, places) if p.startswith("/tmp/")))


def check_confinement(profile: PartitionProfile, launches: Sequence[Launch]) -> None:
    """Refuse (BackendError) before anything is sent if this machine cannot confine these launches
    as `profile` asks: commands under bwrap, Python calls in namespaces (`call_sandbox`)."""
    if profile.sandbox == "none":
        if any(launch.kind == "command" and launch.image and launch.view for launch in launches):
            check_sandbox(profile.name, images=True)
        return
    # MPI functions' ranks: bwrap too
    if any(launch.kind == "command" or (launch.mpi and launch.view) for launch in launches):
        check_sandbox(profile.name)
    if any(launch.kind == "python" and launch.view and not launch.mpi for launch in launches):
        check_call_sandbox(profile.name)


@functools.cache
def sandbox_problem() -> str | None:
    """Why bubblewrap cannot make a sandbox on this machine (None: it can), probed once per process:
    bwrap's own words (e.g. "Creating new namespace failed: No space left on device" where user
    namespaces are off), or that it is not installed."""
    probe = [BWRAP, "--die-with-parent", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
             "--unshare-pid", "--", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        return None if done.returncode == 0 else (done.stderr.strip() or f"exit code {done.returncode}")
    except FileNotFoundError:
        return "bwrap is not installed (Debian/Ubuntu: apt install bubblewrap)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


@functools.cache
def check_sandbox(profile_name: str, images: bool = False) -> None:
    """Refuse (BackendError) if bubblewrap cannot make a sandbox on this machine, before a job is sent.
    Checked once per profile and process; on SLURM this checks the submitting machine only (a node
    without it fails its jobs with bwrap's own message in the job's log)."""
    problem = sandbox_problem()
    if problem and images:
        raise BackendError(f"profile {profile_name!r} runs command jobs in images, whose mount points bubblewrap "
                           f"lays out over the image for each job (even with `sandbox: none`), but bwrap cannot "
                           f"run here: {problem}. Install bubblewrap and allow user namespaces")
    if problem:
        raise BackendError(f"profile {profile_name!r} runs command jobs in a bubblewrap sandbox (sandbox: bwrap), "
                           f"but bwrap cannot make one here: {problem}. Install bubblewrap and allow user "
                           "namespaces, or set `sandbox: none` in the profile to run command jobs unconfined")


@functools.lru_cache(maxsize=64)
def image_root(rootfs: str, points: tuple[tuple[str, bool], ...]) -> tuple[str, ...]:
    """bwrap options that show the unpacked image `rootfs` at its own path, read-only and as it is,
    with an empty directory or file at each of `points` (container paths, with whether each is a
    directory) that it lacks: the mount points its container runtime binds host paths onto.

    Nothing is written to `rootfs`: every profile and task that uses the image shares it. Each
    directory of the image on the way to a missing point is laid out on this job's own tmpfs
    (with the directory's mode), where the image's entries are bound back read-only and its links
    made again, as Apptainer's underlay does; the rest of the image is bound as it is. Links in the
    image are followed inside the image. An image does not change (one per digest), so the
    options are kept per image and points.
    """
    if not os.path.isdir(rootfs):  # not unpacked yet (a dry run): its points are laid out when it runs
        return ("--ro-bind", rootfs, rootfs)
    split: dict[str, None] = {}  # directories of the image (container paths) laid out on a tmpfs
    made: dict[str, bool] = {}   # missing points (container paths), directory or not
    for path, is_dir in points:
        have, missing = deepest(rootfs, path)
        if not missing:
            continue
        parts = have.strip("/").split("/") if have != "/" else []
        for depth in range(len(parts) + 1):  # "/" and each directory down to `have`
            split["/" + "/".join(parts[:depth])] = None
        made[posixpath.join(have, *missing)] = is_dir
    if not split:
        return ("--ro-bind", rootfs, rootfs)
    out = _lay_out(rootfs, "/", split)
    for point, is_dir in made.items():
        where = host_path(rootfs, point)
        out += ["--dir", where] if is_dir else ["--dir", os.path.dirname(where), "--ro-bind", "/dev/null", where]
    return (*out, "--remount-ro", rootfs)


def _lay_out(rootfs: str, inside: str, split: dict[str, None]) -> list[str]:
    """Directory `inside` of the image on a tmpfs: its entries bound back or linked again, and the
    directories on the way to a mount point laid out in turn."""
    where = host_path(rootfs, inside)
    perms = ["--perms", format(os.stat(where).st_mode & 0o7777 | 0o700, "04o")]  # its entries are made in it
    out = [*perms, "--tmpfs", where] if inside == "/" else [*perms, "--dir", where]
    with os.scandir(where) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if (sub := posixpath.join(inside, entry.name)) in split:
                out += _lay_out(rootfs, sub, split)
            elif entry.is_symlink():
                out += ["--symlink", os.readlink(entry.path), entry.path]
            else:
                out += ["--ro-bind", entry.path, entry.path]
    return out
