"""Fashion-MNIST (dino_ablate/fashion_mnist.py, data.load_fashion_mnist_data): the idx reader on
files the test writes, the refusal of malformed ones through the CLI, `data.train_limit`'s
subset, and the real files of Debian's dataset-fashion-mnist when they are installed."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_ablate import fashion_mnist, memory
from dino_ablate.cli import main
from dino_ablate.config import ConfigError, load_config
from dino_ablate.data import load_data, train_subset

LABELS, IMAGES = fashion_mnist.LABEL_MAGIC, fashion_mnist.IMAGE_MAGIC


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """`array` (uint8) in the idx format: magic 0x0000 08 NDIM, big-endian sizes, the values."""
    magic = 0x0800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_set(root: Path, train: int = 40, test: int = 20, side: int = 28,
             gz: bool = True) -> dict[str, np.ndarray]:
    """The four files of a small random Fashion-MNIST in `root` (`train` of them: 4 per class
    at the default), named as distributed; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / (f"{name}.gz" if gz else name), array, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_reader_reads_labels_and_images(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 7, 7), dtype=np.uint8)
    labels = np.array([3, 0, 9, 9, 1], dtype=np.uint8)
    got_images = fashion_mnist.read_idx(write_idx(tmp_path / "i", images, gz), IMAGES)
    got_labels = fashion_mnist.read_idx(write_idx(tmp_path / "l", labels, gz), LABELS)
    assert got_images.shape == (5, 7, 7) and np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)
    got_images[0, 0, 0] = 1  # writable, as torch.from_numpy needs


def test_a_gzip_stream_is_told_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    arrays = fake_set(tmp_path / "a", gz=False)
    (tmp_path / "b").mkdir()
    for name, array in arrays.items():  # compressed files under the plain names
        write_idx(tmp_path / "b" / name, array, gz=True)
    for folder in ("a", "b"):
        paths = fashion_mnist.locate(tmp_path / folder, folder)
        images, labels = fashion_mnist.read_split(paths["train-images-idx3-ubyte"],
                                                  paths["train-labels-idx1-ubyte"])
        assert np.array_equal(images, arrays["train-images-idx3-ubyte"])
        assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(40)]


def test_loaded_set_is_one_channel_in_unit_range_resized_with_train_statistics(
        tmp_path: Path) -> None:
    arrays = fake_set(tmp_path / "fm")
    cfg = load_config("fashion_mnist", [f"data.root={tmp_path / 'fm'}", "data.image_size=16",
                                        "data.global_crop_size=16", "data.train_limit=20"])
    data = load_data(cfg.data, torch.device("cpu"))
    assert data.train.shape == (20, 1, 16, 16) and data.val.shape == (20, 1, 16, 16)
    assert data.channels == 1 and data.num_classes == 10
    assert 0 <= float(data.train.min()) and float(data.train.max()) <= 1
    assert torch.bincount(data.train_labels).tolist() == [2] * 10  # stratified: 2 per class
    assert data.mean == pytest.approx((float(data.train.mean()),))
    assert data.std == pytest.approx((float(data.train.std()),))
    assert data.val_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    native = load_data(load_config("fashion_mnist", [f"data.root={tmp_path / 'fm'}",
                                                     "data.train_limit=null"]).data,
                       torch.device("cpu"))
    assert np.allclose(native.train[:, 0].numpy() * 255, arrays["train-images-idx3-ubyte"],
                       atol=1e-3)


def test_train_limit_is_a_fixed_stratified_subset() -> None:
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)[torch.randperm(1000)]
    a, again = train_subset(labels, 100), train_subset(labels, 100)
    assert torch.equal(a, again), "the same limit must give the same images"
    assert torch.bincount(labels[a]).tolist() == [60, 30, 10]  # each class keeps its share
    c = train_subset(labels, 200)
    assert set(a.tolist()) < set(c.tolist()), "a smaller limit's images are in a larger one's"
    assert set(train_subset(labels, 100, seed=1).tolist()) != set(a.tolist())
    assert torch.equal(train_subset(labels, None), torch.arange(1000))
    assert torch.equal(train_subset(labels, 5000), torch.arange(1000))
    assert a.tolist() == sorted(set(a.tolist())) and int(a.max()) < 1000


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _corrupt_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


