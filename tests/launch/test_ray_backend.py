"""The Ray backend on a real private Ray cluster (fixture `ray_cluster`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import LOCAL_SMOKE, cli, metrics_epochs, status

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: what a finished run directory holds, whichever backend ran it (docs/run_directory.md plus
#: the launcher's run.json, launch.json and .lock)
RUN_DIR_FILES = {"config.yaml", "run.json", "launch.json", ".lock", "init.json",
                 "metrics.jsonl", "status.json", "summary.json", "checkpoints"}


def test_local_smoke_on_ray_with_a_ddp_point(ray_cluster: Any, tmp_path: Path) -> None:
    address = ray_cluster.context.address_info["gcs_address"]
    out = tmp_path / "out"
    proc = cli("sweep", str(LOCAL_SMOKE), "--backend", "ray", "--out", str(out),
               "--address", address, timeout=900)
    assert "3 launched, 0 skipped" in proc.stdout, proc.stdout
    sweep_dir = out / "local_smoke" / "local"
    rows = status(sweep_dir)
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    for run_id in rows:
        run_dir = sweep_dir / "runs" / run_id
        assert metrics_epochs(run_dir) == [1, 2, 3]
        assert {p.name for p in run_dir.iterdir()} == RUN_DIR_FILES
        assert json.loads((run_dir / "launch.json").read_text())["backend"] == "ray"
    ddp = next(r for r in rows if "centering_kind-cross_entropy" in r)
    log_text = (sweep_dir / "ray" / "logs" / f"{ddp}.log").read_text()
    assert "starting 2 rank(s)" in log_text and "exit codes [0, 0]" in log_text, log_text

    again = cli("sweep", str(LOCAL_SMOKE), "--backend", "ray", "--out", str(out),
                "--address", address)
    assert "0 launched, 3 skipped" in again.stdout, again.stdout
