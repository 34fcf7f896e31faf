"""Dependencies on the SLURM test cluster (issue 27): command batches that wait for others, each
generation reading what the last one wrote on the shared file system.

Command jobs whose unfinished parents are all SLURM command jobs of their profile with no retries
are sent at once behind them (`sbatch --dependency=afterok`): they have a native id before their
parents end, and SLURM holds them (pending reason `Dependency`). A parent that may be retried keeps
its children in the ledger (WAITING, no native id) until it SUCCEEDED. A parent that fails for good
fails its children, naming it: a waiting one never reaches SLURM, one sent behind it is scancelled.
Python calls on pilots go behind their parents' dask tasks instead (backends/dask_chain.py)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml
from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session, SiteConfig
from htc_notebook.runtime.dependencies import ARRAY_TASK
from htc_notebook.server.api import wire_status

pytestmark = pytest.mark.slurm


def _batch(name: str, size: int, script: str) -> dict:
    return {"jobName": name, "batchSize": size, "htcJobDefinition": {"commands": ["sh", "-c", script],
                                                                      "maxVCpus": 1, "maxMemory": 64}}


def _in_squeue(native: str) -> str | None:
    """squeue's state and pending reason of one array task, or None if it is not queued."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", native.split("_")[0], "-o", "%i %T %r"], capture_output=True,
                         text=True, check=False).stdout
    return next((line.split(" ", 1)[1] for line in out.splitlines() if line.split(" ", 1)[0] == native), None)


def test_a_slurm_dag_of_command_batches_runs_generation_after_generation(site):  # noqa: F811 - the fixture imported above
    """A parent with a retry to spend keeps the DAG in the ledger: each generation is released (and
    only then sent to SLURM) once the last one SUCCEEDED; a failed parent fails its waiting child,
    which never reaches SLURM."""
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("generations")
        first = task.submit_batch(_batch("first", 2, 'echo "$HTC_JOB_INDEX" > first-$HTC_JOB_INDEX'), profile="cpu",
                                  retries=1)
        second = task.submit_batch(_batch("second", 2, "cat first-0 first-1 > second-$HTC_JOB_INDEX"), profile="cpu",
                                   after=list(first), retries=1)
        last = task.submit_batch(_batch("last", 1, "cat second-0 second-1 > last"), profile="cpu", after=list(second))
        for h in (*second, *last):  # held in the ledger: parents that may be retried break afterok
            assert h.row.status == "WAITING" and h.row.native_id is None, h.row
        broken = task.submit_batch(_batch("broken", 1, "exit 3"), profile="cpu", retries=1)
        never = task.submit_batch(_batch("never", 1, "touch never"), profile="cpu", after=list(broken))
        assert never[0].row.status == "WAITING"
        last.wait(timeout=300)
        never.wait(timeout=300)
        assert last.counts()["SUCCEEDED"] == 1, [h.row.reason for h in last]
        assert (task.storage.task_dir / "last").read_text().split() == ["0", "1", "0", "1"]
        for earlier, later in ((first, second), (second, last)):
            assert max(h.row.ended for h in earlier) <= min(h.row.started for h in later)
        (job,) = never
        assert job.status == "FAILED" and job.attempts[-1].cause == "dependency", job.row.reason
        assert f"job {broken[0].id}" in job.row.reason
        assert job.row.native_id is None and not (task.storage.task_dir / "never").exists()  # never sent to SLURM


