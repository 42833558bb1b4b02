"""The real loaders on data the test makes: an ImageFolder tree (ImageNet layout) and CIFAR-10's
python archive layout, each trained for one epoch through the CLI."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_ablate.config import ConfigError, load_config
from dino_ablate.data import load_data, train_subset
from tests.tiny import run_train

SMALL = ("epochs=1", "data.image_size=32", "data.global_crop_size=32", "data.local_crop_size=16",
         "data.num_local_crops=2", "model.patch_size=8", "optim.batch_size=8",
         "data.num_workers=1", "data.knn_train_limit=null", "data.val_limit=null")


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(40, 70)), int(rng.integers(40, 70)))
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.slow
def test_image_folder_trains(tmp_path: Path) -> None:
    _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    run_train(out, "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}", *SMALL)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2  # 16 training images / batch 8
    assert 0 <= records[-1]["knn_teacher"] <= 1


def _cifar_folder(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        entry = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in rng.integers(0, 10, n)]}
        with (folder / name).open("wb") as fh:
            pickle.dump(entry, fh)


@pytest.mark.slow
def test_cifar_folder_trains_without_download(tmp_path: Path) -> None:
    _cifar_folder(tmp_path / "cifar")
    out = tmp_path / "run"
    run_train(out, "data.dataset=cifar10", f"data.root={tmp_path / 'cifar'}", *SMALL)
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_missing_data_folder_is_a_config_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_train(out, "data.dataset=imagefolder", f"data.root={tmp_path / 'nope'}", *SMALL,
                    check=False)
    assert res.returncode == 2
    assert "data.root" in res.stderr and "nope" in res.stderr
    assert not out.exists()


def test_train_limit_cuts_cifar_and_digits_and_is_refused_for_image_folders(
        tmp_path: Path) -> None:
    _cifar_folder(tmp_path / "cifar")
    full = load_config("digits", ["data.dataset=cifar10", f"data.root={tmp_path / 'cifar'}",
                                  "data.image_size=32"])
    limited = load_config("digits", ["data.dataset=cifar10", f"data.root={tmp_path / 'cifar'}",
                                     "data.image_size=32", "data.train_limit=7"])
    all_images = load_data(full.data, torch.device("cpu"))
    some = load_data(limited.data, torch.device("cpu"))
    assert all_images.num_train == 20 and some.num_train == 7
    keep = train_subset(all_images.train_labels, 7)
    assert torch.equal(some.train, all_images.train[keep])
    assert torch.equal(some.val, all_images.val)  # the test split is never cut by it
    digits = load_data(load_config("digits", ["data.train_limit=700"]).data, torch.device("cpu"))
    assert digits.num_train == 700 and digits.val.shape[0] == 397
    with pytest.raises(ConfigError, match="data.train_limit: 5: data.dataset 'imagefolder'"):
        load_config("digits", ["data.dataset=imagefolder", "data.root=/x", "data.train_limit=5"])
