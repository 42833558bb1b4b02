"""Time loading a large synthetic sweep into the analysis DataFrame.

Writes 1,000 runs x 300 epochs (tests/analysis/synth.py; 10 % of the runs still running, so
they have no summary.json and their ln K comes from config.yaml) into a temporary directory,
then prints:

- cold: no analysis cache (every metrics.jsonl, status.json, ... parsed);
- warm: the cache written by the cold load is reused (nothing changed);
- one run changed: one run appended an epoch, only that run is parsed again.

The target is a cold load under 3 s. The OS page cache is warm in all three (the files were just
written), so "cold" measures parsing, not disk reads. Wall time depends on how busy the machine
is, so the CPU time (this process and its reader processes) and the load average are printed too.

Usage: python benchmarks/bench_analysis.py [--runs N] [--epochs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.load import load_results  # noqa: E402


def _synth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("synth", REPO / "tests/analysis/synth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sweep(root: Path, num_runs: int, epochs: int) -> None:
    """Write the synthetic sweep: 10 points x seeds, every tenth run still running."""
    synth = _synth()
    run_ids = []
    for index in range(num_runs):
        run_id = f"run{index:04d}"
        running = index % 10 == 9
        records = synth.make_records(epochs, knn_teacher_final=0.5 + (index % 10) / 100)
        synth.write_run(
            root / "runs" / run_id,
            run_id=run_id,
            sweep="bench",
            varied={"teacher.momentum": 0.99 + (index % 10) / 1000},
            seed=index // 10,
            reference={"knn": 72.8},
            records=records[: epochs // 2] if running else records,
            state="running" if running else "done",
            planned_epochs=epochs,
        )
        run_ids.append(run_id)
    meta = {"name": "bench", "file": "sweeps/bench.yaml", "profile": "cpu",
            "baseline": None, "runs": run_ids}
    (root / "sweep.json").write_text(json.dumps(meta))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the parallel readers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed(root: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows) of one load_results."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    sweep = load_results(root)
    return time.perf_counter() - start, _cpu_seconds() - cpu, len(sweep.frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=None,
                        help="write the sweep here instead of a temporary directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch) / "bench_sweep"
        start = time.perf_counter()
        write_sweep(root, args.runs, args.epochs)
        print(f"wrote {args.runs} runs x {args.epochs} epochs in "
              f"{time.perf_counter() - start:.1f} s under {root}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{os.cpu_count()} CPUs, load average {load:.1f} (wall times grow with load)")
        cold, cold_cpu, rows = _timed(root)
        print(f"cold load (no cache):     {cold:6.2f} s wall, {cold_cpu:6.2f} s CPU  ({rows} rows)")
        warm, warm_cpu, _ = _timed(root)
        print(f"warm load (cache hit):    {warm:6.2f} s wall, {warm_cpu:6.2f} s CPU")
        changed = root / "runs" / "run0009" / "metrics.jsonl"
        with changed.open("a") as handle:
            handle.write(json.dumps({"epoch": 10_000, "step": 1, "knn_teacher": 0.5}) + "\n")
        partial, partial_cpu, _ = _timed(root)
        print(f"one run changed:          {partial:6.2f} s wall, {partial_cpu:6.2f} s CPU")
        target = 3.0
        print(f"cold load target {target:.1f} s: {'met' if cold < target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
