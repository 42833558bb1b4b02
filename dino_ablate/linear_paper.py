"""The paper's linear probe (App. F.2, the official `eval_linear.py`) as a resumable job.

One linear classifier per frozen backbone (teacher and student) is trained with SGD on
augmented crops and validated every epoch; the result is the **best** validation top-1 of each,
as the official script reports. Both classifiers are trained in the same pass over the data:
every batch is decoded once and fed to both backbones, which halves the decoding cost that
dominates this job on ImageNet.

Differences from the official script, all deliberate:
- every random draw of the data (the crop and flip of image i in epoch e, the shuffle) is a
  pure function of (seed, epoch, i), so a resumed job sees the data an uninterrupted one would
  have seen, on any number of ranks; the checkpoint therefore needs no RNG state;
- validation is split over the ranks and the correct counts summed (the official script
  validates the whole set on every rank);
- checkpoints are written atomically and `metrics.jsonl` is rebuilt from the checkpoint, so a
  kill never loses or doubles an epoch.

Files in `out_dir` (rank 0 writes them):
- `checkpoint.pt`: heads, optimisers, lr schedulers, epochs done, best so far, the settings it
  was trained with and the metrics history;
- `metrics.jsonl`: one record per epoch, `epoch` (1-based), `train_loss_<net>` (mean
  cross-entropy), `val_top1_<net>` (0-1), `lr` (the epoch's), `train_images`, `val_images`
  (counted over all ranks), `seconds`;
- `result.json`, written last (its presence means the job is done): `<net>` the best top-1,
  `last` the last epoch's, `epochs`, `protocol` (the settings; a stored job is reused only by
  a call with the same ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from dino_ablate import dist, faults
from dino_ablate.config import ConfigError, RunConfig, expand_root
from dino_ablate.data import IMAGENET_MEAN, IMAGENET_STD
from dino_ablate.linear import LinearProtocol, feature_dim, probe_features

log = logging.getLogger("dino_ablate.linear")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULT = "result.json"
#: LinearProtocol fields of the fast protocol only: changing them does not stale a paper result.
FAST_ONLY_FIELDS = ("l2", "steps")
HEAD_INIT_STD = 0.01  # official LinearClassifier: weight N(0, 0.01), bias 0


def make_head(in_dim: int, num_classes: int, generator: torch.Generator | None = None
              ) -> nn.Linear:
    """nn.Linear(in_dim, num_classes) with weight ~ N(0, 0.01) and bias 0 (official init)."""
    head = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, HEAD_INIT_STD, generator=generator)
        head.bias.zero_()
    return head


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the augmentation of training image `index` in `epoch` (0-based)."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) % (2 ** 63)


class SeededAugment(Dataset[tuple[torch.Tensor, int]]):
    """A dataset indexed by (epoch, index) whose random transform is seeded by `sample_seed`.

    torchvision's transforms draw from the global torch RNG; it is forked around each image
    so neither the loader process nor the caller's random stream is disturbed.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            image, label = self.dataset[index]
        return image, label


class EpochSampler(Sampler[tuple[int, int]]):
    """A DistributedSampler's indices tagged with the epoch: (epoch, index) pairs."""

    def __init__(self, inner: DistributedSampler[Any]) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, i) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def paper_transforms(proto: LinearProtocol) -> tuple[Any, Any]:
    """(train, val) torchvision pipelines of eval_linear.py at the protocol's sizes.

    Train: RandomResizedCrop (default scale (0.08, 1) and, as the official script, default
    bilinear interpolation) + horizontal flip. Val: Resize (bicubic) + CenterCrop.
    """
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = T.Compose([T.RandomResizedCrop(proto.train_crop), T.RandomHorizontalFlip(),
                       *normalize])
    val = T.Compose([T.Resize(proto.eval_resize, interpolation=T.InterpolationMode.BICUBIC),
                     T.CenterCrop(proto.eval_crop), *normalize])
    return train, val


