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
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import missing
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


def _assert_call_confined(seen: dict) -> None:
    """As a command's; but /proc/1 is the call's zygote, which is not dumpable: its root is refused
    (PermissionError) rather than shown (the same view: FileNotFoundError)."""
    assert seen["read_ledger_via_proc"].startswith(("FileNotFoundError", "PermissionError")), seen
    _assert_confined({**seen, "read_ledger_via_proc": "FileNotFoundError (either way)"})


@pytest.mark.sandbox
def test_a_local_python_call_sees_only_its_task_and_its_projects_shared_directory(tmp_path):
    with Session(tmp_path / "root", site=_local_site()) as s:
        (seen,) = _probe_calls(s, "py-local")
    _assert_call_confined(seen)


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
        _assert_call_confined(one)
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


# -- the zygote (call_sandbox's module docstring): one confined process per worker process and view,
# which forks each call. Each test plays a call that attacks it, or checks that what a call got from
# its own confined child still holds on a zygote's second and later calls.

def _view(tmp_path: Path, task: str = "t") -> JobView:
    """A view of task `task`, beside a sibling task `s` that holds a secret."""
    view = JobView(str(tmp_path), str(tmp_path / "projects/p/tasks" / task), str(tmp_path / "projects/p/shared"))
    for d in (view.checkpoints, view.shared_dir, tmp_path / "projects/p/tasks/s"):
        os.makedirs(d, exist_ok=True)
    (tmp_path / "projects/p/tasks/s/secret").write_text("the sibling's secret")
    return view


def _namespace() -> tuple[int, int]:
    """(pid namespace inode, pid) of the calling process."""
    return os.stat("/proc/self/ns/pid").st_ino, os.getpid()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return type(exc).__name__


