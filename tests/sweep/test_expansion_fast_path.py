"""Sweep expansion builds point 0 from the merged mapping and the other points by replacing their
axis values (`config.replace_leaves`). Every point must equal what `from_dict` of the fully
merged mapping gives, with the same run id, and a bad value at any point must be refused the
same way."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from dino_ablate import config as cfgmod
from dino_ablate.errors import ConfigError
from dino_ablate.sweep import load_sweep, semantic_hash

BASE = {"epochs": 2, "data": {"dataset": "digits", "image_size": 16, "global_crop_size": 16,
                              "local_crop_size": 8, "num_local_crops": 0},
        "model": {"arch": "vit_tiny_patch16_224", "patch_size": 4, "embed_dim": 64, "depth": 2,
                  "num_heads": 4}}
LOCAL = {"runtime": {"device": "cpu", "threads": 1}}
GRID = {
    # 0.07 is the RunConfig default: the point's semantic diff must drop the key again
    "loss.teacher_temp": [0.04, 0.07],
    # a tuple leaf, once equal to the default [0.4, 1.0]
    "data.global_crop_scale": [[0.4, 1.0], [0.3, 1]],
    # non-semantic: must not change the hash
    "runtime.threads": [1, 2],
}
ZIP = {"model.patch_size": [4, 2], "model.depth": [2, 3]}
SEEDS = [0, 5]


def _write(tmp_path: Path, grid: dict[str, Any] = GRID) -> Path:
    file = tmp_path / "fast.yaml"
    file.write_text(yaml.safe_dump({"name": "fast", "base": BASE,
                                    "profiles": {"local": {"config": LOCAL}},
                                    "grid": grid, "zip": ZIP, "seeds": SEEDS}))
    return file


def _merged(assignment: dict[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(BASE)
    for section, body in LOCAL.items():
        tree.setdefault(section, {}).update(body)
    for key, value in assignment.items():
        cfgmod.set_dotted(tree, key, value)
    return tree


def _flatten(combo: tuple[Any, ...]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for part in combo:
        out.extend(part if isinstance(part[0], tuple) else [part])
    return out


def test_every_point_equals_the_config_built_from_scratch(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path), "local")
    axes = [[(k, v) for v in vals] for k, vals in GRID.items()]
    axes.append([tuple((k, vals[i]) for k, vals in ZIP.items()) for i in range(2)])
    axes.append([("seed", s) for s in SEEDS])
    expected_points = {repr(sorted(_flatten(combo))) for combo in itertools.product(*axes)}
    assert len(sweep.points) == len(expected_points) == 32
    assert {repr(sorted(p.varied.items())) for p in sweep.points} == expected_points
    hashes = set()
    for point in sweep.points:
        assignment = dict(point.varied)
        expected = cfgmod.from_dict(_merged(assignment))
        assert point.config == expected, point.run_id
        digest = semantic_hash(cfgmod.to_dict(expected))
        assert point.run_id.endswith("_" + digest), (point.run_id, digest)
        hashes.add(digest)
    # runtime.threads is not part of the semantic hash (only of the readable name)
    assert len(hashes) == 16


def test_only_identity_keys_make_distinct_ids(tmp_path: Path) -> None:
    grid = {k: v for k, v in GRID.items() if k != "runtime.threads"}
    sweep = load_sweep(_write(tmp_path, grid), "local")
    assert len({p.run_id for p in sweep.points}) == len(sweep.points) == 16


@pytest.mark.parametrize("key,values,bad", [
    ("teacher.momentum", [0.99, 0.996, 1.5], "1.5 is out of range"),
    ("data.global_crop_scale", [[0.4, 1.0], [0.9, 0.2]], "must be [low, high]"),
    ("model.patch_size", [4, 32], "larger than data.global_crop_size"),
])
def test_a_bad_value_at_a_later_point_is_refused(tmp_path: Path, key: str, values: list[Any],
                                                 bad: str) -> None:
    file = _write(tmp_path, {key: values})
    if key == "model.patch_size":
        file.write_text(yaml.safe_dump({"name": "fast", "base": BASE,
                                        "profiles": {"local": {"config": LOCAL}},
                                        "grid": {key: values}}))
    with pytest.raises(ConfigError) as err:
        load_sweep(file, "local")
    text = str(err.value)
    assert bad in text and key in text and str(file) in text, text
    assert "point " in text and "point 0" not in text, text
