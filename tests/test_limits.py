"""maxMemory is a hard limit on the local backend too (backends/memory_limit.py): a job of its own
memory cgroup where this process may make one, else prlimit; a job over it ends FAILED saying so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from htc_notebook import Session, SiteConfig
from htc_notebook.backends import local_commands, memory_limit

from conftest import missing

HOG = [sys.executable, "-c", "import sys; x = bytearray(int(sys.argv[1]) << 20); print(len(x) >> 20)"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with Session(tmp_path_factory.mktemp("limits"), site=SiteConfig.builtin()) as s:
        yield s


def _run(task, mib: int, limit: int):
    (job,) = task.submit_batch({"jobName": f"hog-{mib}", "batchSize": 1,
                                "htcJobDefinition": {"commands": HOG + [str(mib)], "maxMemory": limit}})
    return job.wait(timeout=120), job


def test_a_job_over_its_memory_limit_is_killed_and_says_so_and_one_under_it_runs(session):
    if memory_limit.cgroup_parent() is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    task = session.project("limits").task("memory")
    row, job = _run(task, 400, 128)
    assert row.status == "FAILED"
    assert row.reason == "out of memory (limit 128 MiB): the OOM killer stopped it"
    assert job.attempts[-1].cause == "memory"
    row, job = _run(task, 40, 128)
    assert row.status == "SUCCEEDED", row.reason
    assert job.logs("out").strip() == "40"
    # each job's cgroup is gone once it ended
    assert not list(memory_limit.cgroup_parent().glob("job-*"))


def test_without_a_memory_cgroup_prlimit_holds_the_job_to_its_limit(session, monkeypatch):
    monkeypatch.setattr(local_commands, "cgroup_parent", lambda: None)
    task = session.project("limits").task("prlimit")
    row, job = _run(task, 1024, 256)
    assert row.status == "FAILED"
    assert row.reason.startswith("exited with code 1 (its address space was limited to maxMemory=256 MiB by prlimit")
    assert "MemoryError" in job.logs("err")
    row, _ = _run(task, 20, 256)
    assert row.status == "SUCCEEDED", row.reason


def test_the_cgroups_of_a_dead_process_are_cleared_when_the_next_one_starts(tmp_path):
    parent = memory_limit.cgroup_parent()
    if parent is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    dead = parent.parent / "htc-999999999"  # no such pid
    (dead / "job-1-1").mkdir(parents=True)
    memory_limit.cgroup_parent.cache_clear()
    try:
        assert memory_limit.cgroup_parent() == parent
        assert not dead.exists()
    finally:
        memory_limit.cgroup_parent.cache_clear()
