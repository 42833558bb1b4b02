"""How the figures of :mod:`analysis.plots` are laid out, coloured and labelled.

Figures are laid out in inches (:func:`figure_grid`) rather than by matplotlib's constrained
layout, which draws 2-4x slower; sweep points get one colour each (:func:`point_colors`) and a
readable label (:func:`point_labels`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.load import SweepResults

DPI = 120
LEGEND_ROW_INCHES = 0.22

#: White box behind labels drawn over curves.
LABEL_BOX: dict[str, Any] = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def format_value(value: Any) -> str:
    """A varied value as text: ``–`` for missing, ``16`` rather than ``16.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def point_labels(sweep: SweepResults) -> pd.Series:
    """Label of each run's sweep point (``key=value, ...``), indexed like ``sweep.runs``."""
    keys = sweep.point_keys
    if not keys:
        return pd.Series(sweep.name, index=sweep.runs.index)
    if len(keys) == 1 and keys[0] != "run_id":
        return sweep.runs[keys[0]].map(format_value).astype(object)
    if keys == ["run_id"]:
        return sweep.runs["run_id"].astype(object)
    return sweep.runs[keys].apply(
        lambda row: ", ".join(f"{key}={format_value(row[key])}" for key in keys), axis=1
    ).astype(object)


def point_colors(labels: pd.Series) -> dict[str, str]:
    """One colour per distinct label, in sweep order."""
    unique = list(dict.fromkeys(labels))
    if len(unique) <= len(PALETTE):
        return {label: PALETTE[index] for index, label in enumerate(unique)}
    cmap = colormaps["viridis"]
    return {label: _hex(cmap(index / max(len(unique) - 1, 1))) for index, label in
            enumerate(unique)}


def _hex(rgba: tuple[float, float, float, float]) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in rgba[:3])


def figure_grid(nrows: int, ncols: int, *, panel: tuple[float, float],
                gap: tuple[float, float], margins: tuple[float, float, float, float],
                sharey: bool = False) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` axes laid out in inches, shape ``(nrows, ncols)``.

    Args:
        panel: (width, height) of one axes.
        gap: (horizontal, vertical) space between axes, room for tick labels and titles.
        margins: (left, right, bottom, top) around the grid, room for labels and legends.

    A fixed layout instead of matplotlib's constrained layout: it draws 2-4x faster, which
    matters for sweeps with many runs.
    """
    left, right, bottom, top = margins
    width = left + right + ncols * panel[0] + (ncols - 1) * gap[0]
    height = bottom + top + nrows * panel[1] + (nrows - 1) * gap[1]
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, gridspec_kw={
        "left": left / width, "right": 1 - right / width,
        "bottom": bottom / height, "top": 1 - top / height,
        "wspace": gap[0] / panel[0], "hspace": gap[1] / panel[1],
    })
    return fig, axes


def no_data(ax: Axes, message: str) -> None:
    """Say in the middle of ``ax`` why it is empty."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
            fontsize=11, color="0.4")


def legend_below(fig: Figure, handles: list[Any], ncol: int, title: str | None = None) -> None:
    """A frameless legend centred at the bottom of ``fig`` (keep a bottom margin for it)."""
    fig.legend(handles=handles, loc="lower center", ncol=max(1, ncol), frameon=False,
               fontsize=9, title=title, title_fontsize=9)


def legend_title(sweep: SweepResults) -> str:
    """What the colours stand for: the varied key(s), or runs."""
    keys = sweep.point_keys
    if keys == ["run_id"]:
        return "run"
    return ", ".join(keys) if keys else "sweep"


def epoch_axis(ax: Axes) -> None:
    """Label the x axis as epochs, with integer ticks."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


#: The kNN and linear figures' legend entries besides the points' colours.
NETWORK_AND_BASELINE_LABELS = ("teacher", "student", "teacher at random init",
                               "raw pixels (no network)")


def legend_columns(labels: list[str] | tuple[str, ...], width: float, most: int) -> int:
    """Columns of a legend below the axes that fit ``width`` inches: each column is as wide as
    the longest label (fontsize 9) plus its handle, so long point labels take fewer columns
    instead of running off the figure's sides."""
    longest = max((len(label) for label in labels), default=0)
    return max(1, min(most, int(width // (0.75 + 0.075 * longest))))


def legend_height(entries: int, ncol: int) -> float:
    """Inches a legend of ``entries`` in ``ncol`` columns takes below the axes."""
    return LEGEND_ROW_INCHES * math.ceil(entries / ncol) + 0.1
