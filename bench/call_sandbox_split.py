"""Where a lone confined call's time goes (backends/call_sandbox.py), step by step, in a process the
size of a dask worker (it imports what a worker does). Timestamps (time.monotonic, shared by every
process here) are taken around `_serve` in this process and at the start and end of the call's own
function in the call's process; the call also reports its minor page faults (copy-on-write).

    .venv/bin/python bench/call_sandbox_split.py [--calls 200]

Prints medians: this process before handing the call over (its cgroup, the request), from the
request to the call's process running (the zygote receives it and forks), from there to its
function running (it joins its cgroup, unpickles its work), from there to the zygote's word that
all of it ended (the report, the call's exit, the zygote's reaping), and this process after
(decoding, the cgroup).
Measured inside a real worker, the same steps cost more (its event loop shares the GIL and the
CPUs): /tmp/prof/hop.py, with dask, is the figure that matters.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import cloudpickle
import distributed  # noqa: F401 - a worker-sized process

import htc_notebook.backends.worker  # what a worker imports
import htc_notebook.runtime  # noqa: F401
from htc_notebook.backends import call_sandbox
from htc_notebook.backends.sandbox import JobView


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    served: list[tuple[float, float]] = []
    serve, child = call_sandbox._serve, call_sandbox._call_child

    def timed_serve(*a):
        t0 = time.monotonic()
        out = serve(*a)
        served.append((t0, time.monotonic()))
        return out

    def timed_child(sock, w, work, limit):  # the call: its function reports when it started and ended
        started = time.monotonic()

        def stamped():
            return started, time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        child(sock, w, cloudpickle.dumps(stamped), limit)

    call_sandbox._serve, call_sandbox._call_child = timed_serve, timed_child
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        view = JobView(tmp, os.path.join(tmp, "projects/p/tasks/t"), os.path.join(tmp, "projects/p/shared"))
        os.makedirs(view.checkpoints)
        os.makedirs(view.shared_dir)
        for i in range(args.calls + 20):  # the first 20 warm up (the zygote is made by the first)
            served.clear()
            t_in = time.monotonic()
            c0, c1, faults = call_sandbox.run_confined(view, lambda: None)
            t_out = time.monotonic()
            (s0, s1), = served
            if i >= 20:
                rows.append((s0 - t_in, c0 - s0, c1 - c0, s1 - c1, t_out - s1, t_out - t_in, faults))
        call_sandbox.forget(view)
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    print(f"{args.calls} lone confined calls, this process {rss} MiB resident, medians:")
    for i, what in enumerate(["before the hand-over (cgroup, request)",
                              "request -> the call's process runs (zygote: receive, fork)",
                              "-> its (trivial) function runs (join its cgroup, unpickle)",
                              "-> the zygote's word: all of it ended (report, exit, reap)",
                              "after (decode, cgroup removed)", "the whole call"]):
        print(f"  {what:60s} {statistics.median(r[i] for r in rows) * 1e3:7.2f} ms")
    print(f"  {'minor page faults in the call (copy-on-write)':60s} {statistics.median(r[6] for r in rows):7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
