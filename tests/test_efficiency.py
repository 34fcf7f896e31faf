"""What jobs used, measured for real (wait4 rusage of local command jobs, the call thread's CPU time
of Python calls), shown against what they asked for: DataFrame, live table, efficiency flags."""

from __future__ import annotations

import sys
import time

from htc_notebook import Sweep
from htc_notebook.ui.table import TableModel

GROW = ("import time; x = bytearray(80 << 20); t = time.process_time(); "
        "exec('while time.process_time() - t < 0.3: pass')")


def burn(seconds: float) -> float:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
    return seconds


def test_commands_report_cpu_and_peak_memory_and_the_oversized_request_is_flagged(session):
    task = session.project("used").task("commands")
    group = task.submit_batch({"jobName": "grow", "batchSize": 4, "htcJobDefinition": {
        "commands": [sys.executable, "-c", GROW], "maxMemory": 2048, "maxVCpus": 2, "execTimeoutSeconds": 600}})
    group.wait(timeout=120)
    df = group.to_dataframe()
    assert (df["status"] == "SUCCEEDED").all()
    assert (df["max_rss_mib"] >= 80).all() and (df["max_rss_mib"] < 400).all()  # the 80 MiB it allocated, and python
    assert (df["cpu_s"] >= 0.25).all() and (df["memory_mib"] == 2048).all() and (df["cores"] == 2).all()
    assert ((df["cpu_efficiency"] > 0) & (df["cpu_efficiency"] <= 0.75)).all()  # one busy thread of 2 cores
    e = group.efficiency()
    assert e.jobs == 4 and e.memory == 2048 and 80 <= e.memory_p95 < 400
    text = str(e)
    assert "memory: asks for 2048 MiB" in text and "would do" in text
    assert "ask for fewer cores (1 would do)" in text
    assert "time: the time limit is 600 s" in text
    model = TableModel(session.reads, task.id)
    model.poll()
    used = [r["used"] for r in model.records()]
    assert all(u.endswith("%") and "/2048 MiB, CPU " in u for u in used), used


def test_python_calls_report_their_cpu_time(session):
    group = session.project("used").task("python").sweep(burn, Sweep.grid(seconds=[0.3, 0.2]))
    assert group.results(timeout=60) == [0.3, 0.2]
    cpu = list(group.to_dataframe()["cpu_s"])
    assert 0.28 <= cpu[0] < 1.0 and 0.18 <= cpu[1] < 1.0, cpu


def test_a_jobs_peak_memory_is_its_own_not_the_kernels(session):
    """Linux counts in a child's maxrss the memory it exec'd from: the kernel's. With the kernel at
    400 MiB more than a job could use, the job's peak comes from its memory cgroup (a `maxMemory`
    job), and a job without one reports none rather than the kernel's."""
    from htc_notebook.backends import memory_limit

    ballast = bytearray(400 << 20)
    for i in range(0, len(ballast), 4096):  # touched: this process's peak RSS is now above 400 MiB
        ballast[i] = 1
    task = session.project("used").task("peak")
    caged, bare = (task.submit_batch({"jobName": name, "batchSize": 1, "htcJobDefinition": {
        "commands": [sys.executable, "-c", "x = bytearray(30 << 20)"], **more}})[0]
        for name, more in (("caged", {"maxMemory": 512}), ("bare", {})))
    for job in (caged, bare):
        assert job.wait(timeout=60).status == "SUCCEEDED", job.row.reason
    del ballast
    if memory_limit.cgroup_parent() is not None:  # make test: root, cgroup v1
        assert 30 <= caged.row.max_rss_mib < 200, caged.row.max_rss_mib
    assert bare.row.max_rss_mib is None or bare.row.max_rss_mib < 200, bare.row.max_rss_mib
