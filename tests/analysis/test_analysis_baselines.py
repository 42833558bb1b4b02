"""Baselines, linear probe and collapse diagnostics in every table format, and in the figures.

The synthetic sweep mirrors the small-scale collapse study that motivated them: the healthy
baseline ends *below* its random-init teacher (45.8 % vs 46.3 %) and both collapsed points end
above it (51.4 % / 51.1 %), so "+5.6 pp vs baseline" must not read as an improvement.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.load import load_results
from analysis.plots import knn_overlay_figure, knn_run_pages, sweep_figures
from analysis.probe_plots import INIT_GID, PIXELS_GID, linear_figure
from analysis.report import ablation_table_html, runs_table_html
from analysis.table_format import BELOW_INIT, to_csv, to_latex, to_markdown
from analysis.tables import AblationTable, build_table
from tests.analysis import synth

OUT_DIM = 65536
LN_K = math.log(OUT_DIM)  # 11.09, the paper's uniform-collapse entropy
KEY = "loss.normalization"
BASELINES = {"knn_pixels": 0.40, "linear_pixels": 0.55, "linear_student_init": 0.47}
#: (point, collapse, teacher kNN per seed, reference)
POINTS: tuple[tuple[str, str | None, tuple[float, float], dict[str, float]], ...] = (
    ("both", None, (0.450, 0.466), {"knn": 69.7, "linear": 76.1}),
    ("centering_only", "uniform", (0.514, 0.514), {"teacher_entropy": 11.09,
                                                   "kl_teacher_student": 0.0}),
    ("none", "one-dim", (0.511, 0.511), {}),
)
#: random-init teacher linear probe per seed (mean 49.0 %)
INIT_LINEAR = (0.48, 0.50)
#: final teacher / student linear probe per seed of every point
LINEAR = ((0.50, 0.44), (0.52, 0.46))


@pytest.fixture()
def collapse_sweep(tmp_path: Path) -> Path:
    """Three points x two seeds with every new key; the probe runs every 3 epochs and last."""
    runs = []
    for point, collapse, finals, reference in POINTS:
        for seed in range(2):
            records = synth.make_records(
                10, out_dim=OUT_DIM, knn_teacher_final=finals[seed], collapse=collapse,
                collapse_at=4, linear_teacher_final=LINEAR[seed][0],
                linear_student_final=LINEAR[seed][1], linear_every=3)
            runs.append({
                "run_id": f"{point}-s{seed}", "varied": {KEY: point}, "seed": seed,
                "reference": reference, "records": records, "out_dim": OUT_DIM,
                "init": (0.463, 0.45),
                "baselines": {**BASELINES, "linear_teacher_init": INIT_LINEAR[seed]},
                "linear_protocol": "fast",
            })
    return synth.write_sweep(tmp_path / "collapse", runs, name="centering_sharpening")


@pytest.fixture()
def table(collapse_sweep: Path) -> AblationTable:
    return build_table(load_results(collapse_sweep))


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The Markdown table as one header -> cell mapping per row."""
    lines = [line.strip("| ").split(" | ") for line in text.strip().splitlines()]
    return [dict(zip(lines[0], cells, strict=True)) for cells in lines[2:]]


def _latex_rows(text: str) -> list[dict[str, str]]:
    lines = [line.removesuffix(r" \\").split(" & ") for line in text.splitlines()
             if line.endswith(r"\\")]
    return [dict(zip(lines[0], cells, strict=True)) for cells in lines[1:]]


def _healthy_final() -> tuple[float, float, float]:
    """Entropy, batch entropy and KL of synth.make_records's healthy run at epoch 10."""
    entropy = 0.4 * LN_K + 0.1 * math.cos(10)
    return entropy, min(LN_K, entropy + 1.0), 0.4 + 0.05 * math.sin(10)


# ---- loading -------------------------------------------------------------------------------


def test_runs_frame_reads_the_new_keys(collapse_sweep: Path) -> None:
    runs = load_results(collapse_sweep).runs.set_index("run_id")
    run = runs.loc["both-s1"]
    assert run["linear_teacher"] == pytest.approx(0.52)  # the last (epoch 10) probe
    assert run["linear_student"] == pytest.approx(0.46)
    assert run["linear_teacher_init"] == pytest.approx(0.50)
    assert run["linear_student_init"] == pytest.approx(0.47)
    assert (run["knn_pixels"], run["linear_pixels"]) == pytest.approx((0.40, 0.55))
    assert run["linear_protocol"] == "fast"
    entropy, batch_entropy, kl = _healthy_final()
    assert run["final_teacher_entropy"] == pytest.approx(entropy)
    assert run["final_teacher_batch_entropy"] == pytest.approx(batch_entropy)
    assert run["final_kl_teacher_student"] == pytest.approx(kl)
    assert runs.loc["centering_only-s0", "final_teacher_entropy"] == pytest.approx(LN_K - 1e-4)


