"""The real trainer end to end: run directory, DDP equivalence, kill-and-resume, divergence."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.multinode import free_port
from tests.tiny import run_train

TIMING = {"images_per_s", "epoch_seconds", "eval_seconds", "linear_seconds", "peak_memory_mb"}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _semantic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    run_train(out, "runtime.deterministic=true")
    return out


@pytest.mark.slow
def test_run_directory_contract(straight: Path) -> None:
    cfg = yaml.safe_load((straight / "config.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["head"]["out_dim"] == 64
    records = _metrics(straight)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    keys = {"epoch", "step", "loss", "lr", "weight_decay", "momentum", "teacher_temp",
            "teacher_entropy", "teacher_batch_entropy", "kl_teacher_student", "knn_teacher",
            "knn_student", "images_per_s", "epoch_seconds", "peak_memory_mb"}
    assert keys <= set(records[0])
    for r in records:
        assert r["loss"] == pytest.approx(r["teacher_entropy"] + r["kl_teacher_student"],
                                          rel=1e-4)
        assert 0 <= r["knn_teacher"] <= 1
    status = json.loads((straight / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 3
    summary = json.loads((straight / "summary.json").read_text())
    init = json.loads((straight / "init.json").read_text())
    assert summary["knn_teacher_init"] == init["knn_teacher_init"]
    assert summary["final"]["epoch"] == 3
    assert (straight / "checkpoints" / "last.pt").exists()
    assert (straight / "checkpoints" / "previous.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill_step:17", "kill_eval:2", "kill_checkpoint:2"])
def test_kill_and_resume_is_identical(straight: Path, tmp_path: Path, fault: str) -> None:
    out = tmp_path / "run"
    res = run_train(out, "runtime.deterministic=true", env={"DINO_ABLATE_FAULT": fault},
                    check=False)
    assert res.returncode == -9, res.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "running"  # a SIGKILL leaves no chance to write anything else
    run_train(out, "runtime.deterministic=true", env={"DINO_ABLATE_FAULT": fault})
    assert _semantic(_metrics(out)) == _semantic(_metrics(straight))
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    for key in ("student", "teacher"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert torch.equal(a["center"], b["center"])


@pytest.mark.slow
def test_same_command_on_finished_run_does_nothing(straight: Path) -> None:
    before = (straight / "metrics.jsonl").read_text()
    res = run_train(straight, "runtime.deterministic=true")
    assert "already done" in res.stderr
    assert (straight / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_different_config_refuses_to_overwrite(straight: Path) -> None:
    res = run_train(straight, "runtime.deterministic=true", "teacher.momentum=0.9", check=False)
    assert res.returncode == 2
    assert "different config" in res.stderr and "teacher.momentum" in res.stderr


@pytest.mark.slow
def test_nan_loss_marks_diverged_with_step(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_train(out, env={"DINO_ABLATE_FAULT": "nan_step:25"}, check=False)
    assert res.returncode == 1
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "diverged" and status["step"] == 25
    assert "non-finite loss at step 25" in status["reason"]
    assert len(_metrics(out)) == 2  # epochs 1 and 2 finished (10 steps each at batch 128)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    extra = ("model.drop_path_rate=0.0", "epochs=2", "runtime.deterministic=true")
    one, two = tmp_path / "one", tmp_path / "two"
    run_train(one, *extra)
    run_train(two, *extra, nproc=2, port=free_port("127.0.0.1"))
    m1, m2 = _metrics(one), _metrics(two)
    for a, b in zip(m1, m2, strict=True):
        for key in ("loss", "teacher_entropy", "kl_teacher_student"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    c1 = torch.load(one / "checkpoints" / "last.pt", weights_only=True)
    c2 = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    torch.testing.assert_close(c1["center"], c2["center"], rtol=1e-4, atol=1e-5)
    for name, tensor in c1["teacher"].items():
        torch.testing.assert_close(tensor, c2["teacher"][name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_last_checkpoint_falls_back_to_previous(straight: Path, tmp_path: Path,
                                                        damage: str) -> None:
    out = tmp_path / "run"
    res = run_train(out, "runtime.deterministic=true",
                    env={"DINO_ABLATE_FAULT": "kill_step:25"}, check=False)
    assert res.returncode == -9
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100
    last.write_bytes(damaged)
    # best_knn.pt as if epoch 2 (lost with last.pt) had been the best, with a kNN no run gets
    best_path = out / "checkpoints" / "best_knn.pt"
    best = torch.load(best_path, weights_only=True)
    torch.save({**best, "epoch": 2, "knn_teacher": 2.0}, best_path)
    res = run_train(out, "runtime.deterministic=true")
    assert f"checkpoint {last} is unusable" in res.stderr
    assert "resuming" in res.stderr and "at epoch 1" in res.stderr
    assert _semantic(_metrics(out)) == _semantic(_metrics(straight))
    # the damaged file is kept beside, and previous.pt is a loadable spare again
    (unusable,) = (out / "checkpoints").glob("last.pt.unusable-*")
    assert unusable.read_bytes() == damaged
    assert torch.load(out / "checkpoints" / "previous.pt", weights_only=True)["epoch"] == 2
    # the orphaned best is kept beside; best_knn.pt holds the best epoch of this history
    (orphan,) = (out / "checkpoints").glob("best_knn.pt.orphaned-*")
    assert torch.load(orphan, weights_only=True)["knn_teacher"] == 2.0
    best = torch.load(best_path, weights_only=True)
    knns = [r["knn_teacher"] for r in _metrics(out)]
    assert best["knn_teacher"] == max(knns) == knns[best["epoch"] - 1]


COLLAPSING = ("runtime.deterministic=true", "epochs=12", "loss.sharpening=false")


@pytest.mark.slow
def test_a_run_stopped_on_a_collapse_trains_on_once_the_stop_is_off(tmp_path: Path) -> None:
    """Centering without sharpening collapses to uniform by epoch ~6 of 12. With
    `runtime.collapse_stop` the run ends there `done`; trained again with the stop still on it
    is left alone, with the stop off it resumes from its last checkpoint to epoch 12, exactly
    as a run that never stopped, and what the early end wrote is kept beside the new files."""
    out = tmp_path / "run"
    run_train(out, *COLLAPSING, "runtime.collapse_stop=true")
    stopped = json.loads((out / "status.json").read_text())
    assert stopped["state"] == "done" and stopped["reason"] == "stopped early: collapse detected"
    assert 3 <= stopped["epoch"] < 12, stopped
    early_summary = (out / "summary.json").read_text()
    res = run_train(out, *COLLAPSING, "runtime.collapse_stop=true")
    assert "already done" in res.stderr and len(_metrics(out)) == stopped["epoch"]

    res = run_train(out, *COLLAPSING, "runtime.collapse_stop=false")
    assert "trains on from its last checkpoint" in res.stderr, res.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 12 and status["reason"] is None
    assert json.loads((out / "summary.json").read_text())["epochs"] == 12
    kept = list(out.glob("summary.json.stopped-early-*"))
    assert len(kept) == 1 and kept[0].read_text() == early_summary
    assert len(list(out.glob("attention.stopped-early-*"))) == 1
    assert (out / "attention" / "maps.npz").is_file()

    never_stopped = tmp_path / "never"
    run_train(never_stopped, *COLLAPSING)
    assert _semantic(_metrics(out)) == _semantic(_metrics(never_stopped))


@pytest.mark.slow
def test_a_rank_other_than_0_that_fails_says_why_in_the_runs_state(tmp_path: Path) -> None:
    """Two ranks under torchrun; rank 1 raises at step 25 (epoch 3 of 4, 10 steps per epoch).
    Rank 0 then either records only its lost connection to rank 1 (gloo's "Connection closed
    by peer": what the run said) or is ended by torchrun first (the run read "interrupted ...
    no live process"). Now rank 1's record in failed_ranks/ gives the state its rank, host and
    error either way (tests/sweep/test_runs.py covers the second path alone). Resumed, the run
    finishes, and the record is kept but no longer read (it is older than the status.json of
    the new attempt)."""
    from dino_ablate.runs import run_state

    out = tmp_path / "run"
    extra = ("model.drop_path_rate=0.0", "epochs=4")
    res = run_train(out, *extra, nproc=2, port=free_port("127.0.0.1"), check=False,
                    env={"DINO_ABLATE_FAULT": "raise_step:25", "DINO_ABLATE_FAULT_RANK": "1"})
    assert res.returncode != 0
    records = list((out / "failed_ranks").glob("rank1-*.json"))
    assert len(records) == 1, list(out.iterdir())
    record = json.loads(records[0].read_text())
    assert record["rank"] == 1 and record["epoch"] == 2
    assert record["reason"] == "RuntimeError: injected fault raise_step:25 (rank 1)"
    assert "maybe_raise" in record["traceback"]
    state = run_state(out)
    assert state.state == "failed", state
    assert "rank 1 on " in state.reason and "injected fault raise_step:25" in state.reason, state
    assert f"failed_ranks/{records[0].name}" in state.reason

    run_train(out, *extra, nproc=2, port=free_port("127.0.0.1"))
    state = run_state(out)
    assert state.state == "done" and state.reason is None, state
    assert [p.name for p in (out / "failed_ranks").iterdir()] == [records[0].name]
