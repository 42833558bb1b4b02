"""The run config: a tree of frozen dataclasses, validated once at load.

Defaults follow the DINO paper (Caron et al. 2021, Sec. 3.2 and App. D) for ViT-S/16 on
ImageNet; where the official code's argparse defaults differ (reference DINO.md §2.1) the field's
help says so. Every ablation of the paper is a value here, never a flag tested in the loop.

A YAML file may give any subset of the keys; missing keys take these defaults. Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the key path, the value
and what is allowed, with the closest valid key for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from dino_ablate import safeload
from dino_ablate.errors import ConfigError, unknown_key


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None,
       check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field carrying its documentation, numeric bounds and an optional `check`
    of the whole (canonical) value that returns what is wrong with it, or None."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check}
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata=meta)


def _scale_range(value: tuple[float, float]) -> str | None:
    """RandomResizedCrop's area range."""
    return None if 0 < value[0] < value[1] <= 1 else "must be [low, high] with 0 < low < high <= 1"


def _probabilities(value: tuple[float, ...]) -> str | None:
    return None if all(0 <= v <= 1 for v in value) else "must hold probabilities in [0, 1]"


DatasetName = Literal["digits", "fashion_mnist", "imagefolder", "cifar10", "cifar100",
                      "synthetic"]
TeacherUpdate = Literal["ema", "previous_epoch", "previous_iteration", "student_copy"]
LossKind = Literal["cross_entropy", "mse"]
Normalization = Literal["centering", "sinkhorn", "none"]
#: Data sets held as one tensor (no image files): the fast probe is their `auto` protocol.
IN_MEMORY_DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "synthetic")
LinearProtocolName = Literal["auto", "fast", "paper", "off"]
LinearFeatures = Literal["auto", "last4_cls", "cls_avgpool", "cls"]


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = _f(
        "imagefolder", "training data: an ImageFolder root (ImageNet layout), CIFAR from a local "
        "folder, `digits` (scikit-learn's bundled 8x8 digits, the embedded default), "
        "`fashion_mnist` (Fashion-MNIST's idx files: 60,000 train / 10,000 test 28x28 grey "
        "images, 10 classes; Debian's dataset-fashion-mnist package), or `synthetic` (seeded "
        "random RGB images: benchmarks only, nothing to learn)")
    root: str | None = _f(
        None, "data root for imagefolder/cifar, and for fashion_mnist the folder of its four idx "
        "files (plain or .gz; null = /usr/share/datasets/fashion-mnist, where Debian's package "
        "puts them); `$VAR` / `${VAR}` are expanded (e.g. ${IMAGENET_ROOT}). Never downloaded.")
    train_split: str = _f("train", "imagefolder: sub-folder holding the training classes")
    val_split: str = _f("val", "imagefolder: sub-folder holding the kNN evaluation classes")
    image_size: int = _f(224, "side (px) of the un-augmented kNN evaluation images (paper: "
                         "resize 256, center crop 224); digits and fashion_mnist are resized "
                         "to this", ge=4)
    global_crop_size: int = _f(224, "side (px) of the 2 global crops (paper 224)", ge=4)
    local_crop_size: int = _f(96, "side (px) of the local crops (paper 96)", ge=2)
    num_local_crops: int = _f(8, "number of local crops; 0 disables multi-crop (paper 8, "
                              "Table 7 row 4 uses 0)", ge=0, le=64)
    global_crop_scale: tuple[float, float] = _f(
        (0.4, 1.0), "RandomResizedCrop area range of global crops (paper (0.4, 1); the official "
        "code recommends (0.14, 1) without multi-crop)", check=_scale_range)
    local_crop_scale: tuple[float, float] = _f(
        (0.05, 0.4), "RandomResizedCrop area range of local crops (paper (0.05, 0.4))",
        check=_scale_range)
    flip_prob: float = _f(0.5, "horizontal flip probability (paper 0.5)", ge=0, le=1)
    color_jitter_prob: float = _f(0.8, "colour jitter probability; brightness 0.4, contrast 0.4, "
                                  "saturation 0.2, hue 0.1 (paper 0.8)", ge=0, le=1)
    grayscale_prob: float = _f(0.2, "random grayscale probability (paper 0.2)", ge=0, le=1)
    blur_prob_global: tuple[float, float] = _f(
        (1.0, 0.1), "Gaussian blur probability of global crop 1 and 2 (paper 1.0, 0.1)",
        check=_probabilities)
    blur_prob_local: float = _f(0.5, "Gaussian blur probability of local crops (paper 0.5)",
                                ge=0, le=1)
    solarize_prob: float = _f(0.2, "solarization probability of global crop 2 (paper 0.2)",
                              ge=0, le=1)
    num_workers: int = _f(10, "data-loader worker processes per rank for image folders "
                          "(official code 10); in-memory data sets use none", ge=0)
    train_limit: int | None = _f(
        None, "train on at most this many images of the train split: a fixed subset, "
        "class-stratified, with seed 0 whatever the run's seed (a laptop run of fashion_mnist on "
        "10,000 of its 60,000); it is also the kNN memory bank unless knn_train_limit cuts that "
        "further. In-memory data sets only (not imagefolder); null = all", ge=1)
    knn_train_limit: int | None = _f(
        None, "use at most this many training images (seeded subset) as the kNN memory bank; "
        "null = all (the paper uses all of ImageNet train)", ge=1)
    val_limit: int | None = _f(None, "evaluate kNN on at most this many val images; null = all",
                               ge=1)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("vit_small_patch16_224", "timm ViT name (any `vit_*`); the paper's ViT-S/16 "
                   "is vit_small_patch16_224")
    patch_size: int = _f(16, "patch side in px (paper 16, 8 or 5). A size that does not divide "
                         "the crop is handled by timm's dynamic padding: the image is zero-padded "
                         "on the right/bottom to the next multiple (224 -> 225 for /5: 45x45 "
                         "tokens)", ge=1)
    drop_path_rate: float = _f(0.1, "stochastic depth, student only (paper 0.1)", ge=0, lt=1)
    embed_dim: int | None = _f(None, "override the arch's width (tiny models for CPU); null = "
                               "the arch's own", ge=8)
    depth: int | None = _f(None, "override the number of blocks; null = the arch's own", ge=1)
    num_heads: int | None = _f(None, "override the number of attention heads; null = the "
                               "arch's own", ge=1)


