"""Collapse detection (Fig. 7): defined by the run-directory contract, re-exported here.

The trainer's early stop and analysis' tables must classify a run the same way, and the trainer
must not import `analysis/`, so the classification lives in :mod:`dino_ablate.contract.collapse`.
"""

from __future__ import annotations

from dino_ablate.contract.collapse import (
    DEFAULT_KL_MAX,
    DEFAULT_ONE_DIM_MAX_ENTROPY,
    DEFAULT_PATIENCE,
    DEFAULT_UNIFORM_REL_TOL,
    HEALTHY,
    ONE_DIM,
    UNIFORM,
    CollapseKind,
    CollapseResult,
    Series,
    collapse_masks,
    detect,
)

__all__ = [
    "DEFAULT_KL_MAX", "DEFAULT_ONE_DIM_MAX_ENTROPY", "DEFAULT_PATIENCE", "DEFAULT_UNIFORM_REL_TOL",
    "HEALTHY", "ONE_DIM", "UNIFORM", "CollapseKind", "CollapseResult", "Series",
    "collapse_masks", "detect",
]
