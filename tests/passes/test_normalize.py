"""normalize: Constant weights lifted (also from If bodies), initializer inputs dropped,
duplicates merged, old opsets converted, BatchNorm folded, with outputs unchanged in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import ModelError
from onnxcomp.passes.normalize import NormalizePass

from ..conftest import make_model, run, tiny_cnn


def normalized(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    model = ir.serde.deserialize_model(proto)
    NormalizePass(**options)(model)
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    return out


def test_constant_weights_in_main_graph_and_if_body_are_lifted():
    rng = np.random.default_rng(0)
    w_then = rng.normal(size=(4, 3)).astype(np.float32)
    w_else = rng.normal(size=(4, 3)).astype(np.float32)
    w_main = rng.normal(size=(3, 3)).astype(np.float32)

    def branch(name, w):
        const = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(w))
        mm = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])
        return helper.make_graph([const, mm], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 3])])

    nodes = [
        helper.make_node("Constant", [], ["wm"], value=numpy_helper.from_array(w_main)),
        helper.make_node("If", ["cond"], ["z"], then_branch=branch("then", w_then), else_branch=branch("else", w_else)),
        helper.make_node("MatMul", ["z", "wm"], ["y"]),
    ]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], {})
    out = normalized(proto)
    assert not any(n.op_type == "Constant" for n in out.graph.node)
    if_node = next(n for n in out.graph.node if n.op_type == "If")
    for attr in if_node.attribute:
        assert not any(n.op_type == "Constant" for n in attr.g.node)
        assert len(attr.g.initializer) == 0
    assert len(out.graph.initializer) == 3
    x = rng.random((2, 4)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_array_equal(run(out, feeds)[0], run(proto, feeds)[0])


def test_initializer_inputs_dropped_and_duplicates_merged():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["x", "b"], ["k"]),
             helper.make_node("Add", ["h", "k"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], {"a": w, "b": w.copy()})
    out = normalized(proto)
    assert [i.name for i in out.graph.input] == ["x"]
    assert len(out.graph.initializer) == 1


def test_old_opset_is_converted():
    w = np.ones((3, 2), np.float32)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], {"w": w}, opset=9, ir_version=4)
    out = normalized(proto)
    assert out.opset_import[0].version == 17
    assert out.ir_version <= 10


def test_unconvertible_opset_names_the_opset():
    proto = make_model([helper.make_node("Upsample", ["x", "s"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
                       {"s": np.array([1, 1, 2, 2], np.float32)}, opset=1, ir_version=3)
    with pytest.raises(ModelError, match="opset 1"):
        normalized(proto)


def test_batchnorm_folds_into_conv_with_same_outputs(cnn_input):
    proto = tiny_cnn()
    out = normalized(proto)
    assert not any(n.op_type == "BatchNormalization" for n in out.graph.node)
    np.testing.assert_allclose(run(out, cnn_input)[0], run(proto, cnn_input)[0], rtol=1e-5, atol=1e-5)
    kept = normalized(proto, fold_batchnorm=False)
    assert any(n.op_type == "BatchNormalization" for n in kept.graph.node)


def test_batchnorm_folds_into_gemm():
    rng = np.random.default_rng(3)
    inits = {"W": rng.normal(size=(6, 5)).astype(np.float32), "C": rng.normal(size=5).astype(np.float32),
             "s": rng.uniform(0.5, 2, 5).astype(np.float32), "B": rng.normal(size=5).astype(np.float32),
             "m": rng.normal(size=5).astype(np.float32), "v": rng.uniform(0.5, 2, 5).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["g"], beta=0.5),
             helper.make_node("BatchNormalization", ["g", "s", "B", "m", "v"], ["y"], epsilon=1e-3)]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    out = normalized(proto)
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert out.graph.output[0].name == "y"
    x = rng.random((4, 6)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_tensors_that_agree_on_the_sampled_fingerprint_but_differ_elsewhere_are_both_kept():
    from onnxcomp.passes.normalize import FINGERPRINT_SAMPLES

    # Deduplication groups by a sample of evenly spaced elements, then compares every byte:
    # b differs from a only between the sampled elements, c equals a exactly.
    n = 8 * FINGERPRINT_SAMPLES
    a = np.random.default_rng(0).standard_normal((n // 8, 8)).astype(np.float32)
    b = a.copy()
    b.reshape(-1)[3] += 1.0  # element 3 is not on the sample's stride
    c = a.copy()
    nodes = [helper.make_node("MatMul", ["x", name], [f"y{name}"]) for name in "abc"]
    nodes.append(helper.make_node("Sum", ["ya", "yb", "yc"], ["y"]))
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n // 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], {"a": a, "b": b, "c": c})
    out = normalized(proto)
    assert sorted(i.name for i in out.graph.initializer) == ["a", "b"]
    feeds = {"x": np.random.default_rng(1).standard_normal((2, n // 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(proto, feeds)[0])
