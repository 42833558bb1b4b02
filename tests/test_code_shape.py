"""No function or method in dino_ablate/ or analysis/ is longer than 80 lines (issue 13).

A function's length is `end_lineno - lineno + 1` of its `def` node: from the `def` line to its
last line, docstring and nested functions included, decorators excluded (ast puts `lineno` on
the `def`, not on the first decorator). Nested functions and methods are checked on their own
as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dino_ablate", "analysis")
MAX_LINES = 80


def long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list[str]:
    """`file:line name (N lines)` for each function or method in `source` over `limit` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{filename}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 20, f"expected the packages' sources under {ROOT}"
    too_long = [hit for path in files
                for hit in long_functions(path.read_text(encoding="utf-8"),
                                          str(path.relative_to(ROOT)))]
    assert not too_long, (f"functions over {MAX_LINES} lines (split them into phases):\n"
                          + "\n".join(too_long))


def test_the_check_counts_def_to_last_line_without_decorators() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES - 1))
    at_limit = "@staticmethod\n@staticmethod\ndef f():\n" + body  # def + 79 lines = 80
    assert long_functions(at_limit, "m.py") == []
    over = at_limit + "    y = 0\n"
    assert long_functions(over, "m.py") == ["m.py:3 f (81 lines)"]
    method = "class C:\n    def g(self):\n" + "".join(f"        a{i} = {i}\n"
                                                      for i in range(MAX_LINES))
    assert long_functions(method, "c.py") == ["c.py:2 g (81 lines)"]
