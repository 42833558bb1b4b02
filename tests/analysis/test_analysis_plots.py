"""analysis.plots: every figure is written, as PNG and PDF, also for partial sweeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis.figure_style import point_labels
from analysis.load import load_results
from analysis.plots import (
    batch_size_figure,
    collapse_figure,
    patch_size_figure,
    sweep_figures,
    write_plots,
)
from tests.analysis import synth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_written(paths: list[Path], stems: set[str]) -> None:
    assert {path.stem for path in paths} == stems
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000, path
        magic = PNG_MAGIC if path.suffix == ".png" else b"%PDF"
        assert path.read_bytes().startswith(magic), path
    assert {path.suffix for path in paths} == {".png", ".pdf"}


def test_teacher_sweep_figures(teacher_sweep: Path, tmp_path: Path) -> None:
    paths = write_plots(load_results(teacher_sweep), tmp_path / "plots")
    _assert_written(paths, {"knn_overlay", "knn_runs", "collapse"})
    assert len(paths) == 6


def test_collapse_figure_marks_collapses_and_reference_lines(teacher_sweep: Path) -> None:
    figure = collapse_figure(load_results(teacher_sweep))
    entropy_ax, kl_ax = figure.axes[:2]
    assert entropy_ax.get_ylabel() == "h(Pt) (nats)" and kl_ax.get_ylabel() == "KL (nats)"
    assert entropy_ax.get_xlabel() == "epoch"
    texts = [text.get_text() for text in entropy_ax.texts]
    # The reference lines are labelled on a right-hand axis.
    (right,) = entropy_ax.child_axes
    assert right.get_yticks().tolist() == pytest.approx([0.0, np.log(256)])
    right_labels = [label.get_text() for label in right.get_yticklabels()]
    assert right_labels[0].startswith("0: one-hot")
    assert right_labels[1].startswith("ln K = 5.55")
    assert [np.asarray(line.get_ydata())[0] for line in entropy_ax.get_lines()
            if line.get_linestyle() == "--"] == pytest.approx([np.log(256)])
    assert "student_copy: uniform collapse\nfrom epoch 4" in texts
    assert "previous_epoch: one-dim collapse\nfrom epoch 6" in texts
    # One X marker per collapsed run (6 of them) in each panel.
    markers = [line for line in entropy_ax.get_lines() if line.get_marker() == "X"]
    assert len(markers) == 6
    assert np.isclose(np.asarray(markers[0].get_ydata())[0], np.log(256), atol=1e-3)


def test_point_labels_follow_the_varied_key(teacher_sweep: Path) -> None:
    labels = point_labels(load_results(teacher_sweep))
    assert labels.iloc[0] == "ema" and labels.iloc[-1] == "not_started"


def test_patch_size_figure(tmp_path: Path) -> None:
    runs = [{"run_id": f"p{size}-s{seed}", "varied": {"model.patch_size": size}, "seed": seed,
             "reference": {"knn": ref},
             "records": synth.make_records(4, knn_teacher_final=knn, images_per_s=speed)}
            for size, speed, knn, ref in [(16, 1007.0, 0.70, 72.8), (8, 180.0, 0.74, 76.0)]
            for seed in range(2)]
    sweep = load_results(synth.write_sweep(tmp_path / "patch", runs))
    figure = patch_size_figure(sweep)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and "images/s" in ax.get_xlabel()
    assert "%" in ax.get_ylabel()
    assert sorted(text.get_text() for text in ax.texts) == ["/16", "/8"]
    assert batch_size_figure(sweep) is None
    assert "patch_size" in sweep_figures(sweep)


def test_batch_size_figure(tmp_path: Path) -> None:
    runs = [{"run_id": f"bs{size}", "varied": {"optim.batch_size": size},
             "reference": {"knn": ref}, "records": synth.make_records(3)}
            for size, ref in [(128, 57.9), (256, 59.1), (512, 59.6)]]
    sweep = load_results(synth.write_sweep(tmp_path / "bs", runs))
    figure = batch_size_figure(sweep)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert "batch size" in ax.get_xlabel()
    assert [tick for tick in ax.get_xticks()] == [128, 256, 512]
    assert patch_size_figure(sweep) is None


def test_only_pending_runs_still_give_figures(tmp_path: Path) -> None:
    runs = [{"run_id": "a", "varied": {"model.patch_size": 16}, "state": "pending"}]
    sweep = load_results(synth.write_sweep(tmp_path / "s", runs))
    paths = write_plots(sweep, tmp_path / "out")
    _assert_written(paths, {"knn_overlay", "knn_runs", "collapse", "patch_size"})
    figure = collapse_figure(sweep)
    assert any("no entropy" in text.get_text() for text in figure.axes[0].texts)


def test_many_runs_are_paged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analysis.plots.RUNS_PER_PAGE", 2)
    runs = [{"run_id": f"r{index}", "varied": {"x": index}, "records": synth.make_records(2)}
            for index in range(5)]
    figures = sweep_figures(load_results(synth.write_sweep(tmp_path / "s", runs)))
    assert [name for name in figures if name.startswith("knn_runs")] == [
        "knn_runs_01", "knn_runs_02", "knn_runs_03"]


def test_knn_overlay_draws_lines_when_knn_is_measured_every_other_epoch(tmp_path: Path) -> None:
    """eval.every_epochs 2 (the digits recipe): the epochs without kNN must not cut the curves
    into invisible single points (regression: the overlay came out empty)."""
    from analysis.plots import knn_overlay_figure

    runs = []
    for update, seed in (("ema", 0), ("ema", 1), ("student_copy", 0)):
        records = synth.make_records(10)
        for record in records:
            if record["epoch"] % 2:
                record["knn_teacher"] = record["knn_student"] = None
        runs.append({"run_id": f"update-{update}_seed-{seed}",
                     "varied": {"teacher.update": update}, "seed": seed, "records": records})
    sweep_dir = synth.write_sweep(tmp_path / "sweep", runs)
    ax = knn_overlay_figure(load_results(sweep_dir)).axes[0]
    # gid None: not one of the baseline reference lines (random-init teacher, raw pixels)
    curves = [line for line in ax.get_lines()
              if len(np.asarray(line.get_xdata())) > 0 and line.get_gid() is None]
    assert len(curves) == 4  # teacher and student of two points
    for line in curves:
        assert np.asarray(line.get_xdata()).tolist() == [2, 4, 6, 8, 10]
        assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()


def test_the_knn_overlays_legend_covers_no_curve(teacher_sweep: Path) -> None:
    """Its legend sits below the axes, outside the data area (regression: inside, at
    loc="best", it hid the EMA curves' first 40 epochs in the demo's report)."""
    from analysis.plots import knn_overlay_figure

    figure = knn_overlay_figure(load_results(teacher_sweep))
    ax = figure.axes[0]
    assert ax.get_legend() is None
    (legend,) = figure.legends
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y1 <= area.y0, (box, area)
    assert {text.get_text() for text in legend.get_texts()} >= {"teacher", "student", "ema"}


def test_a_legend_of_long_point_labels_stays_inside_the_figure(tmp_path: Path) -> None:
    """Points of two keys (the collapse study's `loss.normalization=centering,
    loss.sharpening=True`): the legend below takes fewer columns instead of running off the
    figure's sides (regression: 4 columns cut the labels at both edges)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from analysis.plots import knn_overlay_figure

    runs = [{"run_id": f"normalization-{norm}_sharpening-{sharp}", "seed": 0,
             "varied": {"loss.normalization": norm, "loss.sharpening": sharp},
             "records": synth.make_records(8)}
            for norm, sharp in (("centering", True), ("centering", False), ("none", True))]
    figure = knn_overlay_figure(load_results(synth.write_sweep(tmp_path / "sweep", runs)))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (legend,) = figure.legends
    box, whole = legend.get_window_extent(renderer), figure.bbox
    assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0, (box, whole)
    assert "loss.normalization=centering, loss.sharpening=True" in \
        {text.get_text() for text in legend.get_texts()}
