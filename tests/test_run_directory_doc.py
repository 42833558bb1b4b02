"""docs/run_directory.md checked against dino_ablate.contract, the contract as code.

The doc's file table must list exactly the contract's FILES, its metrics table exactly the
METRICS keys, and the status.json states exactly TRAINER_STATES; a name added on one side only
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from dino_ablate import contract

DOC = Path(__file__).resolve().parents[1] / "docs" / "run_directory.md"
_CODE = re.compile(r"`([^`]+)`")


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text`: rows of cells, header and separator rows dropped."""
    found: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if current is None:  # the header row
            current = []
            found.append(current)
        elif not all(set(cell) <= set("-: ") for cell in cells):
            current.append(cells)
    return found


def first_column_names(table: list[list[str]]) -> list[str]:
    return [name for row in table for name in _CODE.findall(row[0])]


def doc_tables() -> tuple[list[list[str]], list[list[str]]]:
    files, metrics = tables(DOC.read_text(encoding="utf-8"))[:2]
    return files, metrics


def test_the_doc_lists_exactly_the_contracts_files() -> None:
    files, _ = doc_tables()
    names = [name.rstrip("/").split("/")[0] for name in first_column_names(files)]
    assert sorted(names) == sorted(contract.FILES)


def test_the_doc_lists_exactly_the_contracts_metric_keys() -> None:
    _, metrics = doc_tables()
    keys = first_column_names(metrics)
    assert len(keys) == len(set(keys)), "a key listed twice"
    assert sorted(keys) == sorted(contract.METRICS)


def test_every_metric_has_a_meaning_and_the_doc_states_its_unit() -> None:
    _, metrics = doc_tables()
    meaning_of = {key: row[1] for row in metrics for key in _CODE.findall(row[0])}
    for key, metric in contract.METRICS.items():
        assert metric.meaning, key
        if metric.unit in ("nats", "0-1", "s"):
            shown = {"0-1": "(0–1)", "nats": "(nats)", "s": "wall time"}[metric.unit]
            assert shown in meaning_of[key], (key, metric.unit, meaning_of[key])


def test_the_doc_names_exactly_the_trainer_states() -> None:
    files, _ = doc_tables()
    status = next(row for row in files if "`status.json`" in row[0])
    content = "|".join(status[2:])  # the doc writes the choices "a"|"b", split as cells
    states = re.search(r'"state": ((?:"[a-z]+"\s*\|?\s*)+)', content)
    assert states is not None, content
    assert re.findall(r'"([a-z]+)"', states.group(1)) == list(contract.TRAINER_STATES)


def test_the_table_parser_reads_rows(tmp_path: Path) -> None:
    text = "| a | b |\n|---|---|\n| `x`, `y` | 1 |\n\nprose\n| c |\n|---|\n| `z` |\n"
    parsed = tables(text)
    assert [first_column_names(t) for t in parsed] == [["x", "y"], ["z"]]
