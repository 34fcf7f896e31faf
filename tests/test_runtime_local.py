"""End-to-end on the embedded local backend: real LocalCluster, real subprocesses, real ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from htc_notebook import JobBatch, JobFailed, SpecError, Sweep
from htc_notebook.registry import RegistryNotRunning


def _alive(pid: int, wait: float = 5.0) -> bool:
    """True if `pid` is a live process (zombies count as dead: pid 1 here may never reap them)."""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def collatz_steps(n: int, offset: int = 0) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps + offset


def fail_on(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad x={x}")
    return x


def test_sweep_of_200_members_returns_every_result_in_order(session):
    task = session.project("e2e").task("collatz")
    sweep = Sweep.grid(n=list(range(1, 101)), offset=[0, 1000])
    group = task.sweep(collatz_steps, sweep)
    assert len(group) == 200
    values = group.results(timeout=120)
    expected = [collatz_steps(m.params["n"], m.params["offset"]) for m in sweep.members]
    assert values == expected
    counts = task.counts()
    assert counts["SUCCEEDED"] == 200 and sum(counts.values()) == 200
    df = group.to_dataframe(results=True)
    assert list(df.columns[:4]) == ["job_id", "name", "index", "status"]
    assert {"n", "offset", "result"} <= set(df.columns)
    assert (df.result == df.apply(lambda r: collatz_steps(r.n, r.offset), axis=1)).all()


def test_resubmitting_a_sweep_runs_nothing_new(session):
    task = session.project("e2e").task("resubmit")
    sweep = Sweep.grid(n=[5, 6, 7, 8])
    first = task.sweep(collatz_steps, sweep)
    first.wait(timeout=60)
    attempts_before = {j.id: j.row.attempts for j in first}
    second = task.sweep(collatz_steps, sweep)
    assert second.skipped == 4
    assert second.ids == first.ids
    assert second.results(timeout=30) == first.results()
    assert {j.id: j.row.attempts for j in second} == attempts_before
    # a bigger sweep runs only its new members
    third = task.sweep(collatz_steps, Sweep.grid(n=[5, 6, 7, 8, 9]))
    assert third.skipped == 4 and len(third) == 5
    third.wait(timeout=60)
    assert sum(task.counts().values()) == 5


def test_failures_explain_themselves_and_resweep_reruns_only_them(session):
    task = session.project("e2e").task("failing")
    group = task.sweep(fail_on, Sweep.grid(x=[1, 2, 3]))
    out = group.results(timeout=60, errors="return")
    assert out[:2] == [1, 2]
    err = out[2]
    assert isinstance(err, JobFailed)
    assert err.status == "FAILED" and "ValueError: bad x=3" in err.reason
    assert err.attempt == 1 and err.host and err.log_path
    assert "ValueError: bad x=3" in open(err.log_path).read()  # the traceback is in the job's log
    assert "retry" in str(err)
    with pytest.raises(JobFailed, match="bad x=3"):
        group[2].result()
    again = task.sweep(fail_on, Sweep.grid(x=[1, 2, 3]))
    again.wait(timeout=60)
    assert [j.row.attempts for j in again] == [1, 1, 2]


def test_falsy_results_come_back_as_themselves(session):
    task = session.project("e2e").task("falsy")
    handles = [task.submit(lambda v=v: v) for v in (0, "", [], None, False)]
    assert [h.result(timeout=60) for h in handles] == [0, "", [], None, False]


def test_large_result_goes_to_a_file_atomically(session):
    task = session.project("e2e").task("large")
    h = task.submit(bytes, 1_000_000)
    assert h.result(timeout=60) == bytes(1_000_000)
    res = session.ledger.result(h.id)
    assert res.inline is None and res.path and os.path.getsize(res.path) > 1_000_000
    assert not [p for p in os.listdir(os.path.dirname(res.path)) if p.startswith(".")]


def test_automatic_retries_are_recorded_as_attempts(session, tmp_path):
    marker = tmp_path / "tries"

    def flaky():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError(f"transient {n}")
        return "ok"

    task = session.project("e2e").task("retry")
    h = task.submit(flaky, retries=3)
    deadline = time.time() + 60
    while h.status != "SUCCEEDED" and time.time() < deadline:
        time.sleep(0.1)
    assert h.result(timeout=1) == "ok"
    attempts = h.attempts
    assert [a.status for a in attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert "transient 0" in attempts[0].reason


def test_unpicklable_function_fails_at_submit_and_writes_nothing(session):
    task = session.project("e2e").task("unpicklable")
    lock = threading.Lock()
    with pytest.raises(SpecError, match="picklable"):
        task.submit(lambda: lock)
    assert sum(task.counts().values()) == 0


def test_batch_jobs_see_their_index_and_run_in_the_task_directory(session):
    task = session.project("e2e").task("batch")
    batch = JobBatch.model_validate({
        "jobName": "idx", "batchSize": 5,
        "htcJobDefinition": {"commands": ["sh", "-c", 'echo "$HTC_JOB_INDEX $GREETING" > out-$HTC_JOB_INDEX.txt; pwd'],
                             "envs": [{"name": "GREETING", "value": "hi; $(rm -rf /)"}]}})
    group = task.submit_batch(batch)
    results = group.results(timeout=60)
    assert [r.exit_code for r in results] == [0] * 5
    for i in range(5):
        assert task.storage.read_text(f"out-{i}.txt") == f"{i} hi; $(rm -rf /)\n"
    assert results[0].stdout.strip() == str(task.storage.path("."))


def test_timed_out_command_ends_failed_with_reason_and_its_children_die(session, tmp_path):
    task = session.project("e2e").task("timeout")
    pidfile = task.storage.path("child.pid")  # jobs write only to their task directory (the sandbox)
    marker = f"{300 + os.getpid() % 1000 / 1000:.3f}"  # the child's own argument: found by it on the host
    batch = JobBatch.model_validate({
        "jobName": "sleepy", "batchSize": 1,
        "htcJobDefinition": {"commands": ["sh", "-c", f"sleep {marker} & echo $! > {pidfile}; wait"],
                             "execTimeoutSeconds": 1}})
    t0 = time.monotonic()
    job = task.submit_batch(batch)[0]
    err = job.exception(timeout=60)
    assert time.monotonic() - t0 < 30
    assert err is not None and err.status == "FAILED"
    assert "timeout" in err.reason and "execTimeoutSeconds=1" in err.reason
    assert "execTimeoutSeconds" in str(err)
    assert int(pidfile.read_text()) > 0  # the child started (its pid in the job's own PID namespace)
    # the whole job was killed, not just `sh`: no `sleep <marker>` is left on the host
    assert not [pid for pid in _host_pids_running(["sleep", marker]) if _alive(pid, wait=5)]


def _host_pids_running(argv: list[str]) -> list[int]:
    """The host's processes whose command line is exactly `argv`."""
    wanted, found = "\0".join(argv) + "\0", []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline") as f:
                    if f.read() == wanted:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_failed_command_reports_exit_code_and_log(session):
    task = session.project("e2e").task("exit3")
    batch = JobBatch.model_validate({"jobName": "three", "batchSize": 1,
                                     "htcJobDefinition": {"commands": ["sh", "-c", "echo oops >&2; exit 3"]}})
    err = task.submit_batch(batch)[0].exception(timeout=60)
    assert err.status == "FAILED" and "code 3" in err.reason
    assert open(err.log_path).read() == "oops\n"
    assert task.jobs()[0].row.exit_code == 3


