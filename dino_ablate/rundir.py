"""Writing the run directory: the contract with analysis (docs/run_directory.md).

Only rank 0 writes. Every file but metrics.jsonl is replaced atomically; metrics.jsonl is
appended one whole record at a time and rewritten from the checkpoint's history on resume, so
a record is never lost or duplicated; records beyond the checkpoint's are moved aside, never
dropped. A failed write (a full disk) leaves the previous file and no partial temporary one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dino_ablate import safeload
from dino_ablate.contract import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    INIT_FILE,
    METRICS_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    TRAINER_STATES,
    TrainerState,
    clean,
    read_json,
    write_atomic,
    write_json,
)

# read_json, write_atomic and write_json are the contract's; re-exported for the launchers
__all__ = ["RunDir", "aside_path", "read_json", "set_aside", "write_atomic", "write_json"]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def aside_path(path: Path, why: str) -> Path:
    """A free name beside `path` for a file set aside: `<name>.<why>-<UTC time>[-n]`."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    side = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while side.exists():
        side = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
        n += 1
    return side


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` (a file or a folder) to a free `aside_path` beside it; returns that path.
    What is set aside is kept as it was, never overwritten."""
    side = aside_path(path, why)
    os.replace(path, side)
    return side


class RunDir:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def read_config(self) -> dict[str, Any] | None:
        file = self.path / CONFIG_FILE
        if not file.exists():
            return None
        data = safeload.read_yaml(file)  # ConfigError naming the file if it is damaged
        return data if isinstance(data, dict) else None

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))

    def status(self) -> dict[str, Any] | None:
        return read_json(self.path / STATUS_FILE)

    def write_status(self, state: TrainerState, epoch: int, epochs: int, step: int,
                     reason: str | None = None) -> None:
        assert state in TRAINER_STATES, state
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_json(self.path / STATUS_FILE, {"state": state, "reason": reason, "epoch": epoch,
                                               "epochs": epochs, "step": step, "updated": now})

    def write_init(self, record: dict[str, Any]) -> None:
        """init.json: the random-init networks' evaluation and the pixel baselines."""
        write_json(self.path / INIT_FILE, record)

    def read_init(self) -> dict[str, Any] | None:
        return read_json(self.path / INIT_FILE)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with exactly `records` (the checkpoint's history)."""
        text = "".join(json.dumps(clean(r), sort_keys=True) + "\n" for r in records)
        write_atomic(self.metrics, text)

    def restore_metrics(self, records: list[dict[str, Any]]) -> Path | None:
        """Make metrics.jsonl exactly `records`, the history of the checkpoint resumed from
        (none lost or doubled). Lines beyond them (epochs that checkpoint does not hold: after
        a fall-back to previous.pt, or a restart without a checkpoint) are moved, byte for byte,
        to `metrics.jsonl.orphaned-<UTC time>` beside it, whose path is returned."""
        try:
            lines = self.metrics.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        extra = lines[len(records):]
        side = None
        if any(line.strip() for line in extra):
            side = aside_path(self.metrics, "orphaned")
            write_atomic(side, b"".join(extra))
        self.write_metrics(records)
        return side

    def append_metrics(self, record: dict[str, Any],
                       mid_write: Callable[[], None] | None = None) -> int:
        """Append one record as one line, fsynced; returns the offset it starts at.

        A failed write (a full disk) cuts the file back to that offset: metrics.jsonl never
        keeps a partial line of this writer. `mid_write` runs half-way through the line (the
        fault tests fail the write there).
        """
        line = (json.dumps(clean(record), sort_keys=True) + "\n").encode()
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                _write_all(fd, line[: len(line) // 2])
                if mid_write is not None:
                    mid_write()
                _write_all(fd, line[len(line) // 2:])
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        return start

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to `size` bytes (a record whose checkpoint was not saved).

        Best effort: if even this fails, the resume sets the extra record aside."""
        with contextlib.suppress(OSError):
            os.truncate(self.metrics, size)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY_FILE, summary)