def paper_datasets(cfg: RunConfig, proto: LinearProtocol) -> tuple[Any, Any]:
    """ImageFolder(root/train_split) and ImageFolder(root/val_split) with the probe's pipelines."""
    from torchvision import datasets

    root = expand_root(cfg.data.root)
    if root is None:
        raise ConfigError("data.root: null; the paper linear probe reads image folders",
                          key="data.root")
    train_tf, val_tf = paper_transforms(proto)
    out = []
    for key, split, tf in (("data.train_split", cfg.data.train_split, train_tf),
                           ("data.val_split", cfg.data.val_split, val_tf)):
        if not (root / split).is_dir():
            raise ConfigError(f"{key}: {str(root / split)!r} is not a folder (expected "
                              "root/<split>/<class>/<image>)", key=key)
        out.append(datasets.ImageFolder(str(root / split), transform=tf))
    train_set, val_set = out
    if val_set.classes != train_set.classes:
        raise ConfigError(f"data.val_split: {cfg.data.val_split!r} has classes that differ "
                          f"from {cfg.data.train_split!r} ({len(val_set.classes)} vs "
                          f"{len(train_set.classes)}); the probe's labels need the same class "
                          "folders", key="data.val_split")
    return train_set, val_set


def _settings(cfg: RunConfig, proto: LinearProtocol, num_classes: int, num_train: int,
              num_val: int) -> dict[str, Any]:
    """What the probe's result depends on; a stored job must match it to be reused."""
    fields = {k: v for k, v in dataclasses.asdict(proto).items() if k not in FAST_ONLY_FIELDS}
    return {**fields, "seed": cfg.seed, "num_classes": num_classes, "num_train": num_train,
            "num_val": num_val}


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temporary file, fsync and os.replace: a kill leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def _check_settings(stored: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    if stored != settings:
        diff = [f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}"
                for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]
        raise ValueError(f"{path} was written by a different linear probe ({'; '.join(diff)}); "
                         "remove the folder to run the probe again")


