"""The `htc` command, run for real as a subprocess: each test has its own data root (tmp_path)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_htc

from htc_notebook.backends.sandbox import sandbox_problem

WIDE = {"COLUMNS": "200"}  # rich tables are not truncated or wrapped


# -- helpers ----------------------------------------------------------------------------------
def batch_yaml(path: Path, *, job_name: str = "w", batch_size: object = 1, command: str = '["true"]',
               extra: tuple[str, ...] = ()) -> Path:
    """A YAML job batch. Lines: 1 jobName, 2 batchSize, 3 htcJobDefinition, 4 commands, 5.. `extra`."""
    lines = [f"jobName: {job_name}", f"batchSize: {batch_size}", "htcJobDefinition:",
             f"  commands: {command}", *(f"  {e}" for e in extra)]
    path.write_text("\n".join(lines) + "\n")
    return path


def htc(*args: str, root: Path):
    return run_htc(*args, root=root, env=WIDE, timeout=60)


def htc_json(*args: str, root: Path):
    r = htc(*args, "--json", root=root)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_user_error(r, *needles: str) -> None:
    """Exit 2, one `htc: error:` line on stderr holding every needle, no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htc: error: "), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def assert_nothing_written(root: Path) -> None:
    assert not (root / "ledger.db").exists()
    assert not (root / "projects").exists()


def table_rows(text: str) -> list[list[str]]:
    """Body rows of a rich table: cells of lines starting with a number."""
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]
    return [r for r in rows if re.fullmatch(r"-?\d+(\.\d+)?", r[0])]


# -- 1. demo ----------------------------------------------------------------------------------
DEMO = ("demo", "--temperatures", "3", "--seeds", "2", "--mc-sweeps", "50", "--task", "t1")


def test_demo_runs_sweep_and_is_idempotent(tmp_path):
    root = tmp_path / "root"
    r = htc(*DEMO, root=root)
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert [row[0] for row in rows] == ["1.500", "2.500", "3.500"], r.stdout
    assert [row[5] for row in rows] == ["2", "2", "2"]  # the 'runs' column
    assert "runs" in r.stdout

    status = htc_json("status", "--task", "demo/t1", root=root)
    assert status["task"] == "demo/t1"
    assert status["counts"]["SUCCEEDED"] == 6
    jobs = status["jobs"]
    assert len(jobs) == 6 and {j["status"] for j in jobs} == {"SUCCEEDED"}
    assert {(j["T"], j["seed"]) for j in jobs} == {(t, s) for t in (1.5, 2.5, 3.5) for s in (1, 2)}

    again = htc(*DEMO, root=root)
    assert again.returncode == 0, again.stderr
    assert "6 members already succeeded" in again.stdout
    assert len(table_rows(again.stdout)) == 3
    status = htc_json("status", "--task", "demo/t1", root=root)
    assert len(status["jobs"]) == 6
    assert [j["attempts"] for j in status["jobs"]] == [1] * 6
    assert sorted(j["job_id"] for j in status["jobs"]) == sorted(j["job_id"] for j in jobs)


# -- 2. profiles ------------------------------------------------------------------------------
SITE = """\
profiles:
  cpu:
    backend: slurm
    partition: cpu
    cores_per_node: 8
    memory_per_node: 16G
    max_walltime: 1-00:00:00
"""


