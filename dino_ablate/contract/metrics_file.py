"""Parse ``metrics.jsonl``: one JSON object per completed epoch.

The trainer appends one line per epoch, so a run killed mid-write leaves a truncated last line;
that line is dropped. Any other malformed line is skipped with a warning (it should not happen).
A record repeated for the same epoch (a resumed run re-running an epoch) keeps its last copy.
Non-finite floats written by Python's ``json`` (``NaN``, ``Infinity``) are accepted.
"""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricsParse:
    """The records of one ``metrics.jsonl``.

    Attributes:
        records: one mapping per epoch, in epoch order, duplicates resolved (last wins).
        truncated_last_line: the last line was incomplete and was dropped.
        skipped_lines: number of malformed lines other than the last.
    """

    records: list[dict[str, Any]]
    truncated_last_line: bool = False
    skipped_lines: int = 0


def _parse_all_at_once(lines: list[str]) -> list[dict[str, Any]] | None:
    """One ``json.loads`` over the whole file (fast); None when any line is malformed."""
    try:
        parsed = json.loads("[" + ",".join(lines) + "]")
    except (json.JSONDecodeError, RecursionError):  # RecursionError: a line nested too deep
        return None
    if len(parsed) != len(lines) or not all(isinstance(item, dict) for item in parsed):
        return None
    return parsed


def _parse_line_by_line(lines: list[str], source: str) -> MetricsParse:
    records: list[dict[str, Any]] = []
    truncated = False
    skipped = 0
    last = len(lines) - 1
    for index, line in enumerate(lines):
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            item = None
        if isinstance(item, dict):
            records.append(item)
        elif index == last:
            truncated = True
        else:
            skipped += 1
            logger.warning("%s: line %d is not a JSON object; skipped", source, index + 1)
    return MetricsParse(records, truncated_last_line=truncated, skipped_lines=skipped)


def _dedupe_epochs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last record of each epoch, in epoch order (records without an epoch last)."""
    epochs: list[Any] = [record.get("epoch") for record in records]
    try:
        if all(map(operator.lt, epochs, epochs[1:])):  # the normal case: strictly increasing
            return records
    except TypeError:  # an epoch is missing or not a number
        pass
    last_by_epoch: dict[Any, dict[str, Any]] = {}
    for epoch, record in zip(epochs, records, strict=True):
        last_by_epoch[epoch] = record
    return sorted(last_by_epoch.values(), key=lambda record: _epoch_sort_key(record.get("epoch")))


def _epoch_sort_key(epoch: Any) -> float:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        return float("inf")
    return float(epoch)


def parse_metrics(text: str, source: str = "metrics.jsonl") -> MetricsParse:
    """Parse the text of a ``metrics.jsonl``; ``source`` names it in warnings."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return MetricsParse([])
    records = _parse_all_at_once(lines)
    if records is not None:
        return MetricsParse(_dedupe_epochs(records))
    result = _parse_line_by_line(lines, source)
    return MetricsParse(
        _dedupe_epochs(result.records),
        truncated_last_line=result.truncated_last_line,
        skipped_lines=result.skipped_lines,
    )


def read_metrics(path: Path) -> MetricsParse:
    """Read ``path``; a missing or unreadable file gives no records (a run that has not
    finished an epoch)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return MetricsParse([])
    return parse_metrics(text, source=str(path))
