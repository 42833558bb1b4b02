"""`dino-ablate sweep FILE --backend {slurm,ray} [--profile P] [--out DIR] [--dry-run] ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from dino_ablate.config import expand_root
from dino_ablate.errors import ConfigError
from dino_ablate.launch.base import Backend
from dino_ablate.preflight import check_point
from dino_ablate.sweep import (
    MAX_POINTS,
    Point,
    Sweep,
    SweepPlan,
    iter_points,
    load_sweep,
    plan_sweep,
)

log = logging.getLogger("dino_ablate.sweep")

DEFAULT_OUT_ENV = "DINO_ABLATE_OUT"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sweep", help="expand a sweep file and run its points on SLURM or Ray",
        description="Expand and validate every point of FILE (nothing is created when one is "
        "invalid: exit code 2), then submit the points that are not done. Runs already done "
        "or queued are skipped; interrupted ones resume from their checkpoints.")
    p.add_argument("file", type=Path, help="sweep YAML (see docs/sweeps.md)")
    p.add_argument("--backend", choices=("slurm", "ray"), required=True)
    p.add_argument("--profile", help="profile of the sweep file (default: its default_profile, "
                   "else the first)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output root; the sweep directory is OUT/<output_dir> (default: "
                   f"${DEFAULT_OUT_ENV} or ./outputs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run table with each run's state (SLURM asked, read-only, "
                   "for the jobs recorded in the sweep directory) and the estimated compute "
                   "and memory; create and submit nothing")
    p.add_argument("--max-points", type=int, default=MAX_POINTS, metavar="N",
                   help=f"refuse a sweep that expands to more than N points (default "
                   f"{MAX_POINTS:,}); the size is known before any point is built")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="at most N runs at once: Ray's concurrent trials; on SLURM each "
                   "job array's parallelism (one array per resource shape, so a sweep whose "
                   "points ask for different resources runs up to N per shape)")
    p.add_argument("--ray-address", "--address", dest="ray_address", default=None,
                   metavar="ADDR",
                   help="ray: join the existing Ray cluster at ADDR (host:port of its head, "
                   "or 'auto'; default: $RAY_ADDRESS, else start a private loopback-only "
                   "one-node Ray); see docs/clusters.md")
    p.add_argument("--max-retries", type=int, default=2, metavar="K",
                   help="ray: retries of a failed trial; each resumes from the run's checkpoint")
    p.set_defaults(func=run)


def output_root(out: Path | None) -> Path:
    if out is not None:
        return out
    return Path(os.environ.get(DEFAULT_OUT_ENV) or "outputs")


def check_data_roots(sweep: Sweep) -> None:
    """Every data.root must exist locally before anything is submitted."""
    seen: set[str] = set()
    for point in sweep.points:
        root = point.config.data.root
        if root is None or root in seen:
            continue
        seen.add(root)
        try:
            path = expand_root(root)
        except ConfigError as exc:
            raise ConfigError(f"point {point.index} ({point.label}): {exc}",
                              source=str(sweep.file), key="data.root") from exc
        if path is not None and not path.is_dir():
            raise ConfigError(f"point {point.index} ({point.label}): data.root: {root!r} -> "
                              f"{path} does not exist; allowed: an existing directory",
                              source=str(sweep.file), key="data.root")


def _fmt_resources(point: Point) -> str:
    r = point.resources
    tasks = f"{r.gpus_per_node}gpu" if r.gpus_per_node else f"{r.tasks}task"
    return f"{r.nodes}x{tasks} {r.cpus_per_task}cpu/task {r.time_min}min"


#: rows that set the dry-run table's column widths; later rows stream out as they are built
TABLE_HEAD_ROWS = 200
#: seconds between progress lines while a large sweep expands
PROGRESS_EVERY_S = 2.0


def print_table(plan: SweepPlan, sweep_dir: Path, out: TextIO) -> dict[str, list[Point]]:
    """The dry-run table, one row per point as it is built and checked (a large sweep shows
    its rows and progress at once instead of expanding silently first).

    Returns the points of each distinct resource shape, for `print_placements`."""
    from dino_ablate.contract import RUNS_SUBDIR, STATUS_FILE, read_json, trains_on
    from dino_ablate.launch.cost import estimate
    from dino_ablate.runs import ask_slurm, run_dir_of, run_state

    exists = sweep_dir.is_dir()
    runs_root = sweep_dir / RUNS_SUBDIR
    # the jobs recorded so far, asked once (a requeued job's run reads running, not failed)
    job_states, slurm_error = ask_slurm(sorted(runs_root.iterdir())) \
        if runs_root.is_dir() else ({}, None)
    head: list[tuple[str, ...]] = [("run id", "varied", "resources", "state", "estimate",
                                    "memory")]
    widths: list[int] = []
    totals: dict[str, float] = {}
    shapes: dict[str, list[Point]] = {}
    report = _progress("dry run")
    count = 0
    for count, point in enumerate(iter_points(plan), start=1):
        mem = check_point(point, str(plan.file))
        rd = run_dir_of(sweep_dir, point.run_id)
        state = run_state(rd, job_states, slurm_error).state if exists and rd.is_dir() \
            else "pending"
        if state == "done" and trains_on(read_json(rd / STATUS_FILE) or {},
                                         point.config.runtime.collapse_stop):
            state = "stopped early, trains on"  # its point no longer stops on a collapse
        cost = estimate(point.config, point.resources)
        totals[cost.device] = totals.get(cost.device, 0.0) + cost.device_hours
        shapes.setdefault(_fmt_resources(point), []).append(point)
        row = (point.run_id, point.label, _fmt_resources(point), state,
               f"{cost.device_hours:.3g} {cost.device}-h", mem.summary())
        if widths:
            _write_row(out, row, widths)
        else:
            head.append(row)
            if len(head) > TABLE_HEAD_ROWS:
                widths = _flush_head(out, head)
        report(count, plan.size)
    if not widths:
        _flush_head(out, head)
    total = ", ".join(f"{h:.3g} {d}-hours" for d, h in sorted(totals.items()))
    out.write(f"\n{count} run(s), profile {plan.profile!r}, sweep dir {sweep_dir}\n"
              f"estimated compute: {total} (training only; see dino_ablate/launch/cost.py for "
              "the figures' sources); memory: per rank, see dino_ablate/memory.py\n")
    return shapes


def _write_row(out: TextIO, row: tuple[str, ...], widths: list[int]) -> None:
    out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _flush_head(out: TextIO, rows: list[tuple[str, ...]]) -> list[int]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _write_row(out, row, widths)
    out.flush()
    return widths


def _progress(what: str) -> Callable[[int, int], None]:
    """`report(done, total)`: a log line every PROGRESS_EVERY_S seconds while a sweep
    expands."""
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        if done == 1:  # the first point pays for the imports; time the expansion from here
            last = time.monotonic()
        elif time.monotonic() - last >= PROGRESS_EVERY_S and done < total:
            last = time.monotonic()
            sys.stdout.flush()
            log.info("%s: %d of %d points built and checked", what, done, total)
    return report


def print_placements(shapes: dict[str, list[Point]], backend: str, out: TextIO) -> None:
    """What each distinct resource shape would ask the scheduler for (nothing is submitted)."""
    out.write(f"\n{backend} placement:\n")
    for shown, points in shapes.items():
        res = points[0].resources
        if backend == "ray":
            from dino_ablate.launch.ray_ranks import Placement

            what = "one Tune trial per point, placement group of " + \
                Placement.of(res).describe()
        else:
            what = (f"one job per point (an array per shape): --nodes {res.nodes} "
                    f"--ntasks-per-node {res.tasks} --cpus-per-task {res.cpus_per_task}"
                    + (f" --gpus-per-node {res.gpus_per_node}" if res.gpus_per_node else ""))
        out.write(f"  {shown} ({len(points)} point(s)): {what}\n")


def run(args: argparse.Namespace) -> int:
    from dino_ablate.runs import resolve_sweep_dir

    for flag, value, least in (("--max-parallel", args.max_parallel, 1),
                               ("--max-retries", args.max_retries, 0),
                               ("--max-points", args.max_points, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag}: {value} must be >= {least}")
    if args.dry_run:  # stream the table while the points are built
        plan = plan_sweep(args.file, args.profile, max_points=args.max_points)
        shapes = print_table(plan, resolve_sweep_dir(plan, output_root(args.out)), sys.stdout)
        print_placements(shapes, args.backend, sys.stdout)
        return 0
    # ConfigError -> exit 2, nothing created
    sweep = load_sweep(args.file, args.profile, max_points=args.max_points,
                       progress=_progress("expanding"))
    sweep_dir = resolve_sweep_dir(sweep, output_root(args.out))
    check_data_roots(sweep)
    for point in sweep.points:
        check_point(point, str(sweep.file))
    backend = make_backend(args)
    backend.check(sweep)

    from dino_ablate.launch.base import submit_sweep

    try:
        result = submit_sweep(sweep, sweep_dir, backend, max_parallel=args.max_parallel)
    except RuntimeError as exc:  # the scheduler could not be asked or refused the submission
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for run_id, reason in result.skipped.items():
        print(f"skip    {run_id}: {reason}")
    for run_id, source in result.copied.items():
        print(f"copy    {run_id}: done in {source}")
    for run_id in result.launched:
        job = result.outcome.job_ids.get(run_id)
        print(f"launch  {run_id}" + (f" (job {job})" if job and backend.name == "slurm" else ""))
    for run_id, reason in result.outcome.failed.items():
        print(f"failed  {run_id}: {reason}")
    copied = f", {len(result.copied)} copied from finished twins" if result.copied else ""
    if backend.name == "ray":  # the trials have ended: say how each run stands now
        print_final_states(sweep, sweep_dir, result.launched, sys.stdout)
        print(f"submission {result.submission_id}: {len(result.launched)} launched, "
              f"{len(result.skipped)} skipped{copied}, {len(result.outcome.failed)} failed; "
              f"sweep dir {sweep_dir}\ntables: dino-ablate table {sweep_dir}")
    else:
        print(f"submission {result.submission_id}: {len(result.launched)} launched, "
              f"{len(result.skipped)} skipped{copied}; follow with: dino-ablate status {sweep_dir}")
    return 1 if result.outcome.failed else 0


def print_final_states(sweep: Sweep, sweep_dir: Path, run_ids: list[str], out: TextIO) -> None:
    """One line per run: its state, epochs trained and, when not done, why."""
    from dino_ablate.runs import run_dir_of, run_state

    for run_id in run_ids:
        state = run_state(run_dir_of(sweep_dir, run_id))
        epochs = f"epoch {state.epoch or 0}/{state.epochs or '?'}"
        why = f": {state.reason}" if state.reason and state.state != "done" else ""
        out.write(f"{state.state:<8} {run_id}  {epochs}{why}\n")


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "slurm":
        from dino_ablate.launch.slurm import SlurmBackend

        return SlurmBackend()
    from dino_ablate.launch.ray_backend import RayBackend

    return RayBackend(address=ray_address(args.ray_address), max_failures=args.max_retries,
                      progress=sys.stdout)


def ray_address(given: str | None) -> str | None:
    """--ray-address, else Ray's usual RAY_ADDRESS, else None (a private cluster)."""
    return given or os.environ.get("RAY_ADDRESS") or None
