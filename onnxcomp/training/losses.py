"""Task losses of the training passes: cross-entropy on labels, or distillation from the original.

Both training methods (EPR's finetune, weight fixing's retraining) add the same loss to a copy of
their graph. The loss graph's outputs, in this order (the training wrapper wants the loss first):

    loss = task + onnxcomp.lambda * rate / num_params            (scalar)
    task = SoftmaxCrossEntropyLoss(logits, labels)                 kind "ce"
         = T^2 * mean(-sum_c(teacher * LogSoftmax(logits / T)))    kind "distill": teacher = softmax
                                                                   of the original's logits / T
    rate, logits

``rate`` is whatever the method penalizes (EPR: bits under the prior; WFN: its regularizer),
``onnxcomp.lambda`` its weight, fed per step. The class axis of the logits is the one
``onnxcomp.metrics.class_axis`` picks, so training and validation read outputs alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import Split
from onnxcomp.errors import DataError
from onnxcomp.metrics import class_axis, fixed_batch

LAMBDA_INPUT = "onnxcomp.lambda"
LABELS_INPUT = "onnxcomp.labels"
TEACHER_INPUT = "onnxcomp.teacher"
LOSSES = ("auto", "ce", "distill")


class Teacher:
    """The original model, run by onnxruntime: soft targets for distillation, reference predictions."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        from onnxcomp.training.session import session_options

        self.session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, {n: inputs[n] for n in self.inputs})[0])


@dataclass(frozen=True)
class TaskLoss:
    """The task loss a training pass uses, resolved against the model and its data."""

    kind: str                       # ce or distill
    output_shape: tuple[int, ...]   # the first output's shape per sample ([classes, ...])
    class_axis: int                 # of the output with its batch axis
    temperature: float = 1.0

    @property
    def output_rank(self) -> int:
        return len(self.output_shape) + 1


def resolve_loss(loss: str, train: Split, teacher: Teacher, who: str, temperature: float = 1.0) -> TaskLoss:
    """``loss`` with "auto" resolved (ce when the train split has labels, else distill), checked
    against the model's first output on two samples."""
    kind = loss if loss != "auto" else ("ce" if train.labels is not None else "distill")
    probe = teacher.logits(train.take(slice(0, fixed_batch(teacher.session) or 2)).inputs)
    if probe.ndim < 2:
        raise DataError(f"model output of shape {probe.shape} has no class axis: {who}'s losses need [N, classes, ...]")
    if kind == "ce":
        check_labels(train, "train", probe)
    labels_shape = train.labels.shape if kind == "ce" else None
    return TaskLoss(kind, tuple(probe.shape[1:]), class_axis(probe.shape, labels_shape), temperature)


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


def task_feed(batch: Split, task: TaskLoss, teacher: Teacher) -> dict[str, np.ndarray]:
    """A batch's inputs plus the task loss's targets: labels (ce) or the teacher's soft outputs."""
    feed = dict(batch.inputs)
    if task.kind == "ce":
        feed[LABELS_INPUT] = batch.labels.astype(np.int64)
    else:
        feed[TEACHER_INPUT] = softmax(teacher.logits(batch.inputs), task.temperature, task.class_axis)
    return feed


def placeholder_targets(task: TaskLoss, n: int) -> dict[str, np.ndarray]:
    """Targets for an evaluation run whose task loss is not read (any valid values do)."""
    if task.kind == "ce":
        return {LABELS_INPUT: np.zeros((n, *task.output_shape[1:]), np.int64)}
    return {TEACHER_INPUT: np.zeros((n, *task.output_shape), np.float32)}


def loss_graph(model: onnx.ModelProto, rate_output: str, num_params: int, task: TaskLoss) -> onnx.ModelProto:
    """A copy of ``model`` with the loss first and the task loss, rate and logits after it (see
    the module doc)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    logits = g.output[0]
    rate = next(o for o in g.output if o.name == rate_output)
    lam = helper.make_tensor_value_info(LAMBDA_INPUT, TensorProto.FLOAT, [])
    consts = {"onnxcomp.loss.per_param": 1.0 / num_params}
    nodes = []
    rank = task.output_rank
    if task.kind == "ce":
        dims = ["batch"] + [f"d{i}" for i in range(2, rank)]  # the logits' shape without the class axis
        g.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, dims))
        nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits.name, LABELS_INPUT],
                                      ["onnxcomp.loss.task", "onnxcomp.loss.log_prob"], reduction="mean"))
    else:
        dims = ["batch", "classes"] + [f"d{i}" for i in range(2, rank)]
        g.input.append(helper.make_tensor_value_info(TEACHER_INPUT, TensorProto.FLOAT, dims))
        consts.update({"onnxcomp.loss.inv_t": 1.0 / task.temperature, "onnxcomp.loss.neg_t2": -task.temperature**2})
        axis = task.class_axis
        opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
        if opset >= 13:  # ReduceSum's axes became an input in opset 13
            g.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), "onnxcomp.loss.class_axis"))
            per_sample = helper.make_node("ReduceSum", ["onnxcomp.loss.cross", "onnxcomp.loss.class_axis"],
                                          ["onnxcomp.loss.per_sample"], keepdims=0)
        else:
            per_sample = helper.make_node("ReduceSum", ["onnxcomp.loss.cross"], ["onnxcomp.loss.per_sample"],
                                          axes=[axis], keepdims=0)
        nodes += [
            helper.make_node("Mul", [logits.name, "onnxcomp.loss.inv_t"], ["onnxcomp.loss.scaled"]),
            helper.make_node("LogSoftmax", ["onnxcomp.loss.scaled"], ["onnxcomp.loss.log_p"], axis=axis),
            helper.make_node("Mul", [TEACHER_INPUT, "onnxcomp.loss.log_p"], ["onnxcomp.loss.cross"]),
            per_sample,
            helper.make_node("ReduceMean", ["onnxcomp.loss.per_sample"], ["onnxcomp.loss.mean"], keepdims=0),
            helper.make_node("Mul", ["onnxcomp.loss.mean", "onnxcomp.loss.neg_t2"], ["onnxcomp.loss.task"]),
        ]
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
    outputs = [scalar("onnxcomp.loss"), scalar("onnxcomp.loss.task"), scalar(rate.name), logits]
    del g.output[:]
    g.output.extend(outputs)
    return out
