"""``quantize``: every float weight becomes integer latents plus a standard decode subgraph.

    W  ->  k (int32 initializer) -> Cast(to=W's type) -> Mul(step) -> W's consumers

k = round(W / step), with one step per output channel (or per tensor). This is the same
representation the learned methods produce, so ``pack`` and the runtime serve all of them.

Step rule (data-free, one knob ``bits``): step_c = rms_c * sqrt(12) * 2**-bits, where rms_c is
the root-mean-square of output channel c. The quantization noise (step**2 / 12) is then the same
fraction, 4**-bits, of every channel's power: the equal-slope rate-distortion solution when each
channel's output error is weighted by its signal power (high-rate theory: dD/dR is proportional
to the noise power, so equal relative noise equalizes the marginal return of a bit). ``bits`` is
thus the signal-to-noise ratio in 6.02 dB units; entropy-coded, a Gaussian-like weight costs
about bits + 0.25 bits per value, a peaked (Laplacian, pruned-looking) one less.

With data and ``--max-error-increase D`` the pass searches, on the validation split, the coarsest
steps whose error stays within D of the original model's (see onnxcomp.step_search).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import NothingToCompressError, PipelineError
from onnxcomp.irutil import new_initializer, unique_name
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.quantize_math import quantize_array, step_for
from onnxcomp.weights import Weight, find_weights

@register_pass
@dataclass
class QuantizePass(CompressionPass):
    name = "quantize"
    summary = "weights -> int32 latents + Cast/Mul decode subgraph (step from an RD rule or a data search)"

    bits: float = field(default=5.0, metadata={"help": "signal-to-noise of every channel, in 6.02 dB units (data-free step rule)"})
    bias_bits: float = field(default=4.0, metadata={"help": "extra bits for biases (few values, output-critical)"})
    per_channel: bool = field(default=True, metadata={"help": "one step per output channel (else per tensor)"})

    def validate_options(self) -> None:
        if not 0.0 < self.bits <= 24.0:
            raise PipelineError(f"pass 'quantize': option bits={self.bits} must be in (0, 24]")
        if not 0.0 <= self.bias_bits <= 16.0:
            raise PipelineError(f"pass 'quantize': option bias_bits={self.bias_bits} must be in [0, 16]")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        weights, skipped = find_weights(model)
        self.context.log.extend(skipped)
        if not weights:
            raise NothingToCompressError(
                "quantize: the model has no float weight initializer feeding Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN"
            )
        bits = {w.name: self.bits + (self.bias_bits if w.role == "bias" else 0.0) for w in weights}
        if self.context.max_error_increase is not None and self.context.data is not None:
            from onnxcomp.step_search import search_bits

            bits = search_bits(model, weights, self, self.context)
        taken = None
        for w in weights:
            taken = replace_with_latents(model, w, bits[w.name], self.per_channel, taken)
        return ir.passes.PassResult(model, True)

    def steps(self, w: Weight, bits: float) -> np.ndarray:
        return step_for(w.value.const_value.numpy(), w.channel_axes if self.per_channel else (), bits)


def replace_with_latents(model: ir.Model, w: Weight, bits: float, per_channel: bool, taken: set[str] | None):
    """Swap weight ``w`` for latents + Cast + Mul producing a value of the weight's name."""
    from onnxcomp.irutil import all_names

    graph = model.graph
    taken = all_names(model) if taken is None else taken
    array = w.value.const_value.numpy()
    step = step_for(array, w.channel_axes if per_channel else (), bits)
    k, _ = quantize_array(array, step)
    name = w.name
    latent = new_initializer(graph, unique_name(model, f"{name}.latent", taken), k)
    step_v = new_initializer(graph, unique_name(model, f"{name}.step", taken), step.astype(array.dtype))
    cast = ir.Node("", "Cast", [latent], {"to": ir.AttrInt64("to", int(w.value.const_value.dtype))},
                   name=unique_name(model, f"{name}/decode_cast", taken))
    mul = ir.Node("", "Mul", [cast.outputs[0], step_v], name=unique_name(model, f"{name}/decode_scale", taken))
    cast.outputs[0].name = unique_name(model, f"{name}.dequant", taken)
    cast.outputs[0].dtype = w.value.const_value.dtype
    mul.outputs[0].dtype = w.value.const_value.dtype
    mul.outputs[0].shape = ir.Shape(array.shape)
    # Decode nodes read only initializers, so the top of the graph is always a valid place
    # (consumers inside If/Loop bodies read the decoded value from the outer scope).
    graph.insert_before(graph[0], [cast, mul])
    w.value.replace_all_uses_with(mul.outputs[0])
    del graph.initializers[name]
    mul.outputs[0].name = name
    return taken

