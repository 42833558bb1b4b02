"""The run directory: the one contract between the trainer, the launchers and `analysis/`.

docs/run_directory.md describes it in prose; this package is that description as code (a test
checks the two agree): the file names, the states a run can be in, the metric keys with their
meaning and unit, the readers and atomic writers, and the collapse classification; and the
claims a sweep file makes about its runs (`claims.py`, `points.py`), which the sweep loader
checks and `analysis/` evaluates. `analysis/` imports nothing else from `dino_ablate`, so
everything here stays light (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from dino_ablate.contract.collapse import CollapseResult, detect
from dino_ablate.contract.files import clean, read_json, write_atomic, write_json
from dino_ablate.contract.metrics_file import MetricsParse, parse_metrics, read_metrics
from dino_ablate.contract.rank_failures import FAILED_RANKS_DIR

__all__ = [
    "ATTENTION_DIR", "CHECKPOINTS_DIR", "CONFIG_FILE", "EVAL_DIR", "FAILED_RANKS_DIR", "FILES",
    "INIT_FILE",
    "LAUNCH_FILE", "LAUNCH_STATES", "LINEAR_DIR", "METRICS", "METRICS_FILE", "RUNS_SUBDIR",
    "RUN_FILE", "STATUS_FILE", "STOPPED_ON_COLLAPSE", "SUMMARY_FILE", "SWEEP_FILE",
    "TRAINER_STATES", "CollapseResult", "LaunchState", "Metric", "MetricsParse", "TrainerState",
    "clean", "detect", "parse_metrics", "read_json", "read_metrics", "trains_on",
    "write_atomic", "write_json",
]

# -- file names (docs/run_directory.md, first table) --------------------------------------------
CONFIG_FILE: Final = "config.yaml"
RUN_FILE: Final = "run.json"
INIT_FILE: Final = "init.json"
METRICS_FILE: Final = "metrics.jsonl"
STATUS_FILE: Final = "status.json"
SUMMARY_FILE: Final = "summary.json"
CHECKPOINTS_DIR: Final = "checkpoints"
LINEAR_DIR: Final = "linear"
ATTENTION_DIR: Final = "attention"
EVAL_DIR: Final = "eval"
#: every entry of a run directory the contract defines, in the doc's order
FILES: Final = (CONFIG_FILE, RUN_FILE, INIT_FILE, METRICS_FILE, STATUS_FILE, SUMMARY_FILE,
                CHECKPOINTS_DIR, LINEAR_DIR, ATTENTION_DIR, EVAL_DIR, FAILED_RANKS_DIR)

#: the launcher's own record of a submission (backend, job id); not read by analysis
LAUNCH_FILE: Final = "launch.json"

#: a sweep directory: its index file and the folder holding one run directory per point
SWEEP_FILE: Final = "sweep.json"
RUNS_SUBDIR: Final = "runs"

# -- states ---------------------------------------------------------------------------------------
#: what the trainer writes in status.json (and summary.json)
TrainerState = Literal["running", "done", "diverged", "failed"]
TRAINER_STATES: Final[tuple[TrainerState, ...]] = get_args(TrainerState)
#: what a launcher can say of a run: not yet submitted, submitted, the trainer's own state, or
#: unknown (a SLURM run whose files leave its state to a job SLURM did not answer about)
LaunchState = Literal["pending", "queued", "running", "done", "diverged", "failed", "unknown"]
LAUNCH_STATES: Final[tuple[LaunchState, ...]] = get_args(LaunchState)
#: status.json's `reason` for a run that `runtime.collapse_stop` ended on a detected collapse
STOPPED_ON_COLLAPSE: Final = "stopped early: collapse detected"


def trains_on(status: Mapping[str, Any], collapse_stop: bool) -> bool:
    """Whether a run whose status.json is `status` trains on although it is `done`: it stopped
    before its planned epochs on a detected collapse, and `runtime.collapse_stop` (outside the
    run's identity) is off now."""
    return (not collapse_stop and status.get("state") == "done"
            and status.get("reason") == STOPPED_ON_COLLAPSE
            and status.get("epoch") != status.get("epochs"))


# -- metrics.jsonl --------------------------------------------------------------------------------
class Metric(tuple[str, str]):
    """(meaning, unit) of one metrics.jsonl key; the unit is "" for a count or a plain number."""

    __slots__ = ()

    def __new__(cls, meaning: str, unit: str = "") -> Metric:
        return super().__new__(cls, (meaning, unit))

    @property
    def meaning(self) -> str:
        return self[0]

    @property
    def unit(self) -> str:
        return self[1]


#: every key of a metrics.jsonl record (one per completed epoch; `epoch` counts from 1)
METRICS: Final[dict[str, Metric]] = {
    "epoch": Metric("epochs completed"),
    "step": Metric("optimizer steps completed"),
    "loss": Metric("mean DINO loss over the epoch", "nats"),
    "lr": Metric("learning rate at the last step of the epoch"),
    "weight_decay": Metric("weight decay at the last step of the epoch"),
    "momentum": Metric("teacher EMA momentum at the last step of the epoch"),
    "teacher_temp": Metric("teacher temperature at the last step of the epoch"),
    "teacher_entropy": Metric("mean per-sample entropy h(Pt) of the teacher targets", "nats"),
    "teacher_batch_entropy": Metric("entropy of the batch-mean target distribution", "nats"),
    "kl_teacher_student": Metric("KL(Pt||Ps) on the distributions of the loss", "nats"),
    "knn_teacher": Metric("weighted 20-NN top-1 of the teacher [CLS] features", "0-1"),
    "knn_student": Metric("weighted 20-NN top-1 of the student [CLS] features", "0-1"),
    "linear_teacher": Metric("fast linear-probe top-1 of the teacher (null between probes)",
                             "0-1"),
    "linear_student": Metric("fast linear-probe top-1 of the student (null between probes)",
                             "0-1"),
    "linear_seconds": Metric("wall time of the epoch's probe (part of eval_seconds)", "s"),
    "eval_seconds": Metric("wall time of the epoch's evaluation (kNN and probe)", "s"),
    "images_per_s": Metric("training images per second, all ranks", "images/s"),
    "epoch_seconds": Metric("wall time of the epoch", "s"),
    "peak_memory_mb": Metric("peak accelerator memory", "MB"),
}
