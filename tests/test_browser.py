"""A real JupyterLab in a real Chromium (Debian's, driven by Playwright; no browser download):
open the quickstart notebook, run all cells, see the live table reach SUCCEEDED for every job
and the launcher form reject an over-limit request. A screenshot lands in test-output/browser/."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import missing

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "test-output" / "browser"


def _require(ok: bool, what: str) -> None:
    if not ok:
        missing(f"{what} missing: `make test` installs it")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the notebooks; yields (base url, token)."""
    _require(shutil.which("chromium") is not None, "Debian's chromium")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "notebooks" / "01-quickstart.ipynb", root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = uuid.uuid4().hex
    env = {**os.environ, "HOME": str(root), "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
           "HTC_ROOT": str(root / "htc-data")}
    log = open(root / "lab.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--allow-root",
                             f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_quickstart_runs_in_jupyterlab_with_live_table_and_launcher(lab):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "playwright (python package)")
    url, token, _ = lab
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run_all(page, f"{url}/lab/tree/01-quickstart.ipynb?token={token}")
            # the %htc submit cell: a live table of 5 jobs, all SUCCEEDED
            page.wait_for_function(
                "() => [...document.querySelectorAll('.htc-table .htc-count')]"
                ".some(e => e.textContent.trim() === '5 / 5 ended')", timeout=180_000)
            chips = page.locator(".htc-table .htc-chips .chip").all_inner_texts()
            assert chips == ["SUCCEEDED 5"], chips
            rows = page.locator(".htc-table .htc-row").count()
            assert rows == 5
            # the chart of states over time, drawn from the same patches: green (SUCCEEDED) on top at
            # the end, and the rate jobs ended at
            # (the chart is redrawn on its own frame after the count: waited for, not read at once)
            table = page.locator(".htc-table", has=page.locator(".htc-count", has_text="5 / 5 ended")).first
            succeeded = table.locator(".htc-chart svg polygon[data-state='SUCCEEDED']")
            succeeded.first.wait_for(state="attached", timeout=30_000)
            assert succeeded.count() == 1
            table.locator(".htc-rate", has_text=" jobs/s ended ").wait_for(timeout=30_000)
            # every widget renders as a widget, not as its repr (issue 14 item 5): rich's progress bar of
            # jobs.wait(progress=True) (an ipywidgets Output), the live tables (anywidget), the launcher
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            reprs = [t for t in outputs if t.strip().startswith(("Output(", "HBox(", "VBox(", "JobsTable(",
                                                                  "LiveGroup(", "FloatProgress(", "IntProgress("))]
            assert reprs == [], reprs
            bars = page.locator(".jp-OutputArea .widget-output").all_inner_texts()
            assert any("9/9" in t for t in bars), bars  # the sweep's 9 jobs, in the progress widget
            assert page.locator(".jp-OutputArea .htc-table").count() >= 1  # the %htc submit cell's live table
            # the launcher form: an over-limit request is refused with the reason
            cores = page.locator(".widget-inline-hbox:has(label:text-is('cores')) input").last
            cores.fill("999")
            cores.press("Enter")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.widget-html-content')]"
                ".some(e => e.textContent.includes('Resources.cores = 999 is not allowed'))", timeout=30_000)
            assert page.locator("button:text-is('Start')").last.is_disabled()
            page.locator(".htc-table").first.scroll_into_view_if_needed()
        finally:
            page.screenshot(path=str(OUT / "quickstart.png"), full_page=True)
            browser.close()


def _browser(p):
    return p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])


def _run_all(page, notebook_url: str) -> None:
    """Open a notebook in Lab, wait for its kernel, then Run > Run All Cells, again if the first
    cell's prompt did not take it (`[ ]:`: "idle" can show before the kernel is wired to the panel,
    and on a loaded machine 2 s were not always enough)."""
    from playwright.sync_api import TimeoutError as NotYet

    page.goto(notebook_url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.wait_for_timeout(2_000)
    prompts = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent)"
    taken = f"() => ({prompts})().some(t => /\\[[*0-9]+\\]/.test(t))"
    for _ in range(5):
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(taken, timeout=10_000)
            return
        except NotYet:
            continue
    raise AssertionError(f"Run All Cells was not taken in {notebook_url}: prompts {page.evaluate(prompts)}")