def _read_state(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored job: {"result": ...} when finished, else the checkpoint, else None."""
    result_path, ckpt_path = out_dir / RESULT, out_dir / CHECKPOINT
    if result_path.exists():
        result = json.loads(result_path.read_text())
        _check_settings(result["protocol"], settings, result_path)
        return {"result": result}
    if not ckpt_path.exists():
        return None
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{ckpt_path} is unreadable ({exc}); remove it to restart the linear "
                         "probe") from exc
    _check_settings(state["settings"], settings, ckpt_path)
    return dict(state)


def _load_state(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0's stored job (`_read_state`) on every rank; its error is raised on every rank,
    so no rank is left waiting in a collective."""
    box: tuple[dict[str, Any] | None, str | None] = (None, None)
    if dist.rank() == 0:
        try:
            box = (_read_state(out_dir, settings), None)
        except ValueError as exc:
            if not dist.is_initialized():
                raise
            box = (None, str(exc))
    received: Any = dist.broadcast_object(box)
    state, error = received
    if error is not None:
        raise ValueError(error)
    return state


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _eta(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _Heads:
    """The linear classifiers of the networks with their optimisers and lr schedules."""

    def __init__(self, names: list[str], in_dim: int, num_classes: int, proto: LinearProtocol,
                 seed: int, device: torch.device, state: dict[str, Any] | None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        for name in names:
            linear = make_head(in_dim, num_classes, gen)
            if state is not None:
                linear.load_state_dict(state["heads"][name])
            head: nn.Module = linear.to(device)
            if dist.is_initialized():
                ids = [device.index] if device.type == "cuda" and device.index is not None \
                    else None
                head = nn.parallel.DistributedDataParallel(head, device_ids=ids)
            opt = torch.optim.SGD(head.parameters(), lr=proto.lr, momentum=proto.momentum,
                                  weight_decay=proto.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=proto.epochs,
                                                               eta_min=0.0)
            if state is not None:
                opt.load_state_dict(state["optimizers"][name])
                sched.load_state_dict(state["schedulers"][name])
            self.modules[name], self.optimizers[name], self.schedulers[name] = head, opt, sched

    @property
    def lr(self) -> float:
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])

    def train_step(self, feats: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """One SGD step of every head; (num_heads,) summed (not mean) losses of the batch."""
        losses = []
        for name, x in feats.items():
            loss = F.cross_entropy(self.modules[name](x), labels)
            self.optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers[name].step()
            losses.append(loss.detach().double() * labels.shape[0])
        return torch.stack(losses)

    def state_dict(self) -> dict[str, Any]:
        return {"heads": {n: _unwrap(h).state_dict() for n, h in self.modules.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()}}


def run_paper_probe(cfg: RunConfig, proto: LinearProtocol, backbones: dict[str, nn.Module],
                    out_dir: Path, device: torch.device, autocast_dtype: torch.dtype | None,
                    *, stop_after_epochs: int | None = None) -> dict[str, float]:
    """Train the paper's linear probe on each frozen backbone; {name: best val top-1 (0-1)}.

    `backbones` are plain timm ViTs (a DDP wrapper is unwrapped), put in eval mode for the job
    and restored afterwards. `proto.lr` is already scaled to `proto.batch_size`, the global
    batch, which is split evenly over the ranks. When `out_dir/result.json` exists it is
    returned without training; otherwise the job resumes from `out_dir/checkpoint.pt`.
    `stop_after_epochs` returns once that many epochs are done (checkpoint kept, no result):
    a long probe can be split over jobs, and the tests interrupt it this way.
    """
    world, rank = dist.world_size(), dist.rank()
    if proto.batch_size % world:
        raise ConfigError(f"eval.linear_batch_size: {proto.batch_size} is not divisible by the "
                          f"world size {world}", key="eval.linear_batch_size")
    train_set, val_set = paper_datasets(cfg, proto)
    num_classes = len(train_set.classes)
    settings = _settings(cfg, proto, num_classes, len(train_set), len(val_set))
    state = _load_state(out_dir, settings)
    if state is not None and "result" in state:
        log.info("linear probe: %s exists, not training again", out_dir / RESULT)
        return {name: float(state["result"][name]) for name in backbones}

    nets = {name: _unwrap(b) for name, b in backbones.items()}
    in_dim = feature_dim(next(iter(nets.values())), proto.n_last_blocks, proto.avgpool)
    heads = _Heads(list(nets), in_dim, num_classes, proto, cfg.seed, device, state)
    start = int(state["epoch"]) if state is not None else 0
    best: dict[str, float] = dict(state["best"]) if state is not None else dict.fromkeys(nets, 0.0)
    history: list[dict[str, Any]] = list(state["history"]) if state is not None else []

    sampler, train_loader, val_loader = _loaders(cfg, proto, train_set, val_set, device)
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in_dim) float32 probe features of every backbone: one decode, all networks."""
        images = images.to(device, non_blocking=True)
        with torch.no_grad(), amp:
            return {name: probe_features(net, images, proto.n_last_blocks, proto.avgpool).float()
                    for name, net in nets.items()}

    modes = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json_lines(out_dir / METRICS, history)  # drops records after the checkpoint
        log.info("linear probe (paper): %d train / %d val images, %d classes, %d-d features, "
                 "batch %d, lr %.4g, epochs %d (from %d)", len(train_set), len(val_set),
                 num_classes, in_dim, proto.batch_size, proto.lr, proto.epochs, start)
    try:
        for epoch in range(start, proto.epochs):
            if stop_after_epochs is not None and epoch >= stop_after_epochs:
                return dict(best)
            t0, lr = time.perf_counter(), heads.lr
            sampler.set_epoch(epoch)
            loss_sum = _train_heads(heads, train_loader, features, epoch, device, out_dir)
            top1, num_val = _validate(val_loader, features, heads.modules, device)
            record = _epoch_record(epoch, loss_sum, top1, best, out_dir)
            record.update(lr=lr, train_images=int(loss_sum[-1]), val_images=num_val,
                          seconds=time.perf_counter() - t0)
            history.append(record)
            if rank == 0:
                _save_epoch(out_dir, {"epoch": epoch + 1, "settings": settings, "best": best,
                                      "history": history, **heads.state_dict()})
                _log_epoch(record, best, proto.epochs, history)
    finally:
        for name, net in nets.items():
            net.train(modes[name])
    if rank == 0:
        _write_result(out_dir, list(nets), best, history, proto, settings)
    return dict(best)


def _loaders(cfg: RunConfig, proto: LinearProtocol, train_set: Any, val_set: Any,
             device: torch.device) -> tuple[EpochSampler, DataLoader[Any], DataLoader[Any]]:
    """This rank's share: the shuffled, augmented train loader (and its sampler) and the
    strided val loader."""
    world, rank = dist.world_size(), dist.rank()
    local_batch, workers = proto.batch_size // world, cfg.data.num_workers
    loader_args: dict[str, Any] = {"batch_size": local_batch, "num_workers": workers,
                                   "pin_memory": device.type == "cuda",
                                   "persistent_workers": workers > 0}
    sampler = EpochSampler(DistributedSampler(train_set, num_replicas=world, rank=rank,
                                              shuffle=True, seed=cfg.seed))
    train_loader = DataLoader(SeededAugment(train_set, cfg.seed), sampler=sampler,
                              **loader_args)
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), **loader_args)
    return sampler, train_loader, val_loader


def _train_heads(heads: _Heads, loader: DataLoader[Any],
                 features: Callable[[torch.Tensor], dict[str, torch.Tensor]], epoch: int,
                 device: torch.device, out_dir: Path) -> torch.Tensor:
    """One epoch of every head; returns this rank's (heads + 1,) float64 sums: the
    per-head loss times images, then the number of images. The schedulers step at the end."""
    for module in heads.modules.values():
        module.train()
    loss_sum = torch.zeros(len(heads.modules) + 1, dtype=torch.float64, device=device)
    for step, (images, labels) in enumerate(loader):
        if step == 1:
            faults.maybe_kill("kill_linear", epoch + 1, out_dir.parent)
        labels = labels.to(device, non_blocking=True)
        loss_sum[:-1] += heads.train_step(features(images), labels)
        loss_sum[-1] += labels.shape[0]
    for scheduler in heads.schedulers.values():
        scheduler.step()
    return loss_sum


def _epoch_record(epoch: int, loss_sum: torch.Tensor, top1: dict[str, float],
                  best: dict[str, float], out_dir: Path) -> dict[str, Any]:
    """Sum `loss_sum` over ranks (in place), refuse a non-finite loss, update `best` (in
    place); the epoch's losses and val top-1 per head."""
    dist.all_reduce_sum(loss_sum)
    losses = (loss_sum[:-1] / loss_sum[-1].clamp_min(1)).tolist()
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"linear probe: non-finite training loss {losses} in "
                                 f"epoch {epoch + 1}; {out_dir / CHECKPOINT} keeps "
                                 f"epoch {epoch}")
    record: dict[str, Any] = {"epoch": epoch + 1}
    for name, loss in zip(top1, losses, strict=True):
        best[name] = max(best[name], top1[name])
        record[f"train_loss_{name}"] = loss
        record[f"val_top1_{name}"] = top1[name]
    return record


