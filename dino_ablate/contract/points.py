"""The points of a sweep profile as claims see them: axes, selectors and their matches.

A profile's points are the product of its axes (`grid` keys, `zip` groups, `seeds`); an axis
is the list of its entries, each a mapping of axis keys to values (`{"teacher.update": "ema"}`,
a zip row, `{"seed": 0}`). A selector (`match:`) maps axis keys to values; it selects the
points whose values agree. Claims aggregate the seeds of a point, so a claim's point is a
selector that fixes one entry of every axis but the seeds.

`dino_ablate/sweep.py` validates the axes and passes them in; `analysis/` (which may not import
the sweep loader) reads them back from the sweep file with :func:`profile_axes`, the same
extraction without the run-config checks (a test checks both agree on every shipped file).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dino_ablate.errors import ConfigError

#: one axis: its entries; a profile: its axes in file order (grid keys, zip groups, seeds)
Axis = list[dict[str, Any]]
Axes = list[Axis]

AXIS_KINDS = ("grid", "zip", "seeds")
SEED = "seed"
#: the most points a claim may range over (`flat` without `points`, `monotone`)
MAX_POINTS = 10_000


def fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}", source=source, key=key)


def show(value: Any) -> str:
    """A value as the sweep file would write it (JSON, strings bare)."""
    return value if isinstance(value, str) else json.dumps(value)


# --------------------------------------------------------------------------------------------
# reading the axes back from a sweep mapping


def profile_axes(raw: Mapping[str, Any], profile: str, source: str) -> Axes:
    """The axes of `profile` in the sweep mapping `raw` (the profile's own `grid`/`zip`/
    `seeds` replace the top-level ones; `null` removes a kind). Shapes only: the run-config
    checks of each key and value are the sweep loader's."""
    body = raw["profiles"][profile]
    axes: Axes = []
    for kind in AXIS_KINDS:
        where = f"profiles.{profile}.{kind}" if kind in body else kind
        value = body[kind] if kind in body else raw.get(kind)
        if value is None:
            continue
        if kind == "grid":
            if not isinstance(value, Mapping):
                raise fail(source, where, f"{value!r} must be a mapping of config keys to lists")
            for key, values in value.items():
                axes.append([{str(key): v} for v in _values(source, f"{where}.{key}", values)])
        elif kind == "zip":
            groups = [value] if isinstance(value, Mapping) else value
            if not isinstance(groups, list):
                raise fail(source, where, f"{value!r} must be a mapping of keys to lists, or "
                           "a list of such mappings")
            for index, group in enumerate(groups):
                axes.append(_zip_axis(source, f"{where}[{index}]" if isinstance(value, list)
                                      else where, group))
        else:
            axes.append([{SEED: s} for s in _values(source, where, value)])
    return axes


