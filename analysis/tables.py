"""The per-sweep ablation table: one row per sweep point, seeds aggregated.

For each point (the runs sharing the values of every varied key):

- ``teacher_knn_mean``/``_std`` and ``student_knn_mean``/``_std``: final kNN top-1 in percent
  (the last finite value of each run), mean and sample standard deviation (ddof 1; NaN for a
  single value) over seeds. Only *finished* runs (done or collapsed) are aggregated when the
  point has any; otherwise the latest values of the unfinished runs are, and ``state`` says so.
  ``n_aggregated`` counts the runs that entered the mean, ``n_runs`` all runs of the point.
- ``paper_<metric>``: the paper's value from ``run.json`` ``reference`` (percent).
- ``delta_baseline``: teacher kNN mean minus the baseline point's, in percentage points. The
  baseline point is the one holding the sweep's baseline run (``sweep.json`` ``baseline``, else
  the first run).
- ``state``: the runs' state when they agree, else counts such as ``done×2, running×1``.
- ``epochs_done``/``epochs_planned``: fewest epochs completed over the runs / most planned.
- ``compute_hours``: sum of every run's ``epoch_seconds``, in hours.

Rendering to Markdown, LaTeX and CSV is in :mod:`analysis.table_format`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Sweep
from analysis.state import DONE, STATES

#: States whose kNN is a final value.
FINISHED_STATES = frozenset({DONE, "collapsed-uniform", "collapsed-one-dim"})

#: Column used as the point key when a sweep varies nothing (all runs are seeds of one point).
SINGLE_POINT_KEY = "point"


@dataclass(frozen=True)
class AblationTable:
    """A built ablation table.

    Attributes:
        sweep_name: name of the sweep.
        point_keys: columns of ``frame`` that identify a point (varied keys, or ``run_id``).
        reference_keys: paper metrics present (``frame`` has ``paper_<key>`` for each).
        frame: one row per point, in sweep order; numeric columns are raw (not formatted).
    """

    sweep_name: str
    point_keys: tuple[str, ...]
    reference_keys: tuple[str, ...]
    frame: pd.DataFrame


def _mean_std(values: pd.Series) -> tuple[float, float]:
    finite = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return float(np.mean(finite)), std


def _first_finite(values: pd.Series) -> float:
    """The paper value of a point (every seed carries the same one)."""
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = array[np.isfinite(array)]
    return float(finite[0]) if finite.size else float("nan")


def combined_state(states: list[str]) -> str:
    """One state when all agree, else ``state×count`` parts in :data:`STATES` order."""
    counts = Counter(states)
    if len(counts) == 1:
        return states[0]
    order = {state: index for index, state in enumerate(STATES)}
    parts = sorted(counts, key=lambda state: (order.get(state, len(order)), state))
    return ", ".join(f"{state}×{counts[state]}" for state in parts)


def _point_row(runs: pd.DataFrame, reference_keys: tuple[str, ...]) -> dict[str, Any]:
    finished = runs[runs["state"].isin(FINISHED_STATES)]
    aggregated = finished if len(finished) else runs
    teacher_mean, teacher_std = _mean_std(aggregated["knn_teacher"] * 100.0)
    student_mean, student_std = _mean_std(aggregated["knn_student"] * 100.0)
    n_aggregated = int(np.isfinite(aggregated["knn_teacher"].to_numpy(dtype=float)).sum())
    planned = runs["epochs_planned"].to_numpy(dtype=float, na_value=np.nan)
    hours = runs["compute_hours"].to_numpy(dtype=float, na_value=np.nan)
    row: dict[str, Any] = {
        "n_runs": len(runs),
        "n_aggregated": n_aggregated,
        "seeds": ",".join(str(seed) for seed in runs["seed"] if pd.notna(seed)),
        "teacher_knn_mean": teacher_mean,
        "teacher_knn_std": teacher_std,
        "student_knn_mean": student_mean,
        "student_knn_std": student_std,
    }
    for key in reference_keys:
        row[f"paper_{key}"] = _first_finite(runs[f"ref_{key}"])
    row["state"] = combined_state([str(state) for state in runs["state"]])
    row["epochs_done"] = int(runs["epochs_done"].min())
    row["epochs_planned"] = float(np.nanmax(planned)) if np.isfinite(planned).any() else np.nan
    row["compute_hours"] = float(np.nansum(hours)) if np.isfinite(hours).any() else np.nan
    return row


def build_table(sweep: Sweep) -> AblationTable:
    """Aggregate ``sweep.runs`` into one row per sweep point (module docstring)."""
    runs = sweep.runs.copy()
    point_keys = sweep.point_keys
    if not point_keys:
        runs[SINGLE_POINT_KEY] = sweep.name
        point_keys = [SINGLE_POINT_KEY]
    reference_keys = tuple(
        column.removeprefix("ref_") for column in runs.columns if column.startswith("ref_")
    )
    baseline_runs = runs[runs["run_id"] == sweep.baseline_run_id]
    rows = []
    baseline_index = 0
    groups = runs.groupby(point_keys, sort=False, dropna=False)
    for index, (values, group) in enumerate(groups):
        key_values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(point_keys, key_values, strict=True))
        row.update(_point_row(group, reference_keys))
        row["is_baseline"] = bool(len(baseline_runs)) and baseline_runs.index[0] in group.index
        if row["is_baseline"]:
            baseline_index = index
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["epochs_planned"] = frame["epochs_planned"].astype("Int64")
    frame.insert(len(point_keys), "is_baseline", frame.pop("is_baseline"))
    baseline_mean = frame["teacher_knn_mean"].iloc[baseline_index]
    frame.insert(
        frame.columns.get_loc("student_knn_std") + 1 + len(reference_keys),
        "delta_baseline",
        frame["teacher_knn_mean"] - baseline_mean,
    )
    return AblationTable(
        sweep_name=sweep.name,
        point_keys=tuple(point_keys),
        reference_keys=reference_keys,
        frame=frame,
    )
