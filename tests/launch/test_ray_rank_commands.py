"""The Ray backend's rank processes: their torch.distributed variables and thread count."""

from __future__ import annotations

from pathlib import Path

from dino_ablate.launch.ray_backend import rank_commands


def test_one_rank_gets_the_reserved_cores_as_threads(tmp_path: Path) -> None:
    ((cmd, env),) = rank_commands(tmp_path, 1, 2)
    # torch's default thread count (runtime.threads: null) is OMP_NUM_THREADS
    assert env["OMP_NUM_THREADS"] == "2"
    assert "RANK" not in env and "MASTER_PORT" not in env
    assert cmd[-4:] == ["train", str(tmp_path / "config.yaml"), "--out", str(tmp_path)]


def test_ddp_ranks_share_a_loopback_rendezvous(tmp_path: Path) -> None:
    commands = rank_commands(tmp_path, 2, 1)
    envs = [env for _, env in commands]
    assert [e["RANK"] for e in envs] == ["0", "1"] == [e["LOCAL_RANK"] for e in envs]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {"127.0.0.1"}
    assert len({e["MASTER_PORT"] for e in envs}) == 1
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"1"}
