"""Two kernels submit the same sweep to one task at the same moment: both get the same jobs, each
member runs once, and neither sees an error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

KERNEL = textwrap.dedent("""
    import json, os, sys, time
    from htc_notebook import Session, SiteConfig, Sweep

    def square(x):
        with open(os.path.join(os.environ["HTC_TASK_DIR"], f"ran-{x}"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        return x * x

    root, go = sys.argv[1], float(sys.argv[2])
    with Session(root, site=SiteConfig.builtin()) as s:
        task = s.project("p").task("t")
        while time.time() < go:   # both kernels submit at the same instant
            pass
        group = task.sweep(square, Sweep.grid(x=list(range(300))))
        print(json.dumps({"ids": group.ids, "results": group.results(timeout=180)}), flush=True)
""")


def test_two_kernels_submitting_one_sweep_share_its_jobs(tmp_path):
    import json

    root = tmp_path / "root"
    go = time.time() + 8  # after both have imported and opened the ledger
    kernels = [subprocess.Popen([sys.executable, "-c", KERNEL, str(root), str(go)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [k.communicate(timeout=300) for k in kernels]
    assert all(k.returncode == 0 for k in kernels), [err[-2000:] for _, err in outs]
    a, b = (json.loads(out) for out, _ in outs)
    assert a["ids"] == b["ids"] and len(set(a["ids"])) == 300
    assert a["results"] == b["results"] == [x * x for x in range(300)]
    from htc_notebook.storage import Storage

    task_dir = Storage(root).task_dir("p", "t")
    runs = {p.name: p.read_text().split() for p in task_dir.glob("ran-*")}
    assert len(runs) == 300 and all(len(v) == 1 for v in runs.values())  # each member ran once
