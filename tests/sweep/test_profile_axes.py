"""Per-profile axes: `profiles.<name>.grid/zip/seeds/baseline` replace the top-level kind."""

from __future__ import annotations

from pathlib import Path

import yaml

from dino_ablate.sweep import load_sweep

SWEEP = {
    "name": "axes",
    "base": {"epochs": 2, "data": {"dataset": "digits"}},
    "profiles": {
        "paper": {"resources": {"cpus_per_task": 1}},
        "local": {"resources": {"cpus_per_task": 1},
                  "grid": {"optim.batch_size": [32, 64]},
                  "seeds": None,
                  "baseline": {"optim.batch_size": 64}},
    },
    "grid": {"optim.batch_size": [128, 256], "teacher.momentum": [0.996, 0.99]},
    "seeds": [0, 1],
    "baseline": {"optim.batch_size": 256},
    "point_resources": [{"match": {"optim.batch_size": 32}, "resources": {"mem_gb": 3}}],
    "reference": [
        {"match": {"optim.batch_size": 128}, "knn": 57.9},
        {"match": {"optim.batch_size": 32}, "profiles": ["local"], "knn": 1.0},
        {"match": {"teacher.momentum": 0.99}, "linear": 2.0},
    ],
}


def _write(tmp_path: Path) -> Path:
    file = tmp_path / "axes.yaml"
    file.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return file


def test_profile_axes_replace_the_whole_kind(tmp_path: Path) -> None:
    file = _write(tmp_path)
    paper, local = load_sweep(file, "paper"), load_sweep(file, "local")
    assert len(paper.points) == 2 * 2 * 2
    assert paper.varied_keys == ("optim.batch_size", "teacher.momentum", "seed")
    # the local grid drops teacher.momentum too, and `seeds: null` removes the seeds axis
    assert [p.varied for p in local.points] == [{"optim.batch_size": 32},
                                                {"optim.batch_size": 64}]
    assert [p.config.seed for p in local.points] == [0, 0]


def test_selectors_of_another_profile_match_nothing_here(tmp_path: Path) -> None:
    file = _write(tmp_path)
    paper, local = load_sweep(file, "paper"), load_sweep(file, "local")
    assert [p.reference for p in local.points] == [{"knn": 1.0}, {}]
    assert [p.resources.mem_gb for p in local.points] == [3, None]
    assert {p.reference.get("knn") for p in paper.points} == {57.9, None}
    assert all("linear" in p.reference for p in paper.points if p.varied["teacher.momentum"]
               == 0.99)
    assert [local.point(r).varied for r in local.baseline] == [{"optim.batch_size": 64}]
    assert len(paper.baseline) == 4
    assert all(paper.point(r).varied["optim.batch_size"] == 256 for r in paper.baseline)
