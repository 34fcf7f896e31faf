"""The Binder environment, built as Binder would (requirements.txt, then postBuild) in a fresh venv
by a non-root user from a clean copy of the repository; the quickstart notebook runs in it and
prints what it should; the sidebar and the REST API extension are installed."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import nbformat
from conftest import missing

REPO = Path(__file__).resolve().parents[1]
USER = "htc-binder"
PYTHON = "/usr/bin/python3"


def _require() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root to create the non-root user"
    elif not Path(PYTHON).exists() or not shutil.which("node"):
        problem = f"{PYTHON} and node are needed"
    if problem:
        missing(f"Binder build test: {problem}")


def as_user(cmd: str, cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {"HOME": f"/home/{USER}", "PATH": f"{cwd}/venv/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           # how this machine reaches the registries (CA bundles, proxies, index settings) applies to any user
           **{k: v for k, v in os.environ.items()
              if any(t in k.upper() for t in ("PROXY", "CERT", "CA_BUNDLE", "CAINFO"))
              or k.startswith(("PIP_", "npm_config_", "NPM_CONFIG_"))}}
    return subprocess.run([shutil.which("runuser") or "/usr/sbin/runuser", "-u", USER, "--", "bash", "-c", cmd],
                          cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)


def test_binder_environment_runs_the_quickstart():
    _require()
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    # in the user's home, as on Binder (/home/jovyan): not under /tmp, which each job has to itself
    work = Path(pwd.getpwnam(USER).pw_dir) / f"htc-binder-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o755)
    try:
        # a clean copy of what is committed (no .venv, node_modules or build output), owned by the user
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        shutil.copy(REPO / "notebooks" / "01-quickstart.ipynb", work / "notebooks")  # as in the work tree
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(work)], check=True)
        steps = [f"{PYTHON} -m venv venv", "pip install --quiet -r binder/requirements.txt", "./binder/postBuild",
                 "cd notebooks && jupyter nbconvert --to notebook --execute 01-quickstart.ipynb "
                 "--output /tmp/" + work.name + "-out.ipynb --ExecutePreprocessor.timeout=600"]
        for step in steps:
            out = as_user(step, work)
            assert out.returncode == 0, f"{step}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        ran = nbformat.read(f"/tmp/{work.name}-out.ipynb", as_version=4)
        want = nbformat.read(REPO / "notebooks" / "01-quickstart.ipynb", as_version=4)
        checked = 0
        for got, ref in zip(ran.cells, want.cells, strict=True):
            if ref.cell_type == "code" and ref.source.startswith("# NBVAL_CHECK_OUTPUT"):
                def text(c):
                    return "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")

                assert text(got) == text(ref), ref.source
                checked += 1
        assert checked >= 3
        listing = as_user("jupyter labextension list 2>&1; jupyter server extension list 2>&1", work)
        assert "htc-notebook" in listing.stdout and "htc_notebook" in listing.stdout
        assert json.loads((work / "venv" / "share" / "jupyter" / "labextensions" / "htc-notebook" /
                           "package.json").read_text())["name"] == "htc-notebook"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        Path(f"/tmp/{work.name}-out.ipynb").unlink(missing_ok=True)
