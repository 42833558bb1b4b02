"""A run's identity: which config keys define a run, and how two configs are compared.

One definition for everyone who asks "is this the same run?": the run id's hash
(`sweep.semantic_hash`), the sweep layer rewriting a resubmitted point's config.yaml
(`runs.prepare_run_dir`), the trainer's run-directory check (`train.prepare_run_dir`) and the
checkpoint check (`checkpoint.load_latest`). When they disagreed, a resubmitted sweep that moved
`data.root` had its checkpoints rejected and its metrics emptied.

A config's identity is what it changes from the `RunConfig` defaults, among the keys that
define a run. Comparing differences from the defaults (not full configs) keeps run ids and old
checkpoints valid when a field is added later with a default that keeps the old behaviour.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dino_ablate import config as cfgmod

#: Config keys (a leaf or a whole section) that do not define a run: where and how fast it
#: executes, not what it computes. The `runtime` section (device, threads, precision, kernels,
#: logging), the data root (the same ImageNet sits at different paths on different clusters)
#: and the loader's worker count. Resources and output paths are not part of the config at all.
NOT_DEFINING = ("runtime", "data.root", "data.num_workers")

_DEFAULTS: dict[str, Any] | None = None


def defines_run(key: str) -> bool:
    """Whether the dotted config key `key` (a leaf or a section) is part of a run's identity.

    Every key defines the run except those under `NOT_DEFINING`. A run directory whose config
    changes only keys that do not define the run resumes from its checkpoint and records the new
    values in config.yaml; a change of any other key is refused.

    `eval.*` defines the run. Those keys do not change training, but a run's recorded results
    (the kNN and linear-probe values in metrics.jsonl and summary.json, `eval.every_epochs`
    deciding which epochs have them) depend on them: one metrics.jsonl must not mix two
    evaluation protocols. Re-evaluating a finished run with other settings is `dino-ablate eval`,
    which writes beside the run (eval/) and never into it. Keeping `eval.*` in the identity also
    keeps every existing run id (they were always hashed).
    """
    return not any(key == k or key.startswith(k + ".") for k in NOT_DEFINING)


def defaults() -> dict[str, Any]:
    """The `RunConfig` defaults as `config.to_dict` gives them (computed once)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = cfgmod.to_dict(cfgmod.RunConfig())
    return _DEFAULTS


def _changes(values: Mapping[str, Any], default: Mapping[str, Any], prefix: str
             ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if not defines_run(path):
            continue
        fallback = default.get(key) if isinstance(default, Mapping) else None
        if isinstance(value, Mapping):
            sub = _changes(value, fallback if isinstance(fallback, Mapping) else {}, f"{path}.")
            if sub:
                out[key] = sub
        elif key not in default or value != fallback:
            out[key] = value
    return out


def identity(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a config (nested, as `config.to_dict` gives it): the keys that define
    the run and differ from the `RunConfig` defaults, with their values. A partial mapping
    (an older checkpoint's config, a sweep's diff) counts missing keys as defaults."""
    return _changes(cfg_dict, defaults(), "")


def digest(ident: Mapping[str, Any]) -> str:
    """8 hex digits of sha256 over an identity: the suffix of a run id."""
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _first_key(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str) -> str | None:
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, Mapping) or isinstance(y, Mapping):
            found = _first_key(x if isinstance(x, Mapping) else {},
                               y if isinstance(y, Mapping) else {}, f"{prefix}{key}.")
            if found is not None:
                return found
        return f"{prefix}{key}"
    return None


def _value(cfg_dict: Mapping[str, Any], key: str) -> Any:
    for source in (cfg_dict, defaults()):
        try:
            return cfgmod.get_dotted(source, key)
        except (KeyError, TypeError):
            continue
    return None


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """None when the two configs define the same run; otherwise the first differing key (in
    sorted dotted order) with both values: `teacher.momentum: 0.996 there, 0.9 now`."""
    key = _first_key(identity(old), identity(new), "")
    if key is None:
        return None
    return f"{key}: {_value(old, key)!r} there, {_value(new, key)!r} now"
