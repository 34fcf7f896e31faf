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
from conftest import missing, registry_port

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
            # (read in one look at one table: a table re-drawn from its model between two reads has
            # its count before its chips)
            ended = ("() => [...document.querySelectorAll('.htc-table')].some(t => "
                     "t.querySelector('.htc-count')?.textContent.trim() === '5 / 5 ended' && "
                     "[...t.querySelectorAll('.htc-chips .chip')].map(c => c.textContent).join('|') === 'SUCCEEDED 5')")
            page.wait_for_function(ended, timeout=180_000)
            chips = page.locator(".htc-table .htc-chips .chip").all_inner_texts()
            assert "SUCCEEDED 5" in chips and all(c.startswith("SUCCEEDED") for c in chips), chips
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


def test_the_quickstart_shows_its_widgets_before_any_cell_runs(lab):
    """Issue 29 item 5, as a Binder visitor first sees it: the shipped notebook opened fresh (its
    kernel started, no cell run) shows the live table of its `%htc submit` cell with its 5 jobs
    SUCCEEDED and the launcher form, restored from the widget state saved in the notebook, not
    `Output()` or a widget's repr."""
    from playwright.sync_api import sync_playwright

    import json

    url, token, root = lab
    fresh = root / "fresh"
    fresh.mkdir(exist_ok=True)
    shutil.copy(REPO / "notebooks" / "01-quickstart.ipynb", fresh)
    # a viewer without widgets (nbviewer, GitHub, an untrusted Lab) gets the table's static HTML, as it ended
    book = json.loads((fresh / "01-quickstart.ipynb").read_text())
    static = ["".join(o["data"]["text/html"]) for c in book["cells"] for o in c.get("outputs", [])
              if "application/vnd.jupyter.widget-view+json" in o.get("data", {}) and "text/html" in o["data"]]
    assert len(static) == 1 and static[0].startswith("<p>5 jobs: SUCCEEDED 5</p>"), static
    # Binder trusts the image's own notebooks (binder/postBuild), so Lab draws their saved widgets
    subprocess.run([str(Path(sys.executable).parent / "jupyter"), "trust", str(fresh / "01-quickstart.ipynb")],
                   env={**os.environ, "HOME": str(root), "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}, check=True,
                   capture_output=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/fresh/01-quickstart.ipynb?reset&token={token}")  # no earlier test's layout
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=90_000)
            table = page.locator(".jp-OutputArea .htc-table").first
            table.locator(".htc-count", has_text="5 / 5 ended").wait_for(timeout=90_000)
            assert table.locator(".htc-row").count() == 5
            assert table.locator(".chip").all_inner_texts() == ["SUCCEEDED 5"]
            page.locator(".jp-OutputArea .widget-inline-hbox:has(label:text-is('cores')) input").last.wait_for(
                timeout=30_000)
            prompts = page.evaluate("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                                    ".map(e => e.textContent)")
            assert not any("*" in t for t in prompts), prompts  # nothing ran
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            reprs = [t for t in outputs if t.strip().startswith(("Output(", "HBox(", "VBox(", "JobsTable(",
                                                                  "LiveGroup(", "FloatProgress(", "IntProgress("))]
            assert reprs == [], reprs
            page.locator(".jp-OutputArea .htc-table").first.scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / "quickstart-fresh-table.png"))
            _set_theme(page, "JupyterLab Dark")
            table.locator(".htc-count", has_text="5 / 5 ended").wait_for(timeout=30_000)
            page.locator(".jp-OutputArea .htc-table").first.scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / "quickstart-fresh-table-dark.png"))
            _set_theme(page, "JupyterLab Light")
        finally:
            page.screenshot(path=str(OUT / "quickstart-fresh.png"), full_page=True)
            browser.close()