def test_command_sweep_fills_templates_without_a_shell(session):
    task = session.project("e2e").task("cmd-sweep")
    group = task.sweep("echo {word} {n}", Sweep.zip(word=["a;b", "$(x)", "two words"], n=[1, 2, 3]))
    outs = [r.stdout for r in group.results(timeout=60)]
    assert outs == ["a;b 1\n", "$(x) 2\n", "two words 3\n"]
    with pytest.raises(SpecError, match="one of the sweep's parameters"):
        task.sweep("echo {missing}", Sweep.grid(n=[1]))


def test_cancel_a_running_command(session):
    task = session.project("e2e").task("cancel")
    batch = JobBatch.model_validate({"jobName": "long", "batchSize": 1,
                                     "htcJobDefinition": {"commands": ["sleep", "300"]}})
    job = task.submit_batch(batch)[0]
    deadline = time.time() + 30
    while job.status != "RUNNING" and time.time() < deadline:
        time.sleep(0.05)
    assert job.status == "RUNNING"
    assert job.cancel()
    row = job.wait(timeout=30)
    assert row.status == "CANCELLED"


def test_jobs_cancelled_by_another_process_are_stopped_here_one_look_after_another(session):
    """A cancel from the CLI, the REST API or another kernel reaches the running session through the
    ledger: its reconcile loop stops the job (the first look, then each later look by change mark)."""
    from htc_notebook.ledger import Ledger

    task = session.project("e2e").task("cancel-elsewhere")
    backend = session.backend(session.profile("local"))
    a, b = task.submit_batch({"jobName": "long", "batchSize": 2, "htcJobDefinition": {"commands": ["sleep", "300"]}})
    deadline = time.monotonic() + 30
    while {a.status, b.status} != {"RUNNING"}:
        assert time.monotonic() < deadline, (a.status, b.status)
        time.sleep(0.05)
    with Ledger(session.ledger.path) as elsewhere:  # another process's connection, as `htc cancel` opens
        for job, other in ((a, b), (b, None)):
            assert elsewhere.cancel([job.id]) == [job.id]
            deadline = time.monotonic() + 30
            while job.id in backend.running():
                assert time.monotonic() < deadline, f"job {job.id} cancelled elsewhere still runs here"
                time.sleep(0.1)
            assert other is None or (other.id in backend.running() and other.status == "RUNNING")
            assert job.wait(timeout=10).status == "CANCELLED"


