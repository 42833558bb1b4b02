"""The DINO objective, teacher-output normalisation and the collapse metrics.

Paper Eq. 1-3 and Sec. 5.3 / official `DINOLoss` (DINO.md §2.2): each global teacher crop is
compared with every student crop except the same view; the teacher distribution is
softmax((t - c) / tau_t), the student's softmax(s / tau_s). The per-sample loss
H(Pt, Ps) = h(Pt) + KL(Pt || Ps) (Eq. 5) is split into the two collapse diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dino_ablate import dist


@dataclass
class LossOutput:
    """Loss and diagnostics of one step; all 0-dim tensors on the device (no host sync)."""

    loss: torch.Tensor
    teacher_entropy: torch.Tensor
    teacher_batch_entropy: torch.Tensor
    kl: torch.Tensor


def teacher_distribution(teacher_logits: torch.Tensor, center: torch.Tensor | None,
                         teacher_temp: float) -> torch.Tensor:
    """softmax((t - c) / tau_t); `teacher_logits` (n_global * B, K), center (1, K) or None."""
    logits = teacher_logits if center is None else teacher_logits - center
    return F.softmax(logits / teacher_temp, dim=-1)


@torch.no_grad()
def sinkhorn_distribution(teacher_logits: torch.Tensor, teacher_temp: float,
                          iterations: int) -> torch.Tensor:
    """Sinkhorn-Knopp targets (SwAV; Table 7 row 3) over the global batch of all ranks.

    Rows are samples (n, K). Alternately normalises prototypes to equal mass and samples to
    unit mass; returns rows that sum to 1. The logits are shifted by their maximum over every
    rank before the exponential (overflow): one constant for the whole global batch cancels in
    the normalisation, so the targets do not depend on how the batch is split over ranks (a
    per-rank maximum would weight each rank's samples by exp(-max_r / tau)).
    """
    top = teacher_logits.max().float()
    dist.all_reduce_max(top)
    q = torch.exp((teacher_logits.float() - top) / teacher_temp).t()  # (K, n)
    k_dim = q.shape[0]
    n_total = torch.tensor(float(q.shape[1]), device=q.device)
    dist.all_reduce_sum(n_total)
    total = q.sum()
    dist.all_reduce_sum(total)
    q /= total
    for _ in range(iterations):
        row_sum = q.sum(dim=1, keepdim=True)
        dist.all_reduce_sum(row_sum)
        q /= row_sum
        q /= k_dim
        q /= q.sum(dim=0, keepdim=True)
        q /= n_total
    q *= n_total
    return q.t()


def dino_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float,
              num_crops: int, num_global: int = 2, kind: str = "cross_entropy") -> LossOutput:
    """The multi-crop DINO loss and its entropy/KL decomposition.

    student_logits: (num_crops * B, K), crop-major [g1 | g2 | l1 ... lL].
    teacher_probs: (num_global * B, K), the teacher targets of the global crops (no grad).
    Returns the mean over the 2 * num_crops - 2 (teacher, student) pairs with different views
    of the batch-mean loss; with `kind="mse"` the loss is the squared error between the two
    distributions (Table 7 row 5), the diagnostics stay the cross-entropy decomposition.
    """
    log_ps = F.log_softmax(student_logits.float() / student_temp, dim=-1).chunk(num_crops)
    pt = teacher_probs.float().detach().chunk(num_global)
    total = student_logits.new_zeros((), dtype=torch.float32)
    ce_total = student_logits.new_zeros((), dtype=torch.float32)
    n_pairs = 0
    for iq, q in enumerate(pt):
        for v, log_p in enumerate(log_ps):
            if v == iq:
                continue
            ce = torch.sum(-q * log_p, dim=-1).mean()
            ce_total = ce_total + ce.detach()
            if kind == "mse":
                total = total + torch.sum((q - log_p.exp()) ** 2, dim=-1).mean()
            else:
                total = total + ce
            n_pairs += 1
    loss = total / n_pairs
    with torch.no_grad():
        all_pt = teacher_probs.float()
        entropy = -(all_pt * torch.log(all_pt.clamp_min(1e-30))).sum(-1).mean()
        # the mean target over the global batch (every rank's crops), as the docs define it:
        # an entropy of per-rank means would fall as the world size grows
        mean_pt = all_pt.sum(0)
        dist.all_reduce_sum(mean_pt)
        mean_pt /= all_pt.shape[0] * dist.world_size()
        batch_entropy = -(mean_pt * torch.log(mean_pt.clamp_min(1e-30))).sum()
        # Each teacher crop is paired with the same number of student crops, so the mean
        # pair entropy equals the mean teacher entropy: KL = CE - h (Eq. 5).
        kl = ce_total / n_pairs - entropy
    return LossOutput(loss=loss, teacher_entropy=entropy, teacher_batch_entropy=batch_entropy,
                      kl=kl)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> None:
    """center <- m * center + (1 - m) * mean of the raw teacher logits over all ranks.

    Accumulates in fp32 (bf16 sums overflow/round, lightly-train PR #969). In place.
    """
    batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
    dist.all_reduce_sum(batch_sum)
    batch_center = batch_sum / (teacher_logits.shape[0] * dist.world_size())
    center.mul_(momentum).add_(batch_center, alpha=1.0 - momentum)
