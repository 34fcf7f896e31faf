"""An ordinary user on the SLURM test cluster (issue 25: "an ordinary user on a restrictive site").

Every other SLURM test runs as root. Here the local user `htc-user` (tests/restrictive.py) does what
a user does from a notebook (tests/slurm_user_run.py): it writes its site file with `htc profiles
discover`, then, on a data root it owns on the file system the nodes share, submits a command batch,
a sweep of Python calls on pilots and MPI tasks across two nodes. Each job reports who it ran as and
where; the checks here compare that with the user's uid. Memory is held by SLURM's cgroups.

The user runs Debian's Python (`.venv-user`: the root venv may live where others cannot enter) with
this checkout's code first on its path (PYTHONPATH, passed on to the jobs by sbatch).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, missing
from restrictive import USER_VENV, as_user, ensure_user, user_env

pytestmark = [pytest.mark.slurm, pytest.mark.root]  # root: it makes the user and runs things as it

USER = "htc-user"
SCHEDULER_HOST = "10.77.0.1"  # the test cluster's bridge: where the nodes reach the user's kernel
LIMIT = 200 << 20  # the batch jobs' maxMemory (200 MiB), in bytes
CGROUPS = Path("/sys/fs/cgroup/memory")  # SLURM's (cgroup v1 on this machine)


@dataclass(frozen=True)
class UserWork:
    """The ordinary user, its work directory (theirs, 0700, where the nodes see it), its clean
    environment, and the site file it made."""

    user: pwd.struct_passwd
    work: Path
    env: dict[str, str]
    site: Path


@pytest.fixture(scope="module")
def user_work(slurm_cluster) -> UserWork:
    """`htc-user` with a work directory of its own and its site file, made with `htc profiles discover`."""
    if not (USER_VENV / "bin" / "python").exists():
        missing(f"{USER_VENV} is missing: `make test` makes the ordinary user's venv")
    user = ensure_user(USER)
    work = REPO / "test-output" / f"slurm-as-user-{uuid.uuid4().hex[:8]}"  # shared with the nodes, not /tmp
    work.mkdir(parents=True)
    os.chown(work, user.pw_uid, user.pw_gid)
    os.chmod(work, 0o700)
    env = user_env(user, PYTHONPATH=str(REPO))  # this checkout's code, whatever .venv-user was installed from
    site = work / "site.yaml"
    made = as_user(USER, [str(USER_VENV / "bin" / "htc"), "profiles", "discover", "--scheduler-host", SCHEDULER_HOST,
                          "-o", str(site)], env=env, cwd=work, timeout=120)
    assert made.returncode == 0, f"htc profiles discover as {USER}: {made.stdout}\n{made.stderr}"
    return UserWork(user, work, env, site)


@pytest.fixture(scope="module")
def seen(user_work: UserWork) -> dict[str, Any]:
    """What the user's run saw (one run for the module: its pilots and allocations start once), with
    the user's `uid` and its data `root`. Its output is kept in `<work>/run.log`."""
    root = user_work.work / "data"
    run = as_user(USER, [str(USER_VENV / "bin" / "python"), str(REPO / "tests" / "slurm_user_run.py"), str(root),
                         str(user_work.site)], env=user_work.env, cwd=user_work.work, timeout=600)
    (user_work.work / "run.log").write_text(f"{run.stdout}\n--- stderr\n{run.stderr}")
    assert run.returncode == 0, (f"the run as {USER} failed (exit {run.returncode}):\n"
                                 f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["htc_notebook"] == str(REPO / "htc_notebook" / "__init__.py")  # this checkout's code ran
    return {"uid": user_work.user.pw_uid, "root": str(root), **result}


def accounted_to(native_ids: list[str]) -> set[str]:
    """The users SLURM's accounting (sacct) records for these jobs, once it has them all (slurmctld
    sends them to slurmdbd shortly after they end)."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,User", "-j", ",".join(native_ids)],
                             capture_output=True, text=True, timeout=60)
        rows = dict(line.split("|") for line in out.stdout.split())
        if set(rows) >= set(native_ids) or time.monotonic() > deadline:
            assert set(rows) >= set(native_ids), (native_ids, out.stdout, out.stderr)
            return {rows[n] for n in native_ids}
        time.sleep(0.5)


def test_a_command_batch_runs_as_the_user_its_memory_held_by_slurms_cgroup(seen):
    uid = seen["uid"]
    who = seen["batch"]["who"]
    assert [j["status"] for j in who] == ["SUCCEEDED"] * 2, who
    for job in who:
        out = job["out"].splitlines()
        assert out[:2] == [str(uid), USER], job  # checked in the job, on the node
        words = out[2].split()
        assert words[:2] == ["limit", str(LIMIT)] and f"/uid_{uid}/job_" in words[3], job  # SLURM's cgroup, --mem
        assert job["host"] in {"node1", "node2"} and job["held"] == "cgroup", job
    assert accounted_to([j["native_id"] for j in who]) == {USER}  # SLURM's accounting: the user's jobs
    hog = seen["batch"]["hog"]
    assert (hog["status"], hog["causes"], hog["held"]) == ("FAILED", ["memory"], "cgroup"), hog
    assert hog["reason"] == "out of memory (limit 128 MiB): the OOM killer stopped it"


def test_a_bundled_job_gets_no_peak_of_the_jobs_before_it(seen):
    """The array script cannot reset the peak of the user's cgroup (SLURM leaves its files root's):
    the second job of a bundle, which held next to nothing, must not be given the first one's
    150 MiB (before: both 154.7 MiB). Unknown is said as unknown; the limit was still the cgroup's."""
    first, second = seen["bundled"]
    assert first["native_id"] == second["native_id"] and "/" in first["native_id"]  # one array task
    assert first["status"] == second["status"] == "SUCCEEDED", (first, second)
    assert 150 <= first["max_rss_mib"] < 256 and second["max_rss_mib"] is None, (first, second)
    assert first["held"] == second["held"] == "cgroup"


