"""The paper's qualitative collapse outcomes at small scale, checked over run directories.

Issue 4: run the `local` profiles of `sweeps/momentum.yaml`, `centering_sharpening.yaml` and
`teacher_update.yaml` (digits, CPU, Ray), then check, from the run directories alone
(docs/run_directory.md: `status.json`, `init.json`, `metrics.jsonl`, `config.yaml`; nothing of
`analysis/` is used):

- no momentum, student copy, previous iteration: the final teacher kNN (`knn_teacher` of the last
  `metrics.jsonl` record) is at or below the random-init teacher's (`init.json`
  `knn_teacher_init`);
- sharpening only (centering off): final teacher entropy < 0.05 and KL < 0.01 (one-dim collapse);
- centering only (sharpening off): final teacher entropy within 0.05 of ln K and KL < 0.01;
- both: KL >= 0.1 in every epoch of the second half;
- the EMA teacher's final kNN beats the previous-epoch teacher's.

Three ways to use it:

- ``DINO_ABLATE_REPRO_OUT=DIR pytest tests/sweep/test_reproduction.py``: check sweeps already run
  into the output root DIR (``dino-ablate sweep sweeps/F.yaml --backend ray --profile local
  --out DIR``, e.g. by ``make reproduce-local``);
- without the variable, the slow test runs the three local profiles itself on the test session's
  private Ray (18 min on 2 cores in the last CI run, beside another training run), then
  checks them;
- ``python tests/sweep/test_reproduction.py [--run] DIR``: the same from a script or CI, printing
  the measured numbers; exit code 1 when an outcome is not reproduced.

The fast tests below check the checker on synthetic run directories.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: dino_ablate importable without an install
    sys.path.insert(0, str(ROOT))

from dino_ablate.runs import resolve_sweep_dir, run_dir_of  # noqa: E402
from dino_ablate.sweep import load_sweep  # noqa: E402

SWEEPS = ROOT / "sweeps"
OUT_ENV = "DINO_ABLATE_REPRO_OUT"
#: The studies whose outcomes are checked (the collapse and teacher-update studies).
COLLAPSE_SWEEPS = ("momentum", "centering_sharpening", "teacher_update")
PROFILE = "local"

ENTROPY_ONE_DIM_MAX = 0.05   # nats: sharpening only ends one-hot
ENTROPY_UNIFORM_TOL = 0.05   # nats from ln K: centering only ends uniform
KL_COLLAPSED_MAX = 0.01      # nats: a collapsed teacher and student agree
KL_HEALTHY_MIN = 0.1         # nats: both operations keep them apart


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
# reading run directories


@dataclass(frozen=True)
class Run:
    """What the checks need from one run directory."""

    label: str                       # e.g. "teacher_update/teacher.update=ema"
    state: str | None
    epochs: int                      # planned
    ln_k: float
    knn_teacher_init: float | None
    metrics: list[dict[str, Any]]

    @property
    def complete(self) -> bool:
        return self.state == "done" and len(self.metrics) == self.epochs

    def final_knn_teacher(self) -> float | None:
        values = [float(r["knn_teacher"]) for r in self.metrics
                  if r.get("knn_teacher") is not None]
        return values[-1] if values else None

    def final(self, key: str) -> float:
        return float(self.metrics[-1][key])


class MissingRun(Exception):
    pass


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl; a truncated last line (a run killed mid-write) is skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_run(run_dir: Path, label: str) -> Run:
    if not run_dir.is_dir():
        raise MissingRun(f"{label}: no run directory {run_dir} (run the local profile first)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) \
        if (run_dir / "config.yaml").is_file() else None
    if not isinstance(config, dict):
        raise MissingRun(f"{label}: {run_dir} has no config.yaml (never started)")
    status = _read_json(run_dir / "status.json") or {}
    init = _read_json(run_dir / "init.json") or {}
    init_knn = init.get("knn_teacher_init")
    return Run(label=label, state=status.get("state"), epochs=int(config["epochs"]),
               ln_k=math.log(int(config["head"]["out_dim"])),
               knn_teacher_init=float(init_knn) if init_knn is not None else None,
               metrics=_read_metrics(run_dir / "metrics.jsonl"))


def sweep_runs(out_root: Path, name: str) -> dict[tuple[tuple[str, Any], ...], Path]:
    """Run directories of the current local expansion of sweeps/<name>.yaml, by varied values."""
    sweep = load_sweep(SWEEPS / f"{name}.yaml", PROFILE)
    sweep_dir = resolve_sweep_dir(sweep, out_root)
    return {tuple(sorted(p.varied.items())): run_dir_of(sweep_dir, p.run_id)
            for p in sweep.points}


def find_run(out_root: Path, name: str, **varied: Any) -> Run:
    """The run of sweep `name` whose varied keys (dotted, `__` for `.`) have these values."""
    wanted = {k.replace("__", "."): v for k, v in varied.items()}
    for key, run_dir in sweep_runs(out_root, name).items():
        values = dict(key)
        if all(values.get(k) == v for k, v in wanted.items()):
            label = f"{name}/" + ", ".join(f"{k}={v}" for k, v in wanted.items())
            return read_run(run_dir, label)
    raise MissingRun(f"{name}: no point with {wanted} in sweeps/{name}.yaml")


# --------------------------------------------------------------------------------------------
# the checks


@dataclass(frozen=True)
class Outcome:
    """One qualitative claim of the paper, with what was measured."""

    claim: str
    reproduced: bool
    measured: str

    def line(self) -> str:
        return f"[{'ok' if self.reproduced else 'NOT REPRODUCED'}] {self.claim}: {self.measured}"


def _checked(claim: str, check: Callable[[], tuple[bool, str]]) -> Outcome:
    try:
        ok, measured = check()
    except MissingRun as exc:
        return Outcome(claim, False, str(exc))
    return Outcome(claim, ok, measured)


def _unfinished(run: Run, allow_diverged: bool = False) -> str | None:
    if run.complete or (allow_diverged and run.state == "diverged" and run.metrics):
        return None
    return (f"{run.label} is not finished (state {run.state!r}, {len(run.metrics)} of "
            f"{run.epochs} epochs)")


def knn_at_most_random_init(out_root: Path, name: str, claim: str, **varied: Any) -> Outcome:
    """The final teacher kNN is at or below the random-init teacher's. A run that diverged
    (non-finite loss) counts with its last kNN: it failed to learn as the paper's collapsed
    runs did."""
    def check() -> tuple[bool, str]:
        run = find_run(out_root, name, **varied)
        problem = _unfinished(run, allow_diverged=True)
        final, init = run.final_knn_teacher(), run.knn_teacher_init
        if problem or final is None or init is None:
            return False, problem or f"{run.label}: no final or random-init teacher kNN"
        return final <= init, (f"final teacher kNN {final:.4f} vs random-init {init:.4f}"
                               + (" (diverged)" if run.state == "diverged" else ""))
    return _checked(claim, check)


def ema_beats_previous_epoch(out_root: Path) -> Outcome:
    def check() -> tuple[bool, str]:
        ema = find_run(out_root, "teacher_update", teacher__update="ema")
        prev = find_run(out_root, "teacher_update", teacher__update="previous_epoch")
        for run in (ema, prev):
            if (problem := _unfinished(run)) is not None:
                return False, problem
        a, b = ema.final_knn_teacher(), prev.final_knn_teacher()
        if a is None or b is None:
            return False, "no final teacher kNN"
        return a > b, f"final teacher kNN: EMA {a:.4f}, previous epoch {b:.4f}"
    return _checked("EMA teacher beats the previous-epoch teacher (Fig. 6 right)", check)


def sharpening_only_collapses_one_dim(out_root: Path) -> Outcome:
    def check() -> tuple[bool, str]:
        run = find_run(out_root, "centering_sharpening", loss__normalization="none",
                       loss__sharpening=True)
        if (problem := _unfinished(run)) is not None:
            return False, problem
        h, kl = run.final("teacher_entropy"), run.final("kl_teacher_student")
        ok = h < ENTROPY_ONE_DIM_MAX and kl < KL_COLLAPSED_MAX
        return ok, (f"final entropy {h:.4f} (< {ENTROPY_ONE_DIM_MAX}), KL {kl:.4f} "
                    f"(< {KL_COLLAPSED_MAX})")
    return _checked("sharpening only -> one-dimensional collapse (Fig. 7)", check)


def centering_only_collapses_uniform(out_root: Path) -> Outcome:
    def check() -> tuple[bool, str]:
        run = find_run(out_root, "centering_sharpening", loss__normalization="centering",
                       loss__sharpening=False)
        if (problem := _unfinished(run)) is not None:
            return False, problem
        h, kl = run.final("teacher_entropy"), run.final("kl_teacher_student")
        ok = abs(h - run.ln_k) <= ENTROPY_UNIFORM_TOL and kl < KL_COLLAPSED_MAX
        return ok, (f"final entropy {h:.4f} vs ln K {run.ln_k:.4f} (within "
                    f"{ENTROPY_UNIFORM_TOL}), KL {kl:.4f} (< {KL_COLLAPSED_MAX})")
    return _checked("centering only -> uniform collapse (Fig. 7)", check)


def both_keep_kl_up(out_root: Path) -> Outcome:
    def check() -> tuple[bool, str]:
        run = find_run(out_root, "centering_sharpening", loss__normalization="centering",
                       loss__sharpening=True)
        if (problem := _unfinished(run)) is not None:
            return False, problem
        second_half = [r for r in run.metrics if r["epoch"] > run.epochs / 2]
        low = [(r["epoch"], r["kl_teacher_student"]) for r in second_half
               if not r["kl_teacher_student"] >= KL_HEALTHY_MIN]
        kl_min = min(r["kl_teacher_student"] for r in second_half)
        measured = (f"min KL over epochs {second_half[0]['epoch']}-{second_half[-1]['epoch']} "
                    f"{kl_min:.4f} (>= {KL_HEALTHY_MIN})")
        if low:
            measured += f"; below at epochs {[e for e, _ in low][:10]}"
        return not low, measured
    return _checked("centering and sharpening -> KL stays >= 0.1 in the second half (Fig. 7)",
                    check)


def check_reproduction(out_root: Path, names: Iterable[str] = COLLAPSE_SWEEPS
                       ) -> list[Outcome]:
    """Every qualitative outcome of issue 4 for the named studies (run into `out_root`)."""
    names = set(names)
    outcomes: list[Outcome] = []
    if "momentum" in names:
        outcomes.append(knn_at_most_random_init(
            out_root, "momentum", "no momentum -> teacher kNN <= random init (Table 7 row 2)",
            teacher__update="student_copy"))
    if "centering_sharpening" in names:
        outcomes += [sharpening_only_collapses_one_dim(out_root),
                     centering_only_collapses_uniform(out_root), both_keep_kl_up(out_root)]
    if "teacher_update" in names:
        for rule in ("student_copy", "previous_iteration"):
            outcomes.append(knn_at_most_random_init(
                out_root, "teacher_update",
                f"{rule.replace('_', ' ')} teacher -> kNN <= random init (Fig. 6 right)",
                teacher__update=rule))
        outcomes.append(ema_beats_previous_epoch(out_root))
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    return "\n".join(o.line() for o in outcomes)


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
    outcomes = check_reproduction(out_root)
    print(report(outcomes))
    assert len(outcomes) == 7
    assert all(o.reproduced for o in outcomes), "\n" + report(outcomes)


# --------------------------------------------------------------------------------------------
# fast tests of the checker, on synthetic run directories

LN_256 = math.log(256)


def _write_run(run_dir: Path, epochs: int, rows: Sequence[Mapping[str, float]],
               init: float = 0.47, state: str = "done", out_dim: int = 256) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"epochs": epochs,
                                                         "head": {"out_dim": out_dim}}))
    (run_dir / "status.json").write_text(json.dumps({"state": state, "epoch": len(rows)}))
    (run_dir / "init.json").write_text(json.dumps({"knn_teacher_init": init,
                                                   "knn_student_init": init}))
    lines = [json.dumps({"epoch": i + 1, **row}) for i, row in enumerate(rows)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _curve(epochs: int, entropy: float, kl: float, knn: float) -> list[dict[str, float]]:
    return [{"teacher_entropy": entropy, "kl_teacher_student": kl, "knn_teacher": knn}
            for _ in range(epochs)]


def _healthy_outputs(out_root: Path,
                     override: Mapping[tuple[str, str], list[dict[str, float]]] | None = None
                     ) -> None:
    """Synthetic run directories in which every outcome is reproduced."""
    override = override or {}
    for name in COLLAPSE_SWEEPS:
        sweep = load_sweep(SWEEPS / f"{name}.yaml", PROFILE)
        sweep_dir = resolve_sweep_dir(sweep, out_root)
        for point in sweep.points:
            epochs = point.config.epochs
            tag = "-".join(str(v) for v in point.varied.values())
            rows = {
                "ema": _curve(epochs, 2.0, 0.4, 0.70),
                "student_copy": _curve(epochs, 0.05, 1.5, 0.34),
                "previous_iteration": _curve(epochs, 0.0, 0.0, 0.40),
                "previous_epoch": _curve(epochs, 2.5, 0.3, 0.60),
                "centering-True": _curve(epochs, 1.6, 0.44, 0.58),
                "centering-False": _curve(epochs, LN_256 - 0.001, 0.0, 0.52),
                "none-True": _curve(epochs, 0.0, 0.0, 0.47),
            }[tag]
            rows = override.get((name, tag), rows)
            _write_run(run_dir_of(sweep_dir, point.run_id), epochs, rows)


def test_checker_passes_when_every_outcome_is_there(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path)
    outcomes = check_reproduction(tmp_path)
    assert len(outcomes) == 7
    assert all(o.reproduced for o in outcomes), report(outcomes)
    assert "final teacher kNN 0.3400 vs random-init 0.4700" in report(outcomes)


@pytest.mark.parametrize(("sweep", "tag", "rows", "claim"), [
    ("teacher_update", "ema", _curve(100, 2.0, 0.4, 0.55), "EMA teacher beats"),
    ("teacher_update", "previous_iteration", _curve(100, 2.0, 0.4, 0.48),
     "previous iteration teacher"),
    ("momentum", "student_copy", _curve(60, 2.0, 0.4, 0.60), "no momentum"),
    ("centering_sharpening", "none-True", _curve(60, 0.06, 0.0, 0.47), "sharpening only"),
    ("centering_sharpening", "centering-False", _curve(60, LN_256 - 0.1, 0.0, 0.5),
     "centering only"),
    ("centering_sharpening", "centering-False", _curve(60, LN_256, 0.02, 0.5),
     "centering only"),
    ("centering_sharpening", "centering-True",
     _curve(45, 1.6, 0.44, 0.58) + _curve(1, 1.6, 0.09, 0.58) + _curve(14, 1.6, 0.44, 0.58),
     "centering and sharpening"),
])
def test_checker_fails_when_an_outcome_is_missing(tmp_path: Path, sweep: str, tag: str,
                                                  rows: list[dict[str, float]],
                                                  claim: str) -> None:
    _healthy_outputs(tmp_path, {(sweep, tag): rows})
    failed = [o for o in check_reproduction(tmp_path) if not o.reproduced]
    assert len(failed) == 1 and failed[0].claim.startswith(claim), report(failed)


def _local_epochs(name: str) -> int:
    return load_sweep(SWEEPS / f"{name}.yaml", PROFILE).points[0].config.epochs


def test_a_low_kl_in_the_first_half_is_allowed(tmp_path: Path) -> None:
    half = _local_epochs("centering_sharpening") // 2
    rows = _curve(half, 1.6, 0.01, 0.5) + _curve(half, 1.6, 0.2, 0.58)
    _healthy_outputs(tmp_path, {("centering_sharpening", "centering-True"): rows})
    assert all(o.reproduced for o in check_reproduction(tmp_path, ["centering_sharpening"]))


def test_unfinished_and_missing_runs_are_not_reproductions(tmp_path: Path) -> None:
    epochs = _local_epochs("teacher_update")
    _healthy_outputs(tmp_path, {("teacher_update", "ema"): _curve(epochs // 2, 2.0, 0.4, 0.9)})
    (tmp_path / "centering_sharpening").rename(tmp_path / "elsewhere")
    outcomes = {o.claim.split(" ")[0]: o for o in check_reproduction(tmp_path)}
    assert not outcomes["EMA"].reproduced
    assert f"{epochs // 2} of {epochs} epochs" in outcomes["EMA"].measured
    assert not outcomes["sharpening"].reproduced
    assert "no run directory" in outcomes["sharpening"].measured


def test_truncated_last_metrics_line_is_skipped(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path)
    run_dir = next((tmp_path / "momentum" / "local" / "runs").glob("update-student_copy_*"))
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 61, "knn_teacher": 0.9')
    assert all(o.reproduced for o in check_reproduction(tmp_path, ["momentum"]))


def test_a_diverged_collapse_counts_with_its_last_knn(tmp_path: Path) -> None:
    _healthy_outputs(tmp_path)
    sweep = load_sweep(SWEEPS / "momentum.yaml", PROFILE)
    point = next(p for p in sweep.points if p.varied["teacher.update"] == "student_copy")
    run_dir = run_dir_of(resolve_sweep_dir(sweep, tmp_path), point.run_id)
    (run_dir / "status.json").write_text(json.dumps({"state": "diverged", "epoch": 12}))
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "knn_teacher": 0.30}) for e in range(1, 13)) + "\n")
    [outcome] = check_reproduction(tmp_path, ["momentum"])
    assert outcome.reproduced and "(diverged)" in outcome.measured


# --------------------------------------------------------------------------------------------
# as a script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check (and with --run first run) the local profiles of the collapse and "
        "teacher-update sweeps against the paper's qualitative outcomes.")
    parser.add_argument("out", type=Path, help="the sweeps' output root (dino-ablate --out)")
    parser.add_argument("--run", action="store_true",
                        help="run the local profiles on Ray first (done runs are skipped)")
    parser.add_argument("--sweeps", nargs="+", default=list(COLLAPSE_SWEEPS),
                        help=f"sweep names to run (default: {' '.join(COLLAPSE_SWEEPS)}); "
                        "outcomes are checked for the collapse studies among them")
    parser.add_argument("--address", default=None, help="an existing Ray cluster")
    args = parser.parse_args(argv)
    if args.run:
        seconds = run_local_profiles(args.out, args.sweeps, address=args.address)
        for name, value in seconds.items():
            print(f"{name}: {value / 60:.1f} min")
        print(f"local profiles of {', '.join(args.sweeps)}: "
              f"{sum(seconds.values()) / 60:.1f} min wall in all")
    checked = [n for n in args.sweeps if n in COLLAPSE_SWEEPS]
    outcomes = check_reproduction(args.out, checked)
    print(report(outcomes))
    return 0 if all(o.reproduced for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
