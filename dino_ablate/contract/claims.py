"""Claims: the paper's readings of an ablation, as data in the sweep file (docs/sweeps.md).

A sweep file's top-level `claims:` list (a profile may give its own, which replaces it for that
profile) states what the paper found, e.g. "the EMA teacher beats the previous-epoch teacher"
as ``{id: ema_beats_previous_epoch, kind: order, points: [{teacher.update: ema},
{teacher.update: previous_epoch}], source: "Fig. 6 right", paper: {ema: 72.8, previous_epoch:
66.6}}``. The sweep loader checks every claim against the axes of each profile it applies to
(a bad claim is one ConfigError naming the file and key path), and `analysis/claims.py`
evaluates them over the run directories (`dino-ablate claims SWEEP_DIR`). Both sides use this
module, so the vocabulary lives in the run-directory contract.

Units: accuracies are fractions in metrics.jsonl (0.473) but percent in claims: `by` and
`within` are percentage points for accuracies; nats for entropy and KL; images/s for
`images_per_s`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dino_ablate import safeload
from dino_ablate.contract.points import (
    SEED,
    Axes,
    baseline_of,
    check_selector,
    fail,
    non_seed_points,
    point_index,
    profile_axes,
    profile_names,
    short_label,
    show,
    without_seeds,
)
from dino_ablate.errors import ConfigError, unknown_key

__all__ = ["ACCURACIES", "DIRECTIONS", "ENTROPY_ONE_DIM_MAX", "ENTROPY_UNIFORM_TOL", "KINDS",
           "KL_COLLAPSED_MAX", "KL_HEALTHY_MIN", "METRICS", "MODES", "WINDOWS", "Claim",
           "ConfigError", "read_claims", "sweep_claims"]

# -- thresholds (nats), as the collapse study (Fig. 7) reads them at small scale ----------------
#: `collapses` one_dim: the final teacher entropy is below this (a one-hot teacher has 0)
ENTROPY_ONE_DIM_MAX: Final = 0.05
#: `collapses` uniform: the final teacher entropy is within this of ln K
ENTROPY_UNIFORM_TOL: Final = 0.05
#: `collapses`: the final KL(teacher||student) is below this (collapsed: they agree)
KL_COLLAPSED_MAX: Final = 0.01
#: `healthy`: the KL stays at or above this at every epoch of the second half
KL_HEALTHY_MIN: Final = 0.1

# -- vocabulary ---------------------------------------------------------------------------------
#: metric -> how a claim line names it
METRICS: Final[dict[str, str]] = {
    "knn_teacher": "teacher kNN", "knn_student": "student kNN",
    "linear_teacher": "teacher linear", "linear_student": "student linear",
    "teacher_entropy": "teacher entropy", "kl_teacher_student": "KL",
    "images_per_s": "images/s",
}
#: stored as fractions (0-1), shown and compared in percent
ACCURACIES: Final = ("knn_teacher", "knn_student", "linear_teacher", "linear_student")
DEFAULT_METRIC: Final = "knn_teacher"
MODES: Final = ("uniform", "one_dim", "any")
DIRECTIONS: Final = ("increasing", "decreasing")
WINDOWS: Final = ("second_half", "all")

COMMON_KEYS: Final = ("id", "kind", "source", "paper", "profiles")
#: kind -> (its own keys, the required ones among them, the metrics it allows)
KINDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]] = {
    "order": (("points", "metric"), ("points",), tuple(METRICS)),
    "collapses": (("point", "mode"), ("point", "mode"), ()),
    "healthy": (("point",), ("point",), ()),
    "below_init": (("point", "by", "metric"), ("point",), ACCURACIES),
    "above_init": (("point", "by", "metric"), ("point",), ACCURACIES),
    "flat": (("points", "within", "metric"), ("within",), tuple(METRICS)),
    "monotone": (("axis", "direction", "metric"), ("axis", "direction"), tuple(METRICS)),
    "teacher_above_student": (("point", "over", "metric"), ("point",),
                              ("knn_teacher", "linear_teacher")),
    "teacher_not_above_student": (("point", "over", "metric"), ("point",),
                                  ("knn_teacher", "linear_teacher")),
}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Claim:
    """One claim, resolved for one profile.

    Attributes:
        id, kind, source: as written (`source` names the table or figure).
        paper: the paper's numbers as one line of text (`ema 72.8, previous_epoch 66.6`).
        metric: what `order`, `flat`, `monotone`, `*_init` and `teacher_*above_student`
            compare (`collapses` and `healthy` read entropy and KL).
        points: the selected points, each a selector (axis key -> value): one for the point
            kinds, the list for `order` and `flat`, the points along the axis in ascending
            order for `monotone`.
        labels: how the line names each point (`update=ema`).
        mode, by, within, axis, direction, over: the kind's own settings (None/0 when unused).
        where: the claim's key path in the sweep file (`claims[2]`).
    """

    id: str
    kind: str
    source: str
    paper: str
    metric: str
    points: tuple[dict[str, Any], ...]
    labels: tuple[str, ...]
    mode: str | None = None
    by: float = 0.0
    within: float | None = None
    axis: str | None = None
    direction: str | None = None
    over: str = "second_half"
    where: str = ""
    profiles: tuple[str, ...] | None = field(default=None, compare=False)


def read_claims(path: Path, profile: str) -> tuple[Claim, ...]:
    """The claims of the sweep file `path` for `profile`, checked. Raises ConfigError."""
    raw = safeload.read_yaml(path)
    source = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError("the top level must be a mapping of keys", source=source)
    claims = sweep_claims(raw, source)
    if profile not in claims:
        raise ConfigError(f"profiles: no profile {profile!r} (the sweep directory's); "
                          f"profiles: {', '.join(claims)}", source=source, key="profiles")
    return claims[profile]


def sweep_claims(raw: Mapping[str, Any], source: str,
                 axes: Mapping[str, Axes] | None = None) -> dict[str, tuple[Claim, ...]]:
    """Every profile's claims (its own block, else the top-level one), checked and resolved.

    `axes` gives each profile's axes (the sweep loader's, validated); without it they are
    read from `raw` (:func:`profile_axes`). Raises ConfigError at the first bad claim.
    """
    profiles = profile_names(raw, source)
    per_profile = dict(axes) if axes is not None else {
        p: profile_axes(raw, p, source) for p in profiles}
    top = _parse_block(raw.get("claims"), source, "claims", profiles, None)
    out: dict[str, tuple[Claim, ...]] = {}
    own_blocks = [p for p in profiles if "claims" in raw["profiles"][p]]
    if top and len(own_blocks) == len(profiles):
        raise fail(source, "claims", "every profile gives its own `claims`, which replace "
                   "these: they apply to no profile; move them into the profiles")
    for entry in top:
        for name in entry.get("profiles") or ():
            if name in own_blocks:
                raise fail(source, f"{entry['where']}.profiles", f"profile {name} gives its own "
                           f"`claims`, which replace these for it; move the claim there")
    for profile in profiles:
        body = raw["profiles"][profile]
        block = (_parse_block(body["claims"], source, f"profiles.{profile}.claims", profiles,
                              profile) if profile in own_blocks else top)
        baseline = baseline_of(raw, profile)
        out[profile] = tuple(
            _resolve(entry, source, per_profile[profile], profile, baseline)
            for entry in block
            if entry.get("profiles") is None or profile in entry["profiles"])
    return out


# --------------------------------------------------------------------------------------------
# parsing (profile-independent)


def _parse_block(raw: Any, source: str, where: str, profiles: Sequence[str],
                 own_profile: str | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise fail(source, where, f"{raw!r} must be a list of claims ({{id, kind, source, "
                   "paper, ...}, docs/sweeps.md)")
    seen: dict[str, int] = {}
    parsed = []
    for index, entry in enumerate(raw):
        item = _parse_claim(entry, source, f"{where}[{index}]", profiles, own_profile)
        if item["id"] in seen:
            raise fail(source, f"{where}[{index}].id", f"{item['id']!r} is already the id of "
                       f"{where}[{seen[item['id']]}]; every claim needs its own id")
        seen[item["id"]] = index
        parsed.append(item)
    return parsed


def _parse_claim(entry: Any, source: str, where: str, profiles: Sequence[str],
                 own_profile: str | None) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise fail(source, where, f"{entry!r} must be a mapping {{id, kind, source, paper, ...}}")
    kind = entry.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        what = "missing" if kind is None else f"{kind!r} is not a claim kind{hint}"
        raise fail(source, f"{where}.kind", f"{what}; allowed: {', '.join(KINDS)}")
    own, required, metrics = KINDS[kind]
    valid = (*COMMON_KEYS, *own)
    for key in entry:
        if key not in valid:
            raise unknown_key(source, where, key, valid)
    for key in ("id", "source", "paper", *required):
        if key not in entry:
            raise fail(source, f"{where}.{key}", f"missing; a {kind} claim needs "
                       f"{', '.join(('id', 'kind', 'source', 'paper', *required))}")
    item: dict[str, Any] = {"where": where, "kind": kind, **dict(entry)}
    item["id"] = _text(source, f"{where}.id", entry["id"], ID_RE,
                       "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    item["source"] = _text(source, f"{where}.source", entry["source"])
    item["paper"] = _paper(source, f"{where}.paper", entry["paper"])
    item["metric"] = _choice(source, f"{where}.metric", entry.get("metric", DEFAULT_METRIC),
                             metrics) if metrics else None
    item["profiles"] = _profiles(source, where, entry.get("profiles"), profiles, own_profile)
    _parse_settings(item, entry, source, where)
    return item


def _parse_settings(item: dict[str, Any], entry: Mapping[str, Any], source: str,
                    where: str) -> None:
    """The kind's own scalar settings (selectors are checked per profile in _resolve)."""
    if "mode" in entry:
        item["mode"] = _choice(source, f"{where}.mode", entry["mode"], MODES)
    if "direction" in entry:
        item["direction"] = _choice(source, f"{where}.direction", entry["direction"],
                                    DIRECTIONS)
    item["over"] = _choice(source, f"{where}.over", entry.get("over", "second_half"), WINDOWS)
    item["by"] = _number(source, f"{where}.by", entry.get("by", 0), minimum=0.0)
    if "within" in entry:
        item["within"] = _number(source, f"{where}.within", entry["within"], minimum=0.0,
                                 strict=True)
    if "axis" in entry:
        item["axis"] = entry["axis"]
        if not isinstance(entry["axis"], str) or entry["axis"] == SEED:
            raise fail(source, f"{where}.axis", f"{entry['axis']!r} must be the dotted key "
                       "of an axis of the sweep (not seed), e.g. model.patch_size")
    points = entry.get("points")
    if "points" in entry and (not isinstance(points, list) or len(points) < 2):
        raise fail(source, f"{where}.points", f"{points!r} must be a list of at least two "
                   "matches (axis key -> value mappings)")


