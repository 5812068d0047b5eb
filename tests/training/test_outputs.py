"""Output kinds: what each output is, how far a candidate moved it, and the distillation loss that
follows from it (real ORT training graphs, values checked against numpy)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import Split
from onnxcomp.errors import DataError, PipelineError
from onnxcomp.training.losses import Teacher, loss_graph, resolve_loss, task_feed
from onnxcomp.training.outputs import ChangeMeter, OutputKind, infer_kinds, parse_declarations
from onnxcomp.training.session import TrainingSession, generate_artifacts

RNG = np.random.default_rng(0)


def model_with(nodes, outputs, x_shape=("N", 8), extra=(), x_type=TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> MatMul(w) -> h -> ``nodes``; ``outputs`` are (name, elem type)."""
    w = numpy_helper.from_array(RNG.standard_normal((8, 12)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"])] + nodes, "g",
                              [helper.make_tensor_value_info("x", x_type, list(x_shape)), *extra],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model, feed) -> dict[str, np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


def kinds_of(model, feed, batch, declared=None) -> dict[str, OutputKind]:
    return {k.name: k for k in infer_kinds(model, run(model, feed), batch, declared)}


def test_each_output_gets_its_kind():
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])
    nodes = [helper.make_node("Reshape", ["h", "shape"], ["frames"]),               # [N, 3, 4]
             helper.make_node("Softmax", ["frames"], ["per_frame"], axis=2),      # OCR-like per-frame classes
             helper.make_node("LogSoftmax", ["h"], ["log_probs"], axis=1),
             helper.make_node("Reshape", ["h", "embed_shape"], ["embedding"]),    # [N, 1, 1, 12]: no class axis
             helper.make_node("Identity", ["ids"], ["ids_out"]),                  # a pass-through of an input
             helper.make_node("Identity", ["x"], ["x_out"])]
    model = model_with(nodes, [("per_frame", 1), ("log_probs", 1), ("embedding", 1), ("ids_out", 7), ("x_out", 1)],
                       extra=[ids])
    model.graph.initializer.extend([numpy_helper.from_array(np.int64([-1, 3, 4]), "shape"),
                                    numpy_helper.from_array(np.int64([-1, 1, 1, 12]), "embed_shape")])
    feed = {"x": RNG.standard_normal((5, 8)).astype(np.float32), "ids": np.zeros((5, 3), np.int64)}
    k = kinds_of(model, feed, 5)
    assert (k["per_frame"].kind, k["per_frame"].axis, k["per_frame"].probabilities) == ("classes", 2, True)
    assert (k["log_probs"].kind, k["log_probs"].axis, k["log_probs"].probabilities) == ("classes", 1, False)
    assert (k["embedding"].kind, k["embedding"].axis) == ("values", 3)   # never softmaxed over a size-1 axis
    assert k["ids_out"].kind == "ignore" and "int64" in k["ids_out"].why
    assert k["x_out"].kind == "ignore" and "no weight" in k["x_out"].why


def test_a_sequence_first_output_of_a_batch_one_export_has_its_samples_on_axis_1():
    nodes = [helper.make_node("Reshape", ["h", "shape"], ["y"])]   # [1, 12] -> [6, 1, 2]: [T, N, C]
    model = model_with(nodes, [("y", 1)], x_shape=(1, 8))
    model.graph.initializer.append(numpy_helper.from_array(np.int64([6, 1, 2]), "shape"))
    k = kinds_of(model, {"x": RNG.standard_normal((1, 8)).astype(np.float32)}, 1)["y"]
    assert (k.kind, k.batch_axis, k.axis) == ("values", 1, 2)
    declared = kinds_of(model, {"x": RNG.standard_normal((1, 8)).astype(np.float32)}, 1, {"y": ("classes", -1)})["y"]
    assert (declared.kind, declared.axis, declared.why) == ("classes", 2, "declared")


def test_declarations_parse_and_bad_ones_are_named():
    assert parse_declarations("logits:classes:2/boxes:values/ids:ignore") == {
        "logits": ("classes", 2), "boxes": ("values", None), "ids": ("ignore", None)}
    with pytest.raises(PipelineError, match="'logits:klasses' is not NAME:KIND"):
        parse_declarations("logits:klasses")
    with pytest.raises(PipelineError, match="axis 'x' of 'logits'"):
        parse_declarations("logits:classes:x")
    model = model_with([helper.make_node("Relu", ["h"], ["y"])], [("y", 1)])
    feed = {"x": np.ones((2, 8), np.float32)}
    with pytest.raises(PipelineError, match="no output 'logits'; its outputs: y"):
        kinds_of(model, feed, 2, {"logits": ("values", None)})
    with pytest.raises(PipelineError, match="classes of 'y' need their axis"):
        kinds_of(model, feed, 2, {"y": ("classes", None)})


