"""The paper-protocol linear probe job (`dino_ablate.linear_paper`) on a tiny image folder.

3 colour classes of 32x32 PNGs (learnable by a linear probe on a random tiny ViT), two tiny
backbones. Checks the official recipe's pieces (init, cosine to 0, best-of-epochs), the files,
the stored-result short cut, and that an interrupted job (stopped, or SIGKILLed mid-epoch) and a
2-rank DDP job both end exactly where one uninterrupted process does.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dino_ablate import linear_paper
from dino_ablate.config import ConfigError, RunConfig, from_dict, to_dict
from dino_ablate.linear import resolve_protocol
from dino_ablate.linear_paper import make_head, run_paper_probe
from dino_ablate.model import build_backbone
from tests.multinode import free_port

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))
EPOCHS = 3
CPU = torch.device("cpu")


def _make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("val", 6)):
        for label, colour in enumerate(COLOURS):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.asarray(colour) + rng.normal(0, 25, (32, 32, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    _make_folder(root)
    return root


def _config(root: Path, epochs: int = EPOCHS, workers: int = 0) -> RunConfig:
    # lr 10 per 256 (0.47 at batch 12): the official 0.001 would not move the head in 9 steps.
    return from_dict({
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 32,
                 "num_workers": workers},
        "model": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "eval": {"linear_protocol": "paper", "linear_epochs": epochs, "linear_batch_size": 12,
                 "linear_features": "cls", "linear_lr": 10.0}})


def _backbones(cfg: RunConfig) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_backbone(cfg.model, 32, 3, 0.0) for name in ("teacher", "student")}


def _probe(root: Path, out: Path, epochs: int = EPOCHS, workers: int = 0,
           **kwargs: Any) -> dict[str, float]:
    torch.set_num_threads(1)
    cfg = _config(root, epochs, workers)
    return run_paper_probe(cfg, resolve_protocol(cfg, 32), _backbones(cfg), out, CPU, None,
                           **kwargs)


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _without_seconds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _checkpoint(out: Path) -> dict[str, Any]:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


def _assert_same_heads(a: Path, b: Path, atol: float = 0.0) -> None:
    heads_a, heads_b = _checkpoint(a)["heads"], _checkpoint(b)["heads"]
    for name in ("teacher", "student"):
        for key, value in heads_a[name].items():
            torch.testing.assert_close(heads_b[name][key], value, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process job: its linear/ folder."""
    out = tmp_path_factory.mktemp("reference") / "run" / "linear"
    _probe(data_root, out)
    return out


def test_head_init_is_the_official_one() -> None:
    head = make_head(1536, 1000, torch.Generator().manual_seed(0))
    weight = head.weight.detach()
    assert abs(float(weight.std()) - 0.01) < 0.0002
    assert abs(float(weight.mean())) < 0.0002
    assert torch.count_nonzero(head.bias) == 0


def test_probe_learns_and_writes_its_files(reference: Path) -> None:
    result = json.loads((reference / "result.json").read_text())
    records = _metrics(reference)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for name in ("teacher", "student"):
        assert 0.0 <= result[name] <= 1.0
        assert result[name] > 1 / 3 + 0.3, result  # chance is 1/3
        tops = [r[f"val_top1_{name}"] for r in records]
        assert result[name] == max(tops)  # the best epoch, as eval_linear.py reports
        assert result["last"][name] == tops[-1]
        assert all(math.isfinite(r[f"train_loss_{name}"]) for r in records)
    assert result["epochs"] == EPOCHS
    proto = result["protocol"]
    assert proto["protocol"] == "paper" and proto["num_classes"] == 3
    assert (proto["num_train"], proto["num_val"]) == (36, 18)
    assert (proto["train_crop"], proto["eval_resize"], proto["eval_crop"]) == (32, 37, 32)
    assert proto["momentum"] == 0.9 and proto["weight_decay"] == 0.0
    assert all(r["seconds"] >= 0 for r in records)
    assert all((r["train_images"], r["val_images"]) == (36, 18) for r in records)


def test_lr_is_cosine_to_zero(reference: Path) -> None:
    peak = 10.0 * 12 / 256
    lrs = [r["lr"] for r in _metrics(reference)]  # the lr each epoch trained with
    assert lrs == pytest.approx([peak * (1 + math.cos(math.pi * e / EPOCHS)) / 2
                                 for e in range(EPOCHS)])
    ckpt = _checkpoint(reference)
    for name in ("teacher", "student"):
        group = ckpt["optimizers"][name]["param_groups"][0]
        assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # after the last epoch
        assert group["momentum"] == 0.9 and group["weight_decay"] == 0.0
    assert ckpt["epoch"] == EPOCHS


def test_backbones_stay_frozen_and_keep_their_mode(data_root: Path, tmp_path: Path) -> None:
    cfg = _config(data_root, epochs=1)
    backbones = _backbones(cfg)
    before = {n: {k: v.clone() for k, v in b.state_dict().items()} for n, b in backbones.items()}
    backbones["student"].train()
    backbones["teacher"].eval()
    run_paper_probe(cfg, resolve_protocol(cfg, 32), backbones, tmp_path / "linear", CPU, None)
    assert backbones["student"].training and not backbones["teacher"].training
    for name, net in backbones.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, before[name][key]), (name, key)


