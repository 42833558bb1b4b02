"""Fault injection for the reliability tests, driven by environment variables.

Never set in normal use. `DINO_ABLATE_FAULT` holds `kind:value` items separated by commas:
- `nan_step:K`       the batch of step K is replaced by NaNs (a non-finite loss at step K);
- `kill_step:K`      SIGKILL this process just before step K;
- `raise_step:K`     raise RuntimeError just before step K (an unexpected error in the trainer);
- `kill_eval:E`      SIGKILL during the kNN evaluation of epoch E;
- `kill_checkpoint:E` SIGKILL half-way through writing the checkpoint of epoch E;
- `kill_linear:E`    SIGKILL after the first training step of paper linear-probe epoch E;
- `enospc_checkpoint:E` a full disk (OSError ENOSPC) while writing the checkpoint of epoch E;
- `enospc_metrics:E` a full disk half-way through appending epoch E's metrics record;
- `enospc_status:E`  a full disk while recording a failure in status.json after E epochs;
- `erofs_checkpoint:E`, `erofs_metrics:E`, `erofs_status:E`: the same with a read-only file
  system (OSError EROFS).
Each kill or write fault fires once per run directory (a marker file), so the resumed run goes
on.
An item may end in `@FRAGMENT`: it then applies only to run directories whose name contains
FRAGMENT (one point of a sweep: `nan_step:5@seed-1`).
`DINO_ABLATE_FAULT_RANK=R` limits every fault to the process of rank R of a multi-rank run
(`dist.detect`'s rank, from the launch environment; 0 for a single process).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from dino_ablate.errors import env_number

ENV = "DINO_ABLATE_FAULT"
RANK_ENV = "DINO_ABLATE_FAULT_RANK"

#: write faults: the prefix of the fault kind -> the errno the failed write raises.
WRITE_FAULTS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}


def _this_rank() -> int:
    from dino_ablate import dist

    return dist.detect().rank


def _items(run_dir: Path) -> dict[str, int]:
    spec = os.environ.get(ENV, "").strip()
    out: dict[str, int] = {}
    if not spec:  # normal use: one lookup per call (it runs before every training step)
        return out
    only_rank = env_number(RANK_ENV, "a rank (an integer >= 0)", lambda v: v >= 0 and v == int(v))
    if only_rank is not None and int(only_rank) != _this_rank():
        return out
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
    if _fire_once(kind, value, run_dir):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_raise(kind: str, value: int, run_dir: Path) -> None:
    """Raise RuntimeError if `kind:value` is requested and has not fired for this run yet."""
    if _fire_once(kind, value, run_dir):
        raise RuntimeError(f"injected fault {kind}:{value} (rank {_this_rank()})")


def _fire_once(kind: str, value: int, run_dir: Path) -> bool:
    """Whether `kind:value` is requested for this run and has not fired yet (then it has)."""
    if _items(run_dir).get(kind) != value:
        return False
    marker = run_dir / f".fault_{kind}_{value}"
    if marker.exists():
        return False
    marker.touch()
    return True


def maybe_fail_write(target: str, value: int, run_dir: Path, path: Path) -> None:
    """Raise the OSError of a failed write of `path` if `enospc_<target>:value` or
    `erofs_<target>:value` is requested and has not fired for this run yet."""
    for prefix, code in WRITE_FAULTS.items():
        if _fire_once(f"{prefix}_{target}", value, run_dir):
            raise OSError(code, os.strerror(code), str(path))
