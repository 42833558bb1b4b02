"""analysis.claims: every claim kind holds, fails and is undecided (within the seeds' spread,
a missing run, an unfinished run) on synthetic run directories."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from analysis.claims import ClaimResult, current_runs, evaluate, summary_line
from analysis.run_reader import RunData, read_run
from analysis.sweepdir import locate
from dino_ablate.contract.claims import Claim, sweep_claims
from tests.analysis import synth

LN_K = math.log(256)
EPOCHS = 10


def claims_of(claims: list[dict[str, Any]], **axes: Any) -> tuple[Claim, ...]:
    raw = {"profiles": {"local": {}}, "claims": claims, **axes}
    return sweep_claims(raw, "test.yaml")["local"]


class Runs:
    """Synthetic run directories under tmp_path, read back as RunData."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: list[RunData] = []

    def add(self, varied: dict[str, Any], *, seed: int = 0, state: str = "done",
            records: Sequence[dict[str, Any]] | None = None, init: float = 0.30,
            **record_args: Any) -> None:
        run_id = "_".join(f"{k}-{v}" for k, v in varied.items()) + f"_s{seed}"
        rows = list(records) if records is not None else synth.make_records(EPOCHS,
                                                                            **record_args)
        path = synth.write_run(self.root / run_id, varied=varied, seed=seed, state=state,
                               records=rows, init=(init, init), planned_epochs=EPOCHS)
        self.runs.append(read_run(path))


@pytest.fixture
def runs(tmp_path: Path) -> Runs:
    return Runs(tmp_path)


def one(claims: tuple[Claim, ...], runs: Runs) -> ClaimResult:
    [result] = evaluate(claims, runs.runs)
    return result


# --------------------------------------------------------------------------------------------
# order and monotone

ORDER = claims_of([{"id": "ema_wins", "kind": "order", "source": "Fig. 6 right",
                    "points": [{"teacher.update": "ema"}, {"teacher.update": "previous_epoch"}],
                    "paper": {"ema": 72.8, "previous_epoch": 66.6}}],
                  grid={"teacher.update": ["ema", "previous_epoch", "student_copy"]},
                  seeds=[0, 1, 2])


def test_order_holds_with_seeds_aggregated(runs: Runs) -> None:
    for seed, knn in enumerate((0.70, 0.71, 0.72)):
        runs.add({"teacher.update": "ema"}, seed=seed, knn_teacher_final=knn)
    runs.add({"teacher.update": "previous_epoch"}, knn_teacher_final=0.60)
    result = one(ORDER, runs)
    assert result.verdict == "holds"
    assert result.line() == (
        "[holds] ema_wins (Fig. 6 right): teacher kNN update=ema 71.0 ± 1.0 (3 seeds) > "
        "update=previous_epoch 60.0 (1 seed); paper ema 72.8, previous_epoch 66.6")
    assert result.values["points"][0] == {"label": "update=ema", "mean": pytest.approx(71.0),
                                          "std": pytest.approx(1.0), "seeds": 3}


def test_order_fails_when_reversed(runs: Runs) -> None:
    runs.add({"teacher.update": "ema"}, knn_teacher_final=0.50)
    runs.add({"teacher.update": "previous_epoch"}, knn_teacher_final=0.60)
    result = one(ORDER, runs)
    assert result.verdict == "fails" and "50.0 (1 seed) < update=previous_epoch" in result.line()


LINEAR_ORDER = claims_of([{"id": "ema_wins_linear", "kind": "order", "source": "Fig. 6 right",
                           "metric": "linear_teacher", "paper": {"ema": 74.0},
                           "points": [{"teacher.update": "ema"},
                                      {"teacher.update": "previous_epoch"}]}],
                         grid={"teacher.update": ["ema", "previous_epoch"]})


