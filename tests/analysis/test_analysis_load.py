"""analysis.load: the tidy DataFrame, run layouts, partial runs and the cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis.load
from analysis import parallel
from analysis.cache import cache_path
from analysis.load import load_frame, load_results
from analysis.run_reader import read_run
from analysis.sweepdir import NotASweepDirectory
from tests.analysis import synth


def test_frame_columns_and_values(teacher_sweep: Path) -> None:
    frame = load_frame(teacher_sweep)
    for column in ("run_id", "sweep", "teacher.update", "seed", "epoch", "loss",
                   "teacher_entropy", "kl_teacher_student", "knn_teacher", "knn_student",
                   "images_per_s", "epoch_seconds", "ref_knn", "state", "ln_k",
                   "knn_teacher_init", "knn_student_init"):
        assert column in frame.columns, column
    ema = frame[frame["run_id"] == "ema-s1"]
    assert ema["epoch"].tolist() == list(range(1, 11))
    assert ema["knn_teacher"].iloc[-1] == pytest.approx(0.72)
    assert set(ema["teacher.update"]) == {"ema"} and set(ema["seed"]) == {1}
    assert set(ema["ref_knn"]) == {72.8} and set(ema["sweep"]) == {"teacher_update"}
    assert ema["ln_k"].iloc[0] == pytest.approx(math.log(256))
    assert ema["knn_teacher_init"].iloc[0] == pytest.approx(0.30)


def test_states_partial_truncated_and_pending_runs(teacher_sweep: Path) -> None:
    sweep = load_results(teacher_sweep)
    states = dict(zip(sweep.runs["run_id"], sweep.runs["state"], strict=True))
    assert states["ema-s0"] == "done"
    assert states["student_copy-s0"] == "collapsed-uniform"
    assert states["previous_epoch-s2"] == "collapsed-one-dim"
    assert states["momentum_only-s0"] == "running"
    assert states["not_started-s0"] == "pending"

    running = sweep.frame[sweep.frame["run_id"] == "momentum_only-s0"]
    assert running["epoch"].tolist() == [1, 2, 3, 4, 5]  # the half-written 6th line is dropped
    # No summary.json: ln K comes from config.yaml's head.out_dim.
    assert running["ln_k"].iloc[0] == pytest.approx(math.log(256))
    run = sweep.runs.set_index("run_id").loc["momentum_only-s0"]
    assert bool(run["truncated_last_line"]) and run["epochs_planned"] == 10

    pending = sweep.frame[sweep.frame["run_id"] == "not_started-s0"]
    assert len(pending) == 1 and np.isnan(pending["epoch"].iloc[0])
    assert pending["state"].iloc[0] == "pending"

    collapsed = sweep.runs.set_index("run_id").loc["student_copy-s1"]
    assert collapsed["collapse"] == "collapsed-uniform" and collapsed["collapse_epoch"] == 4


def test_baseline_is_named_or_first(tmp_path: Path) -> None:
    runs = [{"run_id": name, "varied": {"x": index}, "records": synth.make_records(2)}
            for index, name in enumerate(["b", "a"])]
    assert load_results(synth.write_sweep(tmp_path / "s1", runs)).baseline_run_id == "b"
    named = synth.write_sweep(tmp_path / "s2", runs, baseline="a")
    assert load_results(named).baseline_run_id == "a"
    unlisted = synth.write_sweep(tmp_path / "s3", runs, with_sweep_json=False)
    assert load_results(unlisted).baseline_run_id == "a"  # no sweep.json: sorted by name


def test_single_run_directory_and_directory_of_runs(tmp_path: Path) -> None:
    run = synth.write_run(tmp_path / "runs_here" / "r1", records=synth.make_records(3),
                          with_run_json=False, seed=7)
    synth.write_run(tmp_path / "runs_here" / "r2", records=synth.make_records(4),
                    with_run_json=False)
    single = load_results(run)
    assert single.runs["run_id"].tolist() == ["r1"] and single.runs["seed"].tolist() == [7]
    several = load_results(tmp_path / "runs_here")
    assert several.runs["run_id"].tolist() == ["r1", "r2"]
    assert several.grouped_by_run and several.point_keys == ["run_id"]
    assert len(several.frame) == 7


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_not_a_sweep_names_the_path(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "file":
        path.write_text("x")
    elif make == "empty":
        (path / "sub").mkdir(parents=True)
    with pytest.raises(NotASweepDirectory, match=str(path)):
        load_results(path)


def test_cache_is_reused_and_refreshed(teacher_sweep: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_results(teacher_sweep)
    assert cache_path(teacher_sweep).is_file()

    def fail(_: Path) -> None:
        raise AssertionError("a cached run was parsed again")

    monkeypatch.setattr(parallel, "read_run", fail)
    second = load_results(teacher_sweep)
    pd.testing.assert_frame_equal(first.frame, second.frame)
    monkeypatch.undo()

    # A run that wrote an epoch is read again; the others come from the cache.
    parsed: list[str] = []

    def spy(run_dir: Path) -> object:
        parsed.append(run_dir.name)
        return read_run(run_dir)

    monkeypatch.setattr(parallel, "read_run", spy)
    metrics = teacher_sweep / "runs" / "ema-s0" / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write(json.dumps({"epoch": 11, "knn_teacher": 0.9}) + "\n")
    third = load_results(teacher_sweep)
    assert parsed == ["ema-s0"]
    assert len(third.frame) == len(first.frame) + 1
    assert third.runs.set_index("run_id").loc["ema-s0", "knn_teacher"] == pytest.approx(0.9)


def test_corrupt_cache_is_ignored(teacher_sweep: Path) -> None:
    expected = load_results(teacher_sweep, use_cache=False).frame
    assert not cache_path(teacher_sweep).exists()
    cache_path(teacher_sweep).parent.mkdir()
    cache_path(teacher_sweep).write_bytes(b"not a pickle")
    pd.testing.assert_frame_equal(load_results(teacher_sweep).frame, expected)


def test_parallel_read_matches_serial(teacher_sweep: Path) -> None:
    run_dirs = sorted((teacher_sweep / "runs").iterdir())
    serial = parallel.read_runs(run_dirs, workers=1)
    pooled = parallel.read_runs(run_dirs, workers=2)
    assert [run.run_id for run in pooled] == [run.run_id for run in serial]
    for a, b in zip(serial, pooled, strict=True):
        assert a.state == b.state and a.columns.keys() == b.columns.keys()
        for key in a.columns:
            np.testing.assert_array_equal(a.columns[key], b.columns[key])


def test_varied_lists_become_groupable_text(tmp_path: Path) -> None:
    run = synth.write_run(tmp_path / "r", varied={"data.global_crop_scale": [0.4, 1.0]},
                          records=synth.make_records(2))
    sweep = analysis.load.load_results(run)
    assert sweep.runs["data.global_crop_scale"].tolist() == ["[0.4, 1.0]"]


def test_failed_and_diverged_runs_keep_their_state_and_reason(tmp_path: Path) -> None:
    runs = [
        {"run_id": "f", "varied": {"x": 1}, "state": "failed",
         "records": synth.make_records(3, collapse="uniform", collapse_at=1)},
        {"run_id": "d", "varied": {"x": 2}, "state": "diverged",
         "records": synth.make_records(2)},
    ]
    sweep = load_results(synth.write_sweep(tmp_path / "s", runs))
    by_id = sweep.runs.set_index("run_id")
    # Collapse overrides only "done": a failed run is reported for what stopped it.
    assert by_id.loc["f", "state"] == "failed" and by_id.loc["f", "collapse"] == "collapsed-uniform"
    assert by_id.loc["f", "status_reason"] == "synthetic failed"
    assert by_id.loc["d", "state"] == "diverged"


def test_runs_without_sweep_json_sort_numbers_as_numbers(tmp_path: Path) -> None:
    runs = [{"run_id": name, "varied": {"x": name}, "records": synth.make_records(1)}
            for name in ("run10", "run2", "run1")]
    sweep = load_results(synth.write_sweep(tmp_path / "s", runs, with_sweep_json=False))
    assert sweep.runs["run_id"].tolist() == ["run1", "run2", "run10"]


def test_launcher_style_sweep_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The launchers write `runs` as mappings with a run_id and `baseline` as a list."""
    import json

    from analysis.sweepdir import locate
    from tests.analysis.synth import write_sweep

    root = write_sweep(tmp_path / "sw", [{"run_id": "a"}, {"run_id": "b"}], baseline="a")
    meta = json.loads((root / "sweep.json").read_text())
    meta["runs"] = [{"run_id": "b", "varied": {}}, {"run_id": "a", "varied": {}}]
    meta["baseline"] = ["b"]
    (root / "sweep.json").write_text(json.dumps(meta))
    layout = locate(root)
    assert [p.name for p in layout.run_dirs] == ["b", "a"]
    assert layout.named_baseline == "b"
