"""Collapse detection from a run's teacher entropy and KL(teacher‖student) series (Fig. 7).

DINO's loss decomposes as H(Pt, Ps) = h(Pt) + KL(Pt‖Ps) (paper Eq. 5). When the student copies
the teacher exactly the KL goes to zero, and the teacher entropy tells which collapse it is:

- **uniform** (centering without sharpening): h(Pt) sits at ln K, the loss sits at ln K;
- **one-dimensional** (sharpening without centering): h(Pt) goes to 0, the output is one-hot.

An epoch is *collapsed-uniform* when ``teacher_entropy >= (1 - uniform_rel_tol) * ln K`` and
``kl_teacher_student < kl_max``; *collapsed-one-dim* when ``teacher_entropy < one_dim_max_entropy``
and ``kl_teacher_student < kl_max``. The defaults:

- ``uniform_rel_tol = 0.05``: within 5 % of ln K (0.55 nats for K = 65536, 0.28 for K = 256).
  A real uniform collapse sits within 1e-3 nats of ln K (the small-scale study read 6.931 for
  ln 1024 = 6.931), while healthy runs stay far below (1.6-3.1 nats of ln 256 = 5.55 there;
  strictly between 0 and ln K in Fig. 7), so 5 % leaves room for noise without false alarms.
- ``kl_max = 0.01`` nats: a healthy run keeps KL around 0.4 nats; a collapsed one reads 0.000.
- ``one_dim_max_entropy = 0.05`` nats: a one-hot teacher has entropy 0.

A run is classified by its **last** epochs: it is collapsed when the condition has held for at
least ``patience`` consecutive epochs ending at the last epoch given, and the collapse started at
the first epoch of that streak. A run that nears collapse and recovers (seen at epochs 20-30 of a
small-scale multi-crop run) is therefore healthy, and a launcher can call :func:`detect` after
each epoch with the series so far to stop a collapsed trial early. Caveat for early stopping: at
initialisation the teacher output is close to uniform with a small KL, so a run that has not left
ln K after ``patience`` epochs is reported as collapsed; call it only after the first epochs if the
recipe is known to start slowly. Non-finite values (a diverged run) never count as collapsed.

Everything here is pure: sequences or arrays in, a :class:`CollapseResult` out, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

CollapseKind = Literal["healthy", "collapsed-uniform", "collapsed-one-dim"]

HEALTHY: CollapseKind = "healthy"
UNIFORM: CollapseKind = "collapsed-uniform"
ONE_DIM: CollapseKind = "collapsed-one-dim"

DEFAULT_PATIENCE = 3
DEFAULT_UNIFORM_REL_TOL = 0.05
DEFAULT_KL_MAX = 0.01
DEFAULT_ONE_DIM_MAX_ENTROPY = 0.05

Series = Sequence[float | None] | npt.NDArray[np.floating]


@dataclass(frozen=True)
class CollapseResult:
    """The outcome of :func:`detect`.

    Attributes:
        kind: ``healthy``, ``collapsed-uniform`` or ``collapsed-one-dim``.
        start_index: position in the series of the first collapsed epoch, None when healthy.
        start_epoch: the epoch number at ``start_index`` (``epochs[start_index]``, or
            ``start_index + 1`` when no epochs were given), None when healthy.
    """

    kind: CollapseKind
    start_index: int | None = None
    start_epoch: int | None = None

    @property
    def collapsed(self) -> bool:
        """Whether the run is collapsed (either form)."""
        return self.kind != HEALTHY


def _as_float_array(series: Series, name: str) -> npt.NDArray[np.float64]:
    if isinstance(series, np.ndarray):
        values = np.asarray(series, dtype=np.float64)
    else:
        values = np.asarray([np.nan if v is None else v for v in series], dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape}")
    return values


def collapse_masks(
    entropy_series: Series,
    kl_series: Series,
    ln_k: float | None,
    *,
    uniform_rel_tol: float = DEFAULT_UNIFORM_REL_TOL,
    kl_max: float = DEFAULT_KL_MAX,
    one_dim_max_entropy: float = DEFAULT_ONE_DIM_MAX_ENTROPY,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per-epoch collapse conditions, shape ``(epochs,)`` each: (uniform, one-dimensional).

    ``ln_k`` None or non-finite (unknown head size) disables the uniform test.
    """
    entropy = _as_float_array(entropy_series, "entropy_series")
    kl = _as_float_array(kl_series, "kl_series")
    if entropy.shape != kl.shape:
        raise ValueError(
            f"entropy_series and kl_series must have the same length, got {entropy.size} "
            f"and {kl.size}"
        )
    with np.errstate(invalid="ignore"):
        kl_small = kl < kl_max  # NaN compares False: a diverged epoch is not collapsed
        if ln_k is None or not np.isfinite(ln_k):
            uniform = np.zeros(entropy.shape, dtype=bool)
        else:
            uniform = (entropy >= (1.0 - uniform_rel_tol) * ln_k) & kl_small
        one_dim = (entropy < one_dim_max_entropy) & kl_small
    return uniform, one_dim


def _trailing_streak(mask: npt.NDArray[np.bool_]) -> int:
    """Number of consecutive True values at the end of ``mask``."""
    if mask.size == 0 or not mask[-1]:
        return 0
    false_positions = np.flatnonzero(~mask)
    return int(mask.size - (false_positions[-1] + 1 if false_positions.size else 0))


def detect(
    entropy_series: Series,
    kl_series: Series,
    ln_k: float | None,
    patience: int = DEFAULT_PATIENCE,
    *,
    epochs: Sequence[int] | None = None,
    uniform_rel_tol: float = DEFAULT_UNIFORM_REL_TOL,
    kl_max: float = DEFAULT_KL_MAX,
    one_dim_max_entropy: float = DEFAULT_ONE_DIM_MAX_ENTROPY,
) -> CollapseResult:
    """Classify a run from its per-epoch ``teacher_entropy`` and ``kl_teacher_student`` (nats).

    Args:
        entropy_series: teacher entropy h(Pt) per epoch, shape ``(epochs,)``; None/NaN allowed.
        kl_series: KL(Pt‖Ps) per epoch, same shape.
        ln_k: ln of the head output dimension K (``ln(config.head.out_dim)``).
        patience: consecutive collapsed epochs, ending at the last one, needed to call it.
        epochs: epoch numbers of the series entries (default ``1, 2, ...``).
        uniform_rel_tol, kl_max, one_dim_max_entropy: thresholds, see the module docstring.

    Returns:
        The collapse kind and the epoch the sustained collapse started.

    Raises:
        ValueError: series of different lengths, ``patience < 1``, or ``epochs`` of the wrong
            length.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    uniform, one_dim = collapse_masks(
        entropy_series,
        kl_series,
        ln_k,
        uniform_rel_tol=uniform_rel_tol,
        kl_max=kl_max,
        one_dim_max_entropy=one_dim_max_entropy,
    )
    if epochs is not None and len(epochs) != uniform.size:
        raise ValueError(
            f"epochs must have one entry per series value ({uniform.size}), got {len(epochs)}"
        )
    for kind, mask in ((ONE_DIM, one_dim), (UNIFORM, uniform)):
        streak = _trailing_streak(mask)
        if streak >= patience:
            start = uniform.size - streak
            start_epoch = int(epochs[start]) if epochs is not None else start + 1
            return CollapseResult(kind, start_index=start, start_epoch=start_epoch)
    return CollapseResult(HEALTHY)
