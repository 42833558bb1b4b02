"""Fixtures for the analysis tests: synthetic sweeps written per docs/run_directory.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis import synth


@pytest.fixture()
def teacher_sweep(tmp_path: Path) -> Path:
    """Three points x three seeds, plus a running and a pending run.

    - ``ema`` (baseline, paper 72.8): healthy, final teacher kNN 0.70 / 0.72 / 0.74 per seed,
      student 0.66 / 0.68 / 0.70; 10 epochs of 360 s each (1 h per run).
    - ``student_copy`` (paper 0.1): uniform collapse from epoch 4, teacher 0.10 / 0.12 / 0.14.
    - ``previous_epoch`` (paper 66.6): one-dimensional collapse from epoch 6.
    - ``momentum_only``: one running run (5 of 10 epochs, no summary.json, truncated last line).
    - ``not_started``: one pending run (run.json only).
    """
    runs = []
    for update, reference, collapse, collapse_at, base in (
        ("ema", 72.8, None, 1, 0.70),
        ("student_copy", 0.1, "uniform", 4, 0.10),
        ("previous_epoch", 66.6, "one-dim", 6, 0.50),
    ):
        for seed in range(3):
            records = synth.make_records(
                10,
                knn_teacher_final=base + 0.02 * seed,
                knn_student_final=base - 0.04 + 0.02 * seed,
                collapse=collapse,
                collapse_at=collapse_at,
                epoch_seconds=360.0,
            )
            runs.append({
                "run_id": f"{update}-s{seed}",
                "varied": {"teacher.update": update},
                "seed": seed,
                "reference": {"knn": reference},
                "records": records,
            })
    runs.append({
        "run_id": "momentum_only-s0",
        "varied": {"teacher.update": "momentum_only"},
        "seed": 0,
        "records": synth.make_records(10, knn_teacher_final=0.60)[:5],
        "state": "running",
        "planned_epochs": 10,
        "truncate_last_line": True,
    })
    runs.append({
        "run_id": "not_started-s0",
        "varied": {"teacher.update": "not_started"},
        "seed": 0,
        "state": "pending",
    })
    return synth.write_sweep(tmp_path / "teacher_sweep", runs, name="teacher_update")


@pytest.fixture()
def small_sweep(tmp_path: Path) -> Path:
    """Two points, one seed each, three epochs: for tests that only need some output."""
    runs = [{"run_id": f"p{index}", "varied": {"teacher.momentum": momentum},
             "reference": {"knn": 72.8}, "records": synth.make_records(3)}
            for index, momentum in enumerate((0.996, 0.99))]
    return synth.write_sweep(tmp_path / "small_sweep", runs, name="small")
