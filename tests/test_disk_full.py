"""The disk fills up while a result is written: the job fails saying so, the other reports of the
same commit are kept, the ledger stays consistent, and work goes on once there is room.

The data root is a small real tmpfs (mounted by the test, as root), not a simulated error."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from htc_notebook import Session, SiteConfig


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the test (needs root): {done.stderr.strip()}", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.root
def test_a_result_that_does_not_fit_fails_its_job_and_nothing_else(small_disk):
    with Session(small_disk / "root", site=SiteConfig.builtin()) as s:
        task = s.project("disk").task("full")
        small = [task.submit(pow, 2, i) for i in range(5)]
        big = task.submit(bytes, 6 * 2**20)  # 6 MiB: more than the whole disk
        after = [task.submit(pow, 3, i) for i in range(5)]
        row = big.wait(timeout=120)
        assert row.status == "FAILED"
        assert "could not be stored" in row.reason and "No space left on device" in row.reason
        assert [h.result(timeout=60) for h in small] == [2 ** i for i in range(5)]
        assert [h.result(timeout=60) for h in after] == [3 ** i for i in range(5)]
        results = s.storage.result_path("disk", "full", big.id).parent
        assert not [p for p in os.listdir(results) if p.startswith(".")] if results.exists() else True  # no temp left
        assert task.submit(pow, 5, 2).result(timeout=60) == 25  # room again: work goes on
    con = sqlite3.connect(small_disk / "root" / "ledger.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
