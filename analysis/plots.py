"""Figures of a sweep (matplotlib, drawn off-screen with the Agg canvas).

- ``knn_overlay``: teacher (solid) and student (dashed) kNN top-1 over epochs, one colour per
  sweep point, mean over seeds with a ±std band (paper Fig. 6 left), with the random-init
  teacher's and the raw pixels' kNN as labelled reference lines
  (:func:`analysis.probe_plots.draw_baselines`).
- ``knn_runs_NN``: the same per run, one panel per run (24 panels a page), with the kNN of the
  randomly initialised teacher as a dotted line and the raw pixels' as a dash-dotted one.
- ``linear``: linear-probe top-1 over the epochs it was measured (per point, when each run was
  probed once), with its baselines, when any run has a probe value
  (:func:`analysis.probe_plots.linear_figure`).
- ``collapse``: teacher entropy h(Pt) and KL(Pt‖Ps) over epochs side by side, one colour per
  point, lines at 0 and ln K, and the start of each detected collapse marked (paper Fig. 7).
- ``patch_size``: final teacher kNN vs measured training throughput, when ``model.patch_size``
  is varied (paper Fig. 5).
- ``batch_size``: final teacher kNN vs batch size, when ``optim.batch_size`` is varied
  (paper Table 9).
- ``attention``: the teacher's last-block [CLS] attention on the same images, rows = points,
  when any run has ``attention/maps.npz`` (:func:`analysis.attention_figure.attention_figure`).

Every figure works on partial sweeps: runs without metrics are left out, and a figure with no
data says so. Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot
state), so this module is safe to use from any thread and leaks no figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from analysis.attention_figure import attention_figure
from analysis.collapse import HEALTHY
from analysis.figure_style import (
    DPI,
    LABEL_BOX,
    NETWORK_AND_BASELINE_LABELS,
    PALETTE,
    epoch_axis,
    figure_grid,
    format_value,
    legend_below,
    legend_columns,
    legend_height,
    legend_title,
    no_data,
    point_colors,
    point_labels,
)
from analysis.load import SweepResults
from analysis.probe_plots import INIT_GID, PIXELS_GID, PIXELS_STYLE, draw_baselines, linear_figure

PATCH_SIZE_KEY = "model.patch_size"
BATCH_SIZE_KEY = "optim.batch_size"
RUNS_PER_PAGE = 24
FORMATS = ("png", "pdf")

def _title_of(sweep: SweepResults) -> str:
    return f"sweep {sweep.name}"


def _runs_with_metrics(sweep: SweepResults, column: str) -> Iterator[tuple[int, pd.DataFrame]]:
    """(index in sweep.runs, that run's epoch rows with a finite ``column``), in sweep order."""
    frame = sweep.frame
    if column not in frame.columns:
        return
    frame = frame[np.isfinite(frame["epoch"].to_numpy(dtype=float)) & frame[column].notna()]
    by_run = dict(iter(frame.groupby("run_id", sort=False)))
    for index, run_id in zip(sweep.runs.index, sweep.runs["run_id"], strict=True):
        rows = by_run.get(run_id)
        if rows is not None and len(rows):
            yield int(index), rows


def knn_overlay_figure(sweep: SweepResults) -> Figure:
    """Teacher vs student kNN over epochs, mean ± std over seeds per point (Fig. 6 left)."""
    labels = point_labels(sweep)
    colors = point_colors(labels)
    # the legend goes below the axes: inside (loc="best") it hid the first epochs' curves
    entries = [*colors, *NETWORK_AND_BASELINE_LABELS]
    ncol = legend_columns(entries, 7.6 + 0.95, 4)
    bottom = 0.6 + legend_height(len(entries), ncol)
    fig, axes = figure_grid(1, 1, panel=(7.6, 4.4), gap=(0, 0),
                             margins=(0.75, 0.2, bottom, 0.4))
    ax = axes[0, 0]
    frame = sweep.frame.assign(_label=sweep.frame["run_id"].map(
        dict(zip(sweep.runs["run_id"], labels, strict=True))))
    frame = frame[np.isfinite(frame["epoch"].to_numpy(dtype=float))]
    plotted: list[str] = []
    for label, color in colors.items():
        rows = frame[frame["_label"] == label]
        for column, style in (("knn_teacher", "-"), ("knn_student", "--")):
            if column not in rows.columns or rows[column].notna().sum() == 0:
                continue
            # kNN is measured every `eval.every_epochs`: the epochs without it would cut the
            # line into isolated points (nothing is drawn between a value and a NaN)
            measured = rows[rows[column].notna()]
            stats = measured.groupby("epoch")[column].agg(["mean", "std", "count"])
            epochs = stats.index.to_numpy(dtype=float)
            mean = stats["mean"].to_numpy() * 100.0
            std = np.nan_to_num(stats["std"].to_numpy() * 100.0)
            ax.plot(epochs, mean, style, color=color, linewidth=1.8)
            if (stats["count"] > 1).any():
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15,
                                linewidth=0)
            plotted.append(label)
    epoch_axis(ax)
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title(f"Teacher vs student k-NN during training — {_title_of(sweep)}")
    ax.grid(alpha=0.3)
    baselines = draw_baselines(ax, sweep, init_column="knn_teacher_init",
                               pixels_column="knn_pixels", colors=colors)
    if not plotted:
        no_data(ax, "no kNN measurements yet")
        return fig
    handles: list[Any] = [Line2D([], [], color=colors[label], linewidth=2.5, label=label)
                          for label in dict.fromkeys(plotted)]
    handles += [Line2D([], [], color="0.2", linestyle="-", label="teacher"),
                Line2D([], [], color="0.2", linestyle="--", label="student"), *baselines]
    title = f"{legend_title(sweep)} (mean ± std over seeds)"
    legend_below(fig, handles, ncol=ncol, title=title)
    return fig


