"""The `dino-ablate` command line: a thin dispatcher over the subcommand modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dino_ablate.errors import ConfigError

# Each module exposes `register(subparsers)`; order is the order of `--help`.
COMMAND_MODULES = (
    "dino_ablate.commands.train",
    "dino_ablate.commands.sweep",
    "dino_ablate.commands.status",
    "dino_ablate.commands.bench",
    "dino_ablate.commands.eval",
    "dino_ablate.commands.export",
    "analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dino-ablate", description="Reproduce the DINO paper's ablation studies: train, "
        "sweep on SLURM or Ray, and turn run directories into tables and plots.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