def test_epoch_frame_has_probe_and_baselines(collapse_sweep: Path) -> None:
    frame = load_results(collapse_sweep).frame
    run = frame[frame["run_id"] == "both-s0"]
    measured = run.loc[run["linear_teacher"].notna(), "epoch"].tolist()
    assert measured == [3, 6, 9, 10]
    assert set(run["knn_pixels"]) == {0.40} and set(run["linear_teacher_init"]) == {0.48}


def test_summary_values_are_used_when_files_lack_them(tmp_path: Path) -> None:
    """No probe in metrics.jsonl but a final one in summary.json; no init.json but its copies
    in summary.json (the trainer copies them there)."""
    run_dir = synth.write_run(tmp_path / "r", records=synth.make_records(3),
                              baselines={"knn_pixels": 0.2})
    (run_dir / "init.json").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(linear_teacher=0.61, linear_student=0.6)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_results(run_dir).runs.iloc[0]
    assert (run["linear_teacher"], run["linear_student"]) == pytest.approx((0.61, 0.6))
    assert run["knn_pixels"] == pytest.approx(0.2) and run["knn_teacher_init"] == 0.30


# ---- the table frame -----------------------------------------------------------------------


def test_point_values_by_hand(table: AblationTable) -> None:
    frame = table.frame.set_index(KEY)
    both = frame.loc["both"]
    assert both["teacher_knn_mean"] == pytest.approx(45.8)
    assert both["teacher_linear_mean"] == pytest.approx(51.0)
    assert both["teacher_linear_std"] == pytest.approx(math.sqrt(2.0))
    assert both["student_linear_mean"] == pytest.approx(45.0)
    assert both["paper_linear"] == pytest.approx(76.1)
    assert both["init_teacher_knn"] == pytest.approx(46.3)
    assert both["init_teacher_linear"] == pytest.approx(49.0)
    assert (both["pixels_knn"], both["pixels_linear"]) == pytest.approx((40.0, 55.0))
    assert both["delta_init"] == pytest.approx(-0.5)
    entropy, batch_entropy, kl = _healthy_final()
    assert both["final_teacher_entropy_mean"] == pytest.approx(entropy)
    assert both["final_teacher_batch_entropy_mean"] == pytest.approx(batch_entropy)
    assert both["final_kl_teacher_student_mean"] == pytest.approx(kl)
    assert both["ln_k"] == pytest.approx(LN_K)
    uniform = frame.loc["centering_only"]
    assert uniform["delta_baseline"] == pytest.approx(5.6)
    assert uniform["delta_init"] == pytest.approx(5.1)
    assert uniform["final_teacher_entropy_mean"] == pytest.approx(LN_K - 1e-4)
    assert uniform["final_kl_teacher_student_mean"] == pytest.approx(1e-4)
    assert uniform["paper_teacher_entropy"] == pytest.approx(11.09)


def test_below_init_flags_exactly_the_point_below_its_random_init(table: AblationTable) -> None:
    assert table.frame["below_init"].tolist() == [True, False, False]
    assert table.show_collapse


# ---- the four formats ----------------------------------------------------------------------

NEW_HEADERS = (
    "teacher linear (%)", "student linear (%)", "paper linear (%)",
    "random-init teacher kNN (%)", "random-init teacher linear (%)",
    "raw-pixel kNN (%)", "raw-pixel linear (%)", "teacher kNN vs random init",
    "teacher entropy (nats)", "paper teacher entropy (nats)", "batch entropy (nats)",
    "KL (nats)", "paper KL (nats)", "ln K",
)