def _write_result(out_dir: Path, names: list[str], best: dict[str, float],
                  history: list[dict[str, Any]], proto: LinearProtocol,
                  settings: dict[str, Any]) -> None:
    """result.json: the best and the last val top-1 of each backbone, with the settings."""
    last = {name: history[-1][f"val_top1_{name}"] for name in names}
    result = {**best, "last": last, "epochs": proto.epochs, "protocol": settings}
    _atomic_write(out_dir / RESULT, lambda fh: fh.write(
        (json.dumps(result, indent=2) + "\n").encode()))
    log.info("linear probe done: best top-1 %s", ", ".join(
        f"{name} {100 * best[name]:.2f}%" for name in names))


def _validate(loader: DataLoader[Any], features: Callable[[torch.Tensor], dict[str, torch.Tensor]],
              heads: dict[str, nn.Module], device: torch.device) -> tuple[dict[str, float], int]:
    """Top-1 (0-1) of each head on the whole val set (each rank scores its share), and the
    number of images scored over all ranks."""
    for head in heads.values():
        head.eval()
    counts = torch.zeros(len(heads) + 1, dtype=torch.float64, device=device)
    with torch.no_grad():
        for images, labels in loader:
            labels = labels.to(device, non_blocking=True)
            for i, (name, feats) in enumerate(features(images).items()):
                counts[i] += (heads[name](feats).argmax(1) == labels).sum()
            counts[-1] += labels.shape[0]
    dist.all_reduce_sum(counts)
    total = max(float(counts[-1]), 1.0)
    return {name: float(counts[i]) / total for i, name in enumerate(heads)}, int(counts[-1])


def _save_epoch(out_dir: Path, state: dict[str, Any]) -> None:
    """checkpoint.pt, then metrics.jsonl rebuilt from its history (both atomic)."""
    _atomic_write(out_dir / CHECKPOINT, lambda fh: torch.save(state, fh))
    _write_json_lines(out_dir / METRICS, state["history"])


def _log_epoch(record: dict[str, Any], best: dict[str, float], epochs: int,
               history: list[dict[str, Any]]) -> None:
    mean_s = sum(r["seconds"] for r in history) / len(history)
    per_net = "  ".join(f"{n}: loss {record[f'train_loss_{n}']:.3f} top-1 "
                        f"{100 * record[f'val_top1_{n}']:.1f}% (best {100 * b:.1f}%)"
                        for n, b in best.items())
    log.info("linear epoch %d/%d  %s  lr %.3g  %.0f s  ETA %s", record["epoch"], epochs,
             per_net, record["lr"], record["seconds"],
             _eta((epochs - record["epoch"]) * mean_s))
