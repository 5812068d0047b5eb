"""Data specs on real data: MNIST splits, Fashion-MNIST IDX files, .npz layouts, every DataError."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from onnxcomp.data import Split, batches, load_data
from onnxcomp.errors import DataError
from onnxcomp.metrics import classification_error
from onnxcomp.models.datasets import FASHION_MNIST_DIR, load_fashion_mnist, read_idx

IMAGE = {"input": ("N", 1, 28, 28)}
FLAT = {"input": (None, 784)}


def test_mnist_splits_are_50k_10k_10k_and_reshaped_to_the_model():
    data = load_data("mnist", IMAGE)
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    images = data.test.inputs["input"]
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() < 1.0
    assert data.test.labels.dtype == np.int64 and set(np.unique(data.test.labels)) == set(range(10))
    flat = load_data("mnist", FLAT).test.inputs["input"]
    np.testing.assert_array_equal(flat, images.reshape(10_000, 784))


def test_split_suffix_keeps_only_that_split():
    data = load_data("mnist:test", {"pixels": ("batch", 28, 28)})
    assert data.train is None and data.val is None
    assert data.test.inputs["pixels"].shape == (10_000, 28, 28)
    with pytest.raises(DataError, match="has no train split"):
        data.split("train")


def test_unknown_spec_and_unfit_models_are_named():
    with pytest.raises(DataError, match="'cifar10'"):
        load_data("cifar10", IMAGE)
    with pytest.raises(DataError, match=r"shape \(10000, 784\).*\[.N., 1, 32, 32\]"):
        load_data("mnist:test", {"input": ("N", 1, 32, 32)})
    with pytest.raises(DataError, match=r"inputs \['a', 'b'\]"):
        load_data("mnist", {"a": ("N", 784), "b": ("N", 784)})
    with pytest.raises(DataError, match="dynamic dims are taken as they are"):
        load_data("mnist", {"input": ("N", 1, "H", "W")})


def test_dynamic_dims_take_arrays_as_they_are(tmp_path):
    """An OCR-like input [N, 3, 48, W]: the width is the data's, the fixed dims must match."""
    x = np.zeros((4, 3, 48, 320), np.float32)
    np.savez(tmp_path / "lines.npz", x=x)
    data = load_data(str(tmp_path / "lines.npz"), {"x": ("N", 3, 48, "W")})
    assert data.val.inputs["x"].shape == (4, 3, 48, 320)
    with pytest.raises(DataError, match="does not fit"):
        load_data(str(tmp_path / "lines.npz"), {"x": ("N", 1, 48, "W")})


def test_plain_npz_is_one_evaluation_set(tmp_path):
    x = np.random.default_rng(0).random((20, 784), dtype=np.float32)
    labels = np.arange(20, dtype=np.int32) % 10
    np.savez(tmp_path / "eval.npz", input=x, labels=labels)
    data = load_data(str(tmp_path / "eval.npz"), IMAGE)
    assert data.train is None and data.val is data.test
    np.testing.assert_array_equal(data.test.inputs["input"].reshape(20, 784), x)
    assert data.test.labels.dtype == np.int64 and list(data.test.labels) == list(labels)


def test_split_prefixed_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "train/a": rng.random((8, 3)), "train/b": rng.random((8, 2, 2)), "train/labels": np.ones(8, np.int64),
        "test/a": rng.random((4, 3)), "test/b": rng.random((4, 4)),
    }  # fmt: skip
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_data(f"{tmp_path / 'd.npz'}", {"a": ("N", 3), "b": ("N", 4)})
    assert data.val is None and len(data.train) == 8 and data.test.labels is None
    assert data.train.inputs["b"].shape == (8, 4) and data.train.inputs["b"].dtype == np.float32
    only = load_data(f"{tmp_path / 'd.npz'}:test", {"a": ("N", 3), "b": ("N", 4)})
    assert only.train is None and len(only.test) == 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"other": np.zeros((4, 784))}, r"no array \['input'\]"),
        ({"input": np.zeros((4, 783))}, r"'input' of shape \(4, 783\)"),
        ({"input": np.zeros((4, 784)), "labels": np.zeros(4, np.float32)}, "labels must be integers"),
        ({"input": np.zeros((4, 784)), "labels": np.zeros(3, np.int64)}, r"shape \(4,\), got int64 \(3,\)"),
        ({"train/input": np.zeros((4, 784)), "input": np.zeros((4, 784))}, r"mixes .* \['input'\]"),
        ({"dev/input": np.zeros((4, 784))}, r"prefix \['dev'\]"),
        ({"input": np.array(["a", "b"])}, "not numeric"),
    ],
)
def test_bad_npz_raises_naming_the_culprit(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data(str(tmp_path / "bad.npz"), IMAGE)


def test_missing_npz_and_missing_split(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "absent.npz"), IMAGE)
    np.savez(tmp_path / "v.npz", input=np.zeros((2, 784)))
    with pytest.raises(DataError, match="has no train split"):
        load_data(f"{tmp_path / 'v.npz'}:train", IMAGE)


def test_batches_cover_the_split_and_shuffle_by_seed():
    split = load_data("mnist:val", FLAT).val
    sizes = [len(b) for b in batches(split, 3000)]
    assert sizes == [3000, 3000, 3000, 1000]
    first = [b.labels for b in batches(split, 4096, shuffle_seed=7)]
    again = [b.labels for b in batches(split, 4096, shuffle_seed=7)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.sort(split.labels))
    assert not np.array_equal(np.concatenate(first), split.labels)
    with pytest.raises(DataError, match="batch size"):
        next(batches(split, 0))


