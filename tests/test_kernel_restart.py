"""Attach after a real kernel restart: jobs submitted from a kernel keep running on SLURM, a
restarted kernel rebuilds handles and the live table from the ledger, and nothing runs twice."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
from jupyter_client.manager import start_new_kernel

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture (writes site.yaml)

pytestmark = pytest.mark.slurm


def run(kc, code: str) -> str:
    """Execute in the kernel; return its stdout; fail the test with the kernel's error."""
    out, err = [], []

    def hook(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "error":
            err.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(textwrap.dedent(code), timeout=300, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(err)
    return "".join(out)


def test_attach_after_kernel_restart_runs_nothing_twice(site, tmp_path):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"restart-{uuid.uuid4().hex[:8]}"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(json.dumps({"profiles": {n: site.profile(n).model_dump(mode="json", exclude_none=True)
                                                  for n in site.names()}, "default_profile": "cpu"}))
    setup = f"""
        from htc_notebook import Session, use
        session = Session({str(root)!r}, site={str(site_file)!r})
        use(session.project("p").task("t"))
        get_ipython().run_line_magic("load_ext", "htc_notebook")
    """
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        run(kc, setup)
        out = run(kc, """
            g = get_ipython().run_line_magic("htc", "submit --profile cpu --sweep i=1:4:1 -- "
                                             "sh -c 'sleep 3; echo ran >> once-{i}.txt'")
            print(len(g), sorted(g.counts().items()))
        """)
        assert out.startswith("4 ")
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        run(kc, setup)
        out = run(kc, """
            g = get_ipython().run_line_magic("htc", "attach p/t")
            g.wait(timeout=240)
            print(dict((k, v) for k, v in g.counts().items() if v), [h.row.attempts for h in g])
            again = get_ipython().run_line_magic("htc", "submit --profile cpu --sweep i=1:4:1 -- "
                                                 "sh -c 'sleep 3; echo ran >> once-{i}.txt'")
            print("skipped", again.skipped)
            t = session.project("p").task("t")
            print(sorted(t.storage.read_text(f"once-{i}.txt") for i in range(1, 5)))
        """)
        lines = out.strip().splitlines()
        assert lines[0] == "{'SUCCEEDED': 4} [1, 1, 1, 1]", out
        assert lines[1] == "skipped 4"
        assert lines[2] == str(["ran\n"] * 4)  # each job's command ran exactly once
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
