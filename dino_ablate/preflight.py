"""What a valid run config must also pass before anything is created: its data root exists,
its model exists in timm and it fits the memory it will get (`memory`).

`config.from_dict` checks each value on its own and without heavy imports; these checks need
timm or the machine, so the commands run them once the config has loaded, still before any run
or sweep directory exists. A failure is one ConfigError line, never a traceback from timm or an
allocation minutes later.
"""

from __future__ import annotations

import difflib
import functools
import os

from dino_ablate import fashion_mnist, memory
from dino_ablate.config import RunConfig, expand_root
from dino_ablate.errors import ConfigError
from dino_ablate.sweep import Point


@functools.cache
def _timm_vits() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models("vit*"))


def check_arch(arch: str, source: str | None, where: str = "") -> None:
    """`model.arch` must name a timm ViT (timm.create_model would raise on first use)."""
    import timm

    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, _timm_vits(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{where}model.arch: {arch!r} is not a timm model{hint} Allowed: a timm "
                      "ViT name (python -c \"import timm; print(timm.list_models('vit*'))\")",
                      source=source, key="model.arch")


def training_device(cfg: RunConfig) -> str:
    """`cuda` or `cpu`, as train.pick_device will choose it."""
    if cfg.runtime.device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _ranks_here() -> int:
    """Ranks on this machine: torchrun's LOCAL_WORLD_SIZE, SLURM's tasks per node, else 1."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        text = os.environ.get(name, "")
        if text.isdigit() and int(text) > 0:
            return int(text)
    return 1


def check_data_root(cfg: RunConfig, source: str | None) -> None:
    """An image folder or CIFAR root must be an existing directory (as `data.load_data` will
    open it), and Fashion-MNIST's folder (data.root; null: Debian's) must hold its four files;
    the error is named with the config file. What the files hold is checked as they load."""
    if cfg.data.dataset not in ("imagefolder", "cifar10", "cifar100", "fashion_mnist"):
        return
    try:
        _check_root(cfg)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source, key="data.root") from None


def _check_root(cfg: RunConfig) -> None:
    root = expand_root(cfg.data.root)
    fashion = cfg.data.dataset == "fashion_mnist"
    if root is not None or not fashion:
        try:
            exists = root is not None and root.is_dir()
        except (OSError, ValueError):
            exists = False
        if not exists:
            raise ConfigError(f"data.root: {cfg.data.root!r} is not a directory"
                              + (f" (expanded: {os.fspath(root)!r})" if root else ""),
                              key="data.root")
    if fashion:
        fashion_mnist.locate(root, cfg.data.root)


def check_train(cfg: RunConfig, world_size: int, source: str | None) -> None:
    """`dino-ablate train`: the data root exists, the arch exists and the run fits this
    machine."""
    check_data_root(cfg, source)
    check_arch(cfg.model.arch, source)
    memory.check_local(cfg, training_device(cfg), _ranks_here(), world_size, source)


def check_point(point: Point, source: str) -> memory.MemoryEstimate:
    """`dino-ablate sweep`: a point's arch exists and it fits its resources
    (`memory.check_point`); returns its memory estimate for the dry-run table."""
    where = f"point {point.index} ({point.label}): " if point.varied else f"point {point.index}: "
    check_arch(point.config.model.arch, source, where)
    res = point.resources
    return memory.check_point(point.config, res.gpus_per_node, res.tasks, res.world_size,
                              res.mem_gb, source, where)
