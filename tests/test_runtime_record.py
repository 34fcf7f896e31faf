"""Task submissions record their jobs already in their first attempt, in the one transaction that adds
them (`Dispatcher.first_attempt`, `list(Ledger.add_jobs(..., start=))`): no second write of every row by
`start_attempts`, except where a project's vCPU limit must admit them; a job whose attempt is recorded
but that cannot be handed over ends FAILED saying why, as before."""

from __future__ import annotations

import pytest

from htc_notebook import HTCError, Session, SiteConfig, Sweep


def batch(size: int) -> dict:
    return {"jobName": "b", "batchSize": size, "htcJobDefinition": {"commands": ["echo", "hi"]}}


def add_one(x: int) -> int:
    return x + 1


class Takes:
    """A backend that takes every launch and runs nothing."""

    def __init__(self):
        self.launches = []

    def submit(self, launches):
        self.launches += launches

    def running(self):
        return {launch.job_id for launch in self.launches}

    def dask_runners(self):
        return {}

    def close(self):
        pass


@pytest.fixture
def session(tmp_path, monkeypatch):
    backend = Takes()
    with Session(tmp_path, site=SiteConfig.builtin(), reconcile=False) as s:
        monkeypatch.setattr(s.parts.backends, "get", lambda profile: backend)
        yield s, backend


def test_a_batch_and_a_sweep_are_recorded_started_without_start_attempts(session, monkeypatch):
    s, backend = session

    def no(*args, **kwargs):
        raise AssertionError("start_attempts: the jobs were started at insert")

    monkeypatch.setattr(s.ledger, "start_attempts", no)
    task = s.project("p").task("t")
    task.submit_batch(batch(40))
    task.sweep(add_one, Sweep.zip(x=list(range(30))))
    rows = task.jobs().rows()
    assert len(rows) == 70 and {(r.status, r.attempts, r.native_id) for r in rows} == {
        ("RUNNABLE", 1, f"local:{s.owner}")}
    logs = s.storage.log_paths("p", "t", 0)[0].parent
    assert all(r.log_out == str(logs / f"job-{r.id}.out") and r.log_err == str(logs / f"job-{r.id}.err")
               for r in rows)
    assert all(len(s.ledger.attempts(r.id)) == 1 for r in rows)
    assert sorted((launch.job_id, launch.attempt) for launch in backend.launches) == [(r.id, 1) for r in rows]
    assert {r.sandbox for r in rows} == {s.profile("local").sandbox}


def test_a_limited_project_still_admits_its_jobs(session):
    s, backend = session
    project = s.project("lim")
    project.set_vcpu_limit(4)
    task = project.task("t")
    task.submit_batch(batch(10))
    counts = {k: v for k, v in task.counts().items() if v}
    assert counts == {"RUNNABLE": 4, "HELD": 6} and len(backend.launches) == 4


def test_a_limit_set_meanwhile_is_seen_in_the_transaction(session, monkeypatch):
    """first_attempt looked before the limit was set: the ledger refuses to start them at insert, and
    they are admitted as a limited project's are."""
    s, backend = session
    project = s.project("late")
    task = project.task("t")
    real = s.parts.dispatcher.first_attempt

    def then_limit(row, jobs):
        start = real(row, jobs)
        project.set_vcpu_limit(2)
        return start

    monkeypatch.setattr(s.parts.dispatcher, "first_attempt", then_limit)
    task.submit_batch(batch(5))
    assert {k: v for k, v in task.counts().items() if v} == {"RUNNABLE": 2, "HELD": 3}
    assert len(task.jobs().rows()) == 5  # recorded once


def test_jobs_started_at_insert_that_cannot_be_prepared_end_failed(session, monkeypatch):
    from htc_notebook.runtime import dispatch as dispatch_module

    s, backend = session

    def gone(*args, **kwargs):
        raise HTCError("image cache unreadable")

    monkeypatch.setattr(dispatch_module.images, "ready", gone)
    task = s.project("p").task("prep")
    with pytest.raises(HTCError, match="unreadable"):
        task.submit_batch(batch(3))
    rows = task.jobs().rows()
    assert len(rows) == 3 and not backend.launches
    assert all(r.status == "FAILED" and r.attempts == 1 and "could not be prepared" in r.reason for r in rows)
    assert all(s.ledger.attempts(r.id)[0].cause == "submit" for r in rows)
