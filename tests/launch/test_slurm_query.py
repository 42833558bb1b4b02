"""The scheduler query helper: a query still waiting after SLOW_QUERY_S says so, once (real
subprocesses; the SLURM side is tests/launch/test_slurm_backend.py)."""

from __future__ import annotations

import logging
import time

import pytest

from dino_ablate.launch import slurm


def test_a_slow_query_warns_once_and_a_quick_one_says_nothing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(slurm, "SLOW_QUERY_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="dino_ablate.launch.slurm"):
        assert slurm._query(["true"]).returncode == 0
        time.sleep(0.4)  # a timer left running would fire now
        assert caplog.messages == []
        assert slurm._query(["sleep", "0.6"]).returncode == 0
        time.sleep(0.4)
    (message,) = caplog.messages
    assert message == ("sleep has not answered in 0.2 s; waiting up to 60 s "
                       "(slurmctld busy or down?)")
