"""What one run needs from the scheduler: the `resources` block of a sweep profile.

Validated here (types, ranges, SLURM names without shell metacharacters); used by the SLURM
backend (sbatch parameters), the Ray backend (trial resources) and the cost estimate. No
value is hard-coded anywhere else.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dino_ablate.errors import ConfigError, unknown_key

#: SLURM partition / account / qos names.
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: SLURM feature constraints also use the operators & | [ ] * ( ) ! , : (sbatch --constraint).
SLURM_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,&|\[\]*()!:-]{1,256}$")


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}", source=source, key=key)


@dataclass(frozen=True)
class Resources:
    """What one run needs from the scheduler. Nothing here is hard-coded elsewhere."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 100

    @property
    def tasks(self) -> int:
        """Tasks (ranks) per node: one per GPU, else `tasks_per_node` (CPU DDP), else 1."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_RESOURCE_RULES: dict[str, tuple[tuple[type, ...], bool, str]] = {
    # key: (types, nullable, what is allowed)
    "nodes": ((int,), False, "an integer >= 1"),
    "gpus_per_node": ((int,), False, "an integer >= 0"),
    "tasks_per_node": ((int,), True, "an integer >= 1 or null (= gpus_per_node, or 1 on CPU)"),
    "cpus_per_task": ((int,), False, "an integer >= 1"),
    "mem_gb": ((int, float), True, "a number > 0 (GB per node) or null"),
    "time_min": ((int,), False, "an integer >= 1 (minutes)"),
    "partition": ((str,), True, "a SLURM name [A-Za-z0-9_.-] or null"),
    "account": ((str,), True, "a SLURM name [A-Za-z0-9_.-] or null"),
    "qos": ((str,), True, "a SLURM name [A-Za-z0-9_.-] or null"),
    "constraint": ((str,), True, "a SLURM constraint [A-Za-z0-9_.,&|[]*()!:-] or null"),
    "signal_delay_s": ((int,), False, "an integer >= 0 (seconds before the time limit)"),
    "max_requeues": ((int,), False, "an integer >= 0"),
}
_RESOURCE_MIN = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1,
                 "time_min": 1, "signal_delay_s": 0, "max_requeues": 0}


def parse_resources(raw: Any, source: str, where: str,
                    start: Resources | None = None) -> Resources:
    """Validate a `resources` mapping, applied over `start` (defaults when None)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail(source, where, f"{raw!r} must be a mapping of resource keys")
    valid = list(_RESOURCE_RULES)
    values = dataclasses.asdict(start or Resources())
    given: dict[str, Any] = dict(raw)
    value: Any
    for key, value in given.items():
        if key not in _RESOURCE_RULES:
            raise unknown_key(source, where, key, valid)
        path = f"{where}.{key}"
        types_, nullable, allowed = _RESOURCE_RULES[key]
        if value is None:
            if not nullable:
                raise _fail(source, path, f"null is not allowed; expected {allowed}")
            values[key] = None
            continue
        if isinstance(value, bool) or not any(isinstance(value, t) for t in types_):
            raise _fail(source, path, f"{value!r} is not allowed; expected {allowed}")
        if key in _RESOURCE_MIN and value < _RESOURCE_MIN[key]:
            raise _fail(source, path, f"{value!r} is out of range; expected {allowed}")
        if key == "mem_gb" and not (value > 0 and math.isfinite(value)):
            raise _fail(source, path, f"{value!r} is out of range; expected {allowed}")
        if key in ("partition", "account", "qos") and not SLURM_NAME_RE.match(value):
            raise _fail(source, path, f"{value!r} is not allowed; expected {allowed} (shell "
                        "metacharacters and spaces are refused)")
        if key == "constraint" and not SLURM_CONSTRAINT_RE.match(value):
            raise _fail(source, path, f"{value!r} is not allowed; expected {allowed}")
        values[key] = value
    res = Resources(**values)
    if res.gpus_per_node > 0 and res.tasks_per_node not in (None, res.gpus_per_node):
        raise _fail(source, f"{where}.tasks_per_node", f"{res.tasks_per_node} differs from "
                    f"gpus_per_node {res.gpus_per_node}; allowed: one task per GPU")
    return res
