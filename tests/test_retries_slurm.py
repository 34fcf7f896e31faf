"""Retries that learn, on the real test cluster: the cgroup kills a job for memory and the retry asks
for more; a job killed at its time limit is retried with more time. Each attempt's request and why
it changed are in the ledger, the DataFrame and the REST job view."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import RetryPolicy, Session
from htc_notebook.backends.slurm.pilots import pilot_workers
from htc_notebook.server.api import HTCApi
from htc_notebook.server.auth import Auth

pytestmark = pytest.mark.slurm


def test_out_of_memory_and_timeout_are_retried_with_more(site, slurm_cluster):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"retries-{uuid.uuid4().hex[:8]}"
    grow = [slurm_cluster.python, "-c", "x = bytearray(300 << 20); import time; time.sleep(0.5)"]
    with Session(root, site=site) as s:
        task = s.project("retries").task("learn")
        policy = RetryPolicy(retries=2, backoff=0)
        (hungry,) = task.submit_batch({"jobName": "hungry", "batchSize": 1, "htcJobDefinition": {
            "commands": grow, "maxMemory": 128}}, profile="cpu", retries=policy)
        (slow,) = task.submit_batch({"jobName": "slow", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sleep", "3"], "execTimeoutSeconds": 2}}, profile="cpu", retries=policy)
        for job in (hungry, slow):
            row = job.wait(timeout=240)
            assert row.status == "SUCCEEDED", row.reason
        # memory: 128 MiB killed by the cgroup, 256 MiB killed, 512 MiB enough
        attempts = hungry.attempts
        assert [(a.status, a.cause, a.request["memory"]) for a in attempts] == [
            ("FAILED", "memory", 128), ("FAILED", "memory", 256), ("SUCCEEDED", None, 512)]
        assert attempts[0].reason == "out of memory (limit 128 MiB): the OOM killer stopped it"
        # what it used, from its cgroup and the script's own count: the 300 MiB it held, some CPU
        assert 300 <= attempts[-1].max_rss_mib < 512 and attempts[-1].cpu_s is not None
        assert hungry.row.max_rss_mib == attempts[-1].max_rss_mib
        # time: killed at 2 s, then given 4 s
        assert [(a.status, a.cause, a.request["timeout"]) for a in slow.attempts] == [
            ("FAILED", "timeout", 2), ("SUCCEEDED", None, 4)]
        retried = [e.message for e in s.ledger.events(job_id=hungry.id) if e.kind == "retrying"]
        assert "memory 128 -> 256 MiB" in retried[0] and "memory 256 -> 512 MiB" in retried[1]
        # shown where people look: the DataFrame and the REST job view
        df = task.to_dataframe().set_index("job_id")
        assert df.loc[hungry.id, "memory_mib"] == 512 and df.loc[slow.id, "timeout_s"] == 4
        assert df.loc[hungry.id, "history"] == ("1 FAILED (memory, 128 MiB) · 2 FAILED (memory, 256 MiB) · "
                                                "3 SUCCEEDED (512 MiB)")
        view = HTCApi(s, Auth(root), owner="me").get_job("me", "retries", str(task.id), str(hungry.id))
        assert [(a["status"], a["cause"], a["maxMemory"]) for a in view["attemptHistory"]] == [
            ("FAILED", "memory", 128), ("FAILED", "memory", 256), ("SUCCEEDED", None, 512)]


CHECKPOINTING = """
step=$(cat "$HTC_CHECKPOINT" 2>/dev/null || echo 0)
echo "start $step" >> runs
trap 'echo "$step" > "$HTC_CHECKPOINT"; exit 99' USR1
: > "ready-$step"
while [ "$step" -lt 200 ]; do sleep 0.05; step=$((step + 1)); done
echo "done $step" >> runs
"""


def test_slurms_warning_signal_checkpoints_a_command_and_its_retry_resumes(site):  # noqa: F811 - the fixture imported above
    """USR1 delivered by slurmd to the array task's batch script (`scancel --batch --signal=USR1`,
    what `--signal=B:USR1@60` makes SLURM send before the time limit) reaches the job, which saves
    its step and exits; the retry resumes from the saved step instead of starting over."""
    import subprocess
    import time

    root = REPO / "test-output" / f"usr1-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("retries").task("usr1")
        (job,) = task.submit_batch({"jobName": "steps", "batchSize": 1, "htcJobDefinition": {
            "commands": ["sh", "-c", CHECKPOINTING]}}, profile="cpu", retries=RetryPolicy(retries=1, backoff=0))
        deadline = time.monotonic() + 120
        while not task.storage.path("ready-0").exists():  # its trap is set
            assert time.monotonic() < deadline, job.row
            time.sleep(0.2)
        time.sleep(1.0)  # some steps done
        subprocess.run(["scancel", "--batch", "--signal=USR1", job.row.native_id], check=True)
        row = job.wait(timeout=180)
        assert row.status == "SUCCEEDED", row.reason
        assert [(a.status, a.cause) for a in job.attempts] == [("FAILED", "exit"), ("SUCCEEDED", None)]
        runs = task.storage.read_text("runs").split("\n")
        saved = int(runs[1].split()[1])
        assert runs[0] == "start 0" and 0 < saved < 200 and runs[2] == "done 200", runs  # resumed, not restarted


def hog_once(mib: int) -> int:
    """Holds `mib` MiB; the first call to run also waits (a marker in its task directory) so the test
    can SIGKILL its worker while it sits in its memory cgroup."""
    import os
    import time

    first = os.path.join(os.environ["HTC_TASK_DIR"], "first")
    if not os.path.exists(first):
        open(first, "w").close()
        time.sleep(300)
    x = bytearray(mib << 20)
    for i in range(0, len(x), 4096):
        x[i] = 1
    return len(x) >> 20


CGROUPS = Path("/sys/fs/cgroup/memory")


def _live_cages(session: Session) -> list[Path]:
    """The memory cgroups of the calls running on this session's cpu pilots (`htc-<worker pid>/call-*`).

    Only of its own workers' pids: the pattern also matches the cgroups of other sessions' pilots
    (another user's, or a previous test's still closing) and leftovers of pilots that died, whose
    `htc-<pid>` may name a pid reused since by any process. Picking one of those, the test SIGKILLed
    a process that was not its call's worker and waited 240 s for the call in vain (one CI failure)."""
    workers = set(session.backend(session.profile("cpu")).pilots.client.run(os.getpid).values())
    return [c for c in CGROUPS.glob(f"slurm_*/uid_{os.getuid()}/job_*/step_*/task_*/htc-*/call-*")
            if int(c.parent.name.split("-")[1]) in workers]


