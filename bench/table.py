"""Live table cost: 100,000 tracked jobs, 1,000 changing per refresh.

Refreshes alternate between 1,000 jobs starting and 1,000 ending with a small result
(previewed in the row). Per refresh: kernel CPU time (process time of the refresh, including the JSON encoding the
kernel does before a message leaves) and bytes of message content, for
(a) htc_notebook's JobsTable (one patch message of changed rows), and
(b) the obvious alternative, one ipywidgets widget per row (an HTML widget whose value is
    the row; each change is one comm message),
side by side in one process; and (c) dask's `progress` widget (MultiProgressWidget) over the
same number of real futures on a LocalCluster, normalised per 1,000 tasks completed (its
updates run on the client's event loop: timed there). Message rate: the table's refresh thread over a few seconds of
continuous change. Payload bytes exclude the Jupyter envelope (~0.5 kB per message), which
favours (b).

    .venv/bin/python bench/table.py [--jobs 100000] [--changes 1000] [--refreshes 10] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write


def trivial(x):
    return x


def dask_progress(n: int, record, sent: list[int]) -> tuple[float, float, float, float]:
    """dask's MultiProgressWidget on n futures: (CPU ms, bytes, messages) per 1,000 completed, messages/s."""
    from distributed import Client, LocalCluster, wait
    from distributed.diagnostics.progressbar import MultiProgressWidget

    from htc_notebook.backends.dask_security import DASHBOARD_ADDRESS, LOOPBACK, cluster_security

    # on loopback with TLS credentials of its own, as the toolkit's clusters (Client(cluster) takes them)
    with LocalCluster(n_workers=2, threads_per_worker=1, host=LOOPBACK, dashboard_address=DASHBOARD_ADDRESS,
                      security=cluster_security()) as cluster, Client(cluster) as client:
        futures = client.map(trivial, range(n))
        widget = MultiProgressWidget(futures, complete=True)
        cpu = [0.0]
        draw = widget._draw_bar

        def timed(**kw):  # runs on the client's event loop thread
            c0 = time.thread_time()
            draw(**kw)
            cpu[0] += time.thread_time() - c0

        widget._draw_bar = timed
        sent.clear()
        t0 = time.monotonic()
        client.loop.add_callback(widget.listen)
        wait(futures)
        time.sleep(0.5)
        elapsed = time.monotonic() - t0
    per = n / 1000
    return cpu[0] * 1e3 / per, sum(sent) / per, len(sent) / per, len(sent) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=1_000)
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--dask", type=int, default=1, help="also measure dask's progress widget (0: skip)")
    ap.add_argument("--write")
    args = ap.parse_args()

    import ipywidgets as w

    from htc_notebook import Session, SiteConfig
    import cloudpickle

    from htc_notebook.ledger import AttemptStart, NewJob
    from htc_notebook.spec import JobSpec
    from htc_notebook.states import Outcome
    from htc_notebook.ui.jobs_widget import JobsTable

    sent: list[int] = []

    def record(self, msg, buffers=None):  # what would leave the kernel: JSON-encoded content
        sent.append(len(json.dumps(msg, separators=(",", ":"))))

    w.Widget._send = record  # both sides go through ipywidgets' Widget._send
    with tempfile.TemporaryDirectory() as root, Session(root, site=SiteConfig.builtin()) as s:
        t = s.project("bench").task("table")
        ids = s.ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"T": round(i / 7, 3), "seed": i % 9},
                                              spec=JobSpec(), index=i, profile="local") for i in range(args.jobs)])
        t0 = time.perf_counter()
        table = JobsTable(s.parts, t.id, interval=3600)
        print(f"table over {args.jobs} jobs built in {time.perf_counter() - t0:.2f} s", flush=True)
        t0 = time.perf_counter()
        per_row = {i: w.HTML(value=f"{i} sim SUBMITTED") for i in ids}
        print(f"{len(per_row)} row widgets built in {time.perf_counter() - t0:.1f} s", flush=True)

        table_cpu, table_bytes, table_msgs, row_cpu, row_bytes, row_msgs = [], [], [], [], [], []
        for r in range(args.refreshes):
            batch = ids[r * args.changes:(r + 1) * args.changes]
            if r % 2 == 0:
                s.ledger.start_attempts([AttemptStart(i, host=f"node{i % 4}", native_id=None, log_out=None,
                                                      log_err=None, status="RUNNING") for i in batch])
            else:  # every other refresh: 1,000 jobs end with a small result (previewed in the row)
                now = time.time()
                s.ledger.record_outcomes([Outcome(i, 1, "SUCCEEDED", host=f"node{i % 4}", started=now - 5,
                                                  ended=now, result=cloudpickle.dumps({"E": -1.5 * i, "T": i % 7}))
                                          for i in batch])
            if hasattr(table.model, "due"):  # a model that re-reads its window when due: due now
                table.model.due = 0
            sent.clear()
            c0 = time.process_time()
            table.refresh()
            table_cpu.append(time.process_time() - c0)
            table_bytes.append(sum(sent))
            table_msgs.append(len(sent))
            sent.clear()
            c0 = time.process_time()
            for job_id, status, host, blob in s.ledger._read(  # the same facts the table shows
                    "SELECT j.id, j.status, j.host, r.inline FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
                    "WHERE j.id IN (SELECT value FROM json_each(?))", (json.dumps(batch),)):
                preview = repr(cloudpickle.loads(blob))[:40] if blob is not None else ""
                per_row[job_id].value = f"{job_id} sim {status} {host} {preview}"
            row_cpu.append(time.process_time() - c0)
            row_bytes.append(sum(sent))
            row_msgs.append(len(sent))

        # message rate of the refresh thread under continuous change
        live = JobsTable(s.parts, t.id, interval=0.25)
        sent.clear()
        start, end = time.monotonic(), time.monotonic() + 4.0
        k = args.refreshes
        while time.monotonic() < end:
            batch = ids[(k % (args.jobs // args.changes)) * args.changes:][:args.changes]
            s.ledger.set_status(batch, "RUNNABLE" if k % 2 else "RUNNING", reason=f"round {k}")
            k += 1
            time.sleep(0.05)
        rate = len(sent) / (time.monotonic() - start)
        live.close()
        table.close()

    dask_row = dask_progress(args.jobs, record, sent) if args.dask else None

    med = statistics.median
    tc, tb, rc, rb = med(table_cpu) * 1e3, med(table_bytes), med(row_cpu) * 1e3, med(row_bytes)
    summary = (f"{args.jobs} jobs tracked, {args.changes} changing per refresh, "
               f"median of {args.refreshes} refreshes:\n\n"
               f"| | kernel CPU per refresh | bytes per refresh | messages per refresh |\n|---|---|---|---|\n"
               f"| JobsTable (patch of changed rows) | {tc:.1f} ms | {tb / 1e3:.1f} kB | {med(table_msgs):.0f} |\n"
               f"| one widget per row | {rc:.1f} ms | {rb / 1e3:.1f} kB | {med(row_msgs):.0f} |\n"
               f"| ratio (per-row / table) | **{rc / tc:.1f}x** | **{rb / tb:.1f}x** "
               f"| {med(row_msgs) / max(1, med(table_msgs)):.0f}x |\n"
               + (f"| dask `progress` widget, per 1,000 tasks completed | {dask_row[0]:.1f} ms "
                  f"| {dask_row[1] / 1e3:.1f} kB | {dask_row[2]:.0f} ({dask_row[3]:.1f}/s) |\n"
                  if dask_row else "") + "\n"
               f"Targets: <= 5 ms and <= 50 kB per 1,000 changed rows, <= 10 messages/s. The table's refresh "
               f"thread under continuous change sent **{rate:.1f} messages/s**.")
    print(summary)
    if args.write:
        _write(Path(args.write), "live-table", summary,
               f"python bench/table.py --jobs {args.jobs} --changes {args.changes} --refreshes {args.refreshes} "
               f"--write {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
