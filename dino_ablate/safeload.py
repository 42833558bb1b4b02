"""Reading the YAML and JSON files the tool is handed: bounded, strict, one-line errors.

Run configs, sweep files, `--set` values and the files of an existing run directory come from
outside the code, so nothing about them is assumed: a file must be UTF-8 text of bounded size,
a YAML document may nest at most :data:`MAX_DEPTH` levels and expand (aliases counted each time
they are used) to at most :data:`MAX_NODES` nodes, so a "billion laughs" file or a
self-referencing alias is refused before it is built, and a mapping must not give one key
twice (PyYAML silently keeps the last one, so a typo'd copy-paste would change a run without a
word). Every refusal is a :class:`~dino_ablate.errors.ConfigError` naming the file, the line and
what is allowed; no traceback, no RecursionError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from dino_ablate.errors import ConfigError

#: larger than any config or sweep file (the biggest shipped sweep is ~7 KB); PyYAML reads
#: 0.1-1 MB a second, so this bounds the time a file can take to parse to seconds.
MAX_FILE_BYTES = 2**20
#: JSON parses in C (~100 MB/s); a 100,000-run sweep.json is ~30 MB
MAX_JSON_BYTES = 256 * 2**20
#: a run config nests 2 levels, a sweep file 5; JSON run-directory files 3.
MAX_DEPTH = 64
#: nodes of one YAML document after expanding its aliases (a 10,000-point zip has ~30,000).
MAX_NODES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def is_file(path: Path) -> bool:
    """`path.is_file()`, False (not an OSError) for a name the OS refuses (too long, ...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_text(path: Path, source: str | None = None, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of `path`; ConfigError when it cannot be read, is larger than
    `max_bytes`, binary or not UTF-8."""
    source = source or str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read: {reason}", source=source) from None
    if len(data) > max_bytes:
        raise ConfigError(f"larger than {max_bytes} bytes; allowed: a file of at most "
                          f"{max_bytes // 2**20} MiB", source=source)
    return decode(data, source)


def decode(data: bytes, source: str | None) -> str:
    """`data` as UTF-8 text, naming the first bad byte's line and column otherwise."""
    if b"\x00" in data:
        offset = data.index(b"\x00")
        raise ConfigError(f"a binary file (NUL byte at {_position(data, offset)}); allowed: a "
                          "UTF-8 text file", source=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at "
                          f"{_position(data, exc.start)}); allowed: a UTF-8 text file (save "
                          "it as UTF-8)", source=source) from None


def _position(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no object construction) that refuses deep nesting and duplicate
    keys while composing, before anything is constructed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels; allowed: at most "
                    f"{MAX_DEPTH}", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.composer.ComposerError(
                    None, None, f"duplicate key {key_node.value!r} (first at line "
                    f"{seen[ident].line + 1}); allowed: each key once per mapping",
                    key_node.start_mark)
            seen[ident] = key_node.start_mark
        return node

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        """An int of at most MAX_INT_DIGITS digits: Python refuses to convert longer ones to
        and from text, so any message naming such a value would crash."""
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits; allowed: at most "
                f"{MAX_INT_DIGITS}", node.start_mark)
        return int(super().construct_yaml_int(node))

    def construct_refused(self, node: yaml.Node) -> Any:
        """Dates, binary data, sets and ordered maps are no config value (no JSON type)."""
        kind = node.tag.rsplit(":", 1)[-1]
        hint = "; quote it to give a string" if isinstance(node, yaml.ScalarNode) else ""
        raise yaml.constructor.ConstructorError(
            None, None, f"a YAML {kind} ({node.tag}) is not allowed here; allowed: strings, "
            f"numbers, true/false, null, lists and mappings{hint}", node.start_mark)


#: digits of the longest integer (2**63 has 19); Python's own text conversion limit is 4300.
MAX_INT_DIGITS = 64
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_bounded_int)
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", StrictLoader.construct_refused)

#: YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot (`8e-3`,
#: `1E5`) or with a dot but no sign in the exponent (`1.0e5`). `--set optim.lr=8e-3` means a number.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                                   list("-+0123456789."))


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond MAX_NODES nodes or MAX_DEPTH levels,
    or refer to themselves. Sizes are memoised per node, so this costs one visit per node."""
    sizes: dict[int, tuple[int, int]] = {}   # id(node) -> (expanded nodes, expanded height)
    active: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the collection "
                                              "that contains it; allowed: aliases of earlier, "
                                              "complete nodes", node.start_mark)
        if key not in sizes:
            if depth > MAX_DEPTH:
                raise _too_deep(node)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            active.add(key)
            total, height = 1, 0
            for child in children:
                n, h = visit(child, depth + 1)
                total, height = total + n, max(height, h)
            active.discard(key)
            sizes[key] = (total, height + 1)
        total, height = sizes[key]
        if depth + height - 1 > MAX_DEPTH:
            raise _too_deep(node)
        if total > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"expands to {total} nodes through its aliases (a 'billion "
                f"laughs' document); allowed: at most {MAX_NODES}", node.start_mark)
        return total, height

    visit(root, 1)


def _too_deep(node: yaml.Node) -> yaml.YAMLError:
    return yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels "
                                       f"(through aliases); allowed: at most {MAX_DEPTH}",
                                       node.start_mark)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: `line L, column C: problem (context)`."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = exc.problem or exc.context or "malformed"
    if exc.problem and exc.context:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        text += f" ({exc.context}{at})"
    return " ".join((where + text).split())


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly (see :class:`StrictLoader`); raises yaml.YAMLError,
    which :func:`yaml_problem` turns into one line."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path, source: str | None = None) -> Any:
    """The YAML document of `path` (any type); ConfigError naming the file and line."""
    source = source or str(path)
    text = read_text(path, source)
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {yaml_problem(exc)}", source=source) from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(text: str) -> Any:
    """json.loads that refuses duplicate keys and nesting deeper than MAX_DEPTH with a
    ValueError (never a RecursionError)."""
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return json.loads(text, object_pairs_hook=_refuse_duplicates)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ConfigError naming the file and what is wrong."""
    text = read_text(path, max_bytes=MAX_JSON_BYTES)
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise ConfigError(f"invalid JSON: {' '.join(str(exc).split())}; allowed: a JSON "
                          "object as the tool writes it", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"holds a JSON {type(data).__name__}; allowed: a JSON object",
                          source=str(path))
    return data
