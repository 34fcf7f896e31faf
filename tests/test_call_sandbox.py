"""Python calls confined to their task (backends/call_sandbox.py): the OS refuses what they may not touch.

The same probe as test_sandbox.py's command job, as a Python function: on the local backend, on
pilots on two SLURM nodes, and as an unprivileged user (a user namespace). With `sandbox: none`
it reads the sibling's secret: what confinement hides is really there. A call that dies, or whose
worker dies, leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_sandbox import _assert_confined, _local_site, _prepare
from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.call_sandbox import run_confined
from htc_notebook.backends.sandbox import JobView


def probe(root: str, sibling: str, other_shared: str) -> dict:
    """test_sandbox's probe as a Python call: each forbidden and each allowed access, and what the OS said."""
    task, shared, ckpt = os.environ["HTC_TASK_DIR"], os.environ["HTC_PROJECT_SHARED"], os.environ["HTC_CHECKPOINT"]

    def attempt(fn) -> str:
        try:
            fn()
            return "ok"
        except OSError as exc:
            return type(exc).__name__ + ":" + (exc.strerror or "")

    def write(path: str) -> None:
        with open(path, "w") as f:
            f.write("x")

    def read(path: str) -> None:
        with open(path) as f:
            f.read()

    return {
        "read_sibling_task_file": attempt(lambda: read(sibling)),
        "read_ledger": attempt(lambda: read(os.path.join(root, "ledger.db"))),
        "read_ledger_via_proc": attempt(lambda: read("/proc/1/root" + os.path.join(root, "ledger.db"))),
        "read_other_project_shared": attempt(lambda: read(other_shared)),
        "read_own_shared": attempt(lambda: read(os.path.join(shared, "input.txt"))),
        "write_own_shared": attempt(lambda: write(os.path.join(shared, "new.txt"))),
        "write_own_task": attempt(lambda: write(os.path.join(task, "out-" + os.environ["HTC_JOB_ID"]))),
        "write_toolkit_internals": attempt(lambda: write(os.path.join(task, ".htc", "results", "forged.pkl"))),
        "write_checkpoint": attempt(lambda: write(ckpt)),
        "data_root_shows": sorted(os.listdir(root)),
        "host": os.uname().nodename,
    }


def _probe_calls(s: Session, name: str, *, profile: str | None = None, jobs: int = 1) -> list[dict]:
    task, argv = _prepare(s, name)
    handles = [task.submit(probe, *argv[-3:], profile=profile, name=f"probe-{i}") for i in range(jobs)]
    return [h.result(timeout=300) for h in handles]


@pytest.mark.sandbox
def test_a_local_python_call_sees_only_its_task_and_its_projects_shared_directory(tmp_path):
    with Session(tmp_path / "root", site=_local_site()) as s:
        (seen,) = _probe_calls(s, "py-local")
    _assert_confined(seen)


def test_with_sandbox_none_the_same_call_reads_what_confinement_hides(tmp_path):
    with Session(tmp_path / "root", site=_local_site(sandbox="none")) as s:
        (seen,) = _probe_calls(s, "py-none")
    assert seen["read_sibling_task_file"] == "ok" and seen["read_ledger"] == "ok", seen
    assert seen["write_own_shared"] == "ok", seen


@pytest.mark.slurm
def test_python_calls_on_pilots_on_two_nodes_are_confined_the_same_way(site):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"call-sandbox-{uuid.uuid4().hex[:8]}"  # a shared file system: nodes see it
    with Session(root, site=site) as s:
        s.scale("cpu", jobs=2)
        seen = _probe_calls(s, "py-slurm", profile="cpu", jobs=8)
    for one in seen:
        _assert_confined(one)
    assert {one["host"] for one in seen} <= {"node1", "node2"}, [one["host"] for one in seen]