def test_markdown_columns_values_and_marker(table: AblationTable) -> None:
    rows = _markdown_rows(to_markdown(table))
    headers = list(rows[0])
    assert set(NEW_HEADERS) <= set(headers)
    # Each paper value sits right after the measured one.
    for measured, paper in (("student linear (%)", "paper linear (%)"),
                            ("teacher entropy (nats)", "paper teacher entropy (nats)"),
                            ("KL (nats)", "paper KL (nats)")):
        assert headers.index(paper) == headers.index(measured) + 1
    both, uniform, one_dim = rows
    assert both["teacher linear (%)"] == "51.00 ± 1.41"
    assert both["student linear (%)"] == "45.00 ± 1.41"
    assert both["paper linear (%)"] == "76.10"
    assert both["random-init teacher kNN (%)"] == "46.30"
    assert both["random-init teacher linear (%)"] == "49.00"
    assert (both["raw-pixel kNN (%)"], both["raw-pixel linear (%)"]) == ("40.00", "55.00")
    assert both["teacher kNN vs random init"] == f"{BELOW_INIT} (-0.50 pp)"
    assert both["Δ teacher vs baseline (pp)"] == f"baseline, {BELOW_INIT}"
    assert uniform["teacher kNN vs random init"] == "+5.10 pp"
    # The collapses are not ranked above a baseline that is itself below random init silently.
    assert uniform["Δ teacher vs baseline (pp)"] == "+5.60 (baseline below random init)"
    assert one_dim["Δ teacher vs baseline (pp)"] == "+5.30 (baseline below random init)"
    assert uniform["teacher entropy (nats)"] == f"{LN_K - 1e-4:.2f} ± 0.00"
    assert uniform["paper teacher entropy (nats)"] == "11.09"
    assert (uniform["KL (nats)"], uniform["paper KL (nats)"]) == ("0.00 ± 0.00", "0.00")
    assert uniform["ln K"] == "11.09"
    assert both["paper teacher entropy (nats)"] == "–"
    marked = [row[KEY] for row in rows if "▼" in row["teacher kNN vs random init"]]
    assert marked == ["both"]


def test_a_point_below_init_says_so_in_its_delta(tmp_path: Path) -> None:
    runs = [{"run_id": name, "varied": {"x": name}, "init": (init, 0.3),
             "records": synth.make_records(3, knn_teacher_final=final)}
            for name, final, init in (("a", 0.60, 0.30), ("b", 0.70, 0.75))]
    rows = _markdown_rows(to_markdown(build_table(load_results(
        synth.write_sweep(tmp_path / "s", runs)))))
    assert rows[0]["Δ teacher vs baseline (pp)"] == "baseline"
    assert rows[1]["Δ teacher vs baseline (pp)"] == f"+10.00 ({BELOW_INIT})"
    assert rows[1]["teacher kNN vs random init"] == f"{BELOW_INIT} (-5.00 pp)"


def test_latex_columns_and_marker(table: AblationTable) -> None:
    text = to_latex(table)
    rows = _latex_rows(text)
    assert {r"teacher linear (\%)", r"paper linear (\%)", r"random-init teacher kNN (\%)",
            r"raw-pixel kNN (\%)", r"raw-pixel linear (\%)", "teacher entropy (nats)",
            "paper KL (nats)", "ln K"} <= set(rows[0])
    marker = r"$\bigtriangledown$ below random init (-0.50 pp)"
    assert [row["teacher kNN vs random init"] == marker for row in rows] == [True, False, False]
    assert rows[0][r"teacher linear (\%)"] == r"51.00 $\pm$ 1.41"
    assert "▼" not in text


def test_csv_columns_and_values(table: AblationTable) -> None:
    back = pd.read_csv(io.StringIO(to_csv(table)))
    expected = {
        "teacher_linear_mean", "teacher_linear_std", "student_linear_mean", "student_linear_std",
        "paper_linear", "init_teacher_knn", "init_teacher_linear", "pixels_knn",
        "pixels_linear", "delta_init", "below_init", "final_teacher_entropy_mean",
        "final_teacher_entropy_std", "final_teacher_batch_entropy_mean",
        "final_kl_teacher_student_mean", "paper_teacher_entropy", "paper_kl_teacher_student",
        "ln_k", "linear_protocol",
    }
    assert expected <= set(back.columns)
    assert back["below_init"].tolist() == [True, False, False]
    assert back["teacher_linear_mean"].tolist() == pytest.approx([51.0] * 3)
    assert back["init_teacher_knn"].tolist() == pytest.approx([46.3] * 3)
    assert back["pixels_linear"].tolist() == pytest.approx([55.0] * 3)
    assert back["ln_k"].iloc[0] == pytest.approx(LN_K)
    assert back["linear_protocol"].tolist() == ["fast"] * 3