def test_a_call_on_a_pilot_is_held_to_its_memory_and_no_cgroup_outlives_the_pilot(site):  # noqa: F811 - the fixture imported above
    """A Python call on a SLURM pilot runs in a memory cgroup of its own inside the pilot job's:
    over its request it ends FAILED saying so, and its retry gets twice as much. A worker SIGKILLed
    with a call in its cgroup, and the pilots' end, leave no cgroup behind: the pilot's script
    removes them, so slurmstepd removes the jobs' own (a leftover keeps `job_<id>` there)."""
    import subprocess
    import time

    root = REPO / "test-output" / f"call-memory-{uuid.uuid4().hex[:8]}"

    with Session(root, site=site) as s:
        s.scale("cpu", jobs=1)
        task = s.project("retries").task("call-memory")
        stuck = task.submit(hog_once, 10, profile="cpu", resources={"memory": "256M"})
        deadline = time.monotonic() + 180
        # the call is inside its cgroup and has begun (its marker written): killed before, it would
        # not have, and the next call to run (the hog) would be the one that waits
        while not ((cages := _live_cages(s)) and task.storage.path("first").exists()):
            assert time.monotonic() < deadline, stuck.row
            time.sleep(0.2)
        pilots = {c.parents[3] for c in cages}  # the pilot job's cgroup
        worker = int(cages[0].parent.name.split("-")[1])  # htc-<worker pid>
        os.kill(worker, signal.SIGKILL)  # its call dies with it (PDEATHSIG); the nanny starts another
        while not any(a.cause == "lost" for a in stuck.attempts):  # the scheduler has let the dead worker go:
            assert time.monotonic() < deadline, stuck.attempts    # a call sent now cannot land on it (ending lost)
            time.sleep(0.2)
        hog = task.submit(hog_once, 200, profile="cpu", resources={"memory": "128M"},
                          retries=RetryPolicy(retries=1, backoff=0))
        assert stuck.result(timeout=240) == 10
        assert hog.result(timeout=240) == 200
        assert [(a.status, a.cause, a.request["memory"]) for a in hog.attempts] == [
            ("FAILED", "memory", 128), ("SUCCEEDED", None, 256)]
        assert hog.attempts[0].reason == "out of memory (limit 128 MiB): the OOM killer stopped it"
    deadline = time.monotonic() + 60  # the session's end scancels its pilots
    while left := [p for p in pilots if p.exists()]:
        assert time.monotonic() < deadline, (left, [c for p in left for c in p.glob("**/htc-*")],
                                             subprocess.run(["squeue"], capture_output=True, text=True).stdout)
        time.sleep(0.5)