def _show_sidebar(page) -> None:
    """Open the HTC sidebar whatever layout Lab restored: after the splash is gone (Lab has restored
    its layout), click the sidebar's tab only while it is not the current one (a click on the
    current tab folds the sidebar away)."""
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
    tab = page.locator("li.lm-TabBar-tab[data-id='htc-sidebar']")
    tab.wait_for(timeout=60_000)
    deadline = time.monotonic() + 30
    while not page.locator("#htc-sidebar").is_visible():
        assert time.monotonic() < deadline, "the HTC sidebar did not open"
        if "lm-mod-current" not in (tab.get_attribute("class") or ""):
            tab.click()
        page.wait_for_timeout(300)


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
    # the saved outputs first (the shipped notebooks keep their widgets' last state: a table already
    # at 5/5 would satisfy the waits below before anything ran)
    page.click("div.lm-MenuBar-itemLabel:text-is('Edit')")
    page.click(".lm-Menu-itemLabel:text-is('Clear Outputs of All Cells')")
    page.wait_for_function("() => !document.querySelector("
                           "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')", timeout=30_000)
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
            "g.wait(timeout=60)\n"
            "first = t.submit(abs, -3, name='first')\n"
            "second = t.submit(abs, first, name='second')  # takes first's result: depends on it\n"
            "second.wait(timeout=120)\n", timeout=180)
        assert reply["content"]["status"] == "ok"
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url) if "/htc/api/" in r.url else None)
            try:
                page.goto(f"{url}/lab?token={token}")
                page.wait_for_selector(".jp-LabShell", timeout=90_000)
                _show_sidebar(page)
                task = page.locator(".htc-sidebar .htc-task", has_text="from-kernel")
                task.wait_for(timeout=30_000)
                task.locator(".htc-chip[data-state='SUCCEEDED']", has_text="SUCCEEDED 3").wait_for(timeout=30_000)
                # keyboard: the tree is reached and walked with the arrows, a task opened with Enter
                page.locator(".htc-sidebar .htc-tree .htc-node[tabindex='0']").focus()
                for _ in range(3):
                    if page.evaluate("() => document.activeElement.classList.contains('htc-task')"):
                        break
                    page.keyboard.press("ArrowDown")
                assert page.evaluate("() => document.activeElement.textContent").startswith("from-kernel")
                page.keyboard.press("Enter")
                jobs = page.locator(".htc-sidebar .htc-joblist .htc-job")
                jobs.filter(has_text="hello").wait_for(timeout=30_000)
                assert task.get_attribute("aria-selected") == "true"
                # a job opens in the main area, its log there
                jobs.filter(has_text="hello").click()
                hello = page.locator(".htc-jobwidget", has=page.locator(".htc-jobname", has_text="hello"))
                page.wait_for_function("() => [...document.querySelectorAll('.htc-jobwidget .htc-log')]"
                                       ".some(e => e.textContent.includes('hello from the kernel'))", timeout=30_000)
                assert hello.locator(".htc-attempts tbody tr").count() == 1
                # parents and children, each a link to its own panel
                jobs.filter(has_text="second").click()
                second = page.locator(".htc-jobwidget", has=page.locator(".htc-jobname", has_text="second"))
                first_id = jobs.filter(has_text="first").get_attribute("data-job")
                second.locator(".htc-links .htc-joblink", has_text=f"job {first_id}").click()
                first = page.locator(f"#htc-job-{task.get_attribute('data-task')}-{first_id}")
                first.locator(".htc-links", has_text="jobs depending on it: job").wait_for(timeout=30_000)
                assert first.locator(".htc-jobname").inner_text() == "first"
                slow_row = jobs.filter(has_text="slow")
                slow_id = slow_row.get_attribute("data-job")
                slow_row.click()
                slow = page.locator(".htc-jobwidget", has=page.locator(".htc-jobname", has_text="slow"))
                slow.locator(".htc-jobhead .htc-chip").wait_for(timeout=30_000)
                # the detail is no longer re-rendered by a poll: one click on the toolbar's Cancel is enough
                slow.locator(".htc-cancel").click()
                page.locator(f".htc-sidebar .htc-job[data-job='{slow_id}'][data-status='CANCELLED']").wait_for(
                    timeout=30_000)
                slow.locator(".htc-jobhead .htc-chip[data-state='CANCELLED']").wait_for(timeout=30_000)
                task.locator(".htc-chip[data-state='CANCELLED']").wait_for(timeout=30_000)
                # what an action did, or why it did nothing, in Lab's notifications (job panels open as tabs)
                hello_id = jobs.filter(has_text="hello").get_attribute("data-job")
                page.locator("li.lm-TabBar-tab", has_text=f"HTC job {hello_id}").click()
                hello.locator(".htc-retry").click()
                page.locator(".jp-toast-message",
                             has_text="was not retried: only a FAILED, CANCELLED or LOST job runs again").wait_for(
                    timeout=30_000)
                page.locator("li.lm-TabBar-tab", has_text=f"HTC job {slow_id}").click()
                # pushed, not polled: once every view is up to date, an idle Lab asks the HTC API nothing
                page.wait_for_timeout(3_000)
                before = len(requests)
                page.wait_for_timeout(6_000)
                assert requests[before:] == [], requests[before:]
                # the new-cluster form: fits the sidebar, checked by the server as you type
                cores = page.locator(".htc-sidebar input.htc-cores")
                edges = page.evaluate("() => [document.querySelector('.htc-sidebar input.htc-cores')"
                                      ".getBoundingClientRect().right, document.querySelector('#htc-sidebar')"
                                      ".getBoundingClientRect().right]")
                assert edges[0] <= edges[1], edges
                cores.fill("999")
                page.wait_for_function("() => document.querySelector('.htc-sidebar .htc-verdict')"
                                       ".textContent.includes('Resources.cores = 999 is not allowed')", timeout=30_000)
                assert page.locator(".htc-sidebar button.htc-start").is_disabled()
                cores.fill("1")
                page.wait_for_function("() => document.querySelector('.htc-sidebar .htc-verdict')"
                                       ".textContent.startsWith('\u2713')", timeout=30_000)
                page.screenshot(path=str(OUT / "sidebar-light.png"))
                _assert_theme_colours(page)
                job_panel = f"#htc-job-{task.get_attribute('data-task')}-{slow_id}"
                for theme in ("light", "dark"):
                    if theme == "dark":
                        _set_theme(page, "JupyterLab Dark")
                        _assert_theme_colours(page)
                        page.screenshot(path=str(OUT / "sidebar-dark.png"))
                    _no_serious_violations(page, "#htc-sidebar", f"sidebar-{theme}")
                    _no_serious_violations(page, job_panel, f"job-panel-{theme}")
                _set_theme(page, "JupyterLab Light")
                page.locator(".htc-sidebar button.htc-start").click()
                page.locator(".htc-sidebar .htc-cluster", has_text="local local").wait_for(timeout=90_000)
                page.locator(".htc-sidebar .htc-cluster button.htc-stop").click()
                page.wait_for_function("() => !document.querySelector('.htc-sidebar .htc-cluster')", timeout=60_000)
                page.reload()
                page.wait_for_selector(".jp-LabShell", timeout=90_000)
                _show_sidebar(page)
                again = page.locator(".htc-sidebar .htc-task", has_text="from-kernel")
                again.locator(".htc-chip[data-state='CANCELLED']").wait_for(timeout=30_000)
                assert "SUCCEEDED 3" in again.inner_text() and "CANCELLED 1" in again.inner_text()
            finally:
                page.screenshot(path=str(OUT / "sidebar.png"), full_page=True)
                browser.close()
        out = kc.execute_interactive("print(slow[0].row.status)", timeout=60)
        assert out["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _set_theme(page, name: str) -> None:
    """Lab's own Settings > Theme menu."""
    page.click("div.lm-MenuBar-itemLabel:text-is('Settings')")
    page.click(".lm-Menu-itemLabel:text-is('Theme')")
    page.click(f".lm-Menu-itemLabel:text-is('{name}')")
    dark = "Dark" in name
    page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{str(not dark).lower()}' "
                           "&& !document.querySelector('#jupyterlab-splash')", timeout=30_000)


