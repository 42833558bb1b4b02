"""One evaluator per claim kind: (claim, runs) -> (verdict, measured line, numbers).

The kinds and their keys are documented in docs/sweeps.md ("Claims"); the thresholds are
:mod:`dino_ablate.contract.claims`' constants; the seed and spread rules are
:mod:`analysis.claims`'.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from analysis.claim_stats import (
    Stat,
    Unusable,
    Verdict,
    at_epoch,
    combine,
    digits,
    diverged,
    final,
    matching_runs,
    paired_difference,
    paired_text,
    per_epoch,
    point_runs,
    point_stat,
    relation,
    relation_of,
    scale,
    seeds_text,
    unit,
    verdict_of,
)
from analysis.run_reader import RunData
from dino_ablate.contract.claims import (
    ENTROPY_ONE_DIM_MAX,
    ENTROPY_UNIFORM_TOL,
    KINDS,
    KL_COLLAPSED_MAX,
    KL_HEALTHY_MIN,
    METRICS,
    Claim,
)

Outcome = tuple[Verdict, str, dict[str, Any]]


def _stats(claim: Claim, runs: Sequence[RunData]) -> tuple[list[Stat | None], list[str]]:
    """Each point's Stat (None when unusable) and its text (`update=ema 63.2 (1 seed)`)."""
    stats: list[Stat | None] = []
    texts = []
    for index, label in enumerate(claim.labels):
        try:
            stat = point_stat(claim, index, runs, claim.metric)
        except Unusable as problem:
            stats.append(None)
            texts.append(f"{label} ({problem})")
        else:
            stats.append(stat)
            texts.append(f"{label} {stat.text(digits(claim.metric))}")
    return stats, texts


def _point_values(claim: Claim, stats: Sequence[Stat | None]) -> dict[str, Any]:
    return {"metric": claim.metric, "unit": unit(claim.metric) or "images/s",
            "points": [{"label": label, **(stat.as_dict() if stat else {"missing": True})}
                       for label, stat in zip(claim.labels, stats, strict=True)]}


def _chain(claim: Claim, runs: Sequence[RunData], decreasing: bool) -> tuple[Verdict, str,
                                                                             dict[str, Any]]:
    """Adjacent pairs of the claim's points: each next below (`decreasing`) or above the
    previous one. The line shows the measured relation between neighbours."""
    stats, texts = _stats(claim, runs)
    verdicts: list[Verdict] = []
    pairs: list[dict[str, Any]] = []
    line = texts[0]
    for index in range(1, len(stats)):
        a, b = stats[index - 1], stats[index]
        if a is None or b is None:
            verdicts.append("undecided")
            line += f" ? {texts[index]}"
            continue
        paired = paired_difference(point_runs(claim, index - 1, runs),
                                   point_runs(claim, index, runs), claim.metric)
        if paired is None:  # seeds not shared: the larger of the two points' spreads
            difference, spread = a.mean - b.mean, max(a.std, b.std)
            line += f" {relation(a, b)} {texts[index]}"
        else:
            difference, spread = paired.mean, paired.std
            line += (f" {relation_of(difference, spread)} {texts[index]}"
                     f"{paired_text(paired, digits(claim.metric))}")
            pairs.append({"between": [index - 1, index], **paired.as_dict()})
        verdicts.append(verdict_of(difference if decreasing else -difference, spread))
    values = _point_values(claim, stats)
    if pairs:
        values["paired"] = pairs
    return combine(verdicts), f"{METRICS[claim.metric]} {line}", values


