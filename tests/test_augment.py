"""Batched multi-crop augmentation: per-image equivalence with the plain path, and each colour
operation against torchvision's reference implementation with the same random factors."""

import pytest
import torch
import torchvision.transforms.functional as TF

from dino_ablate.augment import CropSpec, apply_crop, crop_specs, sample_crop_params
from dino_ablate.config import from_dict


def _params(n: int, seed: int = 0, **data: object):  # type: ignore[no-untyped-def]
    cfg = from_dict({"data": {"dataset": "digits", **data}}).data
    spec = CropSpec(16, (0.3, 1.0), 0.5, 224, 0.5)
    return cfg, spec, sample_crop_params(n, spec, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_equals_per_image_loop(channels: int) -> None:
    cfg, spec, p = _params(12)
    images = torch.rand(12, channels, 24, 24, generator=torch.Generator().manual_seed(1))
    batched = apply_crop(images, spec, p)
    for i in range(12):
        single = apply_crop(images[i:i + 1], spec, p.slice(i, i + 1))
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-5, atol=1e-5)
    assert batched.shape == (12, channels, 16, 16)
    assert float(batched.min()) >= 0 and float(batched.max()) <= 1


def test_whole_image_crop_is_identity_resize() -> None:
    # Scale (1, 1) with aspect ratio 1 covers the whole image: a same-size crop is the input.
    cfg = from_dict({"data": {"dataset": "digits", "flip_prob": 0.0, "color_jitter_prob": 0.0,
                              "grayscale_prob": 0.0}}).data
    spec = CropSpec(16, (0.999999, 1.0), 0.0, 224)
    p = sample_crop_params(4, spec, cfg, torch.Generator().manual_seed(0))
    p.width[:] = 1.0
    p.height[:] = 1.0
    p.center_x[:] = 0.0
    p.center_y[:] = 0.0
    images = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(apply_crop(images, spec, p), images, rtol=1e-4, atol=1e-4)


def test_flip_matches_torchvision() -> None:
    cfg, spec, p = _params(2, color_jitter_prob=0.0, grayscale_prob=0.0)
    spec = CropSpec(16, (1.0, 1.0), 0.0, 224)
    for name in ("width", "height"):
        getattr(p, name)[:] = 1.0
    p.center_x[:] = 0.0
    p.center_y[:] = 0.0
    p.flip[:] = torch.tensor([True, False])
    images = torch.rand(2, 3, 16, 16)
    out = apply_crop(images, spec, p)
    torch.testing.assert_close(out[0], TF.hflip(images[0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], images[1], rtol=1e-4, atol=1e-4)


def test_colour_ops_match_torchvision() -> None:
    _, spec, p = _params(1)
    spec = CropSpec(16, (1.0, 1.0), 0.0, 224)
    p.width[:] = 1.0
    p.height[:] = 1.0
    p.center_x[:] = 0.0
    p.center_y[:] = 0.0
    p.flip[:] = False
    p.jitter[:] = True
    p.gray[:] = False
    p.blur[:] = False
    p.brightness[:] = 1.3
    p.contrast[:] = 0.7
    p.saturation[:] = 1.0
    p.hue[:] = 0.0
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = apply_crop(img, spec, p)
    ref = TF.adjust_contrast(TF.adjust_brightness(img[0], 1.3), 0.7)
    torch.testing.assert_close(ours[0], ref, rtol=1e-4, atol=1e-4)


def test_crop_specs_follow_paper() -> None:
    cfg = from_dict({"data": {"root": "/x"}}).data
    specs = crop_specs(cfg)
    assert [s.size for s in specs] == [224, 224] + [96] * 8
    assert [s.blur_prob for s in specs[:3]] == [1.0, 0.1, 0.5]
    assert [s.solarize_prob for s in specs[:3]] == [0.0, 0.2, 0.0]
