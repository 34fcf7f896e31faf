"""Read paths on a 20,000-job task: counts, pages and first loads agree with a direct look at every
row, use the indexes (query plans), and write paths that batch many rows a statement lose nothing.
No timings are asserted here: bench/scale.py measures them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest

from htc_notebook.spec import JobSpec, RetryPolicy
from htc_notebook import cli
from htc_notebook.errors import LedgerError
from htc_notebook.ledger import AttemptStart, Ledger, NewBatch, NewJob
from htc_notebook.ledger.schema import HELD_FOR_ROOM
from htc_notebook.states import ACTIVE_NAMES, REQUEUEABLE_NAMES, Outcome
from htc_notebook.server.api import HTCApi, wire_status
from htc_notebook.server.auth import Auth
from htc_notebook.ui.table import PAGE, TableModel

N = 20_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A session whose task `scale/big` has 20,000 jobs in every kind of state, beside two small tasks."""
    from htc_notebook import Session, SiteConfig

    root = tmp_path_factory.mktemp("scale")
    with Session(root, site=SiteConfig.builtin(), reconcile=False) as s:  # a made-up ledger: nothing acts on it
        led = s.ledger
        before = led.task("scale", "before")
        list(led.add_jobs(before.id, [NewJob("b", "command", {}, JobSpec(), index=i) for i in range(300)],
                     NewBatch("b", 300, {})))
        task = led.task("scale", "big")
        spec = JobSpec(cores=1, owner=str(s.owner))
        once = JobSpec(cores=1, owner=str(s.owner), retry=RetryPolicy(requeues=0))  # LOST stays LOST
        ids = list(led.add_jobs(task.id, [NewJob("sim", "command", {"i": i}, once if 18000 <= i < 19000 else spec,
                                                 index=i) for i in range(N)], NewBatch("sim", N, {})))
        after = led.task("scale", "after")  # interleaved: later ids belong to another task
        list(led.add_jobs(after.id, [NewJob("a", "command", {}, JobSpec(), index=i) for i in range(300)],
                     NewBatch("a", 300, {})))
        # 4,000 SUBMITTED; 4,000 RUNNABLE local; 4,000 RUNNABLE queued in SLURM; 2,000 RUNNING; the rest ended
        led.start_attempts([AttemptStart(i, native_id=f"local:{s.owner}", status="RUNNABLE") for i in ids[4000:8000]])
        led.start_attempts([AttemptStart(i, native_id=f"77_{i}", status="RUNNABLE") for i in ids[8000:12000]])
        led.start_attempts([AttemptStart(i, native_id="", status="RUNNABLE") for i in ids[12000:12010]])
        led.start_attempts([AttemptStart(i, host="n1") for i in ids[12010:20000]])
        led.record_outcomes([Outcome(i, 1, "SUCCEEDED", result=b"x") for i in ids[14000:17000]])
        led.record_outcomes([Outcome(i, 1, "FAILED", reason="boom") for i in ids[17000:18000]])
        led.record_outcomes([Outcome(i, 1, "LOST", reason="its kernel died", cause="owner") for i in ids[18000:19000]])
        led.cancel(ids[19000:20000])
        yield s, task, ids


def _direct(s, task_id: int, sql: str) -> list[tuple]:
    con = sqlite3.connect(s.ledger.path)
    try:
        return con.execute(sql, (task_id,)).fetchall()
    finally:
        con.close()


def test_counts_match_a_direct_count(big):
    s, task, _ = big
    direct = dict(_direct(s, task.id, "SELECT status, COUNT(*) FROM jobs WHERE task_id = ? GROUP BY status"))
    counts = s.ledger.counts(task.id)
    assert {k: v for k, v in counts.items() if v} == direct
    assert sum(counts.values()) == N
    assert s.ledger.queued_count(task.id) == 4000  # not the local ones, not the empty native ids


def test_summary_statistics_match_every_row(big):
    s, task, _ = big
    api = HTCApi(s, Auth(s.root), owner="me")
    summary = api.summary_statistics("me", "scale", str(task.id))
    by_rows = Counter(wire_status(r)[0] for r in s.ledger.jobs(task.id))
    assert {k: v for k, v in summary["jobStatuses"].items() if v} == dict(by_rows)
    assert summary["jobStatuses"]["RUNNABLE"] == 4000 and summary["jobStatuses"]["SUBMITTED_TO_PROVIDER"] == 4010
    assert summary["toolkitStatuses"] == s.ledger.counts(task.id)


