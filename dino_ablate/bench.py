"""`dino-ablate bench`: where a DINO step's time goes, and how close it runs to the hardware.

Measures, in one process on one device: images/s; the split of step time into data,
forward+backward, optimizer, teacher+center update, metrics and evaluation; peak memory; model
FLOPs per step (torch.utils.flop_counter) and the achieved FLOP/s beside a matmul peak measured
in the same run on the same device and dtype; and the bare backbone's own work on the same crops
(student forward+backward plus teacher forward) for comparison.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dino_ablate.config import RunConfig
from dino_ablate.data import TrainData, load_data
from dino_ablate.knn import knn_accuracy
from dino_ablate.model import MultiCropNetwork
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, train_step
from dino_ablate.train import build_state, pick_device

PHASES = ("data", "forward_backward", "optimizer", "teacher_center", "metrics")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BenchResult:
    images_per_s: float
    step_seconds: float
    phase_seconds: dict[str, float]
    eval_seconds: float
    peak_memory_mb: float
    flops_per_step: float
    achieved_flops: float
    peak_flops: float
    backbone_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_fraction(self) -> float:
        return self.phase_seconds["data"] / self.step_seconds

    @property
    def utilisation(self) -> float:
        return self.achieved_flops / self.peak_flops

    @property
    def step_over_backbone(self) -> float:
        return (self.step_seconds - self.phase_seconds["data"]) / self.backbone_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "images_per_s": self.images_per_s, "step_seconds": self.step_seconds,
            "phase_seconds": self.phase_seconds,
            "phase_fractions": {k: v / self.step_seconds for k, v in self.phase_seconds.items()},
            "data_fraction": self.data_fraction, "eval_seconds": self.eval_seconds,
            "peak_memory_mb": self.peak_memory_mb, "flops_per_step": self.flops_per_step,
            "achieved_flops_per_s": self.achieved_flops, "peak_matmul_flops_per_s":
            self.peak_flops, "utilisation": self.utilisation,
            "backbone_seconds": self.backbone_seconds,
            "step_over_backbone": self.step_over_backbone, **self.extra,
        }


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048,
                repeats: int = 10) -> float:
    """FLOP/s of a large square matmul: the practical peak of this device and dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def _timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def run_bench(cfg: RunConfig, steps: int = 10, warmup: int = 3,
              with_eval: bool = True) -> BenchResult:
    """Benchmark `steps` training steps of `cfg` after `warmup` untimed ones."""
    device = pick_device(cfg)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    autocast_dtype = torch.bfloat16 if (
        cfg.runtime.precision == "bf16"
        or (cfg.runtime.precision == "auto" and device.type == "cuda")) else None
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, device)
    batch = cfg.optim.batch_size
    spe = max(data.steps_per_epoch(batch), 1)
    sched = Schedules(cfg, spe)
    state = build_state(cfg, data.channels, device, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    phase_seconds, backbone_seconds, crops = _time_steps(cfg, data, state, sched, device,
                                                         autocast_dtype, steps, warmup)
    step_seconds = sum(phase_seconds.values())
    eval_seconds = _eval_seconds(cfg, data, state, device, autocast_dtype) if with_eval else 0.0

    # FLOPs of one whole step (teacher forward, student forward + backward, loss).
    with FlopCounterMode(display=False) as counter:
        train_step(state, crops, warmup + steps, cfg, sched)
    flops = float(counter.get_total_flops())

    peak_dtype = autocast_dtype or torch.float32
    peak = matmul_peak(device, peak_dtype)
    fwd_bwd_seconds = phase_seconds["forward_backward"] + phase_seconds["optimizer"] \
        + phase_seconds["teacher_center"]
    memory = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
              else _cpu_peak_mb())
    return BenchResult(
        images_per_s=batch / step_seconds, step_seconds=step_seconds,
        phase_seconds=phase_seconds, eval_seconds=eval_seconds, peak_memory_mb=memory,
        flops_per_step=flops, achieved_flops=flops / fwd_bwd_seconds, peak_flops=peak,
        backbone_seconds=backbone_seconds,
        extra={"device": str(device), "dtype": str(peak_dtype).removeprefix("torch."),
               "batch_size": batch, "crops": [list(c.shape[1:]) for c in crops],
               "threads": torch.get_num_threads(), "arch": cfg.model.arch,
               "patch_size": cfg.model.patch_size})


