"""The SLURM backend on a real local SLURM (fixture `slurm_cluster`)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import (
    LOCAL_SMOKE,
    all_final,
    cli,
    metrics_epochs,
    one_point_sweep,
    status,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _submissions(sweep_dir: Path) -> list[dict[str, Any]]:
    lines = (sweep_dir / "submissions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_local_smoke_reaches_done_and_resubmission_submits_nothing(
        slurm_cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out),
        "--max-parallel", "2")
    assert time.monotonic() - started < 60, "submission must return at once"
    sweep_dir = out / "local_smoke" / "local"
    rows = wait_for(sweep_dir, all_final, 600, "the 3 runs to finish")
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    for run_id, row in rows.items():
        run_dir = sweep_dir / "runs" / run_id
        assert metrics_epochs(run_dir) == [1, 2, 3], run_id
        assert row["epoch"] == row["epochs"] == 3
        run = json.loads((run_dir / "run.json").read_text())
        assert run["run_id"] == run_id and run["profile"] == "local"
        assert set(run["reference"]) == {"knn", "linear"}

    # the DDP point ran as one job of 2 SLURM tasks (2 ranks)
    ddp = next(r for r in rows.values() if "centering_kind-cross_entropy" in r["run_id"])
    job_id = ddp["job_id"]
    logs = sorted(p.name for p in (sweep_dir / "slurm" / job_id).glob("*_log.out"))
    assert logs == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"], logs

    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["name"] == "local_smoke" and meta["profile"] == "local"
    assert len(meta["runs"]) == 3 and len(meta["baseline"]) == 1

    again = cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out))
    assert "0 launched, 3 skipped" in again.stdout, again.stdout
    records = _submissions(sweep_dir)
    assert len(records) == 2
    assert len(records[0]["launched"]) == 3 and records[1]["launched"] == {}


def _job_of(sweep_dir: Path) -> tuple[str, str]:
    rows = status(sweep_dir)
    (run_id, row), = rows.items()
    return run_id, row["job_id"]


def _wait_epoch(sweep_dir: Path, at_least: int, timeout: float = 300) -> None:
    wait_for(sweep_dir, lambda rows: all((r["epoch"] or 0) >= at_least
                                         and r["state"] == "running" for r in rows.values()),
             timeout, f"epoch >= {at_least}")


def _wait_resumed(sweep_dir: Path, job_id: str, timeout: float = 300) -> int:
    """The epoch of the first `resuming ... at epoch N` line in the job's logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (sweep_dir / "slurm" / job_id).glob("*_log.*"):
            match = re.search(r"resuming .* at epoch (\d+)", path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not resume within {timeout} s")


def test_requeued_job_resumes_from_its_checkpoint(slurm_cluster: Any, tmp_path: Path) -> None:
    epochs = 40
    file = one_point_sweep(tmp_path / "requeue.yaml", "requeue", epochs)
    out = tmp_path / "out"
    cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
    sweep_dir = out / "requeue" / "local"
    run_id, job_id = _job_of(sweep_dir)

    # 1. preemption / time-limit path: USR2 -> submitit calls checkpoint() and requeues
    _wait_epoch(sweep_dir, 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    # 2. an external requeue: SIGTERM/SIGKILL, no checkpoint() call; state is on disk anyway.
    # Only once the requeued job has resumed and trained an epoch more: the first segment may
    # train a few epochs past the signal, so an epoch count alone can be the first segment's
    # (a requeue of the still-pending job then resumes once, not twice).
    resumed_at = _wait_resumed(sweep_dir, job_id)
    _wait_epoch(sweep_dir, resumed_at + 1)
    subprocess.run(["scontrol", "requeue", job_id], check=True)

    rows = wait_for(sweep_dir, all_final, 600, "the requeued run to finish")
    assert rows[run_id]["state"] == "done", rows
    run_dir = sweep_dir / "runs" / run_id
    assert metrics_epochs(run_dir) == list(range(1, epochs + 1))
    log_text = "".join(p.read_text() for p in (sweep_dir / "slurm" / job_id).glob("*_log.*"))
    assert "Caught signal SIGUSR2" in log_text
    resumed = [line for line in log_text.splitlines() if "resuming" in line]
    assert len(resumed) >= 2, log_text[-3000:]
    # still one submission: the requeues happened inside SLURM
    assert len(_submissions(sweep_dir)) == 1


def test_concurrent_submissions_run_every_point_once(slurm_cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out)]
    import os
    import sys

    from launch_helpers import ROOT
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dino_ablate", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o + e for o, e in outputs)
    sweep_dir = out / "local_smoke" / "local"
    records = _submissions(sweep_dir)
    assert len(records) == 2
    launched = [set(r["launched"]) for r in records]
    assert launched[0].isdisjoint(launched[1]), records
    assert len(launched[0] | launched[1]) == 3, records
    rows = wait_for(sweep_dir, all_final, 600, "the runs to finish")
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    for run_id in rows:
        assert metrics_epochs(sweep_dir / "runs" / run_id) == [1, 2, 3]


def test_cancelled_task_is_named_and_resubmission_finishes_it(
        slurm_cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out),
        "--max-parallel", "1")
    sweep_dir = out / "local_smoke" / "local"
    rows = status(sweep_dir)
    victim = next(r for r in rows.values() if "sinkhorn" in r["run_id"])
    subprocess.run(["scancel", victim["job_id"]], check=True)
    rows = wait_for(sweep_dir, all_final, 600, "the other runs to finish")
    states = {r["run_id"]: r["state"] for r in rows.values()}
    assert states.pop(victim["run_id"]) == "failed", rows
    assert set(states.values()) == {"done"}, rows
    # cancelled while pending inside its array record: SLURM keeps no record of it at all
    reason = rows[victim["run_id"]]["reason"] or ""
    assert "CANCELLED" in reason or "gone from SLURM" in reason, rows
    again = cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out))
    assert "1 launched, 2 skipped" in again.stdout, again.stdout
    rows = wait_for(sweep_dir, all_final, 600, "the resubmitted run to finish")
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    assert metrics_epochs(sweep_dir / "runs" / victim["run_id"]) == [1, 2, 3]


