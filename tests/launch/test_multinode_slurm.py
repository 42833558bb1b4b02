"""The SLURM backend on the two-host SLURM (fixture `slurm_two_nodes`: mnode1 on 127.0.0.2,
mnode2 on 127.0.0.3, each slurmd with its own hostname)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import all_final, cli, metrics_epochs, status, wait_for
from multinode_helpers import assert_same_training, one_process_twin, tiny_sweep

pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def on_two_nodes(slurm_two_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """This test's SLURM clients (sbatch, squeue, the sacct shim) talk to the two-node one."""
    for name, value in slurm_two_nodes.env.items():
        monkeypatch.setenv(name, value)
    return slurm_two_nodes


def _job_logs(sweep_dir: Path, job_id: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((sweep_dir / "slurm" / job_id).glob("*_log.*"))}


def _job_info(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          check=True).stdout


def test_two_node_job_runs_on_both_hosts_and_matches_one_process(
        on_two_nodes: Any, tmp_path: Path) -> None:
    epochs = 2
    file = tiny_sweep(tmp_path / "mn_slurm.yaml", "mn_slurm", epochs, nodes=2)
    out = tmp_path / "out"
    cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
    sweep_dir = out / "mn_slurm" / "local"
    rows = wait_for(sweep_dir, all_final, 600, "the 2-node run to finish")
    (run_id, row), = rows.items()
    assert row["state"] == "done", rows
    run_dir = sweep_dir / "runs" / run_id
    assert metrics_epochs(run_dir) == [1, 2]

    # one job of 2 nodes x 1 task, one task per host
    job_id = row["job_id"]
    info = _job_info(job_id)
    assert re.search(r"NumNodes=2 NumCPUs=2 NumTasks=2", info), info
    assert re.search(r"\bNodeList=mnode\[1-2\]", info), info
    logs = _job_logs(sweep_dir, job_id)
    assert {f"{job_id}_0_log.err", f"{job_id}_1_log.err"} <= set(logs), sorted(logs)
    # rank 0 (submitit task 0 on the first node) names each rank's host
    hosts = re.search(r"ranks on hosts: (.*)", logs[f"{job_id}_0_log.err"])
    assert hosts and hosts[1] == "0 mnode1 (slurm node mnode1), 1 mnode2 (slurm node mnode2)", \
        logs[f"{job_id}_0_log.err"][-3000:]
    assert "world size 2 (slurm)" in logs[f"{job_id}_0_log.err"]

    assert_same_training(run_dir, one_process_twin(tmp_path / "single", epochs))


def test_lost_slurmd_requeues_the_job_which_resumes(on_two_nodes: Any, tmp_path: Path) -> None:
    """mnode2's slurmd stopped mid-run until its node is DOWN (SlurmdTimeout 10 s):
    SLURM requeues the job (node failure, JobRequeue=1); once the slurmd is back the job runs
    again on both nodes and resumes from the run's checkpoint. One submission, every epoch in
    the metrics exactly once."""
    # ~0.45 s per epoch on an idle 2-core machine, ~1 s loaded. The node is DOWN ~30-35 s after
    # the stop, and the ranks train on until srun kills the step (KillWait 5 s): 80 epochs once
    # finished inside that window, so the requeued job found the run done and never resumed.
    epochs = 300
    file = tiny_sweep(tmp_path / "mn_requeue.yaml", "mn_requeue", epochs, nodes=2)
    out = tmp_path / "out"
    cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
    sweep_dir = out / "mn_requeue" / "local"
    wait_for(sweep_dir, lambda rows: all((r["epoch"] or 0) >= 3 and r["state"] == "running"
                                         for r in rows.values()), 300, "epoch 3")
    (run_id, row), = status(sweep_dir).items()
    job_id = row["job_id"]
    restart_log = on_two_nodes.restart_slurmd("mnode2", "down")
    assert re.search(r"node mnode2 DOWN after \d+ s", restart_log), restart_log
    reached = metrics_epochs(sweep_dir / "runs" / run_id)[-1]
    assert reached <= epochs - 60, f"epoch {reached} of {epochs} when the node was DOWN: too " \
        "close to the end for the requeued job to resume (raise `epochs`)"

    # ~5 min after the DOWN on a 2-core machine running only the suite; with two more training
    # processes beside it the rest took 15 min (a 900-s wait once ran out at epoch ~298).
    rows = wait_for(sweep_dir, all_final, 1800, "the requeued run to finish")
    assert rows[run_id]["state"] == "done", rows
    run_dir = sweep_dir / "runs" / run_id
    assert metrics_epochs(run_dir) == list(range(1, epochs + 1))
    assert re.search(r"\bRestarts=[1-9]", _job_info(job_id)), _job_info(job_id)
    rank0 = _job_logs(sweep_dir, job_id)[f"{job_id}_0_log.err"]
    assert "resuming" in rank0, rank0[-3000:]
    assert len(re.findall(r"ranks on hosts: 0 mnode1 \(slurm node mnode1\), 1 mnode2", rank0)) \
        >= 2, rank0[-3000:]
    submissions = (sweep_dir / "submissions.jsonl").read_text().splitlines()
    assert len(submissions) == 1
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


