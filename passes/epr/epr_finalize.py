"""``epr-finalize``: end EPR's training form without training (``finetune`` ends it by itself).

Rounds the latents where ``epr-reparam`` put them and rewrites the model into the intermediate
form ``pack`` codes (``passes/epr/form.py``: ``finalize_epr``). Useful to see what EPR's start
costs and how accurate it is: ``normalize,epr-reparam,epr-finalize,pack``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from onnxcomp.errors import PassError
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.epr.form import finalize_epr


@register_pass
@dataclass
class EprFinalizePass(CompressionPass):
    name = "epr-finalize"
    summary = "round an epr-reparam graph's latents and strip its training paths (finetune does this when it ends)"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not finalize_epr(model, self.context):
            raise PassError("epr-finalize: the model is not an epr-reparam training graph (nothing to finalize)")
        return ir.passes.PassResult(model, True)
