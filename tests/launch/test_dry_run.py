"""`--dry-run` and the compute estimate (no scheduler needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_ablate.cli import main
from dino_ablate.config import from_dict
from dino_ablate.launch.cost import estimate
from dino_ablate.sweep import Resources

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("local_crops", "hours"), [(0, 15.3), (2, 17.0), (6, 20.3), (10, 24.2)])
def test_estimate_reproduces_table_8(local_crops: int, hours: float) -> None:
    """ViT-S/16, 100 epochs on 16 V100 (two 8-GPU nodes): the paper's Table 8 wall times."""
    cfg = from_dict({"epochs": 100, "data": {"dataset": "imagefolder", "root": "/x",
                                             "num_local_crops": local_crops}})
    cost = estimate(cfg, Resources(nodes=2, gpus_per_node=8))
    assert cost.device == "GPU"
    assert cost.wall_hours == pytest.approx(hours, rel=0.06)


def test_cpu_points_are_counted_in_cpu_hours() -> None:
    cfg = from_dict({"epochs": 3, "data": {"dataset": "digits"}, "runtime": {"device": "cpu"}})
    cost = estimate(cfg, Resources(tasks_per_node=2))
    assert cost.device == "CPU" and cost.device_hours > 0
    assert cost.wall_hours == pytest.approx(cost.device_hours / 2)


@pytest.mark.parametrize("profile", ["local", "paper"])
def test_dry_run_prints_the_table_and_creates_nothing(
        profile: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["sweep", str(ROOT / "sweeps" / "local_smoke.yaml"), "--backend", "slurm",
                 "--profile", profile, "--out", str(out), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0
    assert text.count("pending") == 3 and "estimated compute" in text
    assert ("GPU-hours" if profile == "paper" else "CPU-hours") in text
    assert "normalization-sinkhorn_kind-cross_entropy_" in text
    assert not out.exists()