def order(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """The metric's final value strictly decreases along the points (first is best)."""
    return _chain(claim, runs, decreasing=True)


def monotone(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """The metric's final value increases or decreases along the axis (ascending values)."""
    verdict, line, values = _chain(claim, runs, decreasing=claim.direction == "decreasing")
    return verdict, f"{claim.direction} along {claim.axis}: {line}", values


def flat(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """max - min of the points' means is at most `within`: every pair of points is tested
    (its gap against `within`, beyond the pair's spread), so a noisy point between the highest
    and the lowest cannot leave undecided what another pair already decides."""
    stats, texts = _stats(claim, runs)
    known = [(s, t, i) for i, (s, t) in enumerate(zip(stats, texts, strict=True))
             if s is not None]
    missing = [t for s, t in zip(stats, texts, strict=True) if s is None]
    values = _point_values(claim, stats)
    within = float(claim.within or 0.0)
    shown_unit = unit(claim.metric)
    if len(known) < 2:
        return "undecided", f"{METRICS[claim.metric]}: " + ", ".join(texts), values
    hi = max(known, key=lambda point: point[0].mean)
    lo = min(known, key=lambda point: point[0].mean)
    span = hi[0].mean - lo[0].mean
    d = digits(claim.metric)
    verdicts: dict[tuple[int, int], Verdict] = {}
    pairs: dict[tuple[int, int], Stat | None] = {}
    for a, b in itertools.combinations(known, 2):
        paired = paired_difference(point_runs(claim, a[2], runs), point_runs(claim, b[2], runs),
                                   claim.metric)
        gap = abs(a[0].mean - b[0].mean if paired is None else paired.mean)
        spread = max(a[0].std, b[0].std) if paired is None else paired.std
        verdicts[(a[2], b[2])] = verdict_of(within - gap, spread)
        pairs[(a[2], b[2])] = paired
    verdict = combine(verdicts.values())
    if missing and verdict != "fails":
        verdict = "undecided"
    line = (f"{METRICS[claim.metric]} spans {span:.{d}f} {shown_unit} over {len(known)} points "
            f"(claimed at most {within:g}): highest {hi[1]}, lowest {lo[1]}")
    extreme = (min(hi[2], lo[2]), max(hi[2], lo[2]))
    paired = pairs.get(extreme)
    if paired is not None and extreme[0] != hi[2]:  # shown as highest - lowest
        paired = Stat(-paired.mean, paired.std, paired.n)
    if paired is not None:
        line += paired_text(paired, d)
        values["paired"] = [{"between": [hi[2], lo[2]], **paired.as_dict()}]
    beyond = [f"{claim.labels[i]} vs {claim.labels[j]}" for (i, j), v in verdicts.items()
              if v == "fails" and (i, j) != extreme]
    if beyond:
        line += f"; also more than {within:g} apart beyond the spread: " + ", ".join(beyond)
    open_pairs = [f"{claim.labels[i]} vs {claim.labels[j]}" for (i, j), v in verdicts.items()
                  if v == "undecided"]
    if verdict == "undecided" and open_pairs:
        line += f"; {within:g} apart or not, within the spread: " + ", ".join(open_pairs)
    if missing:
        line += "; " + ", ".join(missing)
    return verdict, line, {**values, "span": span}


def _entropy_verdict(mode: str, h: Stat, ln_k: float | None) -> Verdict:
    one_dim = verdict_of(ENTROPY_ONE_DIM_MAX - h.mean, h.std)
    uniform = ("undecided" if ln_k is None
               else verdict_of(ENTROPY_UNIFORM_TOL - abs(h.mean - ln_k), h.std))
    if mode == "one_dim":
        return one_dim
    if mode == "uniform":
        return uniform
    both: list[Verdict] = [one_dim, uniform]
    return "holds" if "holds" in both else "fails" if both == ["fails"] * 2 else "undecided"


_COLLAPSE_TEXT = {"one_dim": f"< {ENTROPY_ONE_DIM_MAX}",
                  "uniform": f"within {ENTROPY_UNIFORM_TOL} of ln K",
                  "any": f"< {ENTROPY_ONE_DIM_MAX} or within {ENTROPY_UNIFORM_TOL} of ln K"}


def _ln_k(chosen: Sequence[RunData]) -> float | None:
    known = [run.ln_k for run in chosen if run.ln_k is not None]
    return known[0] if known else None


def collapses(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """Final teacher entropy near 0 (one_dim) or ln K (uniform), and final KL below 0.01."""
    label, mode = claim.labels[0], claim.mode or "any"
    try:
        chosen = point_runs(claim, 0, runs)
        h = Stat.of([final(run, "teacher_entropy") for run in chosen])
        kl = Stat.of([final(run, "kl_teacher_student") for run in chosen])
    except Unusable as problem:
        return "undecided", f"{label}: {problem}", {}
    ln_k = _ln_k(chosen)
    verdict = combine([_entropy_verdict(mode, h, ln_k),
                       verdict_of(KL_COLLAPSED_MAX - kl.mean, kl.std)])
    of_ln_k = f" of ln K {ln_k:.3f}" if ln_k is not None else " (ln K unknown)"
    line = (f"{label}: final teacher entropy {h.text(3, seeds=False)} nats{of_ln_k} (claimed "
            f"{mode.replace('_', '-')}: {_COLLAPSE_TEXT[mode]}), KL {kl.text(3, seeds=False)} "
            f"nats (< {KL_COLLAPSED_MAX}) {seeds_text(h.n)}{diverged(chosen)}")
    return verdict, line, {"teacher_entropy": h.as_dict(), "kl_teacher_student": kl.as_dict(),
                           "ln_k": ln_k}


def _epochs_text(epochs: Sequence[int]) -> str:
    shown = ", ".join(str(e) for e in epochs[:10])
    return f"[{shown}{', ...' if len(epochs) > 10 else ''}]"


def healthy(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """At every epoch of the second half: KL >= 0.1, the teacher's entropy below ln K - 0.05
    (not the uniform collapse) and the entropy of its batch-mean target above 0.05 (not the
    one-dimensional collapse: every image on the same dimension). The per-image entropy may
    approach 0: a sharp teacher (tau_t 0.01) is confident about each image while it still
    spreads the images over many dimensions."""
    label = claim.labels[0]
    seeds = matching_runs(claim, 0, runs)
    for run in seeds:  # a diverged run, or one stopped early on a collapse, is not healthy
        ended_early = run.trainer_state == "done" and run.epochs_planned is not None \
            and run.n_epochs < run.epochs_planned
        if run.trainer_state == "diverged" or ended_early:
            how = "diverged" if run.trainer_state == "diverged" else \
                (run.status_reason or "stopped early")
            return "fails", (f"{label}: run {run.run_id} {how}, after {run.n_epochs} of "
                             f"{run.epochs_planned or '?'} epochs {seeds_text(len(seeds))}"), {}
    try:
        chosen = point_runs(claim, 0, runs)
    except Unusable as problem:
        return "undecided", f"{label}: {problem}", {}
    ln_k = _ln_k(chosen)
    kl = per_epoch(chosen, at_epoch("kl_teacher_student"), "second_half")
    h = per_epoch(chosen, at_epoch("teacher_entropy"), "second_half")
    hb = per_epoch(chosen, at_epoch("teacher_batch_entropy"), "second_half")
    if not kl or not h or not hb or ln_k is None:
        why = "ln K unknown" if ln_k is None else \
            "no entropy, batch entropy and KL in the second half"
        return "undecided", f"{label}: {why}", {}
    top = ln_k - ENTROPY_UNIFORM_TOL
    kl_verdicts = {e: verdict_of(s.mean - KL_HEALTHY_MIN, s.std) for e, s in kl.items()}
    h_verdicts = {e: verdict_of(top - s.mean, s.std) for e, s in h.items()}
    hb_verdicts = {e: verdict_of(s.mean - ENTROPY_ONE_DIM_MAX, s.std) for e, s in hb.items()}
    verdict = combine([*kl_verdicts.values(), *h_verdicts.values(), *hb_verdicts.values()])
    epochs = sorted(kl)

    def span(stats: dict[int, Stat]) -> str:
        means = [s.mean for s in stats.values()]
        return f"{min(means):.3f}-{max(means):.3f}"

    line = (f"{label}, epochs {epochs[0]}-{epochs[-1]}: KL min "
            f"{min(s.mean for s in kl.values()):.3f} nats (>= {KL_HEALTHY_MIN}), teacher "
            f"entropy {span(h)} nats (< ln K - {ENTROPY_UNIFORM_TOL} = {top:.3f}), batch-mean "
            f"entropy {span(hb)} nats (> {ENTROPY_ONE_DIM_MAX}) {seeds_text(len(chosen))}")
    for name, verdicts in (("KL below", kl_verdicts), ("entropy at ln K", h_verdicts),
                           ("batch-mean entropy at 0", hb_verdicts)):
        bad = [e for e, v in verdicts.items() if v == "fails"]
        if bad:
            line += f"; {name} at epochs {_epochs_text(bad)}"
    return verdict, line, {"kl_min": min(s.mean for s in kl.values()), "ln_k": ln_k,
                           "epochs": [epochs[0], epochs[-1]]}


def _init(claim: Claim, runs: Sequence[RunData], above: bool) -> Outcome:
    label, metric = claim.labels[0], claim.metric
    try:
        chosen = point_runs(claim, 0, runs)
        finals = [final(run, metric) for run in chosen]
        inits = [getattr(run, f"{metric}_init") for run in chosen]
        if any(value is None for value in inits):
            raise Unusable(f"no random-init {METRICS[metric]} (init.json {metric}_init)")
    except Unusable as problem:
        return "undecided", f"{label}: {problem}", {}
    init_values = [float(value) * scale(metric) for value in inits]
    gaps = Stat.of([f - i for f, i in zip(finals, init_values, strict=True)])
    end, start = Stat.of(finals), Stat.of(init_values)
    gap = (gaps.mean if above else -gaps.mean) - claim.by
    side = "above" if above else "below"
    margin = f" by more than {claim.by:g} pp" if claim.by else ""
    line = (f"{label}: final {METRICS[metric]} {end.text(1, seeds=False)} vs random-init "
            f"{start.text(1, seeds=False)}: {gaps.mean:+.1f} pp (claimed {side}{margin}) "
            f"{seeds_text(gaps.n)}{diverged(chosen)}")
    return verdict_of(gap, gaps.std), line, {"final": end.as_dict(), "init": start.as_dict(),
                                             "gap": gaps.as_dict()}


def below_init(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """The final metric is below the run's random-init value by more than `by` points."""
    return _init(claim, runs, above=False)


def above_init(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """The final metric is above the run's random-init value by more than `by` points."""
    return _init(claim, runs, above=True)


def teacher_above_student(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """At every evaluated epoch of the window, the mean over seeds of teacher - student is
    above zero (beyond the seeds' spread of that difference)."""
    label, metric = claim.labels[0], claim.metric
    student = metric.replace("teacher", "student")
    teacher_at, student_at = at_epoch(metric), at_epoch(student)
    try:
        chosen = point_runs(claim, 0, runs)
    except Unusable as problem:
        return "undecided", f"{label}: {problem}", {}

    def difference(run: RunData, epoch: int) -> float:
        return teacher_at(run, epoch) - student_at(run, epoch)

    gaps = per_epoch(chosen, difference, claim.over)
    what = METRICS[metric].removeprefix("teacher ")
    if not gaps:
        return "undecided", f"{label}: no evaluated epoch with both {what} values in the " \
                            f"window ({claim.over.replace('_', ' ')})", {}
    verdicts = {e: verdict_of(s.mean, s.std) for e, s in gaps.items()}
    worst = min(gaps, key=lambda e: gaps[e].mean)
    epochs = sorted(gaps)
    mean = sum(s.mean for s in gaps.values()) / len(gaps)
    line = (f"{label}: teacher - student {what} at the {len(gaps)} evaluated epochs "
            f"{epochs[0]}-{epochs[-1]} ({claim.over.replace('_', ' ')}): min "
            f"{gaps[worst].mean:+.1f} pp at epoch {worst}, mean {mean:+.1f} pp "
            f"{seeds_text(len(chosen))}")
    below = [e for e, v in verdicts.items() if v == "fails"]
    if below:
        line += f"; teacher below at epochs {_epochs_text(below)}"
    return combine(verdicts.values()), line, {"min": gaps[worst].mean, "mean": mean,
                                              "epochs": epochs}


def teacher_not_above_student(claim: Claim, runs: Sequence[RunData]) -> Outcome:
    """The negation of `teacher_above_student` (the paper's "this does not happen with the
    previous-epoch teacher"): holds when at an evaluated epoch of the window the teacher is
    below its student beyond the seeds' spread, fails when it is above at every one, else
    undecided. The measured line is the same."""
    verdict, line, values = teacher_above_student(claim, runs)
    negated: dict[Verdict, Verdict] = {"holds": "fails", "fails": "holds",
                                       "undecided": "undecided"}
    return negated[verdict], line, values


EVALUATORS: dict[str, Callable[[Claim, Sequence[RunData]], Outcome]] = {
    "order": order, "collapses": collapses, "healthy": healthy, "below_init": below_init,
    "above_init": above_init, "flat": flat, "monotone": monotone,
    "teacher_above_student": teacher_above_student,
    "teacher_not_above_student": teacher_not_above_student,
}
assert set(EVALUATORS) == set(KINDS)
