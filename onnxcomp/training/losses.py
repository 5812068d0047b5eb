"""Task losses of the training passes: cross-entropy on labels, or distillation from the original.

Both training methods (EPR's finetune, weight fixing's retraining) add the same loss to a copy of
their graph. The loss graph's outputs, in this order (the training wrapper wants the loss first):

    loss = task + onnxcomp.lambda * rate / num_params            (scalar)
    task = SoftmaxCrossEntropyLoss(first output, labels)           kind "ce"
         = mean over the judged outputs of their distillation term  kind "distill"
    rate, then the judged outputs (ce: the first output)

Distillation terms follow each output's kind (``onnxcomp.training.outputs``, one definition with the
validation and the report): classes given as logits T^2 * mean(-sum_c softmax(t / T) *
LogSoftmax(y / T)), as probabilities mean(-sum_c t * log(y + eps)), both over the class axis
and per position; values mean((y - t)^2 * w), w the per-feature 1 / mean square of the
original's outputs (so each feature counts alike, as in quantize's relative change).

``rate`` is whatever the method penalizes (EPR: bits under the prior; WFN: its regularizer),
``onnxcomp.lambda`` its weight, fed per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import Split, batches
from onnxcomp.errors import DataError
from onnxcomp.metrics import class_axis, fixed_batch
from onnxcomp.training.outputs import OutputKind, infer_kinds, measure_change, value_scales
from onnxcomp.training.trainable import default_opset

LAMBDA_INPUT = "onnxcomp.lambda"
LABELS_INPUT = "onnxcomp.labels"
TEACHER_INPUT = "onnxcomp.teacher"  # distill: one input per judged output, "onnxcomp.teacher.<i>"
LOSSES = ("auto", "ce", "distill")
PROBE_SAMPLES = 32  # the original's outputs on these many training samples set kinds and scales
LOG_EPS = 1e-12


class Teacher:
    """The original model, run by onnxruntime: soft targets for distillation, reference outputs."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        from onnxcomp.training.session import session_options

        self.model = onnx.ModelProto.FromString(model_bytes)
        self.session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(self.output_names[:1], {n: inputs[n] for n in self.inputs})[0])

    def outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {n: inputs[n] for n in self.inputs})))


@dataclass(frozen=True)
class TaskLoss:
    """The task loss a training pass uses, resolved against the model and its data."""

    kind: str                       # ce or distill
    output_shape: tuple[int, ...]   # ce: the first output's shape per sample ([classes, ...])
    class_axis: int                 # ce: of the first output with its batch axis
    temperature: float = 1.0
    outputs: tuple[OutputKind, ...] = ()  # distill: every graph output's kind
    scales: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)  # distill values: weights
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False)  # per output, batch 1

    @property
    def output_rank(self) -> int:
        return len(self.output_shape) + 1

    @property
    def judged(self) -> list[OutputKind]:
        return [k for k in self.outputs if k.judged]

    def describe(self) -> str:
        if self.kind == "ce":
            return f"ce on the first output's classes (axis {self.class_axis})"
        return "distill " + "; ".join(k.describe() for k in self.outputs)


def resolve_loss(loss: str, train: Split, teacher: Teacher, who: str, temperature: float = 1.0,
                 declared: Mapping[str, tuple[str, int | None]] | None = None) -> TaskLoss:
    """``loss`` with "auto" resolved (ce when the train split has labels, else distill), checked
    against the model's outputs on the first training samples; distill infers every output's
    kind (``declared`` overrides, ``onnxcomp.training.outputs``)."""
    kind = loss if loss != "auto" else ("ce" if train.labels is not None else "distill")
    samples = min(len(train), PROBE_SAMPLES)
    batch = fixed_batch(teacher.session) or samples  # a fixed-batch export runs its own batch size
    probes = [teacher.outputs(b.inputs) for b in batches(train.take(slice(0, max(batch, samples))), batch)]
    first = np.asarray(probes[0][teacher.output_names[0]])
    if kind == "ce":
        if first.ndim < 2:
            raise DataError(f"model output of shape {first.shape} has no class axis: {who}'s ce loss needs [N, classes, ...]")
        check_labels(train, "train", first)
        return TaskLoss(kind, tuple(first.shape[1:]), class_axis(first.shape, train.labels.shape), temperature)
    kinds = infer_kinds(teacher.model, probes[0], batch, declared)
    scales = {k.name: value_scales(k, [p[k.name] for p in probes]) for k in kinds if k.kind == "values"}
    shapes = {k.name: tuple(np.shape(probes[0][k.name])) for k in kinds}
    return TaskLoss(kind, tuple(first.shape[1:]), kinds[0].axis if kinds[0].kind == "classes" else 1, temperature,
                    tuple(kinds), scales, shapes)