def test_classification_error_counts_wrong_argmax():
    labels = load_data("mnist:test", FLAT).test.labels
    one_hot = np.eye(10, dtype=np.float32)[labels]
    one_hot[:37] = np.roll(one_hot[:37], 1, axis=1)  # 37 predictions made wrong on purpose
    split = Split({"logits": one_hot}, labels)
    assert classification_error(lambda inputs: inputs["logits"], split, batch_size=999) == 37 / 10_000
    with pytest.raises(DataError, match="needs labels"):
        classification_error(lambda inputs: inputs["logits"], Split({"logits": one_hot}, None))
    with pytest.raises(DataError, match=r"shape \(999,\)"):
        classification_error(lambda inputs: inputs["logits"][:, 0], split, batch_size=999)


def write_idx(path, array: np.ndarray) -> None:
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def test_fashion_mnist_loader_on_small_idx_files(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60, dtype=np.uint8) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", train[:12])  # uncompressed files work too
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(12, np.uint8))
    splits = load_fashion_mnist(tmp_path)
    assert (len(splits.train.images), len(splits.val.images), len(splits.test.images)) == (50, 10, 12)
    np.testing.assert_allclose(splits.val.images, train[50:] / 255.0, rtol=1e-6)
    assert list(splits.val.labels) == list(range(10)) and splits.val.labels.dtype == np.int64
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte"), train[:12])


def test_broken_idx_files_raise(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 2), np.int32))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"\(3, 2\)"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="t10k|train"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_package():
    data = load_data("fashion-mnist", IMAGE)
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.train.inputs["input"].shape == (50_000, 1, 28, 28) and data.test.inputs["input"].max() == 1.0
    assert np.bincount(data.test.labels).tolist() == [1000] * 10


def test_npz_arrays_take_each_inputs_declared_type(tmp_path):
    """Token ids stay integers (a model with an int64 input must not get float32), integers for a
    float input are numbers, and fractional ids are refused, naming the array."""
    path = tmp_path / "calib.npz"
    ids = np.arange(48, dtype=np.int32).reshape(3, 16)
    np.savez(path, ids=ids, x=np.ones((3, 4), np.int64))
    shapes = {"ids": ("N", 16), "x": ("N", 4)}
    data = load_data(str(path), shapes, {"ids": np.dtype(np.int64), "x": np.dtype(np.float32)})
    assert data.val.inputs["ids"].dtype == np.int64 and data.val.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(data.val.inputs["ids"], ids)
    np.savez(path, ids=ids + 0.5, x=np.ones((3, 4)))
    with pytest.raises(DataError, match="'ids' holds fractional values; model input 'ids' is int64"):
        load_data(str(path), shapes, {"ids": np.dtype(np.int64)})
    np.savez(path, ids=ids - 1000, x=np.ones((3, 4)))
    with pytest.raises(DataError, match="outside uint8"):
        load_data(str(path), shapes, {"ids": np.dtype(np.uint8)})


def test_a_0d_input_is_shared_by_every_sample_and_batch():
    """A sample rate or a branch flag is one value for the whole split, not a sample axis."""
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    split = Split({"x": x, "sr": np.array(16000, np.int64)}, None)
    assert len(split) == 5
    parts = list(batches(split, 2))
    assert [len(b) for b in parts] == [2, 2, 1]
    assert all(b.inputs["sr"].shape == () and int(b.inputs["sr"]) == 16000 for b in parts)
    np.testing.assert_array_equal(np.concatenate([b.inputs["x"] for b in parts]), x)


def test_npz_scalars_and_batch_one_samples(tmp_path):
    """What users save: a scalar input once or once per sample (all equal), and each sample as a
    whole batch-1 input ([N, 1, T] for a [batch, T] input)."""
    audio = np.random.default_rng(0).random((6, 1, 32)).astype(np.float32)
    np.savez(tmp_path / "a.npz", audio=audio, sr=np.full(6, 16000, np.int64))
    data = load_data(str(tmp_path / "a.npz"), {"audio": (None, None), "sr": ()}, {"audio": np.float32, "sr": np.int64})
    assert data.val.inputs["audio"].shape == (6, 32) and data.val.inputs["sr"].shape == ()
    np.testing.assert_array_equal(data.val.inputs["audio"], audio[:, 0])
    np.savez(tmp_path / "b.npz", audio=audio, sr=np.array([16000, 8000, 16000, 16000, 16000, 16000]))
    with pytest.raises(DataError, match="'sr' is a scalar, shared by every sample.*2 different values"):
        load_data(str(tmp_path / "b.npz"), {"audio": (None, None), "sr": ()}, {"audio": np.float32, "sr": np.int64})


def test_a_one_split_spec_is_split_for_training_deterministically(tmp_path):
    from onnxcomp.data import HELD_OUT_EVERY, split_for_training

    x = np.arange(23 * 4, dtype=np.float32).reshape(23, 4)
    labels = np.arange(23) % 3
    np.savez(tmp_path / "flat.npz", x=x, labels=labels)
    data = load_data(str(tmp_path / "flat.npz"), {"x": ("N", 4)})
    assert data.train is None and len(data.val) == 23
    split = split_for_training(data)
    held = np.arange(23)[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    assert len(split.train) == 23 - len(held) and len(split.val) == len(held) == 4
    np.testing.assert_array_equal(split.val.inputs["x"], x[held])
    np.testing.assert_array_equal(split.val.labels, labels[held])
    assert not set(split.train.inputs["x"][:, 0]) & set(split.val.inputs["x"][:, 0])
    assert split_for_training(split) is split  # a spec with a train split stays as it is
    np.savez(tmp_path / "one.npz", x=x[:1])
    with pytest.raises(DataError, match="1 sample"):
        split_for_training(load_data(str(tmp_path / "one.npz"), {"x": ("N", 4)}))
