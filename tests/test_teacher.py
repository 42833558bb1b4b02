"""Teacher update rules on a toy model: what the teacher holds after each moment; and in a
real (tiny) digits run, which teacher the end-of-epoch evaluation and checkpoint see."""

import json
from pathlib import Path

import pytest
import torch

from dino_ablate.teacher import make_teacher_rule
from tests.tiny import run_train


def _params(v: float) -> list[torch.Tensor]:
    return [torch.full((2,), v), torch.full((3,), v)]


def _step(student: list[torch.Tensor], rule, new: float) -> None:  # type: ignore[no-untyped-def]
    rule.before_optimizer_step()
    for p in student:
        p.fill_(new)
    rule.after_optimizer_step(0.9)


def test_ema() -> None:
    s, t = _params(1.0), _params(0.0)
    rule = make_teacher_rule("ema", s, t)
    _step(s, rule, 1.0)
    assert torch.allclose(t[0], torch.full((2,), 0.1))  # 0.9 * 0 + 0.1 * 1
    _step(s, rule, 1.0)
    assert torch.allclose(t[1], torch.full((3,), 0.19))
    assert rule.momentum(0.9) == 0.9


def test_student_copy_is_current_student() -> None:
    s, t = _params(1.0), _params(0.0)
    rule = make_teacher_rule("student_copy", s, t)
    _step(s, rule, 5.0)
    assert torch.equal(t[0], s[0]) and rule.momentum(0.99) == 0.0


def test_previous_iteration_lags_one_step() -> None:
    s, t = _params(1.0), _params(0.0)
    rule = make_teacher_rule("previous_iteration", s, t)
    _step(s, rule, 2.0)
    assert float(t[0][0]) == 1.0  # the student before this step
    _step(s, rule, 3.0)
    assert float(t[0][0]) == 2.0


def test_previous_epoch_frozen_within_epoch() -> None:
    s, t = _params(1.0), _params(0.0)
    rule = make_teacher_rule("previous_epoch", s, t)
    _step(s, rule, 2.0)
    _step(s, rule, 3.0)
    assert float(t[0][0]) == 0.0
    rule.start_of_epoch()
    assert float(t[1][0]) == 3.0


@pytest.mark.slow
def test_previous_epoch_teacher_is_evaluated_and_saved_as_it_trained(tmp_path: Path) -> None:
    """Epoch e's metrics and checkpoint hold the teacher that trained epoch e: the student of
    the end of epoch e - 1 (the initial weights in epoch 1), not the copy made for e + 1.
    Copying at the end of the epoch, before the evaluation, made the teacher's k-NN equal its
    student's at every epoch and the saved teacher a copy of the saved student."""
    run_train(tmp_path, "teacher.update=previous_epoch")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    init = json.loads((tmp_path / "init.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["knn_teacher"] == init["knn_teacher_init"]
    assert [r["knn_teacher"] for r in rows[1:]] == [r["knn_student"] for r in rows[:-1]]

    def load(name: str) -> dict:  # type: ignore[type-arg]
        return torch.load(tmp_path / "checkpoints" / name, map_location="cpu",
                          weights_only=True)

    last, previous = load("last.pt"), load("previous.pt")
    assert (last["epoch"], previous["epoch"]) == (3, 2)
    teacher, student = last["teacher"], previous["student"]
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)
    assert not all(torch.equal(teacher[k], last["student"][k]) for k in teacher)
