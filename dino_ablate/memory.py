"""How much memory a run config needs, estimated from the config before anything is allocated.

A size typed one digit too long (`head.out_dim: 6553600`, `data.global_crop_size: 22400`)
otherwise ends minutes later in an allocation failure with a traceback, or in the kernel's OOM
killer, after the run directory exists. `dino-ablate train` checks the estimate against this
machine's memory before it creates anything; `dino-ablate sweep` checks every point against
its resources (and shows the estimate in `--dry-run`).

The estimate is per rank and rough (+-50 %; it counts what dominates, and errs low rather than
refuse a run that fits):

- weights: the student's weights, gradients, AdamW moments and foreach temporaries (5 copies;
  6 under DDP, its gradient buckets) and the teacher's weights; the backbone's parameters from
  its width and depth (cost.py's table) and its position embeddings at the global crop size,
  the head's from its widths and K;
- activations of one training step: what the student keeps for the backward pass, 17 values
  per token per block and width (Korthikanti et al. 2022, "Reducing activation recomputation",
  Sec. 4.1: 34 bytes in 16-bit), plus the attention matrices when fused attention is off, and
  the head's outputs (K values per crop, several times over for the softmaxes and the loss);
  bf16 under autocast (GPU), fp32 otherwise;
- evaluation: one no-grad forward of `eval.batch_size` images at `data.image_size`;
- data: the in-memory data sets (digits, Fashion-MNIST, CIFAR, synthetic) at their stored size
  (their `data.train_limit` images), their evaluation copies at `data.image_size`, and the
  augmented crops of one batch.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from dino_ablate.config import RunConfig
from dino_ablate.errors import ConfigError, env_number
from dino_ablate.launch.cost import backbone_dims, head_weights, tokens_per_crop

#: overrides the machine's memory as the limit (GiB per node), e.g. for a shared machine.
LIMIT_ENV = "DINO_ABLATE_MAX_MEMORY_GB"
#: the largest accelerator memory a GPU point may assume when nothing else says (GiB): an
#: NVIDIA B200 has 180 GB, an H200 141 GB.
LARGEST_GPU_GIB = 192
#: (train images, val images, channels, stored side or None = data.image_size) of the
#: in-memory data sets, as dino_ablate.data loads them.
IN_MEMORY = {"digits": (1400, 397, 1, None), "fashion_mnist": (60_000, 10_000, 1, None),
             "cifar10": (50_000, 10_000, 3, 32),
             "cifar100": (50_000, 10_000, 3, 32), "synthetic": (2048, 512, 3, None)}
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs, by part; `keys` says which config values drive each part."""

    parameters: int
    weights: int
    activations: int
    evaluation: int
    data: int
    keys: dict[str, str]

    @property
    def device(self) -> int:
        """What lives on the training device (the GPU on a GPU run)."""
        return self.weights + self.activations + self.evaluation

    @property
    def total(self) -> int:
        return self.device + self.data

    def largest(self) -> str:
        parts = {"weights": self.weights, "activations": self.activations,
                 "evaluation": self.evaluation, "data": self.data}
        return max(parts, key=lambda name: parts[name])

    def summary(self) -> str:
        """`1.2 GiB/rank` with its parts, for the dry-run table."""
        return f"{fmt_bytes(self.total)}/rank"


def fmt_bytes(n: float) -> str:
    """`1.5 GiB`; a size beyond floats (from sizes near 2**63) as a power of two."""
    if n >= 2**100:
        return f"about 2**{int(n).bit_length() - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.4g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _fused_attention(cfg: RunConfig, device: str, tokens: int) -> bool:
    """Whether timm's fused attention runs (model.py's rule): no (heads, tokens^2) matrices."""
    mode = cfg.runtime.fused_attention
    return mode == "on" or (mode == "auto" and (device == "cuda" or tokens > 64))


