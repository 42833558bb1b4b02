"""The paper's multi-crop augmentation as batched tensor operations.

DINO.md §2.7 (official `DataAugmentationDINO`): RandomResizedCrop (bicubic), horizontal flip
p 0.5, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) p 0.8, grayscale
p 0.2, Gaussian blur (radius U[0.1, 2]) p 1.0 / 0.1 / 0.5 for global 1 / global 2 / local, and
solarisation p 0.2 on global 2. Here every image of a batch gets its own random parameters,
drawn on the CPU from a seeded generator (so results do not depend on the device), and each
operation is one batched kernel: crops+flips are one `grid_sample`, blur one grouped conv.

Deliberate differences from the PIL pipeline, all documented in the README:
- the blur radius is scaled to the crop size (radius * crop / 224 for global crops,
  radius * crop / 96 for local crops), so small-image recipes get a comparable blur;
- the four jitter operations run in a fixed order (brightness, contrast, saturation, hue)
  instead of torchvision's random order; hue is a rotation of the chroma plane in YIQ space;
- for 1-channel data (digits) saturation, hue and grayscale are identities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dino_ablate.config import DataConfig

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    """One kind of crop: output size, area range, blur and solarisation probabilities."""

    size: int
    scale: tuple[float, float]
    blur_prob: float
    blur_reference: int
    solarize_prob: float = 0.0


@dataclass
class CropParams:
    """Per-image random parameters of one crop kind, each a (N,) CPU tensor."""

    center_x: torch.Tensor  # crop centre in normalised [-1, 1] input coordinates
    center_y: torch.Tensor
    width: torch.Tensor  # crop size as a fraction of the input side
    height: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor  # bool
    blur: torch.Tensor  # bool
    sigma: torch.Tensor  # in output pixels
    solarize: torch.Tensor  # bool

    def slice(self, start: int, stop: int) -> CropParams:
        return CropParams(**{k: v[start:stop] for k, v in vars(self).items()})


def crop_specs(cfg: DataConfig) -> list[CropSpec]:
    """Two global crops then `num_local_crops` local ones, crop-major as the model expects."""
    g1, g2 = cfg.blur_prob_global
    specs = [CropSpec(cfg.global_crop_size, cfg.global_crop_scale, g1, 224),
             CropSpec(cfg.global_crop_size, cfg.global_crop_scale, g2, 224, cfg.solarize_prob)]
    specs += [CropSpec(cfg.local_crop_size, cfg.local_crop_scale, cfg.blur_prob_local, 96)
              for _ in range(cfg.num_local_crops)]
    return specs


def sample_crop_params(n: int, spec: CropSpec, cfg: DataConfig,
                       gen: torch.Generator) -> CropParams:
    """torchvision RandomResizedCrop's sampling (10 tries, then the whole image), batched."""
    tries = 10
    area = torch.empty(n, tries).uniform_(spec.scale[0], spec.scale[1], generator=gen)
    log_ratio = torch.empty(n, tries).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio)
    h = torch.sqrt(area / ratio)
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    idx = first.clamp_min(0).unsqueeze(1)
    width = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.ones(n))
    height = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.ones(n))
    u = torch.rand(n, 2, generator=gen)
    # The crop's top-left corner is uniform over the positions where it fits.
    left = u[:, 0] * (1 - width)
    top = u[:, 1] * (1 - height)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) < p

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=gen)

    return CropParams(
        center_x=(left + width / 2) * 2 - 1, center_y=(top + height / 2) * 2 - 1,
        width=width, height=height, flip=coin(cfg.flip_prob), jitter=coin(cfg.color_jitter_prob),
        brightness=uniform(0.6, 1.4), contrast=uniform(0.6, 1.4), saturation=uniform(0.8, 1.2),
        hue=uniform(-0.1, 0.1), gray=coin(cfg.grayscale_prob), blur=coin(spec.blur_prob),
        sigma=uniform(0.1, 2.0) * spec.size / spec.blur_reference,
        solarize=coin(spec.solarize_prob))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) luminance (ITU-R 601, as PIL/torchvision)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _hue_rotate(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane in YIQ by 2 pi hue (an approximation of an HSV hue shift)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    theta = hue.to(device=x.device, dtype=x.dtype) * 2 * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    n = x.shape[0]
    rot = torch.zeros(n, 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = from_yiq @ rot @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", mat, x)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; one grouped convolution per axis."""
    n, c, h, w = x.shape
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, k)
    kernel = kernel.repeat_interleave(c, dim=0)  # (N*C, k)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def apply_crop(images: torch.Tensor, spec: CropSpec, p: CropParams) -> torch.Tensor:
    """Augment a batch (N, C, H, W) in [0, 1] with per-image params -> (N, C, s, s) in [0, 1]."""
    n = images.shape[0]
    x = images
    dtype = x.dtype
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=dtype)
    sign = torch.where(p.flip, -1.0, 1.0)
    theta[:, 0, 0] = (p.width * sign).to(x.device, dtype)
    theta[:, 0, 2] = p.center_x.to(x.device, dtype)
    theta[:, 1, 1] = p.height.to(x.device, dtype)
    theta[:, 1, 2] = p.center_y.to(x.device, dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], spec.size, spec.size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    x = x.clamp(0, 1)

    jit = _col(p.jitter, x) > 0
    y = (x * _col(p.brightness, x)).clamp(0, 1)
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * _col(p.contrast, x) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        g = _gray(y)
        y = ((y - g) * _col(p.saturation, x) + g).clamp(0, 1)
        y = _hue_rotate(y, p.hue).clamp(0, 1)
    x = torch.where(jit, y, x)
    if x.shape[1] == 3:
        x = torch.where(_col(p.gray, x) > 0, _gray(x).expand_as(x), x)
    if bool(p.blur.any()):
        x = torch.where(_col(p.blur, x) > 0, _blur(x, p.sigma), x)
    if spec.solarize_prob > 0:
        x = torch.where((_col(p.solarize, x) > 0) & (x >= 0.5), 1 - x, x)
    return x


class MultiCropAugment:
    """Batch of images in [0, 1] -> list of normalised crops [g1, g2, l1 .. lL]."""

    def __init__(self, cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cfg = cfg
        self.specs = crop_specs(cfg)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def sample(self, n: int, gen: torch.Generator) -> list[CropParams]:
        """Parameters for a whole (global) batch; ranks slice their part of it."""
        return [sample_crop_params(n, spec, self.cfg, gen) for spec in self.specs]

    def apply(self, images: torch.Tensor, params: list[CropParams]) -> list[torch.Tensor]:
        mean = self.mean.to(images.device, images.dtype)
        std = self.std.to(images.device, images.dtype)
        return [(apply_crop(images, spec, p) - mean) / std
                for spec, p in zip(self.specs, params, strict=True)]
