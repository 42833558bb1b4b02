"""Fault injection for the reliability tests, driven by environment variables.

Never set in normal use. `DINO_ABLATE_FAULT` holds `kind:value` items separated by commas:
- `nan_step:K`       the batch of step K is replaced by NaNs (a non-finite loss at step K);
- `kill_step:K`      SIGKILL this process just before step K;
- `kill_eval:E`      SIGKILL during the kNN evaluation of epoch E;
- `kill_checkpoint:E` SIGKILL half-way through writing the checkpoint of epoch E;
- `kill_linear:E`    SIGKILL after the first training step of paper linear-probe epoch E.
Each kill fires once per run directory (a marker file), so the resumed run goes on.
An item may end in `@FRAGMENT`: it then applies only to run directories whose name contains
FRAGMENT (one point of a sweep: `nan_step:5@seed-1`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "DINO_ABLATE_FAULT"


def _items(run_dir: Path) -> dict[str, int]:
    spec = os.environ.get(ENV, "").strip()
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        item, _, scope = item.partition("@")
        if scope and scope not in run_dir.name:
            continue
        kind, _, value = item.partition(":")
        out[kind] = int(value)
    return out


def nan_step(run_dir: Path) -> int | None:
    return _items(run_dir).get("nan_step")


def maybe_kill(kind: str, value: int, run_dir: Path) -> None:
    """SIGKILL ourselves if `kind:value` is requested and has not fired for this run yet."""
    if _items(run_dir).get(kind) != value:
        return
    marker = run_dir / f".fault_{kind}_{value}"
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)