def test_sidebar_shows_kernel_work_logs_cancel_and_survives_reload(lab):
    from jupyter_client.manager import start_new_kernel
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    OUT.mkdir(parents=True, exist_ok=True)
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(root))
    try:  # work submitted from a kernel, into the data root the lab's server serves
        reply = kc.execute_interactive(
            "from htc_notebook import Session\n"
            f"t = Session({str(root / 'htc-data')!r}).project('sidebar').task('from-kernel')\n"
            "g = t.submit_batch({'jobName': 'hello', 'batchSize': 1, 'htcJobDefinition': "
            "{'commands': ['sh', '-c', 'echo hello from the kernel']}})\n"
            "slow = t.submit_batch({'jobName': 'slow', 'batchSize': 1, 'htcJobDefinition': "
            "{'commands': ['sleep', '300']}})\n"
            "g.wait(timeout=60)\n", timeout=120)
        assert reply["content"]["status"] == "ok"
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{url}/lab?token={token}")
                page.wait_for_selector(".jp-LabShell", timeout=90_000)
                page.click("li.lm-TabBar-tab[data-id='htc-sidebar']")
                task = page.locator(".htc-sidebar .htc-task", has_text="from-kernel")
                task.wait_for(timeout=30_000)
                assert "SUCCEEDED 1" in task.inner_text()
                task.click()
                page.locator(".htc-sidebar .htc-job", has_text="hello").click()
                page.wait_for_function("() => (document.querySelector('.htc-sidebar .htc-log') || {})"
                                       ".textContent?.includes('hello from the kernel')", timeout=30_000)
                page.locator(".htc-sidebar .htc-job", has_text="slow").click()
                page.wait_for_selector(".htc-sidebar .htc-detail h3", timeout=30_000)
                page.wait_for_function("() => (document.querySelector('.htc-sidebar .htc-detail h3') || {})"
                                       ".textContent?.includes(':')", timeout=30_000)
                page.locator(".htc-sidebar button.htc-cancel").click()
                page.wait_for_function("() => [...document.querySelectorAll('.htc-sidebar .htc-job')]"
                                       ".some(e => e.textContent.includes('slow FAILED - CANCELLED'))", timeout=30_000)
                # the new-cluster form: checked by the server as you type; start and stop a cluster
                cores = page.locator(".htc-sidebar input.htc-cores")
                cores.fill("999")
                page.wait_for_function("() => document.querySelector('.htc-sidebar .htc-verdict')"
                                       ".textContent.includes('Resources.cores = 999 is not allowed')", timeout=30_000)
                assert page.locator(".htc-sidebar button.htc-start").is_disabled()
                cores.fill("1")
                page.wait_for_function("() => document.querySelector('.htc-sidebar .htc-verdict')"
                                       ".textContent.startsWith('\u2713')", timeout=30_000)
                page.locator(".htc-sidebar button.htc-start").click()
                page.locator(".htc-sidebar .htc-cluster", has_text="local local").wait_for(timeout=90_000)
                page.locator(".htc-sidebar .htc-cluster button.htc-stop").click()
                page.wait_for_function("() => !document.querySelector('.htc-sidebar .htc-cluster')", timeout=60_000)
                page.reload()
                page.wait_for_selector(".jp-LabShell", timeout=90_000)
                if not page.locator(".htc-sidebar .htc-task").count():
                    page.click("li.lm-TabBar-tab[data-id='htc-sidebar']")
                again = page.locator(".htc-sidebar .htc-task", has_text="from-kernel")
                again.wait_for(timeout=30_000)
                assert "FAILED 1" in again.inner_text() and "SUCCEEDED 1" in again.inner_text()
            finally:
                page.screenshot(path=str(OUT / "sidebar.png"), full_page=True)
                browser.close()
        out = kc.execute_interactive("print(slow[0].row.status)", timeout=60)
        assert out["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_sidebar_shows_each_projects_registry_and_images(lab, tmp_path):
    """Issue 13 item 6: the project's registry prefix and its images, as pushed (a real registry)."""
    from playwright.sync_api import sync_playwright

    from htc_notebook import Session, SiteConfig
    from htc_notebook.registry import ProjectRegistry, daemon
    from htc_notebook.registry.push import push
    from test_server_e2e import _port

    url, token, root = lab
    data = root / "htc-data"
    _require(all(shutil.which(t) for t in ("docker-registry", "skopeo", "umoci", "busybox")), "the registry tools")
    state = daemon.up(data, port=_port(), listen="127.0.0.1")
    try:
        with Session(data, site=SiteConfig.builtin()) as s:
            s.project("with-images")
        rootfs = tmp_path / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(shutil.which("busybox"), rootfs / "bin" / "busybox")
        push(ProjectRegistry(data, "with-images"), str(rootfs), "tools:v1")
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{url}/lab?token={token}")
                page.wait_for_selector(".jp-LabShell", timeout=90_000)
                if not page.locator(".htc-sidebar .htc-project").count():
                    page.click("li.lm-TabBar-tab[data-id='htc-sidebar']")
                line = page.locator(".htc-sidebar .htc-registry", has_text=f"{state.address}/with-images/")
                line.wait_for(timeout=30_000)
                assert line.locator(".htc-images").inner_text() == "tools:v1"
            finally:
                page.screenshot(path=str(OUT / "sidebar-registry.png"), full_page=True)
                browser.close()
    finally:
        daemon.down(data)


def _kernel_environ(kernel_id: str) -> dict[str, str]:
    """The environment of the kernel process the server started for `kernel_id` (read from /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            if f"kernel-{kernel_id}.json".encode() in (proc / "cmdline").read_bytes():
                pairs = (proc / "environ").read_bytes().split(b"\0")
                return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
        except OSError:
            continue
    raise AssertionError(f"no process of kernel {kernel_id}")


def test_a_clusters_dask_dashboard_opens_through_the_jupyter_server(lab):
    """Issue 14 item 4: no port forwarding. The sidebar's cluster links to its dask dashboard
    through the Jupyter server (jupyter-server-proxy), and the dashboard loads there; kernels the
    server starts get the same links (dask's own included)."""
    import json

    from playwright.sync_api import sync_playwright

    url, token, root = lab
    OUT.mkdir(parents=True, exist_ok=True)
    made = urllib.request.urlopen(urllib.request.Request(
        f"{url}/api/kernels?token={token}", data=json.dumps({"name": "python3"}).encode(), method="POST",
        headers={"Content-Type": "application/json"}), timeout=60)
    kernel = json.loads(made.read())["id"]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                env = _kernel_environ(kernel)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert env.get("HTC_JUPYTER_BASE_URL") == "/", sorted(k for k in env if k.startswith(("HTC", "JPY")))
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{kernel}?token={token}", method="DELETE"),
                               timeout=60)
    with sync_playwright() as p:
        browser = _browser(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # one login for both pages
        page, board = context.new_page(), None
        try:
            page.goto(f"{url}/lab?token={token}")
            page.wait_for_selector(".jp-LabShell", timeout=90_000)
            page.click("li.lm-TabBar-tab[data-id='htc-sidebar']")
            page.locator(".htc-sidebar input.htc-cores").fill("1")
            page.wait_for_function("() => document.querySelector('.htc-sidebar .htc-verdict')"
                                   ".textContent.startsWith('\u2713')", timeout=30_000)
            page.locator(".htc-sidebar button.htc-start").click()
            link = page.locator(".htc-sidebar .htc-cluster a.htc-dashboard")
            link.wait_for(timeout=90_000)
            href = link.get_attribute("href")
            assert href.startswith("/proxy/") and href.endswith("/status"), href  # through this server
            board = context.new_page()
            with board.expect_websocket(timeout=60_000) as opened:
                board.goto(f"{url}{href}")
            ws = opened.value  # bokeh's live connection to the scheduler, through the server too
            assert ws.url.startswith(f"{url.replace('http', 'ws')}/proxy/"), ws.url
            ws.wait_for_event("framereceived", timeout=60_000)
            board.wait_for_function("() => document.title.includes('Dask')", timeout=60_000)
            page.locator(".htc-sidebar .htc-cluster button.htc-stop").click()
            page.wait_for_function("() => !document.querySelector('.htc-sidebar .htc-cluster')", timeout=60_000)
        finally:
            if board is not None:
                board.screenshot(path=str(OUT / "dashboard.png"))
            page.screenshot(path=str(OUT / "sidebar-dashboard.png"))
            browser.close()


BIG = 100_000
BIG_TABLE = f"""
from htc_notebook import Session
from htc_notebook.ledger import NewJob
from htc_notebook.spec import JobSpec
from htc_notebook.ui.jobs_widget import live_table
s = Session()
task = s.project("big").task("table")
ids = s.ledger.add_jobs(task.id, [NewJob(name="sim", kind="command", params={{"i": i}}, spec=JobSpec(), index=i,
                                         profile="local") for i in range({BIG})])
s.ledger.set_status(ids[-5:], "RUNNABLE", "picked")
print("last", ids[-1])
live_table(task)
"""


def test_a_100000_job_table_scrolls_filters_and_sorts_through_windows(lab):
    """A table over 100,000 jobs in Chromium: the kernel sends one window; scrolling to the end, a
    state chip, the text filter and a column sort each bring the rows asked for."""
    import nbformat
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BIG_TABLE)], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root / "big-table.ipynb")
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run_all(page, f"{url}/lab/tree/big-table.ipynb?token={token}")
            table = page.locator(".htc-table").first
            table.locator(".htc-count", has_text=f"0 / {BIG} ended").wait_for(timeout=120_000)
            last = int(page.locator(".jp-OutputArea-output", has_text="last ").first.inner_text().split()[-1])
            first = last - BIG + 1
            assert table.locator(".htc-row").first.get_attribute("data-id") == str(first)
            # to the end: the rows there arrive as a window of their own
            table.locator(".htc-scroll").evaluate("e => { e.scrollTop = e.scrollHeight; }")
            table.locator(f".htc-row[data-id='{last}']").wait_for(timeout=30_000)
            assert table.locator(".htc-row.htc-loading").count() == 0
            # a state chip: only its 5 jobs, from the top
            table.locator(".chip[data-state='RUNNABLE']").click()
            page.wait_for_function("() => document.querySelectorAll('.htc-table .htc-row.st-RUNNABLE').length === 5",
                                   timeout=30_000)
            assert table.locator(".htc-row").count() == 5
            table.locator(".chip[data-state='RUNNABLE']").click()  # off again
            # the text filter: one job's parameters
            table.locator(".htc-filter").fill('"i":77777}')  # (stored compact)
            page.wait_for_function("() => document.querySelectorAll('.htc-table .htc-row').length === 1",
                                   timeout=30_000)
            assert table.locator(".htc-row").get_attribute("data-id") == str(first + 77777)
            table.locator(".htc-filter").fill("")
            # sorted by id (as shown), a click turns it descending: the last job first
            table.locator(".htc-grid-head span[data-col='id']").click()
            table.locator(f".htc-row[data-id='{last}']").wait_for(timeout=30_000)
            assert table.locator(".htc-row").first.get_attribute("data-id") == str(last)
        finally:
            page.screenshot(path=str(OUT / "big-table.png"), full_page=True)
            browser.close()
