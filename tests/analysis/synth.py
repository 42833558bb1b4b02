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
    """
    ln_k = math.log(out_dim)
    records = []
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
                "teacher_batch_entropy": min(ln_k, entropy + 1.0),
                "kl_teacher_student": kl,
                "knn_teacher": knn_teacher_final * scale,
                "knn_student": knn_student_final * scale,
                "images_per_s": images_per_s,
                "epoch_seconds": epoch_seconds,
                "peak_memory_mb": 2048.0,
            }
        )
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
) -> Path:
    """Write one run directory.

    Args:
        run_dir: directory to create.
        state: ``pending`` writes only ``run.json``; otherwise ``status.json`` carries it.
        records: metrics records (default: none).
        with_summary: write ``summary.json``; default only when ``state`` is not running.
        truncate_last_line: append half of an extra record without a newline.
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
    init_info = {"knn_teacher_init": init[0], "knn_student_init": init[1]}
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
