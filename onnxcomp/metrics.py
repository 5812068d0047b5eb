"""Task metrics of a model on a data split: the number a compression result is judged by.

Kept apart from any runtime: :func:`classification_error` takes a plain ``predict_fn`` (an
InferenceSession, a TrainingSession's eval graph, a numpy reference), and
:func:`evaluate_session` adapts an ``onnxruntime.InferenceSession``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnxcomp.data import Split, batches
from onnxcomp.errors import DataError

PredictFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def classification_error(predict_fn: PredictFn, split: Split, batch_size: int = 1000) -> float:
    """Fraction of samples whose arg-max logit is not the label (0.0 = all correct).

    ``predict_fn`` receives a batch of the split's inputs by name and returns logits of shape
    ``[batch, classes]``.
    """
    if split.labels is None:
        raise DataError("classification error needs labels; this split has none")
    wrong = 0
    for batch in batches(split, batch_size):
        logits = np.asarray(predict_fn(batch.inputs))
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise DataError(f"predictions of shape {logits.shape} for a batch of {len(batch)}: want [batch, classes]")
        wrong += int(np.count_nonzero(logits.argmax(axis=1) != batch.labels))
    return wrong / len(split)


def evaluate_session(session: Any, split: Split, batch_size: int = 1000, output: str | None = None) -> float:
    """Classification error of an ``onnxruntime.InferenceSession`` on ``split``.

    The split's inputs are matched to the session's inputs by name; when both have exactly one
    input they are matched regardless of name. ``output`` picks the logits output (default: the
    first). The session's batch dimension must accept ``batch_size`` rows.
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

    return classification_error(predict, split, batch_size)


def argmax_predictions(session: Any, split: Split, batch_size: int = 256) -> np.ndarray:
    """Arg-max over the last axis of the first output, flattened per sample: [N, positions]."""
    names = [i.name for i in session.get_inputs()]
    out = session.get_outputs()[0].name
    preds = []
    for batch in batches(split, batch_size):
        feed = {n: batch.inputs[n] for n in names}
        logits = np.asarray(session.run([out], feed)[0])
        preds.append(logits.argmax(axis=-1).reshape(logits.shape[0], -1))
    return np.concatenate(preds)


def disagreement(session_a: Any, session_b: Any, split: Split) -> float:
    """Fraction of samples whose arg-max predictions differ anywhere (no labels needed)."""
    a, b = argmax_predictions(session_a, split), argmax_predictions(session_b, split)
    return float(np.mean(np.any(a != b, axis=1)))


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
