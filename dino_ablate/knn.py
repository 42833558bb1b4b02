"""Weighted k-NN evaluation on frozen backbone features (paper App. F.1, official eval_knn.py).

Features are L2-normalised [CLS] outputs; similarity is cosine; each of the k nearest training
samples votes for its class with weight exp(sim / T). k = 20 and T = 0.07 in the paper.
Feature extraction is split across ranks and gathered, so every rank gets the same accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_ablate import dist
from dino_ablate.data import EvalSet


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor,
                query_features: torch.Tensor, num_classes: int, k: int,
                temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Predicted class per query. Features (N, D), L2-normalised; labels (N,) int64."""
    k = min(k, train_features.shape[0])
    preds = []
    for start in range(0, query_features.shape[0], chunk):
        sim = query_features[start:start + chunk] @ train_features.t()  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


@torch.no_grad()
def extract_features(backbone: nn.Module, data: EvalSet, batch_size: int,
                     device: torch.device, autocast_dtype: torch.dtype | None,
                     forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     normalize: bool = True) -> torch.Tensor:
    """Features (N, D) of all of `data`, computed in rank-strided shards and gathered.

    `forward` maps a batch of images to features (default: the backbone itself, i.e. its [CLS]
    output); `normalize` L2-normalises them (the kNN protocol) or leaves them raw (the probe).
    """
    forward = forward or backbone
    was_training = backbone.training
    backbone.eval()
    n, world, rank = len(data), dist.world_size(), dist.rank()
    per_rank = (n + world - 1) // world
    positions = [min(p, n - 1) for p in range(rank, per_rank * world, world)]  # pad with last
    feats = []
    for images in data.batches(positions, batch_size):
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            out = forward(images).float()
        feats.append(F.normalize(out, dim=1) if normalize else out)
    local = torch.cat(feats)  # (per_rank, D), rank r holds positions r, r+world, ...
    gathered = dist.all_gather_cat(local)  # (world * per_rank, D), rank-major
    order = gathered.view(world, per_rank, -1).transpose(0, 1).reshape(world * per_rank, -1)
    backbone.train(was_training)
    return order[:n]


def knn_accuracy(backbone: nn.Module, bank: EvalSet, queries: EvalSet, num_classes: int,
                 k: int, temperature: float, batch_size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (0-1) of the weighted kNN classifier."""
    train_f = extract_features(backbone, bank, batch_size, device, autocast_dtype)
    query_f = extract_features(backbone, queries, batch_size, device, autocast_dtype)
    preds = knn_predict(train_f, bank.labels.to(device), query_f, num_classes, k, temperature)
    return float((preds.cpu() == queries.labels).float().mean())
