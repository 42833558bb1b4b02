"""Last-block [CLS] -> patch self-attention maps of the teacher and the student (DINO Fig. 1, 3).

At the end of a run, :func:`save_attention` takes a fixed seeded set of validation images and
writes, per head, where the [CLS] token of the last block looks (docs/run_directory.md,
``attention/``): ``maps.npz`` with the maps and the 60 %-mass masks of the official
``visualize_attention.py``, and a PNG grid per network. The maps come from the network itself
(:func:`cls_attention`), not from a re-implementation of the ViT forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dino_ablate.data import EvalSet

#: Share of the attention mass the thresholded masks keep (the official visualiser's 0.6).
MASK_MASS = 0.6
#: Side of one cell of the PNG grids, in inches.
CELL_INCHES = 1.1
#: Images per backbone call in :func:`save_attention`.
BATCH_SIZE = 64


def _last_attention(backbone: nn.Module) -> Any:
    """The attention module of the last block; TypeError when it is not timm's ``Attention``."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise TypeError(f"{type(backbone).__name__} has no `blocks`: expected a timm "
                        "VisionTransformer (unwrap DDP / torch.compile first)")
    attn = getattr(blocks[-1], "attn", None)
    needed = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")
    if attn is None or not all(hasattr(attn, name) for name in needed):
        raise TypeError(f"the last block of {type(backbone).__name__} has no timm `Attention` "
                        f"with {', '.join(needed)}")
    if getattr(backbone, "cls_token", None) is None:
        raise TypeError(f"{type(backbone).__name__} has no [CLS] token")
    return attn


def cls_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[CLS] -> patch attention of the last block, per head: (B, heads, h, w), float32.

    ``images`` (B, C, H, W) are normalised like the training crops; ``h, w`` is the patch grid
    (``ceil(H / patch)`` under timm's dynamic padding). Each head's map is the softmax row of
    the [CLS] query restricted to the patch tokens and renormalised to sum to 1 over them (the
    [CLS] and register tokens' share is dropped, as the official visualiser's thresholding does).

    The tokens entering the last attention are taken from the network's own forward pass (a
    pre-hook on that module), so they are exactly those of ``backbone.forward_features``; the
    network runs in eval mode (no drop-path) and its mode is restored afterwards.
    """
    attn = _last_attention(backbone)
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])

    handle = attn.register_forward_pre_hook(grab)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone.forward_features(images)  # type: ignore[operator]
    finally:
        handle.remove()
        backbone.train(was_training)
    tokens = captured[0]  # (B, N, dim): the last block's norm1 output
    batch, num_tokens, _ = tokens.shape
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    with torch.no_grad():
        qkv = attn.qkv(tokens).reshape(batch, num_tokens, 3, heads, head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, head_dim)
        query = attn.q_norm(qkv[0][:, :, :1])  # the [CLS] query: (B, heads, 1, head_dim)
        keys = attn.k_norm(qkv[1])
        logits = (query.float() * float(attn.scale)) @ keys.float().transpose(-2, -1)
        prefix = int(backbone.num_prefix_tokens)  # type: ignore[arg-type]
        probs = logits.softmax(dim=-1)[:, :, 0, prefix:]
        probs = probs / probs.sum(dim=-1, keepdim=True)
    grid_h, grid_w = _grid(backbone, images)
    assert grid_h * grid_w == probs.shape[-1], (probs.shape, grid_h, grid_w)
    return probs.reshape(batch, heads, grid_h, grid_w)


def _grid(backbone: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """Patch grid (h, w) of ``images`` as timm's patch embedding lays it out."""
    patch_embed: Any = backbone.patch_embed
    if getattr(backbone, "dynamic_img_size", False):
        height, width = patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        return int(height), int(width)
    return int(patch_embed.grid_size[0]), int(patch_embed.grid_size[1])


