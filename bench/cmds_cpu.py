"""`true` command jobs through a Session: throughput, and the CPU they cost in all (this process and
every process it started: runner, ledger, bwrap, zygotes, the jobs), which the load of other work on
the machine changes less than the wall clock. `python bench/cmds_cpu.py N [-u]` (-u: sandbox: none)."""

import os
import resource
import sys
import tempfile
import time
import warnings

from htc_notebook import Session, SiteConfig


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def descendants_cpu(pid: int | None = None) -> float:
    """The CPU time of this process's live descendants and of the children they reaped (/proc: utime,
    stime, cutime, cstime), in seconds. A zygote dies with its session (SIGKILL), unreaped here."""
    total = 0.0
    pid = pid or os.getpid()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK") + descendants_cpu(kid)
            except OSError:
                continue
    return total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    unconfined = "-u" in sys.argv
    site = SiteConfig.from_yaml("profiles:\n  local:\n    sandbox: none\n") if unconfined else SiteConfig.builtin()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        s = Session(tmp, site=site)
        p = s.project("b")
        true = {"commands": ["true"]}
        p.task("warm").submit_batch({"jobName": "true", "batchSize": 4, "htcJobDefinition": true}).wait()
        before = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN) + descendants_cpu()
        t0 = time.perf_counter()
        g = p.task("t").submit_batch({"jobName": "true", "batchSize": n, "htcJobDefinition": true})
        g.wait()
        dt = time.perf_counter() - t0
        ok = g.counts()["SUCCEEDED"]
        alive = descendants_cpu()  # processes still running (a zygote, with the jobs it reaped)
        used = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN) + alive - before
        s.close()
        print(f"{ok}/{n} ok {n / dt:.0f}/s {dt:.2f}s cpu {used / n * 1e3:.2f} ms/job")


if __name__ == "__main__":
    main()
