"""One identity of a run (`dino_ablate.identity`) for the run id, config.yaml and the checkpoints,
and a metrics.jsonl that only ever holds the restored checkpoint's epochs (the rest set aside)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dino_ablate import checkpoint, identity
from dino_ablate.config import from_dict, to_dict
from dino_ablate.errors import ConfigError
from dino_ablate.rundir import RunDir
from dino_ablate.sweep import semantic_diff, semantic_hash
from tests.tiny import run_train

DIGITS = {"epochs": 3, "data": {"dataset": "digits"}}


def _cfg(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(DIGITS))
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return to_dict(from_dict(raw))


def test_keys_that_define_a_run() -> None:
    for key in ("runtime", "runtime.threads", "runtime.deterministic", "data.root",
                "data.num_workers"):
        assert not identity.defines_run(key), key
    for key in ("seed", "epochs", "data", "data.dataset", "data.rootx", "data.train_limit",
                "teacher.momentum", "eval.knn_k", "eval.every_epochs", "eval.linear_protocol"):
        assert identity.defines_run(key), key


def test_the_run_id_hash_is_the_identity() -> None:
    base = _cfg()
    assert semantic_diff(base) == identity.identity(base) == {"epochs": 3,
                                                              "data": {"dataset": "digits"}}
    assert semantic_hash(base) == identity.digest(identity.identity(base))
    moved = _cfg(data__root="/elsewhere", data__num_workers=2, runtime__threads=4)
    assert identity.first_difference(base, moved) is None
    assert semantic_hash(moved) == semantic_hash(base)
    evaluated = _cfg(eval__knn_k=10)
    assert identity.first_difference(base, evaluated) == "eval.knn_k: 20 there, 10 now"
    assert semantic_hash(evaluated) != semantic_hash(base)
    limited = _cfg(data__train_limit=1000)  # trains on other images: another run
    assert identity.first_difference(base, limited) == "data.train_limit: None there, 1000 now"
    assert semantic_hash(limited) != semantic_hash(base)
    assert semantic_hash(_cfg(data__train_limit=None)) == semantic_hash(base)


def test_first_difference_names_the_first_key_in_dotted_order() -> None:
    old = _cfg()
    new = _cfg(teacher__momentum=0.9, optim__lr=1e-3, data__root="/x")
    assert identity.first_difference(old, new) == "optim.lr: 0.0005 there, 0.001 now"
    assert identity.first_difference(new, old) == "optim.lr: 0.001 there, 0.0005 now"
    # a partial (older) config counts missing keys as defaults
    assert identity.first_difference({"epochs": 3, "data": {"dataset": "digits"}}, old) is None
    assert identity.first_difference({"data": {"dataset": "digits"}}, old) == \
        "epochs: 100 there, 3 now"


def _state(config: dict[str, Any], epoch: int = 1) -> dict[str, Any]:
    return {"student": {}, "teacher": {}, "optimizer": {}, "center": torch.zeros(1, 4),
            "step": epoch * 10, "epoch": epoch, "metrics": [{"epoch": e} for e in
                                                            range(1, epoch + 1)],
            "rng_cpu": torch.get_rng_state(), "config": config}


def _old_format(cfg: dict[str, Any]) -> dict[str, Any]:
    """What checkpoints before the identity stored: the config without `runtime`, and (from
    an older version still) without the keys added since with their defaults."""
    old = {k: v for k, v in cfg.items() if k != "runtime"}
    old["eval"] = {k: v for k, v in old["eval"].items() if not k.startswith("linear_")}
    return old


def test_checkpoints_of_the_same_run_load_and_of_another_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    cfg = _cfg()
    checkpoint.save(folder, _state(_old_format(cfg), epoch=1))
    checkpoint.save(folder, _state(_old_format(cfg), epoch=2))
    now = _cfg(data__num_workers=0, data__root="/moved", runtime__threads=2)
    state = checkpoint.load_latest(folder, now)
    assert state is not None and state["epoch"] == 2
    with pytest.raises(ConfigError, match=r"last\.pt was written by a different run "
                                          r"\(teacher\.momentum: 0\.996 there, 0\.9 now\)"):
        checkpoint.load_latest(folder, _cfg(teacher__momentum=0.9))
    # an unreadable last.pt is skipped; a previous.pt of another run is still refused
    (folder / checkpoint.LAST).write_bytes(b"\x00garbage")
    assert checkpoint.load_latest(folder, now)["epoch"] == 1  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"previous\.pt was written by a different run"):
        checkpoint.load_latest(folder, _cfg(epochs=4))


def test_a_failed_checkpoint_write_leaves_the_last_two(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    cfg = _cfg()
    checkpoint.save(folder, _state(cfg, epoch=1))
    checkpoint.save(folder, _state(cfg, epoch=2))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / ".last.pt.tmp"))

    with pytest.raises(OSError, match="No space left on device"):
        checkpoint.save(folder, _state(cfg, epoch=3), mid_write=full_disk)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file
    assert checkpoint.load_latest(folder, cfg)["epoch"] == 2  # type: ignore[index]


def _lines(*epochs: int) -> str:
    return "".join(json.dumps({"epoch": e}, sort_keys=True) + "\n" for e in epochs)


def test_metrics_beyond_the_checkpoint_are_set_aside_never_dropped(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.metrics.write_text(_lines(1, 2, 3) + '{"epo')  # and a line cut by a kill
    side = rd.restore_metrics([{"epoch": 1}])
    assert rd.metrics.read_text() == _lines(1)
    assert side is not None and side.name.startswith("metrics.jsonl.orphaned-")
    assert side.read_text() == _lines(2, 3) + '{"epo'
    # a second restart keeps the first side file
    rd.metrics.write_text(_lines(1, 2))
    again = rd.restore_metrics([])
    assert again is not None and again != side and again.read_text() == _lines(1, 2)
    assert side.read_text() == _lines(2, 3) + '{"epo'
    assert rd.metrics.read_text() == ""
    # fewer records than the checkpoint: rewritten from it, nothing to set aside
    rd.metrics.write_text(_lines(1))
    assert rd.restore_metrics([{"epoch": 1}, {"epoch": 2}]) is None
    assert rd.metrics.read_text() == _lines(1, 2)
    assert len(list(tmp_path.glob("metrics.jsonl.orphaned-*"))) == 2


def test_a_failed_metrics_append_leaves_no_partial_line(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.write_metrics([{"epoch": 1}])
    before = rd.metrics.read_bytes()
    seen: list[bytes] = []

    def full_disk() -> None:
        seen.append(rd.metrics.read_bytes())  # half of the line is on disk at this point
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(rd.metrics))

    with pytest.raises(OSError, match="No space left on device"):
        rd.append_metrics({"epoch": 2, "loss": 1.5}, mid_write=full_disk)
    assert len(seen[0]) > len(before) and rd.metrics.read_bytes() == before
    assert rd.append_metrics({"epoch": 2}) == len(before)
    assert rd.metrics.read_text() == _lines(1, 2)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_from_config(run: Path) -> subprocess.CompletedProcess[str]:
    """What a launcher runs: `dino-ablate train RUN/config.yaml --out RUN`."""
    return subprocess.run([sys.executable, "-m", "dino_ablate", "train", str(run / "config.yaml"),
                           "--out", str(run)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_trainer_resumes_an_old_checkpoint_and_refuses_another_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = run_train(run, "epochs=2", env={"DINO_ABLATE_FAULT": "kill_step:15"}, check=False)
    assert res.returncode == -9
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    config_file = run / "config.yaml"
    cfg = yaml.safe_load(config_file.read_text())
    state["config"] = _old_format(cfg)  # as written before the identity existed
    torch.save(state, last)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1]

    # config.yaml edited to another run: the checkpoint refuses it; nothing changes
    other = json.loads(json.dumps(cfg))
    other["teacher"]["momentum"] = 0.9
    config_file.write_text(yaml.safe_dump(other, sort_keys=False))
    before = _snapshot(run)
    res = _train_from_config(run)
    assert res.returncode == 2, res.stderr[-2000:]
    assert (f"last.pt was written by a different run (teacher.momentum: "
            f"{cfg['teacher']['momentum']} there, 0.9 now)") in res.stderr
    assert "Traceback" not in res.stderr
    assert _snapshot(run) == before

    # only a key that does not define the run changed: the old checkpoint resumes
    cfg["data"]["num_workers"] = 3
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = _train_from_config(run)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {run} at epoch 1 (step 10)" in res.stderr
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]
    assert yaml.safe_load(config_file.read_text())["data"]["num_workers"] == 3
