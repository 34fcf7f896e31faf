"""A hostile job against the files and programs around it (issue 24, holes 1-3; docs/security.md).

The job runs code its API user wrote, in the sandbox, with its task directory writable. It tries:
- its log made a symlink to the server's JWT signing key, then read back through the runtime and
  the REST API (before: the key came back, and with it a token for any user);
- the same symlink, then a retry: the runner must not append the next attempt's output to the
  link's target (before: it wrote through it, as the server's user);
- its log made a FIFO (before: every reader of the log hung for ever);
- a `bwrap`, `prlimit` and `sh` planted in the task directory and put first on its PATH, and an
  LD_PRELOAD (before: the planted bwrap ran unconfined, as the server's user).
Each of these failed on the code before this test was written.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from htc_notebook import Session, SiteConfig
from htc_notebook.backends.base import Launch
from htc_notebook.backends.sandbox import JobView, confined
from htc_notebook.server.api import ApiError, HTCApi
from htc_notebook.server.auth import Auth
from htc_notebook.storage.untrusted import lines_from_end, open_below, read_text_tail

REPO = Path(__file__).resolve().parents[1]


def _batch(commands: list[str], **definition) -> dict:
    return {"jobName": "hostile", "batchSize": 1, "htcJobDefinition": {"commands": commands, **definition}}


def _in_time(fn, seconds: float = 20.0):
    """fn()'s value, or a test failure if it blocks (a FIFO read would block for ever)."""
    out: dict = {}

    def run():
        try:
            out["v"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            out["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} blocked for {seconds} s"
    if "e" in out:
        raise out["e"]
    return out["v"]


@pytest.fixture
def served(tmp_path):
    """A Session, the REST API over it (no HTTP: the manager the handlers call), ada's project `md`."""
    with Session(tmp_path / "root") as s:
        auth = Auth(s.storage.root)
        auth.create_key("ada", ["md"])
        yield s, HTCApi(s, auth), s.storage.root / "server" / "jwt-signing-key.pem"


def test_a_log_made_a_symlink_to_the_signing_key_is_not_followed_by_the_runtime_or_the_api(served):
    s, api, key = served
    assert key.exists()
    task = s.project("md").task("hostile")
    (job,) = task.submit_batch(_batch(["sh", "-c", f'echo before; ln -sf {key} "logs/job-$HTC_JOB_ID.out"']))
    job.wait(timeout=120)
    assert job.status == "SUCCEEDED", job.row.reason
    log = Path(job.row.log_out)
    assert log.is_symlink()  # the job did make it: the attack is real
    secret = key.read_text().splitlines()[1]
    shown = _in_time(job.logs)
    assert secret not in shown and "symbolic link" in shown, shown
    with pytest.raises(ApiError) as refused:
        api.job_logs("ada", "md", str(task.id), str(job.id), None, 100)
    assert refused.value.status == 409 and secret not in str(refused.value)


def test_a_retry_does_not_write_through_a_symlinked_log(tmp_path):
    victim = tmp_path / "victim.txt"  # a file of the server's user, outside the data root
    victim.write_text("untouched\n")
    os.chmod(victim, 0o600)
    with Session(tmp_path / "root") as s:
        task = s.project("p").task("hostile")
        (job,) = task.submit_batch(_batch(["sh", "-c", f'ln -sf {victim} "logs/job-$HTC_JOB_ID.out"; '
                                                       f'echo GOTCHA; exit 3']))
        job.wait(timeout=120)
        assert job.status == "FAILED"
        assert job.retry()
        job.wait(timeout=120)
        row = job.row
        assert row.status == "FAILED" and row.attempts == 2
        assert "could not open its log" in row.reason and "symbolic link" in row.reason, row.reason
    assert victim.read_text() == "untouched\n"


def test_a_log_made_a_fifo_blocks_no_reader(served):
    s, api, _ = served
    task = s.project("md").task("fifo")
    (job,) = task.submit_batch(_batch(["sh", "-c", 'f="logs/job-$HTC_JOB_ID.out"; rm -f "$f"; mkfifo "$f"']))
    job.wait(timeout=120)
    assert job.status == "SUCCEEDED", job.row.reason
    assert Path(job.row.log_out).is_fifo()
    assert "a FIFO" in _in_time(job.logs)
    with pytest.raises(ApiError) as refused:
        _in_time(lambda: api.job_logs("ada", "md", str(task.id), str(job.id), None, 100))
    assert refused.value.status == 409


def test_programs_planted_on_the_jobs_path_never_run_outside_its_sandbox(tmp_path):
    pwned = tmp_path / f"pwned-{uuid.uuid4().hex[:6]}"
    with Session(tmp_path / "root") as s:
        task = s.project("p").task("planted")
        bin_dir = s.storage.task_dir("p", "planted") / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("bwrap", "prlimit", "sh", "timeout"):  # what runs around a job, by bare name before
            (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {pwned}\n")
            (bin_dir / name).chmod(0o755)
        env = [{"name": "PATH", "value": f"{bin_dir}:/usr/bin:/bin"}]
        (job,) = task.submit_batch(_batch(["/bin/sh", "-c", 'echo "inside: $PATH"'], envs=env, maxMemory=256))
        job.wait(timeout=120)
        assert job.status == "SUCCEEDED", (job.row.reason, job.logs("err"))
        assert not pwned.exists(), pwned.read_text()
        assert f"inside: {bin_dir}:" in job.logs()  # the job's PATH still holds inside its sandbox


def test_a_jobs_loader_variables_are_set_inside_the_sandbox_only():
    view = JobView(root="/d", task_dir="/d/projects/p/tasks/t", shared_dir="/d/projects/p/shared")
    launch = Launch(job_id=1, attempt=1, kind="command", cwd=Path(view.task_dir), log_out="o", log_err="e",
                    env={"PATH": "/d/projects/p/tasks/t/bin", "LD_PRELOAD": "/x.so", "PYTHONPATH": "/y", "T": "1"},
                    command=("./md",), view=view)
    profile = SiteConfig.builtin().profiles["local"]
    out = confined(launch, profile)
    assert set(out.env) == {"T"}  # what bwrap (outside the sandbox) is started with, on top of the toolkit's
    argv = list(out.command)
    assert os.path.isabs(argv[0]) and argv[0].endswith("/bwrap")
    inner = argv[:argv.index("--")]
    for name, value in launch.env.items():
        if name != "T":
            i = inner.index(name)
            assert inner[i - 1] == "--setenv" and inner[i + 1] == value


@pytest.mark.slurm
def test_on_slurm_a_planted_timeout_and_bwrap_never_run(slurm_cluster):
    site = SiteConfig.from_yaml(yaml.safe_dump({"profiles": {"cpu": {
        "backend": "slurm", "partition": "cpu", "cores_per_node": 2, "memory_per_node": "2G", "max_nodes": 2,
        "bundle": 1, "python": slurm_cluster.python}}}))
    root = REPO / "test-output" / f"planted-{uuid.uuid4().hex[:8]}"  # a shared file system: nodes see it
    pwned = root.parent / f"{root.name}-pwned"
    with Session(root, site=site) as s:
        task = s.project("p").task("planted")
        bin_dir = s.storage.task_dir("p", "planted") / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("bwrap", "timeout", "sed", "pgrep"):  # what the array script starts around a job
            (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {pwned}\n")
            (bin_dir / name).chmod(0o755)
        env = [{"name": "PATH", "value": f"{bin_dir}:/usr/bin:/bin"}]
        (job,) = task.submit_batch(_batch(["/bin/sh", "-c", 'echo "inside: $PATH"'], envs=env,
                                          execTimeoutSeconds=120), profile="cpu")
        job.wait(timeout=300)
        assert job.status == "SUCCEEDED", (job.row.reason, job.logs("err"))
        assert not pwned.exists(), pwned.read_text()
        assert f"inside: {bin_dir}:" in job.logs()


# -- the reads themselves ----------------------------------------------------------------------
def test_untrusted_reads_refuse_links_fifos_and_hard_links_and_stay_bounded(tmp_path):
    task = tmp_path / "task"
    (task / "logs").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    log = task / "logs" / "job-1.out"
    os.link(secret, log)  # a hard link to a file elsewhere: two names
    with pytest.raises(PermissionError, match="2 names"):
        open_below(log, below=2)
    log.unlink()
    os.rmdir(task / "logs")
    os.symlink(tmp_path, task / "logs")  # the directory above the log made a link
    with pytest.raises(PermissionError, match="symbolic link"):
        read_text_tail(task / "logs" / "secret", below=2)
    os.unlink(task / "logs")
    (task / "logs").mkdir()
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(1, 200_001)))  # 2.3 MB
    text = read_text_tail(log, 1000, below=2)
    assert text.startswith("[first ") and text.endswith("line 200000\n") and len(text) < 1000 + 300
    page, before = lines_from_end(log, None, 3, below=2)
    assert page == [(200000, b"line 200000"), (199999, b"line 199999"), (199998, b"line 199998")]
    page, before = lines_from_end(log, before, 2, below=2)
    assert [n for n, _ in page] == [199997, 199996] and before is not None
