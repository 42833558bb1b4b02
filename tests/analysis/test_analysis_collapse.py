"""analysis.collapse.detect on hand-built entropy/KL series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.collapse import CollapseResult, collapse_masks, detect

LN_K = math.log(1024)  # 6.931
HEALTHY_H, HEALTHY_KL = 2.5, 0.4


def test_uniform_collapse_is_found_with_its_start_epoch() -> None:
    entropy = [HEALTHY_H] * 4 + [LN_K - 1e-4] * 6
    kl = [HEALTHY_KL] * 4 + [1e-4] * 6
    result = detect(entropy, kl, LN_K)
    assert result == CollapseResult("collapsed-uniform", start_index=4, start_epoch=5)
    assert result.collapsed


def test_one_dimensional_collapse_is_found() -> None:
    entropy = [HEALTHY_H] * 2 + [0.001] * 5
    kl = [HEALTHY_KL] * 2 + [0.0] * 5
    assert detect(entropy, kl, LN_K) == CollapseResult("collapsed-one-dim", 2, 3)


def test_healthy_run() -> None:
    result = detect([HEALTHY_H] * 20, [HEALTHY_KL] * 20, LN_K)
    assert result == CollapseResult("healthy") and not result.collapsed


def test_collapse_shorter_than_patience_is_not_sustained() -> None:
    entropy = [HEALTHY_H] * 5 + [LN_K] * 2
    kl = [HEALTHY_KL] * 5 + [0.0] * 2
    assert detect(entropy, kl, LN_K, patience=3).kind == "healthy"
    assert detect(entropy, kl, LN_K, patience=2).kind == "collapsed-uniform"


def test_recovered_collapse_is_healthy() -> None:
    # Near one-dim collapse at epochs 3-7, then recovery (seen in the small-scale study).
    entropy = [HEALTHY_H] * 2 + [0.01] * 5 + [HEALTHY_H] * 3
    kl = [HEALTHY_KL] * 2 + [0.001] * 5 + [HEALTHY_KL] * 3
    assert detect(entropy, kl, LN_K).kind == "healthy"


def test_entropy_at_ln_k_with_large_kl_is_not_collapse() -> None:
    assert detect([LN_K] * 5, [0.02] * 5, LN_K).kind == "healthy"


def test_uniform_tolerance_is_relative_to_ln_k() -> None:
    kl = [0.0] * 3
    assert detect([0.96 * LN_K] * 3, kl, LN_K).kind == "collapsed-uniform"
    assert detect([0.94 * LN_K] * 3, kl, LN_K).kind == "healthy"
    assert detect([0.94 * LN_K] * 3, kl, LN_K, uniform_rel_tol=0.1).kind == "collapsed-uniform"


def test_nan_breaks_a_streak_and_none_is_accepted() -> None:
    entropy: list[float | None] = [0.0, 0.0, None, 0.0, 0.0]
    kl = [0.0, 0.0, 0.0, 0.0, float("nan")]
    assert detect(entropy, kl, LN_K, patience=2).kind == "healthy"


def test_unknown_ln_k_disables_only_the_uniform_test() -> None:
    assert detect([LN_K] * 4, [0.0] * 4, None).kind == "healthy"
    assert detect([0.0] * 4, [0.0] * 4, None).kind == "collapsed-one-dim"


def test_epochs_give_the_start_epoch() -> None:
    result = detect([0.0] * 4, [0.0] * 4, LN_K, epochs=[10, 20, 30, 40])
    assert (result.start_index, result.start_epoch) == (0, 10)


def test_numpy_arrays_are_accepted() -> None:
    uniform, one_dim = collapse_masks(np.array([LN_K, 0.0, 2.0]), np.zeros(3), LN_K)
    assert uniform.tolist() == [True, False, False]
    assert one_dim.tolist() == [False, True, False]


def test_empty_series_is_healthy() -> None:
    assert detect([], [], LN_K).kind == "healthy"


@pytest.mark.parametrize(
    ("entropy", "kl", "kwargs", "message"),
    [
        ([1.0, 2.0], [1.0], {}, "same length"),
        ([1.0], [1.0], {"patience": 0}, "patience"),
        ([1.0], [1.0], {"epochs": [1, 2]}, "epochs"),
    ],
)
def test_bad_arguments_raise(entropy: list[float], kl: list[float], kwargs: dict[str, object],
                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect(entropy, kl, LN_K, **kwargs)  # type: ignore[arg-type]
