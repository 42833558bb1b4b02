"""Data sets: scikit-learn's bundled digits (the embedded default), Fashion-MNIST from its idx
files (Debian's `dataset-fashion-mnist`), CIFAR from a local folder, and ImageFolder roots
(ImageNet layout). Nothing is ever downloaded.

In-memory sets (digits, Fashion-MNIST, CIFAR) keep their images as one tensor on the training
device and are augmented in batches there (`augment.MultiCropAugment`); `data.train_limit`
trains on a fixed subset of their train split (`train_subset`). Image folders decode with PIL
in loader workers and apply the official per-image torchvision pipeline.

Every rank sees its slice of the same seeded global batch, so the images of a step depend only
on (seed, step) and not on the world size. For in-memory sets their crops do too, and a resume
needs only the step. Image folders draw their crops in the loader workers, from the workers'
random state as the official code does: a resumed run, or one with another world size or
worker count, trains on the same images with other crops.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dino_ablate import fashion_mnist
from dino_ablate.augment import MultiCropAugment
from dino_ablate.config import ConfigError, DataConfig, expand_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_TRAIN = 1400  # of 1797: a fixed seeded split, 397 val images
#: seed of the `data.train_limit` subset: fixed, independent of the run seed (as digits' split),
#: so runs of different seeds train on the same images
TRAIN_SUBSET_SEED = 0


@dataclass
class EvalSet:
    """Un-augmented, normalised images at `image_size` for kNN, with labels.

    In-memory sets hold `images`; image folders hold a `dataset` decoded lazily in batches.
    """

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) float
    dataset: Any = None
    indices: list[int] | None = None
    num_workers: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, positions: list[int], batch_size: int) -> Iterator[torch.Tensor]:
        """Images at `positions` (0 .. len-1), in order, `batch_size` at a time."""
        if self.images is not None:
            for i in range(0, len(positions), batch_size):
                yield self.images[positions[i:i + batch_size]]
            return
        from torch.utils.data import DataLoader, Subset

        assert self.indices is not None
        subset = Subset(self.dataset, [self.indices[p] for p in positions])
        loader = DataLoader(subset, batch_size=batch_size, num_workers=self.num_workers)
        for images, _ in loader:
            yield images


class InMemoryData:
    """A small data set held as a [0, 1] float tensor on the device."""

    def __init__(self, train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor,
                 val_labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 cfg: DataConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.train = train.to(device)
        self.train_labels = train_labels
        self.val = val
        self.val_labels = val_labels
        self.mean, self.std = mean, std
        self.channels = train.shape[1]
        self.num_classes = int(max(train_labels.max(), val_labels.max())) + 1
        self.augment = MultiCropAugment(cfg, mean, std)
        self.device = device

    @property
    def num_train(self) -> int:
        return self.train.shape[0]

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size

    def batch(self, step: int, steps_per_epoch: int, batch_size: int, seed: int, rank: int,
              world: int) -> list[torch.Tensor]:
        """The crops of this rank's share of global batch `step` (drop_last, seeded order)."""
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(self.num_train,
                               generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        global_idx = order[i * batch_size:(i + 1) * batch_size]
        gen = torch.Generator().manual_seed(seed * 1000003 + step + 1)
        params = self.augment.sample(batch_size, gen)
        local = batch_size // world
        lo, hi = rank * local, (rank + 1) * local
        images = self.train[global_idx[lo:hi].to(self.device)]
        return self.augment.apply(images, [p.slice(lo, hi) for p in params])

    def _eval(self, images: torch.Tensor, labels: torch.Tensor, limit: int | None,
              seed: int) -> EvalSet:
        if limit is not None and limit < images.shape[0]:
            keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
            images, labels = images[keep[:limit]], labels[keep[:limit]]
        x = images.float()
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size, self.cfg.image_size),
                              mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return EvalSet(labels=labels, images=(x.cpu() - mean) / std)

    def knn_sets(self, seed: int) -> tuple[EvalSet, EvalSet]:
        """(memory bank from train, queries from val), both un-augmented."""
        bank = self._eval(self.train.cpu(), self.train_labels, self.cfg.knn_train_limit, seed)
        query = self._eval(self.val, self.val_labels, self.cfg.val_limit, seed + 1)
        return bank, query


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=images.shape[-1] > size).clamp(0, 1)


