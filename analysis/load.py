"""Load a sweep directory into tidy pandas DataFrames.

:func:`load_results` returns a :class:`SweepResults` holding

- ``frame``: one row per (run, epoch) with columns ``run_id``, ``sweep``, one column per varied
  dotted key (e.g. ``teacher.update``), ``seed``, ``epoch``, every ``metrics.jsonl`` key,
  ``ref_<metric>`` for each paper reference value (percent), ``state``, ``ln_k``, and the
  run's baselines (:data:`BASELINE_COLUMNS`: ``knn_teacher_init``, ``knn_student_init``,
  ``linear_teacher_init``, ``linear_student_init``, ``knn_pixels``, ``linear_pixels``; 0-1,
  NaN for runs written before a baseline existed). A run with no metrics yet (pending, or
  running its first epoch) has one row with ``epoch`` NaN so that it is not lost.
- ``runs``: one row per run (see :data:`RUN_COLUMNS`), with the final kNN and linear-probe
  values, the baselines, the final collapse diagnostics, compute spent, throughput and collapse
  epoch, which tables and plots use.

Final values: ``knn_*`` and ``linear_*`` are the last finite value of the metric in
``metrics.jsonl`` (``linear_*`` falls back to ``summary.json``'s when the metrics hold none);
``final_teacher_entropy``, ``final_teacher_batch_entropy`` and ``final_kl_teacher_student`` are
the last metrics record's (nats; NaN when it has none).

Parsed runs are cached under ``SWEEP_DIR/.analysis_cache`` (:mod:`analysis.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from analysis.cache import CacheContent, fingerprint, read_cache, sweep_fingerprint, write_cache
from analysis.parallel import read_runs
from analysis.run_reader import RunData
from analysis.sweepdir import SweepLayout, locate
from dino_ablate.contract.points import SEED

#: Run-level columns of ``SweepResults.runs`` besides the varied keys and ``ref_*``.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "sweep",
    "seed",
    "state",
    "trainer_state",
    "status_reason",
    "epochs_done",
    "epochs_planned",
    "final_epoch",
    "knn_teacher",
    "knn_student",
    "knn_teacher_init",
    "knn_student_init",
    "linear_teacher",
    "linear_student",
    "linear_teacher_init",
    "linear_student_init",
    "knn_pixels",
    "linear_pixels",
    "linear_protocol",
    "final_teacher_entropy",
    "final_teacher_batch_entropy",
    "final_kl_teacher_student",
    "compute_hours",
    "images_per_s",
    "ln_k",
    "collapse",
    "collapse_epoch",
    "truncated_last_line",
    "run_dir",
)


#: Run-level baselines (0-1) repeated over each run's rows of ``SweepResults.frame``.
BASELINE_COLUMNS: tuple[str, ...] = (
    "knn_teacher_init",
    "knn_student_init",
    "linear_teacher_init",
    "linear_student_init",
    "knn_pixels",
    "linear_pixels",
)

#: Collapse diagnostics whose last-record value is a run's final one (``final_<key>``).
FINAL_DIAGNOSTICS: tuple[str, ...] = (
    "teacher_entropy",
    "teacher_batch_entropy",
    "kl_teacher_student",
)


@dataclass(frozen=True)
class SweepResults:
    """A loaded sweep.

    Attributes:
        root: the directory that was loaded.
        name: ``sweep.json`` name, else the first run's sweep name, else the directory name.
        frame: the tidy per-epoch DataFrame (module docstring).
        runs: one row per run, in sweep order.
        varied_keys: dotted keys that define sweep points, in first-seen order.
        baseline_run_id: the run ``sweep.json`` names as baseline, else the first run.
        grouped_by_run: True when no run has a ``run.json`` (plain trains): each run is its own
            point instead of all runs forming one point.
        sweep_meta: the content of ``sweep.json`` (``file``, ``profile``, ...), empty if absent.
    """

    root: Path
    name: str
    frame: pd.DataFrame
    runs: pd.DataFrame
    varied_keys: tuple[str, ...]
    baseline_run_id: str
    grouped_by_run: bool
    sweep_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def point_keys(self) -> list[str]:
        """Columns that identify a sweep point (seeds of one point share them)."""
        if self.grouped_by_run:
            return ["run_id"]
        return list(self.varied_keys)


def _unique_keys(dicts: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for mapping in dicts:
        keys.update(dict.fromkeys(mapping))
    return list(keys)


def _object_array(values: Sequence[Any]) -> npt.NDArray[Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _last_finite(values: npt.NDArray[Any] | None) -> tuple[float, int]:
    """Last finite value of a float column and its position (NaN, -1 when none)."""
    if values is None or values.dtype == object:
        return float("nan"), -1
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return float("nan"), -1
    return float(values[finite[-1]]), int(finite[-1])


def _last_value(values: npt.NDArray[Any] | None) -> float:
    """The last entry of a float column (NaN when absent, empty or not numeric)."""
    if values is None or values.dtype == object or values.size == 0:
        return float("nan")
    return float(values[-1])


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _run_row(run: RunData) -> dict[str, Any]:
    columns = run.columns
    knn_teacher, position = _last_finite(columns.get("knn_teacher"))
    knn_student, _ = _last_finite(columns.get("knn_student"))
    linear_teacher, _ = _last_finite(columns.get("linear_teacher"))
    linear_student, _ = _last_finite(columns.get("linear_student"))
    if not np.isfinite(linear_teacher):
        linear_teacher = _or_nan(run.linear_teacher_final)
    if not np.isfinite(linear_student):
        linear_student = _or_nan(run.linear_student_final)
    epochs = columns.get("epoch")
    final_epoch = float(epochs[position]) if epochs is not None and position >= 0 else np.nan
    seconds = _float_column(columns, "epoch_seconds")
    throughput = _float_column(columns, "images_per_s")
    return {
        "run_id": run.run_id,
        "sweep": run.sweep,
        "seed": run.seed,
        "state": run.state,
        "trainer_state": run.trainer_state,
        "status_reason": run.status_reason,
        "epochs_done": run.n_epochs,
        "epochs_planned": run.epochs_planned,
        "final_epoch": final_epoch,
        "knn_teacher": knn_teacher,
        "knn_student": knn_student,
        "knn_teacher_init": run.knn_teacher_init,
        "knn_student_init": run.knn_student_init,
        "linear_teacher": linear_teacher,
        "linear_student": linear_student,
        **{key: _or_nan(getattr(run, key)) for key in BASELINE_COLUMNS[2:]},
        "linear_protocol": run.linear_protocol,
        **{f"final_{key}": _last_value(columns.get(key)) for key in FINAL_DIAGNOSTICS},
        # nansum: an epoch without a timing does not hide the others; a run without any is NaN.
        "compute_hours": float(np.nansum(seconds)) / 3600.0 if seconds is not None else np.nan,
        # Median over epochs: the first epoch carries warm-up and compilation time.
        "images_per_s": _nanmedian(throughput) if throughput is not None else np.nan,
        "ln_k": run.ln_k,
        "collapse": run.collapse.kind,
        "collapse_epoch": run.collapse.start_epoch,
        "truncated_last_line": run.truncated_last_line,
        "run_dir": run.run_dir,
    }


def _float_column(columns: dict[str, npt.NDArray[Any]], key: str) -> npt.NDArray[Any] | None:
    """A numeric metric column with at least one value, None otherwise."""
    values = columns.get(key)
    if values is None or values.dtype == object or values.size == 0:
        return None
    return values


def _nanmedian(values: npt.NDArray[Any]) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _infer(values: npt.NDArray[Any]) -> pd.Series:
    """Object values as a Series of the narrowest dtype (numbers stay numeric for plots)."""
    return pd.Series(values, dtype=object).infer_objects()


def _runs_frame(
    runs: Sequence[RunData], varied_keys: list[str], ref_keys: list[str]
) -> pd.DataFrame:
    rows = [_run_row(run) for run in runs]
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for position, key in enumerate(varied_keys):
        values = _object_array([run.varied.get(key) for run in runs])
        frame.insert(2 + position, key, _infer(values))
    for key in ref_keys:
        frame[f"ref_{key}"] = [run.reference.get(key, np.nan) for run in runs]
    return frame


def _epoch_frame(
    runs: Sequence[RunData], varied_keys: list[str], ref_keys: list[str]
) -> pd.DataFrame:
    """Concatenate per-run metric columns and repeat run-level values over each run's rows."""
    counts = np.array([max(run.n_epochs, 1) for run in runs])
    metric_keys = _unique_keys([run.columns for run in runs])
    if "epoch" not in metric_keys:
        metric_keys.insert(0, "epoch")

    def repeat(values: Sequence[Any]) -> npt.NDArray[Any]:
        return np.repeat(_object_array(values), counts)

    data: dict[str, Any] = {
        "run_id": repeat([run.run_id for run in runs]),
        "sweep": repeat([run.sweep for run in runs]),
    }
    for key in varied_keys:
        data[key] = _infer(repeat([run.varied.get(key) for run in runs]))
    data["seed"] = _infer(repeat([run.seed for run in runs]))
    for key in metric_keys:
        parts = []
        for run, count in zip(runs, counts, strict=True):
            column = run.columns.get(key)
            parts.append(column if column is not None and column.size else np.full(count, np.nan))
        data[key] = np.concatenate(parts)
    for key in ref_keys:
        data[f"ref_{key}"] = np.repeat([run.reference.get(key, np.nan) for run in runs], counts)
    data["state"] = repeat([run.state for run in runs])
    for key in ("ln_k", *BASELINE_COLUMNS):
        values = [getattr(run, key) for run in runs]
        data[key] = np.repeat(np.array([np.nan if v is None else v for v in values]), counts)
    return pd.DataFrame(data)


