"""The linear probe: features, the fast protocol against scikit-learn, the pixel baselines, and
the probe's values in a real run directory."""

import hashlib
import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dino_ablate import baselines
from dino_ablate.cli import main
from dino_ablate.config import ConfigError, from_dict, load_config, to_dict
from dino_ablate.data import load_data
from dino_ablate.linear import probe_accuracy, probe_features, resolve_protocol
from dino_ablate.model import build_backbone
from tests.tiny import run_train


@pytest.fixture(scope="module")
def digits():
    cfg = load_config("digits")
    data = load_data(cfg.data, torch.device("cpu"))
    bank, queries = data.knn_sets(cfg.seed)
    return cfg, data, bank, queries


def _backbone(cfg):
    torch.manual_seed(0)
    return build_backbone(cfg.model, cfg.data.global_crop_size, 1, 0.0).eval()


def _sklearn_accuracy(train_x, train_y, test_x, test_y, l2):
    """The same objective in scikit-learn: C = 1 / (l2 N) on the same standardised features."""
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    clf = LogisticRegression(C=1.0 / (l2 * len(x)), max_iter=5000, tol=1e-8)
    clf.fit(((x - mean) / std).numpy(), train_y.numpy())
    return clf.score(((test_x.double() - mean) / std).numpy(), test_y.numpy())


@pytest.mark.parametrize("l2", [1e-3, 1e-2])
def test_fast_probe_agrees_with_sklearn_on_backbone_features(digits, l2):
    cfg, data, bank, queries = digits
    backbone = _backbone(cfg)
    with torch.no_grad():
        train_x = probe_features(backbone, bank.images, 4, False)
        test_x = probe_features(backbone, queries.images, 4, False)
    ours = probe_accuracy(train_x, bank.labels, test_x, queries.labels, 10, l2, 300)
    theirs = _sklearn_accuracy(train_x, bank.labels, test_x, queries.labels, l2)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    assert ours > 0.5  # random ViT features of digits are far above chance (10 %)


def test_fast_probe_agrees_with_sklearn_on_pixels(digits):
    cfg, data, bank, queries = digits
    train_x, test_x = bank.images.flatten(1), queries.images.flatten(1)
    ours = probe_accuracy(train_x, bank.labels, test_x, queries.labels, 10, 1e-3, 300)
    theirs = _sklearn_accuracy(train_x, bank.labels, test_x, queries.labels, 1e-3)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_probe_features_layouts(digits):
    """One block without pooling is the backbone's own [CLS] output; last-4 concatenates the
    normalised [CLS] of each of the last 4 blocks (checked with forward hooks)."""
    cfg, data, bank, queries = digits
    backbone = _backbone(cfg)
    images = queries.images[:5]
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in backbone.blocks]
    with torch.no_grad():
        cls = backbone(images)
        one = probe_features(backbone, images, 1, False)
        outputs.clear()
        four = probe_features(backbone, images, 4, False)
        pooled = probe_features(backbone, images, 1, True)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(one, cls, rtol=0, atol=1e-6)
    expected = torch.cat([backbone.norm(o)[:, 0] for o in outputs[-4:]], dim=1)
    torch.testing.assert_close(four, expected, rtol=0, atol=1e-6)
    assert four.shape == (5, 4 * 64)
    torch.testing.assert_close(pooled[:, :64], cls, rtol=0, atol=1e-6)
    assert pooled.shape == (5, 128)


def test_protocol_resolution():
    digits = load_config("digits")
    assert resolve_protocol(digits, 64).protocol == "fast"
    paper = load_config("paper")
    proto = resolve_protocol(paper, 384)
    assert (proto.protocol, proto.n_last_blocks, proto.avgpool) == ("paper", 4, False)
    base = resolve_protocol(paper, 768)
    assert (base.n_last_blocks, base.avgpool) == (1, True)  # the official ViT-B choice


def test_impossible_probe_settings_are_config_errors():
    with pytest.raises(ConfigError, match="eval.linear_protocol"):
        from_dict({"data": {"dataset": "digits"}, "eval": {"linear_protocol": "paper"}})
    with pytest.raises(ConfigError, match="eval.linear_every_epochs"):
        from_dict({"data": {"root": "/x"}, "eval": {"linear_every_epochs": 5}})
    from_dict({"data": {"dataset": "digits"}, "eval": {"linear_every_epochs": 5}})


