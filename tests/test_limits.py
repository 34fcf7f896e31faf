"""maxMemory is a hard limit on the local backend too (backends/memory_limit.py): a job of its own
memory cgroup where this process may make one, else the memory watchdog; a job over it ends FAILED
saying so."""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import pytest

from htc_notebook import RetryPolicy, Session, SiteConfig
from htc_notebook.errors import HTCWarning
from htc_notebook.backends import memory_limit

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


@pytest.mark.root
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


MEMSW = ["sh", "-c",
         'cat "/sys/fs/cgroup/memory$(grep :memory: /proc/self/cgroup | cut -d: -f3)/memory.memsw.limit_in_bytes"']


@pytest.mark.root
def test_maxswap_is_the_swap_a_job_may_use_beyond_its_memory(session):
    """The job reads its own cgroup's memory+swap limit: maxMemory plus maxSwap, or maxMemory alone."""
    parent = memory_limit.cgroup_parent()
    if parent is None or not (parent / "memory.memsw.limit_in_bytes").exists():
        missing("no memory cgroup with swap accounting here (make test runs as root with cgroup v1)")
    task = session.project("limits").task("swap")
    seen = {}
    for swap in (64, None):
        (job,) = task.submit_batch({"jobName": "memsw", "batchSize": 1, "htcJobDefinition": {
            "commands": MEMSW, "maxMemory": 128, **({"maxSwap": swap} if swap is not None else {})}})
        assert job.wait(timeout=60).status == "SUCCEEDED", job.row.reason
        seen[swap] = int(job.logs("out"))
    assert seen == {64: (128 + 64) << 20, None: 128 << 20}, seen


def hog(mib: int) -> int:
    x = bytearray(mib << 20)
    for i in range(0, len(x), 4096):  # touched, so it is really used
        x[i] = 1
    return len(x) >> 20


@pytest.mark.root
def test_a_python_call_over_its_memory_request_is_killed_says_so_and_its_retry_gets_more(session):
    """A confined call (backends/call_sandbox.py) runs in a memory cgroup of its own sized by its
    `memory` request: over it, FAILED with the same reason as a command; cause memory, so its retry
    asks for twice as much and fits."""
    if memory_limit.cgroup_parent() is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    task = session.project("limits").task("python")
    over = task.submit(hog, 400, resources={"memory": "128M"})
    grows = task.submit(hog, 200, resources={"memory": "128M"}, retries=RetryPolicy(retries=1, backoff=0))
    under = task.submit(hog, 40, resources={"memory": "128M"})
    row = over.wait(timeout=120)
    assert (row.status, row.reason) == ("FAILED", "out of memory (limit 128 MiB): the OOM killer stopped it")
    assert [a.cause for a in over.attempts] == ["memory"]
    assert grows.result(timeout=120) == 200 and [a.cause for a in grows.attempts] == ["memory", None]
    assert under.result(timeout=120) == 40
    workers = memory_limit.cgroup_parent().parent  # the workers' cgroups sit beside this process's
    assert not list(workers.glob("htc-*/call-*")), "every call's cgroup is removed when it ends"


def test_without_a_memory_cgroup_the_watchdog_holds_the_job_to_its_limit(session, monkeypatch):
    """HTC_MEMORY_CGROUPS=0: no cgroup, as for a user without delegation; the watchdog kills the
    job's process tree over its limit (tests/test_memory_limits.py runs every case both ways)."""
    monkeypatch.setenv(memory_limit.CGROUPS_ENV, "0")
    task = session.project("limits").task("watched")
    row, job = _run(task, 1024, 256)
    assert row.status == "FAILED" and job.attempts[-1].cause == "memory", row.reason
    assert row.reason.startswith("out of memory (limit 256 MiB): its processes held ")
    assert row.reason.endswith("the memory watchdog killed them") and row.memory_held == "watched"
    row, _ = _run(task, 20, 256)
    assert row.status == "SUCCEEDED", row.reason


