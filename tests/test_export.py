"""`dino-ablate export`: official DINO key layout, strict timm load, refusals.

The slow tests export a real (tiny) digits run; the fast ones use a run directory whose
checkpoint is written here from freshly built networks.
"""

import hashlib
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_ablate.cli import main
from dino_ablate.config import RunConfig, from_dict, load_config, to_dict
from dino_ablate.export import (
    BEST_KNN,
    build_export,
    export_run,
    load_backbone_into_timm,
    official_key,
)
from dino_ablate.model import MultiCropNetwork, build_networks
from dino_ablate.rundir import RunDir
from tests.tiny import run_train

TINY_RUN = ("epochs=2", "head.predictor=true", "data.knn_train_limit=200",
            "data.val_limit=100")


def _networks(run: Path, ckpt: dict) -> tuple[RunConfig, MultiCropNetwork, MultiCropNetwork]:
    """The run's own student and teacher (model.build_networks) holding `ckpt`'s weights."""
    raw = RunDir(run).read_config()
    cfg = from_dict(raw)
    channels = ckpt["teacher"]["backbone.patch_embed.proj.weight"].shape[1]
    student, teacher = build_networks(cfg.model, cfg.head, cfg.data.global_crop_size, channels)
    student.load_state_dict(ckpt["student"])
    teacher.load_state_dict(ckpt["teacher"])
    return cfg, student.eval(), teacher.eval()


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _official_head(exported: dict, net: str) -> nn.Module:
    """A head laid out as the official DINOHead: `mlp` (Linear, GELU, ..., Linear) and a
    weight-normed bias-free `last_layer`; loads the exported `head.*` keys strictly."""
    h = exported["head"]
    dims = [h["in_dim"]] + [h["hidden_dim"]] * (h["nlayers"] - 1) + [h["bottleneck_dim"]]
    layers: list[nn.Module] = []
    for i in range(h["nlayers"]):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < h["nlayers"] - 1:
            layers.append(nn.GELU())
    head = nn.Module()
    head.mlp = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the (official) weight_norm
        head.last_layer = nn.utils.weight_norm(
            nn.Linear(h["bottleneck_dim"], h["out_dim"], bias=False))
    state = {k.removeprefix("head."): v for k, v in exported[net].items()
             if k.startswith("head.")}
    head.load_state_dict(state, strict=True)
    return head