def _time_steps(cfg: RunConfig, data: TrainData, state: TrainState, sched: Schedules,
                device: torch.device, autocast_dtype: torch.dtype | None, steps: int,
                warmup: int) -> tuple[dict[str, float], float, list[torch.Tensor]]:
    """Seconds per step of each phase, of the bare backbones, and the last step's crops.

    Each DINO step is followed by the bare backbones on its crops, so that both are timed
    under the same conditions (load from other processes, clock, caches).
    """
    batch = cfg.optim.batch_size
    spe = max(data.steps_per_epoch(batch), 1)
    times: dict[str, float] = defaultdict(float)
    clock = [0.0]

    def mark(phase: str) -> None:
        _sync(device)
        now = time.perf_counter()
        times[phase] += now - clock[0]
        clock[0] = now

    backbone_work = _backbone_work(state, device, autocast_dtype)
    sums = torch.zeros(4, device=device)
    crops: list[torch.Tensor] = []
    backbone_total = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            times.clear()
            backbone_total = 0.0
        _sync(device)
        clock[0] = time.perf_counter()
        crops = data.batch(i % spe, spe, batch, cfg.seed, 0, 1)
        mark("data")
        out = train_step(state, crops, i, cfg, sched, mark)
        sums += torch.stack([out.loss.detach(), out.teacher_entropy, out.teacher_batch_entropy,
                             out.kl])
        mark("metrics")
        backbone_total += _timed(functools.partial(backbone_work, crops), device, 1)
    return {p: times[p] / steps for p in PHASES}, backbone_total / steps, crops


def _backbone_work(state: TrainState, device: torch.device, autocast_dtype: torch.dtype | None
                   ) -> Callable[[list[torch.Tensor]], None]:
    """The bare backbones on the same crops, grouped by resolution like the model does: the
    student's forward + backward and the teacher's forward, what the DINO step cannot avoid."""
    assert isinstance(state.student, MultiCropNetwork)
    assert isinstance(state.teacher, MultiCropNetwork)
    student_bb, teacher_bb = state.student.backbone, state.teacher.backbone

    def backbone_work(crops: list[torch.Tensor]) -> None:
        groups = [torch.cat(crops[:2])] + ([torch.cat(crops[2:])] if len(crops) > 2 else [])
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            with torch.no_grad():
                teacher_bb(groups[0])
            loss = sum(student_bb(g).float().sum() for g in groups)
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        student_bb.zero_grad(set_to_none=True)

    return backbone_work


def _eval_seconds(cfg: RunConfig, data: TrainData, state: TrainState, device: torch.device,
                  autocast_dtype: torch.dtype | None) -> float:
    """Seconds of one kNN evaluation of the teacher."""
    bank, queries = data.knn_sets(cfg.seed)
    t0 = time.perf_counter()
    assert isinstance(state.teacher, MultiCropNetwork)
    knn_accuracy(state.teacher.backbone, bank, queries, data.num_classes, cfg.eval.knn_k,
                 cfg.eval.knn_temperature, cfg.eval.batch_size, device, autocast_dtype)
    return time.perf_counter() - t0


def _cpu_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_result(name: str, r: BenchResult) -> str:
    lines = [f"{name}: {r.images_per_s:.1f} images/s, {1000 * r.step_seconds:.1f} ms/step "
             f"({r.extra['device']}, {r.extra['dtype']}, batch {r.extra['batch_size']}, "
             f"{r.extra['threads']} threads)"]
    for phase in PHASES:
        sec = r.phase_seconds[phase]
        lines.append(f"  {phase:<17} {1000 * sec:9.2f} ms  {100 * sec / r.step_seconds:5.1f} %")
    lines.append(f"  evaluation (kNN)  {r.eval_seconds:9.2f} s per evaluation")
    lines.append(f"  peak memory       {r.peak_memory_mb:9.0f} MB")
    lines.append(f"  model FLOPs/step  {r.flops_per_step / 1e9:9.2f} GFLOP -> "
                 f"{r.achieved_flops / 1e9:.1f} GFLOP/s achieved vs {r.peak_flops / 1e9:.1f} "
                 f"GFLOP/s matmul peak = {100 * r.utilisation:.1f} % utilisation")
    lines.append(f"  bare backbone     {1000 * r.backbone_seconds:9.2f} ms (student fwd+bwd + "
                 f"teacher fwd); DINO step (without data) / backbone = "
                 f"{r.step_over_backbone:.3f}")
    return "\n".join(lines)
