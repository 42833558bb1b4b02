"""A point already `done` in another sweep under the same output root (the same semantic hash)
is copied, not trained again; anything else about the point is left to the backend."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import yaml

from dino_ablate import config as cfgmod
from dino_ablate import runs
from dino_ablate.commands.sweep import print_table
from dino_ablate.launch.base import LaunchItem, LaunchOutcome, submit_sweep
from dino_ablate.runs import resolve_sweep_dir, run_dir_of, run_state
from dino_ablate.sweep import Sweep, load_sweep, plan_sweep

BASE = {"epochs": 2, "data": {"dataset": "digits", "image_size": 16, "global_crop_size": 16,
                              "local_crop_size": 8, "num_local_crops": 0},
        "model": {"arch": "vit_tiny_patch16_224", "patch_size": 4, "embed_dim": 64, "depth": 2,
                  "num_heads": 4}}


class Recorder:
    """A backend that starts nothing and records what it was asked to launch."""

    name = "record"

    def __init__(self) -> None:
        self.launched: list[str] = []

    def check(self, sweep: Sweep) -> None:
        pass

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        return {}

    def launch(self, items: Sequence[LaunchItem], sweep: Sweep, sweep_dir: Path,
               submission_id: str, max_parallel: int | None) -> LaunchOutcome:
        self.launched += [i.point.run_id for i in items]
        return LaunchOutcome()


def _sweep(tmp_path: Path, name: str, threads: int, momentum: list[float]) -> Sweep:
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump({
        "name": name, "base": BASE,
        "profiles": {"local": {"config": {"runtime": {"device": "cpu", "threads": threads}}}},
        "grid": {"teacher.momentum": momentum}}))
    return load_sweep(file, "local")


def _finish(run_dir: Path, epochs: int = 2, planned: int | None = None) -> None:
    """What a finished trainer leaves (docs/run_directory.md); `planned` > `epochs`: a run
    stopped early on a detected collapse."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "knn_teacher": 0.5 + e / 100}) + "\n"
                for e in range(1, epochs + 1)))
    (run_dir / "summary.json").write_text(json.dumps({"state": "done", "epochs": epochs}))
    reason = "stopped early: collapse detected" if planned else None  # as train._finish
    (run_dir / "status.json").write_text(json.dumps({"state": "done", "epoch": epochs,
                                                     "epochs": planned or epochs,
                                                     "reason": reason}))


def test_a_done_twin_is_copied_and_the_rest_launched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _sweep(tmp_path, "first", 1, [0.99, 0.996])
    first_dir = resolve_sweep_dir(first, out)
    submit_sweep(first, first_dir, Recorder())
    done = first.points[0]
    _finish(run_dir_of(first_dir, done.run_id))  # the other point of `first` never finished

    # threads differ (not part of a run's identity); 0.99 is done there, 0.996 is not, 0.9 new
    second = _sweep(tmp_path, "second", 2, [0.99, 0.996, 0.9])
    second_dir = resolve_sweep_dir(second, out)
    backend = Recorder()
    result = submit_sweep(second, second_dir, backend)

    twin = second.points[0]
    assert twin.run_id == done.run_id
    assert result.copied == {twin.run_id: str(run_dir_of(first_dir, done.run_id))}
    assert backend.launched == [p.run_id for p in second.points[1:]] == result.launched
    copy = run_dir_of(second_dir, twin.run_id)
    original = run_dir_of(first_dir, done.run_id)
    assert (copy / "metrics.jsonl").read_text() == (original / "metrics.jsonl").read_text()
    assert (copy / "checkpoints" / "last.pt").read_bytes() == b"weights"
    assert run_state(copy).state == "done"
    assert json.loads((copy / "run.json").read_text())["sweep"] == "second"
    launch = json.loads((copy / "launch.json").read_text())
    assert launch["backend"] == "copy" and launch["source"] == str(original)
    # the copy's config is this sweep's (its own threads), the twin's is untouched
    assert yaml.safe_load((copy / "config.yaml").read_text()) == cfgmod.to_dict(twin.config)
    assert yaml.safe_load((original / "config.yaml").read_text())["runtime"]["threads"] == 1
    record = json.loads((second_dir / "submissions.jsonl").read_text().splitlines()[-1])
    assert record["copied"] == result.copied

    again = submit_sweep(second, second_dir, Recorder())
    assert twin.run_id in again.skipped and not again.copied