def knn_run_pages(sweep: SweepResults) -> list[Figure]:
    """Teacher vs student kNN per run, :data:`RUNS_PER_PAGE` panels a figure."""
    labels = point_labels(sweep)
    runs = list(_runs_with_metrics(sweep, "knn_teacher"))
    if not runs:
        fig, axes = figure_grid(1, 1, panel=(7.6, 3.4), gap=(0, 0),
                                 margins=(0.75, 0.2, 0.6, 0.4))
        ax = axes[0, 0]
        ax.set_title(f"k-NN per run — {_title_of(sweep)}")
        no_data(ax, "no run has kNN measurements yet")
        return [fig]
    pages = []
    for start in range(0, len(runs), RUNS_PER_PAGE):
        page = runs[start:start + RUNS_PER_PAGE]
        ncols = min(4, len(page))
        nrows = math.ceil(len(page) / ncols)
        fig, axes = figure_grid(nrows, ncols, panel=(3.4, 2.1), gap=(0.15, 0.95),
                                 margins=(0.75, 0.15, 0.95, 1.05), sharey=True)
        for ax, (index, rows) in zip(axes.flat, page, strict=False):
            _draw_run_knn(ax, sweep.runs.loc[index], str(labels.loc[index]), rows)
        for ax in list(axes.flat)[len(page):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("k-NN top-1 (%)")
        pages_total = math.ceil(len(runs) / RUNS_PER_PAGE)
        suffix = f" (page {start // RUNS_PER_PAGE + 1}/{pages_total})" if pages_total > 1 else ""
        hidden = len(sweep.runs) - len(runs)
        note = f"\n({hidden} run(s) without kNN measurements not shown)" if hidden else ""
        fig.suptitle(f"Teacher vs student k-NN per run — {_title_of(sweep)}{suffix}{note}")
        handles = [
            Line2D([], [], color="#1f77b4", label="teacher"),
            Line2D([], [], color="#ff7f0e", linestyle="--", label="student"),
            Line2D([], [], color="0.4", linestyle=":", label="teacher at random init"),
        ]
        if np.isfinite(sweep.runs["knn_pixels"].to_numpy(dtype=float)).any():
            handles.append(Line2D([], [], label="raw pixels", **PIXELS_STYLE))
        legend_below(fig, handles, ncol=len(handles))
        pages.append(fig)
    return pages


def _draw_run_knn(ax: Axes, run: pd.Series, label: str, rows: pd.DataFrame) -> None:
    epochs = rows["epoch"].to_numpy(dtype=float)
    ax.plot(epochs, rows["knn_teacher"].to_numpy(dtype=float) * 100.0, color="#1f77b4")
    if "knn_student" in rows.columns:
        ax.plot(epochs, rows["knn_student"].to_numpy(dtype=float) * 100.0, "--",
                color="#ff7f0e")
    init = run["knn_teacher_init"]
    if init is not None and np.isfinite(init):
        ax.axhline(float(init) * 100.0, color="0.4", linestyle=":", linewidth=1, gid=INIT_GID)
    pixels = run["knn_pixels"]
    if np.isfinite(pixels):
        ax.axhline(float(pixels) * 100.0, gid=PIXELS_GID, **{**PIXELS_STYLE, "linewidth": 1})
    seed = "" if pd.isna(run["seed"]) else f" · seed {run['seed']}"
    progress = ""
    planned = run["epochs_planned"]
    if not pd.isna(planned) and run["epochs_done"] < planned:
        ax.set_xlim(0, float(planned))  # show how far an unfinished run got
        progress = f" ({run['epochs_done']}/{int(planned)} epochs)"
    ax.set_title(f"{label}{seed}\n{run['state']}{progress}", fontsize=9)
    epoch_axis(ax)
    ax.xaxis.label.set_fontsize(9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def collapse_figure(sweep: SweepResults) -> Figure:
    """Teacher entropy and KL(teacher‖student) per run over epochs (Fig. 7)."""
    labels = point_labels(sweep)
    colors = point_colors(labels)
    ncol = legend_columns([*colors, "collapse starts"], 0.75 + 1.05 + 2 * 5.2 + 1.8, 5)
    bottom = 0.95 + legend_height(len(colors) + 1, ncol)
    fig, axes = figure_grid(1, 2, panel=(5.2, 3.9), gap=(1.8, 0),
                             margins=(0.75, 1.05, bottom, 0.75))
    entropy_ax, kl_ax = axes[0]
    runs = dict(_runs_with_metrics(sweep, "teacher_entropy"))
    annotated: list[str] = []
    for index, rows in runs.items():
        run = sweep.runs.loc[index]
        label = str(labels.loc[index])
        color = colors[label]
        epochs = rows["epoch"].to_numpy(dtype=float)
        entropy = rows["teacher_entropy"].to_numpy(dtype=float)
        kl = (rows["kl_teacher_student"].to_numpy(dtype=float)
              if "kl_teacher_student" in rows.columns else np.full(len(rows), np.nan))
        entropy_ax.plot(epochs, entropy, color=color, linewidth=1.5, alpha=0.9)
        kl_ax.plot(epochs, kl, color=color, linewidth=1.5, alpha=0.9)
        if run["collapse"] != HEALTHY:
            if label in annotated:
                _mark_collapse(entropy_ax, kl_ax, run, epochs, entropy, kl, color)
            else:
                _mark_collapse(entropy_ax, kl_ax, run, epochs, entropy, kl, color,
                               note=label if len(colors) > 1 else "", stack=len(annotated))
                annotated.append(label)
    _reference_lines(entropy_ax, kl_ax, sweep.runs["ln_k"])
    entropy_ax.set_title("Teacher target entropy h(Pt)")
    entropy_ax.set_ylabel("h(Pt) (nats)")
    kl_ax.set_title("KL(Pt ‖ Ps) between teacher and student")
    kl_ax.set_ylabel("KL (nats)")
    for ax in (entropy_ax, kl_ax):
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Collapse diagnostics (paper Fig. 7) — {_title_of(sweep)}")
    if not runs:
        no_data(entropy_ax, "no entropy measurements yet")
        no_data(kl_ax, "no KL measurements yet")
        return fig
    plotted_labels = {str(labels.loc[index]) for index in runs}
    handles: list[Any] = [Line2D([], [], color=color, linewidth=2.5, label=label)
                          for label, color in colors.items() if label in plotted_labels]
    if annotated:
        handles.append(Line2D([], [], color="black", marker="X", linestyle="none",
                              markersize=8, label="collapse starts"))
    legend_below(fig, handles, ncol=ncol, title=legend_title(sweep))
    return fig


def _mark_collapse(entropy_ax: Axes, kl_ax: Axes, run: pd.Series, epochs: np.ndarray,
                   entropy: np.ndarray, kl: np.ndarray, color: str, *,
                   note: str | None = None, stack: int = 0) -> None:
    """Mark where ``run``'s collapse starts; with ``note`` (None: marker only), label it.

    ``stack`` shifts the label down by that many lines, so labels of points that collapse at
    the same epoch do not overlap.
    """
    start = run["collapse_epoch"]
    if pd.isna(start):
        return
    position = int(np.searchsorted(epochs, float(start)))
    if position >= len(epochs):
        return
    kind = str(run["collapse"]).removeprefix("collapsed-")
    for ax, values in ((entropy_ax, entropy), (kl_ax, kl)):
        ax.plot([epochs[position]], [values[position]], marker="X", markersize=10,
                color=color, markeredgecolor="black", zorder=5)
    if note is not None:
        text = f"{note + ': ' if note else ''}{kind} collapse\nfrom epoch {int(start)}"
        high = entropy[position] > 0.5 * max(float(np.nanmax(entropy)), 1e-9)
        offset = (12, (-24 if high else 18) + (-26 if high else 26) * stack)
        entropy_ax.annotate(
            text, xy=(epochs[position], entropy[position]), xytext=offset,
            textcoords="offset points", fontsize=8, color=color,
            arrowprops={"arrowstyle": "->", "color": color},
            bbox=LABEL_BOX,
        )


def _reference_lines(entropy_ax: Axes, kl_ax: Axes, ln_ks: pd.Series) -> None:
    """Lines at 0 and ln K, labelled on a right-hand axis where no curve can hide them."""
    values = sorted({round(float(value), 6) for value in ln_ks.dropna()})
    entropy_ax.axhline(0.0, color="black", linewidth=1)
    for ln_k in values:
        entropy_ax.axhline(ln_k, color="black", linewidth=1, linestyle="--")
    if values:
        entropy_ax.set_ylim(-0.05 * max(values), max(values) * 1.1)
    labels = ["0: one-hot\n(one-dim)"] + [
        f"ln K = {ln_k:.2f}\n(K = {round(math.exp(ln_k))},\nuniform)" for ln_k in values]
    right = entropy_ax.secondary_yaxis("right")
    right.set_yticks([0.0, *values], labels=labels, fontsize=8)
    kl_ax.axhline(0.0, color="black", linewidth=1)
    kl_right = kl_ax.secondary_yaxis("right")
    kl_right.set_yticks([0.0], labels=["0: student\n= teacher"], fontsize=8)


def _final_by_point(sweep: SweepResults, x_key: str) -> pd.DataFrame:
    """Final teacher kNN (%) mean/std per (x_key value, other point keys), and x stats."""
    runs = sweep.runs[np.isfinite(sweep.runs["knn_teacher"].to_numpy(dtype=float))]
    others = [key for key in sweep.point_keys if key != x_key]
    series = (runs[others].astype(str).agg(", ".join, axis=1) if others
              else pd.Series("", index=runs.index))
    runs = runs.assign(_series=series.to_numpy(), _knn=runs["knn_teacher"] * 100.0)
    aggregations: dict[str, Any] = {
        "knn_mean": ("_knn", "mean"), "knn_std": ("_knn", "std"),
        "throughput": ("images_per_s", "mean"),
    }
    if "ref_knn" in runs.columns:
        aggregations["paper"] = ("ref_knn", "first")
    return runs.groupby(["_series", x_key], sort=True).agg(**aggregations).reset_index()


def _scaling_figure(sweep: SweepResults, x_key: str, *, x_column: str, x_label: str, title: str,
                    log_base: float) -> Figure:
    fig, axes = figure_grid(1, 1, panel=(7.0, 4.4), gap=(0, 0), margins=(0.75, 0.25, 0.6, 0.4))
    ax = axes[0, 0]
    points = _final_by_point(sweep, x_key)
    points = points[np.isfinite(points[x_column].to_numpy(dtype=float))]
    ax.set_xlabel(x_label)
    ax.set_ylabel("final teacher k-NN top-1 (%)")
    ax.set_title(f"{title} — {_title_of(sweep)}")
    ax.grid(alpha=0.3, which="both")
    if points.empty:
        no_data(ax, "no finished kNN measurements yet")
        return fig
    for color, (series, rows) in zip(PALETTE * 10, points.groupby("_series", sort=False),
                                     strict=False):
        rows = rows.sort_values(x_column)
        x = rows[x_column].to_numpy(dtype=float)
        suffix = f" ({series})" if series else ""
        ax.errorbar(x, rows["knn_mean"], yerr=np.nan_to_num(rows["knn_std"].to_numpy()),
                    marker="o", color=color, capsize=3,
                    label=f"measured, mean ± std over seeds{suffix}")
        if "paper" in rows.columns and rows["paper"].notna().any():
            ax.plot(x, rows["paper"], marker="s", linestyle=":", markerfacecolor="none",
                    color=color, label=f"paper k-NN (run.json reference){suffix}")
        for x_value, y_value, key_value in zip(x, rows["knn_mean"], rows[x_key], strict=True):
            ax.annotate(_point_tag(x_key, key_value), (x_value, y_value),
                        textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log", base=log_base)
    if x_column == x_key:  # tick at the swept values themselves, written out
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(points[x_column].astype(float)))))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.legend(fontsize=9)
    return fig


