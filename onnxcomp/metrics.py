"""Task metrics of a model on a data split: the number a compression result is judged by.

One definition serves every caller (the report, ``onnxcomp eval``, error budgets, quantize's
step search, the training passes' validation): a model's *predictions* are the arg-max of its
first output along the class axis (:func:`class_axis`), one per position for outputs of rank
> 2; a sample is *wrong* when any of its predictions differs from the truth, which is the split's
labels or, without labels, the original model's predictions. So the error with labels is the
classification error, and without them it is the share of samples whose decision changed.

Kept apart from any runtime: :func:`predictions` takes a plain ``predict_fn`` (an
InferenceSession, a TrainingSession's eval graph, a numpy reference), and :func:`session_predictor`
adapts an ``onnxruntime.InferenceSession``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxcomp.data import Split, batches
from onnxcomp.errors import DataError

PredictFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def class_axis(output_shape: Sequence[int], labels_shape: Sequence[int] | None = None) -> int:
    """The axis of a model output (``[N, ...]``, N first) that holds the classes.

    Rank 2 (``[N, classes]``): axis 1. With labels (``[N, ...]``), the axis whose removal leaves
    the labels' per-sample shape, 1 first (ONNX's SoftmaxCrossEntropyLoss convention, ``[N, C,
    d1, ...]``), else the last. Without labels, the last axis: sequence outputs (``[N, T, C]``,
    OCR, token logits) are written that way by exporters.
    """
    rank = len(output_shape)
    if rank < 2:
        raise DataError(f"model output of shape {tuple(output_shape)} has no class axis: predictions need [N, classes, ...]")
    if rank == 2:
        return 1
    if labels_shape is None:
        return rank - 1
    per_sample = tuple(labels_shape[1:])
    for axis in (1, rank - 1):
        rest = tuple(d for i, d in enumerate(output_shape) if i not in (0, axis))
        if rest == per_sample:
            return axis
    raise DataError(f"labels of shape {tuple(labels_shape)} do not fit model output {tuple(output_shape)}: "
                    f"want [N] plus the output's shape without its class axis")


def argmax_rows(logits: np.ndarray, axis: int) -> np.ndarray:
    """Arg-max of ``logits`` along ``axis``, flattened per sample: ``[N, positions]``."""
    logits = np.asarray(logits)
    return logits.argmax(axis=axis).reshape(logits.shape[0], -1)


def predictions(predict_fn: PredictFn, split: Split, batch_size: int, axis: int | None = None) -> np.ndarray:
    """``[N, positions]`` predictions of ``predict_fn`` over ``split`` (batches in order).

    ``axis`` is the class axis; by default :func:`class_axis` of the first batch's output and the
    split's labels.
    """
    rows = []
    for batch in batches(split, batch_size):
        logits = np.asarray(predict_fn(batch.inputs))
        if logits.ndim == 0 or logits.shape[0] != len(batch):
            raise DataError(f"predictions of shape {logits.shape} for a batch of {len(batch)}: want [batch, classes, ...]")
        if axis is None:
            axis = class_axis(logits.shape, None if split.labels is None else split.labels.shape)
        rows.append(argmax_rows(logits, axis))
    return np.concatenate(rows)


def truth_rows(labels: np.ndarray) -> np.ndarray:
    """Labels as ``[N, positions]``, comparable with :func:`predictions`."""
    return np.asarray(labels).reshape(len(labels), -1)


def error_rate(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of samples (rows) with any prediction unlike the truth's."""
    if predicted.shape != truth.shape:
        raise DataError(f"predictions of shape {predicted.shape} cannot be compared with truth of shape {truth.shape}")
    return float(np.mean(np.any(predicted != truth, axis=1))) if len(predicted) else 0.0


def classification_error(predict_fn: PredictFn, split: Split, batch_size: int = 1000) -> float:
    """Share of samples whose predictions are not their labels (0.0 = all correct)."""
    if split.labels is None:
        raise DataError("classification error needs labels; this split has none")
    return error_rate(predictions(predict_fn, split, batch_size), truth_rows(split.labels))


def session_predictor(session: Any, split: Split, output: str | None = None) -> PredictFn:
    """``predict_fn`` of an ``onnxruntime.InferenceSession`` for ``split``'s inputs.

    The split's inputs are matched to the session's inputs by name; when both have exactly one
    input they are matched regardless of name. ``output`` picks the output (default: the first).
    """
    session_inputs = [i.name for i in session.get_inputs()]
    data_inputs = list(split.inputs)
    if set(session_inputs) == set(data_inputs):
        rename = {name: name for name in data_inputs}
    elif len(session_inputs) == 1 and len(data_inputs) == 1:
        rename = {data_inputs[0]: session_inputs[0]}
    else:
        raise DataError(f"session inputs {session_inputs} do not match data inputs {data_inputs}")
    outputs = [o.name for o in session.get_outputs()]
    if output is not None and output not in outputs:
        raise DataError(f"session has no output {output!r}; outputs: {outputs}")
    fetch = [output or outputs[0]]

    def predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(fetch, {rename[name]: array for name, array in inputs.items()})[0]

    return predict


def fixed_batch(session: Any, names: Sequence[str] | None = None) -> int | None:
    """The batch size the session's inputs (those in ``names``, default all) declare, None where
    it is symbolic: a model exported for one sample at a time takes nothing else."""
    for i in session.get_inputs():
        if (names is None or i.name in names) and i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0:
            return i.shape[0]
    return None


def session_batch(session: Any, default: int) -> int:
    """``default``, or the session's fixed batch size (:func:`fixed_batch`)."""
    return fixed_batch(session) or default


def evaluate_session(session: Any, split: Split, batch_size: int = 1000, output: str | None = None) -> float:
    """Classification error of an ``onnxruntime.InferenceSession`` on ``split`` (labels needed)."""
    return classification_error(session_predictor(session, split, output), split, session_batch(session, batch_size))


def session_predictions(session: Any, split: Split, batch_size: int = 256) -> np.ndarray:
    """``[N, positions]`` predictions of a session's first output (labels, if any, only choose
    the class axis)."""
    return predictions(session_predictor(session, split), split, session_batch(session, batch_size))


def disagreement(session_a: Any, session_b: Any, split: Split) -> float:
    """Share of samples whose predictions differ anywhere between two sessions (no labels needed)."""
    return error_rate(session_predictions(session_b, split), session_predictions(session_a, split))


def split_error(session: Any, split: Split, reference: Any = None) -> float:
    """The error on ``split``: against its labels, else the share of samples whose predictions
    differ from ``reference``'s (the original model's session)."""
    if split.labels is not None:
        return evaluate_session(session, split)
    if reference is None:
        raise DataError("a split without labels is measured against the original model: none given")
    return disagreement(reference, session, split)


def error_budget(max_error: float | None, max_error_increase: float | None, val: Split | None,
                 original_session: Any) -> float | None:
    """The validation error a training pass may end at: ``--max-error`` as given, or the original
    model's val error plus ``--max-error-increase`` (without labels: the share of changed
    predictions allowed). None without a budget."""
    if max_error is None and max_error_increase is None:
        return None
    if val is None:
        raise DataError("an error budget needs a validation split in --data")
    if max_error is not None:
        return max_error
    if val.labels is None:
        return max_error_increase  # measured as disagreement with the original model
    return evaluate_session(original_session, val) + max_error_increase