def _assert_theme_colours(page, chip: bool = True) -> None:
    """The sidebar's colours are the theme's: a SUCCEEDED chip is edged in the theme's success colour
    and the panel has its layout colour (not fixed values that would not follow a dark theme)."""
    got = page.evaluate("""() => {
        const probe = document.createElement('span');
        document.body.append(probe);
        const as = v => { probe.style.color = `var(${v})`; return getComputedStyle(probe).color; };
        const want = [as('--jp-success-color1'), as('--jp-layout-color1')];
        probe.remove();
        const chip = document.querySelector('.htc-sidebar .htc-chip.st-SUCCEEDED');
        const panel = document.querySelector('.htc-sidebar .htc-section');
        return [chip ? getComputedStyle(chip).borderTopColor : null,
                getComputedStyle(panel.closest('.htc-sidebar')).backgroundColor, want];
    }""")
    assert (not chip or got[0] == got[2][0]) and got[1] == got[2][1], got


# axe-core from the npm registry: a devDependency of labextension/, installed when the wheel is built
AXE = REPO / "labextension" / "node_modules" / "axe-core" / "axe.min.js"


def _no_serious_violations(page, selector: str, name: str) -> None:
    """axe-core (Deque's checker, not ours) on the element `selector`: no serious or critical
    violation of WCAG 2 A/AA; its whole report lands in test-output/browser/axe-<name>.json."""
    import json

    _require(AXE.is_file(), f"axe-core ({AXE})")
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    report = page.evaluate("""async sel => await axe.run(document.querySelector(sel),
        {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']})""",
                           selector)
    (OUT / f"axe-{name}.json").write_text(json.dumps(report["violations"], indent=1))
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in report["violations"]
           if v["impact"] in ("serious", "critical")]
    assert bad == [], bad


