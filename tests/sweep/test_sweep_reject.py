"""Malformed sweep files are refused before anything exists: exit 2, a precise message.

Each file in tests/sweep/bad/ states what the error message must contain (`# expect:` lines,
all of them) and optional extra CLI arguments (`# args:`). The message must also name the file.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import dino_ablate.launch.base
from dino_ablate.cli import main

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _never_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard, not a mock: should validation ever let a bad file through, fail fast instead of
    starting Ray or sbatch from a unit test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad sweep reached submission")
    monkeypatch.setattr(dino_ablate.launch.base, "submit_sweep", refuse)


def _header(file: Path, key: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in file.read_text().splitlines()
            if line.startswith(f"# {key}:")]


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("file", BAD, ids=[f.stem for f in BAD])
@pytest.mark.parametrize("backend", ["slurm", "ray"])
def test_bad_sweep_exits_2_and_creates_nothing(file: Path, backend: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    expect = _header(file, "expect")
    assert expect, f"{file.name} has no '# expect:' line"
    extra = [arg for line in _header(file, "args") for arg in shlex.split(line)]
    out = tmp_path / "out"
    code = main(["sweep", str(file), "--backend", backend, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(file) in err, err
    for fragment in expect:
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert not out.exists(), "a bad sweep created its output directory"


@pytest.mark.parametrize("file", BAD[:5], ids=[f.stem for f in BAD[:5]])
def test_bad_sweep_dry_run_also_exits_2(file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", str(file), "--backend", "slurm", "--dry-run",
                 "--out", str(tmp_path / "out"), *[a for line in _header(file, "args")
                                                     for a in shlex.split(line)]])
    assert code == 2, capsys.readouterr().err
    assert not (tmp_path / "out").exists()