NOBODY = r"""
import json, sys
from htc_notebook.backends.call_sandbox import run_confined
from htc_notebook.backends.sandbox import JobView
root, task, shared, sibling = sys.argv[1:5]

def look():
    out = {}
    for what, path in (("sibling", sibling), ("own", task + "/mine.txt")):
        try:
            out[what] = open(path).read()
        except OSError as exc:
            out[what] = type(exc).__name__
    open(task + "/written.txt", "w").write("by the call")
    return out

print(json.dumps(run_confined(JobView(root, task, shared), look)))
"""


@pytest.mark.root
def test_an_unprivileged_user_is_confined_through_a_user_namespace(tmp_path):
    """What a site's users get (they are not root): the call runs in a user namespace mapping only
    them, and what it writes is still theirs."""
    python, setpriv = shutil.which("python3", path="/usr/bin"), shutil.which("setpriv")
    assert python and setpriv, "Debian's python3 and setpriv (util-linux) are installed by make test"
    root = Path(f"/tmp/htc-nobody-{uuid.uuid4().hex[:8]}")  # a place `nobody` can reach
    task, shared, sibling = root / "projects/p/tasks/t", root / "projects/p/shared", root / "projects/p/tasks/s"
    for d in (task / ".htc", shared, sibling):
        d.mkdir(parents=True)
    (task / "mine.txt").write_text("my input")
    (sibling / "secret.txt").write_text("the sibling's secret")
    try:
        subprocess.run(["chown", "-R", "nobody:nogroup", str(root)], check=True)
        site_packages = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site_packages}", "HOME": str(root)}
        done = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", NOBODY,
                               str(root), str(task), str(shared), str(sibling / "secret.txt")],
                              capture_output=True, text=True, env=env, timeout=120, cwd="/")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"sibling": "FileNotFoundError", "own": "my input"}
        written = task / "written.txt"
        assert written.read_text() == "by the call" and written.stat().st_uid == 65534  # nobody's, not root's
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _host_pids_with(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.sandbox
def test_a_call_that_kills_itself_fails_saying_so_and_leaves_nothing_running(tmp_path):
    seconds = f"{700 + uuid.uuid4().int % 100_000 / 100_000:.5f}"

    def die(seconds: str) -> None:
        subprocess.Popen(["sleep", seconds], start_new_session=True)
        os.kill(os.getpid(), signal.SIGKILL)

    with Session(tmp_path / "root", site=_local_site()) as s:
        job = s.project("dies").task("t").submit(die, seconds)
        row = job.wait(timeout=120)
    assert row.status == "FAILED" and "killed by signal 9" in row.reason, row.reason
    _wait_for(lambda: not _host_pids_with(seconds), 10, "the call's orphan to die with its namespace")


@pytest.mark.sandbox
def test_a_worker_killed_under_a_confined_call_takes_the_call_with_it_and_the_attempt_is_lost(tmp_path):
    """SIGKILL the dask worker while its confined call (and a process the call started) runs: both
    die with it (nothing runs untracked), the attempt ends with cause lost, the next one runs."""
    seconds = f"{800 + uuid.uuid4().int % 100_000 / 100_000:.5f}"
    gate = tmp_path / "first-run"

    def hang_once(seconds: str) -> str:
        if gate.exists():
            return "second run"
        gate.write_text("x")
        subprocess.Popen(["sleep", seconds], start_new_session=True)
        time.sleep(float(seconds))
        return "first run"

    with Session(tmp_path / "root", site=_local_site()) as s:
        job = s.project("dies").task("worker").submit(hang_once, seconds)
        (orphan,) = _wait_for(lambda: _host_pids_with(seconds), 60, "the call's sleep to start")
        workers = set(s.backend(s.profile("local")).client.run(os.getpid).values())
        chain, pid = [], orphan
        while pid > 1 and pid not in workers:  # the sleep's ancestors, up to the worker that forked the call
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            chain.append(pid)
        assert pid in workers, chain
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not _host_pids_with(seconds), 10, "the confined call and its sleep to die with the worker")
        row = job.wait(timeout=120)
        assert row.status == "SUCCEEDED" and job.result() == "second run", row.reason
        assert [a.cause for a in job.attempts] == ["lost", None]


