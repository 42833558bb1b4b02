"""One training epoch: its steps (with the NaN check and progress log) and its metrics record.

`train.train` calls `run_steps` then `epoch_record` once per epoch; set-up, resume, checkpoints
and the run directory stay in `train`.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dino_ablate import dist, faults
from dino_ablate.config import RunConfig
from dino_ablate.data import TrainData
from dino_ablate.evaluate import Evaluator
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, train_step

log = logging.getLogger("dino_ablate.train")


@dataclass
class Loop:
    """What every epoch of one run needs; `model` is the student as trained (maybe DDP)."""

    cfg: RunConfig
    data: TrainData
    state: TrainState
    sched: Schedules
    evaluator: Evaluator
    info: dist.DistEnv
    device: torch.device
    run_dir: Path
    model: torch.nn.Module
    student: torch.nn.Module  # unwrapped: what checkpoints and the end-of-run evaluations use
    config: dict[str, Any]  # the resolved config, as checkpoints store it
    history: list[dict[str, Any]]  # the records of the epochs done, restored ones included
    start_step: int  # the step this process started (or resumed) at, for the rate and ETA
    run_start: float  # time.perf_counter() when this process started training
    nan_step: int | None  # fault hook: the step whose crops are made NaN

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch(self.cfg.optim.batch_size)


@dataclass
class EpochSums:
    """Per-epoch sums (averaged over ranks once the epoch ends) and the first bad step."""

    sums: torch.Tensor  # (5,): loss, entropy, batch entropy, kl, unused
    diverged_at: int | None  # the first step with a non-finite loss on any rank


def run_steps(loop: Loop, epoch: int) -> EpochSums:
    """The optimizer steps of `epoch` (the teacher rule told first that it starts); stops at
    the first log point after a non-finite loss.

    The finiteness check and the log happen every `runtime.log_every_steps` steps and at the
    epoch's end only, so the GPU is synchronised that rarely.
    """
    cfg, device, steps_per_epoch = loop.cfg, loop.device, loop.steps_per_epoch
    loop.state.rule.start_of_epoch()
    sums = torch.zeros(5, device=device)  # loss, entropy, batch entropy, kl, bad-step+1
    first_bad = torch.zeros((), device=device)
    for i in range(steps_per_epoch):
        step = epoch * steps_per_epoch + i
        faults.maybe_kill("kill_step", step, loop.run_dir)
        faults.maybe_raise("raise_step", step, loop.run_dir)
        crops = loop.data.batch(step, steps_per_epoch, cfg.optim.batch_size, cfg.seed,
                                loop.info.rank, loop.info.world_size)
        if loop.nan_step == step:
            crops = [c * float("nan") for c in crops]
        out = train_step(loop.state, crops, step, cfg, loop.sched)
        sums[:4] += torch.stack([out.loss.detach(), out.teacher_entropy,
                                 out.teacher_batch_entropy, out.kl])
        bad = ~torch.isfinite(out.loss.detach())
        first_bad = torch.where(bad & (first_bad == 0), torch.tensor(float(step + 1),
                                                                      device=device),
                                first_bad)
        if (i + 1) % cfg.runtime.log_every_steps == 0 or i + 1 == steps_per_epoch:
            diverged_at = check_finite(first_bad)
            if diverged_at is not None:
                return EpochSums(sums, diverged_at)
            if loop.info.rank == 0:
                _log_progress(loop, epoch, step, float(sums[0]) / (i + 1))
    return EpochSums(sums, None)


def _log_progress(loop: Loop, epoch: int, step: int, mean_loss: float) -> None:
    cfg, sched = loop.cfg, loop.sched
    done = step + 1 - loop.start_step
    rate = done / (time.perf_counter() - loop.run_start)
    left = (sched.total_steps - step - 1) / max(rate, 1e-9)
    log.info("epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f img/s eta %s",
             epoch + 1, cfg.epochs, step + 1, sched.total_steps, mean_loss, sched.lr(step),
             rate * cfg.optim.batch_size, format_eta(left))


def epoch_record(loop: Loop, epoch: int, sums: torch.Tensor, t0: float) -> dict[str, Any]:
    """Average `sums` over ranks, evaluate; metrics.jsonl's line.

    `t0` is when the epoch's first step began (time.perf_counter()).
    """
    cfg, sched, steps_per_epoch = loop.cfg, loop.sched, loop.steps_per_epoch
    train_seconds = time.perf_counter() - t0
    dist.all_reduce_sum(sums)
    sums /= loop.info.world_size
    last_step = (epoch + 1) * steps_per_epoch - 1
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": last_step + 1,
        "loss": float(sums[0]) / steps_per_epoch,
        "teacher_entropy": float(sums[1]) / steps_per_epoch,
        "teacher_batch_entropy": float(sums[2]) / steps_per_epoch,
        "kl_teacher_student": float(sums[3]) / steps_per_epoch,
        "lr": sched.lr(last_step), "weight_decay": sched.weight_decay(last_step),
        "momentum": loop.state.rule.momentum(sched.momentum(last_step)),
        "teacher_temp": sched.teacher_temp(last_step),
        "images_per_s": steps_per_epoch * cfg.optim.batch_size / train_seconds,
    }
    _evaluate(loop, epoch, record)
    record["epoch_seconds"] = time.perf_counter() - t0
    record["peak_memory_mb"] = peak_memory_mb(loop.device)
    return record


def _evaluate(loop: Loop, epoch: int, record: dict[str, Any]) -> None:
    """The kNN (every `eval.every_epochs` and at the end) and linear-probe values, timed."""
    teacher, model, evaluator = loop.state.teacher, loop.model, loop.evaluator
    t_eval = time.perf_counter()
    if (epoch + 1) % loop.cfg.eval.every_epochs == 0 or epoch + 1 == loop.cfg.epochs:
        faults.maybe_kill("kill_eval", epoch + 1, loop.run_dir)
        record["knn_teacher"] = evaluator.knn(teacher)
        record["knn_student"] = evaluator.knn(model)
    else:
        record["knn_teacher"] = record["knn_student"] = None
    t_linear = time.perf_counter()
    due = evaluator.linear_due(epoch + 1)
    record["linear_teacher"] = evaluator.linear(teacher) if due else None
    record["linear_student"] = evaluator.linear(model) if due else None
    record["linear_seconds"] = time.perf_counter() - t_linear
    record["eval_seconds"] = time.perf_counter() - t_eval


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def check_finite(first_bad: torch.Tensor) -> int | None:
    """The step of the first non-finite loss on any rank, or None (one host sync)."""
    flag = first_bad.clone()
    if dist.is_initialized():
        # The smallest positive step over ranks: encode "none" as +inf for a MIN via negation.
        flag = torch.where(flag > 0, flag, torch.tensor(float("inf"), device=flag.device))
        flag = -flag
        import torch.distributed as torch_dist
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        flag = -flag
        value = float(flag)
        return None if math.isinf(value) else int(value) - 1
    value = float(flag)
    return int(value) - 1 if value > 0 else None