def test_html_columns_and_marker(table: AblationTable, collapse_sweep: Path) -> None:
    text = ablation_table_html(table)
    headers = re.findall(r"<th>(.*?)</th>", text)
    assert {"teacher linear (%)", "paper linear (%)", "raw-pixel kNN (%)",
            "random-init teacher linear (%)", "KL (nats)", "ln K"} <= set(headers)
    rows = re.findall(r"<tr( class=\"[^\"]*\")?>(.*?)</tr>", text)[1:]
    assert [attribute for attribute, _ in rows] == [' class="baseline below-init"', "", ""]
    assert [BELOW_INIT in cells for _, cells in rows] == [True, False, False]
    runs = runs_table_html(load_results(collapse_sweep))
    assert "teacher linear (%)" in runs and "random-init teacher kNN (%)" in runs
    assert "<td class=\"num\">52.00</td>" in runs  # both-s1's final teacher probe


# ---- which columns are shown ---------------------------------------------------------------


def test_old_runs_without_the_new_keys_render_missing(teacher_sweep: Path) -> None:
    table = build_table(load_results(teacher_sweep))
    rows = _markdown_rows(to_markdown(table))
    ema = rows[0]
    for header in ("teacher linear (%)", "student linear (%)", "random-init teacher linear (%)",
                   "raw-pixel kNN (%)", "raw-pixel linear (%)"):
        assert ema[header] == "–", header
    assert "paper linear (%)" not in ema  # the sweep does not reference it
    assert ema["random-init teacher kNN (%)"] == "30.00"  # init.json has had the kNN
    pending = rows[-1]
    assert pending["teacher kNN vs random init"] == "–"
    back = pd.read_csv(io.StringIO(to_csv(table)))
    assert back["teacher_linear_mean"].isna().all() and back["pixels_knn"].isna().all()
    assert "▼" in ablation_table_html(table)  # student_copy ends below its random init


def test_collapse_columns_only_for_collapse_related_sweeps(small_sweep: Path) -> None:
    table = build_table(load_results(small_sweep))
    assert not table.show_collapse
    headers = list(_markdown_rows(to_markdown(table))[0])
    assert "teacher entropy (nats)" not in headers and "ln K" not in headers
    assert "teacher linear (%)" in headers and "raw-pixel kNN (%)" in headers
    assert "final_teacher_entropy_mean" in to_csv(table).splitlines()[0]


def test_a_collapsed_run_shows_the_collapse_columns(tmp_path: Path) -> None:
    runs = [{"run_id": "a", "varied": {"x": 1}, "records": synth.make_records(5)},
            {"run_id": "b", "varied": {"x": 2},
             "records": synth.make_records(5, collapse="uniform")}]
    table = build_table(load_results(synth.write_sweep(tmp_path / "s", runs)))
    assert table.show_collapse and "| KL (nats) |" in to_markdown(table)


# ---- figures -------------------------------------------------------------------------------


def _levels(ax: Any, gid: str) -> list[float]:
    return [float(np.asarray(line.get_ydata())[0]) for line in ax.get_lines()
            if line.get_gid() == gid]


def test_knn_figures_draw_the_baselines(collapse_sweep: Path) -> None:
    sweep = load_results(collapse_sweep)
    ax = knn_overlay_figure(sweep).axes[0]
    assert _levels(ax, INIT_GID) == pytest.approx([46.3])
    assert _levels(ax, PIXELS_GID) == pytest.approx([40.0])
    labels = [text.get_text() for text in ax.texts]
    assert "random-init teacher 46.3 %" in labels and "raw pixels 40.0 %" in labels
    panel = knn_run_pages(sweep)[0].axes[0]
    assert _levels(panel, INIT_GID) == pytest.approx([46.3])
    assert _levels(panel, PIXELS_GID) == pytest.approx([40.0])


def test_random_init_lines_per_point_when_they_differ(tmp_path: Path) -> None:
    runs = [{"run_id": f"p{index}", "varied": {"x": index}, "init": (init, 0.3),
             "records": synth.make_records(3)} for index, init in enumerate((0.2, 0.25))]
    ax = knn_overlay_figure(load_results(synth.write_sweep(tmp_path / "s", runs))).axes[0]
    assert sorted(_levels(ax, INIT_GID)) == pytest.approx([20.0, 25.0])
    assert _levels(ax, PIXELS_GID) == []  # the runs predate the raw-pixel baseline