def _text(source: str, key: str, value: Any, pattern: re.Pattern[str] | None = None,
          allowed: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value.strip() or (pattern and not pattern.match(value)):
        raise fail(source, key, f"{value!r} is not allowed; allowed: {allowed}")
    return value


def _paper(source: str, key: str, value: Any) -> str:
    """`paper`: a text, a number, or a mapping of names to numbers or texts, as one line."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return show(value)
    if isinstance(value, Mapping) and value and all(
            isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))
            for v in value.values()):
        return ", ".join(f"{k} {show(v)}" for k, v in value.items())
    raise fail(source, key, f"{value!r} is not allowed; allowed: a text, a number, or a "
               "mapping of names to the paper's numbers, e.g. {knn: 72.8}")


def _choice(source: str, key: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise fail(source, key, f"{value!r} is not allowed{hint}; allowed: "
                   f"{', '.join(allowed)}")
    return str(value)


def _number(source: str, key: str, value: Any, *, minimum: float,
            strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value > minimum if strict else value >= minimum) and value == value
    if not ok or value in (float("inf"), float("-inf")):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise fail(source, key, f"{value!r} must be a finite number {bound} (percentage "
                   "points for accuracies, nats for entropy and KL)")
    return float(value)


def _profiles(source: str, where: str, value: Any, profiles: Sequence[str],
              own_profile: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if own_profile is not None:
        raise fail(source, f"{where}.profiles", f"a claim under profiles.{own_profile}.claims "
                   f"applies to {own_profile} only; remove `profiles`")
    if not isinstance(value, list) or not value or any(p not in profiles for p in value):
        raise fail(source, f"{where}.profiles", f"{value!r} must list profiles of this "
                   f"sweep: {', '.join(profiles)}")
    return tuple(value)


# --------------------------------------------------------------------------------------------
# resolving for one profile


def _resolve(item: Mapping[str, Any], source: str, axes: Axes, profile: str,
             baseline: Mapping[str, Any] | None) -> Claim:
    where, kind = item["where"], item["kind"]
    if kind == "monotone":
        points, labels = _along_axis(item, source, axes, profile, baseline)
    elif "points" in item:
        points = tuple(check_selector(source, f"{where}.points[{i}]", raw, axes, profile,
                                      one_point=True) for i, raw in enumerate(item["points"]))
        labels = tuple(short_label(p) for p in points)
        _distinct(source, f"{where}.points", points, axes)
    elif kind == "flat":  # no points: every point of the profile
        points = tuple(non_seed_points(axes, source, where))
        keys = [k for k in points[0] if len({show(p[k]) for p in points}) > 1] if points else []
        labels = tuple(short_label(p, keys) for p in points)
        if len(points) < 2:
            raise fail(source, where, f"a flat claim needs two points; profile {profile} has "
                       f"{len(points)}")
    else:
        selector = item["point"]
        if selector == "baseline":  # the profile's `baseline` point
            if baseline is None:
                raise fail(source, f"{where}.point", f"'baseline' but profile {profile} has no "
                           "`baseline`; give the point's axis values instead")
            selector = dict(baseline)
        points = (check_selector(source, f"{where}.point", selector, axes, profile,
                                 one_point=True),)
        labels = (short_label(points[0]),)
    return Claim(id=item["id"], kind=kind, source=item["source"], paper=item["paper"],
                 metric=item["metric"] or "", points=points, labels=labels,
                 mode=item.get("mode"), by=item["by"], within=item.get("within"),
                 axis=item.get("axis"), direction=item.get("direction"), over=item["over"],
                 where=where, profiles=item["profiles"])


def _distinct(source: str, where: str, points: Sequence[Mapping[str, Any]], axes: Axes) -> None:
    """Two matches of one list must not select the same point."""
    seen: dict[tuple[int, ...], int] = {}
    for index, selector in enumerate(points):
        token = point_index(selector, axes)
        if token in seen:
            raise fail(source, f"{where}[{index}]", f"selects the same point as "
                       f"{where}[{seen[token]}]; every point of the list must differ")
        seen[token] = index


def _along_axis(item: Mapping[str, Any], source: str, axes: Axes, profile: str,
                baseline: Mapping[str, Any] | None
                ) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    """`monotone`: the points that differ from the baseline point in the axis alone (every
    point when no other axis varies), in ascending order of the axis key's value."""
    where, key = item["where"], item["axis"]
    group = next((axis for axis in axes if key in axis[0]), None)
    if group is None:
        keys = [k for axis in axes for k in axis[0] if k != SEED]
        raise fail(source, f"{where}.axis", f"{key!r} is not an axis of profile {profile}; "
                   f"axes: {', '.join(keys) or '(none)'}")
    others = [entries for entries in (without_seeds(axis) for axis in axes if axis is not group)
              if len(entries) > 1]
    fixed: dict[str, Any] = {}
    if others:
        if baseline is None:
            raise fail(source, f"{where}.axis", f"profile {profile} varies other axes too "
                       f"({', '.join(k for a in others for k in a[0])}); give the sweep a "
                       "`baseline`: the points along the axis are those differing from it in "
                       "this axis alone")
        for axis in others:
            entries = [e for e in axis if all(e[k] == v for k, v in baseline.items() if k in e)]
            if len(entries) != 1:
                raise fail(source, f"{where}.axis", f"the baseline {dict(baseline)} does not "
                           f"fix one value of {', '.join(axis[0])} in profile {profile}")
            fixed.update(entries[0])
    points = [{**fixed, **entry} for entry in without_seeds(group)]
    values = [p[key] for p in points]
    if len(points) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  for v in values) or len(set(values)) != len(values):
        raise fail(source, f"{where}.axis", f"{key} takes the values {values} in profile "
                   f"{profile}; a monotone claim needs two or more distinct numbers")
    order = sorted(range(len(points)), key=lambda i: values[i])
    return (tuple(points[i] for i in order),
            tuple(short_label(points[i], [key]) for i in order))
