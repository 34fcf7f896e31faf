"""The notebook layer in a real IPython shell: every %htc subcommand and its misuse, the live
table's diff protocol, the launcher form's live validation."""

from __future__ import annotations

import json
import time

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from htc_notebook.backends import sandbox
from htc_notebook.spec import JobSpec
from htc_notebook import Session, SiteConfig, Sweep, use
from htc_notebook.ledger import AttemptStart, NewJob
from htc_notebook.runtime.handles import JobHandle
from htc_notebook.states import STATES, Outcome
from htc_notebook.ui.jobs_widget import JobsTable, live_table
from htc_notebook.ui.magics import LiveGroup, parse_axis
from htc_notebook.ui.table import PAGE, TableModel


@pytest.fixture(scope="module")
def ip():
    from IPython import get_ipython

    shell = start_ipython() or get_ipython()  # one global shell per process, whichever module starts it
    shell.run_line_magic("load_ext", "htc_notebook")
    return shell


@pytest.fixture
def task(tmp_path):
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("nb").task("t")
        with use(t):
            yield t


def htc(ip, line, cell=None):
    return ip.run_cell_magic("htc", line, cell) if cell is not None else ip.run_line_magic("htc", line)


def test_profiles_table(ip, task):
    df = htc(ip, "profiles")
    assert list(df.index) == ["local"] and df.loc["local", "backend"] == "local"


def test_submit_sweep_runs_every_member_and_displays_as_live_table(ip, task):
    g = htc(ip, "submit --sweep T=300:320:10 --sweep seed=1,2 -- echo T={T} seed={seed}")
    assert isinstance(g, LiveGroup) and len(g) == 6
    assert g.wait(timeout=120).counts()["SUCCEEDED"] == 6
    outs = sorted(h.logs().strip() for h in g)
    assert outs[0] == "T=300 seed=1" and outs[-1] == "T=320 seed=2"
    again = htc(ip, "submit --sweep T=300:320:10 --sweep seed=1,2 -- echo T={T} seed={seed}")
    assert again.skipped == 6 and sorted(again.ids) == sorted(g.ids)  # nothing runs twice


def test_cell_magic_runs_the_cell_as_a_script_with_sweep_variables(ip, task):
    g = htc(ip, "submit --sweep x=5,6", "y=$((x * 2))\necho \"x=$x y=$y {braces kept}\"\n")
    g.wait(timeout=120)
    assert sorted(h.logs().strip() for h in g) == ["x=5 y=10 {braces kept}", "x=6 y=12 {braces kept}"]


def test_dry_run_submits_nothing(ip, task):
    text = htc(ip, "submit --dry-run --sweep T=1,2 -- echo {T}")
    assert "nothing submitted" in text and "echo 1" in text and "echo 2" in text
    assert sum(task.counts().values()) == 0


def test_dry_run_shows_what_submitting_again_would_send(ip, task):
    """A dry run is the submission itself, rendered instead of sent: members that already
    succeeded are left out, as a real submit would skip them."""
    htc(ip, "submit --sweep T=1,2 -- echo {T}").wait(timeout=60)
    text = htc(ip, "submit --dry-run --sweep T=1,2,3 -- echo {T}")
    assert "1 job in task" in text and text.rstrip().endswith(" echo 3"), text
    assert " echo 1" not in text and " echo 2" not in text
    assert task.counts()["SUCCEEDED"] == 2 and sum(task.counts().values()) == 2


def test_mpi_dry_run_shows_the_launcher_line(ip, task):
    text = htc(ip, "submit --dry-run --nodes 1 --ranks-per-node 2 -- ./md -in x")
    # the line the backend would run, as its submit renders it: each rank in the job's sandbox
    [line] = [raw.strip() for raw in text.splitlines() if raw.strip().startswith("mpirun")]
    words = line.split()  # bwrap by absolute path: never through a PATH a job set (backends/programs.py)
    assert words[:7] == ["mpirun", "-np", "2", "--map-by", "ppr:2:node", "--bind-to", "core"], words
    assert sum(task.counts().values()) == 0
    if sandbox.sandbox_problem() is not None:  # none can be made here: the ranks run unconfined, and it says so
        assert words[7:] == ["./md", "-in", "x"], words
        assert "runs jobs unconfined" in text, text
        return
    assert words[7] == sandbox.BWRAP and words[8].startswith("--") and line.endswith(" -- ./md -in x"), words
    assert f"--bind {task.storage.task_dir} {task.storage.task_dir} " in line  # the task directory, writable
    assert "runs jobs unconfined" not in text, text