def test_a_job_whose_rank_0_is_refused_the_lock_ends_on_both_nodes(
        on_two_nodes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's lock is held by someone else when its 2-node job starts (a `dino-ablate
    train` of the same run directory, a Ray trial): rank 0 waits for it
    (`DINO_ABLATE_JOB_LOCK_WAIT_S`, 2 s here), refuses to train the run twice and exits with
    an error before the rendezvous. srun (`--kill-on-bad-exit=1`) then ends rank 1 too. Without
    it rank 1 waited at the rendezvous for the process group's 30-minute timeout, holding both
    nodes. A job of both nodes runs first, so that ours is queued while the test takes the
    lock."""
    from dino_ablate.runs import RunLock

    monkeypatch.setenv("DINO_ABLATE_JOB_LOCK_WAIT_S", "2")
    blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", "--nodes", "2",
                              "--output", str(tmp_path / "blocker.out"), "--wrap", "sleep 300"],
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        file = tiny_sweep(tmp_path / "mn_lock.yaml", "mn_lock", 2, nodes=2)
        out = tmp_path / "out"
        cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
        sweep_dir = out / "mn_lock" / "local"
        (run_id, row), = wait_for(sweep_dir, lambda rows: all(
            r["state"] == "queued" for r in rows.values()), 60, "the job queued").items()
        lock = RunLock(sweep_dir / "runs" / run_id)
        assert lock.acquire("train by the test (another holder)")
    finally:
        subprocess.run(["scancel", blocker], check=True)
    started = time.monotonic()
    try:  # the run reads `queued` while the test holds its lock: wait for the job itself
        wait_for(sweep_dir, lambda rows: rows[run_id]["job_state"] not in (
            None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"), 240,
            "the job to end once rank 0 was refused")
    finally:
        lock.release()
    assert time.monotonic() - started < 240
    row = status(sweep_dir)[run_id]
    assert row["state"] == "failed" and row["job_state"] == "FAILED", row
    assert "before training started" in row["reason"], row
    assert re.search(r"JobState=FAILED", _job_info(row["job_id"])), _job_info(row["job_id"])
    logs = _job_logs(sweep_dir, row["job_id"])
    assert "not training it twice" in logs[f"{row['job_id']}_0_log.err"], logs
    assert f"{row['job_id']}_1_log.err" in logs, sorted(logs)  # rank 1 had started too
    assert not (sweep_dir / "runs" / run_id / "metrics.jsonl").exists()


def test_a_job_whose_rank_1_fails_says_which_rank_failed_and_why(
        on_two_nodes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1, on mnode2, raises at step 25 (epoch 3 of 4). srun ends rank 0 on mnode1, which
    could not record why: the run read "interrupted at epoch 2: job … ended (FAILED)" and the
    cause was only in rank 1's log. Rank 1's record in failed_ranks/ now names it in status."""
    monkeypatch.setenv("DINO_ABLATE_FAULT", "raise_step:25")
    monkeypatch.setenv("DINO_ABLATE_FAULT_RANK", "1")
    file = tiny_sweep(tmp_path / "mn_rank1.yaml", "mn_rank1", 4, nodes=2)
    out = tmp_path / "out"
    cli("sweep", str(file), "--backend", "slurm", "--out", str(out))
    sweep_dir = out / "mn_rank1" / "local"
    rows = wait_for(sweep_dir, lambda rows: all_final(rows) and all(r["job_state"] not in (
        None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING") for r in rows.values()), 300,
        "the job to end once rank 1 failed")
    (run_id, row), = rows.items()
    assert row["state"] == "failed" and row["job_state"] == "FAILED", row
    assert "rank 1 on mnode2 (slurm node mnode2) failed: RuntimeError: injected fault " \
        "raise_step:25 (rank 1) (failed_ranks/rank1-" in row["reason"], row
    run_dir = sweep_dir / "runs" / run_id
    record, = (run_dir / "failed_ranks").glob("rank1-*.json")
    assert "maybe_raise" in json.loads(record.read_text())["traceback"]
    assert metrics_epochs(run_dir) == [1, 2]
