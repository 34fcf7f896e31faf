"""Accounting for the test cluster: MariaDB, slurmdbd, and the site's associations and QOS.

Started by `up()` after the network (slurmdbd listens on the bridge address, which slurmctld
and `sacct` on the nodes use) and before slurmctld (which must find its cluster, account and
QOS in the database to enforce them). Both daemons carry the devcluster's mark, so `down()`
stops them like every other daemon. The database is made fresh by every `up`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from htc_notebook.errors import DevClusterError

from .config import ClusterSpec, render_db_grants, render_mariadb_argv, render_sacctmgr, render_slurmdbd_conf
from .daemons import _env, _tail, pidfile_alive


def _run(argv: list[str], spec: ClusterSpec, what: str, timeout: float = 60, **kw) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=_env(spec), timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise DevClusterError(f"{what}: `{' '.join(argv[:4])} ...` did not answer in {timeout:.0f} s") from None
    if out.returncode != 0:
        raise DevClusterError(f"{what}: `{' '.join(argv)}` failed (exit {out.returncode}): "
                              f"{(out.stderr or out.stdout).strip()[-1500:]}")
    return out.stdout


def _wait(check, timeout: float, fail: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DevClusterError(fail)
        time.sleep(0.2)


def start_mariadb(spec: ClusterSpec, timeout: float = 60) -> None:
    """A fresh MariaDB data dir, mariadbd on 127.0.0.1:db_port, and slurmdbd's database user."""
    shutil.rmtree(spec.db_dir, ignore_errors=True)
    os.makedirs(spec.db_dir)
    _run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={spec.db_dir}",
          "--auth-root-authentication-method=socket", "--skip-test-db"], spec, "mariadb-install-db", timeout=120)
    with open(spec.db_log, "a") as log:
        subprocess.Popen(render_mariadb_argv(spec), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         env=_env(spec), start_new_session=True)

    def answers() -> bool:
        return subprocess.run(["mariadb-admin", "--no-defaults", f"--socket={spec.db_socket}", "ping"],
                              capture_output=True, timeout=10).returncode == 0

    _wait(answers, timeout, f"mariadbd is not answering after {timeout:.0f} s; log {spec.db_log}:\n"
                            f"{_tail(spec.db_log)}")


def start_slurmdbd(spec: ClusterSpec, timeout: float = 60) -> None:
    """slurmdbd.conf (mode 0600: it holds the database password), the database user, slurmdbd."""
    password = secrets.token_hex(16)
    _run(["mariadb", "--no-defaults", f"--socket={spec.db_socket}", "-uroot", "-e", render_db_grants(password)],
         spec, "creating slurmdbd's database user")
    conf = Path(spec.slurmdbd_conf)
    conf.touch(mode=0o600)
    os.chmod(conf, 0o600)
    conf.write_text(render_slurmdbd_conf(spec, password))
    env = {**_env(spec), "SLURM_CONF": str(Path(spec.etc_dir, "slurm.conf"))}
    out = subprocess.run(["slurmdbd"], capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise DevClusterError(f"slurmdbd did not start (exit {out.returncode}): {out.stderr.strip()}\n"
                              f"  log {spec.slurmdbd_log}:\n{_tail(spec.slurmdbd_log)}")

    def answers() -> bool:
        if not pidfile_alive(spec.slurmdbd_pidfile, "slurmdbd"):
            return False
        probe = subprocess.run(["sacctmgr", "-n", "-P", "show", "qos", "format=name"], capture_output=True,
                               text=True, timeout=20)
        return probe.returncode == 0 and "normal" in probe.stdout.split()

    _wait(answers, timeout, f"slurmdbd is not answering after {timeout:.0f} s (`sacctmgr show qos`); "
                            f"log {spec.slurmdbd_log}:\n{_tail(spec.slurmdbd_log)}")


def ensure_user(name: str) -> pwd.struct_passwd:
    """The local user `name`, made (with a home, shell bash) if it is not there."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], capture_output=True, text=True,
                          timeout=60)
    try:
        return pwd.getpwnam(name)  # made, or by another process at the same time
    except KeyError:
        raise DevClusterError(f"cannot make the local user {name!r}: `useradd` exit {made.returncode}: "
                              f"{made.stderr.strip()}") from None


def users(spec: ClusterSpec) -> list[str]:
    """Who gets an association: the user running `up` (root), the one who ran sudo, if any, and the
    site's ordinary users (made here if missing: slurmctld maps an association's name to a uid when it
    loads it, and an ordinary user's jobs are refused without one)."""
    names = [pwd.getpwuid(os.getuid()).pw_name]
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo not in names:
        names.append(sudo)
    for name in spec.ordinary_users:
        if name not in names:
            ensure_user(name)
            names.append(name)
    return names


def make_site(spec: ClusterSpec) -> None:
    """The cluster, the QOS (priorities, preemption, per-user limits), the account and its users."""
    cmds = [argv for i, user in enumerate(users(spec)) for argv in render_sacctmgr(spec, user)
            if i == 0 or "user" in argv]
    for argv in cmds:
        _run(argv, spec, "setting up accounting")
