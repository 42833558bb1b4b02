"""The arithmetic of claims: seeds aggregated, tests with a spread, runs of a point.

See :mod:`analysis.claims` for the rules these implement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from analysis.run_reader import RunData, hashable
from dino_ablate.contract.claims import ACCURACIES, Claim

Verdict = Literal["holds", "fails", "undecided"]
VERDICTS: tuple[Verdict, ...] = ("holds", "fails", "undecided")
#: kinds for which a diverged run counts with its last values
DIVERGED_COUNTS = ("collapses", "below_init")


# --------------------------------------------------------------------------------------------
# statistics and tests


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (0 for one seed), in display units."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if array.size > 1 else 0.0
        return Stat(float(array.mean()), std, int(array.size))

    def text(self, digits: int, seeds: bool = True) -> str:
        """`63.2 ± 1.1 (3 seeds)`, `38.8 (1 seed)`; without `seeds`, no count."""
        value = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")
        return f"{value} {seeds_text(self.n)}" if seeds else value

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "seeds": self.n}


def seeds_text(n: int) -> str:
    return f"({n} seed{'s' if n != 1 else ''})"


def verdict_of(gap: float, spread: float) -> Verdict:
    """holds when `gap` (how far the measurement is on the claimed side) exceeds `spread`,
    fails when it is below `-spread`, undecided in between (or when not a number)."""
    if not math.isfinite(gap):
        return "undecided"
    if gap > spread:
        return "holds"
    return "fails" if gap < -spread else "undecided"


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """fails when one fails, else undecided when one is (or there is none), else holds."""
    found = list(verdicts)
    if "fails" in found:
        return "fails"
    return "undecided" if not found or "undecided" in found else "holds"


def relation(a: Stat, b: Stat) -> str:
    """The measured relation of two values: >, < or ≈ (within the spread)."""
    return relation_of(a.mean - b.mean, max(a.std, b.std))


def relation_of(difference: float, spread: float) -> str:
    """`>`, `<` or `≈` for a difference a - b and the spread it is tested against."""
    return {"holds": ">", "fails": "<", "undecided": "≈"}[verdict_of(difference, spread)]


def paired_difference(a: Sequence[RunData], b: Sequence[RunData], metric: str) -> Stat | None:
    """Mean and spread over seeds of a - b when both points ran the same seeds (two or more):
    a seed fixes the initial weights, the data order and the augmentations, so a run and its
    same-seed twin at another point differ by the point only, and the seed's own effect (often
    larger than the points' difference) cancels in the difference. None otherwise."""
    by_seed_a = {run.seed: run for run in a if run.seed is not None}
    by_seed_b = {run.seed: run for run in b if run.seed is not None}
    seeds = sorted(by_seed_a)
    if (len(seeds) < 2 or set(seeds) != set(by_seed_b)
            or len(by_seed_a) != len(a) or len(by_seed_b) != len(b)):
        return None
    return Stat.of([final(by_seed_a[s], metric) - final(by_seed_b[s], metric) for s in seeds])


def paired_text(paired: Stat, digits: int) -> str:
    """` [same-seed difference +2.6 ± 2.4]`, appended to a comparison's line."""
    return f" [same-seed difference {paired.mean:+.{digits}f} ± {paired.std:.{digits}f}]"


def scale(metric: str) -> float:
    """Display units per stored unit: percent for accuracies, else as stored."""
    return 100.0 if metric in ACCURACIES else 1.0


def digits(metric: str) -> int:
    return 1 if metric in ACCURACIES else 0 if metric == "images_per_s" else 3


def unit(metric: str) -> str:
    return "pp" if metric in ACCURACIES else "" if metric == "images_per_s" else "nats"


# --------------------------------------------------------------------------------------------
# runs of a point


class Unusable(Exception):
    """A point cannot be measured: no run, an unfinished run, a missing value."""