def train_subset(labels: torch.Tensor, limit: int | None,
                 seed: int = TRAIN_SUBSET_SEED) -> torch.Tensor:
    """Sorted indices of the `data.train_limit` subset of a train split with `labels` (N,):
    all N when `limit` is None or at least N, else `limit` of them, class-stratified (each
    class keeps its share of the split, within one image) and otherwise random with `seed`.

    The images are ranked once by their position in their class's seeded order relative to
    the class size, and a limit takes the first `limit`: the same limit gives the same images,
    and a smaller limit's images are among a larger one's."""
    n = int(labels.shape[0])
    if limit is None or limit >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ordered = labels[order]
    counts = torch.bincount(ordered)
    by_class = torch.argsort(ordered, stable=True)  # seeded order within each class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[ordered[by_class]]
    share = (rank + 1).double() / counts[ordered].double()
    return order[torch.argsort(share, stable=True)[:limit]].sort().values


def load_digits_data(cfg: DataConfig, seed_split: int, device: torch.device) -> InMemoryData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), 1 channel, resized once to
    `image_size`; a fixed split (seed 0, independent of the run seed): 1400 train / 397 val."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed_split))
    images = _resize(images, cfg.image_size)
    train_idx, val_idx = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    train_idx = train_idx[train_subset(labels[train_idx], cfg.train_limit)]
    mean = (float(images[train_idx].mean()),)
    std = (float(images[train_idx].std()),)
    return InMemoryData(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx],
                        mean, std, cfg, device)


def _read_cifar_batches(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    data, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"data.root: {str(folder.parent)!r} has no {name} (expected the "
                              "python version of CIFAR, extracted; nothing is downloaded)",
                              key="data.root")
        with path.open("rb") as fh:
            # The CIFAR python archive is a pickle by format; only read it from a trusted folder.
            entry = pickle.load(fh, encoding="latin1")  # noqa: S301
        data.append(entry["data"])
        labels.extend(entry[label_key])
    return np.concatenate(data).reshape(-1, 3, 32, 32), np.asarray(labels)


def load_cifar_data(cfg: DataConfig, device: torch.device) -> InMemoryData:
    """CIFAR-10/100 from `data.root` (the extracted python archive; never downloaded)."""
    root = expand_root(cfg.root)
    assert root is not None
    if cfg.dataset == "cifar10":
        folder, train_names, test_names, key = (root / "cifar-10-batches-py",
                                                [f"data_batch_{i}" for i in range(1, 6)],
                                                ["test_batch"], "labels")
    else:
        folder, train_names, test_names, key = (root / "cifar-100-python", ["train"], ["test"],
                                                "fine_labels")
    tr_x, tr_y = _read_cifar_batches(folder, train_names, key)
    te_x, te_y = _read_cifar_batches(folder, test_names, key)
    train_labels = torch.from_numpy(tr_y).long()
    keep = train_subset(train_labels, cfg.train_limit)
    train = torch.from_numpy(tr_x)[keep].float() / 255.0
    val = torch.from_numpy(te_x).float() / 255.0
    # the published per-channel statistics of CIFAR's whole train split, also under a limit
    return InMemoryData(train, train_labels[keep], val, torch.from_numpy(te_y).long(),
                        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), cfg, device)


