"""Find the run directories of a sweep directory.

Three layouts are accepted, checked in this order:

1. a sweep directory: ``SWEEP_DIR/runs/<run_id>/`` (``SWEEP_DIR/sweep.json`` may be absent);
2. a single run directory (``SWEEP_DIR`` itself holds run files);
3. a directory whose immediate subdirectories are run directories.

Anything else raises :class:`NotASweepDirectory`, whose message names the path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dino_ablate.contract import (
    CONFIG_FILE,
    INIT_FILE,
    METRICS_FILE,
    RUN_FILE,
    RUNS_SUBDIR,
    STATUS_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
)

logger = logging.getLogger(__name__)

#: Files that the contract (docs/run_directory.md) puts in a run directory. A directory holding
#: any one of them is a run directory; a pending run holds only ``run.json``.
RUN_FILES: tuple[str, ...] = (
    RUN_FILE,
    CONFIG_FILE,
    INIT_FILE,
    METRICS_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
)

__all__ = ["RUNS_SUBDIR", "RUN_FILES", "SWEEP_FILE", "NotASweepDirectory", "SweepLayout",
           "is_run_dir", "locate", "natural_key"]


class NotASweepDirectory(ValueError):
    """The path is neither a sweep directory, a run directory nor a directory of runs."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


@dataclass(frozen=True)
class SweepLayout:
    """Where the runs of one sweep live.

    Attributes:
        root: the directory the user named.
        run_dirs: run directories in sweep order (``sweep.json`` ``runs`` first, then by name,
            numbers compared as numbers).
        sweep_meta: the content of ``sweep.json``, or an empty mapping when it is absent.
    """

    root: Path
    run_dirs: tuple[Path, ...]
    sweep_meta: dict[str, Any]

    @property
    def named_baseline(self) -> str | None:
        """The baseline run id named by ``sweep.json``, or None when none is named."""
        baseline = self.sweep_meta.get("baseline")
        if isinstance(baseline, list):  # the launchers write a list (one id per seed)
            baseline = baseline[0] if baseline else None
        return str(baseline) if baseline is not None else None

    @property
    def name(self) -> str | None:
        """The sweep name from ``sweep.json``, or None when it is absent."""
        name = self.sweep_meta.get("name")
        return str(name) if name is not None else None

    @property
    def listed_points(self) -> dict[str, dict[str, Any] | None]:
        """:func:`listed_points` of this sweep's ``sweep.json``."""
        return listed_points(self.sweep_meta)

    @property
    def current_run_dirs(self) -> tuple[Path, ...]:
        """The run directories of the sweep's current expansion: those ``sweep.json`` lists,
        matched by directory name as the claims match them (every run directory when it lists
        none). A run directory left by an earlier expansion of the sweep file (another recipe,
        other run ids) is not one of its points: not a seed in its tables, not a curve in its
        plots.

        Raises:
            NotASweepDirectory: ``sweep.json`` lists runs and none of them has a directory yet.
        """
        listed = self.listed_points
        if not listed:
            return self.run_dirs
        current = tuple(d for d in self.run_dirs if d.name in listed)
        if not current:
            raise NotASweepDirectory(
                self.root / SWEEP_FILE,
                f"lists {len(listed)} run(s) and none of them has a run directory under "
                f"{RUNS_SUBDIR}/ yet; the {len(self.run_dirs)} there are from an earlier "
                "expansion of the sweep file, not its points (submit the sweep, or copy its "
                "runs back)")
        return current


def listed_points(sweep_meta: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The points of the sweep's current expansion, as ``sweep.json`` lists them: run id -> its
    varied values (None for an entry that does not record them); empty when it lists none."""
    points: dict[str, dict[str, Any] | None] = {}
    for entry in sweep_meta.get("runs") or []:
        if isinstance(entry, dict) and "run_id" in entry:
            varied = entry.get("varied")
            points[str(entry["run_id"])] = dict(varied) if isinstance(varied, dict) else None
        elif isinstance(entry, str):
            points[entry] = None
    return points


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding at least one run-directory file."""
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def _read_sweep_meta(root: Path) -> dict[str, Any]:
    path = root / SWEEP_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # not UTF-8 or JSON, too deep
        raise NotASweepDirectory(path, f"cannot read sweep file: {error}") from error
    if not isinstance(meta, dict):
        raise NotASweepDirectory(path, "sweep file must hold a JSON object")
    return meta


def _ordered_run_dirs(parent: Path, listed: list[str]) -> tuple[Path, ...]:
    """Run directories under ``parent``: ids ``listed`` by sweep.json first, then the rest."""
    found = {child.name: child for child in parent.iterdir() if is_run_dir(child)}
    ordered = []
    for run_id in listed:
        if run_id in found:
            ordered.append(found.pop(run_id))
        else:
            logger.warning("%s lists run %s but %s does not exist yet; skipped",
                           SWEEP_FILE, run_id, parent / run_id)
    ordered.extend(found[name] for name in sorted(found, key=natural_key))
    return tuple(ordered)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``run2`` before ``run10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def locate(path: str | Path) -> SweepLayout:
    """Find the run directories under ``path``.

    Raises:
        NotASweepDirectory: ``path`` does not exist, is not a directory, or holds no runs.
    """
    root = Path(path)
    if not root.exists():
        raise NotASweepDirectory(root, "does not exist")
    if not root.is_dir():
        raise NotASweepDirectory(root, "is not a directory (expected a sweep or run directory)")
    meta = _read_sweep_meta(root)
    # `runs` holds run ids, or (as the launchers write it) mappings with a `run_id`.
    listed = [str(r["run_id"]) if isinstance(r, dict) else str(r)
              for r in meta.get("runs") or [] if not isinstance(r, dict) or "run_id" in r]
    runs_dir = root / RUNS_SUBDIR
    if runs_dir.is_dir():
        run_dirs = _ordered_run_dirs(runs_dir, listed)
    elif is_run_dir(root):
        run_dirs = (root,)
    else:
        run_dirs = _ordered_run_dirs(root, listed)
    if not run_dirs:
        raise NotASweepDirectory(
            root,
            "no run directories found (expected runs/<run_id>/ subdirectories, a run directory "
            f"holding any of {', '.join(RUN_FILES)}, or subdirectories that are run directories)",
        )
    return SweepLayout(root=root, run_dirs=run_dirs, sweep_meta=meta)
