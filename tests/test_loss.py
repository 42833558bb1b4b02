"""The DINO loss, center update and collapse metrics against a straightforward float64
implementation written from the paper's equations (Eq. 1-3, Eq. 5) and hand-computed values."""

import math

import numpy as np
import pytest
import torch

from dino_ablate.loss import dino_loss, teacher_distribution, update_center


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_loss(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, tau_s: float,
                   tau_t: float, n_crops: int, batch: int) -> tuple[float, float, float, float]:
    """Paper Algorithm 1, sample by sample: returns loss, mean h(Pt), h(mean Pt), KL."""
    pairs = []
    ents = []
    pts = []
    for g in range(2):
        for b in range(batch):
            pt = softmax((teacher[g * batch + b] - center) / tau_t)
            pts.append(pt)
            ents.append(-(pt * np.log(pt)).sum())
    for g in range(2):
        for v in range(n_crops):
            if v == g:
                continue
            ce = 0.0
            for b in range(batch):
                pt = softmax((teacher[g * batch + b] - center) / tau_t)
                ps = softmax(student[v * batch + b] / tau_s)
                ce += -(pt * np.log(ps)).sum()
            pairs.append(ce / batch)
    loss = float(np.mean(pairs))
    h = float(np.mean(ents))
    mean_pt = np.mean(pts, axis=0)
    return loss, h, float(-(mean_pt * np.log(mean_pt)).sum()), loss - h


@pytest.mark.parametrize("n_crops", [2, 4])
def test_loss_matches_reference(n_crops: int) -> None:
    rng = np.random.default_rng(0)
    batch, k = 3, 7
    student = rng.normal(size=(n_crops * batch, k))
    teacher = rng.normal(size=(2 * batch, k))
    center = rng.normal(size=(k,)) * 0.1
    tau_s, tau_t = 0.1, 0.04
    probs = teacher_distribution(torch.tensor(teacher), torch.tensor(center)[None], tau_t)
    out = dino_loss(torch.tensor(student), probs, tau_s, num_crops=n_crops)
    loss, h, hb, kl = reference_loss(student, teacher, center, tau_s, tau_t, n_crops, batch)
    assert float(out.loss) == pytest.approx(loss, rel=1e-5)
    assert float(out.teacher_entropy) == pytest.approx(h, rel=1e-5)
    assert float(out.teacher_batch_entropy) == pytest.approx(hb, rel=1e-5)
    assert float(out.kl) == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_hand_computed_two_prototypes() -> None:
    # K = 2, one sample, 2 crops. Teacher logits (0, 0) -> Pt = (1/2, 1/2); student logits
    # (ln 3 * 0.1, 0) at tau_s = 0.1 -> Ps = (3/4, 1/4).
    # CE = -(1/2 ln 3/4 + 1/2 ln 1/4) = ln 4 - 1/2 ln 3; h(Pt) = ln 2; KL = ln 2 - 1/2 ln 3.
    student = torch.tensor([[0.1 * math.log(3), 0.0], [0.1 * math.log(3), 0.0]])
    teacher = torch.zeros(2, 2)
    probs = teacher_distribution(teacher, None, 0.04)
    out = dino_loss(student, probs, 0.1, num_crops=2)
    assert float(out.loss) == pytest.approx(math.log(4) - 0.5 * math.log(3), rel=1e-6)
    assert float(out.teacher_entropy) == pytest.approx(math.log(2), rel=1e-6)
    assert float(out.kl) == pytest.approx(math.log(2) - 0.5 * math.log(3), rel=1e-5)


def test_uniform_collapse_signature() -> None:
    # Constant outputs: loss = ln K exactly, KL = 0 (DINO.md §1.5, dino#246).
    k = 16
    out = dino_loss(torch.zeros(8, k), teacher_distribution(torch.zeros(4, k), None, 0.1), 0.1,
                    num_crops=4)
    assert float(out.loss) == pytest.approx(math.log(k), rel=1e-6)
    assert abs(float(out.kl)) < 1e-6


def test_pair_count_is_2n_minus_2() -> None:
    # Only the pairs with v != iq count: with 2 global + 2 local crops there are 6 pairs. Make
    # the same-view pairs wildly different so that including them would change the mean.
    k, batch = 4, 1
    teacher = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]])
    student = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    probs = teacher_distribution(teacher, None, 1.0)
    out = dino_loss(student, probs, 1.0, num_crops=4)
    logp = torch.log_softmax(student, -1)
    terms = [-(probs[g] * logp[v]).sum() for g in range(2) for v in range(4) if v != g]
    assert len(terms) == 6
    assert float(out.loss) == pytest.approx(float(sum(terms) / 6), rel=1e-6)
    del k, batch


def test_center_update_hand_computed() -> None:
    center = torch.tensor([[1.0, 2.0]])
    logits = torch.tensor([[3.0, 0.0], [5.0, 4.0]])  # batch mean (4, 2)
    update_center(center, logits, 0.9)
    assert center[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 4, 0.9 * 2 + 0.1 * 2])


def test_centering_and_sharpening_shape_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    c = torch.tensor([[2.0, 0.0, 0.0]])
    centered = teacher_distribution(logits, c, 1.0)
    assert centered[0, 1] > centered[0, 0]  # the center removed the first dimension's lead
    sharp = teacher_distribution(logits, None, 0.01)
    assert float(sharp[0, 0]) > 0.999  # a low temperature is nearly one-hot
