"""Memory limits mean what they say (design G11; backends/memory_limit.py): held by a memory cgroup
of the job's own where one can be made, else by the watchdog on the job's whole process tree; a
job any of whose processes was killed for memory fails for memory, whatever its shell returned, and
its retry gets more; each attempt records how its limit was held and its peak.

Each test runs twice where it can: `cgroup` (this process may make memory cgroups: root on this
machine's cgroup v1) and `watched` (HTC_MEMORY_CGROUPS=0: the watchdog, as for an ordinary user).
`test_as_an_ordinary_user_*` runs the watchdog for real: a user who may make no cgroup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from htc_notebook import RetryPolicy, Session, SiteConfig
from htc_notebook.backends import cgroups, memory_limit, memory_watch
from htc_notebook.backends.sandbox import sandbox_problem

from conftest import missing

REPO = Path(__file__).resolve().parents[1]
# allocates argv[1] MiB (touched), holds it a moment (a watchdog samples every 50 ms), prints it
HOG = [sys.executable, "-c", "import sys, time; x = bytearray(int(sys.argv[1]) << 20); time.sleep(0.3); "
       "print(len(x) >> 20)"]
THREADS = [sys.executable, "-c", textwrap.dedent("""\
    import threading, time
    def work():
        # ~2 MiB by malloc: each thread its own arena (64 MiB of address space)
        x = [bytearray(4000) for _ in range(500)]
        time.sleep(0.5)
    ts = [threading.Thread(target=work) for _ in range(16)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("16 threads")""")]


@pytest.fixture(scope="module", params=[pytest.param("cgroup", marks=pytest.mark.root), "watched"])
def session(request, tmp_path_factory):
    """A session whose jobs' limits are held by cgroups, or (HTC_MEMORY_CGROUPS=0) by the watchdog;
    its dask workers start with the same setting."""
    if request.param == "cgroup" and memory_limit.cgroup_place() is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    saved = os.environ.get(memory_limit.CGROUPS_ENV)
    if request.param == "watched":
        os.environ[memory_limit.CGROUPS_ENV] = "0"
    try:
        with Session(tmp_path_factory.mktemp(f"mem-{request.param}"), site=SiteConfig.builtin()) as s:
            s.held = request.param
            yield s
    finally:
        if saved is None:
            os.environ.pop(memory_limit.CGROUPS_ENV, None)
        else:
            os.environ[memory_limit.CGROUPS_ENV] = saved


def _submit(task, name: str, commands: list[str], limit: int | None, retries: int = 0):
    definition = {"commands": commands, **({"maxMemory": limit} if limit else {})}
    (job,) = task.submit_batch({"jobName": name, "batchSize": 1, "htcJobDefinition": definition},
                               retries=RetryPolicy(retries=retries, backoff=0) if retries else 0)
    return job


def test_a_command_over_its_memory_fails_for_memory_and_its_retry_with_more_succeeds(session):
    task = session.project("mem").task("retry")
    job = _submit(task, "grows", HOG + ["200"], 128, retries=1)
    row = job.wait(timeout=60)
    assert row.status == "SUCCEEDED", row.reason
    first, second = job.attempts
    assert (first.status, first.cause, first.request["memory"]) == ("FAILED", "memory", 128), first
    assert first.reason.startswith("out of memory (limit 128 MiB)"), first.reason
    assert (second.status, second.request["memory"]) == ("SUCCEEDED", 256)
    assert [a.memory_held for a in job.attempts] == [session.held] * 2
    assert 200 <= second.max_rss_mib < 256, second.max_rss_mib  # its peak, measured either way
    df = task.jobs().to_dataframe()
    assert list(df.loc[df.job_id == job.id, "memory_held"]) == [session.held]
    from htc_notebook.server.api import HTCApi

    assert HTCApi(session, None).job_json(task.row, job.row)["memoryHeld"] == session.held


def test_a_many_threaded_job_with_little_memory_runs_under_its_limit(session):
    """16 threads, ~52 MiB: under prlimit --as=1024 MiB it failed (each thread's arena and stack
    is address space); the memory it holds is far below its limit."""
    job = _submit(session.project("mem").task("threads"), "threads", THREADS, 1024)
    row = job.wait(timeout=60)
    assert row.status == "SUCCEEDED", (row.reason, job.logs("err"))
    assert row.memory_held == session.held
    assert row.max_rss_mib is not None and 10 < row.max_rss_mib < 200, row.max_rss_mib


def test_four_children_over_a_shared_limit_fail_for_memory(session):
    """Four 100 MiB processes under 128 MiB together: each alone fits (they all passed prlimit)."""
    four = ["sh", "-c", 'for i in 1 2 3 4; do "$@" & done; wait', "four", *HOG, "100"]
    row = _submit(session.project("mem").task("four"), "four", four, 128).wait(timeout=60)
    assert (row.status, row.memory_held) == ("FAILED", session.held), row.reason
    assert row.reason.startswith("out of memory (limit 128 MiB)"), row.reason


def test_a_shell_whose_child_was_killed_for_memory_fails_for_memory_though_it_exits_0(session):
    shell = ["sh", "-c", '"$@"; echo "child ended: $?"; exit 0', "shell", *HOG, "400"]
    job = _submit(session.project("mem").task("shell"), "shell", shell, 128)
    row = job.wait(timeout=60)
    assert row.status == "FAILED", (row.status, job.logs("out"))
    assert job.attempts[-1].cause == "memory" and row.reason.startswith("out of memory (limit 128 MiB)")


def test_every_job_has_its_peak_measured_with_or_without_a_limit(session):
    bare = _submit(session.project("mem").task("peak"), "bare", HOG + ["60"], None)
    row = bare.wait(timeout=60)
    assert row.status == "SUCCEEDED", row.reason
    assert row.memory_held is None  # it asked for no limit
    assert 60 <= row.max_rss_mib < 120, row.max_rss_mib


def hog(mib: int) -> int:
    x = bytearray(mib << 20)
    time.sleep(0.3)  # held a moment: the watchdog samples every 50 ms
    return len(x) >> 20


def test_a_python_call_over_its_memory_fails_for_memory_and_one_under_it_is_measured(session):
    """Where a call can be confined. Where no sandbox can be made (no user namespaces) calls run
    unconfined in their worker's own process: nothing holds their memory, each attempt records
    `none`, and the session's one warning says so (before, it named only isolation and scratch)."""
    task = session.project("mem").task("python")
    over = task.submit(hog, 400, resources={"memory": "128M"})
    under = task.submit(hog, 40, resources={"memory": "128M"})
    row = over.wait(timeout=120)
    if sandbox_problem() is not None:
        assert row.status == "SUCCEEDED" and over.result() == 400, row.reason
        assert [(a.cause, a.memory_held) for a in over.attempts] == [(None, "none")]
        assert under.result(timeout=120) == 40 and under.row.memory_held == "none"
        assert "the memory and time limits of Python calls" in session.unconfined("local")
        return
    assert row.status == "FAILED" and row.reason.startswith("out of memory (limit 128 MiB)"), row.reason
    assert [(a.cause, a.memory_held) for a in over.attempts] == [("memory", session.held)]
    assert under.result(timeout=120) == 40
    assert under.row.memory_held == session.held
    assert 40 <= under.row.max_rss_mib < 128, under.row.max_rss_mib


def _cgroupfs(tmp_path: Path, writable: bool = True) -> tuple[Path, str]:
    """A directory tree shaped like a cgroup v2 mount with systemd's delegation to a user: the
    user's service has `memory` in its subtree_control, and this process sits in a scope below it.
    Plain files: no kernel enforces anything here."""
    mount = tmp_path / "cgroup"
    service = mount / "user.slice" / "user-1000.slice" / "user@1000.service"
    scope = service / "app.slice" / "kernel.scope"
    scope.mkdir(parents=True)
    for d, controllers in ((mount, "cpu memory pids"), (mount / "user.slice", "memory pids"),
                           (service, "memory pids" if writable else "pids"), (service / "app.slice", "pids"),
                           (scope, "")):
        (d / "cgroup.subtree_control").write_text(controllers + "\n")
        (d / "cgroup.procs").write_text("")
    return mount, "/user.slice/user-1000.slice/user@1000.service/app.slice/kernel.scope"


def test_v2_code_on_a_cgroupfs_shaped_directory_tree(tmp_path):
    """Not a kernel's cgroup v2 (this machine's memory controller is on v1): the v2 code's choices
    and the files it writes and reads, on a tree shaped like one."""
    mount, own = _cgroupfs(tmp_path)
    assert cgroups.own_cgroups(f"0::{own}\n") == (None, own)
    service = mount / "user.slice" / "user-1000.slice" / "user@1000.service"
    # the nearest ancestor that gives `memory` to its children and lets this user write there
    assert cgroups.v2_base(mount, own) == service
    parent = cgroups.v2_parent(mount, own, 4242)
    assert parent == service / "htc-4242" and (parent / "cgroup.subtree_control").read_text() == "+memory"
    cage = cgroups.make_cage(parent, 128, "job-1-1", swap_mib=64, version=2)
    assert (cage.path / "memory.max").read_text() == str(128 << 20)
    assert (cage.path / "memory.swap.max").read_text() == str(64 << 20)  # v2: swap beyond memory
    hold = memory_limit.Hold(128, cage)
    assert hold.how == "cgroup"
    argv = hold.argv(["sh", "-c", "echo joined"])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert done.stdout == "joined\n" and cage.procs.read_text().strip().isdigit()  # it wrote its pid, then ran
    (cage.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    (cage.path / "memory.peak").write_text(str(130 << 20))
    assert (cage.oom_kills(), cage.peak_mib()) == (1, 130.0)
    # without memory.peak (kernels before 5.19): memory.current sampled by the watchdog
    (cage.path / "memory.peak").unlink()
    (cage.path / "memory.current").write_text(str(90 << 20))
    sampler = memory_limit.Hold(128, cage)
    sampler.started(os.getpid(), session=False)
    time.sleep(4 * memory_watch.INTERVAL)
    (cage.path / "memory.current").write_text(str(10 << 20))
    verdict = sampler.ended()
    assert (verdict.how, verdict.oom, verdict.peak_mib) == ("cgroup", True, 90.0)
    # nothing delegated to the user (no memory in its service's subtree_control; above it, root's
    # directories): an ordinary user gets no place (the watchdog), root gets the nearest one it may write
    other, own2 = _cgroupfs(tmp_path / "plain", writable=False)
    for d in (other, other / "user.slice"):
        d.chmod(0o555)
    try:
        assert cgroups.v2_base(other, own2) == (other / "user.slice" if os.geteuid() == 0 else None)
    finally:
        for d in (other, other / "user.slice"):
            d.chmod(0o755)


def test_the_watchdog_kills_a_whole_tree_over_its_limit_and_only_that_tree(tmp_path):
    """The watchdog on real processes: a tree of four (a shell and its children) over its limit is
    SIGKILLed together; a tree under its limit beside it lives on, measured."""
    grow = 'for i in 1 2 3; do "$@" & done; exec sleep 30'
    over = subprocess.Popen(["sh", "-c", grow, "grow", *HOG[:-1], HOG[-1].replace("0.3", "30"), "60"],
                            start_new_session=True)
    calm = subprocess.Popen([*HOG[:-1], HOG[-1].replace("0.3", "30"), "30"], start_new_session=True,
                            stdout=subprocess.DEVNULL)
    try:
        big, small = memory_watch.watch(over.pid, 128), memory_watch.watch(calm.pid, 128)
        assert over.wait(timeout=10) == -9  # killed: 3 x 60 MiB > 128 MiB
        time.sleep(0.3)
        assert big.killed and not small.killed and calm.poll() is None
        assert big.pids and not any(map(_alive, big.pids))  # its children too
        big.stop(), small.stop()
        assert big.peak_mib > 128 and 30 <= small.peak_mib < 60, (big.peak_mib, small.peak_mib)
    finally:
        for p in (over, calm):
            p.kill()
            p.wait()


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2] not in "ZX"  # a zombie waits for its parent (or init) to reap it


STRANGER_SCRIPT = """
import json, sys, time
from htc_notebook import RetryPolicy, Session, SiteConfig
from htc_notebook.backends import memory_limit
HOG = json.loads(sys.argv[2])

def hog(mib):
    x = bytearray(mib << 20)
    time.sleep(0.3)
    return len(x) >> 20

with Session(sys.argv[1], site=SiteConfig.builtin()) as s:
    task = s.project("p").task("t")
    (cmd,) = task.submit_batch({"jobName": "grows", "batchSize": 1, "htcJobDefinition": {
        "commands": HOG + ["200"], "maxMemory": 128}}, retries=RetryPolicy(retries=1, backoff=0))
    call = task.submit(hog, 400, resources={"memory": "128M"})
    cmd.wait(timeout=60), call.wait(timeout=60)
    print(json.dumps({"place": memory_limit.cgroup_place() is not None,
                      "cmd": [(a.status, a.cause, a.memory_held, a.max_rss_mib) for a in cmd.attempts],
                      "call": [(a.status, a.cause, a.memory_held) for a in call.attempts]}))
"""


@pytest.mark.root
def test_as_an_ordinary_user_no_cgroup_can_be_made_so_the_watchdog_holds_the_limit(tmp_path):
    """A real condition, not a setting: an ordinary user (no cgroup delegation here) runs a session;
    its command and its Python call over their limits are killed by the watchdog, for memory."""
    if os.geteuid() != 0:
        missing("running as another user needs root (make test runs as root)")
    user = "htc-stranger"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    # this venv's interpreter may sit where others cannot reach it (pyenv under /root): the system's
    # python of the same version with the venv's packages
    python, version = "/usr/bin/python3", "python{}.{}".format(*sys.version_info[:2])
    packages = Path(sys.prefix) / "lib" / version / "site-packages"
    probe = subprocess.run([python, "-c", "import sys; print('python{}.{}'.format(*sys.version_info[:2]))"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != version or not packages.is_dir():
        missing(f"a system {version} for another user to run the venv's packages with")
    root = Path(tempfile.mkdtemp(prefix="htc-mem-"))
    try:
        root.chmod(0o755)
        subprocess.run(["chown", f"{user}:", str(root)], check=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "PYTHONPATH": f"{REPO}:{packages}"}
        done = subprocess.run(["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                               python, "-c", STRANGER_SCRIPT, str(root / "data"), json.dumps([python, *HOG[1:]])],
                              capture_output=True, text=True, timeout=120, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["place"] is False  # no cgroup for this user: a real condition
        (first, second) = seen["cmd"]
        assert first[:3] == ["FAILED", "memory", "watched"] and second[:3] == ["SUCCEEDED", None, "watched"], seen
        assert 200 <= second[3] < 256, seen
        assert seen["call"] == [["FAILED", "memory", "watched"]], seen
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_a_slurm_array_task_whose_cgroup_counted_an_oom_kill_fails_for_memory_though_it_exited_0(tmp_path):
    """The array script's exit file says `oom` (the task's cgroup counted an OOM kill while it ran)
    but the job's shell exited 0: FAILED for memory, held by the site's cgroup, its peak kept."""
    from htc_notebook.backends.slurm.arrays import StateDirs, Tracked, _read_exit

    state = tmp_path / "task" / ".htc" / "slurm"  # read below the task directory, as the runner does
    state.mkdir(parents=True)
    (state / "job-7-1.exit").write_text(f"0 node1 1700000000.5 oom 12 {130 << 20}\n")
    (state / "job-8-1.exit").write_text(f"0 node1 1700000000.5 ok 12 {30 << 20}\n")
    dirs = StateDirs()
    oom, fine = (_read_exit(Tracked(j, 1, f"5_{j}", state, memory=128), dirs) for j in (7, 8))
    dirs.close()
    assert (oom.status, oom.cause, oom.memory_held, oom.max_rss_mib) == ("FAILED", "memory", "cgroup", 130.0)
    assert oom.reason == "out of memory (limit 128 MiB): the OOM killer stopped it"
    assert (fine.status, fine.memory_held) == ("SUCCEEDED", "cgroup")


@pytest.mark.root
def test_a_cage_whose_processes_linger_after_its_job_is_emptied_and_removed_in_the_background(monkeypatch):
    """A job's cgroup still holding a process when the job is done (an OOM-killed tree the kernel is
    slow to free, a child that escaped its job's kill): the process is SIGKILLed and the cgroup
    removed once the kernel lets it go, not left behind (seen in CI: a call's cgroup outlived it)."""
    monkeypatch.delenv(memory_limit.CGROUPS_ENV, raising=False)  # the module's "watched" session may have set it
    parent = memory_limit.cgroup_parent()
    if parent is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    cage = cgroups.make_cage(parent, 64, f"job-linger-{os.getpid()}")
    assert cage is not None
    lingering = subprocess.Popen(["sleep", "300"])
    (cage.path / "cgroup.procs").write_text(str(lingering.pid))
    cage.remove()  # returns at once: the sleep is still in it
    assert lingering.wait(timeout=10) == -9  # killed: nothing of an ended job runs on
    deadline = time.monotonic() + 10
    # the reaper removes the directory, then forgets it: both, before the deadline (the CI once looked between)
    while (cage.path.exists() or cage.path in cgroups._reaper.pending()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cage.path.exists() and cage.path not in cgroups._reaper.pending()
