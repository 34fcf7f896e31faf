"""Sweep results plotted against their parameters: what is drawn is what the jobs returned."""

from __future__ import annotations

import matplotlib
import pytest

from htc_notebook import Session, Sweep
from htc_notebook.errors import SpecError

matplotlib.use("Agg")


def energy(T: float, seed: int) -> dict:
    return {"E": 2.0 * T + seed, "P": T / 2}


def test_a_sweep_is_plotted_mean_and_spread_over_seeds_and_one_line_per_value_of_by(tmp_path):
    with Session(tmp_path) as s:
        group = s.project("p").task("t").sweep(energy, Sweep.grid(T=[1.0, 2.0, 3.0], seed=[0, 2])).wait(timeout=120)
        ax = group.plot(x="T", y="E")
        line = ax.lines[0]
        assert list(line.get_xdata()) == [1.0, 2.0, 3.0]
        assert list(line.get_ydata()) == [3.0, 5.0, 7.0]  # 2T + mean(0, 2)
        assert ax.get_xlabel() == "T" and "mean" in ax.get_ylabel() and ax.get_title() == "energy"
        ax = group.plot(x="T", y="P", by="seed")
        assert [curve.get_label() for curve in ax.get_legend().get_lines()] == ["seed=0", "seed=2"]
        assert [list(curve.get_ydata()) for curve in ax.lines] == [[0.5, 1.0, 1.5]] * 2
        with pytest.raises(SpecError, match=r"plot.y = 'volume'.*E, P"):
            group.plot(x="T", y="volume")
