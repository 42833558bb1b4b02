"""The Ray backend's rank processes: their torch.distributed variables, thread count and
placement (single node and multi-node trials)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dino_ablate.launch.ray_backend import rank_commands
from dino_ablate.launch.ray_ranks import (
    Placement,
    forwarded_env,
    interface_of,
    node_rank_commands,
)
from dino_ablate.sweep import Resources


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


def test_multi_node_ranks_number_globally_and_meet_at_bundle_zero(tmp_path: Path) -> None:
    placement = Placement(nodes=2, tasks=2, cpus_per_task=3, gpus_per_node=0)
    commands = node_rank_commands(tmp_path, 1, placement, "127.0.0.2", 29500, "127.0.0.3", 3,
                                  {"NCCL_SOCKET_IFNAME": "ib0"})
    envs = [env for _, env in commands]
    assert [e["RANK"] for e in envs] == ["2", "3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"} and {e["LOCAL_WORLD_SIZE"] for e in envs} \
        == {"2"}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("127.0.0.2", "29500")}
    assert {e["NCCL_SOCKET_IFNAME"] for e in envs} == {"ib0"}  # forwarded from the submitter
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"3"}
    assert {e["DINO_ABLATE_NODE"] for e in envs} == {"ray node 1 127.0.0.3"}


def test_gloo_interface_follows_the_node_ip_unless_set(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert interface_of("127.0.0.3") == "lo"  # inside lo's 127.0.0.1/8
    assert interface_of("192.0.2.254") in (None, *[n for _, n in socket.if_nameindex()])
    placement = Placement(nodes=2, tasks=1, cpus_per_task=1, gpus_per_node=0)
    ((_, env),) = node_rank_commands(tmp_path, 0, placement, "127.0.0.2", 1, "127.0.0.2", 1)
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    ((_, env),) = node_rank_commands(tmp_path, 0, placement, "127.0.0.2", 1, "127.0.0.2", 1,
                                     {"GLOO_SOCKET_IFNAME": "eth7"})
    assert env["GLOO_SOCKET_IFNAME"] == "eth7"


def test_placement_of_a_paper_point() -> None:
    placement = Placement.of(Resources(nodes=2, gpus_per_node=8, cpus_per_task=10))
    assert placement.bundle == {"CPU": 80.0, "GPU": 8.0}
    assert placement.strategy == "STRICT_SPREAD"
    # an empty head bundle: the trial function holds nothing, the node bundles hold the ranks
    assert placement.tune_bundles() == [{}, placement.bundle, placement.bundle]
    single = Placement.of(Resources(tasks_per_node=2))
    assert single.tune_bundles() == [{"CPU": 2.0}] and single.strategy == "PACK"


def test_forwarded_env_keeps_only_the_transport_and_project_settings() -> None:
    env = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_DEBUG": "INFO", "DINO_ABLATE_CACHE": "/c",
           "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "PATH": "/bin"}
    assert forwarded_env(env) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_DEBUG": "INFO",
                                  "DINO_ABLATE_CACHE": "/c"}
