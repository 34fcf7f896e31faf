"""The ledger split by concern (issue 26) stays split: small modules, no private name imported from
another module, no import circle, concern classes that touch only the core's private names and their
own, and no method defined by two concerns (the `Ledger` MRO would hide one)."""

import ast
from pathlib import Path

from htc_notebook.ledger import Ledger
from htc_notebook.ledger.connection import LedgerCore

LEDGER = Path(__file__).resolve().parents[1] / "htc_notebook" / "ledger"
MAX_LINES = 350


def ledger_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from .x import name` / `from htc_notebook.ledger.x import name` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.level == 1 or node.module.startswith("htc_notebook.ledger.")):
            out += [(node.module.rpartition(".")[2], a.name) for a in node.names]
    return out


def private_imports(folder: Path) -> list[str]:
    return [f"{p.name}: {m}.{n}" for p in sorted(folder.glob("*.py")) for m, n in ledger_imports(p)
            if n.startswith("_")]


def circles(folder: Path) -> list[list[str]]:
    graph = {p.stem: {m for m, _ in ledger_imports(p)} for p in folder.glob("*.py")}

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if found := cycle_from(nxt, path + [nxt]):
                return found
        return None

    return [c for n in sorted(graph) if (c := cycle_from(n, [n]))]


def foreign_privates(folder: Path, core: set[str]) -> list[str]:
    """`self._name` uses in a LedgerCore subclass of a name neither it nor the core defines."""
    found = []
    for p in sorted(folder.glob("*.py")):
        for cls in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(cls, ast.ClassDef) and any(getattr(b, "id", "") == "LedgerCore" for b in cls.bases)):
                continue
            own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            own |= {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            for n in ast.walk(cls):
                if (isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "self" and n.attr.startswith("_")
                        and not n.attr.startswith("__") and n.attr not in own | core):
                    found.append(f"{p.name}:{n.lineno} {cls.name} uses self.{n.attr}")
    return found


def core_privates() -> set[str]:
    names = {n for n in vars(LedgerCore) if n.startswith("_")}
    tree = ast.parse((LEDGER / "connection.py").read_text())
    return names | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                    and getattr(n.value, "id", "") == "self" and isinstance(n.ctx, ast.Store)}


def test_every_ledger_module_is_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in LEDGER.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes["db.py"] < 50  # the Ledger is its concerns composed, nothing more


def test_no_private_name_crosses_a_module_and_no_import_circle():
    assert private_imports(LEDGER) == []
    assert circles(LEDGER) == []


def test_concerns_touch_only_the_cores_private_names_and_their_own():
    core = core_privates()
    assert {"_write", "_read", "_snapshot", "_con"} <= core
    assert foreign_privates(LEDGER, core) == []


def test_no_method_is_defined_by_two_concerns():
    concerns = Ledger.__bases__
    assert all(issubclass(c, LedgerCore) for c in concerns)
    assert {n for n in vars(Ledger) if not n.startswith("__")} == set()
    seen: dict[str, str] = {n: "LedgerCore" for n in vars(LedgerCore) if not n.startswith("__")}
    twice = []
    for c in concerns:
        for name in (n for n in vars(c) if not n.startswith("__")):
            if name in seen:
                twice.append(f"{name}: {seen[name]} and {c.__name__}")
            seen[name] = c.__name__
    assert twice == []


def test_the_checks_would_notice(tmp_path):
    (tmp_path / "a.py").write_text("from .b import _helper\n")
    (tmp_path / "b.py").write_text("def f():\n    from htc_notebook.ledger.a import x\n")
    (tmp_path / "c.py").write_text("class C(LedgerCore):\n    def m(self):\n        self._mine()\n"
                                   "        return self._write, self._set_status\n    def _mine(self): ...\n")
    assert private_imports(tmp_path) == ["a.py: b._helper"]
    assert circles(tmp_path) == [["a", "b", "a"], ["b", "a", "b"]]
    assert foreign_privates(tmp_path, {"_write"}) == ["c.py:4 C uses self._set_status"]
