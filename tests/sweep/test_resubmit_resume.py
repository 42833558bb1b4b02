"""A resubmitted sweep that changes only keys that do not define the run (a dataset moved to a
new `data.root`, another `data.num_workers`) resumes its interrupted run at the checkpointed
epoch with its metrics intact; a change of a key that defines the run is refused and changes
nothing.

This was measured losing progress: the sweep layer rewrote config.yaml with the new
`data.num_workers`, the trainer then rejected both checkpoints as "written by a different run
config", restarted at epoch 1 and emptied metrics.jsonl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dino_ablate.errors import ConfigError
from dino_ablate.launch.base import LaunchItem, LaunchOutcome, submit_sweep
from dino_ablate.launch.ray_backend import rank_commands
from dino_ablate.runs import prepare_run_dir, resolve_sweep_dir, run_dir_of
from dino_ablate.sweep import Sweep, load_sweep

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4


class LocalTrainer:
    """A backend that trains each launched run in a child process, one after another, with the
    command a Ray trial starts (`ray_backend.rank_commands`: `dino-ablate train
    RUN/config.yaml --out RUN`); `fault` is passed on as DINO_ABLATE_FAULT."""

    name = "local-test"

    def __init__(self, fault: str | None = None, train: bool = True) -> None:
        self.fault = fault
        self.train = train
        self.launched: list[str] = []
        self.results: list[subprocess.CompletedProcess[str]] = []

    def check(self, sweep: Sweep) -> None:
        pass

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        return {}

    def launch(self, items: Sequence[LaunchItem], sweep: Sweep, sweep_dir: Path,
               submission_id: str, max_parallel: int | None) -> LaunchOutcome:
        for item in items:
            self.launched.append(item.point.run_id)
            if not self.train:
                continue
            [(cmd, env)] = rank_commands(item.run_dir, 1, 1)
            if self.fault:
                env["DINO_ABLATE_FAULT"] = self.fault
            self.results.append(subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True,
                                               text=True, timeout=600))
        return LaunchOutcome()


def _image_folder(root: Path) -> None:
    """An ImageNet-layout folder: 16 training images (2 steps per epoch at batch 8), 6 val."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _sweep(tmp_path: Path, root: Path, workers: int, **changes: Any) -> Sweep:
    config: dict[str, Any] = {
        "epochs": EPOCHS,
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 32,
                 "global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2,
                 "num_workers": workers, "knn_train_limit": None, "val_limit": None},
        "model": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                  "drop_path_rate": 0.0},
        "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
        "optim": {"batch_size": 8, "warmup_epochs": 1},
        # the fast probe: the paper job needs a depth of at least its 4 probed blocks
        "eval": {"attention_images": 2, "linear_protocol": "fast"},
        "runtime": {"device": "cpu", "threads": 1, "log_every_steps": 50},
    }
    for key, value in changes.items():
        section, leaf = key.split("__")
        config.setdefault(section, {})[leaf] = value
    file = tmp_path / "moved.yaml"
    file.write_text(yaml.safe_dump({
        "name": "moved", "base": {}, "seeds": [0],
        "profiles": {"local": {"config": config, "resources": {
            "nodes": 1, "cpus_per_task": 1, "mem_gb": 2, "time_min": 15}}}}))
    return load_sweep(file, "local")


def _submit(sweep: Sweep, out: Path, backend: LocalTrainer) -> Path:
    sweep_dir = resolve_sweep_dir(sweep, out)
    submit_sweep(sweep, sweep_dir, backend)
    return run_dir_of(sweep_dir, sweep.points[0].run_id)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in
            (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_epoch(run_dir: Path, name: str) -> int:
    return int(torch.load(run_dir / "checkpoints" / name, weights_only=True)["epoch"])


def _stderr(backend: LocalTrainer) -> str:
    return "\n".join(r.stderr for r in backend.results)


@pytest.mark.slow
def test_resubmission_with_moved_data_and_other_workers_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old_root, new_root = tmp_path / "data-old", tmp_path / "data-new"
    _image_folder(old_root)

    # 1. trained for an epoch, then killed at the start of epoch 2
    first = LocalTrainer(fault="kill_step:2")
    run = _submit(_sweep(tmp_path, old_root, workers=1), out, first)
    assert [r.returncode for r in first.results] == [-9]
    assert _epochs(run) == [1] and _checkpoint_epoch(run, "last.pt") == 1
    epoch1 = (run / "metrics.jsonl").read_bytes()

    # 2. the data set moved: the same run id, config.yaml gets the new root, training resumes
    shutil.move(old_root, new_root)
    moved = _sweep(tmp_path, new_root, workers=1)
    second = LocalTrainer(fault="kill_step:4")  # killed at the start of epoch 3
    assert _submit(moved, out, second) == run
    assert second.launched == [run.name]
    assert [r.returncode for r in second.results] == [-9]
    assert f"resuming {run} at epoch 1 (step 2)" in _stderr(second)
    assert "unusable" not in _stderr(second)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(new_root)
    assert _epochs(run) == [1, 2]
    assert (run / "metrics.jsonl").read_bytes().startswith(epoch1)
    assert [_checkpoint_epoch(run, n) for n in ("last.pt", "previous.pt")] == [2, 1]
    epochs12 = (run / "metrics.jsonl").read_bytes()

    # 3. a key that defines the run changed: refused, and nothing in the run changes
    before = _snapshot(run)
    other = _sweep(tmp_path, new_root, workers=1, teacher__momentum=0.9)
    assert other.points[0].run_id != run.name
    recorder = LocalTrainer(train=False)
    _submit(other, out, recorder)  # a new run of its own; the old one is never touched
    assert recorder.launched == [other.points[0].run_id]
    with pytest.raises(ConfigError, match=r"teacher\.momentum: 0\.996 there, 0\.9 now"):
        prepare_run_dir(run, other, other.points[0])
    [(cmd, env)] = rank_commands(run, 1, 1)
    res = subprocess.run([*cmd, "--set", "teacher.momentum=0.9"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "teacher.momentum: 0.996 there, 0.9 now" in res.stderr
    assert "Traceback" not in res.stderr
    assert _snapshot(run) == before

    # 4. other workers as well: resumes at epoch 2 and finishes with every epoch once
    third = LocalTrainer()
    assert _submit(_sweep(tmp_path, new_root, workers=0), out, third) == run
    assert [r.returncode for r in third.results] == [0], _stderr(third)[-3000:]
    assert f"resuming {run} at epoch 2 (step 4)" in _stderr(third)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["num_workers"] == 0 and cfg["data"]["root"] == str(new_root)
    assert _epochs(run) == list(range(1, EPOCHS + 1))
    assert (run / "metrics.jsonl").read_bytes().startswith(epochs12)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert not list(run.glob("metrics.jsonl.orphaned-*"))  # nothing had to be set aside
