"""analysis.cli: subcommands registered on an argparse subparsers object."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import main, register


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dino-ablate")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    return parser.parse_args(argv)


def test_register_adds_three_subcommands_with_func() -> None:
    for command in ("table", "plot", "report"):
        args = _parse([command, "somewhere"])
        assert callable(args.func) and args.sweep_dir == Path("somewhere")
    assert _parse(["table", "x"]).format == "md"
    with pytest.raises(SystemExit):
        _parse(["table", "x", "--format", "html"])


def test_table_prints_and_writes(teacher_sweep: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["table", str(teacher_sweep), "--format", "csv"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    written = teacher_sweep / "analysis" / "table.csv"
    assert f"wrote {written}" in captured.err
    assert written.read_text() == captured.out
    assert pd.read_csv(io.StringIO(captured.out))["teacher.update"].iloc[0] == "ema"


@pytest.mark.parametrize(("fmt", "name"), [("md", "table.md"), ("latex", "table.tex")])
def test_table_formats_to_out(teacher_sweep: Path, tmp_path: Path, fmt: str, name: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    assert main(["table", str(teacher_sweep), "--format", fmt, "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert ("\\toprule" in out.read_text()) == (fmt == "latex")


def test_plot_and_report(small_sweep: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(small_sweep), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and all(line.startswith("wrote ") for line in printed)
    assert all(Path(line.removeprefix("wrote ")).is_file() for line in printed)

    assert main(["report", str(small_sweep)]) == 0
    report = small_sweep / "analysis" / "report.html"
    assert capsys.readouterr().out.strip() == f"wrote {report}"
    assert report.stat().st_size > 10_000


@pytest.mark.parametrize("command", ["table", "plot", "report"])
def test_not_a_sweep_exits_2_naming_the_path(tmp_path: Path, command: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main([command, str(empty)]) == 2
    error = capsys.readouterr().err
    assert str(empty) in error and "not a sweep or run directory" in error
    assert main([command, str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_unwritable_output_exits_1(small_sweep: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["table", str(small_sweep), "--out", str(blocker / "table.md")]) == 1
    assert "cannot write output" in capsys.readouterr().err
