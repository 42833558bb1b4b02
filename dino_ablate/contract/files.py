"""Reading and atomically writing the JSON files of a run directory.

The same functions serve the trainer, the launchers and `analysis/`, so a file one side writes
is read the same way by the other. A damaged file (not UTF-8, not JSON, nested too deep, not an
object) counts as absent: these files are the tool's own records, rewritten by the next writer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from dino_ablate import safeload
from dino_ablate.errors import ConfigError

logger = logging.getLogger(__name__)


def clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace `path` atomically. The temporary name is this writer's own, so concurrent
    writers of one file (two submitters rewriting sweep.json) never rename each other's. A
    failed write (a full disk) removes the temporary file and leaves `path` as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented, key-sorted JSON (non-finite floats as null), atomically."""
    write_atomic(path, json.dumps(clean(data), indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable (warned)."""
    if not path.exists():
        return None
    try:
        return safeload.read_json_object(path)
    except ConfigError as exc:
        logger.warning("%s; ignored", exc)
        return None