def test_a_pilot_scancelled_with_a_call_running_leaves_no_cgroup(site):  # noqa: F811 - the fixture imported above
    """scancel of a pilot whose call sits in its memory cgroup: nothing of the pilot's cgroups stays
    behind, so slurmstepd removes the job's (before, the script's cleanup trap waited for its worker,
    which waited for the call, whose pid-namespace init ignores SIGTERM: KillWait's SIGKILL came first)."""
    import subprocess
    import time

    root = REPO / "test-output" / f"call-scancel-{uuid.uuid4().hex[:8]}"

    with Session(root, site=site) as s:
        s.scale("cpu", jobs=1)
        task = s.project("retries").task("call-scancel")
        stuck = task.submit(hog_once, 10, profile="cpu", resources={"memory": "256M"})
        deadline = time.monotonic() + 180
        while not ((cages := _live_cages(s)) and task.storage.path("first").exists()):
            assert time.monotonic() < deadline, stuck.row
            time.sleep(0.2)
        job_dir = cages[0].parents[3]  # the pilot job's cgroup: slurm_<node>/uid_<uid>/job_<id>
        job_id = job_dir.name.split("_")[1]
        s.scale("cpu", jobs=0)  # no replacement pilot to muddle the count
        subprocess.run(["scancel", job_id], check=True)
        deadline = time.monotonic() + 60
        while job_dir.exists():
            assert time.monotonic() < deadline, (sorted(str(p) for p in job_dir.glob("**/htc-*")),
                                                 subprocess.run(["squeue"], capture_output=True, text=True).stdout)
            time.sleep(0.5)
        stuck.cancel()


def test_a_call_whose_pilot_ends_runs_again_on_its_replacement(site):  # noqa: F811 - the fixture imported above
    """The only pilot of a fixed scale ends under a call (scancelled here; in CI its `dask worker` once
    exited when a worker was SIGKILLed while its nanny was still starting): the call's attempt ends
    lost, and its requeued attempt runs on a pilot asked for in its place (before, the ended pilot
    stayed in the cluster's plan: no other was asked for, and the call stayed RUNNABLE for ever).

    The pilot has two workers and SLURM ends them one after the other: in CI the requeued attempt once
    went to the second worker in the ~60 ms before it too was gone, and ended lost as well. So the
    attempts are: one lost per worker of the ended pilot at most, then one success."""
    import subprocess
    import time

    root = REPO / "test-output" / f"pilot-ends-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        s.scale("cpu", jobs=1)
        task = s.project("retries").task("pilot-ends")
        stuck = task.submit(hog_once, 10, profile="cpu")
        deadline = time.monotonic() + 180
        while not task.storage.path("first").exists():
            assert time.monotonic() < deadline, stuck.row
            time.sleep(0.2)
        client = s.backend(s.profile("cpu")).pilots.client
        (pilot,) = set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
        subprocess.run(["scancel", pilot], check=True)
        assert stuck.result(timeout=120) == 10
        attempts = [(a.status, a.cause) for a in stuck.attempts]
        workers = pilot_workers(s.profile("cpu"))
        assert attempts[-1] == ("SUCCEEDED", None), attempts
        assert 1 <= len(attempts) - 1 <= workers and set(attempts[:-1]) == {("FAILED", "lost")}, attempts
        assert pilot not in set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