def test_profiles_builtin_local(tmp_path):
    r = htc("profiles", "list", root=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"│ local \(default\)\s+│ local\s+│", r.stdout), r.stdout

    r = htc("profiles", "show", "local", root=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "name: local" in r.stdout and "backend: local" in r.stdout
    assert re.search(r"^cores_per_node: [1-9]\d*$", r.stdout, re.M), r.stdout


def test_profiles_show_unknown_suggests(tmp_path):
    r = htc("profiles", "show", "locl", root=tmp_path)
    assert_user_error(r, "Did you mean 'local'")


def test_profiles_from_site_file(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    r = htc("--site", str(site), "profiles", "list", root=tmp_path)
    assert r.returncode == 0, r.stderr
    cpu = [line for line in r.stdout.splitlines() if line.startswith("│ cpu ")]
    assert len(cpu) == 1, r.stdout
    cells = [c.strip() for c in cpu[0].strip("│").split("│")]
    assert cells[:5] == ["cpu", "slurm", "cpu", "8", "16384 MiB"]
    assert "local" in r.stdout

    r = htc("--site", str(site), "profiles", "show", "cpu", root=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "partition: cpu" in r.stdout and "max_walltime: 86400" in r.stdout


def test_site_file_unknown_key(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(SITE + "    cores_per_nod: 4\n")  # line 8
    r = htc("--site", str(site), "profiles", "list", root=tmp_path)
    assert_user_error(r, f"{site}:8", "cores_per_nod", "unknown key", "valid keys", "cores_per_node")


@pytest.mark.parametrize("text, line, message", [
    ("profiles:\n  cpu: {cores_per_node: 8\n", 3, "malformed YAML"),
    ("profiles:\n  cpu:\n    cores_per_node: 8\n    cores_per_node: 4\n", 4, "duplicate key 'cores_per_node'"),
])
def test_site_file_malformed(tmp_path, text, line, message):
    site = tmp_path / "site.yaml"
    site.write_text(text)
    r = htc("--site", str(site), "profiles", "list", root=tmp_path)
    assert_user_error(r, f"{site}:{line}", message)


# -- 3. submit --------------------------------------------------------------------------------
WRITE_INDEX = '["sh", "-c", "echo $HTC_JOB_INDEX > out-$HTC_JOB_INDEX.txt"]'


def test_submit_yaml_batch(tmp_path):
    root = tmp_path / "root"
    batch = batch_yaml(tmp_path / "batch.yaml", job_name="writer", batch_size=4, command=WRITE_INDEX)
    r = htc("submit", str(batch), "--project", "p", "--task", "t", root=root)
    assert r.returncode == 0, r.stderr
    assert "submitted 4 jobs to p/t" in r.stdout
    task_dir = root / "projects" / "p" / "tasks" / "t"
    for i in range(4):
        assert (task_dir / f"out-{i}.txt").read_text() == f"{i}\n"
    assert not (task_dir / "out-4.txt").exists()

    tasks = htc_json("status", root=root)
    assert [t["task"] for t in tasks] == ["p/t"]
    assert tasks[0]["counts"]["SUCCEEDED"] == 4
    assert sum(tasks[0]["counts"].values()) == 4


def test_submit_json_list_of_batches(tmp_path):
    root = tmp_path / "root"
    batches = [
        {"jobName": "a", "batchSize": 2,
         "htcJobDefinition": {"commands": ["sh", "-c", "echo a$HTC_JOB_INDEX > a-$HTC_JOB_INDEX.txt"]}},
        {"jobName": "b", "batchSize": 1,
         "htcJobDefinition": {"commands": ["sh", "-c", "echo $GREETING > b.txt"], "maxVCpus": 1,
                              "envs": [{"name": "GREETING", "value": "hi there"}]}},
    ]
    path = tmp_path / "batches.json"
    path.write_text(json.dumps(batches, indent=2))
    r = htc("submit", str(path), "--project", "p", "--task", "j", root=root)
    assert r.returncode == 0, r.stderr
    task_dir = root / "projects" / "p" / "tasks" / "j"
    assert (task_dir / "a-0.txt").read_text() == "a0\n"
    assert (task_dir / "a-1.txt").read_text() == "a1\n"
    assert (task_dir / "b.txt").read_text() == "hi there\n"
    status = htc_json("status", "--task", "p/j", root=root)
    assert status["counts"]["SUCCEEDED"] == 3
    assert sorted(j["name"] for j in status["jobs"]) == ["a", "a", "b"]


# -- 4. dry run -------------------------------------------------------------------------------
def test_submit_dry_run_writes_nothing(tmp_path):
    root = tmp_path / "root"
    batch = batch_yaml(tmp_path / "batch.yaml", job_name="writer", batch_size=4, command=WRITE_INDEX)
    r = htc("submit", str(batch), "--dry-run", "--project", "p", "--task", "t", root=root)
    assert r.returncode == 0, r.stderr
    assert "4 jobs" in r.stdout
    assert "HTC_JOB_INDEX=0..3" in r.stdout
    assert "sh -c 'echo $HTC_JOB_INDEX > out-$HTC_JOB_INDEX.txt'" in r.stdout
    # as submitting would run them here: in the sandbox, or (none can be made) unconfined and said so
    confined = sandbox_problem() is None
    assert ("bwrap --die-with-parent" in r.stdout) is confined, r.stdout
    assert ("runs jobs unconfined" in r.stdout) is not confined, r.stdout
    assert_nothing_written(root)


def test_submit_dry_run_on_slurm_renders_the_array_submit_would_send(tmp_path):
    """issue 13 item 8: the dry run goes through the backend's own plan, so it shows the sandbox
    each job runs in (before, it had a path of its own and showed the bare command). A machine that
    cannot make a sandbox refuses a SLURM profile that asks for one, as submitting from it would
    (the submitting machine is checked: sandbox.check_sandbox); with `sandbox: none` it renders."""
    root, site = tmp_path / "root", tmp_path / "site.yaml"
    site.write_text(SITE)
    batch = batch_yaml(tmp_path / "batch.yaml", job_name="writer", batch_size=4, command=WRITE_INDEX,
                       extra=("maxVCpus: 2", "maxMemory: 300"))
    argv = ("--site", str(site), "submit", str(batch), "--dry-run", "--profile", "cpu", "--project", "p",
            "--task", "t")
    r = htc(*argv, root=root)
    confined = sandbox_problem() is None
    if not confined:
        assert r.returncode == 2 and "bwrap cannot make one here" in r.stderr, r.stderr
        assert sandbox_problem() in r.stderr and "`sandbox: none`" in r.stderr, r.stderr
        site.write_text(SITE + "    sandbox: none\n")
        r = htc(*argv, root=root)
    assert r.returncode == 0, r.stderr
    task_dir = f"{root.resolve()}/projects/p/tasks/t"
    for directive in ("#SBATCH --array=0-3", "#SBATCH --partition=cpu", "#SBATCH --cpus-per-task=2",
                      "#SBATCH --mem=300M", f"htc_state={task_dir}/.htc/slurm"):
        assert directive in r.stdout, (directive, r.stdout)
    assert ("bwrap --die-with-parent" in r.stdout and f"--bind {task_dir} {task_dir}" in r.stdout) is confined
    assert_nothing_written(root)


# -- 5. bad input -----------------------------------------------------------------------------
BAD = {
    "batchSize 0": ({"batch_size": 0}, [":2:", "batchSize = 0", "from 1 to"]),
    "maxVCpus negative": ({"extra": ("maxVCpus: -4",)}, [":5:", "maxVCpus = -4", "whole number"]),
    "maxVCpus float": ({"extra": ("maxVCpus: 2.5",)}, [":5:", "maxVCpus = 2.5", "whole number"]),
    "timeout not a number": ({"extra": ("execTimeoutSeconds: abc",)},
                             [":5:", "execTimeoutSeconds = 'abc'", "whole number"]),
    "jobName with ;": ({"job_name": '"a;rm -rf"'}, [":1:", "jobName = 'a;rm -rf'", "found ';'"]),
    "env name with space": ({"extra": ('envs: [{name: "A B", value: x}]',)},
                            [":5:", "envs[0].name = 'A B'", "environment variable name"]),
    "image, no registry": ({"extra": ("imageName: ubuntu:24.04",)}, ["registry", "htc registry up"]),
    "image without a tag": ({"extra": ("imageName: ubuntu",)}, ["imageName = 'ubuntu'", "repo:tag"]),
    "image with ..": ({"extra": ('imageName: "../x:1"',)}, ["imageName = '../x:1'", "repo:tag"]),
    "image with $()": ({"extra": ('imageName: "$(id):1"',)}, ["imageName = '$(id):1'", "repo:tag"]),
    "image uppercase": ({"extra": ("imageName: Ubuntu:24.04",)}, ["imageName = 'Ubuntu:24.04'", "lowercase"]),
    "unknown key": ({"extra": ("maxVcpuz: 2",)},
                    [":5:", "maxVcpuz", "unknown key", "valid keys", "maxVCpus", "execTimeoutSeconds"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_submit_bad_input(tmp_path, case):
    fields, needles = BAD[case]
    root = tmp_path / "root"
    batch = batch_yaml(tmp_path / "batch.yaml", **fields)
    r = htc("submit", str(batch), "--project", "p", "--task", "t", root=root)
    assert_user_error(r, *needles)
    if needles[0].startswith(":"):
        assert f"{batch}{needles[0]}" in r.stderr  # file:line
    assert_nothing_written(root)


def test_submit_missing_file(tmp_path):
    root = tmp_path / "root"
    missing = tmp_path / "nothere.yaml"
    r = htc("submit", str(missing), root=root)
    assert_user_error(r, str(missing), "cannot read")
    assert_nothing_written(root)


def test_submit_list_with_one_bad_batch_submits_none(tmp_path):
    root = tmp_path / "root"
    good = {"jobName": "ok", "batchSize": 1, "htcJobDefinition": {"commands": ["touch", "ran.txt"]}}
    bad = {"jobName": "img", "batchSize": 1, "htcJobDefinition": {"commands": ["true"], "imageName": "ubuntu:24.04"}}
    path = tmp_path / "batches.json"
    path.write_text(json.dumps([good, bad]))
    r = htc("submit", str(path), "--project", "p", "--task", "t", root=root)
    assert_user_error(r, "htc registry up")
    assert_nothing_written(root)


# -- 6. a failing job -------------------------------------------------------------------------
def test_submit_failing_batch(tmp_path):
    root = tmp_path / "root"
    batch = batch_yaml(tmp_path / "batch.yaml", job_name="fails", command='["sh", "-c", "exit 3"]')
    r = htc("submit", str(batch), "--project", "p", "--task", "t", root=root)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    status = htc_json("status", "--task", "p/t", root=root)
    assert status["counts"]["FAILED"] == 1 and status["counts"]["SUCCEEDED"] == 0
    [job] = status["jobs"]
    assert job["status"] == "FAILED"
    assert job["exit_code"] == 3
    assert re.search(r"\bcode 3\b", job["reason"]), job["reason"]


# -- 7. usage mistakes ------------------------------------------------------------------------
def test_status_unknown_task_lists_known(tmp_path):
    root = tmp_path / "root"
    batch = batch_yaml(tmp_path / "batch.yaml")
    assert htc("submit", str(batch), "--project", "p", "--task", "t", root=root).returncode == 0
    r = htc("status", "--task", "nope/none", root=root)
    assert_user_error(r, "no task nope/none", "known tasks: p/t")


def test_no_arguments_prints_usage(tmp_path):
    r = htc(root=tmp_path)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "usage: htc" in out
    for command in ("demo", "status", "profiles", "submit"):
        assert command in out
    assert "Traceback" not in r.stderr


def test_the_module_runs_as_a_program():
    """`python -m htc_notebook.cli` (issue 14: it failed with a NameError before the commands were defined)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "htc_notebook.cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: htc"), out.stderr
