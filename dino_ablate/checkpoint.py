"""Atomic checkpoints with one spare: `last.pt` and `previous.pt`.

Written to a temporary file, fsynced and renamed (timm's CheckpointSaver uses os.replace), so a
kill during the write never damages the latest good checkpoint. Loaded with weights_only=True:
a checkpoint can hold tensors and plain Python data, never arbitrary objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "previous.pt"
#: Weights only ({teacher, student, epoch, knn_teacher}) of the epoch with the best teacher kNN.
BEST_KNN = "best_knn.pt"
REQUIRED_KEYS = ("student", "teacher", "optimizer", "center", "step", "epoch", "metrics",
                 "rng_cpu", "config")


def save(folder: Path, state: dict[str, Any],
         mid_write: Callable[[], None] | None = None) -> Path:
    """Write `state` as the new last checkpoint, keeping the old one as previous.

    `mid_write` runs after the temporary file is written and before the renames (the fault
    tests kill the process there).
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LAST}.tmp"
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if mid_write is not None:
        mid_write()
    last = folder / LAST
    if last.exists():
        os.replace(last, folder / PREVIOUS)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def save_best(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` (weights of the best-kNN epoch) atomically as `best_knn.pt`."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BEST_KNN}.tmp"
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / BEST_KNN)
    _fsync_dir(folder)
    return folder / BEST_KNN


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_one(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint mapping")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if state["config"] != config:
        raise ValueError("written by a different run config")
    return state


def load_latest(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The newest valid checkpoint, or None when there is none.

    A truncated or corrupt `last.pt` is skipped with a warning naming the file, and the run
    resumes from `previous.pt`.
    """
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            return _load_one(path, config)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, loudly
            log.warning("checkpoint %s is unusable (%s); trying the previous one", path, exc)
    return None
