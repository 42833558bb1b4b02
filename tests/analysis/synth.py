"""Write synthetic run and sweep directories that follow docs/run_directory.md.

Used by the analysis tests and by ``benchmarks/bench_analysis.py``; it imports nothing from the
project so that it can be loaded from a file path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRIC_KEYS = (
    "epoch",
    "step",
    "loss",
    "lr",
    "weight_decay",
    "momentum",
    "teacher_temp",
    "teacher_entropy",
    "teacher_batch_entropy",
    "kl_teacher_student",
    "knn_teacher",
    "knn_student",
    "images_per_s",
    "epoch_seconds",
    "peak_memory_mb",
)

#: Linear-probe keys of a metrics record (present when ``make_records`` is given a final value).
LINEAR_KEYS = ("linear_teacher", "linear_student")

#: ``init.json`` keys of the baselines added with the linear probe (``write_run(baselines=)``).
BASELINE_KEYS = ("linear_teacher_init", "linear_student_init", "knn_pixels", "linear_pixels")


def make_records(
    epochs: int,
    *,
    out_dim: int = 256,
    knn_teacher_final: float = 0.70,
    knn_student_final: float = 0.66,
    collapse: str | None = None,
    collapse_at: int = 1,
    images_per_s: float = 1000.0,
    epoch_seconds: float = 60.0,
    steps_per_epoch: int = 21,
    linear_teacher_final: float | None = None,
    linear_student_final: float | None = None,
    linear_every: int = 1,
) -> list[dict[str, Any]]:
    """Per-epoch records of a run (epoch counts from 1).

    Args:
        epochs: number of records.
        out_dim: head size K; entropies are in nats relative to ln K.
        knn_teacher_final, knn_student_final: kNN (0-1) reached at the last epoch; earlier
            epochs rise towards it as ``final * (1 - exp(-epoch / (epochs / 4)))``-ish.
        collapse: None for a healthy run, ``"uniform"`` (entropy -> ln K) or ``"one-dim"``
            (entropy -> 0); from epoch ``collapse_at`` on the KL is 0.
        images_per_s, epoch_seconds: constant throughput and epoch time.
        linear_teacher_final, linear_student_final: with a value, records carry
            ``linear_teacher``/``linear_student`` rising like kNN towards it, measured every
            ``linear_every`` epochs and at the last one (null on the others).
    """
    ln_k = math.log(out_dim)
    records: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        progress = 1.0 - math.exp(-epoch / max(epochs / 4.0, 1.0))
        scale = progress / (1.0 - math.exp(-epochs / max(epochs / 4.0, 1.0)))
        entropy = 0.4 * ln_k + 0.1 * math.cos(epoch)
        kl = 0.4 + 0.05 * math.sin(epoch)
        if collapse is not None and epoch >= collapse_at:
            entropy = ln_k - 1e-4 if collapse == "uniform" else 1e-3
            kl = 1e-4
        records.append(
            {
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "loss": entropy + kl,
                "lr": 5e-4 * (1 - epoch / (epochs + 1)),
                "weight_decay": 0.04,
                "momentum": 0.996,
                "teacher_temp": 0.04,
                "teacher_entropy": entropy,
                # one-dim collapse: every image on the same dimension, so the batch mean too
                "teacher_batch_entropy": (entropy if collapse == "one-dim" and epoch >= collapse_at
                                          else min(ln_k, entropy + 1.0)),
                "kl_teacher_student": kl,
                "knn_teacher": knn_teacher_final * scale,
                "knn_student": knn_student_final * scale,
                "images_per_s": images_per_s,
                "epoch_seconds": epoch_seconds,
                "peak_memory_mb": 2048.0,
            }
        )
        if linear_teacher_final is not None:
            measured = epoch % linear_every == 0 or epoch == epochs
            student_final = (linear_student_final if linear_student_final is not None
                             else linear_teacher_final)
            records[-1]["linear_teacher"] = linear_teacher_final * scale if measured else None
            records[-1]["linear_student"] = student_final * scale if measured else None
    return records


def config_yaml(out_dim: int, seed: int, patch_size: int = 16, batch_size: int = 64) -> str:
    """A small resolved config with the keys analysis reads."""
    return (
        f"seed: {seed}\n"
        "model:\n  arch: vit_tiny\n"
        f"  patch_size: {patch_size}\n"
        f"head:\n  out_dim: {out_dim}\n"
        f"optim:\n  batch_size: {batch_size}\n  lr: 0.0005\n"
        "teacher:\n  update: ema\n  momentum: 0.996\n"
    )


def write_run(
    run_dir: Path,
    *,
    run_id: str | None = None,
    sweep: str | None = "synthetic",
    varied: dict[str, Any] | None = None,
    seed: int = 0,
    reference: dict[str, float] | None = None,
    records: Sequence[dict[str, Any]] | None = None,
    state: str = "done",
    planned_epochs: int | None = None,
    out_dim: int = 256,
    init: tuple[float, float] = (0.30, 0.30),
    with_run_json: bool = True,
    with_summary: bool | None = None,
    truncate_last_line: bool = False,
    baselines: dict[str, float] | None = None,
    linear_protocol: str | None = None,
) -> Path:
    """Write one run directory.

    Args:
        run_dir: directory to create.
        state: ``pending`` writes only ``run.json``; otherwise ``status.json`` carries it.
        records: metrics records (default: none).
        with_summary: write ``summary.json``; default only when ``state`` is not running.
        truncate_last_line: append half of an extra record without a newline.
        baselines: extra ``init.json`` values (:data:`BASELINE_KEYS`), copied to the summary
            like the trainer does; default none (a run written before they existed).
        linear_protocol: ``summary.json`` ``linear_protocol``; the summary also gets the last
            ``linear_*`` values of ``records`` when they carry any.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id or run_dir.name
    if with_run_json:
        run_info = {
            "run_id": run_id,
            "sweep": sweep,
            "profile": "cpu-small",
            "varied": varied or {},
            "seed": seed,
            "reference": reference or {},
        }
        (run_dir / "run.json").write_text(json.dumps(run_info))
    if state == "pending":
        return run_dir
    records = list(records or [])
    planned = planned_epochs if planned_epochs is not None else len(records)
    (run_dir / "config.yaml").write_text(config_yaml(out_dim, seed))
    init_info = {"knn_teacher_init": init[0], "knn_student_init": init[1], **(baselines or {})}
    (run_dir / "init.json").write_text(json.dumps(init_info))
    text = "".join(json.dumps(record) + "\n" for record in records)
    if truncate_last_line:
        extra = dict(records[-1]) if records else {"epoch": 1}
        extra["epoch"] = int(extra["epoch"]) + 1 if records else 1
        whole = json.dumps(extra)
        text += whole[: len(whole) // 2]
    (run_dir / "metrics.jsonl").write_text(text)
    last_step = int(records[-1]["step"]) if records else 0
    status = {
        "state": state,
        "reason": None if state in ("done", "running") else f"synthetic {state}",
        "epoch": len(records),
        "epochs": planned,
        "step": last_step,
        "updated": "2025-01-01T00:00:00+00:00",
    }
    (run_dir / "status.json").write_text(json.dumps(status))
    if with_summary if with_summary is not None else state != "running":
        summary = {
            "state": state,
            "epochs": len(records),
            "steps": last_step,
            "wall_seconds": sum(float(r.get("epoch_seconds", 0.0)) for r in records),
            **init_info,
            "final": records[-1] if records else None,
            "ln_k": math.log(out_dim),
        }
        for key in LINEAR_KEYS:
            values = [r[key] for r in records if r.get(key) is not None]
            if values:
                summary[key] = values[-1]
        if linear_protocol is not None:
            summary["linear_protocol"] = linear_protocol
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def write_sweep(
    root: Path,
    runs: Sequence[dict[str, Any]],
    *,
    name: str = "synthetic",
    baseline: str | None = None,
    with_sweep_json: bool = True,
) -> Path:
    """Write ``root/sweep.json`` and ``root/runs/<run_id>/`` for each ``runs`` entry.

    Each entry holds :func:`write_run` keyword arguments and must include ``run_id``.
    """
    root.mkdir(parents=True, exist_ok=True)
    run_ids = []
    for spec in runs:
        spec = dict(spec)
        run_id = spec.pop("run_id")
        write_run(root / "runs" / run_id, run_id=run_id, sweep=name, **spec)
        run_ids.append(run_id)
    if with_sweep_json:
        meta = {
            "name": name,
            "file": f"sweeps/{name}.yaml",
            "profile": "cpu-small",
            "baseline": baseline,
            "runs": run_ids,
        }
        (root / "sweep.json").write_text(json.dumps(meta))
    return root


def write_attention(
    run_dir: Path,
    *,
    n_images: int = 4,
    heads: int = 3,
    image_size: int = 16,
    patch_size: int = 4,
    channels: int = 1,
    epoch: int = 3,
    indices: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``run_dir/attention/maps.npz`` as docs/run_directory.md describes it.

    Images are seeded noise; each head's attention is a seeded bump over the patch grid
    (``ceil(image_size / patch_size)`` a side), normalised to sum to 1; the masks keep the
    top patches holding 60 % of the mass.
    """
    rng = np.random.default_rng(seed)
    grid = -(-image_size // patch_size)
    images = rng.random((n_images, image_size, image_size, channels), dtype=np.float32)
    rows, cols = np.mgrid[0:grid, 0:grid]
    maps = {}
    for name in ("teacher", "student"):
        centres = rng.random((n_images, heads, 2)) * grid
        distance = ((rows - centres[..., :1, None]) ** 2 + (cols - centres[..., 1:, None]) ** 2)
        bumps = np.exp(-distance / 2.0).astype(np.float32)
        maps[name] = bumps / bumps.sum(axis=(-2, -1), keepdims=True)
        flat = maps[name].reshape(n_images, heads, -1)
        order = np.argsort(-flat, axis=-1, kind="stable")
        ranked = np.take_along_axis(flat, order, axis=-1)
        kept = np.zeros(flat.shape, dtype=bool)
        np.put_along_axis(kept, order, np.cumsum(ranked, axis=-1) - ranked < 0.6, axis=-1)
        maps[f"{name}_mask"] = kept.reshape(maps[name].shape)
    out = run_dir / "attention"
    out.mkdir(parents=True, exist_ok=True)
    positions = list(indices) if indices is not None else list(range(0, 3 * n_images, 3))
    np.savez(out / "maps.npz", images=images, indices=np.asarray(positions, dtype=np.int64),
             patch_size=np.asarray(patch_size, dtype=np.int64),
             epoch=np.asarray(epoch, dtype=np.int64), **maps)
    return out / "maps.npz"
