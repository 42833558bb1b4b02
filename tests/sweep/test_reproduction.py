"""The paper's qualitative collapse outcomes at small scale: the sweep files' claims, evaluated.

Issue 4, issue 15: run the `local` profiles of `sweeps/momentum.yaml`,
`centering_sharpening.yaml` and `teacher_update.yaml` (digits, CPU, Ray), then evaluate the
sweep files' `claims:` (docs/sweeps.md, "Claims") over the run directories with
`analysis/claims.py`, the evaluator behind `dino-ablate claims`. The slow test asserts, by claim
id, the thirteen outcomes the current local recipe reproduces (:data:`REPRODUCED`):

- full DINO learns: the baseline's final teacher kNN more than 15 points above its random-init
  teacher's, in each of the three studies (`above_init`, `by: 15`; one run, the twin of all
  three); so does the previous-epoch teacher (`previous_epoch_learns`);
- no momentum (= student copy): final teacher kNN below the random-init teacher's
  (`below_init`; a diverged run counts with its last kNN), in both files;
- no momentum / student copy, previous iteration: the teacher's output collapses (`collapses`,
  mode `any`: final entropy < 0.05 nats or within 0.05 of ln K, KL < 0.01); sharpening only:
  one-dimensional collapse; centering only: uniform collapse;
- both: `healthy` (KL >= 0.1 and entropy strictly between the collapse thresholds at every
  epoch of the second half);
- the EMA teacher's final kNN beats the previous-epoch teacher's (`order`).

With the tau_t 0.02 recipe (2026-12-03) the previous-iteration teacher's head collapses to the
uniform distribution but its backbone's kNN ends above the random init (57.2 vs 46.3 %), so
`previous_iteration_below_init` is printed, no longer asserted.

The sweep files' other claims (the paper's other readings, several of which the small scale
does not reproduce) are printed with their verdicts, not asserted.

Three ways to use it:

- ``DINO_ABLATE_REPRO_OUT=DIR pytest tests/sweep/test_reproduction.py``: check sweeps already run
  into the output root DIR (``dino-ablate sweep sweeps/F.yaml --backend ray --profile local
  --out DIR``, e.g. by ``make reproduce-local``);
- without the variable, the slow test runs the three local profiles itself on the test session's
  private Ray (18 min on 2 cores in the last CI run, beside another training run), then
  checks them;
- ``python tests/sweep/test_reproduction.py [--run] DIR``: every claim of the sweep files whose
  local profile has a sweep directory under DIR, one line each, and the pass rates of files 1-5
  and 6-9 (the Makefile's order); exit code 1 when one of the asserted claims does not hold.

The runs evaluated are those of the sweep files' current local expansion (their run ids), so a
directory left by an older recipe is not mistaken for the current one. The fast tests below
check this path on synthetic run directories.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: dino_ablate importable without an install
    sys.path.insert(0, str(ROOT))

from analysis.claims import ClaimResult, evaluate, summary_line  # noqa: E402
from analysis.run_reader import read_run  # noqa: E402
from dino_ablate.runs import resolve_sweep_dir, run_dir_of  # noqa: E402
from dino_ablate.sweep import load_sweep  # noqa: E402

SWEEPS = ROOT / "sweeps"
OUT_ENV = "DINO_ABLATE_REPRO_OUT"
#: The studies whose outcomes are checked (the collapse and teacher-update studies).
COLLAPSE_SWEEPS = ("momentum", "centering_sharpening", "teacher_update")
PROFILE = "local"
#: The claims the current local recipe reproduces, asserted by the slow test (by id).
REPRODUCED: dict[str, tuple[str, ...]] = {
    "momentum": ("full_dino_learns", "no_momentum_below_init", "no_momentum_collapses"),
    "centering_sharpening": ("full_dino_learns", "sharpening_only_collapses_one_dim",
                             "centering_only_collapses_uniform", "both_healthy"),
    "teacher_update": ("full_dino_learns", "student_copy_below_init", "student_copy_collapses",
                       "previous_iteration_collapses", "previous_epoch_learns",
                       "ema_beats_previous_epoch"),
}
#: How many claims the slow test asserts.
N_ASSERTED = sum(len(ids) for ids in REPRODUCED.values())
#: The Makefile's `reproduce-local` groups: files 1-5, then 6-9.
FILE_GROUPS: dict[str, tuple[str, ...]] = {
    "1-5": ("momentum", "centering_sharpening", "teacher_update", "patch_size", "batch_size"),
    "6-9": ("components", "teacher_temperature", "output_dim", "center_momentum"),
}


# --------------------------------------------------------------------------------------------
# running the local profiles


def run_local_profiles(out_root: Path, names: Sequence[str] = COLLAPSE_SWEEPS,
                       address: str | None = None, timeout_s: float = 3 * 3600
                       ) -> dict[str, float]:
    """`dino-ablate sweep sweeps/<name>.yaml --backend ray --profile local --out out_root`
    for each name, one after the other; returns the wall seconds of each. Raises
    RuntimeError when one exits non-zero (a run failed). Runs already done are skipped by the
    launcher, so a rerun only finishes what is missing.
    """
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    seconds: dict[str, float] = {}
    for name in names:
        cmd = [sys.executable, "-m", "dino_ablate", "sweep", str(SWEEPS / f"{name}.yaml"),
               "--backend", "ray", "--profile", PROFILE, "--out", str(out_root)]
        if address:
            cmd += ["--ray-address", address]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=ROOT)
        seconds[name] = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> exit {proc.returncode}\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return seconds


# --------------------------------------------------------------------------------------------
# evaluating the claims


def check_claims(out_root: Path, name: str) -> list[ClaimResult]:
    """The claims of sweeps/<name>.yaml (local profile) over its current runs in `out_root`.

    A point whose run directory is missing is undecided ("no run"), like an unfinished one.
    """
    sweep = load_sweep(SWEEPS / f"{name}.yaml", PROFILE)
    sweep_dir = resolve_sweep_dir(sweep, out_root)
    run_dirs = [run_dir_of(sweep_dir, p.run_id) for p in sweep.points]
    runs = [read_run(d) for d in run_dirs if d.is_dir()]
    return evaluate(sweep.claims, runs)


def check_reproduction(out_root: Path, names: Sequence[str] = COLLAPSE_SWEEPS
                       ) -> dict[str, list[ClaimResult]]:
    """Every claim of each named sweep file, by file."""
    return {name: check_claims(out_root, name) for name in names}


def reproduced(results: Mapping[str, Sequence[ClaimResult]]) -> list[ClaimResult]:
    """The results of the asserted claims (:data:`REPRODUCED`) among `results`."""
    out = []
    for name, ids in REPRODUCED.items():
        if name not in results:
            continue
        by_id = {r.claim.id: r for r in results[name]}
        missing = [i for i in ids if i not in by_id]
        assert not missing, f"sweeps/{name}.yaml has no claim {missing}"
        out += [by_id[i] for i in ids]
    return out


def report(results: Mapping[str, Sequence[ClaimResult]]) -> str:
    lines = []
    for name, found in results.items():
        lines.append(f"{name}: {summary_line(found)}")
        lines += [f"  {r.line()}" for r in found]
    return "\n".join(lines)


def pass_rates(results: Mapping[str, Sequence[ClaimResult]]) -> list[str]:
    """`files 1-5 (momentum, ...): 9 of 14 claims hold, 3 fail, 2 undecided`, per group."""
    lines = []
    for group, names in FILE_GROUPS.items():
        present = [n for n in names if n in results]
        if present:
            found = [r for n in present for r in results[n]]
            lines.append(f"files {group} ({', '.join(present)}): {summary_line(found)}")
    return lines


# --------------------------------------------------------------------------------------------
# the slow test: the real local profiles


@pytest.mark.slow
@pytest.mark.ray
def test_local_profiles_reproduce_the_papers_collapse_outcomes(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    given = os.environ.get(OUT_ENV)
    if given:
        out_root = Path(given)
    else:
        ray_cluster = request.getfixturevalue("ray_cluster")
        out_root = tmp_path / "out"
        seconds = run_local_profiles(
            out_root, COLLAPSE_SWEEPS,
            address=ray_cluster.context.address_info["gcs_address"])
        print("wall seconds per sweep:", {k: round(v) for k, v in seconds.items()})
    results = check_reproduction(out_root)
    print(report(results))
    asserted = reproduced(results)
    assert len(asserted) == N_ASSERTED
    assert all(r.verdict == "holds" for r in asserted), \
        "\n" + "\n".join(r.line() for r in asserted)


# --------------------------------------------------------------------------------------------
# fast tests of this path, on synthetic run directories

LN_256 = math.log(256)


def _write_run(run_dir: Path, epochs: int, rows: Sequence[Mapping[str, float]],
               varied: Mapping[str, object], init: float = 0.47, state: str = "done",
               out_dim: int = 256) -> None:
    """The files the evaluator reads, as the launcher and the trainer write them."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "varied": varied,
                                                  "seed": 0, "profile": PROFILE}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"epochs": epochs,
                                                         "head": {"out_dim": out_dim}}))
    (run_dir / "status.json").write_text(json.dumps({"state": state, "epoch": len(rows),
                                                     "epochs": epochs}))
    (run_dir / "init.json").write_text(json.dumps({"knn_teacher_init": init,
                                                   "knn_student_init": init}))
    lines = [json.dumps({"epoch": i + 1, **row}) for i, row in enumerate(rows)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _curve(epochs: int, entropy: float, kl: float, knn: float,
           student: float | None = None, batch: float | None = None) -> list[dict[str, float]]:
    """Constant records; the batch-mean entropy is 0 with the per-image one near 0 (the
    one-dimensional collapse) and one nat above it otherwise, unless given."""
    if batch is None:
        batch = entropy if entropy < 0.05 else min(LN_256, entropy + 1.0)
    return [{"teacher_entropy": entropy, "teacher_batch_entropy": batch,
             "kl_teacher_student": kl, "knn_teacher": knn,
             "knn_student": knn if student is None else student} for _ in range(epochs)]


def _healthy_outputs(out_root: Path,
                     override: Mapping[tuple[str, str], list[dict[str, float]]] | None = None,
                     names: Sequence[str] = COLLAPSE_SWEEPS) -> None:
    """Synthetic run directories in which every asserted claim holds."""
    override = override or {}
    for name in names:
        sweep = load_sweep(SWEEPS / f"{name}.yaml", PROFILE)
        sweep_dir = resolve_sweep_dir(sweep, out_root)
        for point in sweep.points:
            epochs = point.config.epochs
            tag = "-".join(str(v) for v in point.varied.values())
            rows = {
                "ema": _curve(epochs, 2.0, 0.4, 0.70, student=0.66),
                "student_copy": _curve(epochs, LN_256 - 0.001, 0.0, 0.34),
                "previous_iteration": _curve(epochs, 0.0, 0.0, 0.40),
                "previous_epoch": _curve(epochs, 2.5, 0.3, 0.65),
                "centering-True": _curve(epochs, 1.6, 0.44, 0.70),
                "centering-False": _curve(epochs, LN_256 - 0.001, 0.0, 0.52),
                "none-True": _curve(epochs, 0.0, 0.0, 0.47),
            }[tag]
            rows = override.get((name, tag), rows)
            _write_run(run_dir_of(sweep_dir, point.run_id), epochs, rows, point.varied)


def _verdicts(results: Mapping[str, Sequence[ClaimResult]]) -> dict[str, str]:
    return {r.claim.id: r.verdict for found in results.values() for r in found}


def test_the_asserted_claims_hold_when_every_outcome_is_there(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path)
    results = check_reproduction(tmp_path)
    asserted = reproduced(results)
    assert len(asserted) == N_ASSERTED == 13
    assert all(r.verdict == "holds" for r in asserted), report(results)
    text = report(results)
    assert ("[holds] no_momentum_below_init (Table 7 row 2): update=student_copy: final teacher "
            "kNN 34.0 vs random-init 47.0: -13.0 pp") in text
    assert "[holds] ema_beats_previous_epoch (Fig. 6 right): teacher kNN update=ema 70.0 " \
           "(1 seed) > update=previous_epoch 65.0 (1 seed); paper ema 72.8" in text
    assert ("[holds] student_copy_collapses (Fig. 6 right): update=student_copy: final teacher "
            "entropy 5.544 nats of ln K 5.545 (claimed any:") in text


Rows = Callable[[int], list[dict[str, float]]]


@pytest.mark.parametrize(("sweep", "tag", "rows", "claim"), [
    ("teacher_update", "previous_epoch", lambda n: _curve(n, 2.5, 0.3, 0.75),
     "ema_beats_previous_epoch"),
    ("teacher_update", "previous_iteration", lambda n: _curve(n, 2.0, 0.4, 0.40),
     "previous_iteration_collapses"),
    ("teacher_update", "previous_epoch", lambda n: _curve(n, 2.5, 0.3, 0.55),  # +8 pp over init
     "previous_epoch_learns"),
    ("teacher_update", "student_copy", lambda n: _curve(n, 0.05, 1.5, 0.34),
     "student_copy_collapses"),
    ("momentum", "student_copy", lambda n: _curve(n, LN_256 - 0.001, 0.0, 0.60),
     "no_momentum_below_init"),
    ("momentum", "student_copy", lambda n: _curve(n, LN_256 - 0.1, 0.0, 0.30),
     "no_momentum_collapses"),
    ("centering_sharpening", "none-True", lambda n: _curve(n, 0.06, 0.0, 0.47),
     "sharpening_only_collapses_one_dim"),
    ("centering_sharpening", "centering-False", lambda n: _curve(n, LN_256 - 0.1, 0.0, 0.5),
     "centering_only_collapses_uniform"),
    ("centering_sharpening", "centering-False", lambda n: _curve(n, LN_256, 0.02, 0.5),
     "centering_only_collapses_uniform"),
    ("centering_sharpening", "centering-True",  # KL below 0.1 at one epoch of the second half
     lambda n: (_curve(n - 5, 1.6, 0.44, 0.70) + _curve(1, 1.6, 0.09, 0.70)
                + _curve(4, 1.6, 0.44, 0.70)), "both_healthy"),
    ("centering_sharpening", "centering-True",  # entropy at ln K at the end
     lambda n: _curve(n - 3, 1.6, 0.44, 0.70) + _curve(3, LN_256, 0.44, 0.70), "both_healthy"),
    ("centering_sharpening", "centering-True",  # one-hot per image, every image on one dim
     lambda n: _curve(n - 3, 0.01, 0.44, 0.70, batch=1.9) + _curve(3, 0.01, 0.44, 0.70, batch=0.0),
     "both_healthy"),
    ("momentum", "ema", lambda n: _curve(n, 2.0, 0.4, 0.61, 0.5),  # +14 pp over init
     "full_dino_learns"),
], ids=["previous_epoch_beats_ema", "previous_iteration", "previous_epoch", "student_copy",
        "no_momentum", "no_momentum_collapse", "sharpening_only",
        "centering_only_entropy", "centering_only_kl", "both_kl", "both_entropy",
        "both_batch_entropy", "ema_learns_too_little"])
def test_a_missing_outcome_fails_its_claim(tmp_path: Path, sweep: str, tag: str, rows: Rows,
                                           claim: str) -> None:
    _healthy_outputs(tmp_path, {(sweep, tag): rows(_local_epochs(sweep))})
    results = check_reproduction(tmp_path)
    failed = [r for r in reproduced(results) if r.verdict != "holds"]
    assert [r.claim.id for r in failed] == [claim], report(results)
    assert failed[0].verdict == "fails"


def _local_epochs(name: str) -> int:
    return load_sweep(SWEEPS / f"{name}.yaml", PROFILE).points[0].config.epochs


def test_a_low_kl_in_the_first_half_is_allowed(tmp_path: Path) -> None:
    half = _local_epochs("centering_sharpening") // 2
    rows = _curve(half, 1.6, 0.01, 0.5) + _curve(half, 1.6, 0.2, 0.58)
    _healthy_outputs(tmp_path, {("centering_sharpening", "centering-True"): rows})
    assert _verdicts(check_reproduction(tmp_path, ["centering_sharpening"]))["both_healthy"] \
        == "holds"


def test_unfinished_and_missing_runs_are_undecided(tmp_path: Path) -> None:
    epochs = _local_epochs("teacher_update")
    _healthy_outputs(tmp_path, {("teacher_update", "ema"): _curve(epochs // 2, 2.0, 0.4, 0.9)})
    ema_dir = next((tmp_path / "teacher_update" / "local" / "runs").glob("update-ema_*"))
    (ema_dir / "status.json").write_text(json.dumps({"state": "running", "epoch": epochs // 2,
                                                     "epochs": epochs}))
    (tmp_path / "centering_sharpening").rename(tmp_path / "elsewhere")
    results = {r.claim.id: r for r in reproduced(check_reproduction(tmp_path))}
    assert results["ema_beats_previous_epoch"].verdict == "undecided"
    assert f"not finished: running, {epochs // 2} of {epochs} epochs" in \
        results["ema_beats_previous_epoch"].measured
    assert results["sharpening_only_collapses_one_dim"].verdict == "undecided"
    assert "no run" in results["sharpening_only_collapses_one_dim"].measured


def test_truncated_last_metrics_line_is_skipped(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path, names=["momentum"])
    run_dir = next((tmp_path / "momentum" / "local" / "runs").glob("update-student_copy_*"))
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 101, "knn_teacher": 0.9')
    assert _verdicts(check_reproduction(tmp_path, ["momentum"]))["no_momentum_below_init"] \
        == "holds"


def test_a_diverged_collapse_counts_with_its_last_knn(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path, names=["momentum"])
    sweep = load_sweep(SWEEPS / "momentum.yaml", PROFILE)
    point = next(p for p in sweep.points if p.varied["teacher.update"] == "student_copy")
    run_dir = run_dir_of(resolve_sweep_dir(sweep, tmp_path), point.run_id)
    (run_dir / "status.json").write_text(json.dumps({"state": "diverged", "epoch": 12,
                                                     "epochs": 100}))
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "knn_teacher": 0.30 if e < 12 else float("nan")})
                  for e in range(1, 13)) + "\n")
    [result] = [r for r in check_reproduction(tmp_path, ["momentum"])["momentum"]
                if r.claim.id == "no_momentum_below_init"]
    assert result.verdict == "holds" and "(diverged)" in result.measured
    assert "final teacher kNN 30.0" in result.measured