@dataclass(frozen=True)
class HeadConfig:
    out_dim: int = _f(65536, "K, the number of prototypes (paper 65536)", ge=2)
    hidden_dim: int = _f(2048, "MLP hidden width (paper 2048)", ge=1)
    bottleneck_dim: int = _f(256, "L2-normalised bottleneck width (paper 256)", ge=1)
    num_layers: int = _f(3, "linear layers in the MLP before the weight-normed last layer "
                         "(paper 3)", ge=1, le=8)
    norm_last_layer: bool = _f(True, "freeze the weight-norm gain of the last layer at 1 (paper "
                               "True; False is better for ViT-S but can be unstable)")
    use_bn: bool = _f(False, "BatchNorm after hidden linears (paper False)")
    l2_bottleneck: bool = _f(True, "L2-normalise the bottleneck output (paper True; App. C "
                             "shows collapse without it at 3+ layers)")
    predictor: bool = _f(False, "add a 2-layer MLP predictor on the student output only "
                         "(Table 7 row 6)")


@dataclass(frozen=True)
class LossConfig:
    kind: LossKind = _f("cross_entropy", "cross-entropy between teacher and student "
                        "distributions (paper) or MSE between them (Table 7 row 5)")
    student_temp: float = _f(0.1, "student softmax temperature tau_s (paper 0.1)", gt=0)
    teacher_temp: float = _f(0.07, "teacher temperature tau_t after warm-up (paper 0.04->0.07)",
                             gt=0)
    warmup_teacher_temp: float = _f(0.04, "teacher temperature at epoch 0 (paper 0.04)", gt=0)
    warmup_teacher_temp_epochs: int = _f(
        30, "epochs of linear tau_t warm-up (paper 30; the official code's default is 0)", ge=0)
    sharpening: bool = _f(True, "sharpen the teacher (tau_t < tau_s). False sets tau_t = tau_s "
                          "throughout, the paper's no-sharpening collapse study (Fig. 7)")
    normalization: Normalization = _f(
        "centering", "teacher output normalisation: `centering` (paper), `sinkhorn` "
        "(Sinkhorn-Knopp, Table 7 row 3) or `none` (Fig. 7's no-centering collapse)")
    center_momentum: float = _f(0.9, "EMA rate of the center (paper 0.9; App. D: 0.999 "
                                "collapses)", ge=0, le=1)
    sinkhorn_iterations: int = _f(3, "Sinkhorn-Knopp iterations when normalization=sinkhorn",
                                  ge=1)


