"""Teacher update rules on a toy model: what the teacher holds after each moment."""

import torch

from dino_ablate.teacher import make_teacher_rule


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
    rule.end_of_epoch()
    assert float(t[1][0]) == 3.0