def test_diverged_run_is_shown_and_the_others_finish(slurm_cluster: Any, tmp_path: Path) -> None:
    """A non-finite loss injected into one point (DINO_ABLATE_FAULT, scoped to its run id; sbatch
    passes the submitter's environment on): that run ends `diverged` at the step, the other
    runs of the sweep finish, and `status` and the table show the divergence."""
    import os

    out = tmp_path / "out"
    os.environ["DINO_ABLATE_FAULT"] = "nan_step:5@sinkhorn"
    try:
        cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out),
            "--max-parallel", "2")
    finally:
        del os.environ["DINO_ABLATE_FAULT"]
    sweep_dir = out / "local_smoke" / "local"
    rows = wait_for(sweep_dir, all_final, 600, "the runs to finish")
    states = {run_id: r["state"] for run_id, r in rows.items()}
    victim = next(run_id for run_id in rows if "sinkhorn" in run_id)
    assert states.pop(victim) == "diverged", rows
    assert set(states.values()) == {"done"}, rows
    assert rows[victim]["reason"] == "non-finite loss at step 5", rows

    text = cli("status", str(sweep_dir)).stdout
    line = next(line for line in text.splitlines() if line.startswith(victim))
    assert " diverged " in line and "non-finite loss at step 5" in line, text
    assert "1 diverged, 2 done" in text, text
    csv = cli("table", str(sweep_dir), "--format", "csv").stdout
    diverged_rows = [row for row in csv.splitlines() if "diverged" in row]
    assert len(diverged_rows) == 1 and "sinkhorn" in diverged_rows[0], csv
    # a diverged run is final: resubmitting does not rerun it
    again = cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out))
    assert "0 launched, 3 skipped" in again.stdout, again.stdout


def test_slurmd_lost_for_a_while_then_back(slurm_cluster: Any, tmp_path: Path) -> None:
    """slurmd stopped for longer than SlurmdTimeout (the node goes DOWN) and started again:
    the sweep completes, or `status` names exactly the runs to resubmit (failed, with a
    reason) and one resubmission finishes them; no metrics record is duplicated."""
    import os

    from launch_helpers import ROOT

    out = tmp_path / "out"
    cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out),
        "--max-parallel", "1")
    sweep_dir = out / "local_smoke" / "local"
    wait_for(sweep_dir, lambda rows: any(r["state"] == "running" for r in rows.values()),
             300, "a run to start")
    restart = subprocess.run([str(ROOT / "scripts" / "slurm" / "restart_slurmd.sh"), "40"],
                             env={**os.environ, **slurm_cluster.env}, capture_output=True,
                             text=True, timeout=300)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "node state while slurmd was down" in restart.stdout, restart.stdout
    rows = wait_for(sweep_dir, all_final, 900, "the sweep to settle after slurmd came back")
    to_resubmit = {run_id for run_id, r in rows.items() if r["state"] != "done"}
    for run_id in to_resubmit:
        assert rows[run_id]["state"] == "failed" and rows[run_id]["reason"], rows
    again = cli("sweep", str(LOCAL_SMOKE), "--backend", "slurm", "--out", str(out))
    assert f"{len(to_resubmit)} launched, {3 - len(to_resubmit)} skipped" in again.stdout, \
        again.stdout
    rows = wait_for(sweep_dir, all_final, 600, "the resubmitted runs to finish")
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    for run_id in rows:
        assert metrics_epochs(sweep_dir / "runs" / run_id) == [1, 2, 3], run_id
    print(f"slurmd down 40 s: {len(to_resubmit)} run(s) needed resubmitting "
          f"({sorted(to_resubmit)}); restart log:\n{restart.stdout}")