def check_labels(split: Split, which: str, probe: np.ndarray) -> None:
    """DataError unless ``split``'s labels fit model outputs shaped like ``probe`` [N, classes, ...]
    (SoftmaxCrossEntropyLoss reads the classes on axis 1)."""
    if split.labels is None:
        raise DataError(f"loss 'ce' needs labels; the {which} split has none (use loss=distill)")
    classes = probe.shape[1]
    labels = split.labels
    if tuple(labels.shape[1:]) != tuple(probe.shape[2:]):
        raise DataError(f"{which} labels of shape {labels.shape} do not fit model output {probe.shape}: "
                        f"want [N{''.join(', ' + str(d) for d in probe.shape[2:])}]")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        sample = int(bad[0]) // max(1, int(np.prod(labels.shape[1:])))
        raise DataError(f"{which} label {int(labels.flat[bad[0]])} at sample {sample} is out of range: "
                        f"the model has {classes} classes (0..{classes - 1})")


def softmax(x: np.ndarray, temperature: float, axis: int = 1) -> np.ndarray:
    z = x.astype(np.float64) / temperature
    z -= z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def teacher_name(index: int) -> str:
    return f"{TEACHER_INPUT}.{index}"


def task_feed(batch: Split, task: TaskLoss, teacher: Teacher) -> dict[str, np.ndarray]:
    """A batch's inputs plus the task loss's targets: labels (ce) or the original's outputs."""
    feed = dict(batch.inputs)
    if task.kind == "ce":
        feed[LABELS_INPUT] = batch.labels.astype(np.int64)
        return feed
    outputs = teacher.outputs(batch.inputs)
    for i, k in enumerate(task.judged):
        target = np.asarray(outputs[k.name], np.float32)
        if k.kind == "classes" and not k.probabilities:
            target = softmax(target, task.temperature, k.axis)
        feed[teacher_name(i)] = target
    return feed


def placeholder_targets(task: TaskLoss, n: int) -> dict[str, np.ndarray]:
    """Targets for an evaluation run whose task loss is not read (any valid values do)."""
    if task.kind == "ce":
        return {LABELS_INPUT: np.zeros((n, *task.output_shape[1:]), np.int64)}
    feed = {}
    for i, k in enumerate(task.judged):
        shape = list(task.shapes[k.name])
        shape[k.batch_axis] = n
        feed[teacher_name(i)] = np.zeros(shape, np.float32)
    return feed