MALFORMED: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    "bad magic": ("train-labels-idx1-ubyte", lambda p: p.write_bytes(
        idx_bytes(np.zeros((40, 1, 1), np.uint8))),
        ["bad magic 0x00000803; expected 0x00000801", "labels (idx1)"]),
    "truncated header": ("t10k-images-idx3-ubyte", lambda p: p.write_bytes(
        struct.pack(">II", IMAGES, 20)), ["truncated: the idx header needs 16 bytes"]),
    "too short for a magic": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b"\x00\x00"),
                              ["truncated: 2 bytes, shorter than the 4-byte idx magic"]),
    "truncated data": ("train-images-idx3-ubyte", lambda p: p.write_bytes(
        idx_bytes(np.zeros((40, 28, 28), np.uint8))[:-100]),
        ["truncated: the header declares 40 x 28 x 28 = 31,360 bytes", "holds 31,260"]),
    "extra bytes": ("train-labels-idx1-ubyte", lambda p: p.write_bytes(
        idx_bytes(np.zeros(40, np.uint8)) + b"\x00"), ["longer than its header says"]),
    "count mismatch": ("train-labels-idx1-ubyte", lambda p: p.write_bytes(
        idx_bytes(np.zeros(39, np.uint8))),
        ["39 labels for the 40 images of train-images-idx3-ubyte"]),
    "label out of range": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(
        idx_bytes(np.full(20, 10, np.uint8))), ["label 10 found; allowed: 0 to 9"]),
    "huge header": ("train-images-idx3-ubyte", lambda p: p.write_bytes(
        struct.pack(">IIII", IMAGES, 2**31, 2**16, 2**16)),
        ["bytes of data; allowed: at most 2,147,483,648"]),
    "corrupt gzip": ("train-images-idx3-ubyte.gz", _corrupt_gzip,
                     ["truncated: the gzip stream ends early"]),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_a_malformed_file_is_one_line_naming_it(case: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    name, damage, expect = MALFORMED[case]
    root = tmp_path / "fm"
    fake_set(root, gz=name.endswith(".gz"))
    target = root / name
    damage(target)
    out = tmp_path / "run"
    line = _refused(["train", "fashion_mnist", "--out", str(out), "--set", f"data.root={root}",
                     "--set", "data.train_limit=null"], capsys)
    assert f"data.root: {target}: " in line, line
    for fragment in expect:
        assert fragment in line, line
    assert not out.exists()


def test_missing_files_name_the_folder_the_files_and_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fm"
    fake_set(root, gz=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    out = tmp_path / "run"
    line = _refused(["train", "fashion_mnist", "--out", str(out), "--set", f"data.root={root}"],
                    capsys)
    assert "fashion_mnist.yaml: data.root: " in line and str(root) in line
    assert "has no t10k-labels-idx1-ubyte of the files of data.dataset fashion_mnist (" in line
    assert "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images" in line
    assert "apt-get install dataset-fashion-mnist" in line
    assert "scripts/install_system_deps.sh data" in line
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"data.root: null -> '/nonexistent/x' has none of "
                                          r"the files of data.dataset fashion_mnist \(train-"):
        fashion_mnist.locate(Path("/nonexistent/x"), None)


def test_train_limit_sizes_the_memory_estimate_and_the_cost() -> None:
    from dino_ablate.launch.cost import estimate as cost
    from dino_ablate.sweep import Resources

    full = load_config("fashion_mnist", ["data.train_limit=null"])
    limited = load_config("fashion_mnist")
    assert memory.estimate(limited).data < memory.estimate(full).data / 2
    assert "data.train_limit 10000" in memory.estimate(limited).keys["data"]
    res = Resources()
    assert cost(full, res).device_hours == pytest.approx(6 * cost(limited, res).device_hours)


def _real_files_or_skip() -> None:
    try:
        fashion_mnist.locate(None, None)
    except ConfigError as exc:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({exc}); "
                    "`scripts/install_system_deps.sh data` installs it, as `make test` does")


def test_the_debian_files_load() -> None:
    _real_files_or_skip()
    train_x, train_y, test_x, test_y = fashion_mnist.load(None, None)
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
    assert 0 < train_x.mean() < 255


@pytest.mark.slow
def test_the_shipped_config_trains_on_the_debian_files(tmp_path: Path) -> None:
    _real_files_or_skip()
    out = tmp_path / "run"
    sets = ["epochs=2", "data.train_limit=512", "data.val_limit=256", "eval.every_epochs=1",
            "runtime.threads=1", "optim.warmup_epochs=1"]
    res = subprocess.run([sys.executable, "-m", "dino_ablate", "train", "fashion_mnist",
                          "--out", str(out), *[a for s in sets for a in ("--set", s)]],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "loss" in r][-1] == 2
    assert records[-1]["step"] == 16  # 512 images / batch 64, 2 epochs
    assert 0.1 < records[-1]["knn_teacher"] <= 1  # 10 classes: above chance after 2 epochs
    assert json.loads((out / "status.json").read_text())["state"] == "done"
