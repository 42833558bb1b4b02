"""`dino-ablate status SWEEP_DIR`: state, epoch progress and latest metrics of every run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dino_ablate.errors import ConfigError

METRIC_COLUMNS = ("loss", "knn_teacher", "knn_student", "teacher_entropy")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "status", help="show the state of every run of a sweep directory",
        description="State per run (pending / queued / running / done / diverged / failed), "
        "epoch progress and latest metrics. For SLURM runs the recorded job ids are looked up "
        "with squeue (and sacct or its shim).")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=run)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    from dino_ablate.contract import RUNS_SUBDIR
    from dino_ablate.runs import ask_slurm, run_dir_of, run_state

    run_ids = _sweep_run_ids(sweep_dir)
    runs_root = sweep_dir / RUNS_SUBDIR
    extra = sorted(p.name for p in runs_root.iterdir() if p.is_dir() and p.name not in run_ids) \
        if runs_root.is_dir() else []
    job_states, slurm_error = ask_slurm([run_dir_of(sweep_dir, r) for r in run_ids + extra])
    rows = []
    for run_id in run_ids + extra:
        st = run_state(run_dir_of(sweep_dir, run_id), job_states, slurm_error)
        rows.append({"run_id": run_id, "state": st.state, "epoch": st.epoch, "epochs": st.epochs,
                     "job_id": st.job_id, "job_state": st.job_state, "reason": st.reason,
                     "in_sweep": run_id in run_ids,
                     "latest": {k: st.latest.get(k) for k in METRIC_COLUMNS}})
    return rows


def _sweep_run_ids(sweep_dir: Path) -> list[str]:
    """The run ids sweep.json lists; a damaged sweep.json is one ConfigError naming it."""
    from dino_ablate.contract import SWEEP_FILE
    from dino_ablate.safeload import read_json_object

    file = sweep_dir / SWEEP_FILE
    if not file.is_file():
        raise ConfigError(f"{sweep_dir}: no {SWEEP_FILE}; not a sweep directory",
                          key="sweep_dir")
    runs = read_json_object(file).get("runs", [])
    if not isinstance(runs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("run_id"), str) for r in runs):
        raise ConfigError(f"runs: {runs!r} is not allowed; expected a list of objects with a "
                          "string run_id (as `dino-ablate sweep` writes it)", source=str(file),
                          key="runs")
    return [r["run_id"] for r in runs]


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    rows = collect(args.sweep_dir)
    if args.json:
        for record in rows:
            print(json.dumps(record, sort_keys=True))
        return 0
    header = ("run id", "state", "epoch", "job", *METRIC_COLUMNS, "note")
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        epoch = f"{_num(r['epoch'])}/{_num(r['epochs'])}" if r["epochs"] else _num(r["epoch"])
        job = r["job_id"] or "-"
        if r["job_state"]:
            job += f" {r['job_state']}"
        note = r["reason"] or ""
        if not r["in_sweep"]:
            note = ("not in the current sweep file; " + note).rstrip("; ")
        table.append((str(r["run_id"]), str(r["state"]), epoch, job,
                      *(_num(r["latest"][k]) for k in METRIC_COLUMNS), note))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                         + "\n")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
