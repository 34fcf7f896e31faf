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
