"""`htc doctor`: what this machine and site allow, probed, and what the toolkit does about each gap.

Every check runs the real thing (a user namespace is unshared, bwrap makes a sandbox, a memory
cgroup is made and removed, `sinfo` and `sacct` are asked), as the user who runs it:

>>> checks = doctor("/tmp/htc-data", slurm=False)        # doctest: +SKIP
>>> {c.name: c.ok for c in checks}["user namespaces"]     # doctest: +SKIP
True

Each `Check` says what was found, and for a gap what the toolkit does instead and what to ask
the site for. `htc doctor` prints them as a table.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from htc_notebook.backends.memory_limit import cgroup_parent
from htc_notebook.backends.programs import program
from htc_notebook.backends.sandbox import sandbox_problem

CLONE_NEWUSER = 0x10000000
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs", "panfs",
             "wekafs", "fuse.sshfs", "9p", "virtiofs", "cifs", "smb3"}
MIN_FREE_GIB = 5


@dataclass(frozen=True)
class Check:
    """One probed fact: `ok` (None: not applicable here), what was `found`, what the toolkit does
    `instead` when it is missing, and what to `ask` the site for."""

    name: str
    ok: bool | None
    found: str
    instead: str = ""
    ask: str = ""


def doctor(root: str | os.PathLike, *, slurm: bool = True) -> list[Check]:
    """Every check, in the order `htc doctor` shows them (`slurm=False` skips asking SLURM)."""
    checks = [user_namespaces(), sandbox(), memory_cgroups()]
    checks += [tool(name, why) for name, why in (("ch-run", "Charliecloud: command jobs in images"),
                                                 ("apptainer", "Apptainer: command jobs in images"),
                                                 ("podman", "Podman: building images"))]
    if slurm:
        checks += slurm_checks()
    checks += data_root(Path(root))
    return checks


def user_namespaces() -> Check:
    """Can this user make a user namespace (what bwrap and confined Python calls need)?"""
    code = _unshare_user()
    if code == 0:
        return Check("user namespaces", True, "an unprivileged user namespace can be made")
    if code == errno.ENOSPC:
        found = "refused: ENOSPC (user.max_user_namespaces is 0 for this user)"
    elif code == errno.EPERM and _sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
        found = "refused: EPERM (AppArmor restricts unprivileged user namespaces)"
    elif code == errno.EPERM:
        found = "refused: EPERM (kernel.unprivileged_userns_clone=0, or a seccomp policy)"
    else:
        found = f"refused: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
    return Check("user namespaces", False, found,
                 instead="local jobs and calls run unconfined, with a warning (no task isolation, no scratch limit, "
                         "no memory limit for Python calls); a shared `htc serve` refuses to start unconfined",
                 ask="allow unprivileged user namespaces (user.max_user_namespaces > 0)")


def sandbox() -> Check:
    problem = sandbox_problem()
    if problem is None:
        return Check("bubblewrap sandbox", True, f"{program('bwrap')} makes a sandbox")
    return Check("bubblewrap sandbox", False, problem,
                 instead="command jobs run unconfined on the local backend (a warning says what is off)",
                 ask="install bubblewrap and allow user namespaces")


def memory_cgroups() -> Check:
    """Where the toolkit can hold a local job to its memory: a cgroup of its own, or not."""
    parent = cgroup_parent()
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    version = "v2" if v2 else "v1" if Path("/sys/fs/cgroup/memory").is_dir() else "none mounted"
    if parent is not None:
        return Check("memory cgroups", True, f"cgroup {version}: jobs get their own memory cgroup under {parent}")
    return Check("memory cgroups", False, f"cgroup {version}: this user may not make memory cgroups",
                 instead="maxMemory is held by the memory watchdog on the job's process tree (each attempt "
                         "records `watched`; on SLURM, by the site's own cgroups)",
                 ask="delegate a cgroup v2 subtree with the memory controller (systemd: Delegate=yes) "
                     "for the login node's users")


def tool(name: str, why: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, "not installed", instead=f"{why}: not available", ask=f"install {name}")
    try:
        env = {**os.environ, "USER": os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name}  # ch-run wants it
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, env=env,
                              stdin=subprocess.DEVNULL)
        version = (done.stdout or done.stderr).strip().splitlines()[:1]
        ok = done.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        version, ok = [str(exc)], False
    return Check(name, ok, f"{path} {version[0] if version else ''}".strip(),
                 instead="" if ok else f"{why}: not available", ask="" if ok else f"a working {name}")


def slurm_checks() -> list[Check]:
    """Is SLURM there and answering, and does it keep accounting (sacct)?"""
    if shutil.which("sinfo") is None:
        return [Check("SLURM", None, "no SLURM client tools: the local backend only")]
    out = _run(["sinfo", "-h", "-o", "%P %a %D"])
    if out is None or out.returncode != 0:
        why = "timed out" if out is None else (out.stderr.strip() or f"exit {out.returncode}")
        return [Check("SLURM", False, f"sinfo: {why}", instead="SLURM profiles cannot submit",
                      ask="a reachable slurmctld (check SLURM_CONF and munge)")]
    parts = [line.split()[0] for line in out.stdout.splitlines() if line.split()]
    checks = [Check("SLURM", True, f"partitions: {', '.join(parts) or '(none)'}")]
    acct = _run(["sacct", "-n", "-X", "-S", "now-1hours", "-o", "JobID"]) if shutil.which("sacct") else None
    if acct is not None and acct.returncode == 0:
        checks.append(Check("SLURM accounting", True, "sacct answers"))
    else:
        checks.append(Check("SLURM accounting", False, "sacct does not answer",
                            instead="a job gone from squeue without its exit file is called LOST sooner",
                            ask="slurmdbd accounting (AccountingStorageType=accounting_storage/slurmdbd)"))
    return checks


def data_root(root: Path) -> list[Check]:
    """Is the data root on a file system compute nodes share, with room to spare?"""
    where = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    fstype = filesystem_type(where)
    shared = fstype in SHARED_FS
    kind = "a shared file system" if shared else "a file system of this machine only"
    checks = [Check("data root file system", shared, f"{root} is on {fstype or 'an unknown file system'} ({kind})",
                    instead="" if shared else "fine for the local backend; SLURM jobs need the data root on a "
                                              "file system the compute nodes mount",
                    ask="" if shared else "a shared file system path (home, project or scratch space)")]
    usage = shutil.disk_usage(where)
    free = usage.free / 2**30
    checks.append(Check("free space", free >= MIN_FREE_GIB, f"{free:.1f} GiB free of {usage.total / 2**30:.0f} GiB",
                        instead="" if free >= MIN_FREE_GIB else "jobs may fail with ENOSPC (disk full, said so)",
                        ask="" if free >= MIN_FREE_GIB else "more quota or space"))
    return checks


def filesystem_type(path: Path) -> str | None:
    """The type of the file system `path` is on, from /proc/self/mounts (the longest mount point)."""
    best, kind = "", None
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return None
    return kind


def _unshare_user() -> int:
    """0 if a child could unshare a user namespace, else the errno it got (in a fork: this process
    keeps its own namespaces)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        libc = ctypes.CDLL(None, use_errno=True)
        code = 0 if libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno()
        os.write(w, code.to_bytes(2, "little"))
        os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 2)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return int.from_bytes(data, "little") if len(data) == 2 else errno.EIO


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