@dataclass(frozen=True)
class TeacherConfig:
    update: TeacherUpdate = _f(
        "ema", "teacher rule (Fig. 6 right): `ema` momentum teacher; `previous_epoch` student "
        "of the end of the previous epoch; `previous_iteration` student one optimizer step "
        "earlier; `student_copy` the current student with stop-gradient (momentum 0, Table 7 "
        "row 2)")
    momentum: float = _f(0.996, "EMA momentum at step 0, cosine to momentum_end (paper 0.996; "
                         "the code suggests 0.9995 for batch 256)", ge=0, le=1)
    momentum_end: float = _f(1.0, "EMA momentum at the last step (paper 1.0)", ge=0, le=1)


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = _f(1024, "global batch size, split evenly over ranks (paper 1024 on 16 "
                         "GPUs; official code 64 per GPU)", ge=1)
    lr: float = _f(5e-4, "peak learning rate for batch 256; scaled linearly by batch/256 (paper "
                   "5e-4)", gt=0)
    min_lr: float = _f(1e-6, "final learning rate of the cosine decay (paper 1e-6)", ge=0)
    warmup_epochs: int = _f(10, "linear lr warm-up epochs (paper 10)", ge=0)
    weight_decay: float = _f(0.04, "weight decay at step 0, cosine to weight_decay_end "
                             "(paper 0.04)", ge=0)
    weight_decay_end: float = _f(0.4, "weight decay at the last step (paper 0.4)", ge=0)
    clip_grad: float = _f(3.0, "per-tensor gradient-norm clip; 0 disables (paper 3.0)", ge=0)
    freeze_last_layer_epochs: int = _f(1, "epochs during which the head's last layer gets no "
                                       "gradient (paper 1)", ge=0)


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = _f(20, "neighbours of the weighted kNN (paper 20)", ge=1)
    knn_temperature: float = _f(0.07, "temperature of the kNN vote weights exp(sim/T) (paper "
                                "0.07)", gt=0)
    every_epochs: int = _f(1, "evaluate kNN every this many epochs (always at the last)", ge=1)
    batch_size: int = _f(256, "images per forward pass when extracting kNN features", ge=1)
    linear_protocol: LinearProtocolName = _f(
        "auto", "linear probe on the frozen teacher and student (App. F.2): `paper` = the "
        "official eval_linear.py recipe after training (image folders only), `fast` = a probe "
        "fitted to the features of the un-augmented images (in-memory sets, seconds), `off`; "
        "auto = fast for digits/fashion_mnist/CIFAR/synthetic, paper for image folders")
    linear_every_epochs: int = _f(0, "fast probe every this many epochs as well; 0 = only at "
                                  "the end (the paper protocol runs only at the end)", ge=0)
    linear_features: LinearFeatures = _f(
        "auto", "probe features: `last4_cls` = [CLS] of the last 4 blocks concatenated (official "
        "ViT-S), `cls_avgpool` = [CLS] + mean patch token (official ViT-B), `cls`; auto = "
        "cls_avgpool from width 768, else last4_cls")
    linear_l2: float = _f(1e-3, "fast probe: L2 penalty on the weights per mean sample "
                          "(scikit-learn's C = 1 / (l2 * N))", gt=0)
    linear_steps: int = _f(300, "fast probe: L-BFGS iterations at most", ge=1)
    linear_epochs: int = _f(100, "paper probe: epochs of SGD (official 100)", ge=1)
    linear_lr: float = _f(1e-3, "paper probe: lr for batch 256, scaled by batch/256 (official "
                          "0.001), SGD momentum 0.9, no weight decay, cosine to 0", gt=0)
    linear_batch_size: int = _f(1024, "paper probe: global batch (official 128 per GPU x 8)",
                                ge=1)
    attention_images: int = _f(8, "val images whose last-block [CLS] attention maps are saved "
                               "at the end of a run (attention/); 0 = none", ge=0, le=64)


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    precision: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "auto = bf16 autocast on GPU, fp32 on CPU")
    deterministic: bool = _f(False, "deterministic algorithms (bit-identical resume on CPU "
                                    "with an in-memory data set)")
    compile: bool = _f(False, "torch.compile the student and teacher (GPU)")
    threads: int | None = _f(None, "torch intra-op threads per rank; null = torch's default "
                             "(OMP_NUM_THREADS if set: the Ray backend sets it to the trial's "
                             "cpus_per_task)", ge=1)
    fused_attention: Literal["auto", "on", "off"] = _f(
        "auto", "timm's fused scaled-dot-product attention. auto = on, except on the CPU for "
        "sequences of at most 64 tokens, where the plain matmul path measured faster")
    log_every_steps: int = _f(10, "progress line every this many steps", ge=1)
    collapse_stop: bool = _f(False, "stop a run early once a collapse is detected (the paper's "
                             "runs ran to the end); a run it stopped trains on to its epochs "
                             "when resumed with it off")


