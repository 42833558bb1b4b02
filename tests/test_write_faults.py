"""A full disk (ENOSPC) or a read-only file system (EROFS) while the trainer writes a checkpoint
or a metrics record: the last good state stays intact, the run is marked `failed` with the
reason (or, when even that write fails, the log says so), and the same command resumes once
the directory can be written again. The faults are injected by DINO_ABLATE_FAULT
(`dino_ablate.faults`) inside the real writes."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dino_ablate import checkpoint
from tests.tiny import run_train

EPOCHS = 3  # tests.tiny's recipe; the fault hits the last epoch, so both checkpoints exist


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "message", "status_written"), [
    ("enospc_checkpoint:3", "No space left on device", True),
    ("enospc_metrics:3", "No space left on device", True),
    ("erofs_checkpoint:3", "Read-only file system", True),
    ("enospc_metrics:3,enospc_status:2", "No space left on device", False),
])
def test_a_failed_write_keeps_the_last_good_state_and_resumes(
        tmp_path: Path, fault: str, message: str, status_written: bool) -> None:
    run = tmp_path / "run"
    env = {"DINO_ABLATE_FAULT": fault}
    res = run_train(run, "runtime.deterministic=true", env=env, check=False)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "run the same command" in errors[0]

    # the last good state: both checkpoints load, metrics.jsonl holds exactly their epochs
    ckpt = run / "checkpoints"
    last = torch.load(ckpt / "last.pt", weights_only=True)
    previous = torch.load(ckpt / "previous.pt", weights_only=True)
    assert (last["epoch"], previous["epoch"]) == (2, 1)
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")  # no partial line
    assert [r["epoch"] for r in _records(run)] == [r["epoch"] for r in last["metrics"]] == [1, 2]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    status = json.loads((run / "status.json").read_text())
    if status_written:
        assert status["state"] == "failed" and status["epoch"] == 2
        assert message in status["reason"] and "run the same command" in status["reason"]
    else:  # the disk was full for status.json too: the log says so, the exit is non-zero
        assert status["state"] == "running" and status["epoch"] == 2
        assert "recording it in" in res.stderr and "failed as well" in res.stderr

    # space is back: the same command resumes at epoch 2 and finishes, no epoch lost or doubled
    res = run_train(run, "runtime.deterministic=true", env=env)
    assert f"resuming {run} at epoch 2 (step 20)" in res.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert [r["epoch"] for r in _records(run)] == list(range(1, EPOCHS + 1))
    assert (run / "metrics.jsonl").read_text().startswith(text)
    assert not list(run.glob("metrics.jsonl.orphaned-*"))


class _Disk:
    """A binary file on a disk with `room` bytes free."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        if len(self.data) + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def test_torch_save_on_a_full_disk_raises_the_disk_error() -> None:
    """torch.save itself turns the failed write into a RuntimeError about zip offsets."""
    state = {"w": torch.arange(4096, dtype=torch.float32)}
    with pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save(state, _Disk(1000))  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left on device") as caught:
        checkpoint.torch_save(state, _Disk(1000))  # type: ignore[arg-type]
    assert caught.value.errno == errno.ENOSPC
    roomy = _Disk(1 << 20)
    checkpoint.torch_save(state, roomy)  # type: ignore[arg-type]
    assert torch.equal(torch.load(io.BytesIO(bytes(roomy.data)))["w"], state["w"])


def _mount(point: Path, size_kb: int, remount: bool = False) -> bool:
    opts = f"remount,size={size_kb}k" if remount else f"size={size_kb}k"
    args = ["mount", "-o", opts, str(point)] if remount else \
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)]
    return shutil.which("mount") is not None and \
        subprocess.run(args, capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_full_disk(tmp_path: Path) -> None:
    """The same on a real file system: a tmpfs shrunk below what the next checkpoint needs."""
    point = tmp_path / "disk"
    point.mkdir()
    if not _mount(point, 64 * 1024):
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = point / "run"
        res = run_train(run, env={"DINO_ABLATE_FAULT": "kill_step:20"}, check=False)
        assert res.returncode == -9  # epochs 1 and 2 checkpointed
        used_kb = sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) // 1024
        last_kb = (run / "checkpoints" / "last.pt").stat().st_size // 1024
        assert _mount(point, used_kb + last_kb // 2, remount=True)
        res = run_train(run, check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
        assert "No space left on device" in res.stderr
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed" and "No space left on device" in status["reason"]
        assert [r["epoch"] for r in _records(run)] == [1, 2]
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
        assert torch.load(run / "checkpoints" / "previous.pt", weights_only=True)["epoch"] == 1
        assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        assert _mount(point, 64 * 1024, remount=True)  # space is back
        res = run_train(run)
        assert f"resuming {run} at epoch 2 (step 20)" in res.stderr
        assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
        assert json.loads((run / "status.json").read_text())["state"] == "done"
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)