def test_sidebar_shows_each_projects_registry_and_images(lab, tmp_path):
    """Issue 13 item 6: the project's registry prefix and its images, as pushed (a real registry)."""
    from playwright.sync_api import sync_playwright

    from htc_notebook import Session, SiteConfig
    from htc_notebook.registry import ProjectRegistry, daemon
    from htc_notebook.registry.push import push

    url, token, root = lab
    data = root / "htc-data"
    _require(all(shutil.which(t) for t in ("docker-registry", "skopeo", "umoci", "busybox")), "the registry tools")
    state = daemon.up(data, port=registry_port(), listen="127.0.0.1")  # its token service on the next port
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
                _show_sidebar(page)
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
            _show_sidebar(page)
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
            # a dashboard plot as a Lab pane (as dask-labextension opens them): its bokeh connection
            # through the server too
            with page.expect_websocket(lambda ws: "individual-task-stream" in ws.url, timeout=60_000) as pane_ws:
                page.locator(".htc-sidebar .htc-cluster button.htc-pane-individual-task-stream").click()
            assert pane_ws.value.url.startswith(f"{url.replace('http', 'ws')}/proxy/"), pane_ws.value.url
            pane = page.locator(".htc-dask-pane iframe")
            assert pane.get_attribute("src").endswith("/individual-task-stream"), pane.get_attribute("src")
            page.screenshot(path=str(OUT / "dashboard-pane.png"))
            _set_theme(page, "JupyterLab Dark")  # the cards and the pane in the dark theme too
            _assert_theme_colours(page, chip=False)
            page.screenshot(path=str(OUT / "dashboard-pane-dark.png"))
            _set_theme(page, "JupyterLab Light")
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
ids = list(s.ledger.add_jobs(task.id, [NewJob(name="sim", kind="command", params={{"i": i}}, spec=JobSpec(), index=i,
                                         profile="local") for i in range({BIG})]))
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
            _run_all(page, f"{url}/lab/tree/big-table.ipynb?reset&token={token}")
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
            # the window at the end may hold the 5 already: wait for the filtered window itself, no other row
            page.wait_for_function("() => { const rows = [...document.querySelectorAll('.htc-table .htc-row')]; "
                                   "return rows.length === 5 && "
                                   "rows.every(r => r.classList.contains('st-RUNNABLE')); }", timeout=30_000)
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
            # the sidebar on the same task: one page of jobs, more on demand, a status filter from its counts
            _show_sidebar(page)
            big = page.locator(".htc-sidebar .htc-task", has_text="table")
            big.locator(".htc-chip[data-state='RUNNABLE']", has_text="RUNNABLE 5").wait_for(timeout=30_000)
            clicked = time.monotonic()
            big.click()
            rows = page.locator(".htc-sidebar .htc-joblist .htc-job")
            page.wait_for_function("() => document.querySelectorAll('.htc-sidebar .htc-joblist .htc-job').length "
                                   "=== 50", timeout=30_000, polling=20)
            # measured, not asserted (timings belong in bench/): the issue asks for under a second
            (OUT / "big-sidebar-first-page.txt").write_text(f"{time.monotonic() - clicked:.3f} s from the click to "
                                                           "the first 50 of 100,000 jobs shown\n")
            assert rows.first.get_attribute("data-job") == str(first)
            page.locator(".htc-sidebar button.htc-more").click()
            page.wait_for_function("() => document.querySelectorAll('.htc-sidebar .htc-joblist .htc-job').length "
                                   "=== 100", timeout=30_000)
            page.locator(".htc-sidebar select.htc-status-filter").select_option("RUNNABLE")
            page.wait_for_function("() => { const rows = [...document.querySelectorAll('.htc-sidebar .htc-job')]; "
                                   "return rows.length === 5 && rows.every(r => r.dataset.status === 'RUNNABLE'); }",
                                   timeout=30_000)
            assert page.locator(".htc-sidebar button.htc-more").count() == 0
            page.screenshot(path=str(OUT / "big-sidebar.png"))
        finally:
            page.screenshot(path=str(OUT / "big-table.png"), full_page=True)
            browser.close()