def test_a_slurm_dag_of_command_batches_is_queued_at_once_through_afterok(site):  # noqa: F811
    """Three generations on SLURM, parents with no retries: every generation is in SLURM before the
    first ended, behind its parents' array tasks; they run in order, each job once."""
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("afterok")
        first = task.submit_batch(_batch("first", 2, 'sleep 4; echo "$HTC_JOB_INDEX" > first-$HTC_JOB_INDEX'),
                                  profile="cpu")
        second = task.submit_batch(_batch("second", 2, "cat first-0 first-1 > second-$HTC_JOB_INDEX"), profile="cpu",
                                   after=list(first))
        last = task.submit_batch(_batch("last", 1, "cat second-0 second-1 > last"), profile="cpu", after=list(second))
        rows = {h.id: h.row for h in (*first, *second, *last)}
        assert all(rows[h.id].ended is None for h in first), [rows[h.id] for h in first]  # the parents still run
        for children, parents in ((second, first), (last, second)):
            wanted = [rows[p.id].native_id for p in parents]
            for h in children:
                row = rows[h.id]
                assert row.status in ("SUBMITTED", "RUNNABLE") and ARRAY_TASK.match(row.native_id or ""), row
                assert row.reason.startswith(f"waiting for jobs {parents[0].id}, {parents[1].id} (SLURM afterok)"), row
                if row.status == "RUNNABLE":  # the REST view says so too
                    assert wire_status(row) == ("RUNNABLE", row.reason)
                shown = subprocess.run(["scontrol", "show", "job", row.native_id], capture_output=True, text=True,
                                       check=True).stdout
                dependency = next(w for w in shown.split() if w.startswith("Dependency="))
                assert "afterok:" in dependency and all(n in dependency for n in wanted), dependency
        held = rows[last[0].id].native_id
        deadline = time.monotonic() + 10  # pending reason None until the scheduler has looked at it
        while (_in_squeue(held) or "").endswith("None") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _in_squeue(held) == "PENDING Dependency"  # SLURM holds it behind its parents
        words = f"waiting for jobs {second[0].id}, {second[1].id} (SLURM afterok)"
        deadline = time.monotonic() + 10  # the poller reports squeue's Dependency in these words, not SLURM's
        while last[0].row.reason != words and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last[0].row.reason == words, last[0].row
        last.wait(timeout=120)
        assert last.counts()["SUCCEEDED"] == 1, [h.row.reason for h in (*first, *second, *last)]
        assert (task.storage.task_dir / "last").read_text().split() == ["0", "1", "0", "1"]
        for earlier, later in ((first, second), (second, last)):
            assert max(h.row.ended for h in earlier) <= min(h.row.started for h in later)
        for h in (*first, *second, *last):
            assert h.row.status == "SUCCEEDED" and [a.number for a in h.attempts] == [1], h.attempts  # each once
            assert h.row.native_id == rows[h.id].native_id  # the job SLURM held is the one that ran