def test_economy_jobs_start_after_priority_jobs(session):
    task = session.project("e2e").task("priority")
    cores = session.profile(None).cores_per_node
    blocker = {"jobName": "block", "batchSize": cores,  # holds every core while the others queue
               "htcJobDefinition": {"commands": ["sleep", "3"]}}
    eco = {"jobName": "eco", "batchSize": 2,
           "htcJobDefinition": {"commands": ["true"], "priority": "ON_DEMAND_ECONOMY"}}
    pri = {"jobName": "pri", "batchSize": 2, "htcJobDefinition": {"commands": ["true"]}}
    b = task.submit_batch(blocker)
    e = task.submit_batch(eco)
    p = task.submit_batch(pri)
    for g in (b, e, p):
        g.wait(timeout=60)
    assert max(j.row.started for j in p) <= min(j.row.started for j in e)


def test_bad_requests_are_refused_before_anything_is_written(session):
    task = session.project("e2e").task("refused")
    cores = session.profile(None).cores_per_node
    with pytest.raises(RegistryNotRunning, match="htc registry up"):  # no registry in this data root
        task.submit_batch({"jobName": "img", "batchSize": 1,
                           "htcJobDefinition": {"imageName": "ubuntu:24.04", "commands": ["true"]}})
    with pytest.raises(SpecError, match="cores"):
        task.submit_batch({"jobName": "big", "batchSize": 1,
                           "htcJobDefinition": {"maxVCpus": cores + 1, "commands": ["true"]}})
    with pytest.raises(SpecError):
        task.submit(collatz_steps, 3, resources={"cores": -4})
    with pytest.raises(SpecError, match="architecture"):
        task.submit_batch({"jobName": "arm", "batchSize": 1,
                           "htcJobDefinition": {"architecture": "A100", "commands": ["true"]}})
    assert sum(task.counts().values()) == 0


