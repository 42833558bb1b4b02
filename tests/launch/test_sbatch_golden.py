"""Golden sbatch scripts, rendered by submitit itself without submitting anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dino_ablate.launch.slurm import render_sbatch, sbatch_parameters
from dino_ablate.sweep import Resources, load_sweep

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
FOLDER = "/SWEEP_DIR/slurm/%j"


def _check(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"no golden {name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("profile", ["local", "paper"])
def test_local_smoke_sbatch(profile: str) -> None:
    sweep = load_sweep(ROOT / "sweeps" / "local_smoke.yaml", profile)
    shapes: dict[Resources, int] = {}
    for point in sweep.points:
        shapes[point.resources] = shapes.get(point.resources, 0) + 1
    parts = []
    for res, count in shapes.items():
        parts.append(render_sbatch(res, f"dino-{sweep.name}", FOLDER, count, max_parallel=2,
                                   python="PYTHON"))
    _check(f"local_smoke.{profile}.sbatch", "\n#---- next array ----\n".join(parts))


def test_all_parameters_quoted() -> None:
    res = Resources(nodes=2, gpus_per_node=8, cpus_per_task=10, mem_gb=12.5, time_min=90,
                    partition="learn-fair", account="dino.lab", qos="high",
                    constraint="volta32gb&ib", signal_delay_s=120)
    text = render_sbatch(res, "dino-x", FOLDER, 3, max_parallel=None, python="PYTHON")
    _check("full_resources.sbatch", text)
    assert "#SBATCH --constraint='volta32gb&ib'" in text   # quoted: no shell sees the '&'
    assert "#SBATCH --mem=12800MB" in text
    assert "#SBATCH --ntasks-per-node=8" in text
    assert "#SBATCH --array=0-2%3" in text


def test_tasks_follow_gpus_or_cpu_tasks() -> None:
    assert sbatch_parameters(Resources(gpus_per_node=4), "j", None)["ntasks_per_node"] == 4
    assert sbatch_parameters(Resources(tasks_per_node=2), "j", None)["ntasks_per_node"] == 2
    assert "gpus_per_node" not in sbatch_parameters(Resources(), "j", None)


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_job_lock_wait_is_one_line_and_exit_2_before_anything_is_submitted(
        raw: str, tmp_path: Path) -> None:
    """DINO_ABLATE_JOB_LOCK_WAIT_S is read where a job starts; a bad value is refused when the
    submission is checked (it raised ValueError at import, in every job and in `status`)."""
    import subprocess
    import sys

    env = {**os.environ, "DINO_ABLATE_JOB_LOCK_WAIT_S": raw}
    proc = subprocess.run([sys.executable, "-m", "dino_ablate", "sweep",
                           str(ROOT / "sweeps" / "local_smoke.yaml"), "--backend", "slurm",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DINO_ABLATE_JOB_LOCK_WAIT_S" in lines[0] and repr(raw) in \
        lines[0] and "expected a number of seconds >= 0" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_job_lock_wait_defaults_to_600_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from dino_ablate.launch.slurm import job_lock_wait_s

    monkeypatch.delenv("DINO_ABLATE_JOB_LOCK_WAIT_S", raising=False)
    assert job_lock_wait_s() == 600.0
    monkeypatch.setenv("DINO_ABLATE_JOB_LOCK_WAIT_S", "2.5")
    assert job_lock_wait_s() == 2.5