@pytest.mark.parametrize("partial", [True, False])
def test_no_twin_copied_over_a_trained_run_or_from_an_unfinished_one(
        tmp_path: Path, partial: bool) -> None:
    out = tmp_path / "out"
    first = _sweep(tmp_path, "first", 1, [0.99, 0.996])
    first_dir = resolve_sweep_dir(first, out)
    submit_sweep(first, first_dir, Recorder())
    second = _sweep(tmp_path, "second", 1, [0.99, 0.996])
    second_dir = resolve_sweep_dir(second, out)
    submit_sweep(second, second_dir, Recorder())
    run_id = first.points[0].run_id
    if partial:  # the twin is done, but this sweep's run has results of its own: never replaced
        _finish(run_dir_of(first_dir, run_id))
        (run_dir_of(second_dir, run_id) / "metrics.jsonl").write_text('{"epoch": 1}\n')
    else:        # the twin is not done
        _finish(run_dir_of(first_dir, run_id))
        (run_dir_of(first_dir, run_id) / "status.json").write_text('{"state": "running"}')
    backend = Recorder()
    result = submit_sweep(second, second_dir, backend)
    assert not result.copied and run_id in backend.launched
    if partial:
        assert (run_dir_of(second_dir, run_id) / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def _finished_twin(tmp_path: Path, out: Path, **finish: int) -> tuple[Sweep, Path]:
    """Sweep `first` (one point) under `out`, its run finished as the trainer leaves it."""
    first = _sweep(tmp_path, "first", 1, [0.99])
    first_dir = resolve_sweep_dir(first, out)
    submit_sweep(first, first_dir, Recorder())
    twin = run_dir_of(first_dir, first.points[0].run_id)
    _finish(twin, **finish)
    return first, twin


@pytest.mark.parametrize("stop", [False, True])
def test_a_twin_stopped_early_on_a_collapse_is_copied_only_where_runs_stop_so_too(
        tmp_path: Path, stop: bool) -> None:
    """`runtime.collapse_stop` is outside the run's hash: a twin that stopped at epoch 1 of 2
    would have stood in for a run that trains both epochs."""
    out = tmp_path / "out"
    first, _ = _finished_twin(tmp_path, out, epochs=1, planned=2)
    file = tmp_path / "second.yaml"
    file.write_text(yaml.safe_dump({
        "name": "second", "base": BASE, "grid": {"teacher.momentum": [0.99]},
        "profiles": {"local": {"config": {"runtime": {"device": "cpu",
                                                      "collapse_stop": stop}}}}}))
    second = load_sweep(file, "local")
    backend = Recorder()
    result = submit_sweep(second, resolve_sweep_dir(second, out), backend)
    run_id = second.points[0].run_id
    assert run_id.split("_")[-1] == first.points[0].run_id.split("_")[-1]  # the same run
    assert bool(result.copied) is stop and (run_id in backend.launched) is not stop


def _stopping_sweep(tmp_path: Path, stop: bool) -> Sweep:
    file = tmp_path / "stops.yaml"
    file.write_text(yaml.safe_dump({
        "name": "stops", "base": BASE, "grid": {"teacher.momentum": [0.99]},
        "profiles": {"local": {"config": {"runtime": {"device": "cpu",
                                                      "collapse_stop": stop}}}}}))
    return load_sweep(file, "local")


@pytest.mark.parametrize("stop", [False, True])
def test_a_run_stopped_on_a_collapse_is_launched_again_once_its_point_no_longer_stops(
        tmp_path: Path, stop: bool) -> None:
    """It is `done`, but a point without `runtime.collapse_stop` trains all its epochs: the
    resubmission launches it (the trainer resumes it, tests/test_train_integration.py)."""
    out = tmp_path / "out"
    first = _stopping_sweep(tmp_path, True)
    sweep_dir = resolve_sweep_dir(first, out)
    submit_sweep(first, sweep_dir, Recorder())
    run_id = first.points[0].run_id
    _finish(run_dir_of(sweep_dir, run_id), epochs=1, planned=2)
    again = _stopping_sweep(tmp_path, stop)
    assert again.points[0].run_id == run_id
    table = io.StringIO()  # the dry run says what the submission will do
    print_table(plan_sweep(again.file, "local"), sweep_dir, table)
    state = "done" if stop else "stopped early, trains on"
    assert f"  {state}  " in table.getvalue().splitlines()[1], table.getvalue()
    backend = Recorder()
    result = submit_sweep(again, sweep_dir, backend)
    assert (run_id in backend.launched) is not stop
    assert (result.skipped.get(run_id) == "done (epoch 1/2)") is stop, result.skipped


def test_a_done_twin_without_its_summary_is_not_copied(tmp_path: Path) -> None:
    """Killed between summary.json and status.json (an older trainer wrote status first)."""
    out = tmp_path / "out"
    first, twin = _finished_twin(tmp_path, out)
    (twin / "summary.json").unlink()
    second = _sweep(tmp_path, "second", 2, [0.99])
    backend = Recorder()
    result = submit_sweep(second, resolve_sweep_dir(second, out), backend)
    assert not result.copied and backend.launched == [second.points[0].run_id]


@pytest.mark.parametrize("where", ["copy", "move"])
def test_an_interrupted_copy_leaves_no_partial_file_and_no_held_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The checkpoints folder fails half-copied (a full disk), or the renames into place stop
    after the checkpoints: no partial file appears under a final name (a truncated last.pt
    used to), the run's lock is released, and the next submission copies the twin whole."""
    out = tmp_path / "out"
    first, twin = _finished_twin(tmp_path, out)
    second = _sweep(tmp_path, "second", 2, [0.99])
    second_dir = resolve_sweep_dir(second, out)
    run_dir = run_dir_of(second_dir, second.points[0].run_id)
    real_copytree = runs.shutil.copytree

    def full_disk(src: Path, dst: Path, **kwargs: object) -> object:
        real_copytree(src, dst, **kwargs)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    real_replace = runs.os.replace

    def killed_at_metrics(src: Path, dst: Path) -> None:
        if Path(dst).name == "metrics.jsonl":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    if where == "copy":
        monkeypatch.setattr(runs.shutil, "copytree", full_disk)
    else:
        monkeypatch.setattr(runs.os, "replace", killed_at_metrics)
    with pytest.raises(OSError, match="No space left"):
        submit_sweep(second, second_dir, Recorder())
    monkeypatch.undo()
    assert not (run_dir / "metrics.jsonl").exists()
    if where == "copy":
        assert not (run_dir / "checkpoints").exists() and not runs.has_results(run_dir)
    else:  # moved whole, but the adoption is marked unfinished
        assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"weights"
        assert runs.adoption_unfinished(run_dir)
    lock = runs.RunLock(run_dir)
    assert lock.acquire("test")
    lock.release()
    result = submit_sweep(second, second_dir, Recorder())
    assert list(result.copied) == [second.points[0].run_id]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"weights"
    assert not (run_dir / ".adopting").exists()
    assert run_state(run_dir).state == "done"
