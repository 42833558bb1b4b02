"""Export a run's teacher and student in the official DINO checkpoint layout.

The exported file is a plain mapping (loadable with `torch.load(weights_only=True)`):

- `teacher`, `student`: state dicts named as the official `main_dino.py` names its networks
  (a `MultiCropWrapper`: `backbone.*` = the ViT, `head.*` = `DINOHead`), so the official
  `eval_knn.py`, `eval_linear.py` and `visualize_attention.py` load them with
  `--pretrained_weights FILE --checkpoint_key teacher` (or `student`). Those scripts strip
  `module.` and `backbone.` and load with `strict=False`, so the `head.*` keys are ignored
  there, as they are for the official checkpoints.
- `arch`, `timm_kwargs`: `timm.create_model(arch, **timm_kwargs)` rebuilds the backbone,
  which then loads the `backbone.*` tensors (prefix removed) with `strict=True`
  (`load_backbone_into_timm`).
- `official_arch`: `vit_tiny` / `vit_small` / `vit_base` when the official constructor
  `vits.__dict__[name](patch_size=P, num_classes=0)` builds exactly this backbone (its widths,
  depth, heads, 3 channels, 224-px position embeddings), else None: then build the official
  `VisionTransformer(img_size=[img_size], patch_size, in_chans, embed_dim, depth, num_heads,
  qkv_bias=True, norm_layer=LayerNorm(eps=1e-6))` from `timm_kwargs` by hand, since a
  position-embedding or width mismatch is an error even under `strict=False`.
- `head`: the head's shape (the official `DINOHead` arguments), `epoch`, `which`,
  `knn_teacher`, `source_run_dir`, `source_checkpoint`, `source_sha256` (of the checkpoint
  file's bytes: the `checkpoint_sha256` that `dino-ablate eval` records for the same file),
  `config` (the run's config.yaml), `format`.

Key mapping (ours -> official), checked against the official `vision_transformer.py`
(`VisionTransformer`, `Block`, `Attention`, `Mlp`, `PatchEmbed`, `DINOHead`):

- `backbone.*` -> unchanged. timm's ViT (`class_token`, no register tokens, no layer scale,
  no qk-norm, `global_pool='token'`, `num_classes=0`) has exactly the official parameter
  names and shapes: `cls_token` (1, 1, D), `pos_embed` (1, N + 1, D), `patch_embed.proj.*`
  (D, C, P, P), `blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*` with qkv
  (3D, D) plus bias and fc1 (4D, D), `norm.*`. timm's extra modules (`patch_embed.norm`,
  `patch_drop`, `norm_pre`, `attn.q_norm`, `attn.k_norm`, `attn.norm`, `ls1`, `ls2`,
  `mlp.norm`, `fc_norm`, `head_drop`, `head`) are identities or dropouts with no state, so
  they add no keys; timm's `blocks` is a `Sequential` where the official is a `ModuleList`:
  the same `blocks.i.` names.
- `head.mlp.i.*` -> unchanged (Linear, [BatchNorm1d], GELU, ..., Linear: same indices);
  with `head.num_layers: 1` the official `mlp` is a bare `Linear`, so `head.mlp.0.*` ->
  `head.mlp.*`.
- `head.last_layer.v` (K, bottleneck) -> `head.last_layer.weight_v`, `head.last_layer.g`
  (K, 1) -> `head.last_layer.weight_g` (`nn.utils.weight_norm` of a bias-free Linear,
  dim 0: the same W = g v / ||v|| per row).
- `predictor.*` (student, `head.predictor: true`) -> unchanged; the official code has no
  predictor, and its loaders drop the keys as unexpected.
- a leading `module.` (DDP) is removed; any other key is refused.

Numerical caveats of the official scripts on these weights: at the exported `img_size` both
implementations compute the same function; at other sizes timm and the official code resize
the position embeddings slightly differently (both bicubic), and a side that is not a multiple
of the patch is zero-padded by timm (`dynamic_img_pad`) but cropped by the official conv.
The official `DINOHead` always L2-normalises the bottleneck (`head.l2_bottleneck: false` runs
export the same keys, but the official head then computes a different function).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from dino_ablate import checkpoint
from dino_ablate.config import RunConfig, from_dict
from dino_ablate.contract import CONFIG_FILE
from dino_ablate.errors import ConfigError
from dino_ablate.rundir import RunDir

FORMAT = "dino_ablate.export/1"
BEST_KNN = checkpoint.BEST_KNN
CHECKPOINT_FILES = {"last": checkpoint.LAST, "best-knn": BEST_KNN}
NETWORKS = ("teacher", "student")
# Fixed by our backbone (model.build_backbone); the sizes are added per run.
TIMM_FIXED: dict[str, Any] = {"pretrained": False, "num_classes": 0, "global_pool": "token",
                              "dynamic_img_size": True, "dynamic_img_pad": True}
# Official constructors: name -> (embed_dim, depth, num_heads); all 224 px, 3 channels.
OFFICIAL_ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
OFFICIAL_IMG_SIZE = 224


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote."""

    path: Path
    which: str
    source: Path
    epoch: int
    num_tensors: int


