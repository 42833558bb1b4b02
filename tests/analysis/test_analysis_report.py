"""analysis.report: one self-contained HTML page."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analysis.load import load_results
from analysis.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    """Collects <img> sources, every tag name and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("href", "src"):
            value = values.get(name)
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def test_report_embeds_images_and_tables(teacher_sweep: Path, tmp_path: Path) -> None:
    path = write_report(load_results(teacher_sweep), tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)

    assert len(parser.images) == 3  # knn_overlay, knn_runs, collapse
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert parser.external == [] and "script" not in parser.tags

    assert parser.tags.count("table") == 2  # ablation table and runs table
    assert "<td>student_copy</td>" in text and "72.00 ± 2.00" in text
    assert 'class="baseline"' in text
    assert "<td>collapsed-uniform</td>" in text and "<td>pending</td>" in text
    assert r"\begin{tabular}" in text  # LaTeX block
    assert "teacher_knn_mean" in text  # CSV block
    assert re.search(r"<title>DINO ablation report: teacher_update</title>", text)
    assert "<dt>sweep file</dt><dd>sweeps/teacher_update.yaml</dd>" in text
    assert "<dt>profile</dt><dd>cpu-small</dd>" in text


def test_report_escapes_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.analysis import synth

    monkeypatch.setattr("analysis.report.sweep_figures", lambda sweep: {})  # text only
    run = synth.write_run(tmp_path / "r", sweep="<b>sweep</b>", varied={"x": "<script>"},
                          records=synth.make_records(2))
    text = write_report(load_results(run), tmp_path / "report.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;sweep&lt;/b&gt;" in text
