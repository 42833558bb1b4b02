"""The sweep's attention maps side by side: rows = sweep points, columns = the same images.

Each run writes ``attention/maps.npz`` at its end (docs/run_directory.md): a fixed seeded set of
validation images and the last block's [CLS] -> patch attention of every head. This figure
shows, for the first seed of each point that has the file, every image coloured by the
teacher's head-mean attention (red: most, blue: least; the image sets the brightness), so that
a patch-size or teacher-rule sweep can be compared at a glance. The file is read with numpy
only; nothing of the trainer is imported.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.figure_style import DPI, format_value, point_labels
from analysis.load import SweepResults
from dino_ablate.contract import ATTENTION_DIR

logger = logging.getLogger(__name__)

ATTENTION_FILE = Path(ATTENTION_DIR) / "maps.npz"
#: The attention picks the colour (blue: least, red: most) and the image the brightness, down to
#: this share of full brightness on black pixels, so both stay readable in one cell.
ATTENTION_COLORMAP = "coolwarm"
MIN_BRIGHTNESS = 0.25
#: Cells are drawn at least this many pixels wide (nearest-neighbour upscaling of small images).
MIN_CELL_PIXELS = 64


@dataclass(frozen=True)
class RunAttention:
    """What the figure needs of one run's ``attention/maps.npz``."""

    images: np.ndarray  # (n, H, W, C) in [0, 1]
    indices: np.ndarray  # (n,) positions in the validation set
    teacher: np.ndarray  # (n, heads, h, w), each head sums to 1
    patch_size: int
    epoch: int


def read_attention(run_dir: str | Path) -> RunAttention | None:
    """The run's attention file, or None when it is absent or unreadable (logged)."""
    path = Path(run_dir) / ATTENTION_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = RunAttention(images=npz["images"], indices=npz["indices"],
                                teacher=npz["teacher"], patch_size=int(npz["patch_size"]),
                                epoch=int(npz["epoch"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("%s: unreadable attention file (%s); left out of the figure", path, error)
        return None
    count = data.images.shape[0] if data.images.ndim == 4 else -1
    if count < 1 or data.teacher.ndim != 4 or data.teacher.shape[0] != count \
            or data.indices.shape != (count,) or data.patch_size < 1:
        logger.warning("%s: attention arrays of unexpected shapes; left out of the figure", path)
        return None
    return data


def _rows(sweep: SweepResults) -> list[tuple[str, RunAttention]]:
    """(row label, attention) for the first seed with attention of each point, in sweep order."""
    labels = point_labels(sweep)
    keys = sweep.point_keys
    if len(keys) == 1 and keys[0] != "run_id":  # the label is the bare value: name the key
        labels = keys[0] + "=" + labels.astype(str)
    runs = sweep.runs.assign(_label=labels.to_numpy(), _order=np.arange(len(sweep.runs)))
    seeds = pd.to_numeric(runs["seed"], errors="coerce")
    runs = runs.assign(_seed=seeds.fillna(np.inf).to_numpy())
    rows = []
    for label in dict.fromkeys(runs["_label"]):
        for _, run in runs[runs["_label"] == label].sort_values(["_seed", "_order"]).iterrows():
            data = read_attention(str(run["run_dir"]))
            if data is None:
                continue
            seed = "" if pd.isna(run["seed"]) else f"seed {format_value(run['seed'])}, "
            rows.append((f"{label}\n({seed}epoch {data.epoch})", data))
            break
    return rows


def _overlay(image: np.ndarray, attention: np.ndarray, patch_size: int) -> np.ndarray:
    """``image`` (H, W, C) coloured by ``attention`` (h, w): (H, W, 3) in [0, 1].

    The map, scaled to its own min-max, sets the colour; the image's luminance sets the
    brightness. Patch (i, j) covers pixels from (i * patch, j * patch); timm's padding on the
    right/bottom falls outside the image.
    """
    height, width = image.shape[:2]
    rows = np.minimum(np.arange(height) // patch_size, attention.shape[0] - 1)
    cols = np.minimum(np.arange(width) // patch_size, attention.shape[1] - 1)
    pixels = attention[np.ix_(rows, cols)].astype(np.float64)
    span = float(pixels.max() - pixels.min())
    scaled = (pixels - pixels.min()) / span if span > 0 else np.zeros_like(pixels)
    luminance = image.mean(axis=-1, keepdims=True)
    colours = colormaps[ATTENTION_COLORMAP](scaled)[..., :3]
    return np.clip(colours * (MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * luminance), 0.0, 1.0)


def _resize(cell: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, 3) to (side, side, 3)."""
    rows = np.arange(side) * cell.shape[0] // side
    cols = np.arange(side) * cell.shape[1] // side
    return cell[np.ix_(rows, cols)]


def _mosaic(rows: list[tuple[str, RunAttention]], columns: int, side: int,
            gap: int) -> np.ndarray:
    mosaic = np.ones((len(rows) * (side + gap) - gap, columns * (side + gap) - gap, 3))
    for row, (_, data) in enumerate(rows):
        head_mean = data.teacher.mean(axis=1)
        for column in range(min(columns, data.images.shape[0])):
            cell = _overlay(data.images[column], head_mean[column], data.patch_size)
            top, left = row * (side + gap), column * (side + gap)
            mosaic[top:top + side, left:left + side] = _resize(cell, side)
    return mosaic


def attention_figure(sweep: SweepResults) -> Figure | None:
    """Teacher head-mean attention, rows = points (first seed), columns = images.

    None when no run of ``sweep`` has ``attention/maps.npz``. A row whose images are not those
    of the first row (another validation subset) says so in its label.
    """
    rows = _rows(sweep)
    if not rows:
        return None
    columns = max(data.images.shape[0] for _, data in rows)
    reference = max((data for _, data in rows), key=lambda data: data.images.shape[0]).indices
    largest = max(max(data.images.shape[1:3]) for _, data in rows)
    side = largest * max(1, math.ceil(MIN_CELL_PIXELS / largest))
    gap = max(2, side // 24)
    labels = []
    for label, data in rows:
        same = np.array_equal(data.indices, reference[:len(data.indices)])
        labels.append(label if same else f"{label}\n(other images)")
    cell_inches = max(0.7, min(1.3, 18.0 / len(rows)))
    longest = max(len(line) for label in labels for line in label.splitlines())
    left = 0.3 + 0.065 * longest
    width = left + 0.2 + columns * cell_inches
    height = 0.85 + len(rows) * cell_inches
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((left / width, 0.15 / height, 1 - (left + 0.2) / width,
                       1 - 0.85 / height))
    ax.imshow(_mosaic(rows, columns, side, gap), interpolation="nearest", aspect="auto")
    ax.set_xticks([c * (side + gap) + (side - 1) / 2 for c in range(columns)],
                  [f"val #{int(index)}" for index in reference], fontsize=8)
    ax.set_yticks([r * (side + gap) + (side - 1) / 2 for r in range(len(rows))], labels,
                  fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(f"Teacher [CLS] attention of the last block, mean over heads — sweep "
                 f"{sweep.name}", fontsize=10, y=1 - 0.12 / height, va="top")
    return fig
