"""Fixtures of the training-pass tests: a tiny MLP on disk and real MNIST digits it can read."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import mnist_npz, tiny_mlp


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The first 512/256 MNIST train/val digits pooled to 8x8, as input ``x`` of ``tiny_mlp``."""
    return mnist_npz(tmp_path_factory.mktemp("data") / "digits.npz", "x", (64,), pool=4)


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    return path
