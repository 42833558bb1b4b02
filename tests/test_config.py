"""Config loading: defaults, overrides and clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from dino_ablate.config import ConfigError, from_dict, load_config, to_dict


def test_defaults_follow_the_paper() -> None:
    cfg = from_dict({"data": {"root": "/imagenet"}})
    assert cfg.model.arch == "vit_small_patch16_224" and cfg.model.patch_size == 16
    assert cfg.head.out_dim == 65536 and cfg.head.bottleneck_dim == 256
    assert (cfg.teacher.momentum, cfg.teacher.momentum_end) == (0.996, 1.0)
    assert (cfg.loss.student_temp, cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp) == (
        0.1, 0.04, 0.07)
    assert cfg.loss.warmup_teacher_temp_epochs == 30 and cfg.loss.center_momentum == 0.9
    assert cfg.optim.lr == 5e-4 and cfg.optim.min_lr == 1e-6 and cfg.optim.warmup_epochs == 10
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)
    assert cfg.optim.clip_grad == 3.0 and cfg.optim.freeze_last_layer_epochs == 1
    assert cfg.model.drop_path_rate == 0.1
    assert cfg.data.num_local_crops == 8 and cfg.data.global_crop_size == 224
    assert cfg.data.local_crop_size == 96
    assert cfg.data.global_crop_scale == (0.4, 1.0) and cfg.data.local_crop_scale == (0.05, 0.4)
    assert cfg.optim.batch_size == 1024 and cfg.scaled_lr == pytest.approx(2e-3)


def test_round_trip() -> None:
    cfg = load_config("digits")
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("raw, key, words", [
    ({"teacher": {"momentun": 0.9}}, "teacher.momentun", "did you mean 'momentum'"),
    ({"teacher": {"momentum": 1.2}}, "teacher.momentum", "<= 1"),
    ({"teacher": {"update": "emma"}}, "teacher.update", "'ema'"),
    ({"optim": {"batch_size": "64"}}, "optim.batch_size", "integer"),
    ({"optim": {"batch_size": 0}}, "optim.batch_size", ">= 1"),
    ({"loss": {"sharpening": "yes"}}, "loss.sharpening", "true or false"),
    ({"data": {"global_crop_scale": [0.9, 0.4]}}, "data.global_crop_scale", "0 < low < high"),
    ({"data": {"dataset": "imagefolder"}}, "data.root", "needs a local folder"),
    ({"epochs": 1.5}, "epochs", "integer"),
    ({"dataa": {}}, "dataa", "did you mean 'data'"),
])
def test_errors_name_key_value_and_allowed(raw: dict, key: str, words: str) -> None:
    raw = {"data": {"dataset": "digits"}, **raw} if "data" not in raw else raw
    with pytest.raises(ConfigError) as info:
        from_dict(raw, source="x.yaml")
    msg = str(info.value)
    assert msg.startswith("x.yaml: ") and key in msg and words in msg


def test_override_parsing() -> None:
    cfg = load_config("digits", ["teacher.update=student_copy", "data.global_crop_scale=[0.5, 1]",
                                 "loss.sharpening=false"])
    assert cfg.teacher.update == "student_copy" and cfg.data.global_crop_scale == (0.5, 1.0)
    assert cfg.loss.sharpening is False


def test_exponent_without_a_dot_is_a_number() -> None:
    """YAML 1.1 reads `8e-3` as a string; a user writing `--set optim.lr=8e-3` means 0.008."""
    cfg = load_config("digits", ["optim.lr=8e-3", "optim.weight_decay=4E-2",
                                 "loss.teacher_temp=1.5e-2"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.loss.teacher_temp) == (0.008, 0.04, 0.015)
    with pytest.raises(ConfigError, match="must be a number"):
        load_config("digits", ["optim.lr=8e"])


def test_unknown_shipped_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_config("digit")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dino_ablate", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_config_error_exits_2_without_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _cli("train", "digits", "--set", "teacher.momentum=1.5", "--out", str(out))
    assert res.returncode == 2
    assert "teacher.momentum: 1.5 is out of range" in res.stderr and "digits.yaml" in res.stderr
    assert not out.exists()


def test_cli_batch_not_divisible_by_world(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "dino_ablate", "train", "digits", "--out",
                          str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    assert "optim.batch_size: 16 is not divisible by the world size 3" in res.stderr
    assert not out.exists()
