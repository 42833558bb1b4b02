"""Evaluate a sweep file's claims over its run directories (`dino-ablate claims SWEEP_DIR`).

The claims (:mod:`dino_ablate.contract.claims`, docs/sweeps.md "Claims") come from the sweep
file that ``sweep.json`` names, for the profile it names. Each gets a verdict and the measured
numbers in one line::

    [holds] ema_beats_previous_epoch (Fig. 6 right): teacher kNN update=ema 63.2 ± 1.1
    (3 seeds) > update=previous_epoch 38.8 (1 seed); paper ema 72.8, previous_epoch 66.6

Seeds: the runs a point selects (they differ only by seed) are aggregated: mean and sample
standard deviation (ddof 1; 0 for one seed). Every test compares a measured value with a bound
(another point's value or a threshold): ``gap`` is how far the measurement is on the claimed
side, ``spread`` the larger standard deviation of the values compared (0 when each has one
seed). The test holds when gap > spread, fails when gap < -spread, and is undecided in
between. A claim made of several tests (pairs of an order, epochs of a window, entropy and KL)
fails when one fails, else is undecided when one is, else holds. A point without a run, or with
a run that has not finished (``status.json`` state other than ``done``), is undecided; a
``diverged`` run counts with its last finite values for ``collapses`` and ``below_init``, whose
claims its divergence does not contradict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.claim_kinds import EVALUATORS
from analysis.claim_stats import VERDICTS, Verdict
from analysis.run_reader import RunData, hashable, read_run
from analysis.sweepdir import SweepLayout, locate
from dino_ablate.contract import RUNS_SUBDIR, write_atomic, write_json
from dino_ablate.contract.claims import Claim, ConfigError, read_claims

__all__ = ["ClaimResult", "ClaimsUnavailable", "ConfigError", "SweepClaims", "check_sweep_dir",
           "evaluate", "summary_line", "write_outputs"]


@dataclass(frozen=True)
class ClaimResult:
    """A claim's verdict, what was measured (one line of text) and the numbers behind it."""

    claim: Claim
    verdict: Verdict
    measured: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (f"[{self.verdict}] {self.claim.id} ({self.claim.source}): {self.measured}; "
                f"paper {self.claim.paper}")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.claim.id, "kind": self.claim.kind, "source": self.claim.source,
                "paper": self.claim.paper, "metric": self.claim.metric or None,
                "points": list(self.claim.labels), "verdict": self.verdict,
                "measured": self.measured, "line": self.line(), "values": self.values}


def evaluate(claims: Sequence[Claim], runs: Sequence[RunData]) -> list[ClaimResult]:
    """Every claim's result over `runs` (the sweep's run directories, read)."""
    results = []
    for claim in claims:
        verdict, measured, values = EVALUATORS[claim.kind](claim, runs)
        results.append(ClaimResult(claim, verdict, measured, values))
    return results


def summary_line(results: Sequence[ClaimResult]) -> str:
    """`7 of 9 claims hold, 1 fails, 1 undecided`."""
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    total = len(results)
    held = f"claim{'s' if total != 1 else ''} hold{'s' if total == 1 else ''}"
    fails = "fails" if counts["fails"] == 1 else "fail"
    return (f"{counts['holds']} of {total} {held}, {counts['fails']} {fails}, "
            f"{counts['undecided']} undecided")


# --------------------------------------------------------------------------------------------
# a sweep directory


class ClaimsUnavailable(ValueError):
    """The sweep directory does not say which sweep file it came from, or that file is gone."""


@dataclass(frozen=True)
class SweepClaims:
    """The claims of a sweep directory and their results."""

    root: Path
    sweep_file: Path
    profile: str
    results: list[ClaimResult]

    def as_dict(self) -> dict[str, Any]:
        counts = {v: sum(r.verdict == v for r in self.results) for v in VERDICTS}
        return {"sweep_dir": str(self.root), "sweep_file": str(self.sweep_file),
                "profile": self.profile, "summary": summary_line(self.results),
                "counts": {**counts, "total": len(self.results)},
                "claims": [r.as_dict() for r in self.results]}


def sweep_file_of(layout: SweepLayout, override: Path | None = None) -> tuple[Path, str]:
    """The sweep file and profile that ``sweep.json`` records (a relative path is taken from
    the sweep directory). Raises ClaimsUnavailable."""
    meta = layout.sweep_meta
    where = layout.root / "sweep.json"
    profile = meta.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ClaimsUnavailable(f"{where} does not record the sweep's profile (is {layout.root}"
                                " a sweep directory written by `dino-ablate sweep`?)")
    if override is not None:
        file = override
    else:
        recorded = meta.get("file")
        if not isinstance(recorded, str) or not recorded:
            raise ClaimsUnavailable(f"{where} does not record the sweep file; give it with "
                                    "--sweep-file FILE")
        file = Path(recorded) if Path(recorded).is_absolute() else layout.root / recorded
    if not file.is_file():
        said = "given" if override is not None else f"recorded in {where}"
        raise ClaimsUnavailable(f"the sweep file {file} {said} does not exist (moved or "
                                "deleted?); its claims cannot be read: give the file with "
                                "--sweep-file FILE")
    return file, profile


def current_runs(layout: SweepLayout) -> list[RunData]:
    """The runs of the sweep's current expansion: those ``sweep.json`` lists (every run
    directory when it lists none). Run directories left by an earlier expansion of the file
    (another recipe, other run ids) are not the sweep's points any more.

    A listed run is matched to its point by the values ``sweep.json`` records for it when its
    own ``run.json`` is missing or unreadable (else it would match every point), and a listed
    run with no directory yet is a pending run of its point: the point's claims are then
    undecided (runs missing), not decided on the seeds that happen to be there."""
    listed = layout.listed_points
    if not listed:
        return [read_run(d) for d in layout.run_dirs]
    runs = []
    found = {d.name: d for d in layout.run_dirs}
    for run_id, varied in listed.items():
        if run_id in found:
            run = read_run(found[run_id])
            if run.has_run_json or varied is None:
                runs.append(run)
                continue
        elif varied is None:  # nothing says which point it is
            continue
        else:
            run = RunData(run_dir=str(layout.root / RUNS_SUBDIR / run_id), run_id=run_id)
        run.varied = {str(k): hashable(v) for k, v in varied.items()}
        seed = varied.get("seed")
        run.seed = seed if isinstance(seed, int) else run.seed
        runs.append(run)
    return runs


def check_sweep_dir(path: Path, sweep_file: Path | None = None) -> SweepClaims:
    """Read the claims of the sweep directory `path` and evaluate them over its runs.

    Raises NotASweepDirectory, ClaimsUnavailable or ConfigError (invalid claims)."""
    layout = locate(path)
    file, profile = sweep_file_of(layout, sweep_file)
    claims = read_claims(file, profile)
    return SweepClaims(layout.root, file, profile, evaluate(claims, current_runs(layout)))


def markdown(checked: SweepClaims) -> str:
    """claims.md: the lines and the summary."""
    lines = [f"# Claims of {checked.sweep_file.name} (profile {checked.profile})", ""]
    lines += [f"- {r.line()}" for r in checked.results]
    return "\n".join([*lines, "", summary_line(checked.results), ""])


def write_outputs(checked: SweepClaims, out_dir: Path) -> list[Path]:
    """Write claims.json and claims.md under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "claims.json", out_dir / "claims.md"
    write_json(json_path, checked.as_dict())
    write_atomic(md_path, markdown(checked))
    return [json_path, md_path]

