"""Property: whatever YAML document or `--set` value a user hands the config and sweep loaders,
they return a valid config (sweep) or raise ConfigError; never another exception.

The documents are random nested mappings, lists and scalars whose keys are often real config
paths (sections, leaf fields, dotted axis keys), so many reach the deep checks (cross-field
rules, expansion, resources, selectors, the memory estimate), and whose values are random in
type and size (huge ints, NaN, control characters, long strings). Derandomized, so CI runs the
same few hundred examples every time, in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dino_ablate import config as cfgmod
from dino_ablate import memory
from dino_ablate.config import ConfigError, RunConfig, load_config
from dino_ablate.launch.cost import estimate
from dino_ablate.resources import Resources
from dino_ablate.safeload import read_yaml
from dino_ablate.sweep import (
    PROFILE_KEYS,
    TOP_KEYS,
    expansion_record,
    leaf_keys,
    load_sweep,
)

#: `DINO_ABLATE_FUZZ_EXAMPLES=5000` searches longer (locally); CI runs the default, derandomized
PROPERTY = settings(max_examples=int(os.environ.get("DINO_ABLATE_FUZZ_EXAMPLES", "150")),
                    deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LEAVES = leaf_keys()
SECTIONS = [f.name for f in dataclasses.fields(RunConfig)]
FIELD_NAMES = sorted({key.rsplit(".", 1)[-1] for key in LEAVES})
RESOURCE_KEYS = [f.name for f in dataclasses.fields(Resources)]
LITERALS = sorted({str(a) for tp in (cfgmod.DatasetName, cfgmod.TeacherUpdate, cfgmod.LossKind,
                                     cfgmod.Normalization, cfgmod.LinearProtocolName,
                                     cfgmod.LinearFeatures) for a in typing.get_args(tp)})

names = st.one_of(
    st.sampled_from(LEAVES), st.sampled_from(SECTIONS), st.sampled_from(FIELD_NAMES),
    st.sampled_from([*TOP_KEYS, *PROFILE_KEYS, *RESOURCE_KEYS, "match", "profiles", "source",
                     "knn", "paper", "local"]),
    st.text(max_size=12))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.integers(min_value=-10**80, max_value=10**80),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1),
    st.sampled_from(LITERALS), st.sampled_from(["digits", "vit_tiny_patch16_224", "", "$X",
                                                "a\x00b", "x" * 300]),
    st.text(max_size=20))
keys = st.one_of(names, st.integers(-2, 5), st.booleans(), st.none())


def values() -> st.SearchStrategy[Any]:
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def mostly(good: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] | None = None
           ) -> st.SearchStrategy[Any]:
    """`good` about 7 times in 8, else `junk` (anything by default)."""
    return st.integers(0, 7).flatmap(lambda i: (junk if junk is not None else values())
                                     if i == 7 else good)


def _spec(key: str) -> tuple[Any, Any]:
    spec = cfgmod._leaf_spec(key)
    assert spec is not None, key
    return spec


def plausible(key: str) -> st.SearchStrategy[Any]:
    """Values of the leaf field `key`: mostly of its type and near its bounds (so that many
    documents are valid and reach the cross-field checks and the memory estimate), sometimes
    anything."""
    tp, meta = _spec(key)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    base = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    lo = meta.get("ge", meta.get("gt"))
    hi = meta.get("le", meta.get("lt"))
    good: st.SearchStrategy[Any]
    if typing.get_origin(base) is typing.Literal:
        good = st.sampled_from(typing.get_args(base))
    elif typing.get_origin(base) is tuple:
        good = st.lists(st.floats(0, 1), min_size=2, max_size=2).map(sorted)
    elif base is bool:
        good = st.booleans()
    elif base is int:
        low = int(lo) if lo is not None else 0
        good = st.integers(low, int(hi) if hi is not None else low + 40) | st.integers(
            low, 2**40)
    elif base is float:
        good = st.floats(lo if lo is not None else 0.0, hi if hi is not None else 10.0,
                         allow_nan=False)
    else:
        good = st.sampled_from({"model.arch": ["vit_tiny_patch16_224", "vit_small_patch16_224",
                                               "vit_nope"]}.get(key, ["/tmp", "x", "train"]))
    return mostly(st.none() | good if optional else good)


#: config-shaped documents: a few leaf fields set to plausible values (digits most often, so
#: that no data.root is needed), plus noise
def _nest(pairs: list[tuple[str, Any]], digits: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"data": {"dataset": "digits"}} if digits else {}
    for key, value in pairs:
        try:
            cfgmod.set_dotted(doc, key, value)
        except ConfigError:
            pass
    return doc


config_leaves = st.lists(st.sampled_from(LEAVES).flatmap(
    lambda key: st.tuples(st.just(key), plausible(key))), max_size=4)
configs = st.one_of(
    st.builds(_nest, config_leaves, st.booleans()),
    st.builds(_nest, config_leaves, st.just(True)),
    st.dictionaries(keys, values(), max_size=5),
    values())

#: `seed` last: hypothesis draws early elements more often, and `seeds` covers it
AXIS_KEYS = [key for key in LEAVES if key != "seed"] + ["seed"]
axis_entries = st.sampled_from(AXIS_KEYS).flatmap(lambda key: st.tuples(
    st.just(key), mostly(st.lists(plausible(key), min_size=1, max_size=3, unique_by=repr),
                         values())))
axes = st.lists(axis_entries, min_size=1, max_size=2).map(dict)
resources_maps = st.dictionaries(mostly(st.sampled_from(RESOURCE_KEYS), names),
                                 mostly(st.integers(0, 4)), max_size=3)
selectors = st.fixed_dictionaries({}, optional={
    "match": st.dictionaries(st.sampled_from(LEAVES), scalars, max_size=2),
    "profiles": st.lists(st.sampled_from(["paper", "local"]) | names, max_size=2),
    "resources": resources_maps, "source": scalars, "knn": scalars})
profile_bodies = st.fixed_dictionaries({}, optional={
    "config": configs, "resources": resources_maps, "grid": axes,
    "zip": axes | st.lists(axes, max_size=2),
    "seeds": st.lists(st.integers(0, 5), max_size=3) | values(),
    "baseline": st.dictionaries(st.sampled_from(LEAVES), scalars)})
sweeps = st.one_of(
    st.fixed_dictionaries(
        {"base": mostly(st.builds(_nest, config_leaves, st.just(True)), configs
                        | st.sampled_from(["digits", "nope.yaml", "x" * 5000])),
         "profiles": st.dictionaries(mostly(st.sampled_from(["local", "paper"]), names),
                                     mostly(profile_bodies, values()), min_size=1,
                                     max_size=2)},
        optional={"name": mostly(st.sampled_from(["s", "a.b-c"])),
                  "description": mostly(st.text(max_size=10)),
                  "output_dir": mostly(st.sampled_from(["x/y", "z"]),
                                       st.sampled_from(["../x", "/abs", "a b"]) | scalars),
                  "default_profile": mostly(st.sampled_from(["local", "paper"])),
                  "grid": axes, "zip": axes | st.lists(axes, max_size=2),
                  "seeds": st.lists(st.integers(0, 5), max_size=3) | values(),
                  "baseline": st.dictionaries(st.sampled_from(LEAVES), scalars),
                  "point_resources": st.lists(selectors, max_size=2) | values(),
                  "reference": st.lists(selectors, max_size=2) | values()}),
    st.dictionaries(keys, values(), max_size=5),
    # close to a real sweep file: most reach the expansion with several points
    st.fixed_dictionaries(
        {"name": st.just("s"), "base": st.builds(_nest, config_leaves, st.just(True)),
         "profiles": st.fixed_dictionaries({"local": st.fixed_dictionaries(
             {}, optional={"config": st.builds(_nest, config_leaves, st.just(False)),
                           "resources": resources_maps})}),
         "grid": axes},
        optional={"seeds": st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True),
                  "zip": axes, "baseline": st.dictionaries(st.sampled_from(LEAVES), scalars),
                  "default_profile": mostly(st.just("local")),
                  "output_dir": mostly(st.just("x/y")),
                  "point_resources": st.lists(selectors, max_size=2),
                  "reference": st.lists(selectors, max_size=2)}))

#: YAML text: dumped documents, the same with a line repeated (duplicate keys), and raw text
texts = st.one_of(
    st.builds(lambda doc: yaml.safe_dump(doc, allow_unicode=True), configs),
    st.builds(lambda doc, i: _repeat_line(yaml.safe_dump(doc), i), configs, st.integers(0, 9)),
    st.text(max_size=200),
    st.sampled_from(["a: &a [*a]", "a: &x [1]\nb: [*x, *x]", "- !!python/object:os.system x",
                     "epochs: 2001-12-14", "seed: !!binary aGVsbG8=", "{" * 200, "? [1]\n: 2",
                     "a: " + "[" * 3000 + "]" * 3000, "seed: 1\nseed: 2",
                     "a: &a [1]\n" + "".join(f"a{i}: &a{i} [*a{'' if i == 0 else i - 1}]\n"
                                             for i in range(200))]))


def _repeat_line(text: str, index: int) -> str:
    lines = text.splitlines()
    if not lines:
        return text
    line = lines[index % len(lines)]
    return "\n".join([*lines, line]) + "\n"


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):  # e.g. a NaN key: not every Python object dumps
        return "{}"


def _check_config(cfg: RunConfig) -> None:
    """What the CLI computes from a valid config before anything exists must not crash."""
    est = memory.estimate(cfg, 1, "cpu")
    assert est.total > 0 and memory.fmt_bytes(est.total)
    cost = estimate(cfg, Resources())
    assert cost.device_hours >= 0 or math.isnan(cost.device_hours)
    assert cfgmod.from_dict(cfgmod.to_dict(cfg)) == cfg


@PROPERTY
@given(doc=configs, overrides=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={_dump(v).strip()}", st.sampled_from(LEAVES) | names,
              values()),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(LEAVES) | names, st.text(max_size=30)),
    st.text(max_size=30)), max_size=3))
def test_config_loader_gives_a_config_or_a_config_error(doc: Any, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(_dump(doc))
        try:
            cfg = load_config(str(path), overrides)
        except ConfigError as exc:
            assert "\n" not in str(exc)
            return
        _check_config(cfg)


@PROPERTY
@given(text=texts)
def test_yaml_text_gives_data_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(text)
        try:
            read_yaml(path)
            cfg = load_config(str(path))
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return
        _check_config(cfg)


@PROPERTY
@given(data=st.binary(max_size=300))
def test_bytes_give_data_or_a_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(data)
        try:
            load_config(str(path))
        except ConfigError as exc:
            assert "\n" not in str(exc)


@PROPERTY
@given(doc=sweeps)
def test_sweep_loader_gives_a_sweep_or_a_config_error(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(_dump(doc))
        try:
            sweep = load_sweep(path, max_points=50)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return
        assert sweep.points and len(sweep.points) <= 50
        record = expansion_record(sweep)
        assert len(record["points"]) == len(sweep.points)
        for point in sweep.points:
            _check_config(point.config)
            estimate(point.config, point.resources)