def test_linear_figure(collapse_sweep: Path, teacher_sweep: Path) -> None:
    sweep = load_results(collapse_sweep)
    figure = linear_figure(sweep)
    assert figure is not None and "linear" in sweep_figures(sweep)
    ax = figure.axes[0]
    assert ax.get_ylabel() == "linear-probe top-1 (%)"
    curves = [line for line in ax.get_lines() if line.get_gid() is None]
    assert len(curves) == 6  # teacher and student of three points
    assert np.asarray(curves[0].get_xdata()).tolist() == [3, 6, 9, 10]
    assert np.asarray(curves[0].get_ydata())[-1] == pytest.approx(51.0)
    assert _levels(ax, INIT_GID) == pytest.approx([49.0])
    assert _levels(ax, PIXELS_GID) == pytest.approx([55.0])
    old = load_results(teacher_sweep)
    assert linear_figure(old) is None and "linear" not in sweep_figures(old)


def test_a_probe_run_once_per_run_is_drawn_per_point_not_over_epochs(tmp_path: Path) -> None:
    """The default probe runs once, at the end: the figure puts the points on the x axis (a
    teacher and a student marker each, the seeds' std as an error bar) instead of one column
    of dots over a lone epoch."""
    runs = []
    for update, seed, teacher, student in (("ema", 0, 0.90, 0.88), ("ema", 1, 0.94, 0.92),
                                           ("student_copy", 0, 0.70, 0.70)):
        records = synth.make_records(10, linear_teacher_final=teacher,
                                     linear_student_final=student, linear_every=100)
        runs.append({"run_id": f"update-{update}_seed-{seed}", "seed": seed,
                     "varied": {"teacher.update": update}, "records": records})
    figure = linear_figure(load_results(synth.write_sweep(tmp_path / "sweep", runs)))
    assert figure is not None
    ax = figure.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["ema", "student_copy"]
    assert ax.get_xlabel() == "teacher.update (probed at epoch 10)"
    markers = {(round(float(np.asarray(line.get_xdata())[0]), 2), line.get_marker()):
               float(np.asarray(line.get_ydata())[0])
               for line in ax.get_lines() if line.get_marker() in ("o", "s")}
    assert markers == pytest.approx({(-0.12, "o"): 92.0, (0.12, "s"): 90.0,
                                     (0.88, "o"): 70.0, (1.12, "s"): 70.0})
    assert {line.get_marker(): line.get_fillstyle() for line in ax.get_lines()
            if line.get_marker() in ("o", "s")} == {"o": "full", "s": "none"}
    # ema's two seeds: an error bar of their std (90 and 94 % -> 2.83 points) on each marker
    bars = [segments for collection in ax.collections
            for segments in collection.get_segments()]
    heights = sorted(round(float(seg[1][1] - seg[0][1]), 2) for seg in bars)
    assert heights == pytest.approx([2 * 2.83, 2 * 2.83], abs=0.02)


def test_seeds_probed_at_different_epochs_say_so_and_per_epoch_probes_stay_curves(
        tmp_path: Path) -> None:
    """A seed that ended early (collapse_stop) was probed at its own last epoch: the point's
    tick names the range. A sweep with a run probed at several epochs keeps the epoch axis."""
    def sweep(name: str, lengths: tuple[int, int], every: int) -> Path:
        runs = [{"run_id": f"update-ema_seed-{seed}", "seed": seed,
                 "varied": {"teacher.update": "ema"},
                 "records": synth.make_records(n, linear_teacher_final=0.9,
                                               linear_every=every)}
                for seed, n in enumerate(lengths)]
        return synth.write_sweep(tmp_path / name, runs)

    figure = linear_figure(load_results(sweep("early", (6, 10), 100)))
    assert figure is not None
    ax = figure.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["ema\n(epochs 6-10)"]
    assert ax.get_xlabel() == "teacher.update (probed at each run's last probed epoch)"
    figure = linear_figure(load_results(sweep("curves", (10, 10), 5)))
    assert figure is not None
    ax = figure.axes[0]
    assert ax.get_xlabel() == "epoch"
    curves = [line for line in ax.get_lines() if line.get_gid() is None]
    assert np.asarray(curves[0].get_xdata()).tolist() == [5, 10]
