"""What a rank other than 0 leaves when it fails: `failed_ranks/rank<R>-<UTC time>.json`.

Rank 0 owns status.json. In a multi-rank run another rank's exception used to reach only its own
log: its launcher (srun --kill-on-bad-exit, torchrun, the Ray rank driver) then ended rank 0
before rank 0 could say why, and the run read "interrupted". Each such rank writes one record
of its own (no two ranks write one file; a later failure never replaces an earlier one), and
whoever reads the run's state takes the records newer than status.json: a failure of the
attempt status.json describes, not of an earlier attempt that a resume has since written over.
Each record also names its attempt (`attempt_id`: the SLURM job and its restart count, or the
rendezvous address), so rank 0 blames only a rank of its own job, and its SLURM job, so a
record of another job than the one launch.json names is not read either.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dino_ablate.contract.files import read_json, write_json

logger = logging.getLogger(__name__)

#: the folder of a run directory holding the records (docs/run_directory.md)
FAILED_RANKS_DIR = "failed_ranks"


def slurm_job(env: Mapping[str, str] | None = None) -> str | None:
    """This process's SLURM job as launch.json records it (`7_1` for an array task)."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def attempt_id(env: Mapping[str, str] | None = None) -> str:
    """The same string on every rank of one attempt, another for the next attempt: the SLURM
    job and its restart count (a requeue is a new attempt), else the rendezvous address and
    torchrun's run id (each attempt of a launcher picks a free port)."""
    env = os.environ if env is None else env
    job = slurm_job(env)
    if job is not None:
        return f"slurm job {job} restart {env.get('SLURM_RESTART_COUNT', '0')}"
    return (f"rendezvous {env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')} "
            f"run {env.get('TORCHELASTIC_RUN_ID', '?')}")


def write_rank_failure(run_dir: Path, rank: int, host: str, reason: str, traceback: str,
                       epoch: int | None) -> Path | None:
    """Record rank `rank`'s failure; None (logged) when the run directory cannot take it."""
    now = datetime.datetime.now(datetime.UTC)
    folder = run_dir / FAILED_RANKS_DIR
    path = folder / f"rank{rank}-{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    try:
        folder.mkdir(exist_ok=True)
        write_json(path, {"rank": rank, "host": host, "reason": reason, "epoch": epoch,
                          "time": now.isoformat(timespec="seconds"), "attempt": attempt_id(),
                          "slurm_job": slurm_job(), "traceback": traceback})
    except OSError as exc:
        logger.error("rank %d failed (%s); recording it in %s failed as well: %s", rank,
                     reason, folder, exc)
        return None
    return path


def fresh_rank_failures(run_dir: Path, status_file: Path, *, attempt: str | None = None,
                        slurm_job: str | None = None) -> list[dict[str, Any]]:
    """The records of the latest attempt that failed after `status_file` last changed (any
    time when it does not exist), oldest first, each with `file`, its path relative to the
    run directory. With `attempt`, only that attempt's; with `slurm_job` (the job launch.json
    names), only that job's."""
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
        record = read_json(path) if written >= since else None
        if record is None or (attempt is not None and record.get("attempt") != attempt) \
                or (slurm_job is not None and record.get("slurm_job") != slurm_job):
            continue
        found.append((written, {**record, "file": os.path.join(FAILED_RANKS_DIR, path.name)}))
    records = [record for _, record in sorted(found, key=lambda item: item[0])]
    latest = records[-1].get("attempt") if records else None
    return [record for record in records if record.get("attempt") == latest]


def first_failure(run_dir: Path, status_file: Path, *, attempt: str | None = None,
                  slurm_job: str | None = None) -> str | None:
    """`describe` of the first of `fresh_rank_failures`, or None when there is none."""
    records = fresh_rank_failures(run_dir, status_file, attempt=attempt, slurm_job=slurm_job)
    return describe(records[0]) if records else None


def describe(record: dict[str, Any]) -> str:
    """`rank 1 on node2 failed: ValueError: ... (failed_ranks/rank1-….json)`."""
    return (f"rank {record.get('rank')} on {record.get('host')} failed: {record.get('reason')} "
            f"({record.get('file')})")