def _official_head_forward(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head.last_layer(F.normalize(head.mlp(x), dim=-1))


def _official_loader_view(state: dict) -> dict:
    """What the official eval scripts hand to the ViT: `module.` and `backbone.` removed."""
    return {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# A real digits run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    run_train(out, *TINY_RUN)
    return out


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    out = run.parent / "exported.pth"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_backbones_load_strictly_into_timm_with_identical_features(run: Path,
                                                                   exported: Path) -> None:
    _, student, teacher = _networks(run, _load(run / "checkpoints" / "last.pt"))
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for net, ours in (("teacher", teacher), ("student", student)):
        fresh = load_backbone_into_timm(exported, net)  # strict=True inside
        assert fresh is not ours.backbone
        with torch.no_grad():
            assert torch.equal(fresh(x), ours.backbone(x)), net
        # The official loaders' view of the file: the ViT's keys and shapes, plus head keys
        # they ignore (strict=False), exactly as for the official checkpoints.
        view = _official_loader_view(_load(exported)[net])
        vit = {k: tuple(v.shape) for k, v in view.items()
               if not k.startswith(("head.", "predictor."))}
        assert vit == {k: tuple(v.shape) for k, v in fresh.state_dict().items()}


@pytest.mark.slow
def test_heads_have_official_names_shapes_and_function(run: Path, exported: Path) -> None:
    ckpt = _load(run / "checkpoints" / "last.pt")
    cfg, student, teacher = _networks(run, ckpt)
    data = _load(exported)
    k, b = cfg.head.out_dim, cfg.head.bottleneck_dim
    for net, ours in (("teacher", teacher), ("student", student)):
        state = data[net]
        heads = sorted(key for key in state if key.startswith("head."))
        assert heads == sorted(["head.last_layer.weight_g", "head.last_layer.weight_v"]
                               + [f"head.mlp.{i}.{p}" for i in (0, 2, 4)
                                  for p in ("weight", "bias")])
        assert state["head.last_layer.weight_v"].shape == (k, b)
        assert state["head.last_layer.weight_g"].shape == (k, 1)
        assert torch.equal(state["head.last_layer.weight_v"], ckpt[net]["head.last_layer.v"])
        assert torch.equal(state["head.last_layer.weight_g"], ckpt[net]["head.last_layer.g"])
        z = torch.randn(5, cfg.model.embed_dim)
        with torch.no_grad():
            torch.testing.assert_close(_official_head_forward(_official_head(data, net), z),
                                       ours.head(z))
    assert [key for key in data["student"] if key.startswith("predictor.")] == [
        "predictor.net.0.weight", "predictor.net.0.bias",
        "predictor.net.2.weight", "predictor.net.2.bias"]
    assert not any(key.startswith("predictor.") for key in data["teacher"])


@pytest.mark.slow
def test_metadata_rebuilds_the_backbone(run: Path, exported: Path) -> None:
    data = _load(exported)
    assert data["arch"] == "vit_tiny_patch16_224" and data["official_arch"] is None
    kw = data["timm_kwargs"]
    assert {k: kw[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth",
                               "num_heads")} == {"img_size": 16, "patch_size": 4, "in_chans": 1,
                                                 "embed_dim": 32, "depth": 2, "num_heads": 2}
    assert data["epoch"] == 2 and data["which"] == "last"
    assert data["source_run_dir"] == str(run.resolve())
    last = run / "checkpoints" / "last.pt"
    assert data["source_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert data["config"] == RunDir(run).read_config()


@pytest.mark.slow
def test_best_knn_exports_that_checkpoint(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best_path = run / "checkpoints" / BEST_KNN
    if not best_path.exists():  # the contract's file, built from the epoch-1 checkpoint
        prev = _load(run / "checkpoints" / "previous.pt")
        torch.save({"teacher": prev["teacher"], "student": prev["student"],
                    "epoch": prev["epoch"], "knn_teacher": 0.5}, best_path)
    best = _load(best_path)
    out = run.parent / "best.pth"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out), "--which", "best-knn"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and str(out) in line and "best-knn" in line
    data = _load(out)
    assert data["which"] == "best-knn" and data["epoch"] == best["epoch"]
    assert data["knn_teacher"] == pytest.approx(best["knn_teacher"])
    for net in ("teacher", "student"):
        assert torch.equal(data[net]["head.last_layer.weight_v"], best[net]["head.last_layer.v"])
        for key, tensor in best[net].items():
            if key.startswith("backbone."):
                assert torch.equal(data[net][key], tensor), key


# --------------------------------------------------------------------------------------------
# Fast: a run directory written here (no training)


def _fake_run(root: Path, *overrides: str) -> Path:
    cfg = load_config("digits", ["model.depth=1", "model.embed_dim=16", "model.num_heads=2",
                                 "head.out_dim=32", "head.hidden_dim=32",
                                 "head.bottleneck_dim=8", *overrides])
    rd = RunDir(root)
    rd.write_config(to_dict(cfg))
    student, teacher = build_networks(cfg.model, cfg.head, cfg.data.global_crop_size, 1)
    rd.checkpoints.mkdir(parents=True)
    torch.save({"teacher": teacher.state_dict(), "student": student.state_dict(), "epoch": 3},
               rd.checkpoints / "last.pt")
    return root


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_refuses_existing_out_without_force(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path / "run")
    out = tmp_path / "model.pth"
    out.write_bytes(b"keep me")
    err = _error(capsys, ["export", str(run), "--out", str(out)])
    assert str(out) in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(run), "--out", str(out), "--force"]) == 0
    assert _load(out)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_refuses_missing_or_unreadable_checkpoint(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path / "run")
    out = tmp_path / "model.pth"
    err = _error(capsys, ["export", str(run), "--out", str(out), "--which", "best-knn"])
    assert str(run / "checkpoints" / BEST_KNN) in err and "no such checkpoint" in err
    real = (run / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00garbage" * 50)
    err = _error(capsys, ["export", str(run), "--out", str(out)])
    assert str(run / "checkpoints" / "last.pt") in err and "unreadable checkpoint" in err
    # torch's advice to load a damaged file unsafely is not passed on; its reason is
    assert "weights_only" not in err and "WeightsUnpickler error: " in err
    (run / "checkpoints" / "last.pt").write_bytes(real[: len(real) // 2])  # a truncated zip
    err = _error(capsys, ["export", str(run), "--out", str(out)])
    assert "unreadable checkpoint (" in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(run / "checkpoints")
    err = _error(capsys, ["export", str(run), "--out", str(out)])
    assert "no such checkpoint" in err
    err = _error(capsys, ["export", str(tmp_path / "nowhere"), "--out", str(out)])
    assert "config.yaml" in err
    assert not out.exists()


def test_refuses_a_checkpoint_that_does_not_match_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path / "run")  # 16 wide
    other = _fake_run(tmp_path / "other", "model.embed_dim=24")
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    err = _error(capsys, ["export", str(run), "--out", str(tmp_path / "m.pth")])
    assert "does not match" in err and str(run / "config.yaml") in err


def test_single_linear_mlp_and_foreign_keys() -> None:
    assert official_key("head.mlp.0.weight", single_linear_mlp=True) == "head.mlp.weight"
    assert official_key("head.mlp.0.weight", single_linear_mlp=False) == "head.mlp.0.weight"
    assert official_key("module.backbone.norm.bias", False) == "backbone.norm.bias"
    assert official_key("head.last_layer.g", False) == "head.last_layer.weight_g"
    with pytest.raises(KeyError):
        official_key("center", False)


def test_single_linear_head_loads_into_the_official_layout(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", "head.num_layers=1")
    data = build_export(run)
    head = _official_head(data, "teacher")
    assert isinstance(head.mlp, nn.Linear)
    out = export_run(run, tmp_path / "m.pth")
    assert out.epoch == 3 and out.num_tensors == len(data["teacher"]) + len(data["student"])