def threshold_masks(attn: torch.Tensor, keep: float = MASK_MASS) -> torch.Tensor:
    """Per map, the fewest patches whose attention holds at least ``keep`` of the mass.

    ``attn`` (..., h, w) non-negative; returns a bool tensor of the same shape. As the official
    ``visualize_attention.py --threshold``: patches are ranked by attention and taken from the
    top while the mass taken before them is below ``keep`` (ties broken by a stable sort).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep: {keep} must be in (0, 1]")
    flat = attn.flatten(-2).float()
    flat = flat / flat.sum(dim=-1, keepdim=True)
    values, order = torch.sort(flat, dim=-1, descending=True, stable=True)
    mass_before = values.cumsum(dim=-1) - values
    kept_sorted = mass_before < keep
    kept = torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)
    return kept.reshape(attn.shape)


def choose_positions(num_queries: int, n_images: int, seed: int) -> list[int]:
    """``min(n_images, num_queries)`` positions in the query set, seeded and sorted."""
    order = torch.randperm(num_queries, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:min(n_images, num_queries)].tolist())


def save_attention(out_dir: Path, teacher_backbone: nn.Module, student_backbone: nn.Module,
                   queries: EvalSet, *, n_images: int = 8, seed: int = 0, patch_size: int,
                   epoch: int, mean: Sequence[float], std: Sequence[float],
                   device: torch.device) -> list[Path]:
    """Write ``out_dir/maps.npz``, ``teacher.png`` and ``student.png``; returns their paths.

    The images are ``n_images`` positions of ``queries`` drawn with ``seed`` (the same images
    for every run that shares the query set); ``mean``/``std`` undo the normalisation for
    display. ``n_images`` 0 writes nothing. Each file is written to a temporary name and
    renamed, so a reader never sees half a file.
    """
    if n_images < 0:
        raise ValueError(f"n_images: {n_images} must be >= 0")
    if n_images == 0 or len(queries) == 0:
        return []
    positions = choose_positions(len(queries), n_images, seed)
    normalised = torch.cat([batch.cpu() for batch in queries.batches(positions, BATCH_SIZE)])
    maps: dict[str, torch.Tensor] = {}
    for name, backbone in (("teacher", teacher_backbone), ("student", student_backbone)):
        parts = [cls_attention(backbone, normalised[i:i + BATCH_SIZE].to(device)).cpu()
                 for i in range(0, len(positions), BATCH_SIZE)]
        maps[name] = torch.cat(parts)
    channels = normalised.shape[1]
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, channels) or std_t.shape[1] not in (1, channels):
        raise ValueError(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for "
                         f"{channels}-channel images")
    images = (normalised.float() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1)
    arrays: dict[str, np.ndarray] = {
        "images": images.numpy().astype(np.float32),
        "indices": np.asarray(positions, dtype=np.int64),
        "patch_size": np.asarray(patch_size, dtype=np.int64),
        "epoch": np.asarray(epoch, dtype=np.int64),
    }
    for name, values in maps.items():
        arrays[name] = values.numpy().astype(np.float32)
        arrays[f"{name}_mask"] = threshold_masks(values).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_write_npz(out_dir / "maps.npz", arrays)]
    for name in maps:
        written.append(_write_grid(out_dir / f"{name}.png", arrays["images"], arrays[name],
                                   positions, patch_size, f"{name} · epoch {epoch}"))
    return written


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path


def _cell_map(values: np.ndarray, height: int, width: int, patch_size: int) -> np.ndarray:
    """A (h, w) patch map as the (height, width) pixels of the image it covers.

    timm pads the image on the right/bottom, so patch (i, j) covers pixels from
    (i * patch, j * patch) and the padding falls outside the image.
    """
    rows = np.minimum(np.arange(height) // patch_size, values.shape[0] - 1)
    cols = np.minimum(np.arange(width) // patch_size, values.shape[1] - 1)
    return values[np.ix_(rows, cols)]


def attention_grid(images: np.ndarray, maps: np.ndarray, patch_size: int) -> np.ndarray:
    """RGB mosaic (float, [0, 1]): a row per image; the image, each head's map, the head mean.

    ``images`` (n, H, W, C) in [0, 1], ``maps`` (n, heads, h, w). Each map is scaled to its own
    min-max (as the official visualiser's ``plt.imsave``) and drawn in viridis; cells are
    separated by white lines.
    """
    from matplotlib import colormaps

    count, height, width, _ = images.shape
    heads = maps.shape[1]
    gap = max(1, height // 16)
    columns = heads + 2
    mosaic = np.ones((count * (height + gap) - gap, columns * (width + gap) - gap, 3))
    viridis = colormaps["viridis"]
    for row in range(count):
        image = images[row]
        cells = [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]]
        for values in [*maps[row], maps[row].mean(axis=0)]:
            pixels = _cell_map(values, height, width, patch_size)
            span = float(pixels.max() - pixels.min())
            scaled = (pixels - pixels.min()) / span if span > 0 else np.zeros_like(pixels)
            cells.append(viridis(scaled)[..., :3])
        top = row * (height + gap)
        for column, cell in enumerate(cells):
            left = column * (width + gap)
            mosaic[top:top + height, left:left + width] = cell
    return mosaic


def _write_grid(path: Path, images: np.ndarray, maps: np.ndarray, positions: list[int],
                patch_size: int, title: str) -> Path:
    """The :func:`attention_grid` of one network as a labelled PNG."""
    from matplotlib.figure import Figure

    mosaic = attention_grid(images, maps, patch_size)
    count, height, width, _ = images.shape
    heads = maps.shape[1]
    gap = max(1, height // 16)
    fig = Figure(figsize=(0.6 + (heads + 2) * CELL_INCHES, 0.6 + count * CELL_INCHES), dpi=100)
    ax = fig.add_axes((0.45 / fig.get_figwidth(), 0.1 / fig.get_figheight(),
                       1 - 0.55 / fig.get_figwidth(), 1 - 0.6 / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    labels = ["image", *(f"head {head}" for head in range(heads)), "mean"]
    ax.set_xticks([c * (width + gap) + (width - 1) / 2 for c in range(len(labels))], labels,
                  fontsize=8)
    ax.set_yticks([r * (height + gap) + (height - 1) / 2 for r in range(count)],
                  [f"#{position}" for position in positions], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(f"[CLS] attention of the last block — {title}", fontsize=9, y=1 - 0.05 /
                 fig.get_figheight(), va="top")
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path

