"""Shared fixtures. Tests run against real parts: real SQLite, real dask, real subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_VENV_HTC = Path(sys.executable).parent / "htc"  # the venv running the tests (.venv, or .venv-user as a user)
HTC = str(_VENV_HTC) if _VENV_HTC.exists() else str(REPO / ".venv" / "bin" / "htc")


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


def registry_port() -> int:
    """A free port P whose neighbour P+1 is free too: the registry listens on P, its token service on P+1."""
    import socket

    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two free neighbouring ports")


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
    _start_notebook_kernels_with_their_stderr()


def _start_notebook_kernels_with_their_stderr():
    """nbval starts each notebook's kernel with its stderr sent to /dev/null. In CI a kernel once died
    before its first reply (each of notebook 06's cells: "Kernel died before replying to kernel_info")
    and said nothing. Its stderr now goes to a file. A kernel that dies while starting has that file's
    tail shown in the warnings summary, and is started once more: Jupyter picks a kernel's ports
    before the kernel binds them, and another process of the parallel lanes can take one in between
    (jupyter_client#154). Any other failure, and a second death, still fail the notebook."""
    import tempfile
    import warnings

    from nbval import kernel

    start = kernel.start_new_kernel

    def start_new_kernel(**kwargs):
        with tempfile.TemporaryFile("w+") as stderr:
            try:
                return start(**{**kwargs, "stderr": stderr})
            except RuntimeError as e:
                if "died before replying" not in str(e):
                    raise
                stderr.seek(0)
                warnings.warn(f"nbval's kernel died while starting ({e}); starting it once more. "
                              f"Its stderr:\n{stderr.read()[-4000:]}", stacklevel=1)
        return start(**kwargs)

    kernel.start_new_kernel = start_new_kernel


SITE_ENV = "HTC_TEST_USERNS"  # set by tests/restrictive.py's suites: "1" user namespaces allowed, "0" not


def pytest_sessionstart(session):
    """A suite run for a site (tests/restrictive.py) runs on that site: without user namespaces bwrap
    must fail for want of them, with them it must work; else every verdict of the run would be about
    another site than it says."""
    expected = os.environ.get(SITE_ENV)
    if expected is None:
        return
    from htc_notebook.backends.sandbox import sandbox_problem

    problem = sandbox_problem()
    if expected == "1" and problem is not None:
        raise pytest.UsageError(f"{SITE_ENV}=1, but no sandbox can be made here: {problem}")
    if expected == "0" and (problem is None or "ENOSPC" not in problem):
        raise pytest.UsageError(f"{SITE_ENV}=0 (no user namespaces, ENOSPC), but bwrap says: {problem or 'it works'}")


def pytest_runtest_setup(item):
    """A test marked `sandbox` asserts what only a sandbox does: where none can be made it fails at
    once, saying why (a run without user namespaces deselects them: `-m "not sandbox"`)."""
    if item.get_closest_marker("sandbox") is None:
        return
    from htc_notebook.backends.sandbox import sandbox_problem

    if (problem := sandbox_problem()) is not None:
        pytest.fail(f"this test needs a sandbox, which this machine cannot make ({problem}); "
                    "where none can be made, run with -m 'not sandbox'", pytrace=False)


# notebooks that run jobs on the SLURM test cluster (their cells carry no marker)
SLURM_NOTEBOOKS = {"02-mpi-tasks.ipynb", "04-profiles-and-clusters.ipynb", "06-lammps-ensemble.ipynb",
                   "07-reattach.ipynb"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    """Every test that uses the SLURM test cluster is marked `slurm`, whether it says so or gets the
    cluster through a fixture (`slurm_cluster`, `site`) or is a notebook's cell that submits to it:
    `make test` runs `-m slurm` and `-m "not slurm"` side by side, and the ordinary user's runs leave
    `slurm` out."""
    for item in items:
        if item.get_closest_marker("slurm") is None and (
                "slurm_cluster" in getattr(item, "fixturenames", ()) or item.path.name in SLURM_NOTEBOOKS):
            item.add_marker(pytest.mark.slurm)


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


def missing(what: str) -> None:
    """A real part (SLURM, MPI, browser) is not here: a failure under HTC_REQUIRE_SLURM=1, else a skip."""
    if os.environ.get("HTC_REQUIRE_SLURM") == "1":
        pytest.fail(f"{what}. HTC_REQUIRE_SLURM=1 forbids skipping.", pytrace=False)
    pytest.skip(f"{what}; set HTC_REQUIRE_SLURM=1 to make this a failure")


# -- the real multi-node SLURM test cluster (htc_notebook.devcluster, `make slurm-up`) ------------
class SlurmClusterInfo:
    """What tests need to know about the running test cluster."""

    def __init__(self, state_root: str, shared_dir: str, nodes: dict, partitions: dict):
        self.state_root, self.shared_dir = state_root, shared_dir
        self.nodes = nodes            # node -> {"partitions", "state", "cpus", "memory_mb", "gres"}
        self.partitions = partitions  # partition -> [node, ...]
        self.node_names = sorted(nodes)
        self.partition_names = sorted(partitions)
        self.python = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The 4-node SLURM cluster from `make slurm-up`. Missing: a failure with HTC_REQUIRE_SLURM=1, else a skip."""
    import shutil

    from htc_notebook.devcluster import daemons, spec

    s = spec()
    problem = None
    if not shutil.which("sinfo"):
        problem = "the SLURM client tools are not installed"
    else:
        nodes = daemons.sinfo_nodes()
        bad = {n: nodes.get(n, {}).get("state", "missing") for n in s.node_names
               if nodes.get(n, {}).get("state") not in ("idle", "mix", "alloc", "comp")}
        if not nodes:
            problem = "sinfo gets no answer from slurmctld"
        elif bad:
            problem = "nodes not up: " + ", ".join(f"{n}={st}" for n, st in bad.items())
    if problem:
        missing(f"SLURM test cluster not available ({problem}); run `make slurm-up` (as root)")
    os.makedirs(s.shared_dir, exist_ok=True)
    return SlurmClusterInfo(s.state_root, s.shared_dir, {n: nodes[n] for n in s.node_names},
                            {p: s.partition_nodes(p) for p in s.partition_names})