def test_status_logs_cancel_retry_attach(ip, task):
    g = htc(ip, "submit -- sh -c 'echo out; echo err >&2; exit 3'")
    g.wait(timeout=60)
    job = g.ids[0]
    assert htc(ip, "status").counts()["FAILED"] == 1
    assert htc(ip, f"logs {job}").strip() == "out" and htc(ip, f"logs {job} --err").strip() == "err"
    assert "retry 1 job" in htc(ip, "retry t")
    JobHandle(task.parts, job).wait(timeout=60)
    slow = htc(ip, "submit -- sleep 60")
    assert "done" in htc(ip, f"cancel {slow.ids[0]}")
    assert slow.wait(timeout=30).counts()["CANCELLED"] == 1
    attached = htc(ip, "attach nb/t")
    assert sorted(attached.ids) == sorted([job, slow.ids[0]])


@pytest.mark.parametrize("line, says", [
    ("", "%htc profiles"),
    ("frobnicate", "invalid choice"),
    ("submit --cores -4 -- echo", "-4 is not allowed"),
    ("submit --cores four -- echo", "not a whole number"),
    ("submit", "give a COMMAND"),
    ("submit --sweep T -- echo {T}", "NAME=SPEC"),
    ("submit --sweep T=1:x:2 -- echo {T}", "not a number"),
    ("submit --sweep T=5:1:1 -- echo {T}", "stop >= start"),
    ("submit --sweep T=1,2 -- echo {U}", "one of the sweep's parameters: T"),
    ("submit --profile cpx -- echo", "unknown profile 'cpx'"),
    ("submit --nodes 2 --ranks-per-node 1 -- hostname", "max_nodes=1"),
    ("logs abc", "not a whole number"),
    ("use nothing", "PROJECT/TASK"),
    ("cluster explode local", "invalid choice"),
    ("submit -- echo 'unclosed", "cannot split"),
])
def test_misuse_gets_usage_error(ip, task, line, says):
    with pytest.raises(UsageError) as info:
        htc(ip, line)
    assert says in str(info.value)
    assert sum(task.counts().values()) == 0


def test_user_text_is_never_evaluated(ip, task, tmp_path):
    marker = tmp_path / "evaluated"
    g = htc(ip, f"submit --sweep x=__import__('os').system('touch {marker}') -- echo {{x}}")
    g.wait(timeout=60)
    assert not marker.exists()
    assert "__import__" in g[0].logs()


def test_parse_axis():
    assert parse_axis("T=300:400:50") == ("T", [300, 350, 400])
    assert parse_axis("x=0.1:0.3:0.1") == ("x", [0.1, 0.2, 0.3])
    assert parse_axis("mode=a,b") == ("mode", ["a", "b"])


