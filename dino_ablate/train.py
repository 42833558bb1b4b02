"""The training run: set-up, the outer loop (log, evaluate, checkpoint) and resume.

The step itself is `step.train_step`; this module decides when to log, evaluate, checkpoint and
stop, and owns the run directory (rank 0 writes it).
"""

from __future__ import annotations

import functools
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from dino_ablate import checkpoint, dist, faults
from dino_ablate.config import ConfigError, RunConfig, from_dict, to_dict
from dino_ablate.data import load_data
from dino_ablate.evaluate import Evaluator
from dino_ablate.model import (
    build_networks,
    num_tokens,
    set_fused_attention,
    teacher_pairs,
)
from dino_ablate.rundir import RunDir
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, param_groups, train_step
from dino_ablate.teacher import make_teacher_rule

log = logging.getLogger("dino_ablate.train")


def semantic_config(cfg: RunConfig) -> dict[str, Any]:
    """The config without `runtime` (device, threads, logging): what defines the result."""
    data = to_dict(cfg)
    data.pop("runtime")
    return data


def pick_device(cfg: RunConfig) -> torch.device:
    want = cfg.runtime.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' but no GPU is visible; allowed here: cpu, auto",
                          key="runtime.device")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", dist.detect().local_rank % max(torch.cuda.device_count(), 1))


def check_world_size(cfg: RunConfig, world_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    if cfg.optim.batch_size % world_size:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is not divisible by the "
                          f"world size {world_size}; allowed: a multiple of {world_size}",
                          key="optim.batch_size")


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> RunDir:
    """Create the run directory, or check that an existing one holds the same config.

    Never overwrites a different run's results.
    """
    rd = RunDir(run_dir)
    existing = rd.read_config()
    if existing is not None:
        try:
            old = from_dict(existing, source=str(run_dir / "config.yaml"))
        except ConfigError as exc:
            raise ConfigError(f"{run_dir} holds an unreadable config ({exc}); refusing to "
                              "overwrite it: choose another --out") from exc
        if semantic_config(old) != semantic_config(cfg):
            diff = _diff(semantic_config(old), semantic_config(cfg))
            raise ConfigError(f"{run_dir} already holds a run with a different config "
                              f"({diff}); refusing to overwrite it: choose another --out")
    if dist.rank() == 0:
        rd.write_config(to_dict(cfg))
    return rd


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _diff(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return ""


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def build_state(cfg: RunConfig, channels: int, device: torch.device,
                autocast_dtype: torch.dtype | None) -> TrainState:
    """Fresh student, teacher (equal weights), optimizer, center and teacher rule."""
    student, teacher = build_networks(cfg.model, cfg.head, cfg.data.global_crop_size, channels)
    student.to(device)
    teacher.to(device)
    fused = cfg.runtime.fused_attention == "on" or (
        cfg.runtime.fused_attention == "auto"
        and (device.type == "cuda" or num_tokens(cfg.model, cfg.data.global_crop_size) > 64))
    set_fused_attention(student, fused)
    set_fused_attention(teacher, fused)
    if cfg.runtime.compile:
        # In place (nn.Module.compile), so state_dict keys stay those of the plain modules.
        student.backbone.compile()
        teacher.backbone.compile()
    fused_adamw = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, fused=fused_adamw,
                                  foreach=None if fused_adamw else True)
    center = torch.zeros(1, cfg.head.out_dim, device=device)
    s_params, t_params = teacher_pairs(student, teacher)
    rule = make_teacher_rule(cfg.teacher.update, s_params, t_params)
    last_layer = [p for n, p in student.named_parameters()
                  if n.startswith("head.last_layer") and p.requires_grad]
    return TrainState(student, teacher, optimizer, center, rule, last_layer, autocast_dtype)


