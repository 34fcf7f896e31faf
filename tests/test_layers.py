"""The spec layer is pure: it imports nothing from dask, Jupyter or pandas (design.md, Layers)."""

import ast
import subprocess
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1] / "htc_notebook" / "spec"
FORBIDDEN = {"dask", "distributed", "dask_jobqueue", "IPython", "ipywidgets", "tornado", "jupyter_server",
             "pandas"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_spec_sources_import_nothing_forbidden():
    files = sorted(SPEC.rglob("*.py"))
    assert len(files) >= 10
    offenders = {str(f.relative_to(SPEC)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_walker_would_notice(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import dask.array\nfrom pandas import DataFrame\nimportlib.import_module('tornado.web')\n")
    assert imported_roots(probe) & FORBIDDEN == {"dask", "pandas", "tornado"}


def test_importing_spec_loads_nothing_forbidden():
    code = ("import htc_notebook.spec, sys; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by full dotted name (relative imports left out)."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            mods |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module)
    return mods


def test_ui_and_server_call_the_runtime_not_the_backends():
    """design.md: ui/ and server/ call runtime only; how jobs run is the backends' business."""
    pkg = SPEC.parent
    files = sorted((pkg / "ui").rglob("*.py")) + sorted((pkg / "server").rglob("*.py"))
    assert len(files) >= 8
    offenders = {str(f.relative_to(pkg)): sorted(m for m in imported_modules(f)
                                                 if m.startswith(("htc_notebook.backends", "htc_notebook.devcluster")))
                 for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def _module_level_imports(path: Path, package: str) -> set[str]:
    """The package's modules a file imports when it is loaded (not inside functions, not under TYPE_CHECKING)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(package):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package)}
    return out


def test_the_runtime_has_no_import_circle():
    """issue 12: session, task, handles and the reconcile loop import each other one way only."""
    runtime = SPEC.parent / "runtime"
    graph = {f"htc_notebook.runtime.{p.stem}": _module_level_imports(p, "htc_notebook.runtime")
             for p in runtime.glob("*.py") if p.stem != "__init__"}
    assert "htc_notebook.runtime.task" in graph["htc_notebook.runtime.session"]  # what a circle used to hide

    def cycle_from(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = cycle_from(nxt, path + [nxt])
            if found:
                return found
        return None

    assert [c for n in graph if (c := cycle_from(n, [n]))] == []
