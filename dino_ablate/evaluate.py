"""The evaluation of a run's networks: k-NN, the linear probe, baselines, attention maps.

One `Evaluator` per run holds the evaluation split (the k-NN memory bank and queries, which
the fast probe reuses) and the resolved probe protocol. The trainer calls it at the start
(random-init networks and the raw-pixel baselines), at the end of evaluated epochs and at the
end of the run; `dino-ablate eval` calls the same methods on a checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dino_ablate import baselines
from dino_ablate.config import RunConfig
from dino_ablate.data import IMAGENET_MEAN, IMAGENET_STD, TrainData
from dino_ablate.knn import knn_accuracy
from dino_ablate.linear import LinearProtocol, fast_linear_accuracy, resolve_protocol

log = logging.getLogger("dino_ablate.evaluate")


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of a MultiCropNetwork, DDP-wrapped or not."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    backbone = getattr(module, "backbone", None)
    assert isinstance(backbone, nn.Module)
    return backbone


class Evaluator:
    """Evaluations of one run's backbones on its evaluation split."""

    def __init__(self, cfg: RunConfig, data: TrainData, embed_dim: int, device: torch.device,
                 autocast_dtype: torch.dtype | None) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.bank, self.queries = data.knn_sets(cfg.seed)
        self.proto: LinearProtocol = resolve_protocol(cfg, embed_dim)
        # What undoes the evaluation images' normalisation, for display.
        self.display_mean = tuple(getattr(data, "mean", IMAGENET_MEAN))
        self.display_std = tuple(getattr(data, "std", IMAGENET_STD))

    def knn(self, model: nn.Module) -> float:
        ev = self.cfg.eval
        return knn_accuracy(backbone_of(model), self.bank, self.queries, self.data.num_classes,
                            ev.knn_k, ev.knn_temperature, ev.batch_size, self.device,
                            self.autocast_dtype)

    def linear(self, model: nn.Module) -> float:
        """The fast probe (any protocol's quick estimate; the paper job is `paper_linear`)."""
        return fast_linear_accuracy(backbone_of(model), self.bank, self.queries,
                                    self.data.num_classes, self.proto, self.cfg.eval.batch_size,
                                    self.device, self.autocast_dtype)

    def linear_due(self, epoch: int) -> bool:
        """Whether the fast probe runs after `epoch` (1-based) of training."""
        if self.proto.protocol != "fast":
            return False
        every = self.cfg.eval.linear_every_epochs
        return epoch == self.cfg.epochs or (every > 0 and epoch % every == 0)

    def init_record(self, teacher: nn.Module, student: nn.Module) -> dict[str, Any]:
        """init.json: k-NN and probe of the random-init networks, and the pixel baselines."""
        record: dict[str, Any] = {"knn_teacher_init": self.knn(teacher),
                                  "knn_student_init": self.knn(student)}
        if self.proto.protocol != "off":
            start = time.perf_counter()
            record["linear_teacher_init"] = self.linear(teacher)
            record["linear_student_init"] = self.linear(student)
            record["linear_init_protocol"] = "fast"
            record["linear_init_seconds"] = time.perf_counter() - start
            record.update(baselines.pixel_baselines(self.cfg, self.bank, self.queries,
                                                    self.data.num_classes, self.proto,
                                                    self.device))
        return record

    def paper_linear(self, teacher: nn.Module, student: nn.Module,
                     out_dir: Path) -> dict[str, float]:
        """The official probe job, resumable in `out_dir` (`dino_ablate.linear_paper`)."""
        from dino_ablate.linear_paper import run_paper_probe

        return run_paper_probe(self.cfg, self.proto, {"teacher": backbone_of(teacher),
                                                      "student": backbone_of(student)},
                               out_dir, self.device, self.autocast_dtype)

    def attention(self, teacher: nn.Module, student: nn.Module, out_dir: Path,
                  epoch: int) -> None:
        """Last-block [CLS] attention maps of a fixed seeded set of val images (`attention`).

        The image choice uses seed 0, not the run's seed, so every point and seed of a sweep
        shows the same images (unless `data.val_limit` draws a different query set per seed).
        """
        if self.cfg.eval.attention_images == 0:
            return
        from dino_ablate.attention import save_attention

        save_attention(out_dir, backbone_of(teacher), backbone_of(student), self.queries,
                       n_images=self.cfg.eval.attention_images, seed=0,
                       patch_size=self.cfg.model.patch_size, epoch=epoch,
                       mean=self.display_mean, std=self.display_std, device=self.device)
