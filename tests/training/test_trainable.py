"""The trainable form: every rewrite equals its node (on a batch size it was not built on), trains
in real ORT training, and what cannot be rewritten is one named error before any step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import TrainingError
from onnxcomp.training import trainable
from onnxcomp.training.session import TrainingSession, generate_artifacts
from onnxcomp.training.trainable import trainable_form

RNG = np.random.default_rng(0)
C, H, W = 2, 6, 6


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def conv_then(nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto] = (), opset: int = 17,
              x_dims=("N", C, H, W)) -> onnx.ModelProto:
    """x -> Conv(weight "w") -> h -> ``nodes`` -> y: the rewritten node sits between a trained
    weight and the output, as in a real network."""
    w = const("w", RNG.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.5)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], name="conv")] + nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *extra])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def one(op: str, inputs=("h",), **attrs) -> list[onnx.NodeProto]:
    return [helper.make_node(op, list(inputs), ["y"], name=f"the_{op.lower()}", **attrs)]


CASES = {
    "HardSigmoid": lambda: conv_then(one("HardSigmoid", alpha=0.3, beta=0.4)),
    "HardSwish": lambda: conv_then(one("HardSwish")),
    "Softplus": lambda: conv_then(one("Softplus")),
    "Softsign": lambda: conv_then(one("Softsign")),
    "Elu": lambda: conv_then(one("Elu", alpha=0.7)),
    "Selu": lambda: conv_then(one("Selu")),
    "Celu": lambda: conv_then(one("Celu", alpha=1.5)),
    "ThresholdedRelu": lambda: conv_then(one("ThresholdedRelu", alpha=0.2)),
    "PRelu": lambda: conv_then(one("PRelu", ("h", "slope")), [const("slope", np.float32([[[0.1]], [[0.3]]]))]),
    "Sum": lambda: conv_then(one("Sum", ("h", "x", "h"))),
    "Dropout": lambda: conv_then([helper.make_node("Dropout", ["h"], ["d"], name="drop"),
                                  helper.make_node("Relu", ["d"], ["y"])]),
    "BatchNormalization": lambda: conv_then(one("BatchNormalization", ("h", "s", "b", "m", "v")), [
        const("s", np.float32([1.5, 0.5])), const("b", np.float32([0.1, -0.2])),
        const("m", np.float32([0.3, -0.1])), const("v", np.float32([2.0, 0.7]))]),
    "LayerNormalization": lambda: conv_then(one("LayerNormalization", ("h", "s6", "b6"), axis=-1), [
        const("s6", RNG.standard_normal(W).astype(np.float32)), const("b6", RNG.standard_normal(W).astype(np.float32))]),
    "InstanceNormalization": lambda: conv_then(one("InstanceNormalization", ("h", "s", "b")), [
        const("s", np.float32([1.5, 0.5])), const("b", np.float32([0.1, -0.2]))]),
    "AveragePool": lambda: conv_then(one("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                         ceil_mode=1, count_include_pad=0)),
    "ReduceMax": lambda: conv_then(one("ReduceMax", axes=[2, 3], keepdims=1)),
    "ReduceMin": lambda: conv_then(one("ReduceMin", axes=[1], keepdims=0)),
    "ReduceSumSquare": lambda: conv_then(one("ReduceSumSquare", axes=[1, 3], keepdims=1)),
    "GlobalMaxPool": lambda: conv_then(one("GlobalMaxPool")),
    "Resize": lambda: conv_then(one("Resize", ("h", "", "scales"), mode="linear"), [const("scales", np.float32([1, 1, 2, 1.5]))]),
    "ConvTranspose": lambda: conv_then(one("ConvTranspose", ("h", "wt", "bt"), strides=[2, 2], pads=[1, 1, 1, 1],
                                           output_padding=[1, 1], group=1), [
        const("wt", RNG.standard_normal((C, 3, 3, 3)).astype(np.float32)), const("bt", np.float32([0.1, 0.2, 0.3]))]),
    # a target shape computed from the data: N from Shape, the rest fixed
    "Reshape": lambda: conv_then([helper.make_node("Shape", ["h"], ["s"]),
                                  helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                                  helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
                                  helper.make_node("Reshape", ["h", "target"], ["y"], name="flatten")],
                                 [const("zero", np.int64([0])), const("rest", np.int64([C * H * W]))]),
}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x})[0]


def sample(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, H, W)).astype(np.float32)


def one_training_step(model: onnx.ModelProto, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """A real ORT training step through the graph (loss = mean(y^2)); the weight before and after."""
    loss_model = onnx.ModelProto.FromString(model.SerializeToString())
    g = loss_model.graph
    g.node.extend([helper.make_node("Mul", ["y", "y"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["loss"], keepdims=0)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    session = TrainingSession(generate_artifacts(loss_model, ["w"], [], tmp_path / "artifacts"), lr=0.01)
    before = session.parameters(trainable_only=True)["w"]
    session.step({"x": sample(3, seed=2)})
    return before, session.parameters(trainable_only=True)["w"]


@pytest.mark.parametrize("op", sorted(CASES))
def test_rewrite_equals_the_node_on_another_batch_and_trains(op, tmp_path):
    model = CASES[op]()
    form = trainable_form(model, {"x": sample(3)}, ["x"], ["w"], "test")
    assert form.rewritten[op] == 1, form.summary()
    assert op in form.summary()
    assert all(n.op_type != op for n in form.model.graph.node if n.op_type not in ("LayerNormalization", "Reshape"))
    # The batch stays free: 5 samples, not the 3 the form was built on.
    x = sample(5, seed=3)
    expected, got = run(model, x), run(form.model, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    before, after = one_training_step(form.model, tmp_path)
    assert np.isfinite(after).all() and not np.array_equal(before, after)


def test_input_dims_after_the_batch_are_pinned_and_the_model_is_not_modified():
    model = CASES["GlobalMaxPool"]()
    original = model.SerializeToString()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    form = trainable_form(model, {"x": sample(3)}, ["x"], ["w"], "test")
    dims = form.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [C, H, W]
    assert form.pinned == {"x": [None, C, H, W]}
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = H
    assert model.SerializeToString() == original


def test_a_graph_needing_no_rewrite_says_so():
    form = trainable_form(conv_then(one("Relu")), {"x": sample(3)}, ["x"], ["w"], "test")
    assert not form.rewritten and form.summary().startswith("training form: no op rewritten")


def test_hard_sigmoid_really_has_no_gradient_in_ort_training(tmp_path):
    """Why the form exists: the untouched graph does not build (if a newer ORT training can, the
    rewrite list is due for a review)."""
    with pytest.raises(TrainingError, match="HardSigmoid"):
        one_training_step(CASES["HardSigmoid"](), tmp_path)


def test_an_opset_11_graph_is_converted():
    nodes = [helper.make_node("Split", ["h"], ["a", "b"], axis=1, split=[1, 1]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    form = trainable_form(conv_then(nodes, opset=11), {"x": sample(3)}, ["x"], ["w"], "test")
    assert form.converted_from == 11
    assert trainable.default_opset(form.model) == trainable.TRAINING_OPSET
    assert "opset 11 -> 17" in form.summary()


def test_an_op_without_gradient_is_named_before_training():
    nodes = [helper.make_node("CumSum", ["h", "axis"], ["y"], name="running_total")]
    with pytest.raises(TrainingError, match=r"running_total \(CumSum: no gradient builder\)"):
        trainable_form(conv_then(nodes, [const("axis", np.int64(1))]), {"x": sample(3)}, ["x"], ["w"], "finetune")


def test_an_untrainable_op_off_the_weights_path_is_not_refused():
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["c"]), helper.make_node("Add", ["h", "c"], ["y"])]
    form = trainable_form(conv_then(nodes, [const("axis", np.int64(1))]), {"x": sample(3)}, ["x"], ["w"], "test")
    assert not form.rewritten


def test_a_rewrite_that_does_not_reproduce_its_node_is_caught(monkeypatch):
    real = trainable._Rewriter._HardSigmoid

    def off_by_a_little(self, node):
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.attribute[0].f *= 1.1  # alpha
        return real(self, node)

    monkeypatch.setattr(trainable._Rewriter, "_HardSigmoid", off_by_a_little)
    with pytest.raises(TrainingError, match=r"HardSigmoid node 'the_hardsigmoid'.*changed by"):
        trainable_form(CASES["HardSigmoid"](), {"x": sample(3)}, ["x"], ["w"], "test")


def test_a_graph_that_does_not_run_on_the_samples_is_a_training_error():
    with pytest.raises(TrainingError, match="does not run on the training samples"):
        trainable_form(conv_then(one("Relu")), {"x": np.zeros((3, C + 1, H, W), np.float32)}, ["x"], ["w"], "test")


def test_a_node_reading_a_graph_input_directly_is_rewritten():
    nodes = [helper.make_node("GlobalMaxPool", ["x"], ["m"]), helper.make_node("Add", ["h", "m"], ["y"])]
    model = conv_then(nodes)
    form = trainable_form(model, {"x": sample(3)}, ["x"], ["w"], "test")
    assert form.rewritten["GlobalMaxPool"] == 1
    np.testing.assert_allclose(run(form.model, sample(4, seed=5)), run(model, sample(4, seed=5)), rtol=1e-5)


def recurrent(op: str, direction: str, gates: int, outputs=("y", "y_h")) -> onnx.ModelProto:
    """x [T, N, 3] -> MatMul(weight "w") -> op (hidden 4) -> outputs."""
    d = 2 if direction == "bidirectional" else 1
    inits = [const("w", RNG.standard_normal((3, 3)).astype(np.float32)),
             const("W", RNG.standard_normal((d, gates * 4, 3)).astype(np.float32) * 0.5),
             const("R", RNG.standard_normal((d, gates * 4, 4)).astype(np.float32) * 0.5),
             const("B", RNG.standard_normal((d, 2 * gates * 4)).astype(np.float32) * 0.1),
             const("h0", RNG.standard_normal((d, 3, 4)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node(op, ["h", "W", "R", "B", "", "h0"], list(outputs), name="rnn", direction=direction, hidden_size=4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3, 3])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op, direction, gates, h0", [("LSTM", "bidirectional", 4, True), ("LSTM", "reverse", 4, True),
                                                      ("LSTM", "forward", 4, False), ("GRU", "bidirectional", 3, True),
                                                      ("GRU", "reverse", 3, False), ("GRU", "forward", 3, True)])
def test_a_recurrence_becomes_the_form_its_gradient_kernel_runs(op, direction, gates, h0, tmp_path):
    model = recurrent(op, direction, gates)
    if not h0:
        model.graph.node[1].input[5] = ""
    x = np.random.default_rng(4).standard_normal((5, 3, 3)).astype(np.float32)
    form = trainable_form(model, {"x": x}, ["x"], ["w"], "test")
    assert form.rewritten[op] == 1
    assert {_direction(n) for n in form.model.graph.node if n.op_type == op} == {"forward"}
    x2 = np.random.default_rng(5).standard_normal((5, 3, 3)).astype(np.float32)
    for a, b in zip(_run_all(model, x2), _run_all(form.model, x2)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    loss_model = onnx.ModelProto.FromString(form.model.SerializeToString())
    g = loss_model.graph
    g.node.extend([helper.make_node("Mul", ["y", "y"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["loss"], keepdims=0)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    assert form.anchors == ["onnxcomp.trainable.anchor"]  # W, R, B are constants here: LSTMGrad needs them trained
    session = TrainingSession(generate_artifacts(loss_model, ["w", *form.anchors], [], tmp_path / "a"), lr=0.01)
    before = session.parameters(trainable_only=True)["w"]
    session.step({"x": x2})
    assert not np.array_equal(before, session.parameters(trainable_only=True)["w"])


def test_a_bidirectional_recurrence_with_sequence_lengths_is_named():
    model = recurrent("LSTM", "bidirectional", 4)
    model.graph.node[1].input[4] = "lens"
    model.graph.initializer.append(const("lens", np.int32([5, 4, 5])))
    with pytest.raises(TrainingError, match=r"rnn \(LSTM: its gradient kernel takes the forward direction only"):
        trainable_form(model, {"x": np.ones((5, 3, 3), np.float32)}, ["x"], ["w"], "test")


def _direction(node) -> str:
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "direction"), b"forward")
    return value.decode() if isinstance(value, bytes) else value


def _run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_a_quantize_dequantize_pair_becomes_fake_quant_and_trains(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["h", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dq"),
             helper.make_node("Relu", ["d"], ["y"])]
    model = conv_then(nodes, [const("s", np.float32(0.02)), const("zp", np.uint8(100))])
    form = trainable_form(model, {"x": sample(3)}, ["x"], ["w"], "test")
    assert form.rewritten == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert [n.op_type for n in form.model.graph.node].count("FakeQuant") == 1
    x = sample(4, seed=6)
    np.testing.assert_array_equal(run(form.model, x), run(model, x))
    before, after = one_training_step(form.model, tmp_path)
    assert not np.array_equal(before, after)