def official_key(key: str, single_linear_mlp: bool) -> str:
    """The official name of one of our MultiCropNetwork state-dict keys (see module doc)."""
    key = key.removeprefix("module.")
    if key.startswith(("backbone.", "predictor.")):
        return key
    if key == "head.last_layer.v":
        return "head.last_layer.weight_v"
    if key == "head.last_layer.g":
        return "head.last_layer.weight_g"
    if key.startswith("head.mlp."):
        if single_linear_mlp and key.startswith("head.mlp.0."):
            return "head.mlp." + key.removeprefix("head.mlp.0.")
        return key
    raise KeyError(key)


def official_state_dict(state: Mapping[str, torch.Tensor],
                        single_linear_mlp: bool) -> dict[str, torch.Tensor]:
    """`state` with every key renamed by `official_key`; raises KeyError on a foreign key."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = official_key(key, single_linear_mlp)
        if new in out:
            raise KeyError(f"{key} and another key both map to {new}")
        out[new] = tensor
    return out


def backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `backbone.*` tensors with the prefix removed: timm's (and the official ViT's) keys."""
    return {k.removeprefix("backbone."): v for k, v in state.items()
            if k.startswith("backbone.")}


def timm_kwargs(cfg: RunConfig, backbone: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """`timm.create_model(cfg.model.arch, **kwargs)` builds this backbone: the kwargs of
    model.build_backbone without drop-path. The channels come from the patch-embedding tensor
    (the dataset decides them); sizes the config leaves to the arch are filled in by
    `build_export` from the built model."""
    proj = backbone["patch_embed.proj.weight"]  # (embed_dim, in_chans, patch, patch)
    kwargs = {**TIMM_FIXED, "img_size": cfg.data.global_crop_size,
              "patch_size": cfg.model.patch_size, "in_chans": int(proj.shape[1])}
    for name in ("embed_dim", "depth", "num_heads"):
        value = getattr(cfg.model, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def build_timm_backbone(arch: str, kwargs: Mapping[str, Any],
                        state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A fresh timm ViT holding `state` (backbone keys without prefix), loaded strictly."""
    import timm

    model = timm.create_model(arch, **kwargs)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def official_arch(arch: str, kwargs: Mapping[str, Any]) -> str | None:
    """The official `vision_transformer` constructor that builds this exact backbone, if any."""
    for name, (dim, depth, heads) in OFFICIAL_ARCHS.items():
        if (arch.startswith(name + "_patch") and kwargs["img_size"] == OFFICIAL_IMG_SIZE
                and OFFICIAL_IMG_SIZE % kwargs["patch_size"] == 0 and kwargs["in_chans"] == 3
                and (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"])
                == (dim, depth, heads)):
            return name
    return None


def read_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    file = run_dir / CONFIG_FILE
    raw = RunDir(run_dir).read_config()
    if raw is None:
        raise ConfigError(f"{file}: missing or not a mapping; not a run directory")
    return from_dict(raw, source=str(file)), raw


def read_weights_digest(path: Path, hint: str = "") -> tuple[dict[str, Any], str]:
    """The checkpoint at `path` and the sha256 of the bytes it was loaded from (one read: a
    file the trainer replaces meanwhile cannot give the weights of one and the digest of
    another)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint{hint}")
    try:
        data = path.read_bytes()
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear user error
        raise ConfigError(f"{path}: unreadable checkpoint ({checkpoint.load_error(exc)})"
                          ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: unreadable checkpoint (not a mapping)")
    missing = [k for k in (*NETWORKS, "epoch") if k not in state]
    if missing:
        raise ConfigError(f"{path}: not a dino_ablate checkpoint; missing keys {missing}")
    return state, hashlib.sha256(data).hexdigest()


class RunCheckpoint(NamedTuple):
    """One checkpoint of a run directory, with the run's config."""

    cfg: RunConfig
    raw: dict[str, Any]  # config.yaml as read
    source: Path
    state: dict[str, Any]
    sha256: str  # of the checkpoint file's bytes


def open_run_checkpoint(run_dir: Path, which: str = "last") -> RunCheckpoint:
    """`run_dir`'s `which` checkpoint ("last" or "best-knn"); every problem is one
    ConfigError line."""
    if which not in CHECKPOINT_FILES:
        raise ConfigError(f"--which: {which!r} is not one of {', '.join(CHECKPOINT_FILES)}")
    cfg, raw = read_run_config(run_dir)
    source = RunDir(run_dir).checkpoints / CHECKPOINT_FILES[which]
    hint = ("; it is written when the teacher kNN accuracy improves (try --which last)"
            if which == "best-knn" else "")
    return RunCheckpoint(cfg, raw, source, *read_weights_digest(source, hint))


def build_export(run_dir: Path, which: str = "last") -> dict[str, Any]:
    """The export mapping of `run_dir`'s `which` checkpoint ("last" or "best-knn")."""
    cfg, raw, source, state, digest = open_run_checkpoint(run_dir, which)
    single = cfg.head.num_layers == 1
    networks: dict[str, dict[str, torch.Tensor]] = {}
    for name in NETWORKS:
        try:
            networks[name] = official_state_dict(state[name], single)
        except KeyError as exc:
            raise ConfigError(f"{source}: {name} key {exc.args[0]!r} is not a backbone, head "
                              "or predictor key of a dino_ablate network") from exc
    kwargs = timm_kwargs(cfg, backbone_state(networks["teacher"]))
    try:  # the promise of the file: both backbones load strictly into this timm model
        model = build_timm_backbone(cfg.model.arch, kwargs, backbone_state(networks["teacher"]))
        model.load_state_dict(backbone_state(networks["student"]), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{source}: does not match {run_dir / 'config.yaml'} "
                          f"({checkpoint.first_line(exc)})") from exc
    blocks: Any = model.blocks
    kwargs.update(embed_dim=int(blocks[0].norm1.normalized_shape[0]), depth=len(blocks),
                  num_heads=int(blocks[0].attn.num_heads))
    knn = state.get("knn_teacher")
    if knn is None and state.get("metrics"):
        knn = state["metrics"][-1].get("knn_teacher")
    head = cfg.head
    return {
        "format": FORMAT, **networks, "arch": cfg.model.arch, "timm_kwargs": kwargs,
        "official_arch": official_arch(cfg.model.arch, kwargs),
        "head": {"in_dim": kwargs["embed_dim"], "out_dim": head.out_dim,
                 "hidden_dim": head.hidden_dim, "bottleneck_dim": head.bottleneck_dim,
                 "nlayers": head.num_layers, "use_bn": head.use_bn,
                 "norm_last_layer": head.norm_last_layer,
                 "l2_bottleneck": head.l2_bottleneck, "predictor": head.predictor},
        "epoch": int(state["epoch"]), "which": which,
        "knn_teacher": None if knn is None else float(knn),
        "source_run_dir": str(run_dir.resolve()), "source_checkpoint": str(source.resolve()),
        "source_sha256": digest, "config": raw,
    }


def write_atomic(payload: Mapping[str, Any], out: Path, force: bool) -> None:
    """torch.save to a temporary file, fsync, then move it to `out`.

    Without `force` the move is a hard link, which fails if `out` appeared meanwhile, so an
    existing file is never replaced; with `force` it is os.replace.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save(dict(payload), fh)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError as exc:
                raise ConfigError(f"{out}: already exists; pass --force to replace it") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_run(run_dir: Path, out: Path, which: str = "last",
               force: bool = False) -> ExportResult:
    """Write `run_dir`'s `which` checkpoint to `out` in the official layout (module doc)."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; --out must be a file path")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; pass --force to replace it")
    payload = build_export(run_dir, which)
    write_atomic(payload, out, force)
    tensors = sum(len(payload[name]) for name in NETWORKS)
    return ExportResult(out, which, Path(payload["source_checkpoint"]), payload["epoch"],
                        tensors)


def load_export(path: Path) -> dict[str, Any]:
    """An exported file, checked to be one."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear user error
        raise ConfigError(f"{path}: unreadable export ({checkpoint.load_error(exc)})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a dino_ablate export (format {FORMAT})")
    return data


def load_backbone_into_timm(path: Path, network: str = "teacher") -> nn.Module:
    """`timm.create_model(arch, **timm_kwargs)` with the exported `network`'s backbone loaded
    strictly, in eval mode: (B, in_chans, H, W) -> (B, embed_dim) [CLS] features."""
    data = load_export(path)
    if network not in NETWORKS:
        raise ConfigError(f"network: {network!r} is not one of {', '.join(NETWORKS)}")
    return build_timm_backbone(data["arch"], data["timm_kwargs"],
                               backbone_state(data[network]))
