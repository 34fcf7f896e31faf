"""Few files at scale (issue 28): ended jobs' logs packed into a few files per task, each still read
per job through every API (handle, CommandResult, log pages, REST), loose while a job runs.

The attacker tests play a job that replaced what the packer touches after it ended: its log made a
symlink to a secret, the task's `.htc` (where packs live) made a symlink elsewhere, an index entry
pointing past its pack, an index grown without bound."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from htc_notebook import Session, SiteConfig
from htc_notebook.errors import UntrustedFile
from htc_notebook.ledger import Ledger
from htc_notebook.ledger.schema import DDL, V13_UPGRADE, V14_UPGRADE
from htc_notebook.runtime.log_packer import GRACE
from htc_notebook.storage.log_packs import PACK_JOBS, PACK_MAX_BYTES, log_lines, pack_logs, read_log_text


def _task(tmp_path: Path) -> Path:
    task = tmp_path / "task"
    (task / "logs").mkdir(parents=True)
    return task


def _log(task: Path, job: int, stream: str, text: str | bytes) -> Path:
    p = task / "logs" / f"job-{job}.{stream}"
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_packed_logs_read_as_they_were_and_leave_a_few_files(tmp_path):
    task = _task(tmp_path)
    texts = {j: "".join(f"job {j} line {i}\n" for i in range(j % 7)) for j in range(3 * PACK_JOBS)}
    loose = [_log(task, j, "out", t) for j, t in texts.items()] + [_log(task, j, "err", "") for j in texts]

    def pages(j):  # the last 3 lines, then the 2 before them by the first page's cursor
        first = log_lines(task / "logs" / f"job-{j}.out", None, 3)
        return first, log_lines(task / "logs" / f"job-{j}.out", first[1], 2) if first[1] is not None else None

    before = {j: pages(j) for j in (5, 6, 1000)}
    assert before[6][0][0][0] == (6, b"job 6 line 5") and before[6][1][0][0] == (3, b"job 6 line 2")
    assert pack_logs(task, loose) == len(loose)
    assert os.listdir(task / "logs") == []
    assert sorted(os.listdir(task / ".htc" / "logs")) == [f"pack-{k}.{x}" for k in range(3) for x in ("idx", "log")]
    for j, text in texts.items():
        assert read_log_text(task / "logs" / f"job-{j}.out") == text
        assert read_log_text(task / "logs" / f"job-{j}.err") == ""
    assert {j: pages(j) for j in before} == before  # pages and their cursors are the same, packed or not


def test_a_retry_writes_loose_again_and_its_last_packing_wins(tmp_path):
    task = _task(tmp_path)
    pack_logs(task, [_log(task, 9, "out", "first attempt\n")])
    _log(task, 9, "out", "second attempt, running\n")  # a retry's live log is read, not the packed one
    assert read_log_text(task / "logs" / "job-9.out") == "second attempt, running\n"
    pack_logs(task, [task / "logs" / "job-9.out"])
    assert read_log_text(task / "logs" / "job-9.out") == "second attempt, running\n"


def test_a_log_over_the_limit_stays_loose(tmp_path):
    task = _task(tmp_path)
    big = _log(task, 3, "out", b"x" * (PACK_MAX_BYTES + 1))
    assert pack_logs(task, [big]) == 0 and big.exists()
    assert len(read_log_text(big)) == PACK_MAX_BYTES + 1


def test_a_job_that_replaced_its_log_or_the_pack_directory_gets_nothing(tmp_path):
    task = _task(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("the server's signing key\n")
    os.symlink(secret, task / "logs" / "job-1.out")
    assert pack_logs(task, [task / "logs" / "job-1.out"]) == 0  # not packed, not followed
    assert (task / "logs" / "job-1.out").is_symlink() and not (task / ".htc" / "logs" / "pack-0.log").exists()
    with pytest.raises(UntrustedFile):
        read_log_text(task / "logs" / "job-1.out")
    # .htc made a link to a directory elsewhere: the packer writes nothing there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(task / ".htc")
    os.symlink(elsewhere, task / ".htc")
    log2 = _log(task, 2, "out", "mine\n")
    with pytest.raises(UntrustedFile):
        pack_logs(task, [log2])
    assert os.listdir(elsewhere) == [] and log2.read_text() == "mine\n"


def test_an_index_a_job_forged_is_checked_against_its_pack(tmp_path):
    task = _task(tmp_path)
    pack_logs(task, [_log(task, 4, "out", "four\n")])
    index = task / ".htc" / "logs" / "pack-0.idx"
    with open(index, "a") as f:
        f.write("4 out 0 999999\n")  # past the pack's end
    with pytest.raises(UntrustedFile, match="past the end"):
        read_log_text(task / "logs" / "job-4.out")
    index.write_bytes(b"4 out 0 5\n" + b"#" * (9 << 20))
    with pytest.raises(UntrustedFile, match="index of"):
        read_log_text(task / "logs" / "job-4.out")
    index.unlink()
    os.symlink(tmp_path / "nowhere", index)
    with pytest.raises(UntrustedFile):
        read_log_text(task / "logs" / "job-4.out")


def test_the_ledger_queues_ended_jobs_with_logs_and_an_old_ledger_its_ended_jobs(tmp_path):
    path = tmp_path / "v12.db"
    con = sqlite3.connect(path)
    for statement in DDL:
        if statement not in V13_UPGRADE + V14_UPGRADE:
            con.execute(statement)
    con.execute("INSERT INTO projects VALUES ('p', 0)")
    con.execute("INSERT INTO tasks (id, project, name, created) VALUES (1, 'p', 't', 0)")
    for job, status in ((1, "SUCCEEDED"), (2, "RUNNING")):
        con.execute("INSERT INTO jobs (id, task_id, idx, name, kind, profile, priority, params, spec, status, created, "
                    "updated, seq, log_out, log_err) VALUES (?, 1, 0, 'old', 'command', 'local', 0, '{}', '{}', ?, "
                    "0, 5, 1, '/d/logs/job-1.out', '/d/logs/job-1.err')", (job, status))
    con.execute("PRAGMA user_version = 12")
    con.commit()
    con.close()
    with Ledger(path) as ledger:
        assert [row[0] for row in ledger.logs_due(10)] == [1]  # backfilled: its logs are still loose
        ledger.logs_done([1])
        assert ledger.logs_due(10) == []
        sqlite3.connect(path).execute("UPDATE jobs SET status = 'FAILED', updated = 7 WHERE id = 2").connection.commit()
        assert ledger.logs_due(7) == [] and [row[:2] for row in ledger.logs_due(8)] == [(2, "FAILED")]


def test_a_sessions_ended_jobs_are_packed_and_every_api_still_reads_them(tmp_path):
    n = 40
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        task = s.project("p").task("many")
        group = task.submit_batch({"jobName": "echo", "batchSize": n, "htcJobDefinition": {
            "commands": ["sh", "-c", 'echo "out $HTC_JOB_INDEX"; echo "err $HTC_JOB_INDEX" >&2; '
                         '[ "$HTC_JOB_INDEX" != 3 ]']}})
        group.wait(timeout=300)
        assert group.counts()["SUCCEEDED"] == n - 1
        before = {j.id: (j.logs(), j.logs("err"), j.log_page("out", None, 5)) for j in group}
        results = [group[i].result() for i in (0, 1)]  # held across the packing
        logs_dir = Path(s.storage.task_path("p", "many")) / "logs"
        assert len(os.listdir(logs_dir)) == 2 * n
        assert s.parts.reconciler.packer.pack_due(time.time()) == 0  # not before GRACE s have passed
        assert s.parts.reconciler.packer.pack_due(time.time() + GRACE + 1) == n
        assert os.listdir(logs_dir) == []
        packs = Path(s.storage.task_path("p", "many")) / ".htc" / "logs"
        assert sorted(os.listdir(packs)) == ["pack-0.idx", "pack-0.log"]
        for j in group:
            assert (j.logs(), j.logs("err"), j.log_page("out", None, 5)) == before[j.id]
            assert j.logs() == f"out {j.row.index}\n"
        assert [r.stdout for r in results] == ["out 0\n", "out 1\n"]
        assert s.ledger.logs_due(time.time() + 3600) == []


def test_a_success_is_queued_by_the_statement_that_records_it_and_only_with_a_log(tmp_path):
    """The trigger queues every end but a success; a success queues itself unless its call wrote no
    log (the hot path of big sweeps: most calls print nothing)."""
    from htc_notebook.ledger import FirstAttempt, NewJob
    from htc_notebook.spec import JobSpec
    from htc_notebook.states import Outcome

    with Ledger(tmp_path / "l.db") as ledger:
        task = ledger.task("p", "t")
        ids = ledger.add_jobs(task.id, [NewJob("f", "python", {}, JobSpec(payload="d"), index=i) for i in range(5)],
                              start=FirstAttempt("RUNNING", host="h", native_id="local:x", logs="/l/job-"))
        ledger.record_outcomes([Outcome(ids[0], 1, "SUCCEEDED", ended=1.0, logged=False),
                                Outcome(ids[1], 1, "SUCCEEDED", ended=1.0, logged=True),
                                Outcome(ids[2], 1, "SUCCEEDED", ended=1.0),  # not known: queued
                                Outcome(ids[3], 1, "FAILED", reason="exit 1", ended=1.0, logged=False)])
        due = {row[0]: row[1] for row in ledger.logs_due(time.time() + 3600)}
        assert due == {ids[1]: "SUCCEEDED", ids[2]: "SUCCEEDED", ids[3]: "FAILED"}, due
        ledger.record_outcomes([Outcome(ids[0], 1, "SUCCEEDED", ended=2.0, logged=True)])  # already SUCCEEDED
        assert ids[0] not in {row[0] for row in ledger.logs_due(time.time() + 3600)}


def say_if_odd(i: int) -> int:
    if i % 2:
        print("odd", i)
    return i


def test_only_calls_that_wrote_a_log_wait_to_be_packed(tmp_path):
    """Most calls print nothing: they have no log, and nothing for the packer to look at."""
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        from htc_notebook import Sweep

        group = s.project("p").task("calls").sweep(say_if_odd, Sweep.zip(i=list(range(20))))
        assert group.results(timeout=120) == list(range(20))
        due = {row[0] for row in s.ledger.logs_due(time.time() + 3600)}
        assert due == {j.id for j in group if j.row.index % 2}, due
        assert [group[i].logs() for i in (2, 3)] == ["", "odd 3\n"]


def test_a_task_whose_pack_directory_a_job_replaced_does_not_hold_up_the_others(tmp_path, caplog):
    with Session(tmp_path / "root", site=SiteConfig.builtin()) as s:
        groups = {}
        for name in ("hostile", "fine"):
            groups[name] = s.project("p").task(name).submit_batch({"jobName": "echo", "batchSize": 3,
                                                                    "htcJobDefinition": {"commands": ["echo", name]}})
        for g in groups.values():
            g.wait(timeout=120)
        hostile = Path(s.storage.task_path("p", "hostile"))
        shutil.rmtree(hostile / ".htc", ignore_errors=True)
        os.symlink(tmp_path, hostile / ".htc")  # as an unconfined job of that task could
        assert s.parts.reconciler.packer.pack_due(time.time() + GRACE + 1) == 6
        assert s.ledger.logs_due(time.time() + 3600) == []  # not retried for ever: left loose
        assert "left loose" in caplog.text
        assert os.listdir(Path(s.storage.task_path("p", "fine")) / "logs") == []
        assert len(os.listdir(hostile / "logs")) == 6 and not (tmp_path / "logs").exists()
        assert [j.logs() for j in groups["hostile"]] == ["hostile\n"] * 3
        assert [j.logs() for j in groups["fine"]] == ["fine\n"] * 3
