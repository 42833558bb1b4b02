"""Raw-pixel baselines: what k-NN and a linear probe get from the images alone.

A learned feature is only worth its cost if it beats the pixels it was computed from. The
pixel features are the flattened, normalised evaluation images (the same images, split, k, T and
probe as the run's own evaluation); k-NN uses them L2-normalised (cosine), the probe
standardised. They depend only on the data and the evaluation settings, so they are computed
once per data set and cached as JSON under `cache_dir()`.

The probe on pixels is always the fast one (a 100-epoch SGD probe on ImageNet pixels would
cost more than the baseline is worth). A memory bank whose pixels exceed `PIXEL_BUDGET`
elements (ImageNet at 224 px: 150,528 values per image) is cut to a seeded subset that fits;
the result records the bank size used (`pixels_bank`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dino_ablate.config import RunConfig
from dino_ablate.contract import read_json, write_json
from dino_ablate.data import EvalSet
from dino_ablate.knn import extract_features, knn_predict
from dino_ablate.linear import LinearProtocol, probe_accuracy

log = logging.getLogger(__name__)

#: At most this many pixel values in the memory bank (~1 GiB as float32).
PIXEL_BUDGET = 2**28
#: Bump when the computation changes, so stale cache entries are not reused.
VERSION = 1


def cache_dir() -> Path:
    """`$DINO_ABLATE_CACHE`, else `$XDG_CACHE_HOME/dino_ablate`, else `~/.cache/dino_ablate`."""
    if os.environ.get("DINO_ABLATE_CACHE"):
        return Path(os.environ["DINO_ABLATE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dino_ablate"


def cache_key(cfg: RunConfig, proto: LinearProtocol) -> dict[str, Any]:
    """Everything the pixel baselines depend on."""
    d, ev = cfg.data, cfg.eval
    subset = d.knn_train_limit is not None or d.val_limit is not None
    return {"version": VERSION, "dataset": d.dataset, "root": d.root,
            "train_split": d.train_split, "val_split": d.val_split, "image_size": d.image_size,
            "train_limit": d.train_limit, "knn_train_limit": d.knn_train_limit,
            "val_limit": d.val_limit,
            "subset_seed": cfg.seed if subset else None, "knn_k": ev.knn_k,
            "knn_temperature": ev.knn_temperature, "linear_l2": proto.l2,
            "linear_steps": proto.steps, "pixel_budget": PIXEL_BUDGET}


def _subset(data: EvalSet, n: int, seed: int) -> EvalSet:
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    keep = keep.sort().values
    if data.images is not None:
        return EvalSet(labels=data.labels[keep], images=data.images[keep])
    assert data.indices is not None
    return EvalSet(labels=data.labels[keep], dataset=data.dataset,
                   indices=[data.indices[i] for i in keep.tolist()],
                   num_workers=data.num_workers)


def _pixels(data: EvalSet, batch_size: int, device: torch.device) -> torch.Tensor:
    return extract_features(nn.Identity(), data, batch_size, device, None,
                            forward=lambda images: images.flatten(1), normalize=False)


def compute(cfg: RunConfig, bank: EvalSet, queries: EvalSet, num_classes: int,
            proto: LinearProtocol, device: torch.device) -> dict[str, Any]:
    """Raw-pixel k-NN and linear top-1 (0-1) on the run's evaluation split (module docstring)."""
    first = next(iter(queries.batches([0], 1)))
    per_image = int(first[0].numel())
    if len(bank) * per_image > PIXEL_BUDGET:
        bank = _subset(bank, max(PIXEL_BUDGET // per_image, num_classes), cfg.seed)
    batch = cfg.eval.batch_size
    train_x = _pixels(bank, batch, device)
    query_x = _pixels(queries, batch, device)
    norm_train = torch.nn.functional.normalize(train_x, dim=1)
    norm_query = torch.nn.functional.normalize(query_x, dim=1)
    preds = knn_predict(norm_train, bank.labels.to(device), norm_query, num_classes,
                        cfg.eval.knn_k, cfg.eval.knn_temperature)
    knn = float((preds.cpu() == queries.labels).float().mean())
    linear = probe_accuracy(train_x.cpu(), bank.labels, query_x.cpu(), queries.labels,
                            num_classes, proto.l2, proto.steps)
    return {"knn_pixels": knn, "linear_pixels": linear, "pixels_bank": len(bank),
            "pixels_queries": len(queries)}


def pixel_baselines(cfg: RunConfig, bank: EvalSet, queries: EvalSet, num_classes: int,
                    proto: LinearProtocol, device: torch.device) -> dict[str, Any]:
    """`compute`, read from the cache when this data set's entry exists, else written to it."""
    key = cache_key(cfg, proto)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "baselines" / f"{cfg.data.dataset}_{digest}.json"
    cached = read_json(path)
    if cached is not None and cached.get("key") == key:
        return dict(cached["baselines"])
    log.info("computing the raw-pixel baselines of %s (cached in %s)", cfg.data.dataset, path)
    result = compute(cfg, bank, queries, num_classes, proto, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "baselines": result})
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not cache the pixel baselines in %s (%s)", path, exc.strerror)
    return result