def _attack(secret: str, root: str) -> dict:
    """What a call may try against its view and its zygote (pid 1 of its namespace)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def errno_of(rc: int) -> str:
        return "ok" if rc == 0 else os.strerror(ctypes.get_errno())

    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    r, w = os.pipe()
    if os.fork() == 0:  # a nested user namespace: every capability there, over a copy of the mounts, locked
        rc = libc.unshare(0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS
        os.write(w, f"{errno_of(rc) if rc else errno_of(libc.umount2(root.encode(), 2))}|{_read(secret)}".encode())
        os._exit(0)
    os.close(w)
    nested = os.read(r, 200).decode()
    os.wait()
    seen = {
        "nested_userns_umount": nested,
        "umount_view": errno_of(libc.umount2(root.encode(), 2)),  # MNT_DETACH
        "mount_tmpfs": errno_of(libc.mount(b"tmpfs", root.encode(), b"tmpfs", 0, None)),
        "secret": _read(secret),
        "secret_via_zygote_root": _read("/proc/1/root" + secret),
        "zygote_fds": _read("/proc/1/fdinfo/0"),
        "zygote_mem": _read("/proc/1/mem"),
        "ptrace_zygote": errno_of(libc.ptrace(16, 1, None, None)),  # PTRACE_ATTACH
        "caps": (status["CapEff"].strip(), status["CapPrm"].strip(), status["CapBnd"].strip()),
        "no_new_privs": status["NoNewPrivs"].strip(),
    }
    os.kill(1, signal.SIGKILL)  # the kernel keeps this off the namespace's pid 1
    return seen


@pytest.mark.sandbox
def test_a_call_can_neither_undo_its_view_nor_reach_or_kill_its_zygote(tmp_path):
    """Before: a call (root's, or an ordinary user's in the user namespace it made) kept its
    capabilities, umounted the tmpfs over the data root and read the sibling task's secret. Now it
    holds none; its zygote is not dumpable (no /proc/1/root, fds, mem, no ptrace) and outlives its
    SIGKILL: the next call runs in the same namespace, confined."""
    view = _view(tmp_path)
    secret = str(tmp_path / "projects/p/tasks/s/secret")
    first = run_confined(view, _namespace)
    seen = run_confined(view, lambda: _attack(secret, str(tmp_path)))
    assert seen == {"nested_userns_umount": "Invalid argument|FileNotFoundError",
                    "umount_view": "Operation not permitted", "mount_tmpfs": "Operation not permitted",
                    "secret": "FileNotFoundError", "secret_via_zygote_root": "PermissionError",
                    "zygote_fds": "PermissionError", "zygote_mem": "PermissionError",
                    "ptrace_zygote": "Operation not permitted", "caps": ("0" * 16,) * 3, "no_new_privs": "1"}, seen
    later = run_confined(view, lambda: (_namespace(), sorted(os.listdir(tmp_path)), _read(secret)))
    assert later[0][0] == first[0] and later[0][1] > first[1], (first, later)  # the same zygote served it
    assert later[1:] == (["projects"], "FileNotFoundError")


@pytest.mark.sandbox
def test_a_zygote_serves_one_view_and_one_that_died_is_replaced(tmp_path):
    """Two tasks' calls never share a zygote (each sees its own task, not the other's); a zygote
    killed from outside (as an OOM kill would) is replaced: the next call runs confined."""
    from htc_notebook.backends import call_sandbox

    a, b = _view(tmp_path, "a"), _view(tmp_path, "b")
    Path(a.task_dir, "mine").write_text("a's")

    def look() -> tuple:
        return _namespace()[0], _read(os.path.join(a.task_dir, "mine")), sorted(os.listdir(os.path.dirname(a.task_dir)))

    ns_a, mine_a, tasks_a = run_confined(a, look)
    ns_b, mine_b, tasks_b = run_confined(b, look)
    assert ns_a != ns_b and (mine_a, tasks_a) == ("a's", ["a"]) and (mine_b, tasks_b) == ("FileNotFoundError", ["b"])
    assert run_confined(a, look)[0] == ns_a  # kept for the view's next call
    (zygote,) = call_sandbox._IDLE[a]
    os.kill(zygote.pid, signal.SIGKILL)
    _wait_for(lambda: not zygote.alive(), 10, "the zygote's parent to see it die")
    assert run_confined(a, look)[1:] == ("a's", ["a"])
    (new,) = call_sandbox._IDLE[a]
    assert new is not zygote and new.pid != zygote.pid and zygote.code == 128 + signal.SIGKILL


def leave_behind(marker: str) -> str:
    """Start a process in a new session, and a daemon (double fork), both outliving this call."""
    subprocess.Popen(["sleep", marker], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker + "1"])
        os._exit(0)
    return "left"


@pytest.mark.sandbox
def test_what_a_call_leaves_running_is_gone_when_its_result_is(tmp_path):
    """On every call of a zygote: its orphans are SIGKILLed and reaped before the call is done."""
    view = _view(tmp_path)
    for _ in range(3):
        marker = f"{900 + uuid.uuid4().int % 100_000 / 100_000:.5f}"
        assert run_confined(view, lambda marker=marker: leave_behind(marker)) == "left"
        assert not _host_pids_with(marker), "a process the call left outlived it"


def hog(mib: int) -> int:
    x = bytearray(mib << 20)
    for i in range(0, len(x), 4096):
        x[i] = 1
    time.sleep(0.3)  # held a moment: the watchdog samples every 50 ms
    return len(x) >> 20


@pytest.mark.sandbox
@pytest.mark.parametrize("held", [pytest.param("cgroup", marks=pytest.mark.root), "watched"])
def test_each_call_of_a_zygote_is_held_to_its_own_memory_limit_and_measured(tmp_path, monkeypatch, held):
    """Calls in a row on one zygote: each its own limit and peak; one over it fails for memory, and
    neither the zygote nor the next call pays for it."""
    from htc_notebook.backends import memory_limit
    from htc_notebook.backends.call_sandbox import OutOfMemory

    if held == "watched":
        monkeypatch.setenv(memory_limit.CGROUPS_ENV, "0")
    elif memory_limit.cgroup_place() is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    view = _view(tmp_path)
    verdicts: list = []
    namespaces = [run_confined(view, _namespace)[0]]
    for mib in (40, 60):
        assert run_confined(view, lambda mib=mib: hog(mib), 128, verdicts.append) == mib
    with pytest.raises(OutOfMemory, match=r"out of memory \(limit 128 MiB\)"):
        run_confined(view, lambda: hog(400), 128, verdicts.append)
    assert run_confined(view, lambda: hog(40), 128, verdicts.append) == 40
    namespaces.append(run_confined(view, _namespace)[0])
    assert [(v.how, v.oom) for v in verdicts] == [(held, False)] * 2 + [(held, True), (held, False)], verdicts
    for v, mib in zip(verdicts, (40, 60, None, 40), strict=True):
        if mib:
            assert mib <= v.peak_mib < mib + 40, verdicts  # its own peak, not the calls' before it
    assert namespaces[0] == namespaces[1]  # one zygote served them all


@pytest.mark.sandbox
def test_a_stopped_call_of_a_zygote_dies_at_once_and_the_next_call_runs(tmp_path):
    """stop_calls_of (a cancelled dask task) SIGKILLs the call's zygote: the call, and what it started,
    end at once; after `resume`, the thread's next call gets a new zygote."""
    from htc_notebook.backends.call_sandbox import CallDied, resume, stop_calls_of

    view = _view(tmp_path)
    marker = f"{600 + uuid.uuid4().int % 100_000 / 100_000:.5f}"
    outcome: list = []
    first = run_confined(view, _namespace)  # the stopped call is its zygote's second

    def run() -> None:
        try:
            outcome.append(run_confined(view, lambda: subprocess.run(["sleep", marker]).returncode))
        except CallDied as exc:
            outcome.append(exc)

    import threading

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for(lambda: _host_pids_with(marker), 30, "the call's sleep to start")
    assert stop_calls_of(thread.ident)
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(outcome[0], CallDied) and outcome[0].signal == 9, outcome
    assert not _host_pids_with(marker)
    resume(thread.ident)
    later = run_confined(view, lambda: (_namespace(), sorted(os.listdir(tmp_path))))
    assert later[1] == ["projects"] and later[0][1] == 2, (first, later)  # a new zygote's first call