def loss_graph(model: onnx.ModelProto, rate_output: str, num_params: int, task: TaskLoss) -> onnx.ModelProto:
    """A copy of ``model`` with the loss first and the task loss, rate and the judged outputs
    after it (see the module doc)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    opset = default_opset(out)
    by_name = {o.name: o for o in g.output}
    rate = by_name[rate_output]
    lam = helper.make_tensor_value_info(LAMBDA_INPUT, TensorProto.FLOAT, [])
    consts = {"onnxcomp.loss.per_param": 1.0 / num_params}
    nodes = []
    if task.kind == "ce":
        logits = g.output[0]
        judged = [logits]
        dims = ["batch"] + [f"d{i}" for i in range(2, task.output_rank)]  # the logits' shape without the class axis
        g.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, dims))
        nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits.name, LABELS_INPUT],
                                      ["onnxcomp.loss.task", "onnxcomp.loss.log_prob"], reduction="mean"))
    else:
        judged = [by_name[k.name] for k in task.judged]
        for value in judged:  # training graphs need every output's rank
            if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
                for j in range(len(task.shapes[value.name])):
                    value.type.tensor_type.shape.dim.add().dim_param = f"{value.name}.d{j}"
        terms = []
        for i, k in enumerate(task.judged):
            t, p = teacher_name(i), f"onnxcomp.loss.{i}"
            rank = len(task.shapes[k.name])
            g.input.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, [f"{t}.d{j}" for j in range(rank)]))
            if k.kind == "values":
                g.initializer.append(numpy_helper.from_array(task.scales[k.name], p + ".weights"))
                nodes += [helper.make_node("Sub", [k.name, t], [p + ".diff"]),
                          helper.make_node("Mul", [p + ".diff", p + ".diff"], [p + ".square"]),
                          helper.make_node("Mul", [p + ".square", p + ".weights"], [p + ".weighted"]),
                          helper.make_node("ReduceMean", [p + ".weighted"], [p + ".term"], keepdims=0)]
            else:
                if k.probabilities:
                    consts[p + ".eps"] = LOG_EPS
                    nodes += [helper.make_node("Add", [k.name, p + ".eps"], [p + ".safe"]),
                              helper.make_node("Log", [p + ".safe"], [p + ".log_p"])]
                    consts[p + ".sign"] = -1.0
                else:
                    consts[p + ".inv_t"] = 1.0 / task.temperature
                    consts[p + ".sign"] = -task.temperature**2
                    nodes += [helper.make_node("Mul", [k.name, p + ".inv_t"], [p + ".scaled"]),
                              helper.make_node("LogSoftmax", [p + ".scaled"], [p + ".log_p"], axis=k.axis)]
                nodes.append(helper.make_node("Mul", [t, p + ".log_p"], [p + ".cross"]))
                if opset >= 13:  # ReduceSum's axes became an input in opset 13
                    g.initializer.append(numpy_helper.from_array(np.array([k.axis], np.int64), p + ".class_axis"))
                    nodes.append(helper.make_node("ReduceSum", [p + ".cross", p + ".class_axis"], [p + ".per_position"], keepdims=0))
                else:
                    nodes.append(helper.make_node("ReduceSum", [p + ".cross"], [p + ".per_position"], axes=[k.axis], keepdims=0))
                nodes += [helper.make_node("ReduceMean", [p + ".per_position"], [p + ".mean"], keepdims=0),
                          helper.make_node("Mul", [p + ".mean", p + ".sign"], [p + ".term"])]
            terms.append(p + ".term")
        total = terms[0]
        for j, term in enumerate(terms[1:]):
            nodes.append(helper.make_node("Add", [total, term], [f"onnxcomp.loss.sum{j}"]))
            total = f"onnxcomp.loss.sum{j}"
        consts["onnxcomp.loss.per_output"] = 1.0 / len(terms)
        nodes.append(helper.make_node("Mul", [total, "onnxcomp.loss.per_output"], ["onnxcomp.loss.task"]))
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    nodes += [
        helper.make_node("Mul", [rate.name, "onnxcomp.loss.per_param"], ["onnxcomp.loss.rate_per_param"]),
        helper.make_node("Mul", [LAMBDA_INPUT, "onnxcomp.loss.rate_per_param"], ["onnxcomp.loss.weighted_rate"]),
        helper.make_node("Add", ["onnxcomp.loss.task", "onnxcomp.loss.weighted_rate"], ["onnxcomp.loss"]),
    ]
    g.node.extend(nodes)
    g.input.append(lam)
    scalar = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [])  # noqa: E731
    outputs = [scalar("onnxcomp.loss"), scalar("onnxcomp.loss.task"), scalar(rate.name), *judged]
    del g.output[:]
    g.output.extend(outputs)
    return out


def change_on(split: Split, task: TaskLoss, teacher: Teacher, predict, batch: int,
              reference: list | None = None) -> tuple[float, list]:
    """The task change (``onnxcomp.training.outputs``) of ``predict`` (inputs -> {output name: array}) from
    the original's outputs on ``split``; returns it and the original's outputs per batch (pass
    them back as ``reference`` to skip recomputing them)."""
    meter, computed = measure_change(task.judged, split, teacher.outputs, predict, batch, reference or ())
    return meter.task_change(), computed