def test_pixel_baselines_are_cached_per_data_set(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("DINO_ABLATE_CACHE", str(tmp_path))
    cfg, data, bank, queries = digits
    proto = resolve_protocol(cfg, 64)
    first = baselines.pixel_baselines(cfg, bank, queries, 10, proto, torch.device("cpu"))
    assert first["knn_pixels"] > 0.95 and first["linear_pixels"] > 0.9  # digits' pixels
    assert first["pixels_bank"] == len(bank) == 1400
    (entry,) = (tmp_path / "baselines").iterdir()
    stored = json.loads(entry.read_text())
    stored["baselines"]["knn_pixels"] = 0.5  # a marker: a cached read returns it
    entry.write_text(json.dumps(stored))
    assert baselines.pixel_baselines(cfg, bank, queries, 10, proto,
                                     torch.device("cpu"))["knn_pixels"] == 0.5
    other = from_dict({**to_dict(cfg),
                       "eval": {"knn_k": 10}})
    assert baselines.pixel_baselines(other, bank, queries, 10, proto,
                                     torch.device("cpu"))["knn_pixels"] > 0.95
    for change in ({"train_limit": 700}, {"dataset": "fashion_mnist"}, {"image_size": 8},
                   {"val_limit": 100}):
        changed = from_dict({**to_dict(cfg), "data": {**to_dict(cfg)["data"], **change}})
        assert baselines.cache_key(changed, proto) != baselines.cache_key(cfg, proto), change


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "bf16"])  # auto: fp32 on the CPU
def test_run_records_the_probe_and_eval_reproduces_it(tmp_path, capsys, precision):
    """`dino-ablate eval` repeats the trainer's evaluation, its precision included (a bf16 run
    on the CPU was evaluated in fp32 before)."""
    run = tmp_path / "run"
    run_train(run, "epochs=2", "eval.linear_every_epochs=1", f"runtime.precision={precision}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 < r["linear_teacher"] <= 1 and 0 < r["linear_student"] <= 1 for r in records)
    init = json.loads((run / "init.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for key in ("linear_teacher_init", "linear_student_init", "knn_pixels", "linear_pixels"):
        assert 0 < init[key] <= 1 and summary[key] == init[key]
    assert summary["linear_teacher"] == records[-1]["linear_teacher"]
    assert summary["linear_protocol"] == "fast"
    assert (run / "attention" / "maps.npz").is_file()
    assert (run / "checkpoints" / "best_knn.pt").is_file()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}

    assert main(["eval", str(run), "--knn", "--linear"]) == 0
    result = json.loads((run / "eval" / "last-epoch002" / "eval.json").read_text())
    for key in ("knn_teacher", "knn_student", "linear_teacher", "linear_student"):
        assert result[key] == pytest.approx(records[-1][key], abs=1e-6), key
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # the training files are untouched
    last = run / "checkpoints" / "last.pt"
    assert result["checkpoint_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()

    # The same file again: its folder gains the new values and keeps the others.
    assert main(["eval", str(run), "--knn"]) == 0
    again = json.loads((run / "eval" / "last-epoch002" / "eval.json").read_text())
    assert again["linear_teacher"] == result["linear_teacher"]
    assert not list((run / "eval").glob("*.superseded-*"))
    # Other weights under the same name (last.pt rewritten for epoch 2, as after a fall-back):
    # the folder of the old weights is moved aside whole, never mixed with the new values.
    state = torch.load(last, weights_only=True)
    state["teacher"] = {k: v * 0.5 if v.is_floating_point() else v
                        for k, v in state["teacher"].items()}
    torch.save(state, last)
    assert main(["eval", str(run), "--knn"]) == 0
    (side,) = (run / "eval").glob("last-epoch002.superseded-*")
    assert json.loads((side / "eval.json").read_text()) == again
    new = json.loads((run / "eval" / "last-epoch002" / "eval.json").read_text())
    assert new["checkpoint_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert "linear_teacher" not in new and new["knn_student"] == again["knn_student"]


def test_eval_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml" in err[0]