@pytest.mark.sandbox
def test_a_process_keeps_few_idle_zygotes_and_ends_the_others(tmp_path, monkeypatch):
    """Past MAX_IDLE views, the least recently used zygote ends (its processes reaped); one idle
    longer than IDLE_SECONDS ends at the next call's end."""
    from htc_notebook.backends import call_sandbox

    views = [_view(tmp_path, f"t{i}") for i in range(call_sandbox.MAX_IDLE + 2)]
    for view in views:
        call_sandbox.forget(view)
    made = []
    for view in views:
        run_confined(view, _namespace)
        made += call_sandbox._IDLE[view]
    assert all(view not in call_sandbox._IDLE for view in views[:2]), "the two least recently used ended"
    assert [z.code for z in made[:2]] == [128 + signal.SIGKILL] * 2 and all(z.alive() for z in made[2:])
    monkeypatch.setattr(call_sandbox, "IDLE_SECONDS", 0.0)
    time.sleep(0.01)
    run_confined(views[-1], _namespace)
    assert [view for view in views if view in call_sandbox._IDLE] == [views[-1]]
    assert not any(z.alive() for z in made[2:-1])


@pytest.mark.sandbox
def test_a_zygote_found_dead_as_a_call_is_handed_to_it_is_replaced_once(tmp_path, monkeypatch):
    """Killed between its last call and this one, unnoticed (its parent not yet reaped): the call goes
    to a new zygote and runs once, confined."""
    from htc_notebook.backends import call_sandbox

    view = _view(tmp_path)
    marker = tmp_path / "projects/p/tasks/t/runs"
    run_confined(view, _namespace)
    (zygote,) = call_sandbox._IDLE[view]
    os.kill(zygote.pid, signal.SIGKILL)
    monkeypatch.setattr(call_sandbox._Zygote, "alive", lambda self: True)  # as if not seen dead yet

    def once() -> list:
        with open(marker, "a") as f:
            f.write("ran\n")
        return sorted(os.listdir(tmp_path))

    assert run_confined(view, once) == ["projects"]
    assert marker.read_text() == "ran\n"
    (new,) = call_sandbox._IDLE[view]
    assert new is not zygote and zygote.code == 128 + signal.SIGKILL


def forge_report(marker: str) -> None:
    """Write to each pipe this call holds a report whose unpickling runs a command, then end."""
    import pickle
    import stat

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    forged = pickle.dumps(("ok", Evil()))
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, forged)
        except OSError:
            pass
    os._exit(0)


@pytest.mark.sandbox
def test_a_forged_report_runs_nothing_in_the_worker(tmp_path):
    """Before, the worker unpickled a call's report as it came: a call that wrote its own made the
    worker (unconfined) run a command. Now a report is plain data or the call failed."""
    from htc_notebook.backends.call_sandbox import CallDied

    view = _view(tmp_path / "data")
    marker = Path(tempfile.mkdtemp(prefix="htc-forged-")) / "ran-in-the-worker"
    try:
        with pytest.raises(CallDied, match="before it reported"):
            run_confined(view, lambda: forge_report(str(marker)))
        assert not marker.exists()
        assert run_confined(view, lambda: {"plain": [1, 2.0, b"x", None]}) == {"plain": [1, 2.0, b"x", None]}
    finally:
        shutil.rmtree(marker.parent)


def nap_and_say(seconds: float) -> float:
    """Writes its pid (and that of a child it leaves running) to `pids` in its task directory, then sleeps."""
    child = subprocess.Popen(["sleep", "3001.7"])  # a duration no other test uses
    with open(os.path.join(os.environ["HTC_TASK_DIR"], "pids"), "a") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(seconds)
    return seconds


def test_a_confined_call_past_its_walltime_is_killed_with_all_it_started_and_retried_with_more(tmp_path):
    """A Python call's time limit (`walltime`) is held: past it the call, and what it started, are
    killed (its zygote's namespace goes); the attempt ends FAILED, cause `timeout`, and a retry asks
    for twice the time, as for command jobs."""
    from htc_notebook import Resources
    from htc_notebook.spec import RetryPolicy

    with Session(tmp_path / "root", site=_local_site()) as s:
        task = s.project("limits").task("walltime")
        started = time.monotonic()
        job = task.submit(nap_and_say, 3, resources=Resources(walltime=2), retries=RetryPolicy(retries=1, backoff=0))
        row = job.wait(timeout=120)
        assert row.status == "SUCCEEDED", row.reason  # the retry, with 4 s
        first, second = job.attempts
        assert (first.status, first.cause, first.request["timeout"]) == ("FAILED", "timeout", 2), first
        assert first.reason == "timeout: killed after 2 s (its walltime)"
        assert second.request["timeout"] == 4
        assert time.monotonic() - started < 60
        assert len((task.storage.task_dir / "pids").read_text().splitlines()) == 2  # both attempts ran
        # (their pids are the calls' namespaces'): none of what either attempt started is alive anywhere
        assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_our_sleep(p)]


def _is_our_sleep(proc: Path) -> bool:
    try:
        return (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"3001.7"]
    except OSError:
        return False
