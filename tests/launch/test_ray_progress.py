"""The Ray backend's progress lines (plain Python; no Ray needed)."""

from __future__ import annotations

import io
import re

from dino_ablate.launch.ray_backend import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_throttled_and_keeps_the_last_knn() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = Progress(3, out, every_s=5.0, clock=clock)
    progress.started("normalization-none_sharpening-true_0123abcd4567")
    progress.result("a_1", 60, {"epoch": 10.0, "loss": 6.2134, "kl_teacher_student": 0.0131,
                                "knn_teacher": 0.509})
    clock.now = 1.0
    progress.result("a_1", 60, {"epoch": 11, "loss": 6.1})        # within 5 s: not printed
    clock.now = 6.0
    progress.result("a_1", 60, {"epoch": 14, "loss": 0.001, "kl_teacher_student": 0.0})
    progress.ended_as("a_1", "done")
    progress.ended_as("b_2", "error")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    stamp = r"^\[\d\d:\d\d:\d\d\] "
    assert re.match(stamp + r"0/3 done, 2 running \| a_1 epoch 10/60 loss 6.21 kl 0.013 "
                    r"knn 50.9%$", lines[0]), lines[0]
    assert lines[1].endswith("| a_1 epoch 14/60 loss 0.00 kl 0.000 knn 50.9%"), lines[1]
    assert "1/3 done, 1 running | a_1 finished" in lines[2]
    assert "1/3 done, 1 running, 1 failed | b_2 failed" in lines[3]


def test_long_run_ids_are_shortened() -> None:
    out = io.StringIO()
    progress = Progress(1, out, every_s=0.0)
    run_id = "teacher_temp-0.07_warmup_teacher_temp-0.04_warmup_teacher_temp_epochs-30_0123abcd"
    progress.result(run_id, None, {"epoch": 1})
    line = out.getvalue()
    assert "teacher_temp-0.07_warmup_teacher_temp-0\u2026 epoch 1/?" in line, line
