"""Parse ``metrics.jsonl``: the contract's tolerant reader, re-exported for analysis.

The trainer resumes from the same file, so both sides read it with
:mod:`dino_ablate.contract.metrics_file` (a truncated last line dropped, a repeated epoch kept
once).
"""

from __future__ import annotations

from dino_ablate.contract.metrics_file import MetricsParse, parse_metrics, read_metrics

__all__ = ["MetricsParse", "parse_metrics", "read_metrics"]
