"""Baselines as reference lines, and the linear-probe curves.

A learned representation is only worth something against what needs no learning: the randomly
initialised teacher (``init.json`` ``knn_teacher_init``/``linear_teacher_init``) and the raw
pixels of the same evaluation split (``knn_pixels``/``linear_pixels``). :func:`draw_baselines`
draws them as labelled horizontal lines on an accuracy axis (percent); the kNN figures of
:mod:`analysis.plots` and :func:`linear_figure` use it.

- ``linear``: teacher (solid, circles) and student (dashed, squares) linear-probe top-1 at the
  epochs it was measured, one colour per point, mean ± std over seeds, with the raw-pixel and
  random-init linear probe as reference lines. When each run was probed once (the default: at
  its end) the x axis is the points instead of the epochs: a filled circle (teacher) and a
  hollow square (student) per point, the seeds' std as error bars. A run whose
  ``metrics.jsonl`` has no probe value but whose ``summary.json`` has a final one shows it at
  its last epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figure_style import (
    LABEL_BOX,
    NETWORK_AND_BASELINE_LABELS,
    epoch_axis,
    figure_grid,
    legend_below,
    legend_columns,
    legend_height,
    legend_title,
    point_colors,
    point_labels,
)
from analysis.load import SweepResults

#: Style of the random-init teacher line (in the point's colour when points differ).
INIT_STYLE: dict[str, Any] = {"linestyle": ":", "linewidth": 1.3}
#: Style of the raw-pixel line.
PIXELS_STYLE: dict[str, Any] = {"color": "0.25", "linestyle": "-.", "linewidth": 1.3}
#: ``gid`` of the reference lines, so that tests and readers can find them.
INIT_GID = "baseline-random-init"
PIXELS_GID = "baseline-raw-pixels"

#: Metric columns of the linear-probe figure and their line style.
_PROBES = (("linear_teacher", "-", "o"), ("linear_student", "--", "s"))


def point_levels(values: pd.Series, labels: pd.Series) -> dict[str, float]:
    """Mean of the finite ``values`` (0-1) per point label, in percent; points without any are
    left out. ``values`` and ``labels`` are indexed like ``SweepResults.runs``."""
    numbers = pd.to_numeric(values, errors="coerce") * 100.0
    frame = pd.DataFrame({"label": labels, "value": numbers}).dropna()
    means = frame.groupby("label", sort=False)["value"].mean()
    return {str(label): float(value) for label, value in means.items()}


def _single(levels: dict[str, float]) -> float | None:
    """The shared value when every point has the same one (to 1e-6 %), else None."""
    distinct = {round(value, 6) for value in levels.values()}
    return next(iter(levels.values())) if len(distinct) == 1 else None


def draw_baselines(ax: Axes, sweep: SweepResults, *, init_column: str, pixels_column: str,
                   colors: dict[str, str] | None = None) -> list[Any]:
    """Draw the random-init teacher and raw-pixel levels of ``sweep`` on ``ax`` (percent).

    One line each when every point shares the value (labelled at the right end); otherwise one
    random-init line per point in its colour from ``colors``. Returns the legend handles of
    what was drawn (none when the runs carry no baselines).
    """
    labels = point_labels(sweep)
    handles: list[Any] = []
    init_levels = point_levels(sweep.runs[init_column], labels)
    shared_init = _single(init_levels)
    if shared_init is not None:
        _labelled_line(ax, shared_init, f"random-init teacher {shared_init:.1f} %", INIT_GID,
                       color="0.4", **INIT_STYLE)
    else:
        for label, value in init_levels.items():
            color = (colors or {}).get(label, "0.4")
            ax.axhline(value, color=color, gid=INIT_GID, **INIT_STYLE)
    if init_levels:
        handles.append(Line2D([], [], color="0.4", label="teacher at random init",
                              **INIT_STYLE))
    pixel_levels = point_levels(sweep.runs[pixels_column], labels)
    shared_pixels = _single(pixel_levels)
    if shared_pixels is not None:
        _labelled_line(ax, shared_pixels, f"raw pixels {shared_pixels:.1f} %", PIXELS_GID,
                       **PIXELS_STYLE)
    else:
        for value in dict.fromkeys(round(v, 6) for v in pixel_levels.values()):
            ax.axhline(value, gid=PIXELS_GID, **PIXELS_STYLE)
    if pixel_levels:
        handles.append(Line2D([], [], label="raw pixels (no network)", **PIXELS_STYLE))
    return handles


def _labelled_line(ax: Axes, value: float, text: str, gid: str, **style: Any) -> None:
    ax.axhline(value, gid=gid, **style)
    ax.annotate(text, xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=8,
                color=style.get("color", "0.3"), bbox=LABEL_BOX)


def _probe_rows(sweep: SweepResults) -> pd.DataFrame:
    """Long rows (run_id, epoch, column, value in %) of every linear-probe measurement."""
    frame = sweep.frame
    epoch_known = np.isfinite(frame["epoch"].to_numpy(dtype=float))
    parts = []
    for column, _, _ in _PROBES:
        values = (pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
                  if column in frame.columns else np.full(len(frame), np.nan))
        measured = epoch_known & np.isfinite(values)
        parts.append(pd.DataFrame({
            "run_id": frame["run_id"].to_numpy()[measured],
            "epoch": frame["epoch"].to_numpy(dtype=float)[measured],
            "column": column, "value": values[measured] * 100.0,
        }))
        # summary.json only (no per-epoch value): the final probe at the run's last epoch
        final = sweep.runs[~sweep.runs["run_id"].isin(set(parts[-1]["run_id"]))
                           & np.isfinite(sweep.runs[column].to_numpy(dtype=float))]
        parts.append(pd.DataFrame({
            "run_id": final["run_id"].to_numpy(),
            "epoch": final["epochs_done"].to_numpy(dtype=float), "column": column,
            "value": final[column].to_numpy(dtype=float) * 100.0,
        }))
    return pd.concat(parts, ignore_index=True)


def linear_figure(sweep: SweepResults) -> Figure | None:
    """Linear-probe top-1 over epochs (per point when each run was probed once) with its
    baselines; None when no run has a probe value."""
    rows = _probe_rows(sweep)
    if rows.empty:
        return None
    labels = point_labels(sweep)
    colors = point_colors(labels)
    rows["label"] = rows["run_id"].map(dict(zip(sweep.runs["run_id"], labels, strict=True)))
    once = bool((rows.groupby("run_id")["epoch"].nunique() == 1).all())
    ticks = _point_ticks(rows, colors) if once else {}
    # a tick of several lines (keys, an epoch range) pushes the axis label down
    lines = max((tick.count("\n") for tick in ticks.values()), default=0)
    entries = list(NETWORK_AND_BASELINE_LABELS) if once else \
        [*colors, *NETWORK_AND_BASELINE_LABELS]
    ncol = legend_columns(entries, 7.6 + 0.95, 4)
    bottom = 0.6 + legend_height(len(entries), ncol) + 0.16 * lines
    fig, axes = figure_grid(1, 1, panel=(7.6, 4.4), gap=(0, 0),
                            margins=(0.75, 0.2, bottom, 0.4))
    ax = axes[0, 0]
    if once:  # the usual case: each run is probed once, at its end
        plotted = _draw_points(ax, rows, colors, ticks)
        epochs = sorted({int(e) for e in rows["epoch"]})
        when = f"epoch {epochs[0]}" if len(epochs) == 1 else "each run's last probed epoch"
        ax.set_xlabel(f"{legend_title(sweep)} (probed at {when})")
        networks = [Line2D([], [], color="0.2", marker="o", linestyle="none", label="teacher"),
                    Line2D([], [], color="0.2", marker="s", linestyle="none", fillstyle="none",
                           label="student")]
    else:
        plotted = _draw_curves(ax, rows, colors)
        epoch_axis(ax)
        networks = [Line2D([], [], color="0.2", marker="o", label="teacher"),
                    Line2D([], [], color="0.2", linestyle="--", marker="s", label="student")]
    baselines = draw_baselines(ax, sweep, init_column="linear_teacher_init",
                               pixels_column="linear_pixels", colors=colors)
    ax.set_ylabel("linear-probe top-1 (%)")
    ax.set_title(f"Linear probe on frozen features — sweep {sweep.name}")
    ax.grid(alpha=0.3)
    # along a point axis the tick labels name the colours
    handles: list[Any] = [] if once else [
        Line2D([], [], color=colors[label], linewidth=2.5, label=label)
        for label in dict.fromkeys(plotted)]
    handles += [*networks, *baselines]
    legend_below(fig, handles, ncol=ncol,
                 title=f"{legend_title(sweep)} (mean ± std over seeds)")
    return fig


def _draw_curves(ax: Axes, rows: pd.DataFrame, colors: dict[str, str]) -> list[str]:
    """One line per point and network over the probed epochs, mean ± std over seeds."""
    plotted: list[str] = []
    for label, color in colors.items():
        for column, style, marker in _PROBES:
            measured = rows[(rows["label"] == label) & (rows["column"] == column)]
            if measured.empty:
                continue
            stats = measured.groupby("epoch")["value"].agg(["mean", "std", "count"])
            epochs = stats.index.to_numpy(dtype=float)
            mean = stats["mean"].to_numpy()
            ax.plot(epochs, mean, linestyle=style, marker=marker, color=color, linewidth=1.8,
                    markersize=5)
            if (stats["count"] > 1).any():
                std = np.nan_to_num(stats["std"].to_numpy())
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15,
                                linewidth=0)
            plotted.append(label)
    return plotted


#: Horizontal offset of the teacher (left) and student (right) marker of a point.
_POINT_OFFSET = {"linear_teacher": -0.12, "linear_student": 0.12}


def _point_ticks(rows: pd.DataFrame, colors: dict[str, str]) -> dict[str, str]:
    """The x tick of each point with a probe value: its label, one key a line, and the epochs
    its seeds were probed at when they differ (a seed that ended early)."""
    ticks = {}
    for label in colors:
        epochs = sorted({int(e) for e in rows[rows["label"] == label]["epoch"]})
        if not epochs:
            continue
        tick = label.replace(", ", "\n")
        ticks[label] = tick if len(epochs) == 1 else \
            f"{tick}\n(epochs {epochs[0]}-{epochs[-1]})"
    return ticks


def _draw_points(ax: Axes, rows: pd.DataFrame, colors: dict[str, str],
                 ticks: dict[str, str]) -> list[str]:
    """Probes of one epoch: a teacher and a student marker per point along a categorical x
    axis, with the seeds' std as error bars (an epoch axis would show one column of dots)."""
    plotted = list(ticks)
    for x, label in enumerate(plotted):
        for column, _, marker in _PROBES:
            values = rows[(rows["label"] == label) & (rows["column"] == column)]["value"]
            if values.empty:
                continue
            std = [float(values.std())] if len(values) > 1 else None
            ax.errorbar([x + _POINT_OFFSET[column]], [float(values.mean())], yerr=std,
                        marker=marker, markersize=7, color=colors[label], capsize=3,
                        linestyle="none", fillstyle="full" if column == "linear_teacher"
                        else "none")
    many = len(plotted) > 5
    ax.set_xticks(range(len(plotted)), [ticks[label] for label in plotted],
                  rotation=20 if many else 0, ha="right" if many else "center")
    ax.set_xlim(-0.6, len(plotted) - 0.4)
    return plotted
