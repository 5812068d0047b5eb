"""One definition of predictions and error: the class axis, and the error with and without labels."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.data import Split
from onnxcomp.errors import DataError
from onnxcomp.metrics import class_axis, classification_error, error_rate, predictions, truth_rows


@pytest.mark.parametrize("output, labels, axis", [
    ((8, 10), None, 1), ((8, 10), (8,), 1),
    ((8, 25, 40), None, 2),            # sequence logits [N, T, C] without labels: per frame
    ((8, 25, 40), (8, 25), 2),         # ... and with per-frame labels
    ((8, 5, 6, 7), (8, 6, 7), 1),      # segmentation [N, C, H, W], labels [N, H, W]
])
def test_the_class_axis(output, labels, axis):
    assert class_axis(output, labels) == axis


def test_outputs_without_a_class_axis_and_labels_that_fit_no_axis_are_named():
    with pytest.raises(DataError, match=r"shape \(8,\) has no class axis"):
        class_axis((8,))
    with pytest.raises(DataError, match=r"labels of shape \(8, 3\) do not fit model output \(8, 5, 6, 7\)"):
        class_axis((8, 5, 6, 7), (8, 3))


def test_a_sample_is_wrong_when_any_of_its_positions_is():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7, 4)).astype(np.float32)  # [N, T, C]
    truth = logits.argmax(axis=-1)
    truth[3, 5] = (truth[3, 5] + 1) % 4
    truth[9, 0] = (truth[9, 0] + 2) % 4
    split = Split({"x": logits}, truth.astype(np.int64))
    pred = predictions(lambda inputs: inputs["x"], split, batch_size=16)
    assert pred.shape == (50, 7)
    assert error_rate(pred, truth_rows(split.labels)) == 2 / 50
    assert classification_error(lambda inputs: inputs["x"], split, batch_size=7) == 2 / 50
