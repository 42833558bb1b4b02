"""Golden expansion of every sweep file in sweeps/, for every profile.

A golden file is `tests/sweep/golden/<file stem>.<profile>.json`. A new sweep file gets its
goldens with `UPDATE_GOLDEN=1 pytest tests/sweep/test_sweep_golden.py`; review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dino_ablate.sweep import expansion_record, load_sweep, read_sweep_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def _cases() -> list[tuple[Path, str]]:
    cases = []
    for file in SWEEP_FILES:
        for profile in read_sweep_file(file).get("profiles", {}):
            cases.append((file, profile))
    return cases


@pytest.mark.parametrize(("file", "profile"), _cases(),
                         ids=[f"{f.stem}.{p}" for f, p in _cases()])
def test_expansion_matches_golden(file: Path, profile: str) -> None:
    record = expansion_record(load_sweep(file, profile))
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    golden = GOLDEN / f"{file.stem}.{profile}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"no golden for {file.name} [{profile}]: run with UPDATE_GOLDEN=1"
    assert json.loads(golden.read_text()) == json.loads(text), \
        f"expansion of {file.name} [{profile}] changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_every_golden_has_a_sweep_file() -> None:
    expected = {f"{f.stem}.{p}.json" for f, p in _cases()}
    stale = sorted(p.name for p in GOLDEN.glob("*.json") if p.name not in expected)
    assert not stale, f"golden files without a sweep file/profile: {stale}"


def test_local_smoke_shape() -> None:
    """The smoke sweep the launcher tests rely on: 3 points, one DDP point of 2 tasks."""
    sweep = load_sweep(ROOT / "sweeps" / "local_smoke.yaml", "local")
    assert len(sweep.points) == 3
    assert [p.resources.world_size for p in sweep.points] == [2, 1, 1]
    assert all(p.config.data.dataset == "digits" for p in sweep.points)
    assert len(sweep.baseline) == 1 and sweep.baseline[0] == sweep.points[0].run_id
    assert sweep.points[0].reference == {"knn": 72.8, "linear": 76.1}
    ids = {p.run_id for p in sweep.points}
    assert ids.isdisjoint(p.run_id for p in load_sweep(sweep.file, "paper").points)
