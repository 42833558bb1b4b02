"""README's config reference checked against the config's own field docs (`config.field_docs`):
the table must list every leaf key once, in order, with its default and meaning as the code
states them, so a key added (or a help text changed) on one side only fails here."""

from __future__ import annotations

from pathlib import Path

from dino_ablate import config as cfgmod
from tests.test_run_directory_doc import tables

README = Path(__file__).resolve().parents[1] / "README.md"


def config_reference() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Config reference\n", 1)[1].split("\n## ", 1)[0]
    (table,) = tables(section)
    return table


def test_the_readme_lists_every_config_key_with_its_default_and_meaning() -> None:
    rows = [(key.strip("`"), default.strip("`"), meaning)
            for key, default, meaning in config_reference()]
    assert rows == cfgmod.field_docs()

