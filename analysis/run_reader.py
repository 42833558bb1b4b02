"""Read one run directory (docs/run_directory.md) into a :class:`RunData`.

Every file may be missing: a pending run holds only ``run.json``, a running one has no
``summary.json``, a plain ``dino-ablate train`` has no ``run.json``. A small JSON file caught
mid-write reads as missing (with a warning) rather than failing the whole sweep.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from analysis.state import display_state
from dino_ablate.contract import (
    CONFIG_FILE,
    INIT_FILE,
    METRICS_FILE,
    RUN_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    CollapseResult,
    detect,
    read_json,
    read_metrics,
)

logger = logging.getLogger(__name__)

# libyaml's safe loader is ~10x faster than the pure-Python one; both build plain types only.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class RunData:
    """What analysis needs from one run directory.

    Attributes:
        run_dir: the directory path, as a string.
        run_id: ``run.json`` ``run_id``, else the directory name.
        sweep: sweep name from ``run.json``, None for a plain train.
        profile: ``run.json`` profile, None when absent.
        varied: dotted config key -> value of this sweep point; lists and mappings are turned
            into JSON strings so that points can be grouped.
        seed: ``run.json`` seed, else the config's top-level ``seed``.
        reference: paper metric name -> value in percent (e.g. ``{"knn": 72.8}``).
        trainer_state: ``status.json`` state (``summary.json`` when status is missing).
        state: displayed state (:func:`analysis.state.display_state`).
        status_reason: ``status.json`` reason.
        epochs_planned: ``status.json`` epochs (planned), None when unknown.
        ln_k: ln(config.head.out_dim), from ``summary.json`` or ``config.yaml``.
        knn_teacher_init, knn_student_init: kNN top-1 (0-1) at random initialisation.
        linear_teacher_init, linear_student_init: linear-probe top-1 (0-1) at random
            initialisation (``init.json``; None for runs written before the probe existed).
        knn_pixels, linear_pixels: kNN and linear-probe top-1 (0-1) on the raw (normalised,
            flattened) evaluation images: the data set's no-learning baseline.
        linear_teacher_final, linear_student_final: ``summary.json`` final probe, used when
            ``metrics.jsonl`` holds no finite ``linear_*`` value.
        linear_protocol: ``summary.json`` ``linear_protocol`` (``fast`` or ``paper``).
        columns: per-epoch metrics, one array of shape ``(n_epochs,)`` per ``metrics.jsonl`` key.
        truncated_last_line: ``metrics.jsonl`` ended in a partial line that was dropped.
        collapse: collapse classification of the metrics.
    """

    run_dir: str
    run_id: str
    sweep: str | None = None
    profile: str | None = None
    varied: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    reference: dict[str, float] = field(default_factory=dict)
    trainer_state: str | None = None
    state: str = "pending"
    status_reason: str | None = None
    epochs_planned: int | None = None
    ln_k: float | None = None
    knn_teacher_init: float | None = None
    knn_student_init: float | None = None
    linear_teacher_init: float | None = None
    linear_student_init: float | None = None
    knn_pixels: float | None = None
    linear_pixels: float | None = None
    linear_teacher_final: float | None = None
    linear_student_final: float | None = None
    linear_protocol: str | None = None
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    truncated_last_line: bool = False
    collapse: CollapseResult = field(default_factory=lambda: CollapseResult("healthy"))
    has_run_json: bool = False

    @property
    def n_epochs(self) -> int:
        """Number of epoch records read from ``metrics.jsonl``."""
        epochs = self.columns.get("epoch")
        return 0 if epochs is None else int(epochs.size)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        logger.warning("%s: not UTF-8 text (%s); ignored", path, error)
        return None
    try:
        value = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError) as error:  # RecursionError: nested too deep
        logger.warning("%s: not valid YAML (%s); ignored", path, error)
        return None
    return value if isinstance(value, dict) else None


def hashable(value: Any) -> Any:
    """Lists and mappings become JSON text so that sweep points can be grouped on them."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _optional_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def records_to_columns(records: list[dict[str, Any]]) -> dict[str, npt.NDArray[Any]]:
    """Turn per-epoch records into one array per key, shape ``(len(records),)``.

    Numeric keys become float64 arrays (missing or null values are NaN); keys holding anything
    else become object arrays (missing values are None).
    """
    if not records:
        return {}
    uniform = _uniform_numeric_columns(records)
    if uniform is not None:
        return uniform
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    columns: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        values = [record.get(key) for record in records]
        try:
            columns[key] = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            columns[key] = column
    return columns


