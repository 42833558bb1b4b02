"""analysis.tables and analysis.table_format: values, aggregation and the three formats."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import load_results
from analysis.sweepdir import NotASweepDirectory
from analysis.table_format import latex_escape, render, to_csv, to_latex, to_markdown
from analysis.tables import AblationTable, build_table, combined_state
from tests.analysis import synth


@pytest.fixture()
def table(teacher_sweep: Path) -> AblationTable:
    return build_table(load_results(teacher_sweep))


def _row(table: AblationTable, point: str) -> pd.Series:
    return table.frame.set_index("teacher.update").loc[point]


def test_one_row_per_point_in_sweep_order(table: AblationTable) -> None:
    assert table.frame["teacher.update"].tolist() == [
        "ema", "student_copy", "previous_epoch", "momentum_only", "not_started"]
    assert table.point_keys == ("teacher.update",) and table.reference_keys == ("knn",)


def test_seed_aggregation_mean_and_sample_std(table: AblationTable) -> None:
    ema = _row(table, "ema")
    # Teacher finals 70, 72, 74 %: mean 72, sample std 2; student 66, 68, 70 %.
    assert ema["teacher_knn_mean"] == pytest.approx(72.0)
    assert ema["teacher_knn_std"] == pytest.approx(2.0)
    assert ema["student_knn_mean"] == pytest.approx(68.0)
    assert ema["student_knn_std"] == pytest.approx(2.0)
    assert (ema["n_runs"], ema["n_aggregated"], ema["seeds"]) == (3, 3, "0,1,2")
    assert ema["paper_knn"] == pytest.approx(72.8)


def test_difference_to_baseline(table: AblationTable) -> None:
    assert bool(_row(table, "ema")["is_baseline"])
    assert _row(table, "ema")["delta_baseline"] == pytest.approx(0.0)
    # student_copy teacher finals 10, 12, 14 % -> 12 - 72 = -60 points.
    assert _row(table, "student_copy")["delta_baseline"] == pytest.approx(-60.0)
    assert _row(table, "previous_epoch")["delta_baseline"] == pytest.approx(52.0 - 72.0)


def test_a_seeds_axis_in_varied_is_aggregated_not_a_point_key(tmp_path: Path) -> None:
    """The launchers write a `seeds` axis into run.json's `varied` (`{"head.out_dim": 4,
    "seed": 1}`): the table still has one row per point, its seeds aggregated (this crashed:
    "cannot insert seed, already exists")."""
    runs = [{"run_id": f"k{k}_seed-{seed}", "varied": {"head.out_dim": k, "seed": seed},
             "seed": seed, "records": synth.make_records(3, knn_teacher_final=final)}
            for k, finals in ((4, (0.70, 0.72, 0.74)), (16, (0.60, 0.60, 0.66)))
            for seed, final in enumerate(finals)]
    sweep = load_results(synth.write_sweep(tmp_path / "s", runs))
    assert sweep.varied_keys == ("head.out_dim",)
    assert sweep.runs["seed"].tolist() == [0, 1, 2, 0, 1, 2]
    frame = build_table(sweep).frame.set_index("head.out_dim")
    assert frame.index.tolist() == [4, 16]
    assert frame.loc[4, "teacher_knn_mean"] == pytest.approx(72.0)
    assert frame.loc[4, "teacher_knn_std"] == pytest.approx(2.0)
    assert frame.loc[16, "teacher_knn_mean"] == pytest.approx(62.0)
    assert frame.loc[16, "teacher_knn_std"] == pytest.approx(12 ** 0.5)
    assert frame.loc[16, "seeds"] == "0,1,2"
    assert "72.00 ± 2.00" in to_markdown(build_table(sweep))


def test_runs_of_an_earlier_expansion_are_not_seeds_of_a_point(tmp_path: Path) -> None:
    """A run directory that sweep.json no longer lists (the file's earlier recipe) shares the
    point's varied values; it was averaged in as a second seed 0 (65.0 ± 35.4 here)."""
    runs = [{"run_id": f"{update}_new", "varied": {"teacher.update": update},
             "records": synth.make_records(3, knn_teacher_final=final)}
            for update, final in (("ema", 0.90), ("previous_epoch", 0.70))]
    root = synth.write_sweep(tmp_path / "s", runs)
    synth.write_run(root / "runs" / "ema_old", varied={"teacher.update": "ema"},
                    records=synth.make_records(3, knn_teacher_final=0.40))
    sweep = load_results(root)
    # not read at all: no seed in the table, no curve in the plots (they read `frame`)
    assert sweep.runs["run_id"].tolist() == ["ema_new", "previous_epoch_new"]
    assert set(sweep.frame["run_id"]) == {"ema_new", "previous_epoch_new"}
    row = build_table(sweep).frame.set_index("teacher.update").loc["ema"]
    assert row["n_runs"] == 1 and row["teacher_knn_mean"] == pytest.approx(90.0)


def test_listed_runs_are_matched_by_directory_name_as_the_claims_match_them(
        tmp_path: Path) -> None:
    """A run.json whose run_id is not its directory's name (a directory renamed or copied
    back under another name) is still the listed run (it was dropped from the table, while
    the claims counted it)."""
    runs = [{"run_id": name, "varied": {"teacher.update": name},
             "records": synth.make_records(3, knn_teacher_final=0.9)} for name in ("a", "b")]
    root = synth.write_sweep(tmp_path / "s", runs)
    run_json = root / "runs" / "a" / "run.json"
    run_json.write_text(run_json.read_text().replace('"run_id": "a"', '"run_id": "other"'))
    assert '"other"' in run_json.read_text()
    frame = build_table(load_results(root, use_cache=False)).frame
    assert frame["teacher.update"].tolist() == ["a", "b"] and frame["n_runs"].tolist() == [1, 1]


def test_a_sweep_none_of_whose_listed_runs_has_a_directory_is_refused(tmp_path: Path) -> None:
    """Only runs of an earlier expansion are there: they were shown as the sweep's table."""
    runs = [{"run_id": "new", "varied": {"teacher.update": "ema"},
             "records": synth.make_records(3, knn_teacher_final=0.9)}]
    root = synth.write_sweep(tmp_path / "s", runs)
    (root / "runs" / "new").rename(root / "runs" / "old")
    with pytest.raises(NotASweepDirectory, match=r"sweep.json: lists 1 run\(s\) and none of "
                       r"them has a run directory under runs/ yet; the 1 there are from an "
                       r"earlier expansion"):
        load_results(root, use_cache=False)


def test_named_baseline_moves_the_reference(tmp_path: Path) -> None:
    runs = [{"run_id": f"p{index}", "varied": {"optim.batch_size": size},
             "records": synth.make_records(3, knn_teacher_final=final)}
            for index, (size, final) in enumerate([(128, 0.50), (1024, 0.60)])]
    table = build_table(load_results(synth.write_sweep(tmp_path / "s", runs, baseline="p1")))
    assert table.frame["delta_baseline"].tolist() == pytest.approx([-10.0, 0.0])
    assert table.frame["is_baseline"].tolist() == [False, True]


def test_states_and_collapse_override(table: AblationTable) -> None:
    assert _row(table, "ema")["state"] == "done"
    assert _row(table, "student_copy")["state"] == "collapsed-uniform"
    assert _row(table, "previous_epoch")["state"] == "collapsed-one-dim"
    assert _row(table, "momentum_only")["state"] == "running"
    assert _row(table, "not_started")["state"] == "pending"


def test_partial_and_pending_points(table: AblationTable) -> None:
    running = _row(table, "momentum_only")
    # No finished run: the running run's latest kNN (epoch 5 of a run heading to 60 %).
    assert running["n_aggregated"] == 1 and running["teacher_knn_mean"] > 0
    assert (running["epochs_done"], running["epochs_planned"]) == (5, 10)
    pending = _row(table, "not_started")
    assert pending["n_aggregated"] == 0 and pd.isna(pending["teacher_knn_mean"])
    assert pd.isna(pending["compute_hours"]) and pending["epochs_done"] == 0


def test_finished_seeds_are_preferred_over_running_ones(tmp_path: Path) -> None:
    runs = [
        {"run_id": "s0", "varied": {"x": 1}, "seed": 0,
         "records": synth.make_records(4, knn_teacher_final=0.8)},
        {"run_id": "s1", "varied": {"x": 1}, "seed": 1, "state": "running", "planned_epochs": 4,
         "records": synth.make_records(4, knn_teacher_final=0.8)[:1]},
        {"run_id": "s2", "varied": {"x": 1}, "seed": 2, "state": "diverged",
         "records": synth.make_records(4, knn_teacher_final=0.2)},
    ]
    row = build_table(load_results(synth.write_sweep(tmp_path / "s", runs))).frame.iloc[0]
    assert row["teacher_knn_mean"] == pytest.approx(80.0) and row["n_aggregated"] == 1
    assert row["state"] == "done×1, diverged×1, running×1"
    assert row["n_runs"] == 3


def test_compute_hours_sum_epoch_seconds(table: AblationTable) -> None:
    # 3 seeds x 10 epochs x 360 s = 3 h.
    assert _row(table, "ema")["compute_hours"] == pytest.approx(3.0)


def test_combined_state_orders_states() -> None:
    assert combined_state(["running", "done", "done"]) == "done×2, running×1"
    assert combined_state(["failed"]) == "failed"


def test_markdown(table: AblationTable) -> None:
    text = to_markdown(table)
    lines = text.splitlines()
    assert lines[0].startswith("| teacher.update | seeds | teacher kNN (%) | student kNN (%)")
    assert "paper kNN (%)" in lines[0] and "Δ teacher vs baseline (pp)" in lines[0]
    assert len(lines) == 2 + 5
    # The runs predate the linear probe: linear and raw-pixel cells are missing (–).
    assert "| ema | 3 | 72.00 ± 2.00 | 68.00 ± 2.00 | 72.80 | – | – | 30.00 | – | – | – " \
        "| +42.00 pp | baseline |" in text
    assert "| done | 10/10 | 3.00 |" in lines[2]
    assert "| student_copy | 3 | 12.00 ± 2.00 |" in text
    assert "| -60.00 (▼ below random init) |" in text
    assert lines[-1].startswith("| not_started | 0/1 | – | – | – |")
    assert lines[-1].endswith("| – | pending | 0/? | – |")


def test_markdown_escapes_pipes(tmp_path: Path) -> None:
    run = synth.write_run(tmp_path / "r", varied={"loss.kind": "a|b"},
                          records=synth.make_records(2))
    assert r"| a\|b |" in to_markdown(build_table(load_results(run)))


def test_latex(table: AblationTable) -> None:
    text = to_latex(table)
    assert text.startswith(r"\begin{table}") and text.rstrip().endswith(r"\end{table}")
    assert r"\begin{tabular}{l" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"teacher kNN (\%)" in text and r"$\Delta$ teacher" in text
    assert r"ema & 3 & 72.00 $\pm$ 2.00 & 68.00 $\pm$ 2.00 & 72.80 & -- & -- & 30.00" in text
    assert r"student\_copy" in text and r"teacher\_update" in text
    assert "±" not in text and "–" not in text and "Δ" not in text and "▼" not in text
    body = [line for line in text.splitlines() if line.endswith(r"\\")]
    assert all(line.count(" & ") == body[0].count(" & ") for line in body)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a_b", r"a\_b"),
        ("50%", r"50\%"),
        ("x & y", r"x \& y"),
        ("$1#{}", r"\$1\#\{\}"),
        ("~^", r"\textasciitilde{}\textasciicircum{}"),
        ("back\\slash", r"back\textbackslash{}slash"),
        ("1.0 ± 0.5", r"1.0 $\pm$ 0.5"),
    ],
)
def test_latex_escape(raw: str, escaped: str) -> None:
    assert latex_escape(raw) == escaped


def test_csv_reads_back(table: AblationTable) -> None:
    back = pd.read_csv(io.StringIO(to_csv(table)))
    assert back["teacher.update"].tolist() == table.frame["teacher.update"].tolist()
    assert back["teacher_knn_mean"].iloc[0] == pytest.approx(72.0)
    assert back["teacher_knn_std"].iloc[0] == pytest.approx(2.0)
    assert back["paper_knn"].iloc[1] == pytest.approx(0.1)
    assert back["state"].iloc[2] == "collapsed-one-dim"
    assert {"delta_baseline", "compute_hours", "n_runs", "is_baseline"} <= set(back.columns)


def test_render_rejects_unknown_format(table: AblationTable) -> None:
    assert render(table, "md") == to_markdown(table)
    with pytest.raises(ValueError, match="html"):
        render(table, "html")


def test_sweep_without_varied_keys_is_one_point(tmp_path: Path) -> None:
    runs = [{"run_id": f"seed{seed}", "seed": seed,
             "records": synth.make_records(3, knn_teacher_final=0.5 + 0.1 * seed)}
            for seed in range(2)]
    table = build_table(load_results(synth.write_sweep(tmp_path / "s", runs, name="repro")))
    assert len(table.frame) == 1
    assert table.frame["teacher_knn_mean"].iloc[0] == pytest.approx(55.0)
    assert to_markdown(table).startswith("| sweep | seeds |")
