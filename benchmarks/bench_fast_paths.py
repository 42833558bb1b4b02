"""Before/after of each fast path, measured in one run on this device.

    python benchmarks/bench_fast_paths.py [--config digits] [--repeats 20] [--skip-step]

Prints, per fast path, the plain path's time, the fast path's time and their ratio:
batched multi-crop augmentation vs a loop over images; the foreach teacher EMA and per-tensor
gradient clip vs a loop over parameters; foreach AdamW vs the per-parameter loop; timm's fused
attention vs the plain matmul path (the whole training step, images/s).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from dino_ablate.augment import apply_crop
from dino_ablate.config import load_config
from dino_ablate.data import InMemoryData, load_data
from dino_ablate.model import set_fused_attention
from dino_ablate.schedules import Schedules
from dino_ablate.step import clip_gradients_per_tensor, param_groups, train_step
from dino_ablate.train import build_state, pick_device


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def best(fn: Callable[[], object], repeats: int, rounds: int = 3) -> float:
    return min(timed(fn, repeats) for _ in range(rounds))


def row(name: str, plain: float, fast: float, unit: str = "ms") -> None:
    print(f"{name:<34} plain {1000 * plain:9.2f} {unit}   fast {1000 * fast:9.2f} {unit}   "
          f"speed-up x{plain / fast:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="digits")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-step", action="store_true",
                        help="skip the whole-step fused-attention comparison (slow for ViT-S)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = pick_device(cfg)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    data = load_data(cfg.data, device)
    batch = cfg.optim.batch_size
    print(f"config {args.config}, device {device}, batch {batch}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats")

    # 1. Augmentation: one batched call vs one call per image, same random parameters.
    if isinstance(data, InMemoryData):
        augment = data.augment
        crop_params = augment.sample(batch, torch.Generator().manual_seed(0))
        images = data.train[:batch]

        def batched() -> object:
            return augment.apply(images, crop_params)

        def per_image() -> object:
            return [torch.cat([apply_crop(images[i:i + 1], spec, cp.slice(i, i + 1))
                               for i in range(batch)])
                    for spec, cp in zip(augment.specs, crop_params, strict=True)]
        row("multi-crop augmentation", best(per_image, args.repeats),
            best(batched, args.repeats))

    state = build_state(cfg, data.channels, device, None)
    s_params = state.rule.student_params
    t_params = state.rule.teacher_params

    def ema_loop() -> None:
        with torch.no_grad():
            for t, s in zip(t_params, s_params, strict=True):
                t.mul_(0.996).add_(s.detach(), alpha=0.004)
    row("teacher EMA", best(ema_loop, args.repeats),
        best(lambda: state.rule.after_optimizer_step(0.996), args.repeats))

    params = [p for p in state.student.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)

    def clip_loop() -> None:
        for p in params:
            assert p.grad is not None
            norm = p.grad.norm(2)
            coef = 3.0 / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
    row("per-tensor gradient clip", best(clip_loop, args.repeats),
        best(lambda: clip_gradients_per_tensor(params, 3.0), args.repeats))

    step_time = {}
    for foreach in (False, True):
        opt = torch.optim.AdamW(param_groups(state.student), lr=1e-4, foreach=foreach)
        step_time[foreach] = best(opt.step, args.repeats)
    row("AdamW step (foreach)", step_time[False], step_time[True])

    if args.skip_step:
        return
    # The whole step with fused vs plain attention.
    sched = Schedules(cfg, max(data.steps_per_epoch(batch), 1))
    crops = data.batch(0, sched.steps_per_epoch, batch, cfg.seed, 0, 1)
    times = {False: float("inf"), True: float("inf")}
    for _ in range(3):  # interleaved, best of 3: robust to load from other processes
        for fused in (False, True):
            set_fused_attention(state.student, fused)
            set_fused_attention(state.teacher, fused)
            times[fused] = min(times[fused], timed(lambda: train_step(state, crops, 0, cfg,
                                                                      sched),
                                                   max(3, args.repeats // 4)))
    print(f"{'training step, fused attention':<34} plain {batch / times[False]:9.1f} im/s   "
          f"fused {batch / times[True]:9.1f} im/s   ratio x{times[False] / times[True]:5.2f}")


if __name__ == "__main__":
    main()
