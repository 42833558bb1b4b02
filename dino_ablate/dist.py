"""All distributed set-up: torchrun, SLURM (submitit or plain srun) or one plain process.

Collectives are guarded so the same code runs in a single CPU process without a process group.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "single", "torchrun" or "slurm"


def detect() -> DistEnv:
    """Read the launch environment without initialising anything."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]),
                       int(env.get("LOCAL_RANK", "0")), "torchrun")
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                       int(env.get("SLURM_LOCALID", "0")), "slurm")
    return DistEnv(0, 1, 0, "single")


def init(device_type: str) -> DistEnv:
    """Initialise the process group when there is more than one rank.

    Under plain SLURM (srun with several tasks) the torch.distributed variables are exported
    from submitit's helper, which derives MASTER_ADDR/PORT from the job's node list.
    """
    info = detect()
    if info.world_size == 1:
        return info
    if info.launcher == "slurm":
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if not torch_dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        torch_dist.init_process_group(backend=backend, init_method="env://",
                                      timeout=datetime.timedelta(minutes=30))
    return info


def host_label() -> str:
    """Where this rank runs: the hostname, plus the scheduler's node name when it has one
    (`node2 (slurm node node2)`, `vm (ray node 1 127.0.0.3)`)."""
    node = os.environ.get("SLURMD_NODENAME")
    if node:
        return f"{socket.gethostname()} (slurm node {node})"
    ray_node = os.environ.get("DINO_ABLATE_NODE")  # set by the Ray backend's multi-node trials
    return f"{socket.gethostname()} ({ray_node})" if ray_node else socket.gethostname()


def rank_hosts() -> list[str]:
    """:func:`host_label` of every rank, in rank order (collective: call on every rank)."""
    if not is_initialized():
        return [host_label()]
    labels: list[object] = [None] * world_size()
    torch_dist.all_gather_object(labels, host_label())
    return [str(label) for label in labels]


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """In-place sum over ranks; a no-op in one process."""
    if is_initialized():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> None:
    """In-place maximum over ranks; a no-op in one process."""
    if is_initialized():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors of all ranks along dim 0, in rank order."""
    if not is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's Python object on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]