def _uniform_numeric_columns(
    records: list[dict[str, Any]],
) -> dict[str, npt.NDArray[Any]] | None:
    """Fast path for the normal file: every record has the same keys and numeric values.

    Returns None when that does not hold, so the general path is taken.
    """
    keys = tuple(records[0])
    width = len(keys)
    if width == 0 or any(len(record) != width for record in records):
        return None
    getter = operator.itemgetter(*keys) if width > 1 else (lambda record: (record[keys[0]],))
    try:
        table = np.array([getter(record) for record in records], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    return {key: np.ascontiguousarray(table[:, index]) for index, key in enumerate(keys)}


def _ln_k(summary: dict[str, Any] | None, run_dir: Path) -> float | None:
    if summary is not None and (ln_k := _optional_float(summary.get("ln_k"))) is not None:
        return ln_k
    config = _read_config(run_dir / CONFIG_FILE)
    head = config.get("head") if config else None
    out_dim = head.get("out_dim") if isinstance(head, dict) else None
    if isinstance(out_dim, int) and out_dim >= 1:
        return math.log(out_dim)
    return None


def _collapse(columns: dict[str, npt.NDArray[Any]], ln_k: float | None) -> CollapseResult:
    entropy = columns.get("teacher_entropy")
    kl = columns.get("kl_teacher_student")
    if entropy is None or kl is None or entropy.dtype == object or kl.dtype == object:
        return CollapseResult("healthy")
    epochs = columns.get("epoch")
    epoch_list = None
    if epochs is not None and epochs.dtype != object and np.isfinite(epochs).all():
        epoch_list = [int(epoch) for epoch in epochs]
    return detect(entropy, kl, ln_k, epochs=epoch_list)


def read_run(run_dir: Path) -> RunData:
    """Read every contract file of ``run_dir`` that exists."""
    run_info = read_json(run_dir / RUN_FILE)
    status = read_json(run_dir / STATUS_FILE)
    summary = read_json(run_dir / SUMMARY_FILE)
    # summary.json copies the init.json values; init.json wins where both hold a key.
    init = {**(summary or {}), **(read_json(run_dir / INIT_FILE) or {})}
    metrics = read_metrics(run_dir / METRICS_FILE)

    run = RunData(run_dir=str(run_dir), run_id=run_dir.name)
    if run_info is not None:
        run.has_run_json = True
        run.run_id = str(run_info.get("run_id") or run_dir.name)
        run.sweep = run_info.get("sweep")
        run.profile = run_info.get("profile")
        run.varied = {str(k): hashable(v) for k, v in (run_info.get("varied") or {}).items()}
        run.seed = _optional_int(run_info.get("seed"))
        reference = run_info.get("reference") or {}
        run.reference = {
            str(k): float(v) for k, v in reference.items() if _optional_float(v) is not None
        }
    run.columns = records_to_columns(metrics.records)
    run.truncated_last_line = metrics.truncated_last_line
    run.knn_teacher_init = _optional_float(init.get("knn_teacher_init"))
    run.knn_student_init = _optional_float(init.get("knn_student_init"))
    run.linear_teacher_init = _optional_float(init.get("linear_teacher_init"))
    run.linear_student_init = _optional_float(init.get("linear_student_init"))
    run.knn_pixels = _optional_float(init.get("knn_pixels"))
    run.linear_pixels = _optional_float(init.get("linear_pixels"))
    if summary is not None:
        run.linear_teacher_final = _optional_float(summary.get("linear_teacher"))
        run.linear_student_final = _optional_float(summary.get("linear_student"))
        protocol = summary.get("linear_protocol")
        run.linear_protocol = protocol if isinstance(protocol, str) else None
    run.ln_k = _ln_k(summary, run_dir)
    if run.seed is None and run_info is None:
        config = _read_config(run_dir / CONFIG_FILE)
        run.seed = _optional_int(config.get("seed")) if config else None
    trainer_status = status or summary
    if trainer_status is not None:
        run.trainer_state = trainer_status.get("state")
        run.epochs_planned = _optional_int(trainer_status.get("epochs"))
    if status is not None:
        run.status_reason = status.get("reason")
    run.collapse = _collapse(run.columns, run.ln_k)
    run.state = display_state(run.trainer_state, run.n_epochs, run.collapse)
    return run
