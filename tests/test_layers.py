"""design.md's layer table, enforced: which of the package's layers each layer may import (at
module level or inside functions), the spec layer pure, the backends ignorant of Jupyter, ui/,
server/ and cli.py reaching the ledger only through the runtime, no import circle in the runtime."""

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


PKG = SPEC.parent
BOTTOM = {"errors", "states"}  # the exception tree; job states and Outcome (what backends report, the ledger records)
# layer -> the layers of the package it may import (design.md); "" is the package itself (htc_notebook)
ALLOWED = {
    "errors": set(),
    "states": set(),
    "spec": {"errors", "states"},  # states: the causes retries are decided by (one home)
    "ledger": {"spec"} | BOTTOM,
    "storage": {"spec"} | BOTTOM,
    "registry": {"spec", "storage"} | BOTTOM,  # the data root's OCI registry (docs/registry.md)
    "backends": {"spec", "storage", ""} | BOTTOM,  # "": htc_notebook.__version__ (pilots check it)
    "runtime": {"spec", "ledger", "storage", "registry", "backends"} | BOTTOM,
    "ui": {"runtime", "spec"} | BOTTOM,
    "server": {"runtime", "spec"} | BOTTOM,
    # the `htc` command: the runtime, plus its tools that are not job submission, each named:
    # `htc slurm` (devcluster), `htc serve` / `htc keys` (server), `htc registry` / `htc images push`
    # (registry), `htc profiles discover` (backends.slurm.discover), `htc demo` (examples)
    "cli": {"runtime", "spec", "devcluster", "server", "registry", "examples", "backends.slurm.discover"} | BOTTOM,
    "devcluster": BOTTOM,  # test-cluster tooling: nothing of the job layers
    # the shipped examples are user code; storage: reading what jobs wrote as untrusted (no link
    # followed, no FIFO waited on, bounded) and writing inputs atomically, as the runtime does
    "examples": {"storage"} | BOTTOM,
    "": {"runtime", "spec", "ui"} | BOTTOM,  # htc_notebook/__init__.py: the public names, %load_ext
}


def layer_of(module: str) -> str:
    """`htc_notebook.runtime.task` -> "runtime"; `htc_notebook.cli` -> "cli"; `htc_notebook` -> ""."""
    parts = module.removesuffix(".__init__").split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports(path: Path, pkg: Path = PKG) -> set[str]:
    """The htc_notebook modules a file of package directory `pkg` imports, anywhere in it: relative
    imports resolved, `from htc_notebook import ledger` as htc_notebook.ledger, `import_module("...")`."""
    here = ".".join(path.relative_to(pkg.parent).with_suffix("").parts).removesuffix(".__init__")
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]

    def is_module(name: str) -> bool:
        where = pkg.parent.joinpath(*name.split("."))
        return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "htc_notebook"):
            base = node.module
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            out |= {f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "htc_notebook"}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).split(".")[0] == "htc_notebook":
            out.add(node.args[0].value)
    return out


def offences(files, pkg: Path = PKG) -> dict[str, list[str]]:
    """Each file's imports of layers its own may not import (file: modules)."""
    found = {}
    for f in files:
        own = layer_of(".".join(f.relative_to(pkg.parent).with_suffix("").parts))
        allowed = ALLOWED[own] | {own}
        bad = sorted(m for m in package_imports(f, pkg) if layer_of(m) not in allowed
                     and not any(m == f"htc_notebook.{a}" for a in allowed if "." in a))
        if bad:
            found[str(f.relative_to(pkg))] = bad
    return found


def test_every_layer_imports_only_the_layers_below_it():
    files = sorted(PKG.rglob("*.py"))
    assert {layer_of(".".join(f.relative_to(PKG.parent).with_suffix("").parts)) for f in files} == set(ALLOWED)
    assert offences(files) == {}