def load_fashion_mnist_data(cfg: DataConfig, device: torch.device) -> InMemoryData:
    """Fashion-MNIST's 60,000 train / 10,000 test images (the val split here) from `data.root`
    (null: Debian's folder; never downloaded), 1 channel in [0, 1], the `data.train_limit`
    subset of train, resized once to `image_size`; mean and std of the images trained on."""
    tr_x, tr_y, te_x, te_y = fashion_mnist.load(expand_root(cfg.root), cfg.root)
    train_labels = torch.from_numpy(tr_y)
    keep = train_subset(train_labels, cfg.train_limit)
    # subset before converting and resizing: the full split at 224 px would be 12 GB
    train = _resize(torch.from_numpy(tr_x[keep.numpy()]).unsqueeze(1).float() / 255.0,
                    cfg.image_size)
    val = _resize(torch.from_numpy(te_x).unsqueeze(1).float() / 255.0, cfg.image_size)
    mean, std = (float(train.mean()),), (float(train.std()),)
    return InMemoryData(train, train_labels[keep], val, torch.from_numpy(te_y), mean, std, cfg,
                        device)


class FolderData:
    """An ImageFolder root with `train_split` and `val_split` sub-folders (ImageNet layout)."""

    def __init__(self, cfg: DataConfig, device: torch.device) -> None:
        from torchvision import datasets

        root = expand_root(cfg.root)
        assert root is not None
        for split in (cfg.train_split, cfg.val_split):
            if not (root / split).is_dir():
                raise ConfigError(f"data.root: {str(root)!r} has no {split!r} folder (expected "
                                  "ImageNet layout: root/train/<class>/*.JPEG, "
                                  "root/val/<class>/*.JPEG)", key="data.root")
        self.cfg = cfg
        self.root = root
        self.device = device
        self.channels = 3
        self.train_set = datasets.ImageFolder(str(root / cfg.train_split),
                                              transform=folder_train_transform(cfg))
        self.num_classes = len(self.train_set.classes)
        self._iter: Generator[list[torch.Tensor], None, None] | None = None
        self._iter_epoch = -1
        self._dataloader: Any = None
        self._sampler: Any = None

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size

    def _loader(self, epoch: int, batch_size: int, seed: int, rank: int, world: int,
                skip: int) -> Generator[list[torch.Tensor], None, None]:
        from torch.utils.data import DataLoader, DistributedSampler

        if self._dataloader is None:
            # One loader for the whole run: its workers persist across epochs (no re-fork and
            # re-import per epoch) and the sampler's epoch reshuffles the order.
            self._sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank,
                                               shuffle=True, seed=seed, drop_last=True)
            workers = self.cfg.num_workers
            self._dataloader = DataLoader(
                self.train_set, batch_size=batch_size // world, sampler=self._sampler,
                num_workers=workers, pin_memory=self.device.type == "cuda", drop_last=True,
                persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
        assert self._sampler is not None
        self._sampler.set_epoch(epoch)
        for i, (crops, _) in enumerate(self._dataloader):
            if i < skip:
                continue
            yield [c.to(self.device, non_blocking=True) for c in crops]

    def batch(self, step: int, steps_per_epoch: int, batch_size: int, seed: int, rank: int,
              world: int) -> list[torch.Tensor]:
        epoch, i = divmod(step, steps_per_epoch)
        if self._iter is None or self._iter_epoch != epoch or i == 0:
            if self._iter is not None:
                self._iter.close()  # finish the previous epoch's pass before the next starts
            self._iter = self._loader(epoch, batch_size, seed, rank, world, skip=i)
            self._iter_epoch = epoch
        assert self._iter is not None
        return next(self._iter)

    def knn_sets(self, seed: int) -> tuple[EvalSet, EvalSet]:
        from torchvision import datasets

        tf = folder_eval_transform(self.cfg)
        out = []
        for split, limit, s in ((self.cfg.train_split, self.cfg.knn_train_limit, seed),
                                (self.cfg.val_split, self.cfg.val_limit, seed + 1)):
            ds = datasets.ImageFolder(str(self.root / split), transform=tf)
            idx = list(range(len(ds)))
            if limit is not None and limit < len(ds):
                g = torch.Generator().manual_seed(s)
                idx = torch.randperm(len(ds), generator=g)[:limit].tolist()
            labels = torch.tensor([ds.targets[i] for i in idx])
            out.append(EvalSet(labels=labels, dataset=ds, indices=idx,
                               num_workers=self.cfg.num_workers))
        return out[0], out[1]


def folder_train_transform(cfg: DataConfig):  # type: ignore[no-untyped-def]
    """The official per-image PIL pipeline (DINO.md §2.7), returning the list of crops."""
    from PIL import ImageFilter, ImageOps
    from torchvision import transforms as T

    class RandomBlur:
        def __init__(self, p: float) -> None:
            self.p = p

        def __call__(self, img):  # type: ignore[no-untyped-def]
            if torch.rand(()) >= self.p:
                return img
            radius = float(torch.empty(()).uniform_(0.1, 2.0))
            return img.filter(ImageFilter.GaussianBlur(radius=radius))

    class RandomSolarize:
        def __init__(self, p: float) -> None:
            self.p = p

        def __call__(self, img):  # type: ignore[no-untyped-def]
            return ImageOps.solarize(img) if torch.rand(()) < self.p else img

    flip_color = T.Compose([
        T.RandomHorizontalFlip(p=cfg.flip_prob),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=cfg.color_jitter_prob),
        T.RandomGrayscale(p=cfg.grayscale_prob)])
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    bicubic = T.InterpolationMode.BICUBIC
    g1p, g2p = cfg.blur_prob_global
    global1 = T.Compose([T.RandomResizedCrop(cfg.global_crop_size, scale=cfg.global_crop_scale,
                                             interpolation=bicubic), flip_color, RandomBlur(g1p),
                         normalize])
    global2 = T.Compose([T.RandomResizedCrop(cfg.global_crop_size, scale=cfg.global_crop_scale,
                                             interpolation=bicubic), flip_color, RandomBlur(g2p),
                         RandomSolarize(cfg.solarize_prob), normalize])
    local = T.Compose([T.RandomResizedCrop(cfg.local_crop_size, scale=cfg.local_crop_scale,
                                           interpolation=bicubic), flip_color,
                       RandomBlur(cfg.blur_prob_local), normalize])

    def transform(img):  # type: ignore[no-untyped-def]
        img = img.convert("RGB")
        return [global1(img), global2(img)] + [local(img) for _ in range(cfg.num_local_crops)]

    return transform