@pytest.mark.sandbox
def test_confining_costs_forks_not_an_interpreter(tmp_path):
    """run_confined returns the work's value and raises, naming how, when the work dies."""
    view = JobView(str(tmp_path), str(tmp_path / "projects/p/tasks/t"), str(tmp_path / "projects/p/shared"))
    for d in (view.internal, view.shared_dir):
        os.makedirs(d)
    assert run_confined(view, lambda: (os.getpid(), sorted(os.listdir(tmp_path)))) == (2, ["projects"])
    with pytest.raises(RuntimeError, match=r"killed by signal 15"):
        run_confined(view, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(RuntimeError, match=r"ZeroDivisionError"):
        run_confined(view, lambda: 1 / 0)


@pytest.mark.sandbox
def test_a_machine_that_cannot_confine_calls_refuses_them_at_submit_and_says_how_to_opt_out(tmp_path, monkeypatch):
    from htc_notebook.backends import call_sandbox
    from htc_notebook.errors import BackendError

    def refused(view):  # what unshare(2) says where user namespaces are off (a stand-in: they are on here)
        raise call_sandbox.ConfinementError(1, "unshare: Operation not permitted")

    monkeypatch.setattr(call_sandbox, "_enter", refused)
    monkeypatch.setattr(call_sandbox, "_checked", set())
    with Session(tmp_path / "root", site=_local_site()) as s:
        task = s.project("nons").task("refused")
        with pytest.raises(BackendError,
                           match=r"cannot confine them: .*unshare: Operation not permitted.*sandbox: none"):
            task.submit(pow, 2, 3)
        (row,) = task.jobs().rows()
        assert row.status == "FAILED" and "not submitted" in row.reason, row.reason


def mpi_probe(comm, root: str, sibling: str, other_shared: str) -> list[dict] | None:
    """The probe on every rank of an MPI function; rank 0 returns them all."""
    seen = comm.gather(probe(root, sibling, other_shared))
    return seen if comm.rank == 0 else None


def _assert_rank_confined(seen: dict) -> None:
    """As a command's, but an MPI rank keeps the node's PID namespace (docs/storage.md)."""
    _assert_confined({**seen, "read_ledger_via_proc": "FileNotFoundError (not asserted for ranks)"})


@pytest.mark.sandbox
def test_each_rank_of_a_local_mpi_function_is_confined(tmp_path):
    local = _local_site(packing="per_task")  # the rank pool (packed) serves every task: not confined
    with Session(tmp_path / "root", site=local) as s:
        task, argv = _prepare(s, "py-mpi")
        seen = task.mpi(mpi_probe, *argv[-3:], ranks_per_node=2).result(timeout=300)
    assert len(seen) == 2
    for one in seen:
        _assert_rank_confined(one)


@pytest.mark.slurm
def test_each_rank_of_an_mpi_function_on_two_slurm_nodes_is_confined(site):  # noqa: F811 - the fixture imported above
    """A per-task allocation (a packed one's rank pool serves every task: not confined)."""
    per_task = site.profile("cpu").model_validate({**site.profile("cpu").model_dump(), "packing": "per_task"})
    alone = SiteConfig(profiles={**site.profiles, "cpu": per_task}, default_profile="cpu")
    root = REPO / "test-output" / f"call-sandbox-mpi-{uuid.uuid4().hex[:8]}"
    with Session(root, site=alone) as s:
        task, argv = _prepare(s, "py-mpi-slurm")
        seen = task.mpi(mpi_probe, *argv[-3:], nodes=2, ranks_per_node=1, profile="cpu").result(timeout=300)
    for one in seen:
        _assert_rank_confined(one)
    assert {one["host"] for one in seen} == {"node1", "node2"}, seen