def _plans(ledger: Ledger, fn) -> list[str]:
    """The query plans of the SELECTs that `fn()` runs on this thread's connection."""
    statements: list[str] = []
    con = ledger._con()
    con.set_trace_callback(statements.append)  # the statements, with their parameters filled in
    try:
        fn()
    finally:
        con.set_trace_callback(None)
    return [" | ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + q)) for q in statements
            if q.lstrip().upper().startswith("SELECT") and "FROM jobs" in q]


def test_counts_use_the_status_index(big):
    """The SQL behind counts and summary-statistics searches (task_id, status), and the RUNNABLE jobs a
    scheduler holds are counted from their own partial index; it never scans the table."""
    s, task, _ = big
    counts, queued = _plans(s.ledger, lambda: (s.ledger.counts(task.id), s.ledger.queued_count(task.id)))
    assert "COVERING INDEX jobs_task_status" in counts and "SCAN jobs" not in counts, counts
    assert queued.startswith("SEARCH jobs USING COVERING INDEX jobs_queued (task_id=?"), queued
    [other] = _plans(s.ledger, lambda: s.ledger.queued_count(task.id, "RUNNING"))
    assert "jobs_task_status" in other and "SCAN jobs" not in other, other


def test_owners_are_counted_from_the_owner_index(big):
    """The reconcile loop's look at every task's owners (every few seconds) reads the active jobs'
    owner index, not each job's spec; the jobs of one owner are found through it too."""
    s, task, _ = big
    owners, owned = _plans(s.ledger, lambda: (s.ledger.active_owners(), s.ledger.owned_jobs("nobody")))
    assert owners == "SCAN jobs USING INDEX jobs_active_owner", owners  # the partial index: active jobs only
    assert "jobs_active_owner" in owned, owned
    assert sum(s.ledger.active_owners(task.id).values()) == len(s.ledger.job_ids(task.id, ACTIVE_NAMES))


def test_the_look_for_jobs_stopped_elsewhere_reads_only_what_changed(big):
    """The reconcile loop's look (every few seconds) for jobs cancelled by another process walks the
    (task_id, seq) index from its last change mark: it never reads every job a session holds."""
    s, task, ids = big
    seq = s.ledger.max_seq()
    [plan] = _plans(s.ledger, lambda: s.ledger.stopped_since([task.id], seq))
    assert plan.startswith("SEARCH jobs USING INDEX jobs_task_seq (task_id=? AND seq>?)"), plan
    assert s.ledger.stopped_since([task.id], seq) == (seq, [])
    small = s.ledger.task("scale", "stops")  # (the big task's states are shared by this module's tests)
    few = list(s.ledger.add_jobs(small.id, [NewJob("s", "command", {}, JobSpec(), index=i) for i in range(4)]))
    s.ledger.record_outcomes([Outcome(few[0], 0, "SUCCEEDED")])
    s.ledger.cancel(few[2:])
    later, stopped = s.ledger.stopped_since([task.id, small.id], seq)
    assert later > seq and stopped == few[2:]  # cancelled: found; succeeded or untouched: not
    assert s.ledger.stopped_since([task.id, small.id], later) == (later, [])


