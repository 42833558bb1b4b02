"""The Ray backend on a real private Ray cluster (fixture `ray_cluster`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import LOCAL_SMOKE, cli, metrics_epochs, status, wait_for_run_epoch

from tests.multinode import alive

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: what a finished run directory holds, whichever backend ran it (docs/run_directory.md plus
#: the launcher's run.json, launch.json and .lock)
RUN_DIR_FILES = {"config.yaml", "run.json", "launch.json", ".lock", "init.json",
                 "metrics.jsonl", "status.json", "summary.json", "checkpoints", "attention"}


def test_local_smoke_on_ray_with_a_ddp_point(ray_cluster: Any, tmp_path: Path) -> None:
    address = ray_cluster.context.address_info["gcs_address"]
    out = tmp_path / "out"
    proc = cli("sweep", str(LOCAL_SMOKE), "--backend", "ray", "--out", str(out),
               "--ray-address", address, timeout=900)
    assert "3 launched, 0 skipped" in proc.stdout, proc.stdout
    sweep_dir = out / "local_smoke" / "local"
    rows = status(sweep_dir)
    # progress while it ran, then each run's final state and where the tables come from
    assert re.search(r"^\[\d\d:\d\d:\d\d\] \d/3 done, \d running \| \S+ epoch \d/3 loss ",
                     proc.stdout, re.M), proc.stdout
    for run_id in rows:
        assert re.search(rf"^done +{re.escape(run_id)}  epoch 3/3$", proc.stdout, re.M), \
            proc.stdout
    assert f"tables: dino-ablate table {sweep_dir}" in proc.stdout, proc.stdout
    assert "performance bottleneck" not in proc.stdout + proc.stderr, proc.stderr
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
                "--ray-address", address)
    assert "0 launched, 3 skipped" in again.stdout, again.stdout


def _pids_with(fragment: str) -> dict[int, int]:
    """pid -> parent pid of every process whose command line contains `fragment`."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fragment in cmdline and "dino_ablate train" in cmdline:
            found[int(proc.name)] = int(stat[1])
    return found


