"""A restrictive site on this machine, for tests: an ordinary user, with or without user namespaces.

`as_user(user, argv, userns=False)` runs `argv` as `user` (made on first use) with a clean
environment. Without user namespaces it is the ENOSPC flavour of a site with
`user.max_user_namespaces=0` (../shared/notes/restrictive-site-on-one-machine.md): a child of
root enters a new user namespace whose maps hold root and the user, sets that namespace's
`max_user_namespaces` to 0, drops to the user (no capabilities left) and execs. Inside, every
`unshare` of a user namespace fails with ENOSPC and bwrap says "Creating new namespace failed:
No space left on device", as on such a site. Nothing of the host changes.

The user runs Debian's Python (`.venv-user`, made by `make test`): the root venv's interpreter
lives under /root, which other users cannot enter.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_VENV = REPO / ".venv-user"
CLONE_NEWUSER = 0x10000000


def ensure_user(name: str) -> pwd.struct_passwd:
    """The local user `name`, made (with a home) if it is not there (as `htc slurm up` makes the test
    site's ordinary users)."""
    from htc_notebook.devcluster.accounting import ensure_user as made

    return made(name)


def user_env(user: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    """A clean environment for `user`, with the user venv first on PATH."""
    return {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
            "PATH": f"{USER_VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin", **extra}


def as_user(name: str, argv: list[str], *, userns: bool = True, env: dict[str, str] | None = None,
            cwd: str | os.PathLike | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `argv` as local user `name` (made if missing), with user namespaces allowed or not."""
    user = ensure_user(name)
    env = env if env is not None else user_env(user)
    if userns:
        full = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *argv]
    else:
        full = [sys.executable, __file__, str(user.pw_uid), str(user.pw_gid), "--", *argv]
    return subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _exec_without_userns(uid: int, gid: int, argv: list[str]) -> int:
    """Root only: run `argv` as uid/gid in a user namespace that allows no further user namespaces."""
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()  # child -> parent: unshared
    mapped_r, mapped_w = os.pipe()  # parent -> child: maps written
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(mapped_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os.write(2, f"unshare(CLONE_NEWUSER): {os.strerror(ctypes.get_errno())}\n".encode())
            os._exit(70)
        os.write(ready_w, b"u")
        os.read(mapped_r, 1)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.execvpe(argv[0], argv, os.environ)
    os.close(ready_w)
    os.close(mapped_r)
    if os.read(ready_r, 1) != b"u":
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    for kind, ident in (("uid", uid), ("gid", gid)):
        with open(f"/proc/{pid}/{kind}_map", "w") as f:
            f.write(f"0 0 1\n{ident} {ident} 1\n")
    os.write(mapped_w, b"m")
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def suite(user: str, userns: bool, pytest_args: list[str]) -> int:
    """`make test`'s run of local-backend tests as an ordinary user (tests marked `root` and `slurm`
    left out), with its output shown as it comes; pytest's exit status."""
    who = ensure_user(user)
    out = REPO / "test-output" / f"as-{user}{'' if userns else '-no-userns'}"
    out.mkdir(parents=True, exist_ok=True)
    os.chown(out, who.pw_uid, who.pw_gid)
    env = user_env(who, HTC_REQUIRE_SLURM="1")
    argv = [str(USER_VENV / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-m", "not slurm and not root", f"--junitxml={out / 'junit.xml'}", *pytest_args]
    if userns:
        full = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups", "--", *argv]
    else:
        full = [sys.executable, __file__, str(who.pw_uid), str(who.pw_gid), "--", *argv]
    print(f"== tests as {user} ({'with' if userns else 'without'} user namespaces): {' '.join(pytest_args)}",
          flush=True)
    return subprocess.run(full, env=env, cwd=REPO).returncode


if __name__ == "__main__":
    if sys.argv[1] == "suite":  # restrictive.py suite USER userns|no-userns PYTEST-ARGS...
        sys.exit(suite(sys.argv[2], sys.argv[3] == "userns", sys.argv[4:]))
    uid_, gid_, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, "usage: restrictive.py UID GID -- ARGV | suite USER userns|no-userns ARGS"
    sys.exit(_exec_without_userns(int(uid_), int(gid_), cmd))
