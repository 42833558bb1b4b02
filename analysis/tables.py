"""The per-sweep ablation table: one row per sweep point, seeds aggregated.

For each point (the runs sharing the values of every varied key), after the point's key
columns and ``is_baseline``:

- ``teacher_knn_mean``/``_std`` and ``student_knn_mean``/``_std``: final kNN top-1 in percent
  (the last finite value of each run), mean and sample standard deviation (ddof 1; NaN for a
  single value) over seeds. Only *finished* runs (done or collapsed) are aggregated when the
  point has any; otherwise the latest values of the unfinished runs are, and ``state`` says so.
  ``n_aggregated`` counts the runs that entered the mean, ``n_runs`` all runs of the point,
  ``seeds`` lists their seeds.
- ``paper_<metric>``: the paper's value from ``run.json`` ``reference`` (percent for
  accuracies, nats for ``teacher_entropy`` and ``kl_teacher_student``).
- ``delta_baseline``: teacher kNN mean minus the baseline point's, in percentage points. The
  baseline point is the one holding the sweep's baseline run (``sweep.json`` ``baseline``, else
  the first run).
- ``teacher_linear_mean``/``_std`` and ``student_linear_mean``/``_std``: final linear-probe
  top-1 in percent (last finite ``linear_*`` of each run), aggregated like kNN.
- Baselines, in percent, means over the same runs as the kNN (NaN when no run has them, e.g.
  run directories written before they existed):

  - ``init_teacher_knn``, ``init_teacher_linear``: the randomly initialised teacher
    (``init.json``), the point's own "no training" reference;
  - ``pixels_knn``, ``pixels_linear``: kNN and linear probe on the raw (normalised,
    flattened) evaluation images, the data set's "no network" reference (the same for every
    point that evaluates on the same split, so normally one value repeated down the column).

- ``delta_init``: teacher kNN mean minus ``init_teacher_knn`` (percentage points);
  ``below_init``: True when it is negative, i.e. training made the teacher's features worse
  than random ones. Such a point is marked (``▼ below random init``) and its ``delta_baseline``
  cell says so; when the baseline point itself is below random init, every other point's
  ``delta_baseline`` cell says that instead of reading as a plain improvement.
- Collapse diagnostics, mean and std over the same runs, in nats: ``final_teacher_entropy``
  (h(Pt)), ``final_teacher_batch_entropy`` (entropy of the batch-mean target) and
  ``final_kl_teacher_student`` (KL(Pt‖Ps)), each ``_mean``/``_std``, from each run's last
  metrics record; ``ln_k``: ln K of the point's head (the uniform-collapse level).
  :attr:`AblationTable.show_collapse` says whether Markdown, LaTeX and HTML show them.
- ``state``: the runs' state when they agree, else counts such as ``done×2, running×1``.
- ``epochs_done``/``epochs_planned``: fewest epochs completed over the runs / most planned.
- ``compute_hours``: sum of every run's ``epoch_seconds``, in hours.
- ``linear_protocol``: the runs' linear-probe protocol (``fast``/``paper``), joined when they
  differ; empty when unknown.

CSV carries every column above. Markdown, LaTeX and HTML show, in this order: the point keys,
seeds, teacher/student kNN (%), paper kNN (%), teacher/student linear (%), paper linear (%)
(each paper column only where the sweep file references it), random-init teacher kNN and
linear (%), raw-pixel kNN and linear (%), "teacher kNN vs random init" (``+16.90 pp`` or
``▼ below random init (-0.50 pp)``), Δ teacher vs baseline (pp); then, only when the sweep is
collapse-related (it references ``teacher_entropy`` or ``kl_teacher_student``, or one of its
runs is classified as collapsed), teacher entropy, paper teacher entropy, batch entropy, KL,
paper KL (nats) and ln K; then any other paper value, state, epochs and compute (h).

Rendering to Markdown, LaTeX and CSV is in :mod:`analysis.table_format`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.collapse import ONE_DIM, UNIFORM
from analysis.load import SweepResults
from analysis.state import DONE, STATES

#: States whose kNN is a final value.
FINISHED_STATES = frozenset({DONE, UNIFORM, ONE_DIM})

#: Column used as the point key when a sweep varies nothing (all runs are seeds of one point).
SINGLE_POINT_KEY = "point"

#: Paper reference keys of the collapse diagnostics (nats).
COLLAPSE_REFERENCE_KEYS = ("teacher_entropy", "kl_teacher_student")

#: ``SweepResults.runs`` columns of the final collapse diagnostics (``<column>_mean``/``_std``
#: here).
DIAGNOSTICS = ("final_teacher_entropy", "final_teacher_batch_entropy", "final_kl_teacher_student")

#: (table column, ``SweepResults.runs`` column) of the baselines, both in percent in the table.
BASELINES = (
    ("init_teacher_knn", "knn_teacher_init"),
    ("init_teacher_linear", "linear_teacher_init"),
    ("pixels_knn", "knn_pixels"),
    ("pixels_linear", "linear_pixels"),
)


@dataclass(frozen=True)
class AblationTable:
    """A built ablation table.

    Attributes:
        sweep_name: name of the sweep.
        point_keys: columns of ``frame`` that identify a point (varied keys, or ``run_id``).
        reference_keys: paper metrics present (``frame`` has ``paper_<key>`` for each).
        frame: one row per point, in sweep order; numeric columns are raw (not formatted).
        show_collapse: whether the formatted tables show the collapse diagnostics (the sweep
            references them or has a collapsed run; module docstring).
    """

    sweep_name: str
    point_keys: tuple[str, ...]
    reference_keys: tuple[str, ...]
    frame: pd.DataFrame
    show_collapse: bool = False


def _mean_std(values: pd.Series) -> tuple[float, float]:
    finite = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return float(np.mean(finite)), std


def _mean(values: pd.Series) -> float:
    return _mean_std(values)[0]


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
    row.update(_probe_and_baselines(aggregated, teacher_mean))
    for column in DIAGNOSTICS:
        row[f"{column}_mean"], row[f"{column}_std"] = _mean_std(aggregated[column])
    row["ln_k"] = _first_finite(runs["ln_k"])
    row["state"] = combined_state([str(state) for state in runs["state"]])
    row["epochs_done"] = int(runs["epochs_done"].min())
    row["epochs_planned"] = float(np.nanmax(planned)) if np.isfinite(planned).any() else np.nan
    row["compute_hours"] = float(np.nansum(hours)) if np.isfinite(hours).any() else np.nan
    protocols = dict.fromkeys(str(value) for value in runs["linear_protocol"] if pd.notna(value))
    row["linear_protocol"] = ",".join(protocols)
    return row


def _probe_and_baselines(aggregated: pd.DataFrame, teacher_knn_mean: float) -> dict[str, Any]:
    """Linear-probe means, the baselines and the below-random-init flag of one point."""
    row: dict[str, Any] = {}
    row["teacher_linear_mean"], row["teacher_linear_std"] = _mean_std(
        aggregated["linear_teacher"] * 100.0)
    row["student_linear_mean"], row["student_linear_std"] = _mean_std(
        aggregated["linear_student"] * 100.0)
    for name, column in BASELINES:
        row[name] = _mean(pd.to_numeric(aggregated[column], errors="coerce") * 100.0)
    row["delta_init"] = teacher_knn_mean - row["init_teacher_knn"]
    # NaN (no init kNN, or no final kNN yet) compares False: unknown is not flagged.
    row["below_init"] = bool(row["delta_init"] < 0)
    return row


def _collapse_related(runs: pd.DataFrame, reference_keys: tuple[str, ...]) -> bool:
    """Whether the sweep references a collapse diagnostic or has a collapsed run."""
    if any(key in COLLAPSE_REFERENCE_KEYS for key in reference_keys):
        return True
    return bool((runs["collapse"].fillna("healthy") != "healthy").any())


def build_table(sweep: SweepResults) -> AblationTable:
    """Aggregate ``sweep.runs`` into one row per sweep point (module docstring).

    ``sweep.runs`` holds the runs of the sweep's current expansion only
    (``SweepLayout.current_run_dirs``, as for the claims and the plots): a run directory left
    by an earlier expansion of the file is not a seed of the point whose varied values it
    shares."""
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
        show_collapse=_collapse_related(runs, reference_keys),
    )
