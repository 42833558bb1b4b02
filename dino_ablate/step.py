"""One DINO training step: forward, loss, backward, clip, optimizer, teacher and center update.

A pure function of the state, the batch and the step: no I/O, no rank checks, no host-device
synchronisation (diagnostics stay on the device as 0-dim tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dino_ablate.config import RunConfig
from dino_ablate.loss import (
    LossOutput,
    dino_loss,
    sinkhorn_distribution,
    teacher_distribution,
    update_center,
)
from dino_ablate.schedules import Schedules
from dino_ablate.teacher import TeacherRule


@dataclass
class TrainState:
    """Everything a step mutates. `student` may be DDP-wrapped; `teacher` never is."""

    student: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    center: torch.Tensor  # (1, K) fp32
    rule: TeacherRule
    last_layer_params: list[torch.nn.Parameter]
    autocast_dtype: torch.dtype | None
    trainable: list[torch.nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        # Built once: the step clips these every iteration.
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]


def param_groups(model: nn.Module) -> list[dict[str, object]]:
    """Group 0 regularised weights; group 1 biases and 1-D params without weight decay
    (official utils.get_params_groups)."""
    regularized: list[nn.Parameter] = []
    not_regularized: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or p.ndim == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients_per_tensor(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Rescale each gradient whose L2 norm exceeds max_norm (official utils.clip_gradients),
    with foreach kernels instead of a loop per tensor."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.unbind()))


def teacher_targets(cfg: RunConfig, teacher_logits: torch.Tensor, center: torch.Tensor,
                    teacher_temp: float) -> torch.Tensor:
    """The teacher distribution under the configured normalisation."""
    norm = cfg.loss.normalization
    if norm == "sinkhorn":
        return sinkhorn_distribution(teacher_logits.float(), teacher_temp,
                                     cfg.loss.sinkhorn_iterations)
    return teacher_distribution(teacher_logits.float(), center if norm == "centering" else None,
                                teacher_temp)


def _no_mark(phase: str) -> None:
    pass


def train_step(state: TrainState, crops: list[torch.Tensor], step: int, cfg: RunConfig,
               sched: Schedules, mark: Callable[[str], None] = _no_mark) -> LossOutput:
    """Advance the state by one optimizer step on `crops` ([g1, g2, l1 .. lL], each (B,C,H,W)).

    `mark(phase)` is called as each phase ends (`forward_backward`, `optimizer`,
    `teacher_center`); the benchmark uses it to time the phases, training passes a no-op.
    """
    lr, wd = sched.lr(step), sched.weight_decay(step)
    for i, group in enumerate(state.optimizer.param_groups):
        group["lr"] = lr
        if i == 0:
            group["weight_decay"] = wd
    device_type = crops[0].device.type
    with torch.autocast(device_type, dtype=state.autocast_dtype or torch.float32,
                        enabled=state.autocast_dtype is not None):
        with torch.no_grad():
            teacher_logits = state.teacher(crops[:2])
        student_logits = state.student(crops)
    targets = teacher_targets(cfg, teacher_logits, state.center, sched.teacher_temp(step))
    out = dino_loss(student_logits, targets, cfg.loss.student_temp, num_crops=len(crops),
                    kind=cfg.loss.kind)

    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if cfg.optim.clip_grad > 0:
        clip_gradients_per_tensor(state.trainable, cfg.optim.clip_grad)
    if sched.last_layer_frozen(step):
        for p in state.last_layer_params:
            p.grad = None  # AdamW then skips them entirely (no update, no decay)
    mark("forward_backward")
    state.rule.before_optimizer_step()
    state.optimizer.step()
    mark("optimizer")
    state.rule.after_optimizer_step(sched.momentum(step))
    if cfg.loss.normalization == "centering":
        update_center(state.center, teacher_logits, cfg.loss.center_momentum)
    mark("teacher_center")
    return out
