"""The `claims:` block of sweep files: every shipped file's claims load for both profiles, and
the points each claim resolves to (the bad-input cases are tests/sweep/bad/claim_*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dino_ablate.contract.claims import KINDS, ConfigError, read_claims, sweep_claims
from dino_ablate.contract.points import profile_axes
from dino_ablate.sweep import plan_sweep, read_sweep_file
from tests.sweep.test_reproduction import REPRODUCED

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted(f for f in (ROOT / "sweeps").glob("*.yaml") if f.stem != "local_smoke")
#: the claims tests/sweep/test_reproduction.py asserts by id
ASSERTED = {name: set(ids) for name, ids in REPRODUCED.items()}


def test_there_are_nine_studies() -> None:
    assert len(STUDIES) == 9


@pytest.mark.parametrize("file", STUDIES, ids=[f.stem for f in STUDIES])
@pytest.mark.parametrize("profile", ["paper", "local"])
def test_every_shipped_sweep_states_claims_valid_for_both_profiles(file: Path,
                                                                   profile: str) -> None:
    claims = plan_sweep(file, profile).claims
    assert len(claims) >= 2, f"{file.name} [{profile}] states {len(claims)} claims"
    assert len({c.id for c in claims}) == len(claims)
    assert all(c.source and c.paper for c in claims)
    assert ASSERTED.get(file.stem, set()) <= {c.id for c in claims}
    assert "full_dino_learns" in {c.id for c in claims}  # every study checks that DINO learns
    # analysis reads the same claims back from the file, without the sweep loader
    assert read_claims(file, profile) == claims


def test_every_kind_is_used_by_a_shipped_sweep() -> None:
    used = {c.kind for f in STUDIES for p in ("paper", "local") for c in plan_sweep(f, p).claims}
    assert used == set(KINDS)


@pytest.mark.parametrize("file", sorted((ROOT / "sweeps").glob("*.yaml")),
                         ids=lambda f: f.stem)
def test_analysis_reads_the_axes_the_sweep_loader_expands(file: Path) -> None:
    raw = read_sweep_file(file)
    for profile in raw["profiles"]:
        planned = [list(axis) for axis in plan_sweep(file, profile).axes]
        assert profile_axes(raw, profile, str(file)) == planned


def test_monotone_follows_each_profiles_own_axis_in_ascending_order() -> None:
    file = ROOT / "sweeps" / "patch_size.yaml"
    for profile, sizes in (("paper", [5, 8, 16]), ("local", [2, 4])):
        [claim] = [c for c in plan_sweep(file, profile).claims
                   if c.id == "knn_rises_as_patch_shrinks"]
        assert [p["model.patch_size"] for p in claim.points] == sizes
        assert claim.labels == tuple(f"patch_size={s}" for s in sizes)


def test_flat_without_points_ranges_over_every_point() -> None:
    file = ROOT / "sweeps" / "batch_size.yaml"
    [claim] = [c for c in plan_sweep(file, "local").claims if c.id == "batch_size_small_effect"]
    assert [p["optim.batch_size"] for p in claim.points] == [2, 4, 8, 16]


def _raw(**extra: Any) -> dict[str, Any]:
    return {"profiles": {"paper": {}, "local": {"grid": {"optim.batch_size": [32, 64]}}},
            "grid": {"optim.batch_size": [128, 256]}, **extra}


def _claim(**keys: Any) -> dict[str, Any]:
    return {"id": "c", "kind": "above_init", "source": "Table 9", "paper": 57.9, **keys}


def test_a_claim_restricted_to_a_profile_is_checked_there_only() -> None:
    claims = sweep_claims(_raw(claims=[_claim(point={"optim.batch_size": 128},
                                              profiles=["paper"])]), "s.yaml")
    assert [c.id for c in claims["paper"]] == ["c"] and claims["local"] == ()
    with pytest.raises(ConfigError, match=r"claims\[0\]\.point\.optim\.batch_size: 128 is not a "
                                          r"value of this axis in profile local"):
        sweep_claims(_raw(claims=[_claim(point={"optim.batch_size": 128})]), "s.yaml")


def test_a_profiles_own_claims_replace_the_top_level_ones() -> None:
    raw = _raw(claims=[_claim(point={"optim.batch_size": 128}, profiles=["paper"])])
    raw["profiles"]["local"]["claims"] = [_claim(id="own", point={"optim.batch_size": 32})]
    claims = sweep_claims(raw, "s.yaml")
    assert [c.id for c in claims["local"]] == ["own"] and [c.id for c in claims["paper"]] == ["c"]
    raw["claims"][0]["profiles"] = ["paper", "local"]
    with pytest.raises(ConfigError, match=r"claims\[0\]\.profiles: profile local gives its own"):
        sweep_claims(raw, "s.yaml")
    del raw["claims"][0]["profiles"]
    raw["profiles"]["paper"]["claims"] = []
    with pytest.raises(ConfigError, match=r"claims: every profile gives its own `claims`"):
        sweep_claims(raw, "s.yaml")


def test_monotone_with_other_axes_takes_the_points_around_the_baseline() -> None:
    raw = {"profiles": {"local": {}}, "baseline": {"optim.batch_size": 64, "seed": 0},
           "grid": {"optim.batch_size": [64, 32], "teacher.update": ["ema", "student_copy"]},
           "seeds": [0, 1],
           "claims": [{"id": "m", "kind": "monotone", "axis": "teacher.update", "source": "s",
                       "paper": "x", "direction": "increasing"}]}
    with pytest.raises(ConfigError, match="needs two or more distinct numbers"):
        sweep_claims(raw, "s.yaml")
    raw["claims"][0]["axis"] = "optim.batch_size"
    raw["baseline"] = {"teacher.update": "ema"}
    [claim] = sweep_claims(raw, "s.yaml")["local"]
    assert claim.points == ({"optim.batch_size": 32, "teacher.update": "ema"},
                            {"optim.batch_size": 64, "teacher.update": "ema"})
    assert claim.labels == ("batch_size=32", "batch_size=64")


def test_a_point_selector_may_name_a_seed_or_leave_the_seeds_out() -> None:
    raw = {"profiles": {"local": {}}, "grid": {"teacher.update": ["ema", "student_copy"]},
           "seeds": [0, 1], "claims": [_claim(point={"teacher.update": "ema", "seed": 1})]}
    [claim] = sweep_claims(raw, "s.yaml")["local"]
    assert claim.points == ({"teacher.update": "ema", "seed": 1},)
    raw["claims"] = [_claim(point={})]
    with pytest.raises(ConfigError, match=r"claims\[0\]\.point: \{\} selects 2 points of profile "
                                          r"local \(they differ in teacher.update\)"):
        sweep_claims(raw, "s.yaml")


def test_read_claims_names_a_profile_the_file_lacks(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("profiles: {local: {}}\ngrid: {teacher.update: [ema, student_copy]}\n")
    assert read_claims(file, "local") == ()
    with pytest.raises(ConfigError, match="no profile 'paper'"):
        read_claims(file, "paper")


def test_point_baseline_names_each_profiles_own_baseline_point() -> None:
    raw = _raw(claims=[_claim(point="baseline")], baseline={"optim.batch_size": 256})
    raw["profiles"]["local"]["baseline"] = {"optim.batch_size": 32}
    claims = sweep_claims(raw, "s.yaml")
    assert claims["paper"][0].points == ({"optim.batch_size": 256},)
    assert claims["local"][0].points == ({"optim.batch_size": 32},)
    del raw["baseline"]
    with pytest.raises(ConfigError, match=r"claims\[0\]\.point: 'baseline' but profile paper has "
                                          r"no `baseline`"):
        sweep_claims(raw, "s.yaml")


def test_seeds_zipped_with_an_axis_give_its_points_their_own_seeds() -> None:
    # batch 4 and 8 run seeds 0-2, batch 2 and 16 seed 0 only (batch_size.yaml's local profile)
    raw = {"profiles": {"local": {}}, "baseline": {"optim.batch_size": 16},
           "zip": {"optim.batch_size": [2, 4, 4, 4, 8, 8, 8, 16],
                   "seed": [0, 0, 1, 2, 0, 1, 2, 0]},
           "claims": [{"id": "m", "kind": "monotone", "axis": "optim.batch_size",
                       "direction": "increasing", "source": "s", "paper": "x"},
                      {"id": "f", "kind": "flat", "within": 2.5, "source": "s", "paper": "x"},
                      _claim(point={"optim.batch_size": 4}), _claim(id="b", point="baseline")]}
    monotone, flat, point, baseline = sweep_claims(raw, "s.yaml")["local"]
    sizes = [{"optim.batch_size": b} for b in (2, 4, 8, 16)]
    assert monotone.points == tuple(sizes) and flat.points == tuple(sizes)
    assert monotone.labels == ("batch_size=2", "batch_size=4", "batch_size=8", "batch_size=16")
    assert point.points == ({"optim.batch_size": 4},)
    assert baseline.points == ({"optim.batch_size": 16},)
    raw["claims"] = [{"id": "o", "kind": "order", "source": "s", "paper": "x",
                      "points": [{"optim.batch_size": 4}, {"optim.batch_size": 4, "seed": 1}]}]
    with pytest.raises(ConfigError, match=r"claims\[0\]\.points\[1\]: selects the same point as "
                                          r"claims\[0\]\.points\[0\]"):
        sweep_claims(raw, "s.yaml")