def _matches(run: RunData, selector: Mapping[str, Any]) -> bool:
    for key, value in selector.items():
        if key == "seed" and "seed" not in run.varied:
            if run.seed != value:
                return False
        elif key in run.varied:
            wanted = hashable(value)
            if run.varied[key] != wanted:
                return False
        # a key of an axis with one value is not recorded as varied: every run has it
    return True


def matching_runs(claim: Claim, index: int, runs: Sequence[RunData]) -> list[RunData]:
    """The runs of the claim's point `index` (its seeds), finished or not."""
    return [run for run in runs if _matches(run, claim.points[index])]


def point_runs(claim: Claim, index: int, runs: Sequence[RunData]) -> list[RunData]:
    """The runs of the claim's point `index` (its seeds); Unusable when it has none or one of
    them has not finished."""
    chosen = matching_runs(claim, index, runs)
    if not chosen:
        raise Unusable("no run")
    for run in chosen:
        done = run.trainer_state == "done"
        diverged = run.trainer_state == "diverged" and claim.kind in DIVERGED_COUNTS
        if not (done or diverged) or run.n_epochs == 0:
            planned = "?" if run.epochs_planned is None else str(run.epochs_planned)
            raise Unusable(f"run {run.run_id} not finished: {run.trainer_state or 'pending'}, "
                           f"{run.n_epochs} of {planned} epochs")
    return chosen


def diverged(chosen: Sequence[RunData]) -> str:
    """` (diverged)` when a run of the point diverged."""
    return " (diverged)" if any(run.trainer_state == "diverged" for run in chosen) else ""


#: summary.json's final probe, for a linear_* metric that metrics.jsonl never holds (the paper
#: probe protocol runs once, after training), as the tables read it
SUMMARY_FINALS = {"linear_teacher": "linear_teacher_final",
                  "linear_student": "linear_student_final"}


def final(run: RunData, metric: str) -> float:
    """The run's final value of `metric` in display units: the last finite value (the median
    over epochs for images_per_s: the first epoch carries warm-up); for linear_* with none,
    summary.json's final probe."""
    column = run.columns.get(metric)
    finite = column[np.isfinite(column)] if column is not None and column.dtype != object \
        else np.array([])
    if finite.size == 0 and metric in SUMMARY_FINALS:
        value = getattr(run, SUMMARY_FINALS[metric])
        if value is not None and math.isfinite(value):
            return float(value) * scale(metric)
    if column is None or column.dtype == object:
        raise Unusable(f"run {run.run_id} has no {metric}")
    if finite.size == 0:
        raise Unusable(f"run {run.run_id} has no finite {metric}")
    value = float(np.median(finite)) if metric == "images_per_s" else float(finite[-1])
    return value * scale(metric)


def point_stat(claim: Claim, index: int, runs: Sequence[RunData], metric: str) -> Stat:
    return Stat.of([final(run, metric) for run in point_runs(claim, index, runs)])


def per_epoch(chosen: Sequence[RunData], value: Callable[[RunData, int], float],
              window: str) -> dict[int, Stat]:
    """Stat over seeds at each epoch of the window that every run has a finite value for.

    `window`: ``second_half`` (epochs after half of the planned ones) or ``all``."""
    planned = max((r.epochs_planned or r.n_epochs) for r in chosen)
    common: set[int] | None = None
    for run in chosen:
        epochs = {int(e) for e in run.columns.get("epoch", np.array([])) if np.isfinite(e)}
        common = epochs if common is None else common & epochs
    out: dict[int, Stat] = {}
    for epoch in sorted(common or ()):
        if window == "second_half" and epoch <= planned / 2:
            continue
        values = [value(run, epoch) for run in chosen]
        if all(math.isfinite(v) for v in values):
            out[epoch] = Stat.of(values)
    return out


def at_epoch(metric: str) -> Callable[[RunData, int], float]:
    def value(run: RunData, epoch: int) -> float:
        epochs = run.columns["epoch"]
        column = run.columns.get(metric)
        if column is None or column.dtype == object:
            return math.nan
        position = np.flatnonzero(epochs == epoch)
        return float(column[position[-1]]) * scale(metric) if position.size else math.nan
    return value