def test_python_calls_on_pilots_run_as_the_user_and_one_over_its_memory_fails_for_memory(seen):
    assert seen["sweep"]["who"] == [[seen["uid"], "node4"]] * 4
    hog = seen["sweep"]["hog"]
    assert (hog["status"], hog["causes"], hog["held"]) == ("FAILED", ["memory"], "cgroup"), hog
    assert hog["reason"] == "out of memory (limit 128 MiB): the OOM killer stopped it"


def test_command_jobs_on_pilots_run_as_the_user_and_one_over_its_memory_fails_for_memory(seen):
    who = seen["pilot_commands"]["who"]
    assert [j["status"] for j in who] == ["SUCCEEDED"] * 2, who
    for job in who:
        assert job["out"].splitlines() == [str(seen["uid"]), USER], job
        assert job["native_id"].startswith("local:") and job["held"] in ("cgroup", "watched"), job  # on a pilot
    hog = seen["pilot_commands"]["hog"]
    assert (hog["status"], hog["causes"]) == ("FAILED", ["memory"]) and hog["held"] in ("cgroup", "watched"), hog
    assert hog["reason"].startswith("out of memory (limit 128 MiB)"), hog


def test_mpi_tasks_across_two_nodes_run_as_the_user(seen):
    uid = seen["uid"]
    ranks = seen["mpi"]["function"]
    assert [(r, u) for r, u, _ in ranks] == [(0, uid), (1, uid)] and {h for _, _, h in ranks} == {"node1", "node2"}
    command = seen["mpi"]["command"]
    lines = sorted(line for line in command["stdout"].splitlines() if line.startswith("rank"))
    assert command["exit_code"] == 0 and len(lines) == 2, command
    assert {(w[1], w[3]) for w in map(str.split, lines)} == {("0", str(uid)), ("1", str(uid))}
    assert {w[5] for w in map(str.split, lines)} == {"node1", "node2"}, lines


def test_the_data_root_and_its_credentials_directory_are_the_users_alone(seen):
    """The data root the user owns stays private; the pilots' TLS credentials were its own and went
    with its clusters."""
    root = Path(seen["root"])
    tls = root / "dask-tls"
    assert [(p.stat().st_uid, p.stat().st_mode & 0o777) for p in (root, tls)] == [(seen["uid"], 0o700)] * 2
    assert list(tls.iterdir()) == []


def test_no_cgroup_of_the_users_pilots_outlives_them(seen):
    """The pilots' calls and command jobs each had a memory cgroup of their own, made by the user inside the pilot
    job's: all gone once the session closed, so SLURM could remove the pilot jobs' own (a leftover
    keeps `job_<id>` there and fails a later job of that id)."""
    pilots = {name.rsplit("-", 1)[1] for name in (p.stem for p in Path(seen["root"], "pilot-logs").glob("htc-*.out"))}
    assert len(pilots) == 3, pilots  # the knl pilot, the cpu MPI allocation and the `piloted` commands' pilot
    deadline = time.monotonic() + 60
    while left := sorted(c for job in pilots for c in CGROUPS.glob(f"slurm_*/uid_{seen['uid']}/job_{job}")):
        assert time.monotonic() < deadline, [str(d) for c in left for d in c.rglob("*") if d.is_dir()]
        time.sleep(0.5)


def test_the_htc_command_submits_a_batch_file_that_runs_as_the_user(user_work: UserWork):
    """The other way a user submits: `htc submit` (umask 077, as every `htc` command), then `htc status`."""
    root = user_work.work / "cli"
    batch = user_work.work / "batch.json"
    batch.write_text(json.dumps({"jobName": "cli", "batchSize": 2, "htcJobDefinition": {
        "commands": ["sh", "-c", "id -u; id -un"], "maxMemory": 100}}))
    os.chown(batch, user_work.user.pw_uid, user_work.user.pw_gid)  # the user's file, whatever umask wrote it
    htc = [str(USER_VENV / "bin" / "htc"), "--root", str(root), "--site", str(user_work.site)]
    sent = as_user(USER, [*htc, "submit", "--project", "p", "--task", "t", "--profile", "cpu", str(batch)],
                   env=user_work.env, cwd=user_work.work, timeout=300)
    assert sent.returncode == 0 and "submitted 2 jobs to p/t" in sent.stdout, (sent.stdout, sent.stderr)
    shown = as_user(USER, [*htc, "status", "--task", "p/t", "--json"], env=user_work.env, cwd=user_work.work,
                    timeout=120)
    assert shown.returncode == 0, shown.stderr
    jobs = json.loads(shown.stdout)["jobs"]
    assert [(j["status"], j["memory_held"]) for j in jobs] == [("SUCCEEDED", "cgroup")] * 2, jobs
    logs = root / "projects" / "p" / "tasks" / "t" / "logs"
    assert [(logs / f"job-{j['job_id']}.out").read_text().split() for j in jobs] == \
        [[str(user_work.user.pw_uid), USER]] * 2

