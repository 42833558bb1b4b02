"""Sweep files: a declarative ablation expanded into validated, identified run points.

A sweep YAML names a base run config, the axes that vary (`grid`, `zip`, `seeds`), named
`profiles` that override the base (e.g. `paper` on ImageNet GPUs, `local` on digits CPUs) with
their job `resources` (and, where a profile needs other points, its own axes and baseline),
optional per-point resource overrides and a `reference` block with the paper's numbers.
:func:`load_sweep` expands one profile into :class:`Point` s, each holding a fully resolved
:class:`~dino_ablate.config.RunConfig` and a run id. Every point is validated before anything
is created or submitted; the first bad point raises a :class:`ConfigError` naming the sweep
file, the point, the key path, the value and what is allowed.

The full format is documented in ``docs/sweeps.md``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dino_ablate import config as cfgmod
from dino_ablate import identity, safeload
from dino_ablate.config import RunConfig
from dino_ablate.contract.claims import Claim, sweep_claims
from dino_ablate.contract.points import AXIS_KINDS, read_axes
from dino_ablate.errors import ConfigError, unknown_key
from dino_ablate.resources import Resources, _fail, parse_resources

#: sweep names, profile names: used in run ids, job names and paths, so no shell metacharacters.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")

TOP_KEYS = ("name", "description", "base", "output_dir", "default_profile", "profiles", "grid",
            "zip", "seeds", "baseline", "point_resources", "reference", "claims")
#: `grid`, `zip`, `seeds`, `baseline` and `claims` in a profile replace the top-level ones for it.
PROFILE_KEYS = ("config", "resources", *AXIS_KINDS, "baseline", "claims")


@dataclass(frozen=True)
class Point:
    """One run of a sweep: a resolved config, its identity and what it needs."""

    index: int
    run_id: str
    varied: dict[str, Any]
    config: RunConfig
    resources: Resources
    reference: dict[str, float]
    reference_source: str | None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.varied.items()) or "(single point)"

    @property
    def digest(self) -> str:
        """The semantic hash that ends the run id (`make_run_id`)."""
        return self.run_id.rsplit("_", 1)[-1]


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep file for one profile."""

    name: str
    file: Path
    profile: str
    profiles: tuple[str, ...]
    description: str
    output_dir: str
    varied_keys: tuple[str, ...]
    points: tuple[Point, ...]
    baseline: tuple[str, ...]
    #: the profile's claims (docs/sweeps.md, "Claims"), checked against its axes
    claims: tuple[Claim, ...] = ()

    def point(self, run_id: str) -> Point:
        for p in self.points:
            if p.run_id == run_id:
                return p
        raise KeyError(run_id)


# --------------------------------------------------------------------------------------------
# helpers


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _leaf_keys() -> list[str]:
    return [row[0] for row in cfgmod.field_docs()]


_LEAVES: list[str] | None = None


def leaf_keys() -> list[str]:
    """Every dotted key of a RunConfig leaf (`loss.teacher_temp`, `seed`, ...)."""
    global _LEAVES
    if _LEAVES is None:
        _LEAVES = _leaf_keys()
    return _LEAVES


def _copy_tree(node: Any) -> Any:
    """Copy nested dicts/lists (faster than deepcopy for plain YAML data)."""
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy_tree(v) for v in node]
    return node


