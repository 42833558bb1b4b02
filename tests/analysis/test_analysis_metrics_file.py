"""analysis.metrics_file: tolerant metrics.jsonl parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from analysis.metrics_file import parse_metrics, read_metrics


def _lines(*records: dict[str, object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_well_formed_file() -> None:
    result = parse_metrics(_lines({"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}))
    assert [r["loss"] for r in result.records] == [2.0, 1.5]
    assert not result.truncated_last_line and result.skipped_lines == 0


def test_truncated_last_line_is_dropped() -> None:
    text = _lines({"epoch": 1, "loss": 2.0}) + '{"epoch": 2, "lo'
    result = parse_metrics(text)
    assert [r["epoch"] for r in result.records] == [1]
    assert result.truncated_last_line


def test_malformed_middle_line_is_skipped() -> None:
    text = _lines({"epoch": 1}) + "garbage\n" + _lines({"epoch": 3})
    result = parse_metrics(text)
    assert [r["epoch"] for r in result.records] == [1, 3]
    assert result.skipped_lines == 1 and not result.truncated_last_line


def test_resumed_run_repeating_an_epoch_keeps_the_last_record() -> None:
    text = _lines({"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}, {"epoch": 2, "loss": 1.9},
                  {"epoch": 3, "loss": 1.0})
    records = parse_metrics(text).records
    assert [(r["epoch"], r["loss"]) for r in records] == [(1, 3.0), (2, 1.9), (3, 1.0)]


def test_non_finite_values_and_blank_lines() -> None:
    text = '{"epoch": 1, "loss": NaN}\n\n{"epoch": 2, "loss": Infinity}\n'
    records = parse_metrics(text).records
    assert math.isnan(records[0]["loss"]) and records[1]["loss"] == math.inf


def test_missing_and_empty_files(tmp_path: Path) -> None:
    assert read_metrics(tmp_path / "metrics.jsonl").records == []
    (tmp_path / "metrics.jsonl").write_text("")
    assert read_metrics(tmp_path / "metrics.jsonl").records == []
