"""The points of a sweep profile as claims see them: axes, selectors and their matches.

A profile's points are the product of its axes (`grid` keys, `zip` groups, `seeds`); an axis
is the list of its entries, each a mapping of axis keys to values (`{"teacher.update": "ema"}`,
a zip row, `{"seed": 0}`). A selector (`match:`) maps axis keys to values; it selects the
points whose values agree. Claims aggregate the seeds of a point, so a claim's point is a
selector that fixes one entry of every axis but the seeds.

:func:`read_axes` is the one reader of a profile's axes: the sweep loader calls it with its
run-config key check, `analysis/` (which may not import the sweep loader) without it.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# reading the axes from a sweep mapping (the one reader: the sweep loader passes its config-key
# check, analysis reads them back without it)

#: `check_key(source, where, key)`: the key, or a ConfigError when it names no config leaf
KeyCheck = Callable[[str, str, Any], str]


def _any_key(source: str, where: str, key: Any) -> str:
    return str(key)


def profile_axes(raw: Mapping[str, Any], profile: str, source: str) -> Axes:
    """The axes of `profile` in the sweep mapping `raw`, see :func:`read_axes`."""
    return read_axes(raw, profile, source)[0]


def read_axes(raw: Mapping[str, Any], profile: str, source: str,
              check_key: KeyCheck = _any_key) -> tuple[Axes, dict[str, list[Any]]]:
    """The axes (`grid` keys, `zip` groups, `seeds`) of `profile` in the sweep mapping `raw`,
    each the list of its assignments, and each key's distinct values. The profile's own
    `grid`/`zip`/`seeds` replace the top-level ones; `null` removes a kind. Every shape is
    checked here; whether a key names a run-config field is `check_key`'s business."""
    body = raw["profiles"][profile]
    specs = {kind: (body[kind], f"profiles.{profile}.{kind}") if kind in body
             else (raw.get(kind), kind) for kind in AXIS_KINDS}
    axes: Axes = []
    values: dict[str, list[Any]] = {}

    def take(key: Any, where: str) -> str:
        key = check_key(source, where, key)
        if key in values:
            raise fail(source, f"{where}.{key}", f"key {key!r} is already varied by another "
                       "axis; a key may appear in one axis only")
        return key

    grid_raw, gpath = specs["grid"]
    grid = grid_raw or {}
    if not isinstance(grid, Mapping):
        raise fail(source, gpath, f"{grid!r} must be a mapping of config keys to lists")
    if grid_raw is not None and not grid:
        raise fail(source, gpath, "empty mapping; remove it or give at least one axis")
    for key, entries in grid.items():
        key = take(key, gpath)
        values[key] = axis_list(source, f"{gpath}.{key}", entries)
        axes.append([{key: v} for v in values[key]])

    zip_raw, zpath = specs["zip"]
    groups: list[Any] = []
    if zip_raw is not None:
        groups = [zip_raw] if isinstance(zip_raw, Mapping) else zip_raw
        if not isinstance(groups, list) or not groups:
            raise fail(source, zpath, f"{zip_raw!r} must be a mapping of keys to "
                       "equal-length lists, or a list of such mappings")
    for index, group in enumerate(groups):
        where = f"{zpath}[{index}]" if isinstance(zip_raw, list) else zpath
        axes.append(_zip_axis(source, where, group, take, values))

    seeds, spath = specs["seeds"]
    if seeds is not None:
        if SEED in values:
            raise fail(source, spath, "`seed` is already varied by another axis")
        seeds = axis_list(source, spath, seeds)
        for i, s in enumerate(seeds):
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise fail(source, f"{spath}[{i}]", f"{s!r} must be an integer >= 0")
        values[SEED] = seeds
        axes.append([{SEED: s} for s in seeds])
    return axes, values


def _zip_axis(source: str, where: str, group: Any, take: Callable[[Any, str], str],
              values: dict[str, list[Any]]) -> Axis:
    if not isinstance(group, Mapping) or not group:
        raise fail(source, where, f"{group!r} must be a non-empty mapping of keys to lists")
    lengths: dict[str, int] = {}
    for key, entries in group.items():
        key = take(key, where)
        column = axis_list(source, f"{where}.{key}", entries, unique=False)
        distinct: dict[Any, Any] = {}
        for v in column:  # equal values (1 and 1.0 too) once, in order, in linear time
            distinct.setdefault(_freeze(v), v)
        values[key] = list(distinct.values())
        lengths[key] = len(column)
    if len(set(lengths.values())) > 1:
        raise fail(source, where, "zipped axes must have the same length; got " + ", ".join(
            f"{k}: {n}" for k, n in lengths.items()))
    n = next(iter(lengths.values()))
    first_at: dict[str, int] = {}
    for i in range(n):
        row = json.dumps([group[k][i] for k in group], sort_keys=True)
        if row in first_at:
            raise fail(source, where, f"entry {i} repeats entry {first_at[row]} ({row}); "
                       "every point must be distinct")
        first_at[row] = i
    return [{str(k): group[k][i] for k in group} for i in range(n)]


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an axis value (lists become tuples) that compares as it does."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _holds_mapping(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list)
                                       and any(_holds_mapping(v) for v in value))


def axis_list(source: str, path: str, values: Any, unique: bool = True) -> list[Any]:
    """An axis's values: a non-empty list of finite scalars or lists (distinct if `unique`)."""
    if not isinstance(values, list):
        raise fail(source, path, f"{values!r} must be a list of values")
    if not values:
        raise fail(source, path, "empty list; an axis needs at least one value")
    for i, v in enumerate(values):
        if _holds_mapping(v):
            raise fail(source, f"{path}[{i}]", f"{v!r}: an axis value must be a scalar or a "
                       "list, not a mapping (vary the leaf keys instead)")
        if isinstance(v, float) and not math.isfinite(v):
            raise fail(source, f"{path}[{i}]", f"{v!r} must be finite")
    seen: set[str] = set()
    for i, v in enumerate(values if unique else []):
        token = json.dumps(v, sort_keys=True)
        if token in seen:
            raise fail(source, f"{path}[{i}]", f"{v!r} appears twice; every point must be "
                       "distinct")
        seen.add(token)
    return values


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
            count = math.prod(len(entries) for entries in map(without_seeds, matching) if entries)
            raise fail(source, where, f"{_selector_text(selector)} selects {count} points of "
                       f"profile {profile} (they differ in {', '.join(varying)}); a claim's "
                       "point must select one point (its seeds are aggregated): add keys")
    return selector


def without_seeds(axis: Axis) -> Axis:
    """The axis' entries without their `seed`, each once: a `zip` may give a point several
    seeds (`seed` beside its other keys), which claims aggregate like a `seeds` axis. A `seeds`
    axis has no entries left."""
    entries: Axis = []
    for entry in axis:
        kept = {k: v for k, v in entry.items() if k != SEED}
        if kept and kept not in entries:
            entries.append(kept)
    return entries


def point_index(selector: Mapping[str, Any], axes: Axes) -> tuple[int, ...]:
    """Which entry of each axis but the seeds a one-point selector picks (its first match)."""
    kept = [entries for entries in map(without_seeds, axes) if entries]
    return tuple(next((i for i, e in enumerate(entries) if _agrees(selector, e)), -1)
                 for entries in kept)


def _selector_text(selector: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {show(v)}" for k, v in selector.items()) + "}"


def non_seed_points(axes: Axes, source: str, where: str) -> Iterator[dict[str, Any]]:
    """Every point of the profile but for its seeds, as a full selector (all axis keys)."""
    kept = [entries for entries in map(without_seeds, axes) if entries]
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