def _merge(into: dict[str, Any], over: Mapping[str, Any]) -> None:
    """Deep-merge `over` into `into` (mappings merge, everything else replaces)."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = _copy_tree(value)


def _check_axis_key(source: str, where: str, key: Any) -> str:
    leaves = leaf_keys()
    if not isinstance(key, str) or key not in leaves:
        close = difflib.get_close_matches(str(key), leaves, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}.{key}: unknown config key{hint} An axis key is the dotted "
                          "path of a run-config leaf field, e.g. loss.teacher_temp",
                          source=source, key=f"{where}.{key}")
    return key


def _match_mapping(source: str, where: str, raw: Any, axis_values: Mapping[str, list[Any]]
                   ) -> dict[str, Any]:
    """A `match:` selector: axis keys to one of their values."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail(source, where, f"{raw!r} must be a mapping of axis keys to values")
    for key, value in raw.items():
        if key not in axis_values:
            close = difflib.get_close_matches(str(key), list(axis_values), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}.{key}: not an axis of this sweep{hint} Axes: "
                              f"{', '.join(axis_values) or '(none)'}", source=source,
                              key=f"{where}.{key}")
        if value not in axis_values[key]:
            raise _fail(source, f"{where}.{key}", f"{value!r} is not a value of this axis; "
                        f"allowed: {axis_values[key]}")
    return dict(raw)


def _matches(selector: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in selector.items())


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (list, tuple)):
        text = "x".join(_fmt_value(v) for v in value)
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "", text)[:24] or "v"


def _short_labels(keys: Sequence[str]) -> dict[str, str]:
    """`loss.teacher_temp` -> `teacher_temp`, unless two keys share that last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-"))
            for k, s in zip(keys, last, strict=True)}


def semantic_diff(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What a resolved config (as `config.to_dict` gives it) changes from the RunConfig
    defaults, among the keys that define the run: its identity (`identity.identity`)."""
    return identity.identity(cfg_dict)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _diff_with(diff: Mapping[str, Any], canonical: Mapping[str, Any]) -> dict[str, Any]:
    """`diff` (a semantic diff) after setting leaf keys to canonical values: the semantic diff
    of the changed config, computed from the changes alone."""
    out = _copy_tree(diff)
    for key, value in canonical.items():
        if not identity.defines_run(key):
            continue
        value = _plain(value)
        if value != cfgmod.get_dotted(identity.defaults(), key):
            cfgmod.set_dotted(out, key, value)
            continue
        parts = key.split(".")
        nodes = [out]
        for part in parts[:-1]:
            if not isinstance(nodes[-1].get(part), dict):
                break
            nodes.append(nodes[-1][part])
        else:
            nodes[-1].pop(parts[-1], None)
            for depth in range(len(parts) - 1, 0, -1):  # drop emptied sub-mappings
                if nodes[depth]:
                    break
                del nodes[depth - 1][parts[depth - 1]]
    return out


def semantic_hash(cfg_dict: Mapping[str, Any]) -> str:
    """8 hex digits of sha256 over what the config changes from the RunConfig defaults.

    Hashing the difference from the defaults (not the full config) keeps run ids stable when
    a new config field is added with a default that keeps the old behaviour; changing a
    default that a point relies on does change its id, as it changes the run.
    """
    return identity.digest(semantic_diff(cfg_dict))


def make_run_id(name: str, varied: Mapping[str, Any], labels: Mapping[str, str],
                digest: str) -> str:
    readable = "_".join(f"{labels[k]}-{_fmt_value(v)}" for k, v in varied.items()) or name
    run_id = f"{readable[:96]}_{digest}"
    assert RUN_ID_RE.match(run_id), run_id
    return run_id


def check_relative_dir(text: Any, source: str, key: str) -> str:
    """A relative path that stays inside its root (no absolute path, no `..`)."""
    if not isinstance(text, str) or not text:
        raise _fail(source, key, f"{text!r} must be a non-empty relative path")
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or "\\" in text:
        raise _fail(source, key, f"{text!r} escapes the output root; allowed: a relative "
                    "path without '..'")
    for part in path.parts:
        if not NAME_RE.match(part):
            raise _fail(source, key, f"{text!r}: part {part!r} is not allowed; each part must "
                        "match [A-Za-z0-9][A-Za-z0-9_.-]*")
    return str(path)


# --------------------------------------------------------------------------------------------
# loading


