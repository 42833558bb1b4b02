"""Every `paper` point of every sweep file runs the official linear probe (DINO.md §2.12).

The expected values are written here from DINO.md §2.12 (`eval_linear.py`, paper App. F.2),
not from `config.py` or `linear.py`: frozen features of the last 4 [CLS] tokens for ViT-S (the
last [CLS] + mean patch token for ViT-B), SGD momentum 0.9 with lr 0.001 x 1024 / 256 and no
weight decay, cosine to 0 over 100 epochs, RandomResizedCrop 224 + flip for training and
Resize 256 + CenterCrop 224 for validation. The width that picks the feature layout comes from
the point's real backbone (built on the meta device: no memory, no weights).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import transforms as T

from dino_ablate.config import ModelConfig
from dino_ablate.linear import resolve_protocol
from dino_ablate.linear_paper import paper_transforms
from dino_ablate.model import build_backbone
from dino_ablate.sweep import load_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
PAPER_FILES = sorted(p.stem for p in SWEEPS.glob("*.yaml") if "\n  paper:" in p.read_text())

#: DINO.md §2.12 per architecture width: (n_last_blocks, avgpool_patchtokens).
FEATURES = {384: (4, False), 768: (1, True)}  # ViT-S, ViT-B
PAPER_BATCH = 1024
PAPER_PROBE = {"protocol": "paper", "epochs": 100, "batch_size": PAPER_BATCH,
               "lr": 0.001 * PAPER_BATCH / 256, "momentum": 0.9, "weight_decay": 0.0,
               "schedule": "cosine", "train_crop": 224, "eval_resize": 256, "eval_crop": 224}


@functools.cache
def _width(model: ModelConfig, image_size: int) -> int:
    with torch.device("meta"):
        width: Any = build_backbone(model, image_size, 3, 0.0).embed_dim
    return int(width)


def test_every_paper_file_is_checked() -> None:
    assert len(PAPER_FILES) >= 9 and "components" in PAPER_FILES


@pytest.mark.parametrize("name", PAPER_FILES)
def test_paper_points_use_the_official_linear_probe(name: str) -> None:
    points = load_sweep(SWEEPS / f"{name}.yaml", "paper").points
    assert points
    for point in points:
        width = _width(point.config.model, point.config.data.image_size)
        assert width in FEATURES, f"{point.run_id}: width {width} is neither ViT-S nor ViT-B"
        proto = resolve_protocol(point.config, width)
        n_last, avgpool = FEATURES[width]
        actual = {key: getattr(proto, key) for key in PAPER_PROBE}
        assert actual == pytest.approx(PAPER_PROBE), point.run_id
        assert (proto.n_last_blocks, proto.avgpool) == (n_last, avgpool), point.run_id
        # the probe's global batch must split over the point's ranks (else it fails at the end)
        assert proto.batch_size % point.resources.world_size == 0, point.run_id


def test_paper_transforms_are_the_official_ones() -> None:
    cfg = load_sweep(SWEEPS / "components.yaml", "paper").points[0].config
    train, val = paper_transforms(resolve_protocol(cfg, _width(cfg.model, 224)))
    crop, flip = train.transforms[:2]
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.08, 1.0)  # torchvision's default, as eval_linear.py
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    resize, center = val.transforms[:2]
    assert isinstance(resize, T.Resize) and resize.size == 256
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(center, T.CenterCrop) and center.size == (224, 224)
    for pipeline in (train, val):
        norm = pipeline.transforms[-1]
        assert isinstance(norm, T.Normalize)
        assert tuple(norm.mean) == (0.485, 0.456, 0.406)
        assert tuple(norm.std) == (0.229, 0.224, 0.225)