def test_second_call_returns_the_stored_result(reference: Path, data_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stored = json.loads((reference / "result.json").read_text())
    mtime = (reference / "checkpoint.pt").stat().st_mtime_ns

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr(linear_paper._Heads, "train_step", no_training)
    again = _probe(data_root, reference)
    assert again == {"teacher": stored["teacher"], "student": stored["student"]}
    assert (reference / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_resume_after_a_stop_equals_an_uninterrupted_job(
        reference: Path, data_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run" / "linear"
    partial = _probe(data_root, out, stop_after_epochs=1)
    assert not (out / "result.json").exists()
    assert [r["epoch"] for r in _metrics(out)] == [1]
    assert partial == {n: _metrics(out)[0][f"val_top1_{n}"] for n in partial}
    # a record the checkpoint does not hold (a kill between the two writes) must not survive
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({**_metrics(out)[0], "epoch": 2}) + "\n")
    with caplog.at_level(logging.INFO, logger="dino_ablate.linear"):
        result = _probe(data_root, out)
    assert "epochs 3 (from 1)" in caplog.text
    assert [r["epoch"] for r in _metrics(out)] == [1, 2, 3]
    assert _without_seconds(_metrics(out)) == _without_seconds(_metrics(reference))
    _assert_same_heads(reference, out)
    stored = json.loads((reference / "result.json").read_text())
    assert result == {"teacher": stored["teacher"], "student": stored["student"]}


def test_loader_workers_do_not_change_the_data(reference: Path, data_root: Path,
                                               tmp_path: Path) -> None:
    """Crops are seeded per image, so worker processes see what the main process would."""
    out = tmp_path / "linear"
    _probe(data_root, out, workers=2, stop_after_epochs=1)
    assert _without_seconds(_metrics(out)) == _without_seconds(_metrics(reference))[:1]


def test_a_changed_protocol_is_refused(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "linear"
    _probe(data_root, out, stop_after_epochs=1)
    with pytest.raises(ValueError, match="epochs: stored 3, now 4"):
        _probe(data_root, out, epochs=4)


def test_batch_not_divisible_by_the_world_is_an_error(data_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_paper.dist, "world_size", lambda: 5)
    with pytest.raises(ConfigError, match="linear_batch_size: 12 is not divisible by the world "
                                          "size 5"):
        _probe(data_root, tmp_path / "linear")


def _child_main(root: str, out: str) -> None:
    """Entry point of the subprocess of the kill test."""
    _probe(Path(root), Path(out))


@pytest.mark.slow  # a fresh interpreter importing torch and timm: ~5 s
def test_sigkill_mid_epoch_resumes_at_the_checkpointed_epoch(reference: Path, data_root: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run" / "linear"
    code = ("import sys; from tests.test_linear_paper import _child_main; "
            "_child_main(sys.argv[1], sys.argv[2])")
    env = {**os.environ, "DINO_ABLATE_FAULT": "kill_linear:2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(data_root), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _checkpoint(out)["epoch"] == 1  # killed during epoch 2
    assert [r["epoch"] for r in _metrics(out)] == [1]
    _probe(data_root, out)
    assert _without_seconds(_metrics(out)) == _without_seconds(_metrics(reference))
    _assert_same_heads(reference, out)


def _ddp_worker(rank: int, root: str, out: str, port: int) -> None:
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                  world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        _probe(Path(root), Path(out))
        # rank 0 alone reads the stored job; its refusal must reach rank 1 too (no hang)
        with pytest.raises(ValueError, match="epochs: stored 3, now 4"):
            _probe(Path(root), Path(out), epochs=4)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters
def test_two_rank_ddp_equals_one_process(reference: Path, data_root: Path,
                                         tmp_path: Path) -> None:
    """Each global batch of 12 is split 6 + 6 and every crop is seeded per image, so 2 ranks
    train the same heads as 1 process (up to float summation order); validation is split over
    the ranks and counted once."""
    import torch.multiprocessing as mp

    out = tmp_path / "run" / "linear"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(str(data_root), str(out), free_port("127.0.0.1")), nprocs=2)
    _assert_same_heads(reference, out, atol=1e-5)
    ddp, single = _metrics(out), _metrics(reference)
    assert [r["epoch"] for r in ddp] == [1, 2, 3]
    for a, b in zip(ddp, single, strict=True):
        for key in ("val_top1_teacher", "val_top1_student", "lr", "train_images",
                    "val_images"):
            assert a[key] == b[key]
        for key in ("train_loss_teacher", "train_loss_student"):
            assert a[key] == pytest.approx(b[key], abs=1e-5)
    assert json.loads((out / "result.json").read_text())["protocol"]["num_val"] == 18


@pytest.mark.parametrize("features", ["last4_cls", "cls_avgpool"])
def test_probe_with_fewer_blocks_than_the_layout_asks(data_root: Path, tmp_path: Path,
                                                      features: str) -> None:
    """A 2-block model under `last4_cls` concatenates the 2 blocks it has (no shape error)."""
    torch.set_num_threads(1)
    raw = to_dict(_config(data_root, epochs=1))
    raw["eval"]["linear_features"] = features
    cfg = from_dict(raw)
    proto = resolve_protocol(cfg, 32)
    result = run_paper_probe(cfg, proto, _backbones(cfg), tmp_path / "linear", CPU, None)
    assert set(result) == {"teacher", "student"}
    head = _checkpoint(tmp_path / "linear")["heads"]["teacher"]["weight"]
    assert head.shape[1] == 32 * (2 if features == "last4_cls" else 2)