def _point_tag(x_key: str, value: Any) -> str:
    if x_key == PATCH_SIZE_KEY:
        return f"/{format_value(value)}"
    return f"bs {format_value(value)}"


def patch_size_figure(sweep: SweepResults) -> Figure | None:
    """kNN vs measured throughput per patch size (Fig. 5); None when patch size is not varied."""
    if PATCH_SIZE_KEY not in sweep.varied_keys:
        return None
    return _scaling_figure(sweep, PATCH_SIZE_KEY, x_column="throughput",
                           x_label="measured training throughput (images/s, log scale)",
                           title="k-NN vs throughput by patch size", log_base=10)


def batch_size_figure(sweep: SweepResults) -> Figure | None:
    """kNN vs batch size (Table 9); None when the batch size is not varied."""
    if BATCH_SIZE_KEY not in sweep.varied_keys:
        return None
    return _scaling_figure(sweep, BATCH_SIZE_KEY, x_column=BATCH_SIZE_KEY,
                           x_label="batch size (images, log₂ scale)",
                           title="k-NN vs batch size", log_base=2)


def sweep_figures(sweep: SweepResults) -> dict[str, Figure]:
    """Every figure that applies to ``sweep``, by file stem, in report order."""
    figures: dict[str, Figure] = {"knn_overlay": knn_overlay_figure(sweep)}
    pages = knn_run_pages(sweep)
    for number, page in enumerate(pages, start=1):
        figures[f"knn_runs_{number:02d}" if len(pages) > 1 else "knn_runs"] = page
    linear = linear_figure(sweep)
    if linear is not None:
        figures["linear"] = linear
    figures["collapse"] = collapse_figure(sweep)
    for name, builder in (("patch_size", patch_size_figure), ("batch_size", batch_size_figure),
                          ("attention", attention_figure)):
        figure = builder(sweep)
        if figure is not None:
            figures[name] = figure
    return figures


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``figure`` as ``out_dir/stem.png`` and ``.pdf``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in FORMATS:
        path = out_dir / f"{stem}.{extension}"
        figure.savefig(path, dpi=DPI if extension == "png" else None)
        paths.append(path)
    return paths


def write_plots(sweep: SweepResults, out_dir: Path) -> list[Path]:
    """Draw and save every figure of ``sweep`` under ``out_dir``; returns the files written."""
    written = []
    for stem, figure in sweep_figures(sweep).items():
        written += save_figure(figure, out_dir, stem)
    return written