@pytest.mark.parametrize(("ema", "verdict"), [(0.80, "holds"), (0.50, "fails")])
def test_a_linear_claim_reads_the_paper_probe_from_the_summary(
        runs: Runs, ema: float, verdict: str) -> None:
    """Under the paper probe protocol metrics.jsonl holds no linear_* value (the probe runs
    once, after training): the claim reads summary.json's, as the table does (it was
    undecided: no finite linear_teacher)."""
    for update, value in (("ema", ema), ("previous_epoch", 0.60)):
        runs.add({"teacher.update": update}, knn_teacher_final=0.7)
        summary_file = Path(runs.runs[-1].run_dir) / "summary.json"
        summary = json.loads(summary_file.read_text())
        summary.update(linear_protocol="paper", linear_teacher=value, linear_student=value)
        summary_file.write_text(json.dumps(summary))
        runs.runs[-1] = read_run(Path(runs.runs[-1].run_dir))
        assert "linear_teacher" not in json.loads(
            (Path(runs.runs[-1].run_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    result = one(LINEAR_ORDER, runs)
    assert result.verdict == verdict, result.line()
    assert f"update=ema {100 * ema:.1f}" in result.line(), result.line()


def test_order_within_the_seed_spread_is_undecided(runs: Runs) -> None:
    for seed, knn in enumerate((0.60, 0.70, 0.80)):  # 70 ± 10
        runs.add({"teacher.update": "ema"}, seed=seed, knn_teacher_final=knn)
    runs.add({"teacher.update": "previous_epoch"}, knn_teacher_final=0.66)  # 4 points below
    result = one(ORDER, runs)
    assert result.verdict == "undecided"
    assert "70.0 ± 10.0 (3 seeds) ≈ update=previous_epoch 66.0 (1 seed)" in result.measured


# Same seeds at both points: the test is on the per-seed differences. Seeds 0-2 of `ema` at
# 70 / 80 / 90 (a seed effect of 10 points, the unpaired spread); the differences and their
# sample standard deviation by hand.
@pytest.mark.parametrize(("other", "verdict", "difference"), [
    ((68, 77, 89), "holds", "+2.0 ± 1.0"),       # 2, 3, 1: mean 2 > std 1
    ((72, 83, 91), "fails", "-2.0 ± 1.0"),       # -2, -3, -1
    ((65, 85, 88), "undecided", "+0.7 ± 5.1"),   # 5, -5, 2: mean 0.67, std sqrt(79/3) = 5.13
])
def test_order_with_shared_seeds_tests_the_same_seed_differences(
        runs: Runs, other: tuple[int, ...], verdict: str, difference: str) -> None:
    for seed, (a, b) in enumerate(zip((70, 80, 90), other, strict=True)):
        runs.add({"teacher.update": "ema"}, seed=seed, knn_teacher_final=a / 100)
        runs.add({"teacher.update": "previous_epoch"}, seed=seed, knn_teacher_final=b / 100)
    result = one(ORDER, runs)
    assert result.verdict == verdict, result.line()
    symbol = {"holds": ">", "fails": "<", "undecided": "≈"}[verdict]
    assert f"80.0 ± 10.0 (3 seeds) {symbol} update=previous_epoch" in result.measured
    assert f"[same-seed difference {difference}]" in result.measured
    [pair] = result.values["paired"]
    assert pair["between"] == [0, 1] and pair["seeds"] == 3


def test_order_with_different_seeds_compares_the_larger_spread(runs: Runs) -> None:
    for seed, (a, b) in enumerate(((70, 68), (80, 77), (90, 89))):
        runs.add({"teacher.update": "ema"}, seed=seed, knn_teacher_final=a / 100)
        if seed < 2:  # previous_epoch lacks seed 2: no pairing, the spread is ema's 10 points
            runs.add({"teacher.update": "previous_epoch"}, seed=seed, knn_teacher_final=b / 100)
    result = one(ORDER, runs)
    assert result.verdict == "undecided" and "same-seed" not in result.measured


def test_order_with_a_missing_or_unfinished_run_is_undecided(runs: Runs) -> None:
    runs.add({"teacher.update": "ema"}, knn_teacher_final=0.70)
    result = one(ORDER, runs)
    assert result.verdict == "undecided" and "update=previous_epoch (no run)" in result.measured
    runs.add({"teacher.update": "previous_epoch"}, state="running", knn_teacher_final=0.1)
    result = one(ORDER, runs)
    assert result.verdict == "undecided"
    assert "not finished: running, 10 of 10 epochs" in result.measured


def test_a_chain_fails_on_one_failed_pair_even_with_another_missing(runs: Runs) -> None:
    chain = claims_of([{"id": "c", "kind": "order", "source": "s", "paper": "x", "points": [
        {"teacher.update": "ema"}, {"teacher.update": "previous_epoch"},
        {"teacher.update": "student_copy"}]}],
        grid={"teacher.update": ["ema", "previous_epoch", "student_copy"]})
    runs.add({"teacher.update": "ema"}, knn_teacher_final=0.50)
    runs.add({"teacher.update": "previous_epoch"}, knn_teacher_final=0.60)
    result = one(chain, runs)
    assert result.verdict == "fails"
    assert "< update=previous_epoch 60.0 (1 seed) ? update=student_copy (no run)" in \
        result.measured


MONOTONE = claims_of([{"id": "m", "kind": "monotone", "axis": "model.patch_size",
                       "direction": "decreasing", "source": "Fig. 5", "paper": "x"}],
                     grid={"model.patch_size": [16, 4, 8]})


@pytest.mark.parametrize(("knn", "verdict"), [
    ((0.8, 0.7, 0.6), "holds"), ((0.8, 0.6, 0.7), "fails"), ((0.8, 0.7, 0.7), "undecided")])
def test_monotone_compares_neighbours_in_ascending_axis_order(
        runs: Runs, knn: tuple[float, float, float], verdict: str) -> None:
    for patch, value in zip((4, 8, 16), knn, strict=True):
        runs.add({"model.patch_size": patch}, knn_teacher_final=value)
    result = one(MONOTONE, runs)
    assert result.verdict == verdict
    assert result.measured.startswith("decreasing along model.patch_size: teacher kNN "
                                      "patch_size=4 80.0 (1 seed) ")


def test_monotone_on_images_per_s_uses_the_median_over_epochs(runs: Runs) -> None:
    claims = claims_of([{"id": "t", "kind": "monotone", "axis": "model.patch_size",
                         "direction": "increasing", "metric": "images_per_s", "source": "s",
                         "paper": "x"}], grid={"model.patch_size": [4, 8]})
    for patch, speed in ((4, 200.0), (8, 900.0)):
        rows = synth.make_records(EPOCHS, images_per_s=speed)
        rows[0]["images_per_s"] = 1.0  # a slow first epoch does not count
        runs.add({"model.patch_size": patch}, records=rows)
    result = one(claims, runs)
    assert result.verdict == "holds"
    assert "patch_size=4 200 (1 seed) < patch_size=8 900 (1 seed)" in result.measured


# batch_size.yaml's local layout: seeds zipped with the axis, so batch 4 and 8 (the close pair)
# run seeds 0-2 and batch 2 and 16 seed 0 only. Hand-computed: 4 vs 8 is paired (same-seed
# differences 4 - 8 of -1, -2, -3, shown as -2.0 ± 1.0: 8 above 4 by 2 > std 1); 2 vs 4 and
# 8 vs 16 are not (the larger std, batch 4's / 8's 10 points from the seed effect: 70 / 80 / 90
# and 71 / 82 / 93).
ZIPPED = claims_of([{"id": "m", "kind": "monotone", "axis": "optim.batch_size",
                     "direction": "increasing", "source": "Table 9", "paper": "x"}],
                   zip={"optim.batch_size": [2, 4, 4, 4, 8, 8, 8, 16],
                        "seed": [0, 0, 1, 2, 0, 1, 2, 0]})


@pytest.mark.parametrize(("ends", "verdict"), [((0.50, 0.99), "holds"), ((0.75, 0.99), "undecided"),
                                               ((0.50, 0.50), "fails")])
def test_monotone_with_seeds_zipped_pairs_the_points_that_share_them(
        runs: Runs, ends: tuple[float, float], verdict: str) -> None:
    for seed, (four, eight) in enumerate(((70, 71), (80, 82), (90, 93))):
        runs.add({"optim.batch_size": 4, "seed": seed}, seed=seed, knn_teacher_final=four / 100)
        runs.add({"optim.batch_size": 8, "seed": seed}, seed=seed, knn_teacher_final=eight / 100)
    runs.add({"optim.batch_size": 2, "seed": 0}, knn_teacher_final=ends[0])
    runs.add({"optim.batch_size": 16, "seed": 0}, knn_teacher_final=ends[1])
    result = one(ZIPPED, runs)
    assert result.verdict == verdict, result.line()
    assert "batch_size=4 80.0 ± 10.0 (3 seeds) < batch_size=8 82.0 ± 11.0 (3 seeds) " \
           "[same-seed difference -2.0 ± 1.0]" in result.measured
    assert [pair["between"] for pair in result.values["paired"]] == [[1, 2]]


# --------------------------------------------------------------------------------------------
# collapses and healthy


def _collapse_claim(mode: str) -> tuple[Claim, ...]:
    return claims_of([{"id": "c", "kind": "collapses", "point": {"loss.sharpening": False},
                       "mode": mode, "source": "Fig. 7", "paper": "uniform"}],
                     grid={"loss.sharpening": [True, False]}, seeds=[0, 1, 2])


@pytest.mark.parametrize(("collapse", "mode", "verdict"), [
    ("uniform", "uniform", "holds"), ("one-dim", "one_dim", "holds"), ("uniform", "any", "holds"),
    ("one-dim", "uniform", "fails"), (None, "any", "fails")])
def test_collapses(runs: Runs, collapse: str | None, mode: str, verdict: str) -> None:
    runs.add({"loss.sharpening": False}, collapse=collapse)
    result = one(_collapse_claim(mode), runs)
    assert result.verdict == verdict, result.line()
    assert f"of ln K {LN_K:.3f}" in result.measured and "KL" in result.measured


def test_collapses_within_the_seed_spread_is_undecided(runs: Runs) -> None:
    for seed, entropy in enumerate((LN_K - 0.001, LN_K - 0.2, LN_K - 0.001)):
        rows = synth.make_records(EPOCHS, collapse="uniform")
        rows[-1]["teacher_entropy"] = entropy  # mean 0.067 below ln K, std 0.11
        runs.add({"loss.sharpening": False}, seed=seed, records=rows)
    result = one(_collapse_claim("uniform"), runs)
    assert result.verdict == "undecided" and "(3 seeds)" in result.measured


def test_a_diverged_run_counts_for_collapses_but_a_missing_one_is_undecided(runs: Runs) -> None:
    assert one(_collapse_claim("uniform"), runs).verdict == "undecided"
    rows = synth.make_records(EPOCHS, collapse="uniform")
    rows[-1]["teacher_entropy"] = rows[-1]["kl_teacher_student"] = float("nan")
    runs.add({"loss.sharpening": False}, state="diverged", records=rows)
    result = one(_collapse_claim("uniform"), runs)
    assert result.verdict == "holds" and result.measured.endswith("(diverged)")


HEALTHY = claims_of([{"id": "h", "kind": "healthy", "point": {"loss.sharpening": True},
                      "source": "Fig. 7", "paper": "both"}],
                    grid={"loss.sharpening": [True, False]}, seeds=[0, 1])


def _with(rows: list[dict[str, Any]], epoch: int, **values: float) -> list[dict[str, Any]]:
    rows[epoch - 1].update(values)
    return rows


def test_healthy_holds_and_ignores_the_first_half(runs: Runs) -> None:
    runs.add({"loss.sharpening": True},
             records=_with(synth.make_records(EPOCHS), 2, kl_teacher_student=0.0))
    result = one(HEALTHY, runs)
    assert result.verdict == "holds", result.line()
    assert result.measured.startswith("sharpening=true, epochs 6-10: KL min ")


def test_healthy_holds_for_a_sharp_teacher_that_spreads_the_images(runs: Runs) -> None:
    """Per-image entropy near 0 (a confident teacher) is no collapse while the batch-mean
    target still spreads over dimensions (digits' tau_t 0.01: 0.05 and 1.9 nats)."""
    rows = synth.make_records(EPOCHS)
    for row in rows:
        row.update(teacher_entropy=0.01, teacher_batch_entropy=1.9)
    runs.add({"loss.sharpening": True}, records=rows)
    result = one(HEALTHY, runs)
    assert result.verdict == "holds", result.line()
    assert "batch-mean entropy 1.900-1.900 nats" in result.measured


@pytest.mark.parametrize("values", [{"kl_teacher_student": 0.05},
                                    {"teacher_batch_entropy": 0.01},
                                    {"teacher_entropy": LN_K - 0.01}])
def test_healthy_fails_on_one_bad_epoch_of_the_second_half(runs: Runs,
                                                          values: dict[str, float]) -> None:
    runs.add({"loss.sharpening": True}, records=_with(synth.make_records(EPOCHS), 8, **values))
    result = one(HEALTHY, runs)
    assert result.verdict == "fails" and "at epochs [8]" in result.measured


def test_healthy_within_the_seed_spread_or_unfinished_is_undecided(runs: Runs) -> None:
    for seed, kl in enumerate((0.05, 0.2)):  # mean 0.125, std 0.106 around the 0.1 bound
        runs.add({"loss.sharpening": True}, seed=seed,
                 records=_with(synth.make_records(EPOCHS), 9, kl_teacher_student=kl))
    assert one(HEALTHY, runs).verdict == "undecided"
    runs.runs.pop()
    runs.add({"loss.sharpening": True}, seed=1, state="failed")
    result = one(HEALTHY, runs)
    assert result.verdict == "undecided" and "not finished: failed" in result.measured


def test_healthy_fails_for_a_diverged_run_or_one_stopped_early_on_a_collapse(
        runs: Runs) -> None:
    """Neither has a second half to test; both are the opposite of healthy (these read
    "undecided: not finished" and "no ... KL in the second half" before)."""
    runs.add({"loss.sharpening": True}, state="diverged", records=synth.make_records(7))
    result = one(HEALTHY, runs)
    assert result.verdict == "fails", result.line()
    assert "diverged, after 7 of 10 epochs" in result.measured
    runs.runs.pop()
    runs.add({"loss.sharpening": True}, state="diverged", records=[])  # in its first epoch
    result = one(HEALTHY, runs)
    assert result.verdict == "fails" and "diverged, after 0 of 10 epochs" in result.measured
    runs.runs.pop()
    runs.add({"loss.sharpening": True}, records=synth.make_records(4))
    stopped = runs.runs[-1]
    stopped.status_reason = "stopped early: collapse detected"  # as train._finish writes it
    result = one(HEALTHY, runs)
    assert result.verdict == "fails", result.line()
    assert "stopped early: collapse detected, after 4 of 10 epochs" in result.measured


# --------------------------------------------------------------------------------------------
# below_init and above_init


def _init_claim(kind: str, by: float = 0) -> tuple[Claim, ...]:
    return claims_of([{"id": "i", "kind": kind, "point": {"teacher.update": "student_copy"},
                       "by": by, "source": "Table 7 row 2", "paper": {"knn": 0.1}}],
                     grid={"teacher.update": ["ema", "student_copy"]}, seeds=[0, 1, 2])


@pytest.mark.parametrize(("kind", "by", "final", "verdict"), [
    ("below_init", 0, 0.20, "holds"), ("below_init", 0, 0.40, "fails"),
    ("below_init", 15, 0.20, "fails"), ("above_init", 0, 0.40, "holds"),
    ("above_init", 15, 0.40, "fails"), ("above_init", 5, 0.40, "holds")])
def test_init_claims(runs: Runs, kind: str, by: float, final: float, verdict: str) -> None:
    runs.add({"teacher.update": "student_copy"}, knn_teacher_final=final, init=0.30)
    result = one(_init_claim(kind, by), runs)
    assert result.verdict == verdict, result.line()
    assert f"final teacher kNN {final * 100:.1f} vs random-init 30.0: " \
           f"{(final - 0.3) * 100:+.1f} pp" in result.measured
    side = kind.split("_")[0]
    assert f"(claimed {side} by more than {by} pp)" in result.measured if by else \
        f"(claimed {side}) (1 seed)" in result.measured


def test_init_claims_within_the_seed_spread_are_undecided(runs: Runs) -> None:
    for seed, final in enumerate((0.25, 0.35, 0.20)):  # -3.3 ± 7.6 points from the init
        runs.add({"teacher.update": "student_copy"}, seed=seed, knn_teacher_final=final)
    assert one(_init_claim("below_init"), runs).verdict == "undecided"


def test_a_diverged_run_counts_below_init_only(runs: Runs) -> None:
    runs.add({"teacher.update": "student_copy"}, state="diverged", knn_teacher_final=0.2)
    assert one(_init_claim("below_init"), runs).verdict == "holds"
    result = one(_init_claim("above_init"), runs)
    assert result.verdict == "undecided" and "not finished: diverged" in result.measured
    assert one(claims_of([{"id": "i", "kind": "below_init", "point": {"teacher.update": "ema"},
                           "source": "s", "paper": 1}],
                         grid={"teacher.update": ["ema", "student_copy"]}),
               runs).measured == "update=ema: no run"


# --------------------------------------------------------------------------------------------
# flat


FLAT = claims_of([{"id": "f", "kind": "flat", "within": 1.0, "source": "App. D",
                   "paper": {"m0": 69.1}}],
                 grid={"loss.center_momentum": [0.0, 0.9, 0.99]}, seeds=[0, 1])


@pytest.mark.parametrize(("knn", "verdict"), [
    ((0.691, 0.697, 0.694), "holds"), ((0.691, 0.717, 0.694), "fails")])
def test_flat_over_every_point_by_default(runs: Runs, knn: tuple[float, ...],
                                          verdict: str) -> None:
    for m, value in zip((0.0, 0.9, 0.99), knn, strict=True):
        runs.add({"loss.center_momentum": m}, knn_teacher_final=value)
    result = one(FLAT, runs)
    assert result.verdict == verdict
    assert result.measured.startswith(f"teacher kNN spans {(max(knn) - min(knn)) * 100:.1f} pp "
                                      "over 3 points (claimed at most 1): highest "
                                      "center_momentum=0.9")


def test_flat_undecided_within_the_spread_or_with_a_missing_point(runs: Runs) -> None:
    runs.add({"loss.center_momentum": 0.0}, knn_teacher_final=0.690)
    runs.add({"loss.center_momentum": 0.9}, knn_teacher_final=0.695)
    assert one(FLAT, runs).verdict == "undecided"  # 0.99 has no run
    runs.add({"loss.center_momentum": 0.99}, knn_teacher_final=0.700)
    runs.add({"loss.center_momentum": 0.99}, seed=1, knn_teacher_final=0.660)  # 68.0 ± 2.8
    result = one(FLAT, runs)  # spans 1.5 points: 0.5 over the bound, within 2.8
    assert result.verdict == "undecided", result.line()
    assert "lowest center_momentum=0.99 68.0 ± 2.8 (2 seeds)" in result.measured
    assert ("1 apart or not, within the spread: center_momentum=0.0 vs center_momentum=0.99, "
            "center_momentum=0.9 vs center_momentum=0.99") in result.measured, result.measured


def test_flat_with_shared_seeds_tests_the_same_seed_difference(runs: Runs) -> None:
    # seed 1 is 3 points below seed 0 at every point: means 68.5 / 69.0 / 69.3 span 0.8 of the
    # allowed 1.0; the unpaired spread (2.1) leaves that undecided, the highest - lowest
    # differences (0.8, 0.8: std 0) decide it
    for m, base in ((0.0, 0.700), (0.9, 0.705), (0.99, 0.708)):
        runs.add({"loss.center_momentum": m}, seed=0, knn_teacher_final=base)
        runs.add({"loss.center_momentum": m}, seed=1, knn_teacher_final=base - 0.03)
    result = one(FLAT, runs)
    assert result.verdict == "holds", result.line()
    assert "[same-seed difference +0.8 ± 0.0]" in result.measured


def test_flat_fails_on_any_pair_apart_beyond_its_spread(runs: Runs) -> None:
    """The highest and lowest points are within a noisy seed spread, but two others are 4
    points apart with none: a third point used to turn this fail into undecided."""
    runs.add({"loss.center_momentum": 0.0}, seed=0, knn_teacher_final=0.60)
    runs.add({"loss.center_momentum": 0.0}, seed=1, knn_teacher_final=0.80)  # 70.0 ± 14.1
    runs.add({"loss.center_momentum": 0.9}, knn_teacher_final=0.69)
    runs.add({"loss.center_momentum": 0.99}, knn_teacher_final=0.65)
    result = one(FLAT, runs)
    assert result.verdict == "fails", result.line()
    assert result.measured.startswith("teacher kNN spans 5.0 pp over 3 points")
    assert ("also more than 1 apart beyond the spread: center_momentum=0.9 vs "
            "center_momentum=0.99") in result.measured, result.measured


def test_flat_fails_when_the_known_points_already_spread_too_far(runs: Runs) -> None:
    runs.add({"loss.center_momentum": 0.0}, knn_teacher_final=0.60)
    runs.add({"loss.center_momentum": 0.9}, knn_teacher_final=0.70)
    result = one(FLAT, runs)
    assert result.verdict == "fails" and "center_momentum=0.99 (no run)" in result.measured


# --------------------------------------------------------------------------------------------
# teacher_above_student


def _above(over: str = "second_half") -> tuple[Claim, ...]:
    return claims_of([{"id": "t", "kind": "teacher_above_student", "over": over,
                       "point": {"teacher.update": "ema"}, "source": "Fig. 6 left",
                       "paper": "teacher above"}],
                     grid={"teacher.update": ["ema", "student_copy"]}, seeds=[0, 1])


@pytest.mark.parametrize(("teacher", "student", "verdict"), [
    (0.70, 0.66, "holds"), (0.63, 0.69, "fails")])
def test_teacher_above_student(runs: Runs, teacher: float, student: float,
                               verdict: str) -> None:
    runs.add({"teacher.update": "ema"}, knn_teacher_final=teacher, knn_student_final=student)
    result = one(_above(), runs)
    assert result.verdict == verdict
    assert "teacher - student kNN at the 5 evaluated epochs 6-10 (second half)" in \
        result.measured


def test_teacher_above_student_counts_only_evaluated_epochs_of_its_window(runs: Runs) -> None:
    rows = synth.make_records(EPOCHS, knn_teacher_final=0.7, knn_student_final=0.6)
    rows[1]["knn_teacher"] = 0.01  # below the student in the first half only
    for epoch in (7, 9):
        rows[epoch - 1]["knn_teacher"] = rows[epoch - 1]["knn_student"] = None  # not evaluated
    runs.add({"teacher.update": "ema"}, records=rows)
    second_half = one(_above(), runs)
    assert second_half.verdict == "holds"
    assert "at the 3 evaluated epochs 6-10" in second_half.measured
    every = one(_above("all"), runs)
    assert every.verdict == "fails" and "teacher below at epochs [2]" in every.measured


def test_teacher_above_student_within_the_spread_is_undecided(runs: Runs) -> None:
    for seed, student in enumerate((0.60, 0.72)):  # teacher 0.7: +10 and -2 points
        runs.add({"teacher.update": "ema"}, seed=seed, knn_teacher_final=0.7,
                 knn_student_final=student)
    assert one(_above(), runs).verdict == "undecided"


def _not_above() -> tuple[Claim, ...]:
    return claims_of([{"id": "n", "kind": "teacher_not_above_student",
                       "point": {"teacher.update": "previous_epoch"}, "source": "Sec. 5.2",
                       "paper": "not the case with the previous-epoch teacher"}],
                     grid={"teacher.update": ["ema", "previous_epoch"]}, seeds=[0, 1])


def test_teacher_not_above_student_is_the_negation(runs: Runs) -> None:
    """Below at one epoch of the second half: holds; above at all: fails; a teacher below
    only in the first half is above over the window: fails."""
    rows = synth.make_records(EPOCHS, knn_teacher_final=0.7, knn_student_final=0.6)
    rows[7]["knn_teacher"] = 0.01  # epoch 8: far below its student
    runs.add({"teacher.update": "previous_epoch"}, records=rows)
    result = one(_not_above(), runs)
    assert result.verdict == "holds" and "teacher below at epochs [8]" in result.measured
    rows[7]["knn_teacher"] = 0.7
    rows[1]["knn_teacher"] = 0.01  # first half: outside the window
    other = Runs(runs.root / "above")
    other.add({"teacher.update": "previous_epoch"}, records=rows)
    assert one(_not_above(), other).verdict == "fails"


def test_teacher_not_above_student_within_the_spread_is_undecided(runs: Runs) -> None:
    for seed, student in enumerate((0.60, 0.72)):  # teacher 0.7: +10 and -2 points
        runs.add({"teacher.update": "previous_epoch"}, seed=seed, knn_teacher_final=0.7,
                 knn_student_final=student)
    assert one(_not_above(), runs).verdict == "undecided"


# --------------------------------------------------------------------------------------------
# summary


def test_summary_line_counts_verdicts(runs: Runs) -> None:
    runs.add({"teacher.update": "ema"}, knn_teacher_final=0.70)
    runs.add({"teacher.update": "previous_epoch"}, knn_teacher_final=0.60)
    results = evaluate(ORDER + _above(), runs.runs)
    assert [r.verdict for r in results] == ["holds", "holds"]
    assert summary_line(results) == "2 of 2 claims hold, 0 fail, 0 undecided"
    assert summary_line(results[:1]) == "1 of 1 claim holds, 0 fail, 0 undecided"
    assert summary_line([]) == "0 of 0 claims hold, 0 fail, 0 undecided"


# --------------------------------------------------------------------------------------------
# the runs of a sweep directory (`current_runs`: the points sweep.json lists)


def _sweep_dir(root: Path, finals: dict[tuple[str, int], float | None]) -> Path:
    """A sweep directory whose sweep.json lists every (update, seed) of `finals`, as the
    launchers write it; a None final lists the run without writing its directory."""
    listed = []
    for (update, seed), final in finals.items():
        run_id = f"update-{update}_seed-{seed}"
        varied = {"teacher.update": update, "seed": seed}
        listed.append({"run_id": run_id, "varied": varied})
        if final is not None:
            synth.write_run(root / "runs" / run_id, varied=varied, seed=seed,
                            records=synth.make_records(EPOCHS, knn_teacher_final=final))
    (root / "sweep.json").write_text(json.dumps({"name": "s", "profile": "local",
                                                 "runs": listed}))
    return root


def test_a_listed_seed_without_its_run_directory_leaves_the_point_undecided(
        tmp_path: Path) -> None:
    """Seeds 1-2 not written yet (or not copied back from the cluster): the order is not
    decided on seed 0 alone (it held, 70.1 > 70.0 with "1 seed", before)."""
    finals = {(u, s): (0.701 if u == "ema" else 0.700) if s == 0 else None
              for u in ("ema", "previous_epoch") for s in (0, 1, 2)}
    runs = current_runs(locate(_sweep_dir(tmp_path, finals)))
    [result] = evaluate(ORDER, runs)
    assert result.verdict == "undecided", result.line()
    assert "update-ema_seed-1_" not in result.measured
    assert "run update-ema_seed-1 not finished: pending" in result.measured


def test_a_run_with_an_unreadable_run_json_is_matched_by_what_sweep_json_lists(
        tmp_path: Path) -> None:
    """Without its run.json a run records no varied values, and it matched every point: the
    previous-epoch run counted as a third ema seed."""
    finals = {("ema", 0): 0.90, ("ema", 1): 0.90, ("previous_epoch", 0): 0.80,
              ("previous_epoch", 1): 0.81}
    root = _sweep_dir(tmp_path, finals)
    (root / "runs" / "update-previous_epoch_seed-1" / "run.json").write_text('{"run_id": "upd')
    runs = current_runs(locate(root))
    [result] = evaluate(ORDER, runs)
    assert result.verdict == "holds", result.line()
    assert "update=ema 90.0 ± 0.0 (2 seeds)" in result.measured, result.measured
    assert "same-seed difference +9.5 ± 0.7" in result.measured, result.measured
