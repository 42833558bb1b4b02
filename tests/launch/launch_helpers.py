"""Shared helpers of the launcher tests: run the real CLI, wait for a sweep's runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SMOKE = ROOT / "sweeps" / "local_smoke.yaml"


def cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "dino_ablate", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"dino-ablate {' '.join(args)} -> {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def status(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    out = cli("status", str(sweep_dir), "--json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["run_id"]: r for r in rows}


def wait_for(sweep_dir: Path, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rows = status(sweep_dir)
        if predicate(rows):
            return rows
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}: "
                         f"{json.dumps(rows, indent=1)}")


def all_final(rows: dict[str, Any]) -> bool:
    return bool(rows) and all(r["state"] in ("done", "diverged", "failed") for r in rows.values())


def metrics_epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def wait_for_run_epoch(sweep_dir: Path, driver: subprocess.Popen[str], epoch: int,
                       timeout: float) -> Path:
    """The sweep's (only) run directory once its metrics reach `epoch`; fails if the
    driver process exits first (with its output) or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = sorted((sweep_dir / "runs").glob("*")) if (sweep_dir / "runs").exists() else []
        if runs and (runs[0] / "metrics.jsonl").exists() \
                and len(metrics_epochs(runs[0])) >= epoch:
            return runs[0]
        assert driver.poll() is None, driver.communicate()[0]
        time.sleep(0.5)
    raise AssertionError(f"the trial never reached epoch {epoch} in {timeout} s")


def one_point_sweep(path: Path, name: str, epochs: int, tasks: int = 1) -> Path:
    """A single-point variant of local_smoke's `local` profile with more epochs."""
    raw = yaml.safe_load(LOCAL_SMOKE.read_text())
    local = raw["profiles"]["local"]
    local["config"]["epochs"] = epochs
    local["resources"]["tasks_per_node"] = tasks
    sweep = {"name": name, "base": {}, "profiles": {"local": local}, "seeds": [0]}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
