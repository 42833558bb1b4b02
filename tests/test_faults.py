"""The fault-injection switch (DINO_ABLATE_FAULT) and its per-run scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_ablate import faults


def test_items_apply_to_every_run_or_to_the_named_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "nan_step:5@seed-1, kill_step:3")
    assert faults.nan_step(Path("/x/runs/lr-0.1_seed-1_abcd1234")) == 5
    assert faults.nan_step(Path("/x/runs/lr-0.1_seed-2_abcd1234")) is None
    monkeypatch.setenv(faults.ENV, "nan_step:7")
    assert faults.nan_step(Path("/x/runs/anything")) == 7
    monkeypatch.delenv(faults.ENV)
    assert faults.nan_step(Path("/x/runs/anything")) is None


def test_a_kill_outside_its_scope_does_nothing(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv(faults.ENV, "kill_step:3@other")
    faults.maybe_kill("kill_step", 3, tmp_path)  # would SIGKILL the test process if in scope
    assert not list(tmp_path.iterdir())
