"""Fashion-MNIST (Xiao et al. 2017) from its four idx files in a local folder; never downloaded.

Debian's `dataset-fashion-mnist` package installs them in `DEBIAN_FOLDER` (the folder used when
`data.root` is null): `apt-get install dataset-fashion-mnist`, or
`scripts/install_system_deps.sh data`. 60,000 train and 10,000 test images, 28 x 28 uint8
grey levels, 10 classes.

The idx format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic `0x0000 TT NN` (TT = 0x08
for unsigned bytes, NN the number of dimensions), NN big-endian uint32 sizes, then the values in
row-major order. Labels are `0x00000801` (N,), images `0x00000803` (N, rows, cols). A file may be
gzip-compressed (told by its first two bytes, whatever its name). A file that is not what its
name says is refused with one ConfigError naming it and what is wrong, before anything is
allocated from its header's sizes.

numpy only (no torch): the preflight checks import this module to find the files.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from dino_ablate.errors import ConfigError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
#: (images, labels) file names of each split, as distributed (each may end in .gz)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
LABEL_MAGIC = 0x00000801
IMAGE_MAGIC = 0x00000803
NUM_CLASSES = 10
#: the most bytes of data an idx file here may declare (Fashion-MNIST's train images: 47 MB)
MAX_DATA_BYTES = 2**31
INSTALL_HINT = ("install them with `apt-get install dataset-fashion-mnist` (or "
                "`scripts/install_system_deps.sh data`), or set data.root to a folder holding "
                "them; nothing is downloaded")


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"data.root: {os.fspath(path)}: {what}", key="data.root")


def folder(root: Path | None) -> Path:
    """The folder read: `data.root` (expanded), else the Debian package's."""
    return root if root is not None else DEBIAN_FOLDER


def locate(root: Path | None, shown_root: str | None) -> dict[str, Path]:
    """The path of each of the four files (plain or .gz) in `folder(root)`; one ConfigError
    naming data.root (`shown_root`, as the config gives it), the folder, the missing files and
    the fix when any is missing."""
    where = folder(root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in (n for pair in FILES.values() for n in pair):
        for candidate in (where / name, where / f"{name}.gz"):
            if _is_file(candidate):
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing:
        expected = ", ".join(n for pair in FILES.values() for n in pair)
        what = ("none of the files of data.dataset fashion_mnist" if len(missing) == len(FILES) * 2
                else f"no {', '.join(missing)} of the files of data.dataset fashion_mnist")
        shown = "null" if shown_root is None else repr(shown_root)
        raise ConfigError(f"data.root: {shown} -> {os.fspath(where)!r} has {what} ({expected}; "
                          f"each plain or .gz): {INSTALL_HINT}", key="data.root")
    return found


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _open(path: Path):  # type: ignore[no-untyped-def]
    """A binary reader of `path`, decompressing when it starts with the gzip magic."""
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of the idx file `path`, whose magic must be `magic` (LABEL_MAGIC: shape
    (N,); IMAGE_MAGIC: (N, rows, cols)). Bad magic, a short or long file, or a corrupt gzip
    stream: a ConfigError naming the file."""
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    try:
        with _open(path) as fh:
            header = fh.read(header_bytes)
            if len(header) < 4:
                raise _fail(path, f"truncated: {len(header)} bytes, shorter than the 4-byte "
                                  "idx magic")
            (found,) = struct.unpack(">I", header[:4])
            if found != magic:
                kind = "labels (idx1)" if magic == LABEL_MAGIC else "images (idx3)"
                raise _fail(path, f"bad magic 0x{found:08x}; expected 0x{magic:08x}, an idx "
                                  f"file of uint8 {kind}")
            if len(header) < header_bytes:
                raise _fail(path, f"truncated: the idx header needs {header_bytes} bytes, the "
                                  f"file has {len(header)}")
            shape = struct.unpack(f">{ndim}I", header[4:])
            size = math.prod(shape)  # a Python int: sizes near 2**32 each do not wrap
            declared = " x ".join(str(s) for s in shape)
            if size > MAX_DATA_BYTES:
                raise _fail(path, f"the header declares {declared} = {size:,} bytes of data; "
                                  f"allowed: at most {MAX_DATA_BYTES:,}")
            data = fh.read(size + 1)
    except EOFError as exc:  # gzip: the compressed stream stops early
        raise _fail(path, f"truncated: the gzip stream ends early ({exc})") from None
    except (OSError, zlib.error) as exc:
        raise _fail(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if len(data) != size:
        what = "truncated" if len(data) < size else "longer than its header says"
        got = f"{len(data):,}" if len(data) <= size else f"more than {size:,}"
        raise _fail(path, f"{what}: the header declares {declared} = {size:,} bytes of data, "
                          f"the file holds {got}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()  # writable, for torch


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, rows, cols) uint8, labels (N,) int64) of one split, checked to agree."""
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise _fail(labels_path, f"{labels.shape[0]:,} labels for the {images.shape[0]:,} "
                                 f"images of {images_path.name}; allowed: one label per image")
    if images.shape[1] != images.shape[2] or images.shape[0] == 0:
        raise _fail(images_path, f"images of {images.shape[1]} x {images.shape[2]} px, "
                                 f"{images.shape[0]} of them; allowed: at least one square image")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise _fail(labels_path, f"label {int(labels.max())} found; allowed: 0 to "
                                 f"{NUM_CLASSES - 1}")
    return images, labels.astype(np.int64)


def load(root: Path | None, shown_root: str | None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from `folder(root)`."""
    paths = locate(root, shown_root)
    train = read_split(*(paths[n] for n in FILES["train"]))
    test = read_split(*(paths[n] for n in FILES["test"]))
    if train[0].shape[1:] != test[0].shape[1:]:
        raise _fail(paths[FILES["test"][0]], f"images of {test[0].shape[1]} px, the train "
                                             f"images {train[0].shape[1]} px; allowed: the same")
    return train[0], train[1], test[0], test[1]
