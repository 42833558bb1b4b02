"""Backbone (timm ViT, [CLS] feature) + DINO head, with the multi-crop forward.

Head as in the official `DINOHead` (DINO.md §2.5): MLP -> L2-normalised bottleneck ->
weight-normalised linear layer without bias whose gain is frozen at 1 when norm_last_layer.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_ablate.config import HeadConfig, ModelConfig


def build_backbone(cfg: ModelConfig, img_size: int, in_chans: int,
                   drop_path_rate: float) -> nn.Module:
    """A timm ViT returning the [CLS] token after the final norm, shape (B, embed_dim).

    `dynamic_img_size` interpolates the position embeddings (bicubic) for the local crops;
    `dynamic_img_pad` zero-pads images whose side is not a multiple of the patch (patch 5).
    """
    kwargs: dict[str, Any] = {
        "pretrained": False, "num_classes": 0, "global_pool": "token",
        "dynamic_img_size": True, "dynamic_img_pad": True, "img_size": img_size,
        "patch_size": cfg.patch_size, "in_chans": in_chans, "drop_path_rate": drop_path_rate,
    }
    for name in ("embed_dim", "depth", "num_heads"):
        value = getattr(cfg, name)
        if value is not None:
            kwargs[name] = value
    return timm.create_model(cfg.arch, **kwargs)


class WeightNormLinear(nn.Module):
    """y = x W^T with W[k] = g[k] v[k] / ||v[k]|| (torch weight_norm, dim 0, no bias)."""

    def __init__(self, in_dim: int, out_dim: int, freeze_gain: bool) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.v, std=0.02)
        # (K, 1) like weight_g of nn.utils.weight_norm, so it lands in the same param group.
        self.g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.g * F.normalize(self.v, dim=1)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim) prototype logits."""

    def __init__(self, in_dim: int, cfg: HeadConfig, norm_last_layer: bool) -> None:
        super().__init__()
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [cfg.bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(cfg.num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < cfg.num_layers - 1:
                if cfg.use_bn:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.l2_bottleneck = cfg.l2_bottleneck
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, norm_last_layer)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        if self.l2_bottleneck:
            x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class Predictor(nn.Module):
    """BYOL-style 2-layer MLP on the student logits (Table 7 row 6)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiCropNetwork(nn.Module):
    """Backbone + head over a list of crops.

    Consecutive crops of equal resolution go through the backbone in one call (official
    `MultiCropWrapper`); the head runs once on all features. Output is crop-major:
    (num_crops * B, out_dim) = [c1 | c2 | ...].
    """

    def __init__(self, backbone: nn.Module, head: DINOHead,
                 predictor: Predictor | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.predictor = predictor

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        features = []
        start = 0
        while start < len(crops):
            end = start
            while end + 1 < len(crops) and crops[end + 1].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end + 1])))
            start = end + 1
        out = self.head(torch.cat(features))
        if self.predictor is not None:
            out = self.predictor(out)
        return out


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch timm's attention blocks between fused SDPA and the plain matmul path.

    Returns how many attention modules were switched. Both paths compute the same function.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            setattr(module, "fused_attn", enabled)  # noqa: B010 - a plain bool attribute
            count += 1
    return count


def num_tokens(model_cfg: ModelConfig, crop_size: int) -> int:
    """Patch tokens + [CLS] of a crop (padded to a multiple of the patch)."""
    side = -(-crop_size // model_cfg.patch_size)
    return side * side + 1


def build_networks(model_cfg: ModelConfig, head_cfg: HeadConfig, img_size: int,
                   in_chans: int) -> tuple[MultiCropNetwork, MultiCropNetwork]:
    """Student (drop-path, predictor) and teacher (no drop-path) starting from equal weights."""
    student_backbone = build_backbone(model_cfg, img_size, in_chans, model_cfg.drop_path_rate)
    embed_dim = int(student_backbone.num_features)  # type: ignore[arg-type]
    predictor = Predictor(head_cfg.out_dim, head_cfg.hidden_dim) if head_cfg.predictor else None
    student = MultiCropNetwork(
        student_backbone, DINOHead(embed_dim, head_cfg, head_cfg.norm_last_layer), predictor)
    teacher = MultiCropNetwork(build_backbone(model_cfg, img_size, in_chans, 0.0),
                               DINOHead(embed_dim, head_cfg, True))
    teacher_state = {k: v for k, v in student.state_dict().items()
                     if not k.startswith("predictor.")}
    teacher.load_state_dict(teacher_state, strict=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def teacher_pairs(student: nn.Module,
                  teacher: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (student, teacher) parameter lists; the student's predictor has no twin."""
    t_params = dict(teacher.named_parameters())
    s_list: list[torch.Tensor] = []
    t_list: list[torch.Tensor] = []
    for name, p in student.named_parameters():
        name = name.removeprefix("module.")
        if name.startswith("predictor."):
            continue
        s_list.append(p)
        t_list.append(t_params[name])
    return s_list, t_list