@dataclass(frozen=True)
class RunConfig:
    seed: int = _f(0, "seed of every random generator (official code 0); at most 2**32 - 1, "
                   "as numpy's generators and torch's derived per-step seeds need", ge=0,
                   le=2**32 - 1)
    epochs: int = _f(100, "training epochs (official code 100; Table 7 uses 300)", ge=1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def scaled_lr(self) -> float:
        """Peak lr after the linear scaling rule lr * batch / 256 (paper Sec. 3.2)."""
        return self.optim.lr * self.optim.batch_size / 256.0


# --------------------------------------------------------------------------------------------
# Loading and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list [" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            bound = meta[key]
            parts.append(f"{sym} {bound}" if isinstance(bound, int) else f"{sym} {bound:g}")
    return " and ".join(parts)


def _coerce(value: Any, tp: Any, path: str, meta: Mapping[str, Any], source: str | None) -> Any:
    """Check `value` against the annotation `tp`; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], path, meta, source)
        raise AssertionError(f"unsupported union at {path}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected {_type_name(tp)}",
                              source=source, key=path)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: {value!r} must be {_type_name(tp)}", source=source,
                              key=path)
        element = {k: v for k, v in meta.items() if k != "check"}
        out = tuple(_coerce(v, a, f"{path}[{i}]", element, source)
                    for i, (v, a) in enumerate(zip(value, args, strict=True)))
        return _checked(out, path, meta, source)
    if tp in (bool, int, float, str):
        return _checked(_scalar(value, tp, path, source), path, meta, source)
    raise AssertionError(f"unsupported type {tp} at {path}")


#: ints are stored as int64 by torch and numpy; a larger one is no size or count we can use
INT_LIMIT = 2**63


def _scalar(value: Any, tp: type, path: str, source: str | None) -> Any:
    """`value` as a bool, int, float or non-empty string, or a ConfigError saying which."""
    def fail(what: str) -> ConfigError:
        return ConfigError(f"{path}: {value!r} {what}", source=source, key=path)

    if tp is bool:
        if not isinstance(value, bool):
            raise fail("must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str) or not value:
            raise fail("must be a non-empty string")
        if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise fail("must not contain control characters (NUL, newline, tab, ...) or lone "
                       "surrogates")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int):
        raise fail("must be a number" if tp is float else "must be an integer")
    if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT:
        kind = "a number" if tp is float else "an integer"
        raise ConfigError(f"{path}: a {value.bit_length()}-bit integer is out of range; "
                          f"allowed: {kind} of magnitude below 2**63", source=source, key=path)
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise fail("must be finite")
    return value


def _checked(value: Any, path: str, meta: Mapping[str, Any], source: str | None) -> Any:
    """`value` once inside the field's numeric bounds and accepted by its `check`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = ((meta.get("ge") is None or value >= meta["ge"])
              and (meta.get("gt") is None or value > meta["gt"])
              and (meta.get("le") is None or value <= meta["le"])
              and (meta.get("lt") is None or value < meta["lt"]))
        if not ok:
            raise ConfigError(f"{path}: {value!r} is out of range; allowed: "
                              f"{_bounds_text(meta)}", source=source, key=path)
    check = meta.get("check")
    problem = check(value) if check is not None else None
    if problem:
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{path}: {shown!r} {problem}", source=source, key=path)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations (cached: resolving them dominates building a config)."""
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, prefix: str, source: str | None) -> Any:
    if not isinstance(raw, Mapping):
        where = prefix or "the top level"
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}", source=source,
                          key=prefix or None)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise unknown_key(source, prefix, key, sorted(fields))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name] if raw[name] is not None else {}, path, source)
        else:
            kwargs[name] = _coerce(raw[name], tp, path, f.metadata, source)
    return cls(**kwargs)


