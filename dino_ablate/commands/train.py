"""`dino-ablate train CONFIG [--set key=value ...] --out DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dino_ablate.config import ConfigError, load_config, resolve_config_path
from dino_ablate.preflight import check_train


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "train", help="train one run (resumes automatically when DIR holds a checkpoint)",
        description="Train DINO with CONFIG, a YAML path or a shipped config name (`digits` is "
        "the embedded-default recipe). Run the same command again to resume.")
    p.add_argument("config", help="YAML path or shipped config name (e.g. digits)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set teacher.update=student_copy "
                   "(repeatable; the value is parsed as YAML)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dino_ablate import dist
    from dino_ablate.train import (
        check_world_size,
        is_write_fault,
        record_rank_failure,
        run_guarded,
    )

    cfg = load_config(args.config, args.overrides)
    info = dist.detect()
    rank, world_size = info.rank, info.world_size
    try:
        check_world_size(cfg, world_size)  # before any run directory exists
        check_train(cfg, world_size, str(resolve_config_path(args.config)))
    except ConfigError as exc:  # a missing data folder on this rank's node, say
        if rank != 0:
            record_rank_failure(args.out, rank, exc)
        raise
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        state = run_guarded(cfg, args.out)
    except OSError as exc:
        if not is_write_fault(exc):
            raise
        # A full disk or a read-only directory is no bug: one line (the log has the details).
        print(f"error: {exc}; the last good checkpoint is kept: free space or make "
              f"{args.out} writable, then run the same command to resume", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"{state}: {args.out}")
    return 0 if state == "done" else 1
