"""Schedules against the official numpy cosine_scheduler (re-implemented here) and by hand."""

import math

import numpy as np
import pytest

from dino_ablate.config import from_dict
from dino_ablate.schedules import Schedules, cosine_schedule, teacher_temperature


def official_cosine(base: float, final: float, epochs: int, niter: int, warmup_epochs: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """utils.cosine_scheduler of facebookresearch/dino."""
    warmup = np.array([])
    warmup_iters = warmup_epochs * niter
    if warmup_epochs > 0:
        warmup = np.linspace(start_warmup, base, warmup_iters)
    iters = np.arange(epochs * niter - warmup_iters)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, sched))


def test_cosine_matches_official_array() -> None:
    ref = official_cosine(2e-3, 1e-6, epochs=12, niter=7, warmup_epochs=3)
    ours = [cosine_schedule(i, 84, 2e-3, 1e-6, warmup_steps=21) for i in range(84)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_momentum_formula() -> None:
    # m(i) = 1 - 0.002 (1 + cos(pi i / N)) for 0.996 -> 1 (DINO.md §2.4)
    n = 50
    for i in (0, 7, 25, 49):
        expected = 1 - 0.002 * (1 + math.cos(math.pi * i / n))
        assert cosine_schedule(i, n, 0.996, 1.0) == pytest.approx(expected, abs=1e-12)
    assert cosine_schedule(0, n, 0.996, 1.0) == pytest.approx(0.996)


def test_teacher_temperature_warmup_by_epoch() -> None:
    temps = [teacher_temperature(e, 0.04, 0.07, 30) for e in range(40)]
    np.testing.assert_allclose(temps[:30], np.linspace(0.04, 0.07, 30))
    assert temps[29] == pytest.approx(0.07) and temps[35] == pytest.approx(0.07)


def test_schedules_object() -> None:
    cfg = from_dict({"data": {"dataset": "digits"}, "epochs": 4,
                     "optim": {"batch_size": 512, "warmup_epochs": 1, "lr": 5e-4},
                     "loss": {"warmup_teacher_temp_epochs": 2}})
    s = Schedules(cfg, steps_per_epoch=10)
    assert s.total_steps == 40
    assert s.lr(0) == 0.0
    assert s.lr(9) == pytest.approx(1e-3)  # 5e-4 * 512 / 256, end of warm-up
    assert s.teacher_temp(0) == pytest.approx(0.04) and s.teacher_temp(19) == pytest.approx(0.07)
    assert s.last_layer_frozen(9) and not s.last_layer_frozen(10)
    assert s.weight_decay(0) == pytest.approx(0.04)
    no_sharp = from_dict({"data": {"dataset": "digits"}, "loss": {"sharpening": False}})
    assert Schedules(no_sharp, 10).teacher_temp(0) == pytest.approx(0.1)