def _check_cross_field(cfg: RunConfig, source: str | None) -> None:
    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{key}: {msg}", source=source, key=key)

    if cfg.data.dataset in ("imagefolder", "cifar10", "cifar100") and not cfg.data.root:
        fail("data.root", f"null: dataset {cfg.data.dataset!r} needs a local folder (set "
             "data.root or an environment variable referenced by it)")
    if cfg.model.patch_size > cfg.data.local_crop_size and cfg.data.num_local_crops > 0:
        fail("model.patch_size", f"{cfg.model.patch_size} is larger than data.local_crop_size "
             f"{cfg.data.local_crop_size}; allowed: <= the smallest crop")
    if cfg.model.patch_size > cfg.data.global_crop_size:
        fail("model.patch_size", f"{cfg.model.patch_size} is larger than "
             f"data.global_crop_size {cfg.data.global_crop_size}")
    if cfg.teacher.momentum_end < cfg.teacher.momentum:
        fail("teacher.momentum_end", f"{cfg.teacher.momentum_end} is below teacher.momentum "
             f"{cfg.teacher.momentum}; the schedule only rises")
    if cfg.model.embed_dim is not None and cfg.model.num_heads is not None \
            and cfg.model.embed_dim % cfg.model.num_heads:
        fail("model.num_heads", f"{cfg.model.num_heads} does not divide model.embed_dim "
             f"{cfg.model.embed_dim}")
    in_memory = cfg.data.dataset in IN_MEMORY_DATASETS
    if cfg.data.train_limit is not None and not in_memory:
        fail("data.train_limit", f"{cfg.data.train_limit}: data.dataset "
             f"{cfg.data.dataset!r} reads its images from files and trains on all of them; "
             f"allowed: null, or an in-memory data set ({', '.join(IN_MEMORY_DATASETS)})")
    if cfg.eval.linear_protocol == "paper" and in_memory:
        fail("eval.linear_protocol", f"'paper' trains on augmented image files; data.dataset "
             f"{cfg.data.dataset!r} is held in memory; allowed here: fast, auto, off")
    paper_probe = cfg.eval.linear_protocol == "paper" or (
        cfg.eval.linear_protocol == "auto" and not in_memory)
    if paper_probe and cfg.eval.linear_every_epochs:
        fail("eval.linear_every_epochs", f"{cfg.eval.linear_every_epochs}: the paper probe is "
             "a 100-epoch job run only at the end; allowed with it: 0 (or linear_protocol fast)")
    if not cfg.model.arch.startswith("vit"):
        fail("model.arch", f"{cfg.model.arch!r} is not a timm ViT; allowed: a timm model name "
             "starting with 'vit' (e.g. vit_small_patch16_224)")


def from_dict(raw: Mapping[str, Any] | None, source: str | None = None) -> RunConfig:
    """Build and validate a RunConfig from a (partial) nested mapping."""
    cfg = _build(RunConfig, raw or {}, "", source)
    _check_cross_field(cfg, source)
    return cfg