def test_a_tables_window_reads_its_rows_by_index(big):
    """A group's table counts and reads its jobs by id range; a task's window of one status walks the
    (task_id, status) index in id order: neither scans the task's jobs."""
    s, task, ids = big
    plans = _plans(s.ledger, lambda: s.ledger.view_page(task.id, [(ids[0], ids[9])]))
    assert len(plans) == 2 and all("USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in p for p in plans), plans
    plans = _plans(s.ledger, lambda: s.ledger.view_page(task.id, status="SUBMITTED", offset=100, limit=50))
    rows = plans[-1]
    assert "INDEX jobs_task_status (task_id=? AND status=?)" in rows and "TEMP B-TREE" not in rows, rows
    # all of a task's jobs by id: its counts and id range from the status index, its rows by primary key
    counts, rows = _plans(s.ledger, lambda: s.ledger.view_page(task.id, offset=100, limit=50))
    assert counts.count("COVERING INDEX jobs_task_status (task_id=? AND status=?)") == 3, counts
    assert "SCAN" not in counts.replace("SCAN json_each", ""), counts
    assert "INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in rows and "TEMP B-TREE" not in rows, rows
    seq, totals, matching, got = s.ledger.view_page(task.id, offset=100, limit=50)
    assert [r[0] for r in got] == ids[100:150] and matching == N


def test_paging_returns_every_job_once(big):
    s, task, ids = big
    api = HTCApi(s, Auth(s.root), owner="me")
    seen, page = [], None
    while True:
        items, page = api.list_jobs("me", "scale", str(task.id), page, 999)
        seen += [int(j["jobId"]) for j in items]
        if page is None:
            break
    assert seen == ids  # every job of the task, once, in id order, none of the other tasks'


def test_id_reads_agree_with_rows(big):
    s, task, ids = big
    led = s.ledger
    assert led.job_ids(task.id) == ids
    assert led.job_ids(task.id, ACTIVE_NAMES) == [r.id for r in led.jobs(task.id, status=ACTIVE_NAMES)]
    assert led.job_ids(task.id, "RUNNING") == [r.id for r in led.jobs(task.id, status="RUNNING")]
    assert [r.id for r in led.last_jobs(task.id, 50)] == ids[-50:]
    assert led.last_jobs(task.id, N + 10) == led.jobs(task.id)


def test_job_at_finds_the_batch_member(big):
    s, task, ids = big
    led = s.ledger
    batch = led.job(ids[0]).batch_id
    for index in (0, 1, 12345, N - 1):
        assert led.job_at(batch, index).id == ids[index]
    assert led.job_at(batch, N) is None
    # a batch whose members are not at first id + index (a re-run sweep skips what succeeded)
    t = led.task("scale", "sparse")
    sparse = list(led.add_jobs(t.id, [NewJob("s", "command", {}, JobSpec(), index=2 * i + 1) for i in range(100)],
                          NewBatch("s", 100, {})))
    sb = led.job(sparse[0]).batch_id
    assert led.job_at(sb, 41).id == sparse[20] and led.job_at(sb, 40) is None
    api = HTCApi(s, Auth(s.root), owner="me")
    assert api.get_job("me", "scale", str(task.id), f"{batch}:777")["jobId"] == str(ids[777])


def test_table_first_load_is_one_window_and_the_counts(big):
    s, task, ids = big
    model = TableModel(s.reads, task.id)
    patch = model.poll()
    assert patch["ids"] == ids[:PAGE] and [n[0] for n in patch["new"]] == ids[:PAGE]
    assert patch["totals"] == {k: v for k, v in s.ledger.counts(task.id).items() if v} and patch["matching"] == N
    model.due = 0
    assert model.poll() is None  # nothing changed since
    some = ids[5:15] + ids[-3:]
    part = TableModel(s.reads, task.id, some)
    assert part.poll()["ids"] == some
    s.ledger.set_status(ids[:4] + ids[5:7], "RUNNABLE", "next")  # later polls: changes of its jobs only
    part.due = 0
    assert [r[0] for r in part.poll()["rows"]] == ids[5:7]


def test_status_shows_counts_and_the_newest_jobs(big, capsys, monkeypatch):
    s, task, ids = big
    monkeypatch.setattr(cli.console, "width", 400)  # no wrapped cells
    assert cli.main(["--root", str(s.root), "status", "--task", "scale/big"]) == 0
    out = capsys.readouterr().out
    assert f"last 50 of {N} jobs" in out
    jobs = out.split("jobs of scale/big")[1]
    assert str(ids[-50]) in jobs and str(ids[-1]) in jobs and str(ids[-51]) not in jobs
    assert str(s.ledger.counts(task.id)["SUCCEEDED"]) in out.split("jobs of scale/big")[0]  # the counts table


def test_status_only_reads_and_leaves_jobs_of_an_exited_owner_to_the_sessions(tmp_path, capsys):
    """`htc status` is a look: it marks nothing LOST and claims nothing; the ledger file stays byte-identical."""
    from htc_notebook import Session, SiteConfig

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Session(tmp_path, site=SiteConfig.builtin(), reconcile=False) as s:
        t = s.ledger.task("p", "t")
        gone = list(s.ledger.add_jobs(t.id, [NewJob("g", "command", {}, JobSpec(owner=f"{s.owner.host}:{dead.pid}"),
                                               index=i) for i in range(3)]))
        s.ledger.start_attempts([AttemptStart(i, status="RUNNABLE") for i in gone[:2]])
        s.ledger.intend(gone[2:], HELD_FOR_ROOM, "held for room")
    db = tmp_path / "ledger.db"
    before = db.read_bytes()
    for args in (["status", "--task", "p/t"], ["status", "--task", "p/t", "--json"], ["status"]):
        assert cli.main(["--root", str(tmp_path), *args]) == 0
    assert "RUNNABLE" in capsys.readouterr().out
    assert db.read_bytes() == before
    with Ledger(db) as led:
        assert [led.job(i).status for i in gone] == ["RUNNABLE", "RUNNABLE", "HELD"]


def test_add_jobs_encodes_each_spec_and_keeps_keys_unique(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        a, b = JobSpec(cores=1, commands=("x", "1")), JobSpec(cores=2)
        ids = list(led.add_jobs(t.id, [NewJob(f"j{i}", "python", {"i": i} if i % 2 else {}, (a, b, a)[i % 3],
                                         key=f"k{i}", index=i) for i in range(500)]))
        rows = led.jobs(t.id)
        assert [r.spec for r in rows] == [(a, b, a)[i % 3] for i in range(500)]
        assert [r.params for r in rows] == [{"i": i} if i % 2 else {} for i in range(500)]
        # a key taken far beyond the first statement of many rows: nothing of the call is kept
        with pytest.raises(LedgerError, match="'k444' already exists"):
            list(led.add_jobs(t.id, [NewJob(f"n{i}", "python", {}, JobSpec(), key=f"n{i}") for i in range(400)]
                         + [NewJob("dup", "python", {}, JobSpec(), key="k444")]))
        assert led.job_ids(t.id) == ids


def test_start_attempts_over_many_statements(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        ids = list(led.add_jobs(t.id, [NewJob(f"j{i}", "command", {}, JobSpec(), index=i) for i in range(1000)]))
        led.cancel(ids[500:510])
        items = [AttemptStart(i, host="h", native_id=f"n{i}", log_out=f"/o{i}", log_err=f"/e{i}", status="RUNNABLE")
                 for i in ids] + [AttemptStart(ids[3], status="RUNNABLE")]  # one job twice: one attempt
        numbers = led.start_attempts(items)
        assert numbers == [0 if 500 <= k < 510 else 1 for k in range(1000)] + [1]
        rows = {r.id: r for r in led.jobs(t.id)}
        assert rows[ids[999]].log_err == "/e" + str(ids[999]) and rows[ids[999]].native_id == f"n{ids[999]}"
        assert rows[ids[3]].attempts == 1 and rows[ids[3]].native_id is None  # the last item for a job wins
        assert sum(len(led.attempts(i)) for i in ids) == 990
        assert led.counts(t.id)["RUNNABLE"] == 990 and led.counts(t.id)["CANCELLED"] == 10
        assert json.loads(json.dumps(led.job_ids(t.id, REQUEUEABLE_NAMES))) == ids[500:510]
        with pytest.raises(LedgerError, match="active state"):
            led.start_attempts([AttemptStart(ids[0], status="SUCCEEDED")])


def test_the_write_ahead_log_is_cut_back_after_a_large_recording(tmp_path):
    """SQLite resets its WAL after a checkpoint but keeps the file's size: a million jobs recorded
    at once left 871 MB next to the ledger. The ledger's connections cut it back to WAL_LIMIT."""
    from htc_notebook.ledger import Ledger, NewJob
    from htc_notebook.ledger.schema import WAL_LIMIT
    from htc_notebook.spec import JobSpec

    wal = tmp_path / "ledger.db-wal"
    with Ledger(tmp_path / "ledger.db") as ledger:
        task = ledger.task("p", "t")
        pad = "p" * 400  # fewer, larger rows: the same bytes sooner
        list(ledger.add_jobs(task.id, [NewJob(f"j{i}", "python", {"x": i, "pad": pad}, JobSpec(cores=1), key=f"k{i}",
                                         index=i) for i in range(100_000)]))
        grown = wal.stat().st_size
        assert grown > WAL_LIMIT  # the recording alone was larger than the limit
        con = ledger._con()
        assert con.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_LIMIT
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # what autocheckpoint does, at once
        ledger.task("p", "u")  # the next write starts the log over
        assert busy == 0 and wal.stat().st_size <= WAL_LIMIT, (grown, wal.stat().st_size)


def test_a_key_twice_in_one_submission_is_refused_across_chunks_and_nothing_is_kept(tmp_path, monkeypatch):
    """Keys are checked a chunk at a time (a million keys are never all held): a key twice within
    one chunk, or in two chunks of one submission, or one an earlier job has, each names the key."""
    from htc_notebook.ledger import submission

    monkeypatch.setattr(submission, "ENCODE_CHUNK", 100)
    with Ledger(tmp_path / "l.db") as led:
        t = led.task("p", "t")
        ids = list(led.add_jobs(t.id, [NewJob("j", "python", {}, JobSpec(), key=f"k{i}") for i in range(250)]))
        for key, at, why in (("n5", 20, "'n5' in one submission"),  # the same chunk
                             ("n5", 160, "'n5' in one submission"),  # the chunk after
                             ("k7", 260, "'k7' already exists")):  # an earlier job's
            jobs = [NewJob("n", "python", {}, JobSpec(), key=f"n{i}") for i in range(300)]
            jobs.insert(at, NewJob("d", "python", {}, JobSpec(), key=key))
            with pytest.raises(LedgerError, match=why):
                led.add_jobs(t.id, jobs)
        assert led.job_ids(t.id) == ids
