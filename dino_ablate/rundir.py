"""Writing the run directory: the contract with analysis (docs/run_directory.md).

Only rank 0 writes. Every file but metrics.jsonl is replaced atomically; metrics.jsonl is
rewritten from the checkpoint's history on resume, so a record is never lost or duplicated.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import yaml

STATES = ("running", "done", "diverged", "failed")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` atomically. The temporary name is this writer's own, so concurrent
    writers of one file (two submitters rewriting sweep.json) never rename each other's."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class RunDir:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def read_config(self) -> dict[str, Any] | None:
        file = self.path / "config.yaml"
        if not file.exists():
            return None
        data = yaml.safe_load(file.read_text())
        return data if isinstance(data, dict) else None

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def status(self) -> dict[str, Any] | None:
        return read_json(self.path / "status.json")

    def write_status(self, state: str, epoch: int, epochs: int, step: int,
                     reason: str | None = None) -> None:
        assert state in STATES, state
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_json(self.path / "status.json", {"state": state, "reason": reason, "epoch": epoch,
                                               "epochs": epochs, "step": step, "updated": now})

    def write_init(self, record: dict[str, Any]) -> None:
        """init.json: the random-init networks' evaluation and the pixel baselines."""
        write_json(self.path / "init.json", record)

    def read_init(self) -> dict[str, Any] | None:
        return read_json(self.path / "init.json")

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with exactly `records` (the checkpoint's history)."""
        text = "".join(json.dumps(_clean(r), sort_keys=True) + "\n" for r in records)
        write_atomic(self.path / "metrics.jsonl", text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)
