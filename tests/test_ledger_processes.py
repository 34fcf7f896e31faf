"""The ledger across real processes: atomic visibility, SIGKILL mid-write, concurrent writers.

This file is also the child program: `python test_ledger_processes.py <role> <db> ...`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from htc_notebook.spec import JobSpec
from htc_notebook.ledger import AttemptStart, Ledger, NewBatch, NewJob
from htc_notebook.states import Outcome

HERE = Path(__file__).resolve()
BIG = 100_000


def spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


# --- child roles -----------------------------------------------------------------------------

def reader(db: str, task_id: int, stop_at: int) -> None:
    """Poll counts until `stop_at` jobs are visible; print every distinct total seen."""
    led = Ledger(db)
    seen, polls, deadline = set(), 0, time.monotonic() + 120
    while time.monotonic() < deadline:
        total = sum(led.counts(task_id).values())
        seen.add(total)
        polls += 1
        if polls == 1:
            print("ready", flush=True)
        if total >= stop_at:
            break
    print(json.dumps({"seen": sorted(seen), "polls": polls}), flush=True)


def crash_writer(db: str, task_id: int, start: int, size: int) -> None:
    """Forever: add a batch, then run and succeed the previous batch; report each commit."""
    led = Ledger(db)
    previous: list[int] = []
    i = start
    while True:
        jobs = [NewJob(f"b{i}-{j}", "python", {"i": i, "j": j, "pad": "x" * 200}, JobSpec(), key=f"b{i}-{j}", index=j)
                for j in range(size)]
        ids = list(led.add_jobs(task_id, jobs, NewBatch(f"b{i}", size, {"i": i})))
        print(f"added {i} {ids[0]} {ids[-1]}", flush=True)
        if previous:
            nums = led.start_attempts([AttemptStart(k, host="h") for k in previous])
            led.record_outcomes([Outcome(k, n, "SUCCEEDED", result=b"r" * 64)
                                 for k, n in zip(previous, nums, strict=True)])
            print(f"done {i - 1}", flush=True)
        previous = ids
        i += 1


def busy_writer(db: str, task_id: int, who: str, rounds: int, size: int, go: str) -> None:
    """Wait for the go file, then interleave add_jobs / start_attempts / record_outcomes."""
    led = Ledger(db)
    while not os.path.exists(go):
        time.sleep(0.001)
    for r in range(rounds):
        ids = led.add_jobs(task_id, [NewJob("w", "command", {}, JobSpec(), key=f"{who}-{r}-{j}") for j in range(size)])
        nums = led.start_attempts([AttemptStart(k, host=who) for k in ids])
        half = len(ids) // 2
        led.record_outcomes([Outcome(k, n, "SUCCEEDED", result=b"ok") for k, n in zip(ids[:half], nums, strict=False)])
        led.record_outcomes([Outcome(k, n, "FAILED", reason="x", exit_code=1)
                             for k, n in zip(ids[half:], nums[half:], strict=True)])
        led.add_event(task_id, None, "note", f"{who} round {r}")
    print("ok", flush=True)


# --- tests -----------------------------------------------------------------------------------

def test_big_add_jobs_is_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    led = Ledger(db)
    task = led.task("p", "big")
    jobs = [NewJob(f"j{i}", "python", {"x": i}, JobSpec(cores=1), key=f"k{i}", index=i) for i in range(BIG)]
    child = spawn("reader", db, task.id, BIG)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    ids = list(led.add_jobs(task.id, jobs, NewBatch("big", BIG, {})))
    elapsed = time.perf_counter() - t0
    out, err = child.communicate(timeout=120)
    report = json.loads(out.strip().splitlines()[-1])
    print(f"\nadd_jobs({BIG:,}) took {elapsed:.2f}s; reader polled {report['polls']} times, saw {report['seen']}")
    assert child.returncode == 0, err
    assert set(report["seen"]) <= {0, BIG}, report
    assert report["seen"][-1] == BIG
    assert len(ids) == BIG and ids == sorted(ids) and len(set(ids)) == BIG
    assert [e.kind for e in led.events(task_id=task.id)] == ["submitted"]
    led.close()


def test_sigkill_mid_write_leaves_no_torn_batches(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with Ledger(db) as led:
        task_id = led.task("p", "crash").id
    size, added, done, start = 300, {}, set(), 0
    rng = random.Random(1234)
    for _ in range(3):  # kill three writers at different moments, each continuing the last
        child = spawn("crash_writer", db, task_id, start, size)
        assert child.stdout is not None
        lines = 0
        target = rng.randint(4, 12)
        for line in child.stdout:
            kind, i, *rest = line.split()
            if kind == "added":
                added[int(i)] = (int(rest[0]), int(rest[1]))
            else:
                done.add(int(i))
            lines += 1
            if lines >= target:
                time.sleep(rng.random() * 0.05)  # land somewhere inside the next transaction
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
        start = max(added) + 10

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()
    with Ledger(db) as led:
        batches = {b.name: b for b in led.batches(task_id)}
        for b in batches.values():  # no batch is partially present
            jobs = led.jobs(task_id, batch_id=b.id)
            assert len(jobs) == size, b
            statuses = {j.status for j in jobs}
            assert statuses in ({"SUBMITTED"}, {"RUNNING"}, {"SUCCEEDED"}), (b.name, statuses)
            if statuses == {"SUCCEEDED"}:
                assert all(led.result(j.id) is not None for j in jobs)
        for i, (first, last) in added.items():  # everything reported committed is there
            jobs = led.jobs(task_id, batch_id=batches[f"b{i}"].id)
            assert [j.id for j in jobs] == list(range(first, last + 1))
        for i in done:
            assert {j.status for j in led.jobs(task_id, batch_id=batches[f"b{i}"].id)} == {"SUCCEEDED"}
        total = sum(led.counts(task_id).values())
        print(f"\nafter 3 SIGKILLs: {len(batches)} whole batches, {total} jobs, {len(done)} batches reported done")


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    db, go = tmp_path / "ledger.db", tmp_path / "go"
    with Ledger(db) as led:
        task_id = led.task("p", "shared").id
    rounds, size = 40, 100
    children = [spawn("busy_writer", db, task_id, who, rounds, size, go) for who in ("a", "b")]
    time.sleep(0.5)  # let both open the ledger
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        assert out.strip() == "ok" and "locked" not in err
    with Ledger(db) as led:
        counts = led.counts(task_id)
        per_writer = rounds * size
        assert counts["SUCCEEDED"] == 2 * per_writer // 2 and counts["FAILED"] == 2 * per_writer // 2
        assert sum(counts.values()) == 2 * per_writer
        assert all(len(led.attempts(j.id)) == 1 for j in led.jobs(task_id, limit=50))
        notes = [e for e in led.events(task_id=task_id) if e.kind == "note"]
        assert len(notes) == 2 * rounds
        con = sqlite3.connect(db)
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == per_writer
        con.close()


if __name__ == "__main__":
    role, db_path, *rest = sys.argv[1:]
    if role == "reader":
        reader(db_path, int(rest[0]), int(rest[1]))
    elif role == "crash_writer":
        crash_writer(db_path, int(rest[0]), int(rest[1]), int(rest[2]))
    elif role == "busy_writer":
        busy_writer(db_path, int(rest[0]), rest[1], int(rest[2]), int(rest[3]), rest[4])
    else:
        raise SystemExit(f"unknown role {role}")
