"""The state of a run as shown in tables and reports.

The trainer's ``status.json`` says ``running``, ``done``, ``diverged`` or ``failed``; a run with
no status yet (only ``run.json`` from the launcher) is ``pending``. A ``done`` run whose metrics
end in a sustained collapse (:mod:`dino_ablate.contract.collapse`) is shown as
``collapsed-uniform`` or ``collapsed-one-dim`` instead: it finished, but its features are
worthless. Other states are kept as they are (a ``running`` run that reads collapsed may still
be stopped by a launcher; a ``failed`` or ``diverged`` run is reported for what stopped it).
"""

from __future__ import annotations

from typing import Final

from dino_ablate.contract import LAUNCH_STATES, TRAINER_STATES, CollapseResult
from dino_ablate.contract.collapse import ONE_DIM, UNIFORM

PENDING: Final = "pending"
RUNNING: Final = "running"
DONE: Final = "done"
DIVERGED: Final = "diverged"
FAILED: Final = "failed"
assert {RUNNING, DONE, DIVERGED, FAILED} == set(TRAINER_STATES)
assert PENDING in LAUNCH_STATES

#: Every state a run can be shown in, in the order tables list them.
STATES: Final[tuple[str, ...]] = (
    DONE,
    UNIFORM,
    ONE_DIM,
    DIVERGED,
    FAILED,
    RUNNING,
    PENDING,
)


def display_state(trainer_state: str | None, n_epochs: int, collapse: CollapseResult) -> str:
    """The displayed state of one run.

    Args:
        trainer_state: ``state`` from ``status.json`` (or ``summary.json``), None if absent.
        n_epochs: number of epochs in ``metrics.jsonl``.
        collapse: the collapse classification of the run's metrics.

    Returns:
        One of :data:`STATES`; an unknown trainer state is returned unchanged.
    """
    if trainer_state is None:
        # Metrics without a status file can only come from a trainer that is writing them.
        return RUNNING if n_epochs > 0 else PENDING
    if trainer_state == DONE and collapse.collapsed:
        return collapse.kind
    return trainer_state
