"""Debian packages the test cluster needs, installed only when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

from htc_notebook.errors import DevClusterError

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server", "munge", "openmpi-bin",
            "libopenmpi-dev", "iproute2", "util-linux", "bubblewrap", "charliecloud-runtime")
SYSTEMD_UNITS = ("slurmctld", "slurmd", "slurmdbd", "mariadb")


def missing_packages(packages=PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def install(packages=PACKAGES) -> list[str]:
    """apt-get install what is missing (apt-get update once first). Returns what was installed."""
    if not shutil.which("dpkg-query") or not shutil.which("apt-get"):
        raise DevClusterError("the test cluster needs a Debian/Ubuntu machine (dpkg and apt-get)")
    missing = missing_packages(packages)
    if not missing:
        return []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", *missing]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise DevClusterError(f"`{' '.join(cmd)}` failed (exit {out.returncode}):\n"
                                  f"{(out.stderr or out.stdout).strip()[-2000:]}")
    still = missing_packages(missing)
    if still:
        raise DevClusterError(f"packages still missing after apt-get install: {', '.join(still)}")
    _disable_distro_units()
    return missing


def _disable_distro_units() -> None:
    """On a systemd machine the packages start their own daemons; the test cluster runs its own."""
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", *SYSTEMD_UNITS], capture_output=True)