def test_the_layer_walker_would_notice(tmp_path):
    """A backend importing the ledger (by name, as a submodule of the package, relatively, by
    import_module), a ui module the backends inside a function, storage the ledger relatively."""
    probes = {"ledger/__init__.py": "",
              "backends/probe.py": "from htc_notebook.ledger import Ledger\n",
              "backends/probe_pkg.py": "from htc_notebook import ledger, __version__\n",
              "backends/slurm/probe_rel.py": "from ... import ledger\n",
              "backends/probe_dyn.py": "importlib.import_module('htc_notebook.ledger.db')\n",
              "ui/probe.py": "def f():\n    from htc_notebook.backends.local import LocalBackend\n",
              "storage/probe.py": "from ..ledger import rows\n"}
    root = tmp_path / "htc_notebook"
    for name, text in probes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert offences(sorted(root.rglob("*.py")), root) == {
        "backends/probe.py": ["htc_notebook.ledger"], "backends/probe_pkg.py": ["htc_notebook.ledger"],
        "backends/slurm/probe_rel.py": ["htc_notebook.ledger"], "backends/probe_dyn.py": ["htc_notebook.ledger.db"],
        "storage/probe.py": ["htc_notebook.ledger"], "ui/probe.py": ["htc_notebook.backends.local"]}


def test_ui_server_and_cli_read_the_ledger_through_the_runtime():
    """Not even as an attribute: `session.reads` (runtime/reads.py) and the runtime's operations."""
    files = [*sorted((PKG / "ui").rglob("*.py")), *sorted((PKG / "server").rglob("*.py")), PKG / "cli.py"]
    uses = {f"{f.relative_to(PKG)}:{n.lineno}" for f in files for n in ast.walk(ast.parse(f.read_text()))
            if isinstance(n, ast.Attribute) and n.attr == "ledger"}
    assert uses == set()


JUPYTER = {"IPython", "ipywidgets", "anywidget", "jupyter_server", "tornado", "ipykernel"}


def test_the_backends_know_nothing_of_jupyter():
    files = sorted((PKG / "backends").rglob("*.py"))
    found = {str(f.relative_to(PKG)): sorted(imported_roots(f) & JUPYTER) for f in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_notebook_layer_is_imported_lazily():
    """`import htc_notebook` and a Session load no IPython, widgets or Jupyter server."""
    code = ("import htc_notebook, sys; htc_notebook.Session; import htc_notebook.runtime.session; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(JUPYTER)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _runtime_imports(path: Path) -> set[str]:
    """The runtime modules a file imports anywhere: at module level, inside functions and under
    TYPE_CHECKING too (a circle hidden there is still a circle)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "htc_notebook.runtime":
            out |= {f"htc_notebook.runtime.{a.name}" for a in node.names}  # from htc_notebook.runtime import images
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(
                "htc_notebook.runtime."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("htc_notebook.runtime.")}
    return out


RUNTIME = SPEC.parent / "runtime"
RUNTIME_GRAPH = {f"htc_notebook.runtime.{p.stem}": _runtime_imports(p) for p in RUNTIME.glob("*.py")
                 if p.stem != "__init__"}


def test_the_walker_sees_imports_under_type_checking_and_in_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from htc_notebook.runtime.session "
                     "import Session\ndef f():\n    from htc_notebook.runtime import task\n")
    assert _runtime_imports(probe) == {"htc_notebook.runtime.session", "htc_notebook.runtime.task"}


def test_nothing_below_the_session_imports_it():
    """issue 26: the Session is a facade over its parts (runtime/parts.py); the parts, tasks and
    handles get what they need, not the Session. Only the package's entry points make sessions."""
    importers = {m for m, deps in RUNTIME_GRAPH.items() if "htc_notebook.runtime.session" in deps}
    assert importers == {"htc_notebook.runtime.decorators"}  # current_task() opens the default session


def test_the_runtime_has_no_import_circle():
    """issue 12, issue 26: the runtime's modules import each other one way only, counting imports
    inside functions and under TYPE_CHECKING."""
    graph = RUNTIME_GRAPH
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