@contextlib.contextmanager
def _pending_behind_an_exclusive_job(tmp_path: Path, name: str) -> Iterator[
        tuple[Path, Path, Path, str, dict[str, Any]]]:
    """A one-point sweep submitted to SLURM whose job waits (PENDING) while a job of the whole
    node runs: (sweep file, output root, sweep dir, run id, its status row). The blocker is
    cancelled on leaving, so the job then runs."""
    blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", "--output",
                              str(tmp_path / "blocker.out"), "--wrap", "sleep 300"],
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        file = one_point_sweep(tmp_path / f"{name}.yaml", name, 2)
        out = tmp_path / "out"
        cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
        sweep_dir = out / name / "local"
        (run_id, row), = wait_for(sweep_dir, lambda rows: all(
            r["job_state"] == "PENDING" for r in rows.values()), 60, "the job pending").items()
        yield file, out, sweep_dir, run_id, row
    finally:
        subprocess.run(["scancel", blocker], check=True)


def test_a_queued_job_reads_queued_in_the_dry_run_and_is_not_launched_again_on_ray(
        slurm_cluster: Any, tmp_path: Path) -> None:
    """While a run's SLURM job waits (a job of the whole node runs first), the dry run asks
    SLURM and shows it `queued` (it read `pending`), and a Ray submission of the same sweep
    skips it, naming the job, and keeps its launch.json (it launched the run on Ray and
    replaced the record `status` and the next SLURM submission read). Then the job runs."""
    with _pending_behind_an_exclusive_job(tmp_path, "queued") as (file, out, sweep_dir,
                                                                   run_id, row):
        assert row["state"] == "queued", row
        dry = cli("sweep", str(file), "--backend", "ray", "--out", str(out), "--dry-run").stdout
        line = next(line for line in dry.splitlines() if line.startswith(run_id))
        assert re.split(r"\s{2,}", line)[3] == "queued", dry
        launch = (sweep_dir / "runs" / run_id / "launch.json").read_text()
        ray = cli("sweep", str(file), "--backend", "ray", "--out", str(out))
        assert f"skip    {run_id}: SLURM job {row['job_id']} is PENDING" in ray.stdout, ray.stdout
        assert "0 launched, 1 skipped" in ray.stdout, ray.stdout
        assert (sweep_dir / "runs" / run_id / "launch.json").read_text() == launch
    rows = wait_for(sweep_dir, all_final, 300, "the job to run once the node is free")
    assert rows[run_id]["state"] == "done" and rows[run_id]["job_id"] == row["job_id"], rows


def test_a_stopped_slurmctld_leaves_a_queued_run_unknown_and_status_says_it_waits(
        slurm_cluster: Any, tmp_path: Path) -> None:
    """slurmctld stopped (SIGSTOP: it keeps its port and answers nothing, as a hung or
    overloaded controller; squeue gives up after 2 x MessageTimeout, 20 s here). `status`
    says after 3 s what it waits for, then reads the queued run `unknown` (it read `pending`:
    "not started", while its job waited), and so does the dry run. Once SLURM answers again
    the run reads `queued`."""
    import os
    import signal

    with _pending_behind_an_exclusive_job(tmp_path, "stopped") as (file, out, sweep_dir,
                                                                    run_id, row):
        job_id = row["job_id"]
        pids = dict(line.split()[:2] for line in
                    (slurm_cluster.root / "pids").read_text().splitlines() if line.strip())
        ctld = int(pids["slurmctld"])
        os.kill(ctld, signal.SIGSTOP)
        try:
            started = time.monotonic()
            proc = cli("status", str(sweep_dir), "--json")
            waited = time.monotonic() - started
            (seen,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
            assert seen["state"] == "unknown", seen
            assert f"job {job_id} may be queued, running or ended" in seen["reason"], seen
            assert "squeue has not answered in 3 s" in proc.stderr, proc.stderr
            assert "SLURM job states unknown" in proc.stderr, proc.stderr
            dry = cli("sweep", str(file), "--backend", "slurm", "--out", str(out),
                      "--dry-run").stdout
            line = next(line for line in dry.splitlines() if line.startswith(run_id))
            assert re.split(r"\s{2,}", line)[3] == "unknown", dry
        finally:
            os.kill(ctld, signal.SIGCONT)
        print(f"status with slurmctld stopped: {waited:.1f} s")
        assert status(sweep_dir)[run_id]["state"] == "queued"
        subprocess.run(["scancel", job_id], check=True)  # no need to train it