def test_killed_trial_worker_retries_from_checkpoint(ray_cluster: Any, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from launch_helpers import ROOT, one_point_sweep

    address = ray_cluster.context.address_info["gcs_address"]
    epochs = 30
    file = one_point_sweep(tmp_path / "raykill.yaml", "raykill", epochs)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "dino_ablate", "sweep", str(file),
                               "--backend", "ray", "--out", str(out), "--ray-address", address],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    sweep_dir = out / "raykill" / "local"
    try:
        run_dir = wait_for_run_epoch(sweep_dir, driver, 3, 300)
        ranks = _pids_with(str(run_dir))
        assert len(ranks) == 1, ranks
        (rank, worker), = ranks.items()
        os.kill(worker, signal.SIGKILL)  # the Ray worker running the trial
        time.sleep(3)
        assert not alive(rank), "the trainer outlived its Ray worker"
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    assert metrics_epochs(run_dir) == list(range(1, epochs + 1))
    log_text = (sweep_dir / "ray" / "logs" / f"{run_dir.name}.log").read_text()
    assert "resuming" in log_text, log_text[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


def test_a_point_done_in_another_sweep_is_copied_not_rerun(ray_cluster: Any,
                                                            tmp_path: Path) -> None:
    """Two sweeps sharing a point under one output root (as momentum.yaml and
    teacher_update.yaml do): the second submission copies the finished run."""
    from launch_helpers import one_point_sweep

    address = ray_cluster.context.address_info["gcs_address"]
    out = tmp_path / "out"
    first = one_point_sweep(tmp_path / "twin_a.yaml", "twin_a", 2)
    second = one_point_sweep(tmp_path / "twin_b.yaml", "twin_b", 2)
    proc = cli("sweep", str(first), "--backend", "ray", "--out", str(out),
               "--ray-address", address)
    assert "1 launched, 0 skipped, 0 failed" in proc.stdout, proc.stdout
    proc = cli("sweep", str(second), "--backend", "ray", "--out", str(out),
               "--ray-address", address)
    assert "0 launched, 0 skipped, 1 copied from finished twins, 0 failed" in proc.stdout, \
        proc.stdout
    # single-point sweeps: the run ids are the sweep names plus the same hash
    (run_a,) = (out / "twin_a" / "local" / "runs").iterdir()
    (run_b,) = (out / "twin_b" / "local" / "runs").iterdir()
    assert run_a.name.split("_")[-1] == run_b.name.split("_")[-1]
    assert f"copy    {run_b.name}: done in {run_a}" in proc.stdout, proc.stdout
    assert (run_b / "metrics.jsonl").read_text() == (run_a / "metrics.jsonl").read_text()
    assert status(out / "twin_b" / "local")[run_b.name]["state"] == "done"
    table = cli("table", str(out / "twin_b" / "local"), "--format", "csv").stdout
    assert "done" in table, table


def test_a_point_the_cluster_cannot_hold_is_refused_without_touching_its_launch_record(
        ray_cluster: Any, tmp_path: Path) -> None:
    """The run's launch.json may be a queued SLURM job's record (its job id is what `status`
    and the next SLURM submission go by): a refused Ray submission used to replace it."""
    import yaml
    from launch_helpers import one_point_sweep

    address = ray_cluster.context.address_info["gcs_address"]
    out = tmp_path / "out"
    file = one_point_sweep(tmp_path / "huge.yaml", "huge", 2)
    raw = yaml.safe_load(file.read_text())
    raw["profiles"]["local"]["resources"]["cpus_per_task"] = 512
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    dry = cli("sweep", str(file), "--backend", "ray", "--out", str(out), "--dry-run")
    (run_id,) = [line.split()[0] for line in dry.stdout.splitlines() if line.startswith("huge_")]
    run_dir = out / "huge" / "local" / "runs" / run_id
    run_dir.mkdir(parents=True)
    record = {"backend": "slurm", "job_id": "100_0", "submission": "s1", "time": "t"}
    (run_dir / "launch.json").write_text(json.dumps(record))
    proc = cli("sweep", str(file), "--backend", "ray", "--out", str(out), "--ray-address",
               address, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs 1 node(s) with 512 CPU each" in proc.stderr, proc.stderr
    assert json.loads((run_dir / "launch.json").read_text()) == record


def test_a_trial_failed_for_good_reads_failed_while_the_others_still_run(
        ray_cluster: Any, tmp_path: Path) -> None:
    """Seed 0's trainer is killed at step 3 and `--max-retries 0` leaves its trial no retry:
    `status` shows it failed while seed 1's trial still trains (it read `running` until the
    whole submission ended: the driver held its lock)."""
    import os
    import subprocess
    import sys
    import time

    import yaml
    from launch_helpers import ROOT, one_point_sweep, status

    address = ray_cluster.context.address_info["gcs_address"]
    file = one_point_sweep(tmp_path / "rayfail.yaml", "rayfail", 60)
    raw = yaml.safe_load(file.read_text())
    raw["seeds"] = [0, 1]
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DINO_ABLATE_FAULT": "kill_step:3@seed-0"}
    driver = subprocess.Popen([sys.executable, "-m", "dino_ablate", "sweep", str(file),
                               "--backend", "ray", "--out", str(out), "--ray-address", address,
                               "--max-retries", "0"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    sweep_dir = out / "rayfail" / "local"
    try:
        deadline = time.monotonic() + 300
        rows: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert driver.poll() is None, f"the submission ended first: {rows}\n" \
                f"{driver.communicate()[0]}"
            if (sweep_dir / "sweep.json").exists():
                rows = status(sweep_dir)
                states = {run_id.split("_")[0]: r["state"] for run_id, r in rows.items()}
                # seed 1 reads `queued` until its trainer writes status.json
                if states == {"seed-0": "failed", "seed-1": "running"}:
                    break
                assert states.get("seed-1") != "done", f"seed 0 never read failed: {rows}"
            time.sleep(1)
        else:
            raise AssertionError(f"seed 0 never read failed while seed 1 ran: {rows}")
        failed = next(r for run_id, r in rows.items() if run_id.startswith("seed-0"))
        assert "interrupted at epoch 0" in failed["reason"], failed
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, output  # a run failed
    rows = status(sweep_dir)
    assert sorted(r["state"] for r in rows.values()) == ["done", "failed"], rows