def test_diff_protocol_sends_only_changed_rows_of_the_window(tmp_path):
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("big")
        ledger = s.ledger
        ids = list(ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"i": i}, spec=JobSpec(), index=i,
                                            profile="local") for i in range(10_000)]))
        table = JobsTable(s.parts, t.id, interval=3600)  # refreshed by hand below
        assert table.model.ids == ids[:PAGE] and len(table.model.rows) == PAGE  # the kernel holds one window
        sent = []
        table.send = lambda msg, buffers=None: sent.append(msg)
        assert table.refresh() is None and sent == []  # nothing changed: no message at all
        changed = [ids[10], ids[5000], ids[9999]]
        ledger.start_attempts([AttemptStart(i, host="node1", native_id=None, log_out=None, log_err=None,
                                            status="RUNNING") for i in changed])
        table.model.due = 0
        table.refresh()
        # the counts change; of the rows, only the one in the window travels, and not the window's ids
        assert len(sent) == 1 and [r[0] for r in sent[0]["rows"]] == [ids[10]] and "ids" not in sent[0]
        assert sent[0]["new"] == [] and sent[0]["hosts"] == ["node1"]
        assert sent[0]["totals"] == {"SUBMITTED": 9997, "RUNNING": 3} and sent[0]["matching"] == 10_000
        ledger.record_outcomes([Outcome(ids[5000], 1, "SUCCEEDED", started=time.time() - 2, ended=time.time())])
        table.model.due = 0
        table.refresh()
        assert sent[1]["rows"] == [] and sent[1]["totals"]["SUCCEEDED"] == 1  # out of view: counts only
        # the browser scrolls, filters by status, sorts: each a window of its own, with its ids
        table._on_front_end(table, {"t": "view", "offset": 4990, "limit": 20}, [])
        assert sent[2]["ids"] == ids[4990:5010] and len(sent[2]["new"]) == 20 and sent[2]["offset"] == 4990
        assert table.model.rows[ids[5000]][1] == STATES.index("SUCCEEDED")
        table._on_front_end(table, {"t": "view", "status": "RUNNING", "offset": 0}, [])
        assert sent[3]["ids"] == [ids[10], ids[9999]] and sent[3]["matching"] == 2  # (ids[5000] SUCCEEDED)
        table._on_front_end(table, {"t": "view", "status": "", "sort": "id", "descending": True}, [])
        assert sent[4]["ids"] == ids[::-1][:20]
        table._on_front_end(table, {"t": "view", "text": "7777", "descending": False}, [])
        want = sorted({ids[7777]} | ({7777} & set(ids)))  # its parameters {"i": 7777}, or its id
        assert sent[5]["ids"] == want and sent[5]["matching"] == len(want)
        table._on_front_end(table, {"t": "view", "sort": "nonsense"}, [])  # refused, named
        assert sent[6]["t"] == "notice" and "View.sort = 'nonsense'" in sent[6]["text"]
        for bad, field in (({"text": ["x"]}, "text"), ({"offset": -1}, "offset"), ({"descending": "yes"}, "descending"),
                           ({"status": "DONE"}, "status"), ({"limit": 10_000}, "limit")):
            table._on_front_end(table, {"t": "view", **bad}, [])
            assert sent.pop()["text"].startswith(f"View.{field} = "), bad
        assert table.model.view.text == "7777"  # a refused view leaves the one shown
        table._on_front_end(table, {"t": "ready"}, [])  # a view (re)connects: the head and its window
        assert sent[7]["t"] == "reset" and sent[7]["ids"] == want and sent[7]["hosts"] == ["node1"]
        assert sent[7]["view"]["text"] == "7777" and len(sent[7]["rows"]) == len(want)
        # the buttons act on the table's jobs, not only those in view; a stranger's id is not one of them
        other = s.project("p").task("other")
        (stranger,) = list(ledger.add_jobs(other.id, [NewJob(name="x", kind="command", params={}, spec=JobSpec(),
                                                        index=0, profile="local")]))
        assert table._ids("all") == ids[:5000] + ids[5001:]
        assert table._ids([ids[1], stranger, ids[2]]) == [ids[1], ids[2]]
        table.close()


def test_a_table_keeps_its_last_window_in_its_widget_state_for_a_saved_notebook(tmp_path):
    """Issue 29 item 5: a notebook saved with its widget state shows the table as it was before any
    kernel talks to it. `saved` holds a reset message: from the start, and the final one as soon as
    the last job ends (not only every SAVE_EVERY s)."""
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("saved")
        ids = list(s.ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"i": i}, spec=JobSpec(),
                                                   index=i, profile="local") for i in range(3)]))
        table = JobsTable(s.parts, t.id, interval=3600)  # refreshed by hand below
        assert table.saved["t"] == "reset" and table.saved["totals"] == {"SUBMITTED": 3}
        assert [r[0] for r in table.saved["rows"]] == ids
        now = time.time()
        s.ledger.record_outcomes([Outcome(i, 1, "SUCCEEDED", started=now - 1, ended=now) for i in ids[:2]])
        table.model.due = 0
        table.refresh()
        assert table.saved["totals"] == {"SUBMITTED": 3}  # still running, and saved < SAVE_EVERY s ago
        s.ledger.record_outcomes([Outcome(ids[2], 1, "SUCCEEDED", started=now - 1, ended=now)])
        table.model.due = 0
        table.refresh()
        assert table.saved["t"] == "reset" and table.saved["totals"] == {"SUCCEEDED": 3}
        assert json.loads(json.dumps(table.saved)) == table.saved  # as the notebook's metadata keeps it
        table.close()