def _values(source: str, where: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise fail(source, where, f"{values!r} must be a non-empty list of values")
    return values


def _zip_axis(source: str, where: str, group: Any) -> Axis:
    if not isinstance(group, Mapping) or not group:
        raise fail(source, where, f"{group!r} must be a non-empty mapping of keys to lists")
    columns = {str(k): _values(source, f"{where}.{k}", v) for k, v in group.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise fail(source, where, "zipped axes must have the same length")
    return [{k: v[i] for k, v in columns.items()} for i in range(lengths.pop())]


def profile_names(raw: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The profiles of the sweep mapping `raw` (each a mapping)."""
    profiles = raw.get("profiles")
    if not isinstance(profiles, Mapping) or not profiles:
        raise fail(source, "profiles", "must be a non-empty mapping of profile names to "
                   "{config, resources}")
    for name, body in profiles.items():
        if not isinstance(body, Mapping):
            raise fail(source, f"profiles.{name}", f"{body!r} must be a mapping")
    return tuple(str(name) for name in profiles)


def baseline_of(raw: Mapping[str, Any], profile: str) -> Mapping[str, Any] | None:
    """The profile's `baseline` selector (its own, else the top-level one), None if none."""
    body = raw["profiles"][profile]
    selector = body["baseline"] if "baseline" in body else raw.get("baseline")
    return selector if isinstance(selector, Mapping) and selector else None


# --------------------------------------------------------------------------------------------
# selectors


def axis_values(axes: Axes) -> dict[str, list[Any]]:
    """Each axis key's distinct values, first seen first."""
    values: dict[str, list[Any]] = {}
    for axis in axes:
        for entry in axis:
            for key, value in entry.items():
                seen = values.setdefault(key, [])
                if value not in seen:
                    seen.append(value)
    return values


def _agrees(selector: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(entry[k] == v for k, v in selector.items() if k in entry)


def check_selector(source: str, where: str, raw: Any, axes: Axes, profile: str,
                   *, one_point: bool) -> dict[str, Any]:
    """A `match:` mapping checked against the profile's axes: every key an axis, every value
    one of its values, and at least one point (exactly one but for the seeds when
    `one_point`) selected. Returns it as a plain dict."""
    if not isinstance(raw, Mapping):
        raise fail(source, where, f"{raw!r} must be a mapping of axis keys to values (a match),"
                   " e.g. {teacher.update: ema}")
    values = axis_values(axes)
    for key, value in raw.items():
        if key not in values:
            close = difflib.get_close_matches(str(key), list(values), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise fail(source, f"{where}.{key}", f"not an axis of profile {profile}{hint} "
                       f"Axes: {', '.join(values) or '(none)'}")
        if value not in values[key]:
            raise fail(source, f"{where}.{key}", f"{value!r} is not a value of this axis "
                       f"in profile {profile}; allowed: {values[key]}")
    selector = dict(raw)
    matching = [[e for e in axis if _agrees(selector, e)] for axis in axes]
    if any(not entries for entries in matching):
        raise fail(source, where, f"{_selector_text(selector)} selects no point of profile "
                   f"{profile} (no point has these values together)")
    if one_point:
        varying = [key for axis in matching if len(axis) > 1 for key in axis[0]
                   if key != SEED and len({show(e[key]) for e in axis}) > 1]
        if varying:
            count = math.prod(len(a) for a in matching if SEED not in a[0])
            raise fail(source, where, f"{_selector_text(selector)} selects {count} points of "
                       f"profile {profile} (they differ in {', '.join(varying)}); a claim's "
                       "point must select one point (its seeds are aggregated): add keys")
    return selector


def point_index(selector: Mapping[str, Any], axes: Axes) -> tuple[int, ...]:
    """Which entry of each axis but the seeds a one-point selector picks (its first match)."""
    return tuple(next((i for i, e in enumerate(axis) if _agrees(selector, e)), -1)
                 for axis in axes if not all(set(e) == {SEED} for e in axis))


def _selector_text(selector: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {show(v)}" for k, v in selector.items()) + "}"


def non_seed_points(axes: Axes, source: str, where: str) -> Iterator[dict[str, Any]]:
    """Every point of the profile but for its seeds, as a full selector (all axis keys)."""
    kept = [axis for axis in axes if not all(set(e) == {SEED} for e in axis)]
    count = math.prod(len(axis) for axis in kept)
    if count > MAX_POINTS:
        raise fail(source, where, f"the profile has {count:,} points; a claim over all of "
                   f"them allows at most {MAX_POINTS:,}")
    for combo in itertools.product(*kept):
        point: dict[str, Any] = {}
        for entry in combo:
            point.update(entry)
        yield point


def short_label(selector: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """`update=ema`, `normalization=centering sharpening=true`: a point as a claim shows it
    (the last part of each key, or the whole key when two keys share that part)."""
    chosen = [k for k in (keys if keys is not None else selector) if k in selector]
    last = [k.rsplit(".", 1)[-1] for k in chosen]
    names = [s if last.count(s) == 1 else k for k, s in zip(chosen, last, strict=True)]
    text = " ".join(f"{n}={show(selector[k])}" for n, k in zip(names, chosen, strict=True))
    return text or "(the point)"
