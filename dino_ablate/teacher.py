"""Teacher update rules (paper Fig. 6 right, Table 7 row 2) as small strategy objects.

Each rule is told about three moments of the loop and may copy or average the student's
parameters into the teacher's; the teacher's weights themselves are the only state, and they
are checkpointed. Buffers (none in a ViT without BN) are not averaged, as in the official code.

The end-of-epoch evaluation and checkpoint see the teacher that trained the epoch: the
previous-epoch rule copies the student when the next epoch starts, not when this one ends (a
copy before the evaluation would make that teacher's k-NN its student's at every epoch).
"""

from __future__ import annotations

import torch

from dino_ablate.config import TeacherUpdate


class TeacherRule:
    """Base: the teacher never changes. Subclasses override the moments they care about."""

    def __init__(self, student_params: list[torch.Tensor],
                 teacher_params: list[torch.Tensor]) -> None:
        self.student_params = student_params
        self.teacher_params = teacher_params

    def momentum(self, scheduled: float) -> float | None:
        """The momentum actually applied this step, for the metrics (None: not an average)."""
        return None

    @torch.no_grad()
    def copy_student(self) -> None:
        torch._foreach_copy_(self.teacher_params, [p.detach() for p in self.student_params])

    def before_optimizer_step(self) -> None:
        pass

    def after_optimizer_step(self, scheduled_momentum: float) -> None:
        pass

    def start_of_epoch(self) -> None:
        pass


class EMATeacher(TeacherRule):
    """teacher <- m teacher + (1 - m) student after every step, m from the cosine schedule."""

    def momentum(self, scheduled: float) -> float | None:
        return scheduled

    @torch.no_grad()
    def after_optimizer_step(self, scheduled_momentum: float) -> None:
        # One fused kernel per parameter list instead of a Python loop per tensor.
        torch._foreach_lerp_(self.teacher_params, [p.detach() for p in self.student_params],
                             1.0 - scheduled_momentum)


class StudentCopyTeacher(TeacherRule):
    """The current student with gradients stopped: momentum 0 ("no momentum")."""

    def momentum(self, scheduled: float) -> float | None:
        return 0.0

    def after_optimizer_step(self, scheduled_momentum: float) -> None:
        self.copy_student()


class PreviousIterationTeacher(TeacherRule):
    """The student as it was one optimizer step earlier."""

    def before_optimizer_step(self) -> None:
        self.copy_student()


class PreviousEpochTeacher(TeacherRule):
    """The student as it was at the end of the previous epoch (frozen during an epoch).

    The copy happens as an epoch starts (a no-op at epoch 0, where the two are equal; after a
    resume, the restored student is the previous epoch's end), so the epoch's metrics, its
    evaluation and its checkpoint hold the teacher that trained it."""

    def start_of_epoch(self) -> None:
        self.copy_student()


TEACHER_RULES: dict[TeacherUpdate, type[TeacherRule]] = {
    "ema": EMATeacher,
    "student_copy": StudentCopyTeacher,
    "previous_iteration": PreviousIterationTeacher,
    "previous_epoch": PreviousEpochTeacher,
}


def make_teacher_rule(name: TeacherUpdate, student_params: list[torch.Tensor],
                      teacher_params: list[torch.Tensor]) -> TeacherRule:
    return TEACHER_RULES[name](student_params, teacher_params)
