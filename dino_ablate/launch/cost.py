"""Compute-cost estimate of a sweep point, for `dino-ablate sweep --dry-run`.

Cost = epochs x training images x (2 global crops + local crops) x seconds per crop, in
device-hours: GPU-hours for points with GPUs (all GPUs together; DDP scaling assumed linear),
CPU core-hours otherwise. On the CPU the projection head is counted too (its multiply-adds per
crop, and a pass over its last layer's weights per optimizer step): with the tiny local
backbones a large K makes the head most of the work. The kNN evaluations are not counted.
These are planning numbers (+-50 %), not promises.

Sources of the figures:
- `V100_MS_PER_GLOBAL_CROP` = 3.44 ms: DINO paper Table 8, ViT-S/16 with 2x224^2 crops, 100
  epochs took 15.3 h on 16 V100: 15.3 h x 16 / (100 x 1,281,167 images x 2 crops).
- Local-crop exponent `CROP_TOKEN_EXPONENT` = 1.29: Table 8 adds ~0.89 h per 96^2 crop per 100
  epochs (15.3 h -> 24.2 h for 10 local crops), i.e. 0.40 ms per 96^2 crop = 3.44 ms x
  (37 / 197 tokens)^1.29.
- `V100_INFERENCE_IM_S`: the paper's V100 throughputs (Table 1, Table 2, Fig. 5: bs 128
  inference). An arch in this table costs `1007 / im_s` times ViT-S/16 per 224^2 crop.
- Other architectures (custom embed_dim/depth, the tiny CPU models) scale by a FLOP proxy
  depth x tokens x (12 d^2 + 2 tokens d) relative to ViT-S/16.
- `CPU_PROXY_PER_CORE_S` = 3e9 proxy units per core-second, between two measurements on the
  project's 2-vCPU VM: SMALL_SCALE.md's digits prototype (ViT dim 64, depth 4, patch 4 on 16 px,
  2 global + 4 local crops, ~1.0 s of training per 1400-image epoch on 2 threads: 7.7e9 per
  core-s) and `sweeps/local_smoke.yaml`'s tiny ViT (dim 32, depth 2, 2 local crops: 1740 im/s
  on 1 thread, 2.0e9; small models are overhead-bound).
- `CPU_UNITS_PER_PARAM_STEP` = 200 proxy units per last-layer weight per optimizer step (AdamW,
  the teacher's EMA, gradient clipping, the weight-normalised last layer: memory-bound passes
  over the weights), fitted to `sweeps/output_dim.yaml`'s local points on 1 thread beside other
  runs (2026-11-28): median 24 s per epoch at K 65536 and 83 s at K 262144, of which the head's
  multiply-adds account for ~11 s and ~35 s; both points give 200-220. A later run of the
  sweep measured K 65536 at 17.0 s on 1 thread (mostly alone; estimate 23.7 s) and K 262144 at
  42.8 s on 2 threads (86 core-s; estimate 84).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import pairwise

from dino_ablate.config import RunConfig
from dino_ablate.sweep import Resources

TRAIN_IMAGES = {"imagefolder": 1_281_167, "cifar10": 50_000, "cifar100": 50_000,
                "digits": 1_400, "fashion_mnist": 60_000}
V100_INFERENCE_IM_S = {("vit_small", 16): 1007.0, ("vit_small", 8): 180.0,
                       ("vit_small", 5): 44.0, ("vit_base", 16): 312.0, ("vit_base", 8): 63.0}
V100_MS_PER_GLOBAL_CROP = 3.44
CROP_TOKEN_EXPONENT = 1.29
CPU_PROXY_PER_CORE_S = 3.0e9
CPU_UNITS_PER_PARAM_STEP = 200.0
#: width and depth of timm's ViT families, for the FLOP proxy.
ARCH_DIMS = {"vit_tiny": (192, 12), "vit_small": (384, 12), "vit_base": (768, 12),
             "vit_large": (1024, 24), "vit_huge": (1280, 32)}


def _family(arch: str) -> str:
    match = re.match(r"(vit_[a-z]+)", arch)
    return match.group(1) if match else arch


def tokens_per_crop(crop: int, patch: int) -> int:
    """Tokens of a ViT on a `crop` x `crop` image: patches (timm pads a partial one) + [CLS]."""
    return math.ceil(crop / patch) ** 2 + 1


def _proxy(dim: int, depth: int, tokens: int) -> float:
    return depth * tokens * (12.0 * dim * dim + 2.0 * tokens * dim)


def backbone_dims(cfg: RunConfig) -> tuple[int, int]:
    """(width, depth) of the backbone: the config's overrides, else its timm family's."""
    dim, depth = ARCH_DIMS.get(_family(cfg.model.arch), ARCH_DIMS["vit_small"])
    return cfg.model.embed_dim or dim, cfg.model.depth or depth


def head_weights(cfg: RunConfig) -> tuple[int, int]:
    """Weights of the projection head's MLP and of its last layer (bottleneck x K); together
    they are the head's multiply-adds per crop."""
    head = cfg.head
    widths = [backbone_dims(cfg)[0], *[head.hidden_dim] * (head.num_layers - 1),
              head.bottleneck_dim]
    return sum(a * b for a, b in pairwise(widths)), head.bottleneck_dim * head.out_dim


