"""The Ray backend on the two-host Ray cluster (fixture `ray_two_nodes`: 127.0.0.2 + 127.0.0.3)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import ROOT, cli, metrics_epochs, wait_for_run_epoch
from multinode_helpers import assert_same_training, one_process_twin, tiny_sweep

from tests.multinode import alive

pytestmark = [pytest.mark.multinode, pytest.mark.ray, pytest.mark.slow]


def _rank_pids(run_dir: Path) -> list[int]:
    """PIDs of the trainer processes (`dino_ablate train`) of this run directory."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "dino_ablate train" in cmdline and str(run_dir) in cmdline:
            found.append(int(proc.name))
    return found


def _run_dir(sweep_dir: Path) -> Path:
    (run_dir,) = (sweep_dir / "runs").iterdir()
    return run_dir


def test_two_node_point_runs_on_both_hosts_and_matches_one_process(
        ray_two_nodes: Any, tmp_path: Path) -> None:
    epochs = 2
    file = tiny_sweep(tmp_path / "mn_ray.yaml", "mn_ray", epochs, nodes=2)
    out = tmp_path / "out"
    proc = cli("sweep", str(file), "--backend", "ray", "--out", str(out),
               "--ray-address", ray_two_nodes.address, timeout=900)
    assert "1 launched, 0 skipped, 0 failed" in proc.stdout, proc.stdout
    sweep_dir = out / "mn_ray" / "local"
    run_dir = _run_dir(sweep_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert metrics_epochs(run_dir) == [1, 2]

    logs = sweep_dir / "ray" / "logs"
    trial_log = (logs / f"{run_dir.name}.log").read_text()
    # the trial's placement: one bundle per host, rank 0 on bundle 0's node = MASTER_ADDR
    placed = re.search(r"placement 2 bundles \{CPU: 1\} STRICT_SPREAD.*: node 0: (\S+) .*"
                       r"node 1: (\S+) .*MASTER_ADDR (\S+):\d+", trial_log)
    assert placed, trial_log
    assert {placed[1], placed[2]} == {"127.0.0.2", "127.0.0.3"}, trial_log
    assert placed[3] == placed[1]
    # the trainer (rank 0) names each rank's host
    rank0 = (logs / f"{run_dir.name}.node0.log").read_text()
    hosts = re.search(r"ranks on hosts: 0 \S+ \(ray node 0 (\S+)\), 1 \S+ \(ray node 1 (\S+)\)",
                      rank0)
    assert hosts and (hosts[1], hosts[2]) == (placed[1], placed[2]), rank0
    assert "world size 2 (torchrun)" in rank0, rank0
    for node in (0, 1):
        assert "rank(s) ended, exit codes [0]" in (logs / f"{run_dir.name}.node{node}.log") \
            .read_text()

    assert_same_training(run_dir, one_process_twin(tmp_path / "single", epochs))


def test_lost_worker_host_resumes_from_checkpoint(ray_two_nodes: Any, tmp_path: Path) -> None:
    """The worker node's raylet SIGKILLed mid-run (its ranks die with it; rank 0's collective
    fails): the trial errors, Tune retries it once the host is back, and the trainer resumes
    from the run's checkpoint; every epoch is in the metrics exactly once."""
    epochs = 12
    file = tiny_sweep(tmp_path / "mn_raykill.yaml", "mn_raykill", epochs, nodes=2)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "dino_ablate", "sweep", str(file), "--backend", "ray",
         "--out", str(out), "--ray-address", ray_two_nodes.address],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = out / "mn_raykill" / "local"
    try:
        run_dir = wait_for_run_epoch(sweep_dir, driver, 3, 600)
        ranks = _rank_pids(run_dir)
        assert len(ranks) == 2, ranks  # one per host
        ray_two_nodes.kill_worker_raylet()
        lost_at = len(metrics_epochs(run_dir))
        # the lost host's rank dies with its Ray worker, rank 0 with the failed collective or
        # its actor: nothing of the first attempt is left to train alongside the retry
        gone_by = time.monotonic() + 60
        while any(alive(pid) for pid in ranks) and time.monotonic() < gone_by:
            time.sleep(0.5)
        assert not any(alive(pid) for pid in ranks), ranks
        time.sleep(5)  # the retry waits for two nodes: the host comes back after a while
        ray_two_nodes.restart_worker()
        output, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    assert lost_at < epochs, "the run finished before the host was lost"
    assert metrics_epochs(run_dir) == list(range(1, epochs + 1))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    logs = sweep_dir / "ray" / "logs"
    trial_log = (logs / f"{run_dir.name}.log").read_text()
    assert len(re.findall(r"placement 2 bundles", trial_log)) >= 2, trial_log
    assert "resuming" in (logs / f"{run_dir.name}.node0.log").read_text()
    assert not _rank_pids(run_dir), "ranks outlived their trial"
