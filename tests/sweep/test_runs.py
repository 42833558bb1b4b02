"""Run identity, run-directory state and the per-run lock (real files, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dino_ablate.contract.rank_failures import fresh_rank_failures, write_rank_failure
from dino_ablate.errors import ConfigError
from dino_ablate.runs import RunLock, prepare_run_dir, read_metrics, run_dir_of, run_state
from dino_ablate.sweep import load_sweep, semantic_hash

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "sweeps" / "local_smoke.yaml"


def test_run_ids_ignore_non_semantic_keys(tmp_path: Path) -> None:
    text = SMOKE.read_text()
    a = load_sweep(SMOKE, "local")
    variant = tmp_path / "local_smoke.yaml"
    variant.write_text(text.replace("threads: 1", "threads: 2")
                       .replace("time_min: 15", "time_min: 99"))
    b = load_sweep(variant, "local")
    assert [p.run_id for p in a.points] == [p.run_id for p in b.points]
    variant.write_text(text.replace("epochs: 3", "epochs: 4"))
    c = load_sweep(variant, "local")
    assert not {p.run_id for p in a.points} & {p.run_id for p in c.points}


def test_semantic_hash_is_order_independent() -> None:
    assert semantic_hash({"a": 1, "b": {"c": 2}}) == semantic_hash({"b": {"c": 2}, "a": 1})


def test_semantic_hash_ignores_defaults_runtime_and_data_root() -> None:
    """A field added later with its default, or a runtime setting, keeps the run id."""
    from dino_ablate.config import RunConfig, from_dict, to_dict

    digits = {"dataset": "digits"}
    base = to_dict(from_dict({"epochs": 3, "data": digits}))
    assert semantic_hash(base) == semantic_hash({"epochs": 3, "data": digits})
    assert semantic_hash(to_dict(RunConfig())) == semantic_hash({})
    moved = to_dict(from_dict({"epochs": 3, "runtime": {"threads": 4, "device": "cpu"},
                               "data": {**digits, "root": "/elsewhere", "num_workers": 2}}))
    assert semantic_hash(moved) == semantic_hash(base)
    assert semantic_hash(to_dict(from_dict({"epochs": 4, "data": digits}))) \
        != semantic_hash(base)


@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/b", "", "x;y", "/abs"])
def test_run_ids_cannot_escape_the_sweep_dir(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run_dir_of(tmp_path, bad)


def test_prepare_refuses_a_different_config(tmp_path: Path) -> None:
    sweep = load_sweep(SMOKE, "local")
    rd = tmp_path / "run"
    prepare_run_dir(rd, sweep, sweep.points[0])
    prepare_run_dir(rd, sweep, sweep.points[0])  # idempotent
    run = json.loads((rd / "run.json").read_text())
    assert run["varied"] == sweep.points[0].varied and run["seed"] == 0
    with pytest.raises(ConfigError, match="different config"):
        prepare_run_dir(rd, sweep, sweep.points[1])


def test_state_from_run_directory(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    rd.mkdir()
    assert run_state(rd).state == "pending"
    (rd / "status.json").write_text(json.dumps({"state": "running", "epoch": 2, "epochs": 5}))
    st = run_state(rd)
    assert st.state == "failed" and "interrupted at epoch 2" in (st.reason or "")
    lock = RunLock(rd)
    assert lock.acquire("train test")
    assert run_state(rd).state == "running"
    lock.release()
    (rd / "launch.json").write_text(json.dumps({"backend": "slurm", "job_id": "7_1"}))
    assert run_state(rd, {"7_1": "PENDING"}).state == "queued"
    assert run_state(rd, {"7_1": "RUNNING"}).state == "running"
    assert "CANCELLED" in (run_state(rd, {"7_1": "CANCELLED"}).reason or "")
    gone = run_state(rd, {"7_1": "GONE"})
    assert gone.state == "failed" and "gone from SLURM" in (gone.reason or "")
    (rd / "status.json").write_text(json.dumps({"state": "diverged", "epoch": 2, "step": 9}))
    assert run_state(rd, {"7_1": "RUNNING"}).state == "diverged"


def test_a_slurm_run_reads_unknown_when_slurm_did_not_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue failed (a stopped slurmctld): a SLURM run whose files leave its state to its job
    read `pending` (never started) or `failed` (status.json running, no lock here), both
    untrue of a job that may be queued or running on a node. Its own files still decide a
    final, failed or locked run, a rank's recorded failure, and a Ray run."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    error = "squeue failed (1): slurm_load_jobs error: Socket timed out on send/recv operation"
    rd = tmp_path / "r"
    rd.mkdir()
    (rd / "launch.json").write_text(json.dumps({"backend": "slurm", "job_id": "7_1"}))
    assert run_state(rd, {}).state == "pending"  # asked, and SLURM answered nothing
    st = run_state(rd, {}, error)
    assert st.state == "unknown", st
    assert st.reason == (f"SLURM could not be asked ({error}): job 7_1 may be queued, running "
                         "or ended; the trainer has written no status yet")
    (rd / "status.json").write_text(json.dumps({"state": "running", "epoch": 2, "epochs": 5}))
    assert run_state(rd, {}).state == "failed"
    st = run_state(rd, {}, error)
    assert st.state == "unknown" and st.epoch == 2, st
    assert "status.json says running at epoch 2" in (st.reason or ""), st
    lock = RunLock(rd)
    assert lock.acquire("train test")
    assert run_state(rd, {}, error).state == "running"
    lock.release()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    os.utime(rd / "status.json", ns=(1_000_000_000, 1_000_000_000))
    write_rank_failure(rd, 1, "node2", "OSError: disk gone", "tb", 2)
    st = run_state(rd, {}, error)
    assert st.state == "failed" and "rank 1 on node2" in (st.reason or ""), st
    for final in ("done", "failed", "diverged"):
        (rd / "status.json").write_text(json.dumps({"state": final, "epoch": 5, "epochs": 5}))
        assert run_state(rd, {}, error).state == final
    other = tmp_path / "ray"
    other.mkdir()
    (other / "launch.json").write_text(json.dumps({"backend": "ray", "job_id": "s1",
                                                   "submission": "s1"}))
    assert run_state(other, {}, error).state == "failed"


def test_a_ray_trial_that_ended_before_the_trainer_wrote_its_status_is_failed(
        tmp_path: Path) -> None:
    """A trainer that failed at start (a missing data folder on the node) writes no
    status.json: once the driver is gone the run read "pending", as if never submitted."""
    rd = tmp_path / "r"
    rd.mkdir()
    (rd / "launch.json").write_text(json.dumps({"backend": "ray", "job_id": "s1",
                                                "submission": "s1"}))
    lock = RunLock(rd)
    assert lock.acquire("submit s1 (ray)")  # the driver, while its trials run
    assert run_state(rd).state == "queued"
    lock.release()
    st = run_state(rd)
    assert st.state == "failed", st
    assert "Ray trial (submission s1) ended before the trainer wrote status.json" in \
        (st.reason or "") and "ray/logs/r.log" in (st.reason or "")


def test_a_failure_another_rank_recorded_after_status_json_names_that_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 was ended by its launcher before it could record why; rank 1's record says.
    A record older than status.json belongs to an attempt a resume has written over, one of
    another SLURM job than launch.json's to an earlier submission."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    rd = tmp_path / "r"
    (rd / "failed_ranks").mkdir(parents=True)
    status = rd / "status.json"
    status.write_text(json.dumps({"state": "running", "epoch": 2, "epochs": 5}))
    os.utime(status, ns=(1_000_000_000, 1_000_000_000))
    record = write_rank_failure(rd, 1, "node2 (slurm node node2)", "OSError: disk gone", "tb",
                                2)
    assert record is not None and record.parent == rd / "failed_ranks"
    assert record.name.startswith("rank1-")
    saved = json.loads(record.read_text())
    assert saved["attempt"] == "slurm job 7_1 restart 0" and saved["slurm_job"] == "7_1"
    st = run_state(rd)
    assert st.state == "failed", st
    assert st.reason == ("interrupted at epoch 2: rank 1 on node2 (slurm node node2) failed: "
                         f"OSError: disk gone (failed_ranks/{record.name}); resubmit to resume")
    (rd / "launch.json").write_text(json.dumps({"backend": "slurm", "job_id": "7_1"}))
    assert run_state(rd, {"7_1": "RUNNING"}).state == "running"  # srun is ending the others
    st = run_state(rd, {"7_1": "FAILED"})
    assert st.state == "failed" and st.reason is not None, st
    assert "rank 1 on node2" in st.reason and "job 7_1 ended (FAILED)" in st.reason, st
    (rd / "launch.json").write_text(json.dumps({"backend": "slurm", "job_id": "8_1"}))
    st = run_state(rd, {"8_1": "FAILED"})  # resubmitted: job 8_1 ended before its status
    assert st.state == "failed" and "rank 1" not in (st.reason or ""), st
    (rd / "launch.json").unlink()
    written = record.stat().st_mtime_ns
    status.write_text(json.dumps({"state": "running", "epoch": 3, "epochs": 5}))  # a resume
    os.utime(status, ns=(written + 10**9, written + 10**9))
    st = run_state(rd)
    assert st.state == "failed" and "rank 1" not in (st.reason or ""), st
    assert "no live process" in (st.reason or "")


def test_only_the_latest_attempts_rank_failures_are_read(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without status.json every record is newer than it: the latest attempt's are read, and
    rank 0 reads only those of its own attempt."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    rd = tmp_path / "r"
    rd.mkdir()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1111")
    first = write_rank_failure(rd, 1, "h", "ValueError: first attempt", "tb", None)
    monkeypatch.setenv("MASTER_PORT", "2222")
    second = write_rank_failure(rd, 2, "h", "ValueError: second attempt", "tb", None)
    assert first is not None and second is not None
    os.utime(first, ns=(1_000_000_000, 1_000_000_000))
    st = run_state(rd)
    assert st.state == "failed" and "second attempt" in (st.reason or "") and \
        "interrupted at start: rank 2" in (st.reason or ""), st
    status = rd / "status.json"
    mine = fresh_rank_failures(rd, status, attempt="rendezvous 127.0.0.1:1111 run ?")
    assert [r["reason"] for r in mine] == ["ValueError: first attempt"]


def test_truncated_metrics_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


def test_lock_excludes_another_process_and_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from dino_ablate.runs import RunLock
        lock = RunLock(Path({str(tmp_path)!r}))
        assert lock.acquire("train other")
        print("locked", flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        lock = RunLock(tmp_path)
        started = time.monotonic()
        assert not lock.acquire("submit me", timeout_s=0.5)
        assert time.monotonic() - started >= 0.5
        info = lock.holder()
        assert info is not None and info["pid"] == holder.pid and info["purpose"] == "train other"
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: no stale lock
    assert lock.acquire("submit me", timeout_s=2)
    assert lock.holder() is not None  # held by us now
    lock.release()
    assert lock.holder() is None


def _rewrite_sweep_json(sweep_dir: str) -> int:
    from dino_ablate.runs import write_sweep_json
    sweep = load_sweep(SMOKE, "local")
    for _ in range(100):
        write_sweep_json(Path(sweep_dir), sweep)
    return 0


def test_concurrent_submitters_can_rewrite_sweep_json(tmp_path: Path) -> None:
    """Submitters write sweep.json without a lock; a shared temporary name once made one of
    two concurrent `dino-ablate sweep` fail with FileNotFoundError."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert pool.map(_rewrite_sweep_json, [str(tmp_path)] * 3) == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
    assert json.loads((tmp_path / "sweep.json").read_text())["name"] == "local_smoke"


def test_a_rank_records_its_failure_only_in_its_own_run(tmp_path: Path) -> None:
    """Not in a directory holding another run (the identity check refused it), nor in one
    without config.yaml (no run there yet), nor for an interrupt; a bad input on its node,
    yes."""
    from dino_ablate.errors import AnotherRun
    from dino_ablate.train import record_rank_failure

    rd = tmp_path / "r"
    rd.mkdir()
    record_rank_failure(rd, 1, ConfigError("data.root: /data/x does not exist"))
    assert not (rd / "failed_ranks").exists()  # no config.yaml
    (rd / "config.yaml").write_text("seed: 0\n")
    record_rank_failure(rd, 1, AnotherRun(f"{rd} already holds a run with a different config"))
    record_rank_failure(rd, 1, KeyboardInterrupt())
    assert not (rd / "failed_ranks").exists()
    record_rank_failure(rd, 1, ConfigError("data.root: /data/x does not exist"))
    record, = (rd / "failed_ranks").iterdir()
    assert json.loads(record.read_text())["reason"] == \
        "ConfigError: data.root: /data/x does not exist"
