"""Sweep results plotted against their parameters (matplotlib, through pandas).

`JobGroup.plot(x="T", y="pressure")` is `plot_results(group.to_dataframe(results=True), ...)`:
the succeeded jobs' results (a number, or a mapping whose keys are columns: what a parsed LAMMPS
log gives) against a parameter; members that differ only in other parameters (seeds) are averaged,
with their standard deviation as error bars; `by=` draws one line per value of another parameter.

>>> import pandas as pd
>>> df = pd.DataFrame({"status": ["SUCCEEDED"] * 4, "T": [1, 1, 2, 2], "seed": [0, 1, 0, 1],
...                    "result": [{"E": 1.0}, {"E": 3.0}, {"E": 5.0}, {"E": 7.0}]})
>>> ax = plot_results(df, x="T", y="E")
>>> list(ax.lines[0].get_xdata()), list(ax.lines[0].get_ydata())
([1, 2], [2.0, 6.0])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from htc_notebook.errors import SpecError

if TYPE_CHECKING:
    import pandas


def results_table(df: "pandas.DataFrame") -> "pandas.DataFrame":
    """The succeeded rows, with mapping results spread into columns of their own (`result.E` -> `E`)."""
    import pandas as pd

    done = df[df["status"] == "SUCCEEDED"].reset_index(drop=True)
    if "result" in done and len(done) and all(isinstance(r, Mapping) for r in done["result"]):
        spread = pd.json_normalize(list(done["result"]))
        done = pd.concat([done.drop(columns=["result"]), spread.drop(columns=[c for c in spread if c in done])],
                         axis=1)
    return done


def plot_results(df: "pandas.DataFrame", x: str, y: str = "result", by: str | None = None, ax: Any = None,
                 title: str | None = None) -> Any:
    """Plot `y` against parameter `x` for the succeeded jobs of `df`; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    table = results_table(df)
    for field, name in (("x", x), ("y", y), ("by", by)):
        if name is not None and name not in table.columns:
            known = [c for c in table.columns if c not in ("status", "reason", "history", "name")]
            raise SpecError("plot", field, name, f"a column of the succeeded jobs: {', '.join(map(str, known))}"
                            if len(table) else "a column, but no job has succeeded yet")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    groups = [(None, table)] if by is None else list(table.groupby(by, sort=True))
    for value, part in groups:
        stats = part.groupby(x, sort=True)[y].agg(["mean", "std", "count"])
        label = None if by is None else f"{by}={value!s}"
        if (stats["count"] > 1).any():
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=label)
        else:
            ax.plot(stats.index, stats["mean"], marker="o", label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(y if by is not None or not (table.groupby(x).size() > 1).any() else f"{y} (mean ± std)")
    if title:
        ax.set_title(title)
    if by is not None:
        ax.legend()
    return ax