def test_jobs_of_a_dead_session_become_lost_not_succeeded_and_are_requeued(tmp_path):
    """A local job whose owning process died is LOST (design G5), at once on this host (its pid is
    gone), cause `owner`: not the job's fault, so it is requeued, here, as its RetryPolicy allows."""
    from htc_notebook import Session, SiteConfig

    root = tmp_path / "root"
    script = textwrap.dedent(f"""
        import time
        from htc_notebook import Session, SiteConfig
        s = Session({str(root)!r}, site=SiteConfig.builtin())
        t = s.project("p").task("t")
        g = t.submit_batch({{"jobName": "long", "batchSize": 2,
                             "htcJobDefinition": {{"commands": ["sleep", "300"]}}}})
        while t.counts()["RUNNING"] < 2:
            time.sleep(0.05)
        print("running", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Session(root, site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        jobs = task.jobs()  # after the session's first reconcile: no lease to wait for on this host
        firsts = [s.ledger.attempts(j.id)[0] for j in jobs]
        assert [(a.status, a.cause) for a in firsts] == [("LOST", "owner")] * 2
        assert "has exited" in firsts[0].reason and str(proc.pid) in firsts[0].reason
        assert "orphaned process group" in firsts[0].reason  # the `sleep 300` children were killed
        assert not _alive(int(firsts[0].native_id.split(":")[1]))
        deadline = time.monotonic() + 30
        while {(j.row.attempts, j.row.status) for j in jobs} != {(2, "RUNNING")} and time.monotonic() < deadline:
            s.wait_for_change(0.2)
        assert [(j.row.attempts, j.row.status, j.row.spec.owner) for j in jobs] == [(2, "RUNNING", str(s.owner))] * 2
        task.cancel()
        assert [j.status for j in task.jobs()] == ["CANCELLED", "CANCELLED"]


def test_handles_rebuild_from_the_ledger_in_a_new_session(session):
    from htc_notebook import Session, SiteConfig

    task = session.project("e2e").task("rebuild")
    group = task.sweep(collatz_steps, Sweep.grid(n=[3, 4]))
    values = group.results(timeout=60)
    with Session(session.root, site=SiteConfig.builtin()) as other:
        again = other.project("e2e").task("rebuild")
        assert again.id == task.id
        assert [h.result() for h in again.jobs()] == values
        assert other.job(group.ids[0]).result() == values[0]
        df = again.to_dataframe(results=True)
        assert list(df.result) == values and list(df.n) == [3, 4]


def test_an_empty_sweep_warns_and_writes_nothing(session):
    from htc_notebook.errors import HTCWarning

    task = session.project("e2e").task("empty")
    with pytest.warns(HTCWarning):
        empty = Sweep.grid(n=[])
    group = task.sweep(collatz_steps, empty)
    assert len(group) == 0 and group.results(timeout=5) == []
    assert sum(task.counts().values()) == 0 and session.ledger.batches(task.id) == []


def test_recorded_times_are_the_jobs_own(session):
    """started/ended come from where the job ran, so runtime is never negative."""
    task = session.project("e2e").task("times")
    group = task.submit_batch({"jobName": "quick", "batchSize": 6,
                               "htcJobDefinition": {"commands": ["sh", "-c", "exit $((HTC_JOB_INDEX % 2))"]}})
    group.wait(timeout=60)
    df = group.to_dataframe()
    assert set(df.status) == {"SUCCEEDED", "FAILED"}
    assert (df.runtime_s >= 0).all()


def test_a_function_the_workers_cannot_load_fails_with_an_explanation(session, tmp_path):
    """A function pickled by reference to a module only this process can import."""
    import importlib
    import sys as _sys

    mod_dir = tmp_path / "only_here"
    mod_dir.mkdir()
    (mod_dir / "private_mod.py").write_text("def f(x):\n    return x * 2\n")
    _sys.path.insert(0, str(mod_dir))
    try:
        mod = importlib.import_module("private_mod")
        task = session.project("e2e").task("unloadable")
        err = task.submit(mod.f, 2).exception(timeout=60)
    finally:
        _sys.path.remove(str(mod_dir))
    assert err.status == "FAILED"
    assert "could not load private_mod.f" in err.reason and "No module named 'private_mod'" in err.reason


def quick(x: int) -> tuple[int, str]:
    """A trivial job that prints, fails for x == 123, and reports its own index variable."""
    print(f"job says {x}")
    if x == 123:
        raise ValueError("x is 123")
    return x * 2, os.environ["HTC_JOB_INDEX"]


def test_quick_jobs_are_packed_and_each_keeps_its_own_record(session):
    from distributed import get_task_stream

    from htc_notebook.backends.dask_jobs import PROBE_JOBS

    task = session.project("e2e").task("packed")
    client = session.backend(session.profile("local")).client
    with get_task_stream(client) as stream:
        group = task.sweep(quick, Sweep.zip(x=list(range(400))))
        values = group.results(timeout=120, errors="return")
    keys = [t["key"] for t in stream.data]
    packs = [k for k in keys if "-x" in k]
    # fewer dask tasks than jobs, and every job ran once: probes alone, the rest in packs
    assert packs and len(keys) < 400
    assert len(keys) - len(packs) == PROBE_JOBS
    assert sum(int(k.rsplit("-x", 1)[1]) for k in packs) == 400 - PROBE_JOBS
    # each job has its own outcome, index, log and attempt; one failure spoils nothing else
    assert isinstance(values[123], JobFailed) and "x is 123" in str(values[123])
    assert [v for i, v in enumerate(values) if i != 123] == [(2 * i, str(i)) for i in range(400) if i != 123]
    assert task.counts()["SUCCEEDED"] == 399 and task.counts()["FAILED"] == 1
    jobs = list(group)
    assert jobs[250].logs().strip() == "job says 250"
    assert "ValueError: x is 123" in jobs[123].logs("err")
    assert {len(j.attempts) for j in jobs} == {1}
    assert not {j.id for j in jobs} & session.parts.tasks.here.keys()  # what ended is not held as running here


def nap(i: int) -> int:
    time.sleep(0.25)  # slow: over PACK_BELOW x CONFINED_SCALE (0.2 s), what a confined call may take in a pack
    return i


def test_slow_jobs_are_not_packed(session):
    from distributed import get_task_stream

    task = session.project("e2e").task("unpacked")
    client = session.backend(session.profile("local")).client
    with get_task_stream(client) as stream:
        task.sweep(nap, Sweep.zip(i=list(range(24)))).results(timeout=120)
    keys = [t["key"] for t in stream.data]
    assert len(keys) == 24 and not [k for k in keys if "-x" in k]


def quick_nap(i: int) -> int:
    time.sleep(0.02)
    return i


@pytest.mark.sandbox
def test_confined_calls_of_20_ms_are_packed(session):
    """A fork per confined call costs ~10 ms, so calls this quick share one (dask_jobs.CONFINED_SCALE)."""
    from distributed import get_task_stream

    task = session.project("e2e").task("packed-confined")
    client = session.backend(session.profile("local")).client
    with get_task_stream(client) as stream:
        assert task.sweep(quick_nap, Sweep.zip(i=list(range(60)))).results(timeout=120) == list(range(60))
    keys = [t["key"] for t in stream.data]
    assert [k for k in keys if "-x" in k] and len(keys) < 60, keys


def test_cancel_reaches_jobs_waiting_for_their_probes(session, tmp_path):
    def touch_then_sleep(i: int) -> None:
        (tmp_path / f"ran-{i}").touch()
        time.sleep(1.0)

    from htc_notebook.backends.dask_jobs import PROBE_JOBS, PROBE_WAIT

    task = session.project("e2e").task("cancel-held")
    group = task.sweep(touch_then_sleep, Sweep.zip(i=list(range(30))))
    cancelled = group.cancel()
    group.wait(timeout=60)
    time.sleep(PROBE_WAIT + 1.5)  # past the moment held jobs would have been released
    assert len(cancelled) == 30 and task.counts()["CANCELLED"] == 30
    ran = {int(p.name.split("-")[1]) for p in tmp_path.glob("ran-*")}
    assert ran <= set(range(PROBE_JOBS)), ran


def quick_unless_gated(x: int, gate: str) -> int:
    """Quick for the probes (x < 8); the others wait for `gate` to exist, so a pack is still running."""
    deadline = time.time() + 60
    while x >= 8 and not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.01)
    return x * 2


def test_cancelling_a_job_inside_a_running_pack_leaves_the_others_results_right(session, tmp_path):
    task = session.project("e2e").task("cancel-in-pack")
    gate = str(tmp_path / "open")
    group = task.sweep(quick_unless_gated, Sweep.zip(x=list(range(100)), gate=[gate] * 100))
    time.sleep(1.5)  # the probes are done: the rest now runs in packs, each blocked at its first job
    assert session.cancel([group[20].id, group[21].id]) == [group[20].id, group[21].id]
    open(gate, "w").close()
    values = group.results(timeout=120, errors="return")
    assert [group[i].status for i in (20, 21)] == ["CANCELLED", "CANCELLED"]
    assert [v for i, v in enumerate(values) if i not in (20, 21)] == [2 * i for i in range(100) if i not in (20, 21)]


def test_a_kernel_of_a_jupyter_server_with_a_proxy_links_dashboards_through_it(tmp_path):
    """What the server extension hands its kernels (HTC_JUPYTER_BASE_URL): dask's own links and the
    toolkit's point through the server (jupyter-server-proxy), with the dashboard's real port."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from htc_notebook import Session\n"
            "if __name__ == '__main__':\n"
            "    with Session(sys.argv[1]) as s:\n"
            "        s.project('p').task('t').submit(abs, -1).wait(timeout=60)\n"
            "        (c,) = s.clusters()\n"
            "        port = s.backend(s.profile(None)).client.scheduler_info()['services']['dashboard']\n"
            "        print(json.dumps([c['dashboard'], port]))\n")
    env = {**os.environ, "HTC_JUPYTER_BASE_URL": "/user/ada/"}
    env.pop("DASK_DISTRIBUTED__DASHBOARD__LINK", None)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    link, port = json.loads(out.stdout.strip().splitlines()[-1])
    assert link == f"/user/ada/proxy/{port}/status"