def assemble(layout: SweepLayout, runs: Sequence[RunData]) -> SweepResults:
    """Build a :class:`SweepResults` from parsed runs, in ``layout`` order."""
    # A sweep's `seeds` axis puts `seed` into run.json's `varied` (sweep.py); it is the `seed`
    # column of both frames, never a point key: the seeds of a point are aggregated.
    varied_keys = [k for k in _unique_keys([run.varied for run in runs]) if k != SEED]
    ref_keys = _unique_keys([run.reference for run in runs])
    run_ids = [run.run_id for run in runs]
    baseline = layout.named_baseline
    if baseline is None or baseline not in run_ids:
        baseline = run_ids[0]
    name = layout.name or next((run.sweep for run in runs if run.sweep), None)
    return SweepResults(
        root=layout.root,
        name=name or layout.root.resolve().name,
        frame=_epoch_frame(runs, varied_keys, ref_keys),
        runs=_runs_frame(runs, varied_keys, ref_keys),
        varied_keys=tuple(varied_keys),
        baseline_run_id=baseline,
        grouped_by_run=not any(run.has_run_json for run in runs),
        sweep_meta=dict(layout.sweep_meta),
    )


def load_results(path: str | Path, *, use_cache: bool = True) -> SweepResults:
    """Load every run under ``path`` (a sweep, a run, or a directory of runs).

    Args:
        path: the sweep directory (see :func:`analysis.sweepdir.locate`).
        use_cache: read and update ``path/.analysis_cache``; False reads every file afresh.

    Raises:
        analysis.sweepdir.NotASweepDirectory: ``path`` holds no run directories.
    """
    layout = locate(path)
    stamps = [(str(run_dir), fingerprint(run_dir)) for run_dir in layout.current_run_dirs]
    sweep_key = (sweep_fingerprint(layout.root), tuple(stamps), str(layout.root))
    cached = read_cache(layout.root) if use_cache else CacheContent()
    if cached.sweep_key == sweep_key and isinstance(cached.sweep, SweepResults):
        return cached.sweep
    stale = [
        Path(run_dir)
        for run_dir, stamp in stamps
        if (hit := cached.runs.get(run_dir)) is None or hit[0] != stamp
    ]
    parsed = {str(run_dir): run for run_dir, run in zip(stale, read_runs(stale), strict=True)}
    fresh: dict[str, tuple[Any, RunData]] = {}
    runs = []
    for run_dir, stamp in stamps:
        run = parsed[run_dir] if run_dir in parsed else cached.runs[run_dir][1]
        fresh[run_dir] = (stamp, run)
        runs.append(run)
    sweep = assemble(layout, runs)
    if use_cache:
        write_cache(layout.root, CacheContent(runs=fresh, sweep_key=sweep_key, sweep=sweep))
    return sweep


def load_frame(path: str | Path, *, use_cache: bool = True) -> pd.DataFrame:
    """The tidy per-epoch DataFrame of :func:`load_results`."""
    return load_results(path, use_cache=use_cache).frame
