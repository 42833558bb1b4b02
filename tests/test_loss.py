"""The DINO loss, center update and collapse metrics against a straightforward float64
implementation written from the paper's equations (Eq. 1-3, Eq. 5) and hand-computed values;
the MSE variant (Table 7 row 5), the loss gradient and one SGD step against float64 references;
the Sinkhorn-Knopp targets (Table 7 row 3) against a float64 scaling-vector Sinkhorn."""

import copy
import math

import numpy as np
import pytest
import torch

from dino_ablate.loss import (
    dino_loss,
    sinkhorn_distribution,
    teacher_distribution,
    update_center,
)


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


# --------------------------------------------------------------------------- MSE (Table 7 row 5)

def test_mse_hand_computed() -> None:
    # Pt = (1/2, 1/2), Ps = (3/4, 1/4) as above: ||Pt - Ps||^2 = 2 * (1/4)^2 = 1/8 per pair.
    student = torch.tensor([[0.1 * math.log(3), 0.0], [0.1 * math.log(3), 0.0]])
    probs = teacher_distribution(torch.zeros(2, 2), None, 0.04)
    out = dino_loss(student, probs, 0.1, num_crops=2, kind="mse")
    assert float(out.loss) == pytest.approx(1 / 8, rel=1e-6)


@pytest.mark.parametrize("n_crops", [2, 5])
def test_mse_matches_reference_and_keeps_ce_diagnostics(n_crops: int) -> None:
    rng = np.random.default_rng(1)
    batch, k = 3, 6
    student = rng.normal(size=(n_crops * batch, k))
    probs = teacher_distribution(torch.tensor(rng.normal(size=(2 * batch, k))), None, 0.3)
    mse = dino_loss(torch.tensor(student), probs, 0.2, num_crops=n_crops, kind="mse")
    ce = dino_loss(torch.tensor(student), probs, 0.2, num_crops=n_crops)
    expected = float(reference_loss_torch(torch.tensor(student), probs.double(), 0.2, n_crops,
                                          batch, "mse"))
    assert float(mse.loss) == pytest.approx(expected, rel=1e-5)
    assert float(mse.loss) != pytest.approx(float(ce.loss), rel=1e-2)
    # The diagnostics stay the cross-entropy decomposition whatever the training loss.
    assert float(mse.teacher_entropy) == float(ce.teacher_entropy)
    assert float(mse.teacher_batch_entropy) == float(ce.teacher_batch_entropy)
    assert float(mse.kl) == float(ce.kl)


# --------------------------------------------------------------------------- gradient

def reference_gradient(student: np.ndarray, probs: np.ndarray, tau_s: float, n_crops: int,
                       batch: int, kind: str) -> np.ndarray:
    """dL/ds in closed form, float64. With P = 2 n_crops - 2 pairs and Ps = softmax(s / tau_s):
    cross-entropy: dL/ds[v,b] = sum_{g != v} (Ps[v,b] - Pt[g,b]) / (P B tau_s);
    MSE: d||Pt - Ps||^2/ds_j = (2 / tau_s) Ps_j ((Ps_j - Pt_j) - sum_k Ps_k (Ps_k - Pt_k))."""
    n_pairs = 2 * n_crops - 2
    grad = np.zeros_like(student)
    for v in range(n_crops):
        for b in range(batch):
            ps = softmax(student[v * batch + b] / tau_s)
            for g in range(2):
                if g == v:
                    continue
                pt = probs[g * batch + b]
                if kind == "mse":
                    d = ps - pt
                    term = 2.0 * ps * (d - (ps * d).sum())
                else:
                    term = ps - pt
                grad[v * batch + b] += term / (n_pairs * batch * tau_s)
    return grad


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("n_crops", [2, 4])
def test_gradient_wrt_student_logits_matches_closed_form(kind: str, n_crops: int) -> None:
    rng = np.random.default_rng(2)
    batch, k, tau_s = 3, 5, 0.1
    student_np = rng.normal(size=(n_crops * batch, k))
    student = torch.tensor(student_np, requires_grad=True)
    teacher_logits = torch.tensor(rng.normal(size=(2 * batch, k)), requires_grad=True)
    probs = teacher_distribution(teacher_logits, torch.full((1, k), 0.1, dtype=torch.float64),
                                 0.04)
    dino_loss(student, probs, tau_s, num_crops=n_crops, kind=kind).loss.backward()
    expected = reference_gradient(student_np, probs.detach().numpy(), tau_s, n_crops, batch,
                                  kind)
    assert student.grad is not None
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() > 1e-2  # not a vacuous comparison of zeros
    # Stop-gradient: nothing flows into the teacher.
    assert teacher_logits.grad is None