def train(cfg: RunConfig, run_dir: Path) -> str:
    """Train (or resume) the run in `run_dir`; returns the final state.

    Works in one process, under torchrun or under SLURM/submitit (see `dist`).
    """
    device = pick_device(cfg)
    info = dist.init(device.type)
    check_world_size(cfg, info.world_size)
    is_main = info.rank == 0
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    hosts = dist.rank_hosts() if info.world_size > 1 else []
    if is_main and hosts:
        log.info("ranks on hosts: %s", ", ".join(f"{r} {h}" for r, h in enumerate(hosts)))
    if is_main:
        log.info("world size %d (%s), device %s, %d images per rank per step, %d thread(s) per "
                 "rank", info.world_size, info.launcher, device,
                 cfg.optim.batch_size // info.world_size, torch.get_num_threads())
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)  # the same on every rank, as the official code
    autocast_dtype = torch.bfloat16 if (
        cfg.runtime.precision == "bf16"
        or (cfg.runtime.precision == "auto" and device.type == "cuda")) else None

    # The data first: a missing data folder is a config error, raised before the run directory
    # exists.
    data = load_data(cfg.data, device)
    batch = cfg.optim.batch_size
    steps_per_epoch = data.steps_per_epoch(batch)
    if steps_per_epoch == 0:
        raise ConfigError(f"optim.batch_size: {batch} exceeds the {data.num_train} training "
                          "images; allowed: at most the training set size",
                          key="optim.batch_size")
    rd = prepare_run_dir(cfg, run_dir)
    status = rd.status()
    if status and status.get("state") in ("done", "diverged"):
        log.info("%s is already %s; nothing to do", run_dir, status["state"])
        return str(status["state"])

    sched = Schedules(cfg, steps_per_epoch)
    state = build_state(cfg, data.channels, device, autocast_dtype)
    student, teacher, optimizer, center = (state.student, state.teacher, state.optimizer,
                                           state.center)
    history: list[dict[str, Any]] = []
    start_step = 0
    semantic = semantic_config(cfg)

    state_dict = checkpoint.load_latest(rd.checkpoints, semantic)
    embed_dim = int(teacher.backbone.num_features)  # type: ignore[union-attr, arg-type]
    evaluator = Evaluator(cfg, data, embed_dim, device, autocast_dtype)
    knn = evaluator.knn

    if state_dict is not None:
        student.load_state_dict(state_dict["student"])
        teacher.load_state_dict(state_dict["teacher"])
        optimizer.load_state_dict(state_dict["optimizer"])
        center.copy_(state_dict["center"].to(device))
        torch.set_rng_state(state_dict["rng_cpu"])
        if device.type == "cuda" and state_dict.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state_dict["rng_cuda"], device)
        start_step = int(state_dict["step"])
        history = list(state_dict["metrics"])
        if is_main:
            rd.write_metrics(history)  # exactly the checkpointed epochs: none lost or doubled
            log.info("resuming %s at epoch %d (step %d)", run_dir, start_step // steps_per_epoch,
                     start_step)
    else:
        init = rd.read_init()
        if init is None:
            init = evaluator.init_record(teacher, student)
            if is_main:
                rd.write_init(init)
                rd.write_metrics([])
            log.info("random-init kNN top-1: teacher %.4f student %.4f; raw pixels: kNN %s "
                     "linear %s", init["knn_teacher_init"], init["knn_student_init"],
                     _pct(init.get("knn_pixels")), _pct(init.get("linear_pixels")))
        elif is_main:
            rd.write_metrics([])

    rule = state.rule
    model: torch.nn.Module = student
    if info.world_size > 1:
        # After the checkpoint is loaded: DDP broadcasts rank 0's weights at construction.
        model = DistributedDataParallel(student, device_ids=[device.index]
                                        if device.type == "cuda" else None)
        state.student = model

    start_epoch = start_step // steps_per_epoch
    if is_main:
        rd.write_status("running", start_epoch, cfg.epochs, start_step)
    nan_step = faults.nan_step(run_dir)
    run_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums = torch.zeros(5, device=device)  # loss, entropy, batch entropy, kl, bad-step+1
        first_bad = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            faults.maybe_kill("kill_step", step, run_dir)
            crops = data.batch(step, steps_per_epoch, batch, cfg.seed, info.rank,
                               info.world_size)
            if nan_step == step:
                crops = [c * float("nan") for c in crops]
            out = train_step(state, crops, step, cfg, sched)
            sums[:4] += torch.stack([out.loss.detach(), out.teacher_entropy,
                                     out.teacher_batch_entropy, out.kl])
            bad = ~torch.isfinite(out.loss.detach())
            first_bad = torch.where(bad & (first_bad == 0), torch.tensor(float(step + 1),
                                                                          device=device),
                                    first_bad)
            if (i + 1) % cfg.runtime.log_every_steps == 0 or i + 1 == steps_per_epoch:
                diverged_at = _check_finite(first_bad)
                if diverged_at is not None:
                    return _diverge(rd, cfg, epoch, diverged_at, is_main)
                if is_main:
                    done = step + 1 - start_step
                    rate = done / (time.perf_counter() - run_start)
                    left = (sched.total_steps - step - 1) / max(rate, 1e-9)
                    log.info("epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f img/s eta %s",
                             epoch + 1, cfg.epochs, step + 1, sched.total_steps,
                             float(sums[0]) / (i + 1), sched.lr(step), rate * batch,
                             _format_eta(left))
        train_seconds = time.perf_counter() - t0
        dist.all_reduce_sum(sums)
        sums /= info.world_size
        rule.end_of_epoch()
        last_step = (epoch + 1) * steps_per_epoch - 1
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": last_step + 1,
            "loss": float(sums[0]) / steps_per_epoch,
            "teacher_entropy": float(sums[1]) / steps_per_epoch,
            "teacher_batch_entropy": float(sums[2]) / steps_per_epoch,
            "kl_teacher_student": float(sums[3]) / steps_per_epoch,
            "lr": sched.lr(last_step), "weight_decay": sched.weight_decay(last_step),
            "momentum": rule.momentum(sched.momentum(last_step)),
            "teacher_temp": sched.teacher_temp(last_step),
            "images_per_s": steps_per_epoch * batch / train_seconds,
        }
        t_eval = time.perf_counter()
        if (epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == cfg.epochs:
            faults.maybe_kill("kill_eval", epoch + 1, run_dir)
            record["knn_teacher"] = knn(teacher)
            record["knn_student"] = knn(model)
        else:
            record["knn_teacher"] = record["knn_student"] = None
        t_linear = time.perf_counter()
        due = evaluator.linear_due(epoch + 1)
        record["linear_teacher"] = evaluator.linear(teacher) if due else None
        record["linear_student"] = evaluator.linear(model) if due else None
        record["linear_seconds"] = time.perf_counter() - t_linear
        record["eval_seconds"] = time.perf_counter() - t_eval
        record["epoch_seconds"] = time.perf_counter() - t0
        record["peak_memory_mb"] = _peak_memory_mb(device)
        history.append(record)
        if is_main:
            checkpoint.save(rd.checkpoints, {
                "student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "center": center.cpu(),
                "step": last_step + 1, "epoch": epoch + 1, "metrics": history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "config": semantic,
            }, mid_write=functools.partial(faults.maybe_kill, "kill_checkpoint", epoch + 1,
                                           run_dir))
            _save_best_knn(rd, history, student, teacher)
            rd.append_metrics(record)
            rd.write_status("running", epoch + 1, cfg.epochs, last_step + 1)
            log.info("epoch %d/%d loss %.4f entropy %.3f kl %.3f knn teacher %s student %s "
                     "(%.1fs)", epoch + 1, cfg.epochs, record["loss"], record["teacher_entropy"],
                     record["kl_teacher_student"], _pct(record["knn_teacher"]),
                     _pct(record["knn_student"]), record["epoch_seconds"])
        dist.barrier()
        if cfg.runtime.collapse_stop and _collapsed(history, cfg):
            final = _end_of_run(rd, evaluator, teacher, student, history, is_main)
            if is_main:
                rd.write_status("done", epoch + 1, cfg.epochs, last_step + 1,
                                reason="stopped early: collapse detected")
                _write_summary(rd, cfg, history, run_start, "done", final)
            return "done"

    final = _end_of_run(rd, evaluator, teacher, student, history, is_main)
    if is_main:
        rd.write_status("done", cfg.epochs, cfg.epochs, sched.total_steps)
        _write_summary(rd, cfg, history, run_start, "done", final)
    return "done"


def _save_best_knn(rd: RunDir, history: list[dict[str, Any]], student: torch.nn.Module,
                   teacher: torch.nn.Module) -> None:
    """Keep the weights of the epoch with the best teacher kNN so far (`export --which`)."""
    value = history[-1]["knn_teacher"]
    earlier = [r["knn_teacher"] for r in history[:-1] if r.get("knn_teacher") is not None]
    if value is None or not math.isfinite(value) or (earlier and value <= max(earlier)):
        return
    checkpoint.save_best(rd.checkpoints, {"student": student.state_dict(),
                                          "teacher": teacher.state_dict(),
                                          "epoch": history[-1]["epoch"], "knn_teacher": value})


def _end_of_run(rd: RunDir, evaluator: Evaluator, teacher: torch.nn.Module,
                student: torch.nn.Module, history: list[dict[str, Any]],
                is_main: bool) -> dict[str, Any]:
    """The evaluations after the last epoch: the paper probe job and the attention maps.

    Returns the final linear-probe values for summary.json.
    """
    last = history[-1] if history else {}
    final: dict[str, Any] = {"linear_protocol": evaluator.proto.protocol,
                             "linear_teacher": last.get("linear_teacher"),
                             "linear_student": last.get("linear_student")}
    if evaluator.proto.protocol == "paper":
        result = evaluator.paper_linear(teacher, student, rd.path / "linear")
        final["linear_teacher"], final["linear_student"] = result["teacher"], result["student"]
    if is_main:
        evaluator.attention(teacher, student, rd.path / "attention", int(last.get("epoch", 0)))
    return final


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _check_finite(first_bad: torch.Tensor) -> int | None:
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


def _diverge(rd: RunDir, cfg: RunConfig, epoch: int, step: int, is_main: bool) -> str:
    log.error("non-finite loss at step %d (epoch %d); the run stops as diverged, its last "
              "checkpoint is kept", step, epoch + 1)
    if is_main:
        rd.write_status("diverged", epoch, cfg.epochs, step,
                        reason=f"non-finite loss at step {step}")
    return "diverged"


def _collapsed(history: list[dict[str, Any]], cfg: RunConfig) -> bool:
    from analysis.collapse import detect

    result = detect([r["teacher_entropy"] for r in history],
                    [r["kl_teacher_student"] for r in history], math.log(cfg.head.out_dim))
    return bool(result.collapsed)


#: init.json keys copied into summary.json (the baselines beside the final values).
INIT_KEYS = ("knn_teacher_init", "knn_student_init", "linear_teacher_init",
             "linear_student_init", "knn_pixels", "linear_pixels")


def _write_summary(rd: RunDir, cfg: RunConfig, history: list[dict[str, Any]],
                   run_start: float, state: str, final: dict[str, Any]) -> None:
    init = rd.read_init() or {}
    rd.write_summary({
        "state": state, "epochs": history[-1]["epoch"] if history else 0,
        "steps": history[-1]["step"] if history else 0,
        "wall_seconds": sum(r["epoch_seconds"] for r in history),
        **{key: init.get(key) for key in INIT_KEYS}, **final,
        "final": history[-1] if history else None, "ln_k": math.log(cfg.head.out_dim),
    })


def train_run_dir(run_dir: Path) -> str:
    """Train the run whose resolved config is `run_dir/config.yaml` (the launchers' entry)."""
    raw = RunDir(run_dir).read_config()
    if raw is None:
        raise ConfigError(f"{run_dir} has no config.yaml")
    return run_guarded(from_dict(raw, source=str(run_dir / "config.yaml")), run_dir)


def run_guarded(cfg: RunConfig, run_dir: Path) -> str:
    """`train`, recording an unexpected exception as state `failed` before re-raising."""
    try:
        return train(cfg, run_dir)
    except ConfigError:
        raise
    except BaseException as exc:
        if dist.rank() == 0 and (run_dir / "config.yaml").exists() \
                and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            status = RunDir(run_dir).status() or {}
            RunDir(run_dir).write_status("failed", int(status.get("epoch", 0)), cfg.epochs,
                                         int(status.get("step", 0)),
                                         reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        dist.shutdown()