def test_a_big_tasks_table_holds_one_window_and_its_counts(tmp_path):
    """The kernel's side of a table does not grow with the task: after 100,000 jobs, its model
    holds the counts and one window; a group's table counts only its jobs."""
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("big")
        ids = list(s.ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"i": i}, spec=JobSpec(), index=i,
                                              profile="local") for i in range(100_000)]))
        model = TableModel(s.reads, t.id)
        patch = model.poll()
        assert patch["ids"] == ids[:PAGE] and patch["totals"] == {"SUBMITTED": 100_000}
        assert len(model.rows) == len(model.static) == PAGE
        group = TableModel(s.reads, t.id, ids[10:20] + ids[50_000:50_005])
        first = group.poll()
        assert first["ids"] == ids[10:20] + ids[50_000:50_005] and first["matching"] == 15
        s.ledger.set_status(ids[:12], "RUNNABLE", "next")  # two of the group's jobs
        group.due = 0  # (a re-read waits ten times its own cost after the last one)
        assert group.poll()["totals"] == {"RUNNABLE": 2, "SUBMITTED": 13}
        s.ledger.set_status(ids[30:40], "RUNNABLE", "next")  # none of them: no message
        group.due = 0
        assert group.poll() is None and not group.stale


def test_patch_size_after_a_thousand_changed_rows(tmp_path):
    """The figures bench/table.py measures, held to the issue's bounds as a smoke check: 1,000 jobs
    start, the window's 200 of them travel, well under 50 kB."""
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("big")
        ids = list(s.ledger.add_jobs(t.id, [NewJob(name="sim", kind="command", params={"T": i / 7, "seed": i % 5},
                                              spec=JobSpec(), index=i, profile="local") for i in range(20_000)]))
        model = TableModel(s.reads, t.id)
        model.poll()
        s.ledger.start_attempts([AttemptStart(i, host=f"node{i % 4}", native_id=None, log_out=None,
                                              log_err=None, status="RUNNING") for i in ids[:1000]])
        model.due = 0
        patch = model.poll()
        assert len(patch["rows"]) == PAGE and patch["totals"] == {"RUNNING": 1000, "SUBMITTED": 19_000}
        assert len(json.dumps(patch, separators=(",", ":"))) < 50_000


def test_live_table_renders_without_a_front_end(tmp_path):
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("t")
        g = t.sweep(["echo", "{x}"], Sweep.grid(x=[1, 2, 3]))
        g.wait(timeout=60)
        table = live_table(g)
        bundle = table._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        assert data["text/plain"].startswith("3 jobs: SUCCEEDED 3")
        assert data["text/html"].count("<tr>") == 4 and "SUCCEEDED" in data["text/html"]
        table.close()


def test_launcher_validates_live_against_the_profile(ip, task):
    form = htc(ip, "launcher")
    assert form.valid and "fits" in form.status.value
    form.cores.value = 10_000
    assert not form.valid and "at most cores_per_node" in form.status.value and form.start.disabled
    form.cores.value = 1
    form.walltime.value = "25:61:00"
    assert not form.valid and "walltime" in form.status.value
    form.walltime.value = "00:10:00"
    assert form.valid and not form.start.disabled


def square(x):
    return x * x


def test_table_rows_preview_small_python_results(tmp_path):
    with Session(tmp_path, site=SiteConfig.builtin()) as s:
        t = s.project("p").task("t")
        g = t.sweep(square, Sweep.grid(x=[0, 3]))
        g.wait(timeout=120)
        model = TableModel(s.reads, t.id)
        model.poll()
        assert sorted(r["result"] for r in model.records()) == ["0", "9"]
        big = t.submit(lambda: "x" * 10_000)
        big.wait(timeout=120)
        model.poll()
        assert model.records()[-1]["result"] == ""  # large results are not previewed


def _tree(root) -> dict[str, int]:
    """Every file and directory under `root` (the ledger's own files aside: reads may checkpoint the WAL)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if not p.name.startswith("ledger.db")}


def _double(x: int) -> int:
    return 2 * x


def test_a_dry_run_writes_nothing_not_even_its_task(ip, task):
    """Issue 26: a dry run makes no project or task row, no directory, no stored call (before, the
    magic's made the task and its directories)."""
    from htc_notebook.runtime.task import DryRun

    parts, root = task.parts, task.parts.root
    before, tasks = _tree(root), parts.reads.tasks()
    text = htc(ip, "submit --dry-run --task fresh/new --sweep T=1,2 -- echo {T}")
    assert "2 jobs in task fresh/new" in text and "echo 2" in text, text
    mpi = htc(ip, "submit --dry-run --task fresh/mpi --nodes 1 --ranks-per-node 2 -- ./md")
    assert "mpirun -np 2" in mpi
    dry = DryRun(parts, "fresh", "calls")
    dry.sweep(_double, Sweep.grid(x=[1, 2, 3]))
    assert "3 jobs in task fresh/calls" in dry.text
    assert parts.reads.tasks() == tasks and parts.reads.find_task("fresh", "new") is None
    assert "fresh" not in parts.reads.project_names()
    assert _tree(root) == before
