"""The model pieces against torch's own weight norm, hand-computed values and a crop-by-crop
forward: weight-normalised last layer, head layout, multi-crop grouping, equal initialisation
of student and teacher, and the (student, teacher) parameter pairing of the EMA."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dino_ablate.config import HeadConfig, ModelConfig
from dino_ablate.model import (
    DINOHead,
    MultiCropNetwork,
    Predictor,
    WeightNormLinear,
    build_backbone,
    build_networks,
    teacher_pairs,
)

# Depth 2: timm spreads drop-path as linspace(0, rate, depth), so a 1-block student has none.
TINY_MODEL = ModelConfig(arch="vit_tiny_patch16_224", patch_size=4, drop_path_rate=0.1,
                         embed_dim=16, depth=2, num_heads=2)


def _head_cfg(**kw: object) -> HeadConfig:
    base: dict[str, object] = {"out_dim": 12, "hidden_dim": 10, "bottleneck_dim": 6}
    return HeadConfig(**{**base, **kw})  # type: ignore[arg-type]


def _effective_weight(layer: nn.Module, in_dim: int) -> torch.Tensor:
    """(out, in): the weight the layer applies, read off its response to the unit vectors."""
    return layer(torch.eye(in_dim)).t()


# --------------------------------------------------------------------------- WeightNormLinear

def test_weight_norm_linear_hand_computed() -> None:
    # v = (3, 4), ||v|| = 5, g = 2 -> W = (1.2, 1.6); x = (1, 1) -> y = 2.8.
    layer = WeightNormLinear(2, 1, freeze_gain=False)
    with torch.no_grad():
        layer.v.copy_(torch.tensor([[3.0, 4.0]]))
        layer.g.fill_(2.0)
    assert float(layer(torch.tensor([[1.0, 1.0]])).detach()) == pytest.approx(2.8, rel=1e-6)


@pytest.mark.parametrize("api", ["parametrizations", "utils"])
def test_weight_norm_linear_equals_torch_weight_norm(api: str) -> None:
    torch.manual_seed(0)
    in_dim, out_dim = 5, 3
    ours = WeightNormLinear(in_dim, out_dim, freeze_gain=False)
    with torch.no_grad():
        ours.g.copy_(torch.rand(out_dim, 1) + 0.5)  # not all ones, so g really is applied
    if api == "parametrizations":
        ref = nn.utils.parametrizations.weight_norm(nn.Linear(in_dim, out_dim, bias=False))
        ref_g, ref_v = ref.parametrizations.weight.original0, ref.parametrizations.weight.original1
    else:
        with pytest.warns(FutureWarning):  # the old API is deprecated but is DINO's original
            ref = nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False))
        ref_g, ref_v = ref.weight_g, ref.weight_v
    assert ref_g.shape == ours.g.shape and ref_v.shape == ours.v.shape
    with torch.no_grad():
        ref_g.copy_(ours.g)
        ref_v.copy_(ours.v)
    x = torch.randn(4, in_dim)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref)
    (y_ours ** 2).sum().backward()
    (y_ref ** 2).sum().backward()
    assert ours.g.grad is not None and ours.v.grad is not None
    torch.testing.assert_close(ours.g.grad, ref_g.grad)
    torch.testing.assert_close(ours.v.grad, ref_v.grad)


def test_weight_norm_rows_have_norm_g() -> None:
    torch.manual_seed(1)
    layer = WeightNormLinear(7, 4, freeze_gain=False)
    gains = torch.tensor([0.5, 1.0, 2.0, 3.5])
    with torch.no_grad():
        layer.v.mul_(torch.tensor([[1.0], [10.0], [0.01], [3.0]]))  # row scale must not matter
        layer.g.copy_(gains[:, None])
    norms = _effective_weight(layer, 7).norm(dim=1)
    torch.testing.assert_close(norms, gains)


def test_frozen_gain_gets_no_gradient_and_rows_are_unit() -> None:
    torch.manual_seed(2)
    layer = WeightNormLinear(6, 5, freeze_gain=True)
    assert not layer.g.requires_grad and layer.v.requires_grad
    torch.testing.assert_close(_effective_weight(layer, 6).norm(dim=1), torch.ones(5))
    layer(torch.randn(3, 6)).sum().backward()
    assert layer.g.grad is None
    assert layer.v.grad is not None and float(layer.v.grad.abs().sum()) > 0
    trainable = WeightNormLinear(6, 5, freeze_gain=False)
    assert trainable.g.requires_grad


# --------------------------------------------------------------------------- DINOHead

@pytest.mark.parametrize(("num_layers", "use_bn", "expected"), [
    (1, False, [(nn.Linear, 8, 6)]),
    (2, False, [(nn.Linear, 8, 10), nn.GELU, (nn.Linear, 10, 6)]),
    (3, False, [(nn.Linear, 8, 10), nn.GELU, (nn.Linear, 10, 10), nn.GELU, (nn.Linear, 10, 6)]),
    (1, True, [(nn.Linear, 8, 6)]),  # no hidden layer, so no BN either
    (2, True, [(nn.Linear, 8, 10), nn.BatchNorm1d, nn.GELU, (nn.Linear, 10, 6)]),
    (3, True, [(nn.Linear, 8, 10), nn.BatchNorm1d, nn.GELU, (nn.Linear, 10, 10),
               nn.BatchNorm1d, nn.GELU, (nn.Linear, 10, 6)]),
])
def test_head_layer_layout(num_layers: int, use_bn: bool, expected: list[object]) -> None:
    head = DINOHead(8, _head_cfg(num_layers=num_layers, use_bn=use_bn), norm_last_layer=True)
    layers = list(head.mlp)
    assert len(layers) == len(expected)
    for layer, want in zip(layers, expected, strict=True):
        if isinstance(want, tuple):
            cls, fan_in, fan_out = want
            assert isinstance(layer, cls)
            assert (layer.in_features, layer.out_features) == (fan_in, fan_out)
            assert torch.count_nonzero(layer.bias) == 0  # biases start at zero (official)
        else:
            assert isinstance(layer, want)  # type: ignore[arg-type]
    assert (head.last_layer.v.shape) == (12, 6)  # bottleneck -> K
    assert head(torch.randn(4, 8)).shape == (4, 12)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_last_layer_gain_follows_norm_last_layer(norm_last_layer: bool) -> None:
    head = DINOHead(8, _head_cfg(), norm_last_layer=norm_last_layer)
    assert head.last_layer.g.requires_grad is not norm_last_layer


@pytest.mark.parametrize("l2", [True, False])
def test_head_l2_bottleneck(l2: bool) -> None:
    torch.manual_seed(3)
    head = DINOHead(8, _head_cfg(l2_bottleneck=l2), norm_last_layer=True)
    seen: list[torch.Tensor] = []
    head.last_layer.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    x = torch.randn(5, 8) * 10
    head(x)
    bottleneck = seen[0]
    if l2:
        torch.testing.assert_close(bottleneck.norm(dim=1), torch.ones(5))
    else:
        torch.testing.assert_close(bottleneck, head.mlp(x))
        assert not torch.allclose(bottleneck.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("l2", [True, False])
def test_head_l2_bottleneck_is_scale_invariant(l2: bool) -> None:
    # Normalised, the bottleneck's scale is gone: scaling the MLP's last linear layer by 7
    # leaves the logits unchanged; without the normalisation it scales them.
    torch.manual_seed(4)
    head = DINOHead(8, _head_cfg(num_layers=2, l2_bottleneck=l2), norm_last_layer=True)
    x = torch.randn(3, 8)
    before = head(x).detach()
    last_linear = head.mlp[-1]
    assert isinstance(last_linear, nn.Linear)
    with torch.no_grad():
        last_linear.weight.mul_(7.0)
        last_linear.bias.mul_(7.0)
    if l2:
        torch.testing.assert_close(head(x), before)
    else:
        torch.testing.assert_close(head(x), 7.0 * before)


# --------------------------------------------------------------------------- MultiCropNetwork

def _tiny_network(predictor: bool = False) -> MultiCropNetwork:
    torch.manual_seed(5)
    backbone = build_backbone(TINY_MODEL, img_size=16, in_chans=3, drop_path_rate=0.0)
    head = DINOHead(16, _head_cfg(), norm_last_layer=True)
    return MultiCropNetwork(backbone, head, Predictor(12, 10) if predictor else None).eval()


def _crops(sizes: list[int], batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(6)
    return [torch.randn(batch, 3, s, s, generator=gen) for s in sizes]


@pytest.mark.parametrize(("sizes", "calls"), [
    ([16, 16, 8, 8, 8], [4, 6]),  # 2 global + 3 local crops: two backbone calls
    ([16, 16], [4]),
    ([16, 8, 16], [2, 2, 2]),  # only *consecutive* equal crops are grouped
    ([8], [2]),
])
def test_multicrop_groups_consecutive_equal_resolutions(sizes: list[int],
                                                        calls: list[int]) -> None:
    net = _tiny_network()
    batch_sizes: list[int] = []
    net.backbone.register_forward_hook(lambda _m, inp, _out: batch_sizes.append(inp[0].shape[0]))
    crops = _crops(sizes)
    with torch.no_grad():
        out = net(crops)
    assert batch_sizes == calls
    assert out.shape == (2 * len(sizes), 12)


@pytest.mark.parametrize("predictor", [False, True])
def test_multicrop_output_equals_crop_by_crop_forward(predictor: bool) -> None:
    net = _tiny_network(predictor)
    crops = _crops([16, 16, 8, 8, 8])
    with torch.no_grad():
        grouped = net(crops)
        one_by_one = []
        for crop in crops:
            logits = net.head(net.backbone(crop))
            one_by_one.append(net.predictor(logits) if net.predictor is not None else logits)
    # Crop-major: rows [0:2] are crop 1, [2:4] crop 2, ...
    torch.testing.assert_close(grouped, torch.cat(one_by_one), rtol=1e-5, atol=1e-6)
    # A different crop order gives a different row order, not the same rows.
    assert not torch.allclose(grouped[:2], grouped[2:4])


# --------------------------------------------------------------------------- build_networks

@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_build_networks_equal_initialisation(norm_last_layer: bool) -> None:
    torch.manual_seed(7)
    student, teacher = build_networks(TINY_MODEL,
                                      _head_cfg(predictor=True, norm_last_layer=norm_last_layer),
                                      img_size=16, in_chans=3)
    s_state, t_state = student.state_dict(), teacher.state_dict()
    assert set(s_state) - set(t_state) == {k for k in s_state if k.startswith("predictor.")}
    assert any(k.startswith("predictor.") for k in s_state)
    assert set(t_state) <= set(s_state)
    for key, value in t_state.items():
        assert torch.equal(value, s_state[key]), key
        assert value.data_ptr() != s_state[key].data_ptr(), f"{key} shares storage"
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.predictor is None
    assert student.head.last_layer.g.requires_grad is not norm_last_layer
    # Drop-path in the student only.
    assert any(type(m).__name__ == "DropPath" for m in student.backbone.modules())
    assert not any(type(m).__name__ == "DropPath" for m in teacher.backbone.modules())
    # Same function at initialisation (eval: drop-path off; the predictor is student-only).
    crops = _crops([16, 16, 8])
    student.eval()
    with torch.no_grad():
        s_logits = student.head(torch.cat([student.backbone(torch.cat(crops[:2])),
                                           student.backbone(crops[2])]))
        torch.testing.assert_close(teacher.eval()(crops), s_logits)


def test_build_networks_are_not_copies_of_one_seed_draw() -> None:
    # Two calls draw fresh weights: the equality above comes from the copy, not from a seed.
    torch.manual_seed(8)
    first, _ = build_networks(TINY_MODEL, _head_cfg(), img_size=16, in_chans=3)
    second, _ = build_networks(TINY_MODEL, _head_cfg(), img_size=16, in_chans=3)
    assert not torch.equal(first.head.last_layer.v, second.head.last_layer.v)


# --------------------------------------------------------------------------- teacher_pairs

class _Wrapped(nn.Module):
    """Names its child `module.`, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize("wrap", [False, True])
def test_teacher_pairs_match_by_name_and_skip_the_predictor(wrap: bool) -> None:
    torch.manual_seed(9)
    student, teacher = build_networks(TINY_MODEL, _head_cfg(predictor=True), img_size=16,
                                      in_chans=3)
    s_list, t_list = teacher_pairs(_Wrapped(student) if wrap else student, teacher)
    t_names = {id(p): n for n, p in teacher.named_parameters()}
    s_names = {id(p): n for n, p in student.named_parameters()}
    assert len(s_list) == len(t_list) == len(list(teacher.parameters()))
    for s, t in zip(s_list, t_list, strict=True):
        assert s_names[id(s)] == t_names[id(t)]
        assert s.shape == t.shape and not t.requires_grad
    predictor_ids = {id(p) for p in student.predictor.parameters()}  # type: ignore[union-attr]
    assert predictor_ids and not predictor_ids & {id(s) for s in s_list}
    # Every teacher parameter appears exactly once.
    assert len({id(t) for t in t_list}) == len(t_list)
