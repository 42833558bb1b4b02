"""`dino-ablate claims SWEEP_DIR`: the printed lines, claims.json, and exit codes 0 / 1 / 2;
the report's Claims section."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.load import load_results
from analysis.report import render_report
from dino_ablate.cli import main as dino_ablate_main
from tests.analysis import synth

SWEEP_YAML = """\
name: tu
base: {epochs: 10, data: {dataset: digits}}
profiles:
  local:
    resources: {cpus_per_task: 1}
grid: {teacher.update: [ema, previous_epoch]}
claims:
  - id: ema_beats_previous_epoch
    kind: order
    points: [{teacher.update: ema}, {teacher.update: previous_epoch}]
    source: "Fig. 6 right"
    paper: {ema: 72.8, previous_epoch: 66.6}
  - id: previous_epoch_above_init
    kind: above_init
    point: {teacher.update: previous_epoch}
    source: "Fig. 6 right"
    paper: {knn: 66.6}
"""


def _sweep(root: Path, previous_epoch_knn: float = 0.60, file: str | None = None,
           yaml_text: str = SWEEP_YAML) -> Path:
    """A sweep file and its sweep directory, whose sweep.json names the file."""
    sweep_file = root / "tu.yaml"
    sweep_file.write_text(yaml_text)
    runs = [{"run_id": f"update-{update}_0000000{i}", "varied": {"teacher.update": update},
             "records": synth.make_records(10, knn_teacher_final=knn), "init": (0.3, 0.3)}
            for i, (update, knn) in enumerate((("ema", 0.70),
                                               ("previous_epoch", previous_epoch_knn)))]
    sweep_dir = synth.write_sweep(root / "out", runs, name="tu")
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    meta.update(file=file or str(sweep_file), profile="local")
    (sweep_dir / "sweep.json").write_text(json.dumps(meta))
    return sweep_dir


def test_every_claim_holds_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path)
    assert dino_ablate_main(["claims", str(sweep_dir)]) == 0  # registered on the main CLI
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "[holds] ema_beats_previous_epoch (Fig. 6 right): teacher kNN update=ema 70.0 (1 seed) "
        "> update=previous_epoch 60.0 (1 seed); paper ema 72.8, previous_epoch 66.6",
        "[holds] previous_epoch_above_init (Fig. 6 right): update=previous_epoch: final teacher "
        "kNN 60.0 vs random-init 30.0: +30.0 pp (claimed above) (1 seed); "
        "paper knn 66.6",
        "2 of 2 claims hold, 0 fail, 0 undecided"]
    written = json.loads((sweep_dir / "analysis" / "claims.json").read_text())
    assert written["summary"] == "2 of 2 claims hold, 0 fail, 0 undecided"
    assert [c["verdict"] for c in written["claims"]] == ["holds", "holds"]
    assert written["claims"][0]["values"]["points"][1]["mean"] == pytest.approx(60.0)
    md = (sweep_dir / "analysis" / "claims.md").read_text()
    assert "- [holds] ema_beats_previous_epoch" in md


def test_a_failing_or_undecided_claim_exits_1(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path, previous_epoch_knn=0.20)
    assert main(["claims", str(sweep_dir)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "1 of 2 claims hold, 1 fails, 0 undecided"
    assert "[fails] previous_epoch_above_init" in out
    ema = next((sweep_dir / "runs").glob("update-ema_*"))
    (ema / "status.json").write_text(json.dumps({"state": "running", "epoch": 10}))
    assert main(["claims", str(sweep_dir)]) == 1
    assert "0 of 2 claims hold, 1 fails, 1 undecided" in capsys.readouterr().out


def test_runs_left_by_an_earlier_expansion_are_not_the_points(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path)
    synth.write_run(sweep_dir / "runs" / "update-ema_old", varied={"teacher.update": "ema"},
                    records=synth.make_records(10, knn_teacher_final=0.1))
    assert main(["claims", str(sweep_dir)]) == 0, capsys.readouterr().out
    assert "70.0 (1 seed)" in capsys.readouterr().out


def _one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_not_a_sweep_directory_exits_2(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["claims", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys.readouterr().err, "not a sweep or run directory", "nowhere")


def test_a_gone_sweep_file_exits_2_and_says_so(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path)
    (tmp_path / "tu.yaml").rename(tmp_path / "moved.yaml")
    assert main(["claims", str(sweep_dir)]) == 2
    _one_error_line(capsys.readouterr().err, f"the sweep file {tmp_path / 'tu.yaml'} recorded in",
                    "does not exist", "--sweep-file")
    assert main(["claims", str(sweep_dir), "--sweep-file", str(tmp_path / "moved.yaml")]) == 0
    written = json.loads((sweep_dir / "analysis" / "claims.json").read_text())
    assert written["sweep_file"] == str(tmp_path / "moved.yaml")


def test_a_relative_sweep_file_is_taken_from_the_sweep_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path, file="../tu.yaml")
    assert main(["claims", str(sweep_dir)]) == 0, capsys.readouterr().err


def test_invalid_claims_exit_2_with_one_line_naming_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = _sweep(tmp_path, yaml_text=SWEEP_YAML.replace("kind: order", "kind: ordr"))
    assert main(["claims", str(sweep_dir)]) == 2
    _one_error_line(capsys.readouterr().err, f"{tmp_path / 'tu.yaml'}: claims[0].kind: 'ordr' "
                    "is not a claim kind (did you mean 'order'?)")
    assert not (sweep_dir / "analysis").exists()


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.verdict_classes: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = dict(attrs).get("class") or ""
        if tag == "table":
            self.tables += 1
        if tag == "td" and "verdict" in classes.split():
            self.verdict_classes.append(classes)


def test_the_report_has_a_claims_table_with_coloured_verdicts(tmp_path: Path) -> None:
    page = render_report(load_results(_sweep(tmp_path, previous_epoch_knn=0.20)))
    cells = _Cells()
    cells.feed(page)
    assert cells.verdict_classes == ["verdict verdict-holds", "verdict verdict-fails"]
    assert cells.tables == 3  # ablation table, claims, runs
    assert "<h2>Claims</h2>" in page and "1 of 2 claims hold, 1 fails, 0 undecided" in page
    assert "td.verdict-fails {" in page


def test_the_report_says_why_there_are_no_claims(tmp_path: Path) -> None:
    sweep_dir = _sweep(tmp_path)
    (tmp_path / "tu.yaml").unlink()
    page = render_report(load_results(sweep_dir))
    assert "<h2>Claims</h2>\n<p>No claims checked: the sweep file" in page
    assert "does not exist" in page
