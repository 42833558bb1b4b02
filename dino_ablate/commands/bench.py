"""`dino-ablate bench CONFIG [--steps N] [--json]`."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench", help="measure images/s, the step-time split, FLOP utilisation",
        description="Benchmark the training step of CONFIG (YAML path or shipped config: "
        "digits, vits16_cpu_bench, vits16_gpu_bench).")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--no-eval", action="store_true", help="skip timing one kNN evaluation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dino_ablate.bench import format_result, run_bench
    from dino_ablate.config import load_config

    cfg = load_config(args.config, args.overrides)
    result = run_bench(cfg, steps=args.steps, warmup=args.warmup, with_eval=not args.no_eval)
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
    else:
        print(format_result(args.config, result))
    return 0