def test_nothing_to_distil_is_a_data_error():
    model = model_with([helper.make_node("Identity", ["x"], ["y"])], [("y", 1)])
    with pytest.raises(DataError, match="no model output can be distilled"):
        kinds_of(model, {"x": np.ones((2, 8), np.float32)}, 2)


def test_change_of_classes_is_the_share_of_samples_that_moved():
    k = OutputKind("p", "classes", axis=2, batch_axis=0)
    a = RNG.standard_normal((4, 3, 5))
    b = a.copy()
    b[1, 2] = -b[1, 2]  # sample 1's last position moves (its arg-max becomes the arg-min)
    meter = ChangeMeter([k])
    meter.add({"p": a}, {"p": b})
    expected = np.mean(np.any(a.argmax(2) != b.argmax(2), axis=1))
    assert meter.per_output()["p"] == pytest.approx(expected) and expected > 0


def test_change_of_values_is_per_feature_so_small_scores_beside_boxes_count():
    k = OutputKind("det", "values", axis=1, batch_axis=0)
    boxes = RNG.uniform(100, 300, (2, 4, 50))
    scores = RNG.uniform(0, 1, (2, 1, 50))
    a = np.concatenate([boxes, scores], axis=1)
    b = a.copy()
    b[:, 4] = 1 - b[:, 4]  # every score flipped, boxes untouched
    meter = ChangeMeter([k])
    meter.add({"det": a}, {"det": b})
    per_feature = [np.linalg.norm(b[:, f] - a[:, f]) / np.linalg.norm(a[:, f]) for f in range(5)]
    assert meter.task_change() == pytest.approx(float(np.sqrt(np.mean(np.square(per_feature)))))
    whole = np.linalg.norm(b - a) / np.linalg.norm(a)
    assert meter.task_change() > 50 * whole  # a whole-tensor norm would not see the scores


def distill_task_value(model, feed_x, tmp_path):
    """The task loss ORT training computes for ``model`` distilled from itself, and the pieces."""
    teacher = Teacher(model.SerializeToString())
    split = Split({"x": feed_x}, None)
    task = resolve_loss("distill", split, teacher, "test", temperature=2.0)
    graph = loss_graph(_with_rate(model), "rate", 1, task)
    session = TrainingSession(generate_artifacts(graph, ["w"], [], tmp_path / "a"), lr=0.0)
    feed = task_feed(split, task, teacher)
    feed["onnxcomp.lambda"] = np.float32(0.0)
    return float(session.eval(feed)[1]), task, teacher


def _with_rate(model):
    out = onnx.ModelProto.FromString(model.SerializeToString())
    out.graph.initializer.append(numpy_helper.from_array(np.float32(0.0), "zero"))
    out.graph.node.append(helper.make_node("Identity", ["zero"], ["rate"]))
    out.graph.output.append(helper.make_tensor_value_info("rate", TensorProto.FLOAT, []))
    return out


def test_distilling_values_from_themselves_costs_nothing_and_classes_cost_their_entropy(tmp_path):
    nodes = [helper.make_node("Reshape", ["h", "shape"], ["embedding"]),       # values
             helper.make_node("Softmax", ["h"], ["probs"], axis=1)]           # classes (probabilities)
    model = model_with(nodes, [("embedding", 1), ("probs", 1)])
    model.graph.initializer.append(numpy_helper.from_array(np.int64([-1, 1, 1, 12]), "shape"))
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    value, task, _ = distill_task_value(model, x, tmp_path)
    assert [k.kind for k in task.judged] == ["values", "classes"]
    p = run(model, {"x": x})["probs"].astype(np.float64)
    entropy = float(np.mean(-np.sum(p * np.log(p + 1e-12), axis=1)))
    assert value == pytest.approx(entropy / 2, rel=1e-4)  # (0 for the values + entropy) / 2 outputs


def test_distilling_logits_declared_as_classes_uses_the_temperature(tmp_path):
    model = model_with([helper.make_node("Identity", ["h"], ["logits"])], [("logits", 1)])
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    teacher = Teacher(model.SerializeToString())
    split = Split({"x": x}, None)
    task = resolve_loss("distill", split, teacher, "test", 2.0, {"logits": ("classes", 1)})
    graph = loss_graph(_with_rate(model), "rate", 1, task)
    session = TrainingSession(generate_artifacts(graph, ["w"], [], tmp_path / "a"), lr=0.0)
    feed = task_feed(split, task, teacher)
    feed["onnxcomp.lambda"] = np.float32(0.0)
    logits = run(model, {"x": x})["logits"].astype(np.float64) / 2.0
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    expected = 4.0 * float(np.mean(-np.sum(q * np.log(q), axis=1)))  # T^2 x cross-entropy at equality
    assert float(session.eval(feed)[1]) == pytest.approx(expected, rel=1e-4)
