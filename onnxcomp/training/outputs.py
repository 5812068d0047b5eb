"""What each model output is, and how far a candidate moved it, without labels: one definition for
the distillation losses, the training passes' validation, error budgets and the report.

A model someone else exported has outputs of every shape: [N, classes] logits, [N, T, C]
per-frame probabilities (OCR), [T, N, C] sequence-first logits (a CRNN exported with batch 1),
[N, 1, 1, 96] embeddings, a detector's [N, 4 + classes, anchors] boxes beside scores, a VAD's
probability beside its recurrent state, an ``Identity(input_ids)`` passed through. Each output gets
one :class:`OutputKind`:

- ``classes``: a distribution over a class axis (size >= 2), given as probabilities (a Softmax
  produced it, or the values are non-negative and sum to 1 along that axis) or log-probabilities
  (LogSoftmax). Distilled by cross-entropy to the original's distribution, per position; a sample
  *changed* when the arg-max moved at any position.
- ``values``: anything else that is float and depends on the weights (embeddings, boxes, scores,
  logits nobody declared as classes, states). Distilled by squared error divided, per feature,
  by the original's mean square of that feature; its *change* is ``relative change`` (quantize's
  measure, ``passes/quantize/probes.py``): per feature ||candidate - original|| / ||original||,
  root-mean-square over the features. The feature axis is the shorter of axis 1 and the last (a
  detector's boxes and scores are features, the anchors positions).
- ``ignore``: integer or boolean outputs and outputs that no weight reaches (a pass-through of an
  input): nothing to distil, nothing to judge.

Plain logits are ``values`` unless declared: a [N, 96] embedding and [N, 10] logits cannot be told
apart from their numbers, and matching values is a sound distillation target for both. The user
declares kinds with the training passes' ``outputs`` option (``name:classes:axis``,
``name:values``, ``name:ignore``, joined by ``/``); the inference and every declaration are said
in the run's log. With labels (loss ``ce``) the first output's classes are the task, as before.

The *task change* of a candidate is the largest change over the judged outputs (a share of
samples for classes, a relative change for values: both 0 when nothing moved).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.errors import DataError, PipelineError

KINDS = ("classes", "values", "ignore")
# Ops that move values without computing (a Softmax seen through them is still the output's).
SHAPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}
SUMS_TO_ONE = 1e-3


@dataclass(frozen=True)
class OutputKind:
    name: str
    kind: str                 # one of KINDS
    axis: int | None          # classes: the class axis; values: the feature axis (None: the whole tensor)
    batch_axis: int = 0       # where the samples are
    probabilities: bool = False  # classes given as probabilities (else logits or log-probabilities)
    why: str = ""

    @property
    def judged(self) -> bool:
        return self.kind != "ignore"

    def describe(self) -> str:
        where = "" if self.batch_axis == 0 else f", samples on axis {self.batch_axis}"
        if self.kind == "classes":
            text = f"classes on axis {self.axis} ({'probabilities' if self.probabilities else 'logits'}{where})"
        elif self.kind == "values":
            text = "values" + (f", per feature on axis {self.axis}" if self.axis is not None else "") + where
        else:
            text = "ignored"
        return f"{self.name}: {text}" + (f" [{self.why}]" if self.why else "")


def feature_axis(shape: Sequence[int], batch_axis: int = 0) -> int | None:
    """The axis ``values`` are measured per index on: of the non-batch axes longer than 1, the
    only one, or the shorter of the first and the last ([N, 1, 1, 96] -> 3, [N, 22, 2100] -> 1);
    None when there is none (the whole tensor)."""
    axes = [a for a in range(len(shape)) if a != batch_axis and shape[a] > 1]
    if not axes:
        return None
    if len(axes) == 1:
        return axes[0]
    first, last = axes[0], axes[-1]
    return first if shape[first] <= shape[last] else last


def parse_declarations(text: str) -> dict[str, tuple[str, int | None]]:
    """``name:kind[:axis]/...`` (the passes' ``outputs`` option) -> {name: (kind, axis)}."""
    declared: dict[str, tuple[str, int | None]] = {}
    for item in filter(None, (part.strip() for part in text.split("/"))):
        fields = item.split(":")
        if len(fields) not in (2, 3) or fields[1] not in KINDS:
            raise PipelineError(f"outputs: {item!r} is not NAME:KIND[:AXIS] with KIND one of {', '.join(KINDS)}")
        axis = None
        if len(fields) == 3:
            try:
                axis = int(fields[2])
            except ValueError:
                raise PipelineError(f"outputs: axis {fields[2]!r} of {fields[0]!r} is not an integer") from None
        declared[fields[0]] = (fields[1], axis)
    return declared


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _source_op(name: str, producers: Mapping[str, onnx.NodeProto]) -> str | None:
    """The op that computed ``name``, looking through ops that only move values."""
    seen = 0
    while name in producers and seen < 32:
        node = producers[name]
        if node.op_type not in SHAPE_OPS:
            return node.op_type
        name, seen = node.input[0], seen + 1
    return None


def _weight_reached(model: onnx.ModelProto) -> set[str]:
    """Values computed from a float initializer of more than one element (a weight)."""
    reached = {t.name for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                  onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               and int(np.prod(t.dims)) > 1}
    for node in model.graph.node:
        if any(i in reached for i in node.input) or any(
                a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            reached.update(o for o in node.output if o)
    return reached


def _batch_axis(shape: Sequence[int], batch: int) -> int:
    if len(shape) >= 2 and shape[0] != batch and shape[1] == batch:
        return 1  # sequence-first ([T, N, C]) or a state ([layers, N, H])
    return 0


def _distribution_axis(values: np.ndarray, batch_axis: int, log: bool) -> int | None:
    """The axis (size >= 2) along which ``values`` sum to 1 (exp(values) with ``log``)."""
    v = np.exp(np.asarray(values, np.float64)) if log else np.asarray(values, np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or v.min() < -1e-6:
        return None
    for axis in sorted(range(v.ndim), key=lambda a: -v.shape[a]):
        if axis == batch_axis or v.shape[axis] < 2:
            continue
        if np.all(np.abs(v.sum(axis=axis) - 1.0) <= SUMS_TO_ONE):
            return axis
    return None


def infer_kinds(model: onnx.ModelProto, outputs: Mapping[str, np.ndarray], batch: int,
                declared: Mapping[str, tuple[str, int | None]] | None = None) -> list[OutputKind]:
    """One :class:`OutputKind` per graph output of ``model``, from the original's ``outputs`` on
    ``batch`` samples (every graph output by name) and what the user ``declared``."""
    declared = dict(declared or {})
    names = [o.name for o in model.graph.output]
    unknown = sorted(set(declared) - set(names))
    if unknown:
        raise PipelineError(f"outputs: the model has no output {unknown[0]!r}; its outputs: {', '.join(names)}")
    producers, reached = _producers(model), _weight_reached(model)
    kinds = []
    for name in names:
        value = np.asarray(outputs[name])
        batch_axis = _batch_axis(value.shape, batch)
        if name in declared:
            kind, axis = declared[name]
            if kind != "ignore" and not np.issubdtype(value.dtype, np.floating):
                raise PipelineError(f"outputs: {name!r} is {value.dtype}, not a float output; it cannot be {kind}")
            if axis is not None and not -value.ndim <= axis < value.ndim:
                raise PipelineError(f"outputs: axis {axis} is outside {name!r} of shape {value.shape}")
            axis = None if axis is None else axis % value.ndim
            if kind == "classes":
                if axis is None:
                    raise PipelineError(f"outputs: classes of {name!r} need their axis (NAME:classes:AXIS)")
                probabilities = _distribution_axis(value, batch_axis, log=False) == axis
                kinds.append(OutputKind(name, kind, axis, batch_axis, probabilities, "declared"))
            elif kind == "values":
                kinds.append(OutputKind(name, kind, axis if axis is not None else feature_axis(value.shape, batch_axis),
                                        batch_axis, why="declared"))
            else:
                kinds.append(OutputKind(name, "ignore", None, batch_axis, why="declared"))
            continue
        if not np.issubdtype(value.dtype, np.floating):
            kinds.append(OutputKind(name, "ignore", None, batch_axis, why=f"{value.dtype} output"))
            continue
        if name not in reached:
            kinds.append(OutputKind(name, "ignore", None, batch_axis, why="no weight reaches it"))
            continue
        op = _source_op(name, producers)
        if op in ("Softmax", "LogSoftmax"):
            axis = _distribution_axis(value, batch_axis, log=op == "LogSoftmax")
            if axis is not None:
                kinds.append(OutputKind(name, "classes", axis, batch_axis, op == "Softmax", f"{op} output"))
                continue
        axis = _distribution_axis(value, batch_axis, log=False)
        if axis is not None:
            kinds.append(OutputKind(name, "classes", axis, batch_axis, True, "non-negative, sums to 1"))
            continue
        kinds.append(OutputKind(name, "values", feature_axis(value.shape, batch_axis), batch_axis,
                                why=f"{op} output" if op else ""))
    if not any(k.judged for k in kinds):
        raise DataError("no model output can be distilled: " + "; ".join(k.describe() for k in kinds)
                        + " (declare one with outputs=NAME:values)")
    return kinds


# --- change of a candidate ----------------------------------------------------------------------

def _rows(value: np.ndarray, kind: OutputKind) -> np.ndarray:
    """Arg-max per position, one row per sample."""
    top = np.asarray(value).argmax(axis=kind.axis)
    batch_axis = kind.batch_axis - (1 if kind.axis < kind.batch_axis else 0)
    return np.moveaxis(top, batch_axis, 0).reshape(top.shape[batch_axis], -1)


class ChangeMeter:
    """Accumulates, batch by batch, how far candidate outputs moved from the original's."""

    def __init__(self, kinds: Sequence[OutputKind]) -> None:
        self.kinds = [k for k in kinds if k.judged]
        self.changed = {k.name: 0 for k in self.kinds}
        self.samples = {k.name: 0 for k in self.kinds}
        self.errors: dict[str, np.ndarray] = {}
        self.norms: dict[str, np.ndarray] = {}

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        for k in self.kinds:
            a, b = np.asarray(reference[k.name], np.float64), np.asarray(candidate[k.name], np.float64)
            if a.shape != b.shape:
                raise DataError(f"output {k.name!r} has shape {b.shape}, the original's {a.shape}")
            if k.kind == "classes":
                ra, rb = _rows(a, k), _rows(b, k)
                self.changed[k.name] += int(np.any(ra != rb, axis=1).sum())
                self.samples[k.name] += len(ra)
            else:
                axes = tuple(i for i in range(a.ndim) if i != k.axis)
                self.norms[k.name] = self.norms.get(k.name, 0.0) + np.sum(a * a, axis=axes)
                self.errors[k.name] = self.errors.get(k.name, 0.0) + np.sum((b - a) ** 2, axis=axes)

    def per_output(self) -> dict[str, float]:
        result = {}
        for k in self.kinds:
            if k.kind == "classes":
                result[k.name] = self.changed[k.name] / max(1, self.samples[k.name])
            else:
                norm = np.atleast_1d(self.norms.get(k.name, 0.0))
                err = np.atleast_1d(self.errors.get(k.name, 0.0))
                live = norm > 0
                result[k.name] = float(np.sqrt(np.mean(err[live] / norm[live]))) if live.any() else float(np.sqrt(err.sum()))
        return result

    def task_change(self) -> float:
        """The largest change over the judged outputs (0: nothing moved)."""
        return max(self.per_output().values(), default=0.0)


def measure_change(kinds: Sequence[OutputKind], split, original, candidate, batch: int,
                   reference: Sequence[Mapping[str, np.ndarray]] = ()) -> tuple[ChangeMeter, list]:
    """How far ``candidate`` moved from ``original`` (each: inputs -> {output name: array}) on
    ``split``, batch by batch; the original's outputs of the first batches may be given as
    ``reference`` (they are not recomputed). Returns the meter and the original's outputs per batch."""
    from onnxcomp.data import batches

    meter = ChangeMeter(kinds)
    computed = []
    for i, b in enumerate(batches(split, batch)):
        ref = reference[i] if i < len(reference) else original(b.inputs)
        computed.append(ref)
        meter.add(ref, candidate(b.inputs))
    return meter, computed


def value_scales(kind: OutputKind, samples: Sequence[np.ndarray]) -> np.ndarray:
    """Per-feature 1 / (the original's mean square) of a ``values`` output, shaped to broadcast
    against it: the distillation loss's weights (dead features get the output's mean weight)."""
    a = np.concatenate([np.asarray(s, np.float64) for s in samples], axis=kind.batch_axis)
    rank = a.ndim
    if kind.axis is None:
        mean_square = np.asarray(np.mean(a * a)).reshape((1,) * rank)
    else:
        axes = tuple(i for i in range(rank) if i != kind.axis)
        mean_square = np.mean(a * a, axis=axes, keepdims=True)
    overall = float(np.mean(a * a)) or 1.0
    mean_square = np.where(mean_square > 1e-12 * overall, mean_square, overall)
    return (1.0 / mean_square).astype(np.float32)