def test_a_parent_that_fails_for_good_fails_and_scancels_its_afterok_child(site):  # noqa: F811
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("afterok-broken")
        (broken,) = task.submit_batch(_batch("broken", 1, "sleep 2; exit 3"), profile="cpu")
        (child,) = task.submit_batch(_batch("child", 1, "touch child"), profile="cpu", after=[broken])
        (grandchild,) = task.submit_batch(_batch("grandchild", 1, "touch grandchild"), profile="cpu", after=[child])
        native = child.row.native_id
        assert ARRAY_TASK.match(native or "") and ARRAY_TASK.match(grandchild.row.native_id or "")  # sent at once
        child.wait(timeout=120)
        grandchild.wait(timeout=60)
        assert broken.status == "FAILED" and broken.attempts[-1].cause == "exit"
        for h in (child, grandchild):
            row = h.row
            assert row.status == "FAILED" and h.attempts[-1].cause == "dependency", row.reason
            assert [a.number for a in h.attempts] == [1]  # its one attempt, the one SLURM held, ended so
        assert child.row.reason.startswith(f"job {broken.id}, which it depends on, ended FAILED")
        assert grandchild.row.reason.startswith(f"job {child.id}, which it depends on, ended FAILED")
        deadline = time.monotonic() + 15
        while (_in_squeue(native) or _in_squeue(grandchild.row.native_id)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _in_squeue(native) is None and _in_squeue(grandchild.row.native_id) is None  # scancelled
        assert not (task.storage.task_dir / "child").exists() and not (task.storage.task_dir / "grandchild").exists()


def test_cancelling_a_parent_fails_and_scancels_the_job_sent_behind_it(site):  # noqa: F811
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("afterok-cancelled")
        (parent,) = task.submit_batch(_batch("parent", 1, "sleep 30"), profile="cpu")
        (child,) = task.submit_batch(_batch("child", 1, "touch child"), profile="cpu", after=[parent])
        native = child.row.native_id
        assert ARRAY_TASK.match(native or "")
        parent.cancel()
        row = child.wait(timeout=30)
        assert row.status == "FAILED" and child.attempts[-1].cause == "dependency", row.reason
        assert row.reason.startswith(f"job {parent.id}, which it depends on, ended CANCELLED")
        deadline = time.monotonic() + 15
        while _in_squeue(native) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _in_squeue(native) is None and not (task.storage.task_dir / "child").exists()


def test_jobs_the_site_has_no_room_for_wait_in_the_ledger_instead_of_the_queue(site):  # noqa: F811
    """G8: a profile that allows 3 queued jobs, 2 of them parents: a child fits and goes behind
    them at once; a batch of 2 more does not fit and waits in the ledger, released once they SUCCEEDED."""
    data = {"profiles": {n: site.profile(n).model_dump(exclude_none=True, exclude={"name"}) for n in site.names()}}
    data["profiles"]["cpu"]["max_queued"] = 3
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=SiteConfig.from_yaml(yaml.safe_dump(data))) as s:
        task = s.project("deps").task("afterok-room")
        parents = task.submit_batch(_batch("parents", 2, "sleep 3"), profile="cpu")
        (one,) = task.submit_batch(_batch("one", 1, "true"), profile="cpu", after=list(parents))
        two = task.submit_batch(_batch("two", 2, "true"), profile="cpu", after=list(parents))
        assert ARRAY_TASK.match(one.row.native_id or ""), one.row  # the third queued job: room for it
        assert [(h.row.status, h.row.native_id) for h in two] == [("WAITING", None)] * 2  # no room for two more
        two.wait(timeout=120)
        one.wait(timeout=60)
        assert [h.status for h in (one, *two)] == ["SUCCEEDED"] * 3
        assert max(h.row.ended for h in parents) <= min(h.row.started for h in (one, *two))


def host_plus(value, extra):
    """Runs on a pilot: the host it ran on with what it was given (a chain's link)."""
    import socket

    return [*value, (socket.gethostname(), extra)] if isinstance(value, list) else [(socket.gethostname(), value)]


def test_python_calls_on_pilots_chain_as_dask_futures_behind_their_parents(site):  # noqa: F811
    """Python calls on the cpu partition's pilots, each taking the last one's result: every call after
    the first goes to the pilots' dask cluster at once, behind its parent's task (not held in the
    ledger), and they run in order, each once, with their parents' values."""
    root = REPO / "test-output" / f"deps-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        task = s.project("deps").task("pilot-chain")
        chain = [task.submit(host_plus, 0, None, profile="cpu")]
        for i in range(1, 4):
            chain.append(task.submit(host_plus, chain[-1], i, profile="cpu"))
        for child in chain[1:]:
            messages = [e.message for e in task.parts.ledger.events(job_id=child.id)]
            assert "job released: sent to its session's dask cluster behind the calls it depends on" in messages
        links = chain[-1].result(timeout=300)
        assert [extra for _, extra in links] == [0, 1, 2, 3]
        assert all(host.startswith("node") for host, _ in links), links  # on the pilots, not here
        assert all([a.number for a in h.attempts] == [1] for h in chain)
        rows = sorted((h.row for h in chain), key=lambda r: r.id)
        assert all(a.ended <= b.started for a, b in zip(rows, rows[1:], strict=False))