def doze(seconds: float, i: int = 0) -> int:
    time.sleep(seconds)
    return i


def test_a_new_session_expects_the_call_times_its_task_measured_before(tmp_path):
    """Issue 26: after a restart, pilots near their deadline go by how long the function's calls
    took before (the ledger's `call_durations`), not by nothing until the first ones are timed."""
    from htc_notebook import Session, SiteConfig

    with Session(tmp_path, site=SiteConfig.builtin()) as first:
        task = first.project("p").task("naps")
        done = task.sweep(doze, Sweep.grid(seconds=[0.4], i=[1, 2, 3])).wait(timeout=120)
        assert done.counts()["SUCCEEDED"] == 3
        other = task.submit(doze, 0.0, 9)  # another payload: not counted with the naps
        assert other.result(timeout=60) == 9
        took = first.ledger.call_durations(done.ids[0], done[0].row.spec.payload)
        assert len(took) == 3 and all(0.4 <= t < 5 for t in took), took
    with Session(tmp_path, site=SiteConfig.builtin()) as again:
        task = again.project("p").task("naps")
        more = task.sweep(doze, Sweep.grid(seconds=[0.4], i=[4]))  # the same function, a new member
        calls = again.backend(again.profile("local"))._calls
        runners = set(calls._runner_of.values()) | {h for h, _ in calls._queue}
        assert runners and all(abs(r.expected - max(took)) < 1e-9 for r in runners), [r.expected for r in runners]
        assert more.wait(timeout=60).counts()["SUCCEEDED"] == 1


