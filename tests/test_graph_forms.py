"""Graph forms real exports bring, each compressed, run and decompressed: 0-d constants (scalar
Gather indices in shape arithmetic), empty float tensors (a Resize ``roi`` of shape [0]), weights
inside If bodies. Every path (decode at load, ``decompress``) must give valid ONNX whose outputs
equal each other's bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import onnxcomp.runtime as rt
from onnxcomp.compile import compress
from onnxcomp.decompress import decompress
from onnxcomp.inspection import inspect_model
from tests.conftest import make_model


def scalar_index_model() -> onnx.ModelProto:
    """y = Reshape(x @ W, [N, 2, 16]) with N from Shape(x)[0]: a 0-d Gather index and a 1-element
    Concat the exporters write for dynamic batch reshapes; plus an empty Resize roi."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(0, 0.1, (24, 32)).astype(np.float32),
             "zero": np.array(0, np.int64),                 # 0-d: Gather index
             "rest": np.array([2, 16], np.int64),
             "roi": np.zeros(0, np.float32),                # empty float tensor
             "scales": np.array([1.0, 1.0, 2.0], np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),   # 0-d output
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Resize", ["r", "roi", "scales"], ["y"], mode="nearest")]
    inits["axes"] = np.array([0], np.int64)
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 32])], inits)


def plain_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_zero_d_constants_and_empty_tensors_survive_every_path(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(scalar_index_model(), src)
    out = tmp_path / "c.onnx"
    report = compress(src, out, "ptq", progress=False)
    assert {r["name"] for r in report["tensors"]} >= {"W"}
    feeds = {"x": np.random.default_rng(1).random((3, 24)).astype(np.float32)}
    (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    onnx.checker.check_model(onnx.load(plain))
    scalars = {t.name: list(t.dims) for t in onnx.load(plain).graph.initializer}
    assert scalars["zero"] == [] and scalars["roi"] == [0]
    (decompressed,) = plain_run(plain, feeds)
    np.testing.assert_array_equal(decompressed, loaded)
    assert loaded.shape == (3, 2, 32)


def if_body_model() -> onnx.ModelProto:
    """Weights in Constant nodes inside both branches of an If, as silero-vad's export has them."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)

    def branch(name):
        w = rng.normal(0, 0.1, (24, 16)).astype(np.float32)
        const = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(w))
        mm = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])
        return helper.make_graph([const, mm], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 16])])

    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24]),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], {})


def test_inspect_and_compress_count_the_same_weights_inside_if_bodies(tmp_path):
    src = tmp_path / "if.onnx"
    onnx.save(if_body_model(), src)
    info = inspect_model(src)
    out = tmp_path / "c.onnx"
    report = compress(src, out, "ptq", progress=False)
    assert info["payload_bytes"] == report["original_payload_bytes"] == 2 * 24 * 16 * 4
    assert {t["name"] for t in info["plain_tensors"]} == {"then_w", "else_w"}
    feeds = {"x": np.random.default_rng(1).random((3, 24)).astype(np.float32)}
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    for cond in (True, False):
        feeds["cond"] = np.array(cond)
        (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
        np.testing.assert_array_equal(plain_run(plain, feeds)[0], loaded)
