"""Linear probe on frozen backbone features (paper App. F.2, official `eval_linear.py`).

Two protocols share the feature definition (`probe_features`):

- **paper** (image folders, the `paper` profiles): the official recipe, a linear layer trained
  with SGD on augmented crops for 100 epochs (`dino_ablate.linear_paper`). `resolve_protocol`
  gives its settings; they are DINO.md §2.12 unless the config says otherwise.
- **fast** (in-memory sets: digits, Fashion-MNIST, CIFAR): the features of the un-augmented
  evaluation images are computed once and a multinomial logistic regression with an L2 penalty
  is fitted to them in full batch with L-BFGS. It is the same objective as scikit-learn's
  `LogisticRegression` with `C = 1 / (l2 * N)` (a test checks the two agree), and takes well
  under a second on digits (~13 s per network on 10,000 Fashion-MNIST images, 1 thread).

Features ("auto" follows the official choice per architecture): the [CLS] token of the last
4 blocks, each through the final norm, concatenated (ViT-S and smaller, `--n_last_blocks 4`),
or the last block's [CLS] with the mean of its patch tokens (ViT-B and wider,
`--avgpool_patchtokens true`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_ablate.config import IN_MEMORY_DATASETS, RunConfig
from dino_ablate.data import EvalSet
from dino_ablate.knn import extract_features

#: Widths from which `auto` uses [CLS] + average-pooled patches (ViT-B is 768 wide).
AVGPOOL_FROM_WIDTH = 768


@dataclass(frozen=True)
class LinearProtocol:
    """The resolved linear-probe settings of a run (`resolve_protocol`)."""

    protocol: str  # "fast" | "paper" | "off"
    n_last_blocks: int
    avgpool: bool
    # paper protocol (eval_linear.py)
    epochs: int
    batch_size: int  # global
    lr: float  # after the linear scaling rule lr * batch / 256
    momentum: float
    weight_decay: float
    schedule: str
    train_crop: int  # RandomResizedCrop side, default scale, + horizontal flip
    eval_resize: int  # Resize (bicubic) then CenterCrop(eval_crop)
    eval_crop: int
    # fast protocol
    l2: float
    steps: int


def resolve_protocol(cfg: RunConfig, embed_dim: int) -> LinearProtocol:
    """The protocol, feature layout and optimiser settings the run's probe uses."""
    ev = cfg.eval
    protocol = ev.linear_protocol  # "paper" with an in-memory set is refused by the config
    if protocol == "auto":
        protocol = "fast" if cfg.data.dataset in IN_MEMORY_DATASETS else "paper"
    features = ev.linear_features
    if features == "auto":
        features = "cls_avgpool" if embed_dim >= AVGPOOL_FROM_WIDTH else "last4_cls"
    n_last, avgpool = {"cls": (1, False), "last4_cls": (4, False),
                       "cls_avgpool": (1, True)}[features]
    size = cfg.data.image_size
    return LinearProtocol(
        protocol=protocol, n_last_blocks=n_last, avgpool=avgpool, epochs=ev.linear_epochs,
        batch_size=ev.linear_batch_size, lr=ev.linear_lr * ev.linear_batch_size / 256.0,
        momentum=0.9, weight_decay=0.0, schedule="cosine", train_crop=size,
        eval_resize=int(round(size * 256 / 224)), eval_crop=size, l2=ev.linear_l2,
        steps=ev.linear_steps)


def probe_features(backbone: nn.Module, images: torch.Tensor, n_last_blocks: int,
                   avgpool: bool) -> torch.Tensor:
    """(B, D') features of a timm ViT for the probe (module docstring).

    Mirrors timm's `forward_features` block by block so that the outputs of the last blocks
    can be taken; with n_last_blocks 1 and no pooling this equals `backbone(images)`.
    """
    vit: Any = backbone  # a timm VisionTransformer
    x = vit.patch_embed(images)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    blocks = list(vit.blocks)
    outputs = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i >= len(blocks) - n_last_blocks:
            outputs.append(vit.norm(x))
    feats = [out[:, 0] for out in outputs]
    if avgpool:
        prefix = int(getattr(vit, "num_prefix_tokens", 1))
        feats.append(outputs[-1][:, prefix:].mean(dim=1))
    return torch.cat(feats, dim=-1)


def feature_dim(backbone: nn.Module, n_last_blocks: int, avgpool: bool) -> int:
    """Width of `probe_features` (a model with fewer blocks than asked gives all it has)."""
    vit: Any = backbone
    blocks = min(n_last_blocks, len(vit.blocks))
    return int(vit.embed_dim) * (blocks + int(avgpool))


def eval_features(backbone: nn.Module, data: EvalSet, proto: LinearProtocol, batch_size: int,
                  device: torch.device, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Probe features of every image of `data` (rank-sharded, gathered on every rank)."""
    def forward(images: torch.Tensor) -> torch.Tensor:
        return probe_features(backbone, images, proto.n_last_blocks, proto.avgpool)

    return extract_features(backbone, data, batch_size, device, autocast_dtype,
                            forward=forward, normalize=False)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
              steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit softmax regression on standardised features: (weight, bias, mean, std).

    Minimises mean cross-entropy + l2/2 ||W||^2 (bias not penalised) with full-batch L-BFGS in
    float64 (the same optimum as scikit-learn's LogisticRegression with C = 1/(l2 N)).
    """
    x = features.double()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = labels.to(x.device)
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device,
                         requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach(), mean, std


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor, num_classes: int, l2: float, steps: int) -> float:
    """Top-1 (0-1) on `test_x` of the probe fitted on `train_x` (`fit_probe`)."""
    weight, bias, mean, std = fit_probe(train_x, train_y, num_classes, l2, steps)
    logits = ((test_x.double().to(mean.device) - mean) / std) @ weight + bias
    return float((logits.argmax(1).cpu() == test_y.cpu()).double().mean())


def fast_linear_accuracy(backbone: nn.Module, bank: EvalSet, queries: EvalSet,
                         num_classes: int, proto: LinearProtocol, batch_size: int,
                         device: torch.device, autocast_dtype: torch.dtype | None) -> float:
    """The fast protocol: probe trained on the kNN memory bank, scored on the kNN queries."""
    train_x = eval_features(backbone, bank, proto, batch_size, device, autocast_dtype)
    test_x = eval_features(backbone, queries, proto, batch_size, device, autocast_dtype)
    return probe_accuracy(train_x.cpu(), bank.labels, test_x.cpu(), queries.labels,
                          num_classes, proto.l2, proto.steps)