@functools.cache
def _leaf_spec(key: str) -> tuple[Any, Mapping[str, Any]] | None:
    """(annotation, field metadata) of the leaf field at dotted `key`; None if not a leaf."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        tp = _hints(cls)[part]
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        if i == len(parts) - 1:
            return None if nested else (tp, fields[part].metadata)
        if not nested:
            return None
        cls = tp
    return None


def replace_leaves(cfg: RunConfig, values: Mapping[str, Any], source: str | None = None
                   ) -> tuple[RunConfig, dict[str, Any]]:
    """`cfg` with the leaf fields at the dotted keys of `values` replaced, and those values in
    canonical form.

    Each value is checked exactly as `from_dict` checks it and the cross-field rules run on the
    result, so this equals `from_dict` of the merged mapping; it only skips rebuilding the
    untouched sub-configs (a sweep's points share everything but their axis values).
    """
    changes: dict[str, Any] = {}
    canonical: dict[str, Any] = {}
    for key, value in values.items():
        spec = _leaf_spec(key)
        if spec is None:
            raise ConfigError(f"{key}: not a leaf field of the run config", source=source,
                              key=key)
        tp, meta = spec
        canonical[key] = _coerce(value, tp, key, meta, source)
        set_dotted(changes, key, canonical[key])

    def apply(obj: Any, node: Mapping[str, Any]) -> Any:
        return dataclasses.replace(obj, **{
            name: apply(getattr(obj, name), sub) if isinstance(sub, dict) else sub
            for name, sub in node.items()})

    out = apply(cfg, changes)
    _check_cross_field(out, source)
    return out, canonical


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-friendly data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    out = plain(cfg)
    assert isinstance(out, dict)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` with the value parsed as YAML (`0.1`, `true`, `[0.4, 1]`, `null`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = safeload.load_yaml(value) if value.strip() else value
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: {value!r} is not valid YAML "
                          f"({safeload.yaml_problem(exc)})", key=key) from None
    return key, parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating intermediate mappings."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(parts[:-1])} is not a mapping", key=key)
        node = child
    node[parts[-1]] = value


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (`dino-ablate train NAME`)."""
    folder = resources.files("dino_ablate") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped config."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or safeload.is_file(path) or _is_dir(path):
        if not safeload.is_file(path):
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return path
    shipped = Path(str(resources.files("dino_ablate") / "configs")) / f"{name_or_path}.yaml"
    if "/" in name_or_path or not safeload.is_file(shipped):
        close = difflib.get_close_matches(name_or_path, shipped_configs(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{name_or_path!r} is neither a YAML file nor a shipped config{hint} "
                          f"Shipped: {', '.join(shipped_configs())}")
    return Path(str(shipped))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping (no object construction), with the file named on errors.

    `safeload` refuses what PyYAML would accept silently or crash on: non-UTF-8 or binary
    files, duplicate keys, deep nesting and alias bombs."""
    raw = safeload.read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of keys, got {type(raw).__name__}",
                          source=str(path))
    return raw


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML path or shipped config name, apply `key=value` overrides, validate."""
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return from_dict(raw, source=str(path))


def expand_root(root: str | None) -> Path | None:
    """data.root with environment variables expanded; an unset variable is an error."""
    if root is None:
        return None
    expanded = os.path.expandvars(root)
    if "$" in expanded:
        raise ConfigError(f"data.root: {root!r} references an unset environment variable",
                          key="data.root")
    try:
        path = Path(expanded).expanduser()
    except RuntimeError:  # `~user` of no such user
        raise ConfigError(f"data.root: {root!r}: no such user's home directory; allowed: an "
                          "existing directory", key="data.root") from None
    # the OS refuses longer names with an OSError from every later is_dir() and open()
    if len(str(path)) > 4096 or any(len(part) > 255 for part in path.parts):
        raise ConfigError(f"data.root: {root!r} -> {str(path)[:80]!r}...: too long a path; "
                          "allowed: at most 4096 characters, 255 per name", key="data.root")
    return path


def field_docs() -> list[tuple[str, str, str]]:
    """(key path, default, help) for every leaf field: the README's config reference."""
    rows: list[tuple[str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            hints = typing.get_type_hints(cls)
            sub = hints[f.name]
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                walk(sub, path)
            else:
                default = f.default
                shown = list(default) if isinstance(default, tuple) else default
                rows.append((path, yaml.safe_dump(shown, default_flow_style=True).strip()
                             .removesuffix("...").strip(), f.metadata.get("help", "")))
    walk(RunConfig, "")
    return rows
