"""Retraining between weight-fixing rounds, through ONNX Runtime training.

Each round trains a copy of the model in which every weight W is rebuilt in-graph as

    W = W.free + W.mask * (W.fixed - W.free)        (mask 1 where fixed)

so a fixed weight equals its centre exactly whatever the optimizer does to ``W.free`` there (its
gradient is zero where mask = 1). The loss is the task loss (cross-entropy with labels, else
distillation from the original model: ``onnxcomp.training.losses``, as EPR's finetune) plus the paper's
softmin relative-distance regularizer over the free weights only:

    reg = mean_i sum_c softmin(D_i / tau)_c * D_ic,    D_ic = |w_i - c| / |w_i|

with c the centres a weight can still be fixed to. Its weight per step is beta * task / reg of the
previous step (the paper keeps the regularizer at beta times the task loss), fed as the scalar
input ``onnxcomp.lambda``. Batch order depends on (seed, round, epoch) only.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import Split, batches
from onnxcomp.errors import TrainingError
from onnxcomp.training.losses import LAMBDA_INPUT, TaskLoss, Teacher, loss_graph, task_feed
from onnxcomp.training.trainable import fixed_batch, trainable_form, training_sample
from onnxcomp.training.session import TrainingSession, generate_artifacts

REG_OUTPUT = "onnxcomp.wfn.regularizer"


@dataclass(frozen=True)
class RetrainOptions:
    epochs: float = 1.0
    lr: float = 1e-4
    batch: int = 128
    tau: float = 0.05
    beta: float = 0.4
    threads: int = 1
    weight_decay: float = 0.0  # AdamW's decoupled decay of the free weights


def masked_graph(model: onnx.ModelProto, values: dict[str, np.ndarray], fixed: dict[str, np.ndarray],
                 centres: np.ndarray, tau: float, with_regularizer: bool) -> onnx.ModelProto:
    """A copy of ``model`` with each weight in ``values`` held by its mask (module doc) and, when
    asked, the regularizer as an extra graph output ``REG_OUTPUT`` (scalar)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    keep = [t for t in g.initializer if t.name not in values]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes: list[onnx.NodeProto] = []
    gathered: list[str] = []
    for name, value in values.items():
        mask = fixed[name].astype(np.float32)
        g.initializer.extend([numpy_helper.from_array(value.astype(np.float32), f"{name}.free"),
                              numpy_helper.from_array(value.astype(np.float32), f"{name}.fixed"),
                              numpy_helper.from_array(mask, f"{name}.mask")])
        nodes += [helper.make_node("Sub", [f"{name}.fixed", f"{name}.free"], [f"{name}.gap"]),
                  helper.make_node("Mul", [f"{name}.mask", f"{name}.gap"], [f"{name}.held"]),
                  helper.make_node("Add", [f"{name}.free", f"{name}.held"], [name])]
        free_idx = np.flatnonzero(~fixed[name].ravel()).astype(np.int64)
        if with_regularizer and free_idx.size:
            # Gather only the free entries: the regularizer's cost shrinks with every round.
            g.initializer.extend([numpy_helper.from_array(free_idx, f"{name}.free_idx")])
            nodes += [helper.make_node("Reshape", [f"{name}.free", "onnxcomp.wfn.flat"], [f"{name}.flat"]),
                      helper.make_node("Gather", [f"{name}.flat", f"{name}.free_idx"], [f"{name}.free_values"], axis=0)]
            gathered.append(f"{name}.free_values")
    if with_regularizer:
        if not gathered:
            raise ValueError("no free weights to regularize")
        g.initializer.extend([
            numpy_helper.from_array(np.array([-1], np.int64), "onnxcomp.wfn.flat"),
            numpy_helper.from_array(np.array([-1, 1], np.int64), "onnxcomp.wfn.column"),
            numpy_helper.from_array(centres.astype(np.float32).reshape(1, -1), "onnxcomp.wfn.centres"),
            numpy_helper.from_array(np.asarray(-1.0 / tau, np.float32), "onnxcomp.wfn.neg_inv_tau"),
            numpy_helper.from_array(np.asarray(1e-12, np.float32), "onnxcomp.wfn.eps"),
            numpy_helper.from_array(np.asarray(float(centres.size), np.float32), "onnxcomp.wfn.n_centres"),
        ])
        r = "onnxcomp.wfn."
        nodes += [
            helper.make_node("Concat", gathered, [r + "w"], axis=0) if len(gathered) > 1
            else helper.make_node("Identity", gathered, [r + "w"]),
            helper.make_node("Reshape", [r + "w", r + "column"], [r + "w_col"]),            # [K, 1]
            helper.make_node("Sub", [r + "w_col", r + "centres"], [r + "diff"]),            # [K, C]
            helper.make_node("Abs", [r + "diff"], [r + "abs_diff"]),
            helper.make_node("Abs", [r + "w_col"], [r + "abs_w"]),
            helper.make_node("Add", [r + "abs_w", r + "eps"], [r + "abs_w_eps"]),
            helper.make_node("Div", [r + "abs_diff", r + "abs_w_eps"], [r + "rel"]),         # D
            helper.make_node("Mul", [r + "rel", r + "neg_inv_tau"], [r + "logits"]),
            helper.make_node("Softmax", [r + "logits"], [r + "softmin"], axis=1),
            helper.make_node("Mul", [r + "softmin", r + "rel"], [r + "weighted"]),
            # mean over [K, C] times C = mean over weights of the sum over centres (no axes input,
            # so the same node works at every opset normalize allows)
            helper.make_node("ReduceMean", [r + "weighted"], [r + "mean"], keepdims=0),
            helper.make_node("Mul", [r + "mean", r + "n_centres"], [REG_OUTPUT]),
        ]
        g.output.append(helper.make_tensor_value_info(REG_OUTPUT, TensorProto.FLOAT, []))
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    return out


