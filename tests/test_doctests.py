"""The examples in docstrings are true: every module's doctests run (examples that need a
cluster or a notebook are marked +SKIP where they are written)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import htc_notebook

SKIP = ("htc_notebook.devcluster.", "htc_notebook.examples.")  # root-only tooling; demo code
MODULES = sorted(m.name for m in pkgutil.walk_packages(htc_notebook.__path__, "htc_notebook.")
                 if not m.name.startswith(SKIP) and not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run it with -s)"