def folder_eval_transform(cfg: DataConfig):  # type: ignore[no-untyped-def]
    """Resize (256/224 of the eval size, bicubic) then center crop, as eval_knn.py."""
    from torchvision import transforms as T

    return T.Compose([T.Lambda(lambda im: im.convert("RGB")),
                      T.Resize(int(round(cfg.image_size * 256 / 224)),
                               interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(cfg.image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


TrainData = InMemoryData | FolderData


def load_synthetic_data(cfg: DataConfig, device: torch.device) -> InMemoryData:
    """Seeded random RGB images at `image_size` (2048 train, 512 val, 10 labels): a stand-in
    of known size for benchmarks, where only the shapes matter."""
    g = torch.Generator().manual_seed(0)
    size = cfg.image_size
    train = torch.rand(2048, 3, size, size, generator=g)
    val = torch.rand(512, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (2048,), generator=g)
    keep = train_subset(labels, cfg.train_limit)
    return InMemoryData(train[keep], labels[keep], val, torch.randint(0, 10, (512,), generator=g),
                        IMAGENET_MEAN, IMAGENET_STD, cfg, device)


def load_data(cfg: DataConfig, device: torch.device) -> TrainData:
    """Open the configured data set; errors name `data.root` and what was expected."""
    if cfg.dataset == "digits":
        return load_digits_data(cfg, 0, device)
    if cfg.dataset == "synthetic":
        return load_synthetic_data(cfg, device)
    root = expand_root(cfg.root)
    if cfg.dataset == "fashion_mnist" and root is None:
        return load_fashion_mnist_data(cfg, device)  # Debian's folder
    if root is None or not root.is_dir():
        raise ConfigError(f"data.root: {cfg.root!r} is not a directory"
                          + (f" (expanded: {os.fspath(root)!r})" if root else ""),
                          key="data.root")
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar_data(cfg, device)
    if cfg.dataset == "fashion_mnist":
        return load_fashion_mnist_data(cfg, device)
    return FolderData(cfg, device)
