"""The ``table``, ``plot``, ``report`` and ``claims`` subcommands.

``dino_ablate/cli.py`` calls :func:`register` on its ``argparse`` subparsers; each subcommand
sets ``func`` (parsed args -> exit code). ``python -m analysis`` runs them on their own.

Outputs go under ``SWEEP_DIR/analysis/`` unless ``--out`` says otherwise, and every command
prints where it wrote. Exit codes: 0 success, 2 the path is not a sweep or run directory (the
message names it), 1 an output could not be written. ``claims`` exits 0 only when every claim
holds, 1 otherwise, 2 also when the sweep file is gone or its claims are invalid.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.sweepdir import NotASweepDirectory

# pandas (through analysis.load) is imported only when a command runs: every `dino-ablate`
# process, `train` too, builds this CLI
if TYPE_CHECKING:
    from analysis.load import SweepResults

OUTPUT_SUBDIR = "analysis"
EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}

EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_NOT_A_SWEEP = 2
EXIT_CLAIMS_NOT_ALL_HOLD = 1
EXIT_BAD_CLAIMS = 2


def _load(args: argparse.Namespace) -> SweepResults:
    from analysis.load import load_results

    return load_results(args.sweep_dir, use_cache=not args.no_cache)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a missing sweep into exit code 2 and an unwritable output into 1, with a message."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except NotASweepDirectory as error:
            print(f"error: not a sweep or run directory: {error}", file=sys.stderr)
            return EXIT_NOT_A_SWEEP
        except OSError as error:
            print(f"error: cannot write output: {error}", file=sys.stderr)
            return EXIT_WRITE_FAILED

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def _output_dir(args: argparse.Namespace) -> Path:
    return Path(args.sweep_dir) / OUTPUT_SUBDIR


def run_table(args: argparse.Namespace) -> int:
    """Print the ablation table and write it to a file."""
    from analysis.table_format import render
    from analysis.tables import build_table

    sweep = _load(args)
    text = render(build_table(sweep), args.format)
    out = args.out or _output_dir(args) / f"table.{EXTENSIONS[args.format]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def run_plot(args: argparse.Namespace) -> int:
    """Draw every figure as PNG and PDF."""
    from analysis.plots import write_plots

    sweep = _load(args)
    out_dir = args.out or _output_dir(args) / "plots"
    written = write_plots(sweep, out_dir)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report."""
    from analysis.report import write_report

    sweep = _load(args)
    out = args.out or _output_dir(args) / "report.html"
    write_report(sweep, out)
    print(f"wrote {out}")
    return EXIT_OK


def run_claims(args: argparse.Namespace) -> int:
    """Evaluate the sweep file's claims over the runs: one line per claim and a summary."""
    from analysis.claims import (
        ClaimsUnavailable,
        ConfigError,
        check_sweep_dir,
        summary_line,
        write_outputs,
    )

    try:
        checked = check_sweep_dir(args.sweep_dir, args.sweep_file)
    except (ClaimsUnavailable, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_CLAIMS
    if not checked.results:
        print(f"{checked.sweep_file} gives no claims for profile {checked.profile}")
    for result in checked.results:
        print(result.line())
    print(summary_line(checked.results))
    for path in write_outputs(checked, args.out or _output_dir(args)):
        print(f"wrote {path}", file=sys.stderr)
    held = all(r.verdict == "holds" for r in checked.results)
    return EXIT_OK if held else EXIT_CLAIMS_NOT_ALL_HOLD


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path,
                        help="a sweep directory (runs/<run_id>/...), a run directory, or a "
                             "directory of run directories")
    parser.add_argument("--no-cache", action="store_true",
                        help="ignore and do not update SWEEP_DIR/.analysis_cache")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``table``, ``plot``, ``report`` and ``claims`` subcommands to ``subparsers``.

    Each sets ``func`` to a callable taking the parsed arguments and returning an exit code.
    """
    table = subparsers.add_parser(
        "table", help="per-sweep ablation table (Markdown, LaTeX or CSV)",
        description="Print the ablation table of a sweep (one row per point, seeds "
                    "aggregated) and write it under SWEEP_DIR/analysis/.")
    _add_common(table)
    table.add_argument("--format", choices=tuple(EXTENSIONS), default="md",
                       help="output format (default: md)")
    table.add_argument("--out", type=Path, default=None,
                       help="file to write (default: SWEEP_DIR/analysis/table.<md|tex|csv>)")
    table.set_defaults(func=_guarded(run_table))

    plot = subparsers.add_parser(
        "plot", help="figures of a sweep (PNG and PDF)",
        description="Draw kNN curves, collapse diagnostics and, where the sweep varies them, "
                    "patch-size and batch-size figures.")
    _add_common(plot)
    plot.add_argument("--out", type=Path, default=None,
                      help="directory to write (default: SWEEP_DIR/analysis/plots)")
    plot.set_defaults(func=_guarded(run_plot))

    report = subparsers.add_parser(
        "report", help="self-contained HTML report of a sweep",
        description="Write one HTML page with every table and figure (images embedded).")
    _add_common(report)
    report.add_argument("--out", type=Path, default=None,
                        help="file to write (default: SWEEP_DIR/analysis/report.html)")
    report.set_defaults(func=_guarded(run_report))

    claims = subparsers.add_parser(
        "claims", help="check the paper's claims (the sweep file's `claims:`) over the runs",
        description="Evaluate the claims of the sweep file that SWEEP_DIR/sweep.json names "
                    "(for its profile) over the runs: one line per claim (holds / fails / "
                    "undecided, the measured numbers and the paper's) and a summary; writes "
                    "SWEEP_DIR/analysis/claims.json and claims.md. Exit 0 when every claim "
                    "holds, 1 otherwise, 2 when SWEEP_DIR is not a sweep directory or the "
                    "claims cannot be read.")
    claims.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path,
                        help="a sweep directory written by `dino-ablate sweep`")
    claims.add_argument("--sweep-file", type=Path, default=None,
                        help="read the claims from this sweep file instead of the one "
                             "sweep.json records (e.g. when that one moved)")
    claims.add_argument("--out", type=Path, default=None,
                        help="directory to write claims.json and claims.md (default: "
                             "SWEEP_DIR/analysis)")
    claims.set_defaults(func=_guarded(run_claims))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand on its own (``python -m analysis``)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
