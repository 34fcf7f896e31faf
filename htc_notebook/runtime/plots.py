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


# the live table's colours (ui/static/jobs_table.js)
STATE_COLOURS = {"SUCCEEDED": "#4caf50", "FAILED": "#e53935", "CANCELLED": "#9e9e9e", "LOST": "#b71c1c",
                 "RUNNING": "#1e88e5", "STARTING": "#64b5f6", "RUNNABLE": "#bbdefb", "HELD": "#ffb74d",
                 "SUBMITTED": "#e0e0e0", "WAITING": "#d1c4e9"}


def generations(nodes: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    """Each node's generation: 0 for a node with no parent among `nodes`, else one more than its
    latest parent's (the longest path to it).

    >>> generations([1, 2, 3, 4], [(1, 2), (1, 3), (2, 4), (3, 4)])
    {1: 0, 2: 1, 3: 1, 4: 2}
    """
    parents: dict[int, list[int]] = {n: [] for n in nodes}
    for p, c in edges:
        if p in parents and c in parents:
            parents[c].append(p)
    depth: dict[int, int] = {}
    for start in nodes:
        stack = [start]
        while stack:  # iterative: a long chain would overflow recursion
            n = stack[-1]
            todo = [p for p in parents[n] if p not in depth]
            if todo:
                stack += todo
                continue
            stack.pop()
            depth[n] = 1 + max((depth[p] for p in parents[n]), default=-1)
    return {n: depth[n] for n in nodes}


def plot_dag(statuses: Mapping[int, str], edges: list[tuple[int, int]], ax: Any = None,
             title: str | None = None) -> Any:
    """Jobs (id -> state) and their dependencies ((parent, child)) drawn left to right by generation,
    each job a dot coloured by its state; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    nodes = list(statuses)
    gen = generations(nodes, edges)
    place: dict[int, tuple[int, int]] = {}
    rows: dict[int, int] = {}
    for n in nodes:
        g = gen[n]
        place[n] = (g, rows.get(g, 0))
        rows[g] = rows.get(g, 0) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 2 + 1.2 * (max(gen.values(), default=0) + 1)),
                                      min(8, 1 + 0.35 * max(rows.values(), default=1))))
    for p, c in edges:
        if p in place and c in place:
            (x0, y0), (x1, y1) = place[p], place[c]
            ax.plot([x0, x1], [y0, y1], color="#9e9e9e", linewidth=0.6, zorder=1)
    ax.scatter([place[n][0] for n in nodes], [place[n][1] for n in nodes], zorder=2, s=60,
               c=[STATE_COLOURS.get(statuses[n], "#000000") for n in nodes], edgecolors="#424242", linewidths=0.5)
    if len(nodes) <= 40:
        for n in nodes:
            ax.annotate(str(n), place[n], textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    seen = sorted({statuses[n] for n in nodes})
    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=STATE_COLOURS.get(s, "#000"), label=s)
                       for s in seen], loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    ax.set_xlabel("generation")
    ax.set_yticks([])
    ax.invert_yaxis()
    if title:
        ax.set_title(title)
    return ax


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
