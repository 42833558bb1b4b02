"""Atomic checkpoints with one spare: `last.pt` and `previous.pt`.

Written to a temporary file, fsynced and renamed (timm's CheckpointSaver uses os.replace), so a
kill during the write never damages the latest good checkpoint. Loaded with weights_only=True:
a checkpoint can hold tensors and plain Python data, never arbitrary objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from dino_ablate.errors import AnotherRun
from dino_ablate.identity import first_difference

if TYPE_CHECKING:
    from dino_ablate.step import TrainState

log = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "previous.pt"
#: Weights only ({teacher, student, epoch, knn_teacher}) of the epoch with the best teacher kNN.
BEST_KNN = "best_knn.pt"


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What `last.pt` holds: the full training state at the end of an epoch.

    Its fields are the checkpoint's keys (`REQUIRED_KEYS` is derived from them), so what is
    written and what a load requires cannot drift apart.
    """

    student: dict[str, Any]  # state_dict of the unwrapped student
    teacher: dict[str, Any]
    optimizer: dict[str, Any]
    center: torch.Tensor  # (1, K) fp32, on the CPU
    step: int  # optimizer steps done
    epoch: int  # epochs done
    metrics: list[dict[str, Any]]  # one record per epoch done (metrics.jsonl's lines)
    rng_cpu: torch.Tensor
    config: dict[str, Any]  # the resolved run config (`identity` compares it on load)
    rng_cuda: torch.Tensor | None = None  # None off the GPU

    def to_dict(self) -> dict[str, Any]:
        """The mapping torch.save writes (shallow: tensors are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: Keys every checkpoint must hold: the fields of `TrainingCheckpoint` without a default.
REQUIRED_KEYS = tuple(f.name for f in fields(TrainingCheckpoint) if f.default is MISSING)


def pack(state: TrainState, student: torch.nn.Module, *, step: int, epoch: int,
         metrics: list[dict[str, Any]], config: dict[str, Any],
         device: torch.device) -> dict[str, Any]:
    """The checkpoint of `state` after `epoch` epochs (`student` unwrapped from DDP)."""
    return TrainingCheckpoint(
        student=student.state_dict(), teacher=state.teacher.state_dict(),
        optimizer=state.optimizer.state_dict(), center=state.center.cpu(), step=step,
        epoch=epoch, metrics=metrics, rng_cpu=torch.get_rng_state(), config=config,
        rng_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    ).to_dict()


def unpack(saved: dict[str, Any], state: TrainState, device: torch.device
           ) -> tuple[int, list[dict[str, Any]]]:
    """Restore `state` (student not yet DDP-wrapped) and the RNGs from `saved`.

    Returns the step to resume at and the metrics records the checkpoint holds.
    """
    state.student.load_state_dict(saved["student"])
    state.teacher.load_state_dict(saved["teacher"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.center.copy_(saved["center"].to(device))
    torch.set_rng_state(saved["rng_cpu"])
    if device.type == "cuda" and saved.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(saved["rng_cuda"], device)
    return int(saved["step"]), list(saved["metrics"])


def save(folder: Path, state: dict[str, Any],
         mid_write: Callable[[], None] | None = None) -> Path:
    """Write `state` as the new last checkpoint, keeping the old one as previous.

    `mid_write` runs after the temporary file is written and before the renames (the trainer
    appends the epoch's metrics record there; the fault tests kill the process or fail the
    write there). A failure up to then (a full disk, a read-only directory) removes the
    temporary file and leaves `last.pt` and `previous.pt` as they were.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LAST}.tmp"
    try:
        _write(tmp, state)
        if mid_write is not None:
            mid_write()
    except BaseException:
        _remove(tmp)
        raise
    last = folder / LAST
    if last.exists():
        os.replace(last, folder / PREVIOUS)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def save_best(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` (weights of the best-kNN epoch) atomically as `best_knn.pt`."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BEST_KNN}.tmp"
    try:
        _write(tmp, state)
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, folder / BEST_KNN)
    _fsync_dir(folder)
    return folder / BEST_KNN


def _write(path: Path, state: dict[str, Any]) -> None:
    with path.open("wb") as fh:
        torch_save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())


class _KeepWriteError:
    """A binary file whose `write` remembers the OSError it raised."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def torch_save(state: dict[str, Any], fh: BinaryIO) -> None:
    """`torch.save(state, fh)`, raising a failed write as its OSError (ENOSPC, EROFS, ...).

    torch.save reports a write that failed (measured on a full tmpfs) as a RuntimeError about
    zip offsets ("unexpected pos 550592 vs 550480"), which hides that the disk is full.
    """
    writer = _KeepWriteError(fh)
    try:
        torch.save(state, writer)  # type: ignore[arg-type]  # any object with write()
    except RuntimeError as exc:
        error = writer.error
        if error is None:
            raise
        raise OSError(error.errno, error.strerror, error.filename or getattr(fh, "name", None)
                      ) from exc


def _remove(path: Path) -> None:
    """Remove a partial temporary file: on a full disk it holds the space the run needs."""
    with contextlib.suppress(OSError):
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def first_line(exc: BaseException) -> str:
    """`Type: the first line of the message` of an exception."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_error(exc: BaseException) -> str:
    """One line saying why torch.load failed. torch's weights-only loader opens its message
    with advice to load the file unsafely (weights_only=False), which cannot mend a damaged
    file and is not ours to give: keep only its reason (e.g. "WeightsUnpickler error:
    Unsupported operand 56")."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return "WeightsUnpickler error: " + " ".join(reason.split())
    if "Weights only load failed" in text:
        return "not a plain-tensor checkpoint (torch's weights-only loader refused it)"
    return first_line(exc)


def _load_one(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint mapping")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if not isinstance(state["config"], dict):
        raise ValueError("its config is not a mapping")
    return state


def load_latest(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The newest valid checkpoint of the run whose config is `config`, or None when there
    is none (`latest_usable` without the list of unusable files)."""
    return latest_usable(folder, config)[0]


def latest_usable(folder: Path, config: dict[str, Any]
                  ) -> tuple[dict[str, Any] | None, list[Path]]:
    """The newest valid checkpoint of the run whose config is `config` (None when there is
    none), and the checkpoint files found unusable before it.

    A truncated or corrupt `last.pt` is skipped with a warning naming the file, and the run
    resumes from `previous.pt`. A checkpoint of another run (its stored config differs in a
    key that defines the run: `identity`) raises ConfigError naming the first such key: it is
    never skipped and later overwritten. Keys that do not define the run (runtime, data root,
    workers) may differ. Checkpoints written before the identity existed store the config
    without `runtime`; they load.
    """
    unusable: list[Path] = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = _load_one(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, loudly
            log.warning("checkpoint %s is unusable (%s); trying the previous one", path,
                        load_error(exc))
            unusable.append(path)
            continue
        diff = first_difference(state["config"], config)
        if diff is not None:
            raise AnotherRun(f"{path} was written by a different run ({diff}); refusing to "
                              "overwrite it: choose another --out", key=diff.split(":", 1)[0])
        return state, unusable
    return None, unusable


def read_best(folder: Path) -> tuple[int, float] | None:
    """(epoch, teacher kNN) that `best_knn.pt` holds; None when there is none.

    Raises ValueError when the file is unreadable or lacks them.
    """
    path = folder / BEST_KNN
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["epoch"]), float(state["knn_teacher"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as one error
        raise ValueError(f"{path} is unreadable ({load_error(exc)})") from exc
