"""Training schedules as pure functions of the optimizer step.

Internally time is counted in optimizer steps, so a resume needs only the step. The formulas
reproduce the official implementation (`utils.cosine_scheduler`, DINO.md §2.4): an optional
linear warm-up from `warmup_start` to `base` over `warmup_steps`, then
`final + 0.5 (base - final)(1 + cos(pi i / N))` for i = 0 .. N-1 over the remaining N steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dino_ablate.config import RunConfig


def cosine_schedule(step: int, total_steps: int, base: float, final: float,
                    warmup_steps: int = 0, warmup_start: float = 0.0) -> float:
    """Value at `step` (0-based) of the official cosine schedule with linear warm-up."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    step = min(step, total_steps - 1)
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        if warmup_steps == 1:
            return warmup_start
        # np.linspace(warmup_start, base, warmup_steps)[step]
        return warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    n = total_steps - warmup_steps
    i = step - warmup_steps
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * i / n))


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float,
                        warmup_epochs: int) -> float:
    """tau_t per epoch: linspace(warmup, final, warmup_epochs), then constant (official code)."""
    if epoch < warmup_epochs:
        if warmup_epochs == 1:
            return warmup_temp
        return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)
    return final_temp


@dataclass(frozen=True)
class Schedules:
    """Every schedule of a run, evaluated at an optimizer step."""

    cfg: RunConfig
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def lr(self, step: int) -> float:
        o = self.cfg.optim
        return cosine_schedule(step, self.total_steps, self.cfg.scaled_lr, o.min_lr,
                               warmup_steps=o.warmup_epochs * self.steps_per_epoch)

    def weight_decay(self, step: int) -> float:
        o = self.cfg.optim
        return cosine_schedule(step, self.total_steps, o.weight_decay, o.weight_decay_end)

    def momentum(self, step: int) -> float:
        t = self.cfg.teacher
        return cosine_schedule(step, self.total_steps, t.momentum, t.momentum_end)

    def teacher_temp(self, step: int) -> float:
        loss = self.cfg.loss
        if not loss.sharpening:
            return loss.student_temp
        return teacher_temperature(self.epoch_of(step), loss.warmup_teacher_temp,
                                   loss.teacher_temp, loss.warmup_teacher_temp_epochs)

    def last_layer_frozen(self, step: int) -> bool:
        return self.epoch_of(step) < self.cfg.optim.freeze_last_layer_epochs
