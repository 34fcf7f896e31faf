"""Shared fixtures. Tests run against real parts: real SQLite, real dask, real subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTC = str(REPO / ".venv" / "bin" / "htc") if (REPO / ".venv" / "bin" / "htc").exists() else "htc"


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No user site file and no HTC_* variables leak into a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("HTC_SITE_CONFIG", "HTC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One Session (and one LocalCluster) per test module: starting dask takes seconds."""
    from htc_notebook import Session, SiteConfig

    root = tmp_path_factory.mktemp("htc-root")
    with Session(root, site=SiteConfig.builtin()) as s:
        yield s


def run_htc(*args: str, root: Path, env: dict | None = None, timeout: float = 300):
    """Run the real `htc` command; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "HTC_ROOT": str(root), "HOME": str(root / "home"), **(env or {})}
    full_env.pop("HTC_SITE_CONFIG", None)
    return subprocess.run([HTC, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def pytest_configure(config):
    # Test modules define the functions they submit; ship them to workers by value.
    import cloudpickle

    config._htc_pickle = cloudpickle  # keep the import alive


@pytest.fixture(autouse=True)
def _pickle_test_module_by_value(request):
    import cloudpickle

    mod = sys.modules.get(request.module.__name__)
    if mod is not None:
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:
            pass
    yield