def wait_a_while(marker: str) -> str:
    """Says it started (a file in its task directory), then waits two minutes."""
    open(os.path.join(os.environ["HTC_TASK_DIR"], marker), "w").close()
    time.sleep(120)
    return marker


@pytest.mark.sandbox  # a confined call is a child process, which a cancel stops
def test_a_cancelled_running_call_is_stopped_and_frees_its_worker(session):
    """dask cannot stop a running task's thread: before, a cancelled call ran on, untracked, and
    held its worker until it returned. Both workers busy with calls, both cancelled: the next job
    runs at once (backends/stop_cancelled.py)."""
    task = session.project("e2e").task("cancel-running")
    busy = [task.submit(wait_a_while, f"started-{i}") for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(task.storage.path(f"started-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, [h.row for h in busy]
        time.sleep(0.1)
    for h in busy:
        h.cancel()
    assert [h.wait(timeout=30).status for h in busy] == ["CANCELLED"] * 2
    assert task.submit(collatz_steps, 27).result(timeout=30) == 111  # a worker was free again


def fail_or_wait(x: int) -> int:
    if x < 2:
        raise ValueError(f"x={x} fails")
    time.sleep(20)
    return x


def test_max_failures_cancels_the_rest_of_a_batch_or_sweep(session):
    """Issue 27 item 6: once `max_failures` jobs of a batch (or the members a sweep submitted) have
    failed for good, the rest are cancelled, saying why; a bad value is refused, nothing submitted."""
    task = session.project("e2e").task("max-failures")
    with pytest.raises(SpecError, match="max_failures"):
        task.submit_batch({"jobName": "x", "batchSize": 2, "htcJobDefinition": {"commands": ["true"]}}, max_failures=0)
    assert sum(task.counts().values()) == 0
    failing = ["sh", "-c", 'if [ "$HTC_JOB_INDEX" -lt 3 ]; then exit 1; fi; sleep 60']
    group = task.submit_batch({"jobName": "flaky", "batchSize": 8, "htcJobDefinition": {"commands": failing}},
                              max_failures=2).wait(timeout=120)
    counts = group.counts()
    assert counts["FAILED"] in (2, 3) and counts["FAILED"] + counts["CANCELLED"] == 8, counts
    cancelled = [h.row.reason for h in group if h.status == "CANCELLED"]
    assert all(r.startswith("max_failures=2 reached:") and "'flaky' failed" in r for r in cancelled), cancelled
    sweep = task.sweep(fail_or_wait, Sweep.grid(x=list(range(6))), max_failures=2).wait(timeout=120)
    counts = sweep.counts()
    assert counts["FAILED"] == 2 and counts["CANCELLED"] == 4, counts