def estimate(cfg: RunConfig, world_size: int = 1, device: str = "cpu") -> MemoryEstimate:
    """The memory one of `world_size` ranks needs to train `cfg` on `device` (cpu or cuda)."""
    dim, depth = backbone_dims(cfg)
    heads = cfg.model.num_heads or max(1, dim // 64)
    patch, data = cfg.model.patch_size, cfg.data
    channels = IN_MEMORY.get(data.dataset, (0, 0, 3, None))[2]
    t_global = tokens_per_crop(data.global_crop_size, patch)
    t_local = tokens_per_crop(data.local_crop_size, patch)
    mlp, last_layer = head_weights(cfg)
    backbone = depth * (12 * dim * dim + 13 * dim) + (channels * patch * patch + t_global) * dim
    predictor = 2 * cfg.head.out_dim * cfg.head.hidden_dim if cfg.head.predictor else 0
    params = backbone + mlp + last_layer + predictor
    weights = 4 * params * (6 if world_size > 1 else 5) + 4 * params

    act_bytes = 2 if cfg.runtime.precision == "bf16" or (
        cfg.runtime.precision == "auto" and device == "cuda") else 4
    local = max(1, cfg.optim.batch_size // max(world_size, 1))
    crops = ((2, t_global), (data.num_local_crops, t_local))
    per_block = 0
    for count, tokens in crops:
        attention = 0 if _fused_attention(cfg, device, tokens) else 2 * heads * tokens * tokens
        per_block += count * (17 * dim * tokens + attention)
    n_crops = 2 + data.num_local_crops
    head_values = n_crops * (4 * cfg.head.out_dim + 3 * cfg.head.hidden_dim * max(
        cfg.head.num_layers - 1, 0)) + 2 * 3 * cfg.head.out_dim
    activations = local * (act_bytes * depth * per_block + 4 * head_values)

    t_eval = tokens_per_crop(data.image_size, patch)
    eval_attention = 0 if _fused_attention(cfg, device, t_eval) else heads * t_eval * t_eval
    evaluation = cfg.eval.batch_size * act_bytes * (8 * dim * t_eval + eval_attention)

    crop_pixels = 2 * data.global_crop_size ** 2 + data.num_local_crops * data.local_crop_size ** 2
    data_bytes = 4 * 3 * local * channels * crop_pixels
    if data.dataset in IN_MEMORY:
        train, val, _, stored = IN_MEMORY[data.dataset]
        train = min(train, data.train_limit or train)
        side = stored or data.image_size
        bank = min(train, data.knn_train_limit or train)
        query = min(val, data.val_limit or val)
        data_bytes += 4 * channels * ((train + val) * side * side
                                      + 2 * (bank + query) * data.image_size ** 2)
    keys = {
        "weights": f"{params:,} parameters: model.arch {cfg.model.arch} with model.embed_dim "
                   f"{dim}, model.depth {depth}, data.global_crop_size {data.global_crop_size}"
                   f"; head.out_dim {cfg.head.out_dim} x head.bottleneck_dim "
                   f"{cfg.head.bottleneck_dim}, head.hidden_dim {cfg.head.hidden_dim}",
        "activations": f"optim.batch_size {cfg.optim.batch_size} over {world_size} rank(s), "
                       f"data.global_crop_size {data.global_crop_size}, data.local_crop_size "
                       f"{data.local_crop_size} x data.num_local_crops {data.num_local_crops}, "
                       f"model.patch_size {patch}, head.out_dim {cfg.head.out_dim}",
        "evaluation": f"eval.batch_size {cfg.eval.batch_size} images at data.image_size "
                      f"{data.image_size}",
        "data": f"data.dataset {data.dataset} at data.image_size {data.image_size}"
                + (f", data.train_limit {data.train_limit}" if data.train_limit else ""),
    }
    return MemoryEstimate(parameters=params, weights=weights, activations=activations,
                          evaluation=evaluation, data=data_bytes, keys=keys)


@functools.cache
def machine_memory() -> int | None:
    """This machine's physical memory in bytes (MemTotal), None when it cannot be told."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def env_limit() -> int | None:
    """The limit set by DINO_ABLATE_MAX_MEMORY_GB (bytes), if any."""
    value = env_number(LIMIT_ENV, "a number of GiB > 0", lambda v: 0 < v < math.inf)
    return None if value is None else int(value * GIB)


def check(need: int, limit: int, limit_what: str, est: MemoryEstimate, ranks: int,
          source: str | None, where: str = "") -> None:
    """Refuse when `ranks` ranks of `est` (`need` bytes together) exceed `limit`."""
    if need <= limit:
        return
    part = est.largest()
    ranks_text = f" for {ranks} ranks" if ranks > 1 else ""
    raise ConfigError(
        f"{where}memory: the run needs about {fmt_bytes(need)}{ranks_text} (per rank: weights "
        f"{fmt_bytes(est.weights)}, activations of one step {fmt_bytes(est.activations)}, "
        f"evaluation {fmt_bytes(est.evaluation)}, data {fmt_bytes(est.data)}), mostly {part}, "
        f"from {est.keys[part]}; allowed: at most {fmt_bytes(limit)} ({limit_what}): lower those "
        f"values, or raise the limit with {LIMIT_ENV}=GiB", source=source, key="memory")


Limit = tuple[int, str]   # bytes, and what they are ("this machine's memory (MemTotal)")


def _check_fits(est: MemoryEstimate, device: str, ranks: int, host: Limit | None,
                gpu: Limit | None, source: str | None, where: str) -> None:
    """On a GPU, weights, activations and evaluation must fit `gpu` and the data of `ranks`
    ranks the host; on the CPU all of it must fit the host."""
    if device == "cuda":
        if gpu is not None:
            check(est.device, gpu[0], gpu[1], est, 1, source, where)
        if host is not None:
            check(est.data * ranks, host[0], host[1], est, ranks, source, where)
    elif host is not None:
        check(est.total * ranks, host[0], host[1], est, ranks, source, where)


def check_local(cfg: RunConfig, device: str, ranks_here: int, world_size: int,
                source: str | None) -> MemoryEstimate:
    """`dino-ablate train`: the config must fit this machine (its RAM; on a GPU run its GPU's
    memory too) before anything is created."""
    est = estimate(cfg, world_size, device)
    env = env_limit()
    host: Limit | None = None
    gpu: Limit | None = None
    if env is not None:
        host = gpu = (env, LIMIT_ENV)
    else:
        ram = machine_memory()
        host = (ram, "this machine's memory (MemTotal)") if ram is not None else None
        vram = _gpu_memory() if device == "cuda" else None
        gpu = (vram, "the GPU's memory") if vram is not None else None
    _check_fits(est, device, ranks_here, host, gpu, source, "")
    return est


def _gpu_memory() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def check_point(cfg: RunConfig, gpus_per_node: int, tasks_per_node: int, world_size: int,
                mem_gb: float | None, source: str, where: str) -> MemoryEstimate:
    """A sweep point must fit its resources: `resources.mem_gb` per node (else this machine's
    memory for a CPU point), and a GPU point LARGEST_GPU_GIB per GPU; DINO_ABLATE_MAX_MEMORY_GB
    overrides both."""
    device = "cuda" if gpus_per_node > 0 else "cpu"
    est = estimate(cfg, world_size, device)
    env = env_limit()
    host: Limit | None = None
    gpu: Limit = (LARGEST_GPU_GIB * GIB, "the largest GPU's")
    if env is not None:
        host = gpu = (env, LIMIT_ENV)
    elif mem_gb is not None:
        host = (int(mem_gb * GIB), "the point's resources.mem_gb")
    elif device == "cpu" and (ram := machine_memory()) is not None:
        host = (ram, "this machine's memory (MemTotal; set resources.mem_gb for the nodes' own)")
    _check_fits(est, device, tasks_per_node, host, gpu, source, where)
    return est