def reference_loss_torch(student_logits: torch.Tensor, probs: torch.Tensor, tau_s: float,
                         n_crops: int, batch: int, kind: str) -> torch.Tensor:
    """Algorithm 1 pair by pair and sample by sample in float64, for autograd."""
    terms = []
    for g in range(2):
        for v in range(n_crops):
            if v == g:
                continue
            for b in range(batch):
                pt = probs[g * batch + b].detach()
                s = student_logits[v * batch + b] / tau_s
                if kind == "mse":
                    terms.append(((pt - torch.softmax(s, -1)) ** 2).sum())
                else:
                    terms.append(-(pt * torch.log_softmax(s, -1)).sum())
    return torch.stack(terms).mean()  # equal batch per pair: the mean of the pair means


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_parameters_after_one_sgd_step_match_float64_reference(kind: str) -> None:
    # As lightly's DINO loss test: a one-layer student and teacher, one SGD step through our
    # loss in float32 and through the float64 reference; the parameters must agree.
    torch.manual_seed(3)
    batch, k, n_crops, tau_s, tau_t, lr = 3, 4, 6, 0.1, 0.04, 1.0
    student = torch.nn.Linear(k, k)
    teacher = torch.nn.Linear(k, k).requires_grad_(False)
    ref_student, ref_teacher = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    student_start = [p.detach().double().clone() for p in student.parameters()]
    x_student = torch.rand(n_crops * batch, k)
    x_teacher = torch.rand(2 * batch, k)
    center = torch.rand(1, k) * 0.1

    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    probs = teacher_distribution(teacher(x_teacher), center, tau_t)
    loss = dino_loss(student(x_student), probs, tau_s, num_crops=n_crops, kind=kind).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    ref_probs = torch.softmax((ref_teacher(x_teacher.double()) - center.double()) / tau_t, -1)
    ref_loss = reference_loss_torch(ref_student(x_student.double()), ref_probs, tau_s, n_crops,
                                    batch, kind)
    grads = torch.autograd.grad(ref_loss, list(ref_student.parameters()))
    with torch.no_grad():
        for p, grad in zip(ref_student.parameters(), grads, strict=True):
            p.sub_(lr * grad)

    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    moved = max(float((p.detach().double() - q.detach()).abs().max())
                for p, q in zip(student.parameters(), student_start, strict=True))
    assert moved > 1e-3  # the step really changed the student
    for p, ref in zip(student.parameters(), ref_student.parameters(), strict=True):
        torch.testing.assert_close(p.detach().double(), ref.detach(), rtol=1e-5, atol=1e-6)
    for p, ref in zip(teacher.parameters(), ref_teacher.parameters(), strict=True):
        torch.testing.assert_close(p.double(), ref)


# --------------------------------------------------------------------------- Sinkhorn-Knopp

