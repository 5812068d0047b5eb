"""Shared fixtures: small real models built inline, compiled through the real pipeline."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.model_io import serialize, to_proto
from onnxcomp.pass_base import CompileContext
from onnxcomp.pipeline import parse_pipeline


def make_model(nodes, inputs, outputs, inits, opset=17, ir_version=8, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()], **kw)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m


def tiny_mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {
        "W1": rng.laplace(0, 0.05, (64, 48)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 48).astype(np.float32),
        "W2": rng.laplace(0, 0.1, (10, 48)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {
        "conv.W": rng.normal(0, 0.2, (8, 1, 3, 3)).astype(np.float32),
        "conv.b": rng.normal(0, 0.1, 8).astype(np.float32),
        "bn.scale": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "bn.B": rng.normal(0, 0.1, 8).astype(np.float32),
        "bn.mean": rng.normal(0, 0.1, 8).astype(np.float32),
        "bn.var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "fc.W": rng.normal(0, 0.05, (8 * 4 * 4, 10)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.W", "conv.b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.W"], ["y"]),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)


# The tiny test models' tensors are a few thousand values: at the default step (int8's grid, one
# bit coarser) most of them are cheaper stored raw as int8 than entropy coded, so the tests of
# coding and decoding compile with the coarser signal-to-noise rule, whose tensors get coded.
CODED = "normalize,quantize{grid=rms bits=4},pack"


def compile_proto(proto: onnx.ModelProto, pipeline: str = CODED, context: CompileContext | None = None) -> onnx.ModelProto:
    model = ir.serde.deserialize_model(proto)
    parse_pipeline(pipeline).run(model, context or CompileContext(progress=False))
    return to_proto(model)


def compile_bytes(proto: onnx.ModelProto, pipeline: str = CODED) -> bytes:
    """The file bytes onnxcomp writes for ``proto`` compiled by ``pipeline`` (sealed, FORMAT.md
    section 8): what the runtime's decoders take."""
    return serialize(compile_proto(proto, pipeline))


def run(model_bytes_or_session, feeds, sess_options=None):
    import onnxruntime as ort

    sess = model_bytes_or_session
    if isinstance(sess, (bytes, onnx.ModelProto)):
        data = sess.SerializeToString() if isinstance(sess, onnx.ModelProto) else sess
        sess = ort.InferenceSession(data, sess_options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture
def mlp_input():
    return {"x": np.random.default_rng(7).random((16, 64)).astype(np.float32)}


@pytest.fixture
def cnn_input():
    return {"x": np.random.default_rng(7).random((4, 1, 8, 8)).astype(np.float32)}


def mnist_npz(path, input_name: str, shape: tuple[int, ...], n_train: int = 512, n_val: int = 256,
              labels: bool = True, pool: int = 1):
    """A small real data spec: the first MNIST train/val images (padded to 32x32 and average-pooled
    by ``pool`` when it is > 1, so pool=4 gives the 8x8 digits the tiny models take), reshaped to
    ``shape`` per sample, written as an .npz."""
    from onnxcomp.models.datasets import load_mnist

    mnist = load_mnist()
    arrays = {}
    for split, part, n in (("train", mnist.train, n_train), ("val", mnist.val, n_val)):
        images = part.images[:n].reshape(n, 28, 28)
        if pool > 1:
            side = 32
            padded = np.zeros((n, side, side), np.float32)
            padded[:, 2:30, 2:30] = images
            images = padded.reshape(n, side // pool, pool, side // pool, pool).mean(axis=(2, 4))
        arrays[f"{split}/{input_name}"] = images.reshape(n, *shape).astype(np.float32)
        if labels:
            arrays[f"{split}/labels"] = part.labels[:n]
    np.savez(path, **arrays)
    return str(path)
