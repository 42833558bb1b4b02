"""Inputs that cannot crash the tool: every file in tests/bad_configs/ is refused with exit 2,
exactly one stderr line naming the file (what is wrong, where, what is allowed), no traceback,
and nothing created.

- `train/*.yaml`: run configs, through `dino-ablate train FILE --out DIR` (DIR must not exist
  afterwards);
- `sweep/*.yaml`: sweep files, through `dino-ablate sweep FILE --backend B --out DIR` and its
  `--dry-run` (DIR must not exist afterwards);
- `rundir/<case>/`: the files of an existing run or sweep directory (`case.txt` says which
  command reads it): `train digits --out <copy>` or `status <copy>`; the copy must be left
  byte for byte as it was.

A file states what the message must contain on `# expect:` lines (read as bytes: the rest of
the file may be binary), extra CLI arguments on `# args:` lines and the class it covers on a
`# class:` line. The classes: encoding, nesting, duplicate keys, aliases, sizes, types, memory,
model, sweep size.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dino_ablate.launch.base
from dino_ablate.cli import main

CORPUS = Path(__file__).parent / "bad_configs"
TRAIN = sorted((CORPUS / "train").glob("*.yaml"))
SWEEP = sorted((CORPUS / "sweep").glob("*.yaml"))
RUNDIR = sorted(p for p in (CORPUS / "rundir").iterdir() if p.is_dir())
CLASSES = {"encoding", "nesting", "duplicate keys", "aliases", "sizes", "types", "memory",
           "model", "sweep size"}


@pytest.fixture(autouse=True)
def _never_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard, not a mock: a bad file that got through must fail here, not start sbatch."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad sweep reached submission")
    monkeypatch.setattr(dino_ablate.launch.base, "submit_sweep", refuse)


def _header(file: Path, key: str) -> list[str]:
    out = []
    for line in file.read_bytes().splitlines():
        if not line.startswith(b"#"):
            break
        text = line.decode("ascii")
        if text.startswith(f"# {key}:"):
            out.append(text.split(":", 1)[1].strip())
    return out


def _args(file: Path) -> list[str]:
    return [arg for line in _header(file, "args") for arg in shlex.split(line)]


def _one_error_line(err: str, file: Path | str, expect: list[str]) -> None:
    """One line `error: FILE: ...` (FILE is `--set KEY` for a bad command-line value)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {file}"), err
    for fragment in expect:
        assert fragment in lines[0], f"{fragment!r} not in: {err}"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_corpus_covers_every_class() -> None:
    covered = {c for f in [*TRAIN, *SWEEP] for c in _header(f, "class")}
    assert covered == CLASSES, CLASSES ^ covered
    assert all(_header(f, "expect") for f in [*TRAIN, *SWEEP]), "a file without # expect:"
    assert len(RUNDIR) >= 8


@pytest.mark.parametrize("file", TRAIN, ids=[f.stem for f in TRAIN])
def test_bad_run_config_exits_2_and_creates_nothing(
        file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["train", str(file), "--out", str(out), *_args(file)])
    err = capsys.readouterr().err
    assert code == 2, err
    bad_value = [a.split("=", 1)[0] for a in _args(file) if "=" in a]
    _one_error_line(err, f"--set {bad_value[0]}" if "--set" in err else file,
                    _header(file, "expect"))
    assert not out.exists(), "a bad config created its run directory"


@pytest.mark.parametrize("file", SWEEP, ids=[f.stem for f in SWEEP])
@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
def test_bad_sweep_exits_2_and_creates_nothing(
        file: Path, dry_run: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["sweep", str(file), "--backend", "slurm", "--out", str(out), *_args(file),
                 *(["--dry-run"] if dry_run else [])])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _one_error_line(captured.err, file, _header(file, "expect"))
    assert not out.exists(), "a bad sweep created its output directory"


@pytest.mark.parametrize("case", RUNDIR, ids=[c.name for c in RUNDIR])
def test_damaged_run_directory_exits_2_and_changes_nothing(
        case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = dict(line.split(": ", 1) for line in (case / "case.txt").read_text().splitlines()
                if not line.startswith("expect:"))
    expect = [line.split(": ", 1)[1] for line in (case / "case.txt").read_text().splitlines()
              if line.startswith("expect:")]
    work = tmp_path / case.name
    shutil.copytree(case, work)
    (work / "case.txt").unlink()
    before = _snapshot(work)
    argv = (["train", "digits", "--out", str(work)] if spec["command"] == "train"
            else ["status", str(work)])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    _one_error_line(err, work, expect)
    assert _snapshot(work) == before, "a damaged run directory was changed"


def test_damaged_records_of_a_run_count_as_absent(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """status.json, launch.json, run.json, init.json, metrics.jsonl and .lock are the tool's
    own records, rewritten by the next writer: damaged, `status` shows the run as pending
    instead of crashing."""
    sweep_dir = tmp_path / "sweep"
    run = sweep_dir / "runs" / "r1"
    run.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text('{"name": "s", "runs": [{"run_id": "r1"}]}\n')
    (run / "status.json").write_bytes(b"\xff\xfe\x00binary")
    (run / "launch.json").write_text("[" * 5000 + "]" * 5000)
    (run / "run.json").write_text('{"a": 1, "a": 2}')
    (run / "init.json").write_bytes(b"\x80")
    (run / "metrics.jsonl").write_bytes(b'{"epoch": 1, "loss": 2.0}\n\xe9\n' + b"[" * 5000 + b"\n")
    (run / ".lock").write_bytes(b"\x00\x01")
    assert main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "pending" in out and "1 pending" in out


def test_too_large_a_file_is_refused_before_parsing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "big.yaml"
    file.write_text("data: {dataset: digits}\nnote: '" + "x" * 2**21 + "'\n")
    code = main(["train", str(file), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    _one_error_line(err, file, ["larger than 1048576 bytes", "at most 1 MiB"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_long_zip_is_sized_before_it_is_expanded(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A 60,000-entry zip (the duplicate scans were quadratic: minutes) is refused at once."""
    file = tmp_path / "zip.yaml"
    file.write_text("name: z\nbase: {data: {dataset: digits}}\nprofiles: {local: {}}\n"
                    "zip: {seed: [" + ", ".join(str(i) for i in range(60_000)) + "]}\n")
    code = main(["sweep", str(file), "--backend", "slurm", "--dry-run",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    _one_error_line(err, file, ["expands to 60,000 points (seed (60000))", "at most 10,000"])


def test_max_points_raises_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The flag the message names does raise the limit; the dry run then lists every point."""
    file = CORPUS / "sweep" / "over_max_points.yaml"
    out = tmp_path / "out"
    assert main(["sweep", str(file), "--backend", "slurm", "--out", str(out), "--dry-run",
                 "--max-points", "20"]) == 0
    text = capsys.readouterr().out
    assert "20 run(s)" in text and text.count("pending") == 20 and "GiB/rank" in text
    assert not out.exists()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", str(CORPUS / "train" / "binary.yaml"), "--out", "{tmp}/run"], "a binary file"),
    (["sweep", str(CORPUS / "sweep" / "astronomical.yaml"), "--backend", "ray", "--dry-run",
      "--out", "{tmp}/out"], "1,000,000,000,000 points"),
])
def test_a_real_process_prints_one_line_and_exits_2(argv: list[str], fragment: str,
                                                     tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    res = subprocess.run([sys.executable, "-m", "dino_ablate", *argv], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not any(tmp_path.iterdir())
