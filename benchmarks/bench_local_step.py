"""Which layout makes the `local` (digits, CPU) training step cheapest: eager vs torch.compile,
one thread vs two.

Builds one training state per variant in this process, pays each variant's warm-up (for
torch.compile: the compilation) once, then times the variants in interleaved blocks of steps,
so that every variant sees the same load from other processes. Prints per variant: ms per step
(median over the blocks), the one-off warm-up seconds, and the ratio to eager on one thread.
With two trials at once on two cores (the `local` profiles' layout), two 1-thread steps run in
the wall time of one; a 2-thread run wins only if its step is under half the 1-thread step.

Usage: python benchmarks/bench_local_step.py [--config digits] [--rounds 5] [--block 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from dino_ablate.config import load_config
from dino_ablate.data import load_data
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, train_step
from dino_ablate.train import build_state


@dataclass
class Variant:
    name: str
    compile: bool
    threads: int
    state: TrainState | None = None
    warmup_s: float = 0.0


def _steps(variant: Variant, data, cfg, sched, spe: int, first: int, n: int) -> float:  # type: ignore[no-untyped-def]
    torch.set_num_threads(variant.threads)
    assert variant.state is not None
    t0 = time.perf_counter()
    for i in range(first, first + n):
        crops = data.batch(i % spe, spe, cfg.optim.batch_size, cfg.seed, 0, 1)
        train_step(variant.state, crops, i, cfg, sched)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=10, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    args = parser.parse_args()

    base = load_config(args.config)
    cfg = base
    data = load_data(cfg.data, torch.device("cpu"))
    spe = max(data.steps_per_epoch(cfg.optim.batch_size), 1)
    sched = Schedules(cfg, spe)
    variants = [Variant("eager, 1 thread", False, 1), Variant("compile, 1 thread", True, 1),
                Variant("eager, 2 threads", False, 2)]
    for v in variants:
        vcfg = load_config(args.config, [f"runtime.compile={str(v.compile).lower()}"])
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(v.threads)
        v.state = build_state(vcfg, data.channels, torch.device("cpu"), None)
        t0 = time.perf_counter()
        _steps(v, data, cfg, sched, spe, 0, args.warmup)
        v.warmup_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    step = args.warmup
    for _ in range(args.rounds):
        for v in variants:
            times[v.name].append(_steps(v, data, cfg, sched, spe, step, args.block))
        step += args.block
    ref = statistics.median(times[variants[0].name])
    print(f"{args.config}: batch {cfg.optim.batch_size}, {args.rounds} rounds x {args.block} "
          f"steps per variant, interleaved")
    for v in variants:
        med = statistics.median(times[v.name])
        print(f"  {v.name:18s} {med * 1e3:7.1f} ms/step  (min {min(times[v.name]) * 1e3:.1f}, "
              f"max {max(times[v.name]) * 1e3:.1f})  warm-up {v.warmup_s:5.1f} s  "
              f"x{ref / med:.2f} vs eager 1 thread")


if __name__ == "__main__":
    main()
