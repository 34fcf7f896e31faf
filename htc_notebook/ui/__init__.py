"""IPython magics and widgets (optional dependencies, imported lazily). Calls runtime only."""