def read_sweep_file(path: Path) -> dict[str, Any]:
    """Safe-load the sweep YAML (no object construction)."""
    return cfgmod.read_yaml(path)


def _base_config(raw: dict[str, Any], file: Path, source: str) -> dict[str, Any]:
    if "base" not in raw:
        raise _fail(source, "base", "missing; give a config path (relative to the sweep file) "
                    "or an inline mapping")
    base = raw["base"]
    if isinstance(base, Mapping):
        return _copy_tree(dict(base))
    if isinstance(base, str) and base:
        path = Path(base)
        if not path.is_absolute():
            path = file.parent / path
        if not safeload.is_file(path):
            # a shipped config name (`digits`) is also accepted
            try:
                path = cfgmod.resolve_config_path(base) if not Path(base).suffix else path
            except ConfigError:
                pass
        if not safeload.is_file(path):
            raise _fail(source, "base", f"{base!r}: no such config file (looked for {path})")
        try:
            return cfgmod.read_yaml(path)
        except ConfigError as exc:
            detail = str(exc).removeprefix(f"{exc.source}: ")
            raise _fail(source, "base", f"{base}: {detail}") from None
    raise _fail(source, "base", f"{base!r} must be a config path or a mapping")


def _union_values(per_profile: Mapping[str, Mapping[str, list[Any]]],
                  profiles: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """Each axis key's values over the given profiles (all when None), first seen first.

    Selectors (`baseline`, `point_resources`, `reference`) are checked against this union: a
    selector naming values of another profile's axes matches nothing in this profile, which is
    not an error; one that fits no profile is.
    """
    union: dict[str, list[Any]] = {}
    for name, values in per_profile.items():
        if profiles is not None and name not in profiles:
            continue
        for key, vals in values.items():
            seen = union.setdefault(key, [])
            seen.extend(v for v in vals if v not in seen)
    return union


#: the most points a sweep expands to unless the caller raises it (`--max-points`): 10,000
#: points take ~2 s to expand and validate, and no paper ablation has more than a few dozen.
MAX_POINTS = 10_000


@dataclass(frozen=True)
class SweepPlan:
    """A sweep file parsed and checked for one profile, before any point is built.

    `size` (the number of points) is known here, so a caller refuses an astronomically large
    sweep before expanding it; :func:`iter_points` then builds and validates the points one
    at a time, so a long expansion can show progress (the dry run streams its table).
    """

    name: str
    file: Path
    profile: str
    profiles: tuple[str, ...]
    description: str
    output_dir: str
    varied_keys: tuple[str, ...]
    size: int
    axes: tuple[tuple[dict[str, Any], ...], ...]
    merged: dict[str, Any]
    resources: Resources
    overrides: tuple[tuple[dict[str, Any], tuple[str, ...] | None, Any], ...]
    references: tuple[tuple[dict[str, Any], tuple[str, ...] | None, dict[str, float],
                            str | None], ...]
    baseline_selector: dict[str, Any]
    claims: tuple[Claim, ...] = ()


def load_sweep(file: Path | str, profile: str | None = None, *, max_points: int = MAX_POINTS,
               progress: Callable[[int, int], None] | None = None) -> Sweep:
    """Read, expand and validate a sweep file for one profile. Raises ConfigError.

    `progress(done, total)` is called after each point is built (a large sweep takes a while).
    """
    plan = plan_sweep(file, profile, max_points=max_points)
    points: list[Point] = []
    baseline: list[str] = []
    for point, is_baseline in _expand(plan):
        points.append(point)
        if is_baseline:
            baseline.append(point.run_id)
        if progress is not None:
            progress(len(points), plan.size)
    return Sweep(name=plan.name, file=plan.file, profile=plan.profile, profiles=plan.profiles,
                 description=plan.description, output_dir=plan.output_dir,
                 varied_keys=plan.varied_keys, points=tuple(points), baseline=tuple(baseline),
                 claims=plan.claims)


def plan_sweep(file: Path | str, profile: str | None = None, *,
               max_points: int = MAX_POINTS) -> SweepPlan:
    """Read and check a sweep file for one profile, up to (not including) its points; refuse
    it when it expands to more than `max_points` points."""
    file = Path(file)
    source = str(file)
    raw = read_sweep_file(file)
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(source, "", key, TOP_KEYS)

    name = raw.get("name", file.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(source, "name", f"{name!r} is not allowed; a name must match "
                    "[A-Za-z0-9][A-Za-z0-9_.-]{0,63} (no spaces or shell metacharacters)")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise _fail(source, "description", f"{description!r} must be a string")

    base = _base_config(raw, file, source)

    profiles_raw = _check_profiles(raw, source)
    # Every profile's axes are checked whichever profile is expanded, as the top-level ones are.
    profile_axes = {pname: read_axes(raw, pname, source, _check_axis_key)
                    for pname in profiles_raw}
    all_values = {pname: values for pname, (_, values) in profile_axes.items()}
    profile = _choose_profile(raw, profiles_raw, profile, source)
    pbody = profiles_raw[profile]
    merged = base
    _merge(merged, pbody.get("config") or {})
    resources = parse_resources(pbody.get("resources"), source, f"profiles.{profile}.resources")

    output_dir = check_relative_dir(raw.get("output_dir", f"{name}/{profile}"), source,
                                    "output_dir")

    axes, axis_values = profile_axes[profile]
    varied_keys = tuple(k for k, v in axis_values.items() if len(v) > 1)

    # ---- per-point resource overrides and the reference block
    overrides = _parse_point_resources(raw.get("point_resources"), source, all_values)
    references = _parse_reference(raw.get("reference"), source, all_values)
    for pname, pbody_ in profiles_raw.items():
        if "baseline" in pbody_:
            _match_mapping(source, f"profiles.{pname}.baseline", pbody_["baseline"],
                           all_values[pname])
    baseline_sel = _match_mapping(source, "baseline", raw.get("baseline"),
                                  _union_values(all_values))
    if "baseline" in pbody:
        baseline_sel = _match_mapping(source, f"profiles.{profile}.baseline",
                                      pbody["baseline"], axis_values)

    # every profile's claims are checked against its own axes, whichever profile is expanded
    claims = sweep_claims(raw, source, {p: parsed for p, (parsed, _) in profile_axes.items()})

    size = _check_size(axes, profile, max_points, source)
    return SweepPlan(name=name, file=file, profile=profile, profiles=tuple(profiles_raw),
                     description=description, output_dir=output_dir, varied_keys=varied_keys,
                     size=size, axes=tuple(tuple(axis) for axis in axes), merged=merged,
                     resources=resources, overrides=tuple(overrides),
                     references=tuple(references), baseline_selector=baseline_sel,
                     claims=claims[profile])


def _check_profiles(raw: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The `profiles` mapping: valid names, each a mapping of PROFILE_KEYS."""
    profiles_raw = raw.get("profiles") or {}
    if not isinstance(profiles_raw, Mapping) or not profiles_raw:
        raise _fail(source, "profiles", "must be a non-empty mapping of profile names (e.g. "
                    "paper, local) to {config, resources}")
    for pname, pbody in profiles_raw.items():
        if not isinstance(pname, str) or not NAME_RE.match(pname):
            raise _fail(source, f"profiles.{pname}", "a profile name must match "
                        "[A-Za-z0-9][A-Za-z0-9_.-]*")
        if not isinstance(pbody, Mapping):
            raise _fail(source, f"profiles.{pname}", f"{pbody!r} must be a mapping with "
                        "`config` and `resources`")
        for key in pbody:
            if key not in PROFILE_KEYS:
                raise unknown_key(source, f"profiles.{pname}", key, PROFILE_KEYS)
        if pbody.get("config") is not None and not isinstance(pbody["config"], Mapping):
            raise _fail(source, f"profiles.{pname}.config", "must be a mapping of config keys")
    return profiles_raw


def _choose_profile(raw: Mapping[str, Any], profiles_raw: Mapping[str, Any],
                    profile: str | None, source: str) -> str:
    """`--profile`, else `default_profile`, else the first profile."""
    default_profile = raw.get("default_profile")
    if default_profile is not None and (not isinstance(default_profile, str)
                                        or default_profile not in profiles_raw):
        raise _fail(source, "default_profile", f"{default_profile!r} is not a profile; "
                    f"allowed: {', '.join(profiles_raw)}")
    profile = profile or default_profile or next(iter(profiles_raw))
    if profile not in profiles_raw:
        close = difflib.get_close_matches(str(profile), list(profiles_raw), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"--profile {profile!r}: no such profile{hint} Profiles: "
                          f"{', '.join(profiles_raw)}", source=source, key="profiles")
    return profile


def _check_size(axes: Sequence[Sequence[dict[str, Any]]], profile: str, max_points: int,
                source: str) -> int:
    """The number of points (the product of the axis lengths, exact even for 10**12),
    refused above `max_points` before anything is built."""
    size = math.prod(len(axis) for axis in axes)
    if size > max_points:
        shape = " x ".join(f"{'+'.join(axis[0])} ({len(axis)})" for axis in axes)
        raise ConfigError(f"axes of profile {profile!r}: the sweep expands to {size:,} points "
                          f"({shape}); allowed: at most {max_points:,} (raise the limit with "
                          "--max-points N)", source=source, key="grid")
    return size


def iter_points(plan: SweepPlan) -> Iterator[Point]:
    """The points of `plan`, built and validated one at a time (ConfigError at the first bad
    one)."""
    for point, _ in _expand(plan):
        yield point


def _expand(plan: SweepPlan) -> Iterator[tuple[Point, bool]]:
    """Each point of `plan` and whether the baseline selector matches it."""
    source, profile, labels = str(plan.file), plan.profile, _short_labels(plan.varied_keys)
    seen: dict[str, int] = {}
    # Point 0 is built from the merged mapping; the others replace only their axis values in
    # it (config.replace_leaves: the same checks, ~10x faster for a large sweep).
    first: tuple[RunConfig, dict[str, Any]] | None = None
    for index, combo in enumerate(itertools.product(*plan.axes)):
        assignment: dict[str, Any] = {}
        for part in combo:
            assignment.update(part)
        shown = ", ".join(f"{k}={_show(v)}" for k, v in assignment.items())
        where = f"point {index} ({shown})" if shown else f"point {index}"
        try:
            if first is not None:
                run_cfg, canonical = cfgmod.replace_leaves(first[0], assignment)
                digest = identity.digest(_diff_with(first[1], canonical))
            else:
                tree = _copy_tree(plan.merged)
                for key, value in assignment.items():
                    cfgmod.set_dotted(tree, key, value)
                run_cfg = cfgmod.from_dict(tree)
                diff = semantic_diff(cfgmod.to_dict(run_cfg))
                digest = identity.digest(diff)
                first = (run_cfg, diff)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}", source=source, key=exc.key) from exc
        res = plan.resources
        for sel, profs, body in plan.overrides:
            if (profs is None or profile in profs) and _matches(sel, assignment):
                res = parse_resources(body, source, "point_resources", start=res)
        world = res.world_size
        if run_cfg.optim.batch_size % world:
            raise ConfigError(
                f"{where}: optim.batch_size: {run_cfg.optim.batch_size} is not divisible by the "
                f"world size {world} (nodes {res.nodes} x tasks {res.tasks}); allowed: a "
                "multiple of the world size", source=source, key="optim.batch_size")
        varied = {k: assignment[k] for k in plan.varied_keys}
        run_id = make_run_id(plan.name, varied, labels, digest)
        if run_id in seen:
            raise ConfigError(f"{where}: the same run config as point {seen[run_id]} (run id "
                              f"{run_id}); every point must be distinct", source=source)
        seen[run_id] = index
        ref: dict[str, float] = {}
        ref_source: str | None = None
        for sel, profs, metrics, src in plan.references:
            if (profs is None or profile in profs) and _matches(sel, assignment):
                ref.update(metrics)
                ref_source = src or ref_source
        point = Point(index=index, run_id=run_id, varied=varied, config=run_cfg,
                      resources=res, reference=ref, reference_source=ref_source)
        yield point, bool(plan.baseline_selector) and _matches(plan.baseline_selector,
                                                                assignment)


def _parse_profiles_key(raw: Any, source: str, where: str, profiles: Sequence[str]
                        ) -> tuple[str, ...] | None:
    """An entry's optional `profiles:` list: only in these profiles."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or any(p not in profiles for p in raw):
        raise _fail(source, f"{where}.profiles", f"{raw!r} must list profiles of this sweep: "
                    f"{', '.join(profiles)}")
    return tuple(raw)


def _parse_point_resources(raw: Any, source: str,
                           per_profile: Mapping[str, Mapping[str, list[Any]]]
                           ) -> list[tuple[dict[str, Any], tuple[str, ...] | None, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(source, "point_resources", "must be a list of {match, profiles, resources}")
    out = []
    for i, entry in enumerate(raw):
        where = f"point_resources[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(source, where, f"{entry!r} must be a mapping")
        for key in entry:
            if key not in ("match", "profiles", "resources"):
                raise unknown_key(source, where, key, ("match", "profiles", "resources"))
        profs = _parse_profiles_key(entry.get("profiles"), source, where, tuple(per_profile))
        sel = _match_mapping(source, f"{where}.match", entry.get("match"),
                             _union_values(per_profile, profs))
        parse_resources(entry.get("resources"), source, f"{where}.resources")
        out.append((sel, profs, entry.get("resources")))
    return out


def _parse_reference(raw: Any, source: str, per_profile: Mapping[str, Mapping[str, list[Any]]]
                     ) -> list[tuple[dict[str, Any], tuple[str, ...] | None, dict[str, float],
                                     str | None]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(source, "reference", "must be a list of {match, profiles, source, "
                    "<metric>: number}")
    out = []
    for i, entry in enumerate(raw):
        where = f"reference[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(source, where, f"{entry!r} must be a mapping")
        profs = _parse_profiles_key(entry.get("profiles"), source, where, tuple(per_profile))
        sel = _match_mapping(source, f"{where}.match", entry.get("match"),
                             _union_values(per_profile, profs))
        src = entry.get("source")
        if src is not None and not isinstance(src, str):
            raise _fail(source, f"{where}.source", f"{src!r} must be a string")
        metrics: dict[str, float] = {}
        for key, value in entry.items():
            if key in ("match", "profiles", "source"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(source, f"{where}.{key}", f"{value!r} must be a number (the paper's "
                            "value of this metric)")
            metrics[str(key)] = float(value)
        if not metrics:
            raise _fail(source, where, "gives no metric; add e.g. `knn: 72.8`")
        out.append((sel, profs, metrics, src))
    return out


def expansion_record(sweep: Sweep) -> dict[str, Any]:
    """A stable, JSON-able description of the expansion (the golden files)."""
    return {
        "name": sweep.name,
        "profile": sweep.profile,
        "output_dir": sweep.output_dir,
        "varied_keys": list(sweep.varied_keys),
        "baseline": list(sweep.baseline),
        "points": [
            {
                "run_id": p.run_id,
                "varied": p.varied,
                "resources": p.resources.as_dict(),
                "world_size": p.resources.world_size,
                "reference": p.reference,
                "reference_source": p.reference_source,
                "config": cfgmod.to_dict(p.config),
            }
            for p in sweep.points
        ],
    }
