"""Each fast path gives the plain path's result (within float tolerance)."""

import torch

from dino_ablate.config import from_dict
from dino_ablate.model import build_networks, set_fused_attention
from dino_ablate.step import clip_gradients_per_tensor
from dino_ablate.teacher import make_teacher_rule


def test_fused_attention_matches_plain() -> None:
    cfg = from_dict({"data": {"dataset": "digits"}, "model": {
        "arch": "vit_tiny_patch16_224", "patch_size": 4, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "drop_path_rate": 0.0}, "head": {"out_dim": 16, "hidden_dim": 32,
                                                          "bottleneck_dim": 8}})
    student, _ = build_networks(cfg.model, cfg.head, 16, 1)
    student.eval()
    crops = [torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16), torch.randn(3, 1, 8, 8)]
    assert set_fused_attention(student, True) == 2
    fused = student(crops)
    set_fused_attention(student, False)
    plain = student(crops)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_foreach_clip_matches_official_loop() -> None:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)) for _ in range(4)]
    for p, scale in zip(params, (0.1, 1.0, 10.0, 100.0), strict=True):
        p.grad = torch.randn(p.shape, generator=g) * scale
    expected = []
    for p in params:  # utils.clip_gradients of facebookresearch/dino
        grad = p.grad.clone()
        norm = grad.norm(2)
        coef = 3.0 / (norm + 1e-6)
        if coef < 1:
            grad = grad * coef
        expected.append(grad)
    clip_gradients_per_tensor(params, 3.0)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_foreach_ema_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(4, 4, generator=g) for _ in range(3)]
    teacher = [torch.randn(4, 4, generator=g) for _ in range(3)]
    expected = [0.996 * t + 0.004 * s for s, t in zip(student, teacher, strict=True)]
    make_teacher_rule("ema", student, teacher).after_optimizer_step(0.996)
    for t, e in zip(teacher, expected, strict=True):
        torch.testing.assert_close(t, e)
