"""One `train_step` against a float64 reference step written from the paper and the official
recipe: loss (Eq. 1), per-tensor gradient clipping, last-layer freeze, AdamW with decoupled
weight decay on weights only, EMA teacher and center update, all at step 0 of the schedules.
Like lightly's loss test, it compares the parameters after the step, not just the loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from dino_ablate.config import HeadConfig, LossConfig, OptimConfig, RunConfig, TeacherConfig
from dino_ablate.model import DINOHead, MultiCropNetwork, teacher_pairs
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, param_groups, train_step
from dino_ablate.teacher import make_teacher_rule
from tests.test_loss import reference_loss_torch

# AdamW's update g / (|g| + eps) amplifies float32 gradient noise by lr / eps: eps 1e-2 keeps
# that at 1. wd 0.5: the decay lr * wd * |p| (~1e-4) stands well above the tolerance (1e-5,
# a thousandth of a full update lr).
BATCH, K, LR, WD, EPS = 4, 16, 0.01, 0.5, 1e-2
TAU_S, TAU_T, TEACHER_M, CENTER_M = 0.1, 0.05, 0.9, 0.8


def _network() -> MultiCropNetwork:
    """A pooled linear backbone (any crop size) and the real DINO head."""
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 8))
    head = DINOHead(8, HeadConfig(out_dim=K, hidden_dim=10, bottleneck_dim=6),
                    norm_last_layer=False)
    return MultiCropNetwork(backbone, head)


def _config(kind: str, normalization: str, clip: float, freeze_epochs: int) -> RunConfig:
    return RunConfig(
        epochs=2,
        head=HeadConfig(out_dim=K, hidden_dim=10, bottleneck_dim=6, norm_last_layer=False),
        loss=LossConfig(kind=kind, student_temp=TAU_S, teacher_temp=TAU_T,  # type: ignore[arg-type]
                        warmup_teacher_temp_epochs=0, normalization=normalization,  # type: ignore[arg-type]
                        center_momentum=CENTER_M, sinkhorn_iterations=3),
        teacher=TeacherConfig(update="ema", momentum=TEACHER_M, momentum_end=1.0),
        optim=OptimConfig(batch_size=256, lr=LR, min_lr=0.0, warmup_epochs=0, weight_decay=WD,
                          weight_decay_end=WD, clip_grad=clip,
                          freeze_last_layer_epochs=freeze_epochs),
    )


def _reference_targets(teacher_logits: torch.Tensor, center: torch.Tensor,
                       normalization: str) -> torch.Tensor:
    if normalization == "sinkhorn":  # SwAV, scaling vectors: prototypes 1/K, samples 1/n
        a = torch.exp((teacher_logits - teacher_logits.max()) / TAU_T).t()
        u, w = torch.ones(a.shape[0], dtype=a.dtype), torch.ones(a.shape[1], dtype=a.dtype)
        for _ in range(3):
            u = (1.0 / a.shape[0]) / (a @ w)
            w = (1.0 / a.shape[1]) / (a.t() @ u)
        return a.shape[1] * (u[:, None] * a * w[None, :]).t()
    return torch.softmax((teacher_logits - center) / TAU_T, dim=-1)


def _reference_step(student: MultiCropNetwork, teacher: MultiCropNetwork, center: torch.Tensor,
                    crops: list[torch.Tensor], kind: str, normalization: str,
                    clip: float | None, frozen: bool) -> dict[str, torch.Tensor]:
    """One float64 step in place; returns the gradients before clipping by name (clip None:
    compute the gradients only, change nothing)."""
    with torch.no_grad():
        teacher_logits = teacher(crops[:2])
    targets = _reference_targets(teacher_logits, center, normalization)
    loss = reference_loss_torch(student(crops), targets, TAU_S, len(crops), BATCH, kind)
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named])
    raw = {name: g for (name, _), g in zip(named, grads, strict=True)}
    if clip is None:
        return raw
    with torch.no_grad():
        for (name, p), grad in zip(named, grads, strict=True):
            if frozen and name.startswith("head.last_layer"):
                continue  # no gradient: AdamW neither moves nor decays it
            coef = clip / (float(grad.norm()) + 1e-6)
            if coef < 1:
                grad = grad * coef
            raw[name] = grad
            # First AdamW step from zero moments: m_hat = g, v_hat = g^2.
            decay = WD if p.ndim > 1 and not name.endswith(".bias") else 0.0
            p.mul_(1.0 - LR * decay)
            p.sub_(LR * grad / (grad.abs() + EPS))
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            t_params[name].mul_(TEACHER_M).add_((1.0 - TEACHER_M) * p)
        if normalization == "centering":
            center.mul_(CENTER_M).add_((1.0 - CENTER_M) * teacher_logits.mean(0, keepdim=True))
    return raw


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol: float,
           atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=lambda detail: f"{name}: {detail}")


@pytest.mark.parametrize(("kind", "normalization", "freeze_epochs"), [
    ("cross_entropy", "centering", 0),
    ("cross_entropy", "centering", 1),
    ("mse", "centering", 0),
    ("cross_entropy", "sinkhorn", 0),
])
def test_train_step_matches_float64_reference(kind: str, normalization: str,
                                              freeze_epochs: int) -> None:
    torch.manual_seed(0)
    student = _network()
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():  # teacher != student, so the EMA is visible
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    center = 0.1 * torch.randn(1, K)
    gen = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, s, s, generator=gen) for s in (8, 8, 4, 4)]
    ref_student, ref_teacher = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    ref_center = center.double().clone()
    crops64 = [c.double() for c in crops]

    # A clip threshold between the gradient norms, so both branches of the clip are taken.
    norms = sorted(float(g.norm()) for g in _reference_step(
        ref_student, ref_teacher, ref_center, crops64, kind, normalization, None, False).values())
    clip = (norms[len(norms) // 2 - 1] + norms[len(norms) // 2]) / 2
    assert norms[0] < clip < norms[-1]

    cfg = _config(kind, normalization, clip, freeze_epochs)
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, eps=EPS, foreach=True)
    s_params, t_params = teacher_pairs(student, teacher)
    last_layer = [p for n, p in student.named_parameters() if n.startswith("head.last_layer")]
    state = TrainState(student, teacher, optimizer, center.clone(),
                       make_teacher_rule("ema", s_params, t_params), last_layer, None)
    sched = Schedules(cfg, steps_per_epoch=5)
    assert sched.lr(0) == LR and sched.momentum(0) == TEACHER_M
    assert sched.last_layer_frozen(0) is bool(freeze_epochs)
    start = copy.deepcopy(student)
    train_step(state, crops, 0, cfg, sched)
    ref_grads = _reference_step(ref_student, ref_teacher, ref_center, crops64, kind,
                                normalization, clip, bool(freeze_epochs))

    tol = 1e-5
    # The clipped gradients the optimizer saw (a frozen last layer has none).
    for name, p in student.named_parameters():
        if bool(freeze_epochs) and name.startswith("head.last_layer"):
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
            # float32 noise is relative to the tensor's largest entry, not to each entry.
            scale = float(ref_grads[name].abs().max())
            _close(p.grad.double(), ref_grads[name], name, rtol=1e-4, atol=1e-5 * scale)
    for (name, p), ref in zip(student.named_parameters(), ref_student.parameters(), strict=True):
        _close(p.detach().double(), ref.detach(), name, rtol=tol, atol=tol)
        moved = not torch.equal(p, dict(start.named_parameters())[name])
        assert moved is not (bool(freeze_epochs) and name.startswith("head.last_layer")), name
    for (name, p), ref in zip(teacher.named_parameters(), ref_teacher.parameters(), strict=True):
        _close(p.double(), ref, name, rtol=tol, atol=tol)
    _close(state.center.double(), ref_center, "center", rtol=tol, atol=tol)
    if normalization != "centering":
        assert torch.equal(state.center, center)