def test_the_script_prints_every_claim_and_the_pass_rates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _healthy_outputs(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    claims = sum(len(load_sweep(SWEEPS / f"{n}.yaml", PROFILE).claims) for n in COLLAPSE_SWEEPS)
    assert sum(line.lstrip().startswith("[") for line in out.splitlines()) == claims
    rates = [line for line in out.splitlines() if line.startswith("files ")]
    assert len(rates) == 1, out  # no sweep directory of files 6-9 here
    assert rates[0].startswith("files 1-5 (momentum, centering_sharpening, teacher_update): ")
    assert f"of {claims} claims hold" in rates[0]
    assert f"{N_ASSERTED} of {N_ASSERTED} asserted claims hold" in out
    epochs = _local_epochs("momentum")
    _healthy_outputs(tmp_path / "bad",
                     {("momentum", "student_copy"): _curve(epochs, 2.0, 0.4, 0.6)})
    assert main([str(tmp_path / "bad")]) == 1  # neither below init nor collapsed: 2 fail
    assert f"{N_ASSERTED - 2} of {N_ASSERTED} asserted claims hold" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# as a script


def found_sweeps(out_root: Path) -> list[str]:
    """The sweep files (of the nine) whose local profile has a sweep directory under out_root."""
    names = [n for group in FILE_GROUPS.values() for n in group]
    return [n for n in names
            if resolve_sweep_dir(load_sweep(SWEEPS / f"{n}.yaml", PROFILE), out_root).is_dir()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate the sweep files' claims over their local profiles' runs (with "
        "--run, run the collapse and teacher-update profiles first); exit 1 when one of the "
        f"{N_ASSERTED} claims CI asserts does not hold.")
    parser.add_argument("out", type=Path, help="the sweeps' output root (dino-ablate --out)")
    parser.add_argument("--run", action="store_true",
                        help="run the local profiles on Ray first (done runs are skipped)")
    parser.add_argument("--sweeps", nargs="+", default=None,
                        help=f"sweep names to run with --run (default: "
                        f"{' '.join(COLLAPSE_SWEEPS)}); claims are evaluated for every sweep "
                        "file with a sweep directory under OUT")
    parser.add_argument("--address", default=None, help="an existing Ray cluster")
    args = parser.parse_args(argv)
    if args.run:
        names = args.sweeps or list(COLLAPSE_SWEEPS)
        seconds = run_local_profiles(args.out, names, address=args.address)
        for name, value in seconds.items():
            print(f"{name}: {value / 60:.1f} min")
        print(f"local profiles of {', '.join(names)}: "
              f"{sum(seconds.values()) / 60:.1f} min wall in all")
    results = check_reproduction(args.out, found_sweeps(args.out))
    print(report(results))
    for line in pass_rates(results):
        print(line)
    asserted = reproduced(results)
    held = sum(r.verdict == "holds" for r in asserted)
    expected = sum(len(REPRODUCED[n]) for n in REPRODUCED if n in results)
    print(f"{held} of {expected} asserted claims hold (full DINO learns and the collapse "
          "outcomes: what CI checks)")
    return 0 if held == expected and expected > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