def _zero_rate(model: onnx.ModelProto) -> None:
    """Without a regularizer the loss graph still wants a rate output: a constant 0."""
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(0.0, np.float32), "onnxcomp.wfn.zero"))
    model.graph.node.append(helper.make_node("Identity", ["onnxcomp.wfn.zero"], [REG_OUTPUT]))
    model.graph.output.append(helper.make_tensor_value_info(REG_OUTPUT, TensorProto.FLOAT, []))


@dataclass
class RoundResult:
    values: dict[str, np.ndarray]   # trained W.free by weight name (fixed entries not meaningful)
    steps: int
    step_seconds: float             # median
    task_loss: float                # mean over the round
    regularizer: float              # mean over the round
    form: str = ""                  # what the trainable form rewrote (TrainableForm.summary)


def retrain_round(model: onnx.ModelProto, values: dict[str, np.ndarray], fixed: dict[str, np.ndarray],
                  centres: np.ndarray, train: Split, teacher: Teacher, options: RetrainOptions, task: TaskLoss, *,
                  seed: int, round_index: int) -> RoundResult:
    """Train the free weights for ``options.epochs`` epochs; returns their new values."""
    use_reg = options.beta > 0 and any((~f).any() for f in fixed.values())
    graph = masked_graph(model, values, fixed, centres, options.tau, use_reg)
    if not use_reg:
        _zero_rate(graph)
    free = [f"{n}.free" for n in values]
    form = trainable_form(graph, training_sample(graph, train.inputs, {}), list(train.inputs), free, "weight-fix")
    graph = loss_graph(form.model, REG_OUTPUT, 1, task)
    batch_size = fixed_batch(model, train.inputs) or options.batch  # a fixed-batch export takes nothing else
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, round(options.epochs * steps_per_epoch))
    with tempfile.TemporaryDirectory(prefix="onnxcomp-wfn-") as tmp:
        artifacts = generate_artifacts(graph, free + form.anchors, [], Path(tmp), weight_decay=options.weight_decay)
        session = TrainingSession(artifacts, lr=options.lr, seed=seed, threads=options.threads)
        reg_weight = None
        times, task_sum, reg_sum = [], 0.0, 0.0
        epoch = 0
        while session.steps < total:
            for batch in batches(train, batch_size, shuffle_seed=(seed * 1000 + round_index) * 1000 + epoch):
                if session.steps >= total:
                    break
                start = time.perf_counter()
                feed = task_feed(batch, task, teacher)
                if reg_weight is None:  # first step: scale from a forward pass at the start values
                    feed[LAMBDA_INPUT] = np.float32(0.0)
                    _, task0, reg0 = session.eval(feed)[:3]
                    reg_weight = _reg_weight(options.beta, float(task0), float(reg0))
                feed[LAMBDA_INPUT] = np.float32(reg_weight)
                try:
                    _, task_value, reg = session.step(feed)[:3]
                except TrainingError as failure:
                    raise TrainingError(f"weight-fix round {round_index + 1}: {failure}; check the data for NaN/inf "
                                        "or lower weight-fix{lr=..}") from failure
                reg_weight = _reg_weight(options.beta, float(task_value), float(reg))
                times.append(time.perf_counter() - start)
                task_sum += float(task_value)
                reg_sum += float(reg)
            epoch += 1
        trained = session.parameters(trainable_only=True)
    n = max(1, len(times))
    return RoundResult({name: trained[f"{name}.free"] for name in values}, session.steps,
                       float(np.median(times)) if times else float("nan"), task_sum / n, reg_sum / n, form.summary())


def _reg_weight(beta: float, task: float, reg: float) -> float:
    return 0.0 if beta <= 0 or reg <= 1e-12 else beta * task / reg
