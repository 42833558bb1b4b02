"""Whether averaging the student's weights, over any window, gives better features than the
student itself (the mechanism behind the EMA teacher's lead in the paper's Fig. 6 left).

    python benchmarks/weight_averages.py [--config digits] [--set key=value ...]

Trains the config exactly as `dino-ablate train` does (the same state, batches and step; no run
directory is written) and keeps the student's backbone every `--every` steps over the second
half. At 60, 70, 80, 90 and 100 % of training it prints the k-NN top-1 of the student, of the
EMA teacher and of uniform averages of the student's snapshots over the last W steps, for each
W of `--windows`. One thread; about the time of one training run plus a k-NN per average.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from dino_ablate.config import load_config
from dino_ablate.data import load_data
from dino_ablate.evaluate import Evaluator
from dino_ablate.schedules import Schedules
from dino_ablate.step import train_step
from dino_ablate.train import build_state

CHECKS = (0.6, 0.7, 0.8, 0.9, 1.0)


def average(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes."""
    return {k: torch.stack([s[k].float() for s in snapshots]).mean(0) for k in snapshots[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digits")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--every", type=int, default=5, help="steps between snapshots")
    parser.add_argument("--windows", type=int, nargs="+",
                        default=[25, 50, 100, 200, 400, 800, 1600, 3200])
    args = parser.parse_args()
    if args.every < 1 or min(args.windows) < args.every:
        parser.error(f"--every {args.every} and --windows {args.windows}: every window must "
                     "hold at least one snapshot (windows >= --every >= 1)")
    cfg = load_config(args.config, ["runtime.threads=1", *args.overrides])
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    data = load_data(cfg.data, device)
    per_epoch = data.steps_per_epoch(cfg.optim.batch_size)
    sched = Schedules(cfg, per_epoch)
    state = build_state(cfg, data.channels, device, None)
    evaluator = Evaluator(cfg, data, int(state.teacher.backbone.num_features), device, None)
    total = cfg.epochs * per_epoch
    longest = max(args.windows)
    checks = {round(total * f) for f in CHECKS}
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
    probe = copy.deepcopy(state.student)
    sets = "".join(f" --set {o}" for o in args.overrides)
    print(f"{args.config}{sets}: {total} steps ({per_epoch} per epoch), "
          f"a snapshot every {args.every} steps, windows {args.windows}", flush=True)
    t0 = time.perf_counter()
    for step in range(total):
        if step % per_epoch == 0:
            state.rule.start_of_epoch()
        crops = data.batch(step, per_epoch, cfg.optim.batch_size, cfg.seed, 0, 1)
        train_step(state, crops, step, cfg, sched)
        done = step + 1
        if done % args.every == 0 and done > min(checks) - longest:
            snapshots.append((done, {k: v.detach().clone()
                                     for k, v in state.student.backbone.state_dict().items()}))
            snapshots = [s for s in snapshots if s[0] > done - longest]
        if done not in checks:
            continue
        row = {"epoch": done / per_epoch, "step": done,
               "student": evaluator.knn(state.student), "teacher": evaluator.knn(state.teacher)}
        for w in args.windows:
            probe.backbone.load_state_dict(average([s for at, s in snapshots if at > done - w]))
            row[f"avg{w}"] = evaluator.knn(probe)
        print(json.dumps({k: round(100 * v, 2) if k == "student" or k == "teacher"
                          or k.startswith("avg") else v for k, v in row.items()}),
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
