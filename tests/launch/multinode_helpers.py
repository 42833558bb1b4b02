"""Shared by the two-host tests of both backends: a tiny 2-node point and its 1-process twin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.tiny import TINY, run_train

#: the DDP-equivalence recipe of tests/test_train_integration.py (no stochastic depth, so
#: both runs draw the same random numbers), epochs set per test.
EQUIVALENCE = ("model.drop_path_rate=0.0", "runtime.deterministic=true")
SEMANTIC_KEYS = ("loss", "teacher_entropy", "kl_teacher_student")


def _nested(assignments: list[str]) -> dict[str, Any]:
    """`["a.b=3", ...]` -> `{"a": {"b": 3}}` (values parsed as YAML, as `--set` does)."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def tiny_sweep(path: Path, name: str, epochs: int, nodes: int, tasks_per_node: int = 1,
               time_min: int = 15) -> Path:
    """A one-point sweep of the tiny digits recipe (tests/tiny.py) on `nodes` x `tasks`."""
    config = _nested([*TINY, *EQUIVALENCE, f"epochs={epochs}"])
    sweep = {
        "name": name, "base": "digits",
        "profiles": {"local": {
            "config": config,
            "resources": {"nodes": nodes, "tasks_per_node": tasks_per_node,
                          "cpus_per_task": 1, "mem_gb": 1, "time_min": time_min}}},
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def one_process_twin(out: Path, epochs: int) -> Path:
    """The same recipe trained in one process on the same global batch."""
    run_train(out, *EQUIVALENCE, f"epochs={epochs}")
    return out


def records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_same_training(ddp: Path, single: Path) -> None:
    """Loss per epoch within float tolerance, and the centre after each of the last two
    epochs (`previous.pt`, `last.pt`: the trainer checkpoints every epoch)."""
    a, b = records(ddp), records(single)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in SEMANTIC_KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), (ra["epoch"], key)
    for name in ("previous.pt", "last.pt"):
        ca = torch.load(ddp / "checkpoints" / name, weights_only=True)
        cb = torch.load(single / "checkpoints" / name, weights_only=True)
        assert ca["step"] == cb["step"], name
        torch.testing.assert_close(ca["center"], cb["center"], rtol=1e-4, atol=1e-5)