@pytest.mark.root
def test_the_cgroups_of_a_dead_process_are_cleared_when_the_next_one_starts(tmp_path):
    parent = memory_limit.cgroup_parent()
    if parent is None:
        missing("no memory cgroup can be made here (make test runs as root with cgroup v1)")
    dead = parent.parent / "htc-999999999"  # no such pid
    (dead / "job-1-1").mkdir(parents=True)
    (dead / "call-7-0").mkdir()  # a confined Python call's (backends/call_sandbox.py)
    memory_limit._cgroup_parent.cache_clear()
    try:  # the first jobs of a process ask from several threads at once: one clears, none fails
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: memory_limit.cgroup_parent(), range(8))) == {parent}
        assert not dead.exists()
    finally:
        memory_limit._cgroup_parent.cache_clear()


@pytest.mark.sandbox
def test_a_job_that_fills_its_scratch_gets_enospc_and_a_reason_that_says_so(session):
    """maxDiskGiB: each (sandboxed) job gets its own scratch tmpfs of that size at $HTC_SCRATCH."""
    task = session.project("limits").task("disk")
    fill = ["sh", "-c", 'ls -A "$HTC_SCRATCH" | wc -l; [ "$TMPDIR" = "$HTC_SCRATCH" ] && echo tmpdir; '
            'exec dd if=/dev/zero of="$HTC_SCRATCH/fill" bs=1M count="$1"', "fill"]
    jobs = {mib: task.submit_batch({"jobName": f"fill-{mib}", "batchSize": 1, "htcJobDefinition": {
        "commands": fill + [str(mib)], "maxDiskGiB": 1}})[0] for mib in (1500, 100)}
    full, fits = (jobs[m].wait(timeout=120) for m in (1500, 100))
    assert full.status == "FAILED", full.reason
    assert full.reason == ("exited with code 1; disk full (ENOSPC: 'No space left on device' in its log): "
                           "its scratch of maxDiskGiB=1 GiB ($HTC_SCRATCH) is full")
    assert fits.status == "SUCCEEDED", fits.reason
    assert jobs[100].logs("out").split() == ["0", "tmpdir"]  # its own scratch: empty, not the other job's


LOOK = ["sh", "-c", 'test -n "$HTC_SCRATCH" && [ "$TMPDIR" = "$HTC_SCRATCH" ] || exit 3; stat -c %a "$HTC_SCRATCH"; '
        'ls -A "$HTC_SCRATCH" | wc -l; echo mine > "$HTC_SCRATCH/file"; echo "$HTC_SCRATCH"']


def test_unconfined_a_job_still_gets_a_scratch_of_its_own_without_its_limit(tmp_path):
    """`sandbox: none`, as where no sandbox can be made: no tmpfs, but $HTC_SCRATCH (and $TMPDIR) is
    still a private empty directory of the job's own, gone when it ends; its size is not held (the
    session's warning says so). Before, $HTC_SCRATCH was unset: a job written for it wrote to /."""
    site = SiteConfig.builtin().model_dump(exclude_defaults=True)
    site["profiles"]["local"]["sandbox"] = "none"
    with pytest.warns(HTCWarning, match="the scratch limit"), \
            Session(tmp_path / "root", site=SiteConfig.model_validate(site)) as s:
        group = s.project("limits").task("scratch").submit_batch(
            {"jobName": "look", "batchSize": 2, "htcJobDefinition": {"commands": LOOK, "maxDiskGiB": 1}})
        group.wait(timeout=120)
        assert [h.status for h in group] == ["SUCCEEDED"] * 2, [(h.row.reason, h.logs("err")) for h in group]
        seen = [h.logs().split() for h in group]
    assert [mode_and_count for *mode_and_count, _ in seen] == [["700", "0"]] * 2, seen
    places = [where for *_, where in seen]
    assert len(set(places)) == 2, places  # each its own
    assert not [p for p in places if Path(p).exists()], places  # removed when the job ended