def reference_sinkhorn(logits: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn-Knopp written with scaling vectors, float64.

    Q = diag(u) A diag(w) with A = exp(logits / tau)^T (prototypes x samples); each iteration
    sets u so that every prototype holds mass 1/K, then w so that every sample holds 1/n.
    Returns n Q^T: (n, K) rows that sum to 1.
    """
    a = np.exp(logits / tau).T
    k_dim, n = a.shape
    w = np.ones(n)
    u = np.ones(k_dim)
    for _ in range(iterations):
        u = (1.0 / k_dim) / (a @ w)
        w = (1.0 / n) / (a.T @ u)
    return n * (u[:, None] * a * w[None, :]).T


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_float64_reference(iterations: int) -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 4))
    out = sinkhorn_distribution(torch.tensor(logits, dtype=torch.float32), 0.5, iterations)
    expected = reference_sinkhorn(logits, 0.5, iterations)
    assert out.shape == (6, 4)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_sinkhorn_marginals() -> None:
    # Rows (samples) sum to 1 after any number of iterations; the prototype marginal n/K is
    # approached as the iterations grow (equipartition, the point of Sinkhorn targets).
    rng = np.random.default_rng(5)
    n, k = 8, 4
    logits = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    softmax_cols = torch.softmax(logits / 0.5, -1).sum(0)
    errors = []
    for iterations in (1, 3, 30):
        out = sinkhorn_distribution(logits, 0.5, iterations)
        torch.testing.assert_close(out.sum(1), torch.ones(n))
        errors.append(float((out.sum(0) - n / k).abs().max()))
    assert errors[0] < float((softmax_cols - n / k).abs().max())  # one step already helps
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_sinkhorn_two_by_two_hand_computed() -> None:
    # exp(logits / tau) = [[3, 1], [1, 1]] (samples x prototypes) with tau = 0.5.
    # Iteration 1: prototype sums (4, 2) -> [[3/4, 1/2], [1/4, 1/2]]; sample rows to 1 ->
    # [[3/5, 2/5], [1/3, 2/3]]. Iteration 2: prototype sums (14/15, 16/15) ->
    # [[9/14, 3/8], [5/14, 5/8]] -> rows [[12/19, 7/19], [4/11, 7/11]].
    # The limit is doubly stochastic [[p, 1-p], [1-p, p]] with the cross-ratio of A kept:
    # p^2 / (1-p)^2 = 3 * 1 / (1 * 1), so p = sqrt(3) / (1 + sqrt(3)).
    logits = torch.tensor([[0.5 * math.log(3), 0.0], [0.0, 0.0]])
    one = sinkhorn_distribution(logits, 0.5, 1)
    two = sinkhorn_distribution(logits, 0.5, 2)
    many = sinkhorn_distribution(logits, 0.5, 60)
    torch.testing.assert_close(one, torch.tensor([[3 / 5, 2 / 5], [1 / 3, 2 / 3]]))
    torch.testing.assert_close(two, torch.tensor([[12 / 19, 7 / 19], [4 / 11, 7 / 11]]))
    p = math.sqrt(3) / (1 + math.sqrt(3))
    torch.testing.assert_close(many, torch.tensor([[p, 1 - p], [1 - p, p]]))


def test_sinkhorn_is_shift_invariant_and_finite_for_large_logits() -> None:
    # The global max is subtracted before exp: logits of 1000 must not overflow in float32.
    # Multiples of 1/8, so that 1000 + logit is exact in float32 and only the function counts.
    rng = np.random.default_rng(6)
    logits = torch.tensor(rng.integers(-16, 16, size=(5, 3)) / 8, dtype=torch.float32)
    base = sinkhorn_distribution(logits, 0.1, 3)
    shifted = sinkhorn_distribution(logits + 1000.0, 0.1, 3)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, base)


# --------------------------------------------------------------------------------------------
# two ranks (gloo on loopback): the global-batch quantities do not depend on the split


def _split(x: torch.Tensor, chunks: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s half of each of the `chunks` crop blocks (crop-major rows)."""
    return torch.cat([c.chunk(2)[rank] for c in x.chunk(chunks)])


def _two_rank_worker(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                  world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        logits, student, teacher = _two_rank_inputs()
        q = sinkhorn_distribution(logits.chunk(2)[rank], 0.1, 3)
        loss = dino_loss(_split(student, 4, rank),
                         teacher_distribution(_split(teacher, 2, rank), None, 0.04), 0.1, 4)
        torch.save({"sinkhorn": q, "batch_entropy": loss.teacher_batch_entropy},
                   f"{out}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def _two_rank_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(8, 5, generator=g)
    logits[4:] += 3.0  # rank 1's rows: a larger maximum than rank 0's
    return logits, torch.randn(4 * 6, 5, generator=g), torch.randn(2 * 6, 5, generator=g)


@pytest.mark.slow  # two spawned interpreters
def test_sinkhorn_and_batch_entropy_do_not_depend_on_the_rank_split(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Sinkhorn-Knopp targets and the batch-mean entropy are over the global batch: 2 ranks
    holding half of it each get what one process gets for the whole (a per-rank max in the
    Sinkhorn exponential, or a per-rank batch mean, would not)."""
    import os

    import torch.multiprocessing as mp

    from tests.multinode import free_port

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_two_rank_worker, args=(free_port("127.0.0.1"), str(tmp_path)), nprocs=2)
    logits, student, teacher = _two_rank_inputs()
    whole_q = sinkhorn_distribution(logits, 0.1, 3)
    whole = dino_loss(student, teacher_distribution(teacher, None, 0.04), 0.1, 4)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["sinkhorn"], whole_q.chunk(2)[rank])
        torch.testing.assert_close(got["batch_entropy"], whole.teacher_batch_entropy)