REFERENCE_PROXY = _proxy(384, 12, tokens_per_crop(224, 16))


def crop_seconds_gpu(cfg: RunConfig, crop: int) -> float:
    """V100-seconds to train on one crop of side `crop` px."""
    dim, depth = backbone_dims(cfg)
    key = (_family(cfg.model.arch), cfg.model.patch_size)
    default_arch = cfg.model.embed_dim is None and cfg.model.depth is None
    if default_arch and key in V100_INFERENCE_IM_S:
        at_224 = V100_MS_PER_GLOBAL_CROP * 1007.0 / V100_INFERENCE_IM_S[key] / 1000.0
        patch = cfg.model.patch_size
        ratio = tokens_per_crop(crop, patch) / tokens_per_crop(224, patch)
        return at_224 * ratio ** CROP_TOKEN_EXPONENT
    proxy = _proxy(dim, depth, tokens_per_crop(crop, cfg.model.patch_size))
    return V100_MS_PER_GLOBAL_CROP / 1000.0 * proxy / REFERENCE_PROXY


@dataclass(frozen=True)
class Cost:
    device: str          # "GPU" or "CPU"
    device_hours: float  # GPU-hours, or CPU core-hours
    wall_hours: float    # on the requested resources, assuming linear scaling


def estimate(cfg: RunConfig, res: Resources) -> Cost:
    per_epoch = TRAIN_IMAGES.get(cfg.data.dataset, 1_281_167)
    images = min(per_epoch, cfg.data.train_limit or per_epoch) * cfg.epochs
    if res.gpus_per_node > 0:
        per_image = (2 * crop_seconds_gpu(cfg, cfg.data.global_crop_size)
                     + cfg.data.num_local_crops * crop_seconds_gpu(cfg, cfg.data.local_crop_size))
        hours = images * per_image / 3600.0
        return Cost("GPU", hours, hours / (res.nodes * res.gpus_per_node))
    dim, depth = backbone_dims(cfg)
    mlp, last_layer = head_weights(cfg)
    crops = 2 + cfg.data.num_local_crops
    patch = cfg.model.patch_size
    proxy = (2 * _proxy(dim, depth, tokens_per_crop(cfg.data.global_crop_size, patch))
             + cfg.data.num_local_crops
             * _proxy(dim, depth, tokens_per_crop(cfg.data.local_crop_size, patch))
             + crops * (mlp + last_layer))
    # every rank updates the weights once per step of `batch_size` images; only the last
    # layer's are many enough to count beside the per-core figure
    proxy += CPU_UNITS_PER_PARAM_STEP * last_layer * res.world_size / cfg.optim.batch_size
    hours = images * proxy / CPU_PROXY_PER_CORE_S / 3600.0
    cores = res.world_size * res.cpus_per_task
    return Cost("CPU", hours, hours / cores)
