"""best_knn.pt on resume (`train._reconcile_best`): it holds an epoch of the resumed history or
it is set aside, never overwritten; the resumed epoch is written when it is the best and
best_knn.pt missed it; it only ever holds the best epoch of the history (`_save_best_knn`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from dino_ablate import checkpoint
from dino_ablate.config import load_config
from dino_ablate.rundir import RunDir
from dino_ablate.step import TrainState
from dino_ablate.train import _reconcile_best, _save_best_knn, build_state

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "head.out_dim=16",
        "head.hidden_dim=16", "head.bottleneck_dim=8"]


@pytest.fixture
def state() -> TrainState:
    torch.manual_seed(0)
    return build_state(load_config("digits", TINY), 1, torch.device("cpu"), None)


def _history(*knns: float | None) -> list[dict[str, Any]]:
    return [{"epoch": e, "knn_teacher": k} for e, k in enumerate(knns, start=1)]


def _plant(rd: RunDir, epoch: int, knn: float, marker: float) -> None:
    """A best_knn.pt of `epoch` whose weights are all `marker` (told apart from the state's)."""
    rd.checkpoints.mkdir(parents=True, exist_ok=True)
    weights = {"w": torch.full((3,), marker)}
    checkpoint.save_best(rd.checkpoints, {"student": weights, "teacher": weights,
                                          "epoch": epoch, "knn_teacher": knn})


def _best(rd: RunDir) -> dict[str, Any]:
    return torch.load(rd.checkpoints / checkpoint.BEST_KNN, weights_only=True)


def _aside(rd: RunDir) -> list[Path]:
    return sorted(rd.checkpoints.glob(f"{checkpoint.BEST_KNN}.orphaned-*"))


def test_consistent_best_is_kept_as_it_is(tmp_path: Path, state: TrainState) -> None:
    rd = RunDir(tmp_path)
    _plant(rd, 2, 0.7, marker=7.0)
    before = (rd.checkpoints / checkpoint.BEST_KNN).read_bytes()
    _reconcile_best(rd, _history(0.5, 0.7, 0.6), state)
    assert (rd.checkpoints / checkpoint.BEST_KNN).read_bytes() == before
    assert not _aside(rd)


def test_best_of_an_epoch_not_resumed_is_set_aside(tmp_path: Path, state: TrainState) -> None:
    # A fall-back to previous.pt: best_knn.pt holds epoch 3, the resumed history ends at 2.
    rd = RunDir(tmp_path)
    _plant(rd, 3, 0.9, marker=9.0)
    orphan = (rd.checkpoints / checkpoint.BEST_KNN).read_bytes()
    _reconcile_best(rd, _history(0.5, 0.7), state)
    (side,) = _aside(rd)
    assert side.read_bytes() == orphan  # moved byte for byte, not rewritten
    best = _best(rd)  # the resumed epoch 2 is the best kept: written from the restored weights
    assert best["epoch"] == 2 and best["knn_teacher"] == 0.7
    for name, tensor in state.teacher.state_dict().items():
        assert torch.equal(best["teacher"][name], tensor), name


def test_record_that_disagrees_is_set_aside(tmp_path: Path, state: TrainState) -> None:
    # Epoch 2 was re-run after a fall-back and evaluated differently: the old file is not its.
    rd = RunDir(tmp_path)
    _plant(rd, 2, 0.8, marker=8.0)
    history = _history(0.5, 0.4)
    _reconcile_best(rd, history, state)
    assert len(_aside(rd)) == 1
    assert not (rd.checkpoints / checkpoint.BEST_KNN).exists()  # epoch 1's weights are gone
    # and none is written until an epoch beats epoch 1: best_knn.pt is only ever the best
    _save_best_knn(rd, [*history, {"epoch": 3, "knn_teacher": 0.45}], state.student,
                   state.teacher)
    assert not (rd.checkpoints / checkpoint.BEST_KNN).exists()
    _save_best_knn(rd, [*history, {"epoch": 3, "knn_teacher": 0.55}], state.student,
                   state.teacher)
    assert _best(rd)["epoch"] == 3


def test_restart_without_a_checkpoint_sets_the_old_best_aside(tmp_path: Path,
                                                              state: TrainState) -> None:
    rd = RunDir(tmp_path)
    _plant(rd, 5, 0.9, marker=9.0)
    _reconcile_best(rd, [], state)
    assert len(_aside(rd)) == 1 and not (rd.checkpoints / checkpoint.BEST_KNN).exists()


def test_unreadable_best_is_set_aside(tmp_path: Path, state: TrainState) -> None:
    rd = RunDir(tmp_path)
    rd.checkpoints.mkdir(parents=True)
    (rd.checkpoints / checkpoint.BEST_KNN).write_bytes(b"\x00garbage")
    _reconcile_best(rd, _history(0.5, None), state)
    (side,) = _aside(rd)
    assert side.read_bytes() == b"\x00garbage"


def test_kill_between_the_epoch_and_its_best_writes_the_best(tmp_path: Path,
                                                             state: TrainState) -> None:
    # The epoch's checkpoint landed, its best_knn.pt did not: the resume writes it.
    rd = RunDir(tmp_path)
    _plant(rd, 1, 0.5, marker=5.0)
    _reconcile_best(rd, _history(0.5, 0.7), state)
    best = _best(rd)
    assert best["epoch"] == 2 and best["knn_teacher"] == 0.7 and not _aside(rd)
    for name, tensor in state.student.state_dict().items():
        assert torch.equal(best["student"][name], tensor), name


@pytest.mark.parametrize("knns", [(0.5, 0.4), (0.5, None), (0.5, math.nan)])
def test_resumed_epoch_that_is_not_the_best_writes_nothing(tmp_path: Path, state: TrainState,
                                                           knns: tuple[float | None, ...]
                                                           ) -> None:
    rd = RunDir(tmp_path)
    _plant(rd, 1, 0.5, marker=5.0)
    _reconcile_best(rd, _history(*knns), state)
    assert _best(rd)["epoch"] == 1 and not _aside(rd)


def test_names_set_aside_never_collide(tmp_path: Path, state: TrainState) -> None:
    rd = RunDir(tmp_path)
    for _ in range(3):
        _plant(rd, 9, 0.9, marker=9.0)
        _reconcile_best(rd, [], state)
    assert len(_aside(rd)) == 3


def test_unreadable_best_is_named_in_one_line(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.checkpoints.mkdir(parents=True)
    (rd.checkpoints / checkpoint.BEST_KNN).write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError) as err:
        checkpoint.read_best(rd.checkpoints)
    text = str(err.value)
    assert len(text.splitlines()) == 1 and "weights_only" not in text and "unreadable" in text


def test_both_checkpoints_unusable_are_both_reported(tmp_path: Path) -> None:
    for name in (checkpoint.LAST, checkpoint.PREVIOUS):
        (tmp_path / name).write_bytes(b"\x00garbage")
    state, unusable = checkpoint.latest_usable(tmp_path, {})
    assert state is None
    assert unusable == [tmp_path / checkpoint.LAST, tmp_path / checkpoint.PREVIOUS]
