"""The forms a model takes between passes, as far as passes of different methods must know them.

Every method ends in one *intermediate form*, the only one ``pack`` reads: each weight is a
decode subgraph of standard ops over integer initializers, and the value the subgraph computes
carries the weight's name:

    W.latent (int) -> Cast -> [Mul(step) | decoder nodes] -> W        quantize, EPR
    W.idx (int) -> Gather(codebook) -> W                               weight fixing

A method whose graph is first a *training form* (trainable latents, noise inputs, rate paths)
marks the model with the pass that ends that form; ``pack`` and the other weight passes refuse a
marked model by naming that pass, so no pass needs to know another method's graph.
"""

from __future__ import annotations

import onnx_ir as ir

TRAINING_FORM_KEY = "onnxcomp.training_form"


def mark_training_form(model: ir.Model, finalized_by: str) -> None:
    """Record that ``model`` is a training graph that the pass ``finalized_by`` turns into the
    intermediate form."""
    model.metadata_props[TRAINING_FORM_KEY] = finalized_by


def training_form(model: ir.Model) -> str | None:
    """The pass that ends ``model``'s training form, or None when it is in no training form."""
    return model.metadata_props.get(TRAINING_FORM_KEY)


def clear_training_form(model: ir.Model) -> None:
    model.metadata_props.pop(TRAINING_FORM_KEY, None)
