"""What a rank other than 0 leaves when it fails: `failed_ranks/rank<R>-<UTC time>.json`.

Rank 0 owns status.json. In a multi-rank run another rank's exception used to reach only its own
log: its launcher (srun --kill-on-bad-exit, torchrun, the Ray rank driver) then ended rank 0
before rank 0 could say why, and the run read "interrupted". Each such rank writes one record
of its own (no two ranks write one file; a later failure never replaces an earlier one), and
whoever reads the run's state takes the records newer than status.json: a failure of the
attempt status.json describes, not of an earlier attempt that a resume has since written over.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

from dino_ablate.contract.files import read_json, write_json

logger = logging.getLogger(__name__)

#: the folder of a run directory holding the records (docs/run_directory.md)
FAILED_RANKS_DIR = "failed_ranks"


def write_rank_failure(run_dir: Path, rank: int, host: str, reason: str, traceback: str,
                       epoch: int | None) -> Path | None:
    """Record rank `rank`'s failure; None (logged) when the run directory cannot take it."""
    now = datetime.datetime.now(datetime.UTC)
    folder = run_dir / FAILED_RANKS_DIR
    path = folder / f"rank{rank}-{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    try:
        folder.mkdir(exist_ok=True)
        write_json(path, {"rank": rank, "host": host, "reason": reason, "epoch": epoch,
                          "time": now.isoformat(timespec="seconds"), "traceback": traceback})
    except OSError as exc:
        logger.error("rank %d failed (%s); recording it in %s failed as well: %s", rank,
                     reason, folder, exc)
        return None
    return path


def fresh_rank_failures(run_dir: Path, status_file: Path) -> list[dict[str, Any]]:
    """The records written after `status_file` last changed (all of them when it does not
    exist), oldest first; each with `file`, its path relative to the run directory."""
    folder = run_dir / FAILED_RANKS_DIR
    if not folder.is_dir():
        return []
    try:
        since = status_file.stat().st_mtime_ns
    except FileNotFoundError:
        since = -1
    found = []
    for path in folder.glob("rank*.json"):
        try:
            written = path.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if written < since:
            continue
        record = read_json(path)
        if record is not None:
            found.append((written, {**record, "file": os.path.join(FAILED_RANKS_DIR, path.name)}))
    return [record for _, record in sorted(found, key=lambda item: item[0])]


def describe(record: dict[str, Any]) -> str:
    """`rank 1 on node2 failed: ValueError: ... (failed_ranks/rank1-….json)`."""
    return (f"rank {record.get('rank')} on {record.get('host')} failed: {record.get('reason')} "
            f"({record.get('file')})")
