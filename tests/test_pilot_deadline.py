"""A pilot's worker near its deadline (real dask workers with the deadline its job script would
set): it starts no call it cannot finish in time, hands it back for another worker, drains and
leaves, telling the client; every call runs once. The SLURM side is in test_pilot_faults.py."""

from __future__ import annotations

import os
import time

from htc_notebook.backends.dask_security import DASHBOARD_ADDRESS, LOOPBACK, PROTOCOL, cluster_security
from htc_notebook.backends.worker import DRAIN_TOPIC, PILOT_DEADLINE, PILOT_LIFETIME, JobRunner


def authenticated(workers: dict[str, dict]) -> dict:
    """SpecCluster arguments for these Nanny workers and a scheduler, all on loopback with TLS
    credentials of their own, as the toolkit's clusters are (G10)."""
    from distributed import Nanny, Scheduler

    security = cluster_security()
    where = {"host": LOOPBACK, "protocol": PROTOCOL, "security": security}
    return {"workers": {name: {"cls": Nanny, "options": {**where, **options}} for name, options in workers.items()},
            "scheduler": {"cls": Scheduler, "options": {**where, "dashboard_address": DASHBOARD_ADDRESS,
                                                         "allowed_failures": 0}},
            "security": security}


def noted_second(x: int) -> int:
    time.sleep(1.0)
    with open("calls", "a") as f:
        f.write(f"{x} {os.environ.get(PILOT_DEADLINE, 'none')} {time.time():.3f}\n")
    return x


def test_a_worker_near_its_deadline_hands_back_the_call_and_leaves(tmp_path):
    from distributed import Client, SpecCluster

    lifetime = 6
    deadline = time.time() + lifetime
    env = {PILOT_DEADLINE: f"{deadline:.3f}", PILOT_LIFETIME: str(lifetime)}
    spec = authenticated({"late": {"nthreads": 1, "env": env}, "free": {"nthreads": 1}})
    events = []
    with SpecCluster(**spec) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        client.subscribe_topic(DRAIN_TOPIC, events.append)
        # a declared timeout longer than the pilot's lifetime fits no pilot: it counts as unknown
        runner = JobRunner(noted_second, str(tmp_path), {}, timeout=3600)
        logs = (str(tmp_path / "out"), str(tmp_path / "err"))
        futures = client.map(runner, [[(i, i, (i,), {}, logs)] for i in range(14)], pure=False)
        reports = [r for rs in client.gather(futures) for r in rs]
        assert all(r["ok"] for r in reports)
        for _ in range(50):
            if {w["name"] for w in client.scheduler_info()["workers"].values()} == {"free"}:
                break
            time.sleep(0.1)
        assert {w["name"] for w in client.scheduler_info()["workers"].values()} == {"free"}  # it left
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert sorted(int(x) for x, *_ in calls) == list(range(14))  # each ran once
    on_late = [(float(t), float(d)) for _, d, t in calls if d != "none"]
    assert on_late and all(t <= d for t, d in on_late), on_late  # it took calls, none past its deadline
    assert [e[1]["name"] for e in events] == ["late"]  # the client was told, once


def test_a_worker_that_never_ran_the_function_goes_by_the_sweeps_measured_time(tmp_path):
    """A fresh worker 20 s before its deadline, for calls the client measured at 30 s elsewhere:
    it starts none of them (they all run on the other worker) and leaves."""
    from distributed import Client, SpecCluster

    env = {PILOT_DEADLINE: f"{time.time() + 20:.3f}", PILOT_LIFETIME: "60"}
    spec = authenticated({"late": {"nthreads": 1, "env": env}, "free": {"nthreads": 1}})
    with SpecCluster(**spec) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        runner = JobRunner(noted_second, str(tmp_path), {})
        runner.expected = 30.0  # what DaskJobs learned from the calls that ended so far
        logs = (str(tmp_path / "out"), str(tmp_path / "err"))
        futures = client.map(runner, [[(i, i, (i,), {}, logs)] for i in range(4)], pure=False)
        assert all(r["ok"] for rs in client.gather(futures) for r in rs)
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert sorted(int(x) for x, *_ in calls) == list(range(4))
    assert {d for _, d, _ in calls} == {"none"}  # every call ran on the worker without a deadline
