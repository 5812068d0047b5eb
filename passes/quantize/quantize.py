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

Integers: rate-distortion optimized rounding (``rdo``): each value may move one step toward
zero, or to zero, when that saves more bits (under the tensor's own histogram) than it costs in
squared error at the step's own RD slope. With data (``--data``), the train split's layer
input statistics weigh each weight's error by how much its input matters (dead inputs cost
nothing), and Gemm/MatMul/Conv weights are rounded by GPTQ, which spreads each rounding error
onto the weights not yet rounded (``gptq.py``); all of it stays on the same step grid.

With data and ``--max-error-increase D`` the pass searches, on the validation split, the coarsest
steps whose error stays within D of the original model's (``step_search.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import NothingToCompressError, PipelineError
from onnxcomp.graph.edit import all_names, new_initializer, replace_initializer, unique_name
from onnxcomp.graph.weights import Weight, find_weights, quantized_weights
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.quantize.step_rule import RD_SLOPE, quantize_array, step_for


@register_pass
@dataclass
class QuantizePass(CompressionPass):
    name = "quantize"
    summary = "weights -> int32 latents + Cast/Mul decode subgraph (step from an RD rule or a data search)"

    bits: float = field(default=4.0, metadata={"help": "signal-to-noise of every channel, in 6.02 dB units (data-free step rule)"})
    bias_bits: float = field(default=4.0, metadata={"help": "extra bits for biases (few values, output-critical)"})
    per_channel: bool = field(default=True, metadata={"help": "one step per output channel (else per tensor)"})
    rdo: float = field(default=1.0, metadata={"help": "rate-distortion rounding strength, x the RD slope of the step (0 = plain rounding)"})
    importance: bool = field(default=True, metadata={"help": "with data, weigh each weight's error by its input's mean square"})
    gptq: bool = field(default=True, metadata={"help": "with data, error-compensating rounding (GPTQ) for Gemm/MatMul/Conv weights"})
    target: str = field(default="rule", metadata={"help": "without an error budget: rule (every tensor at bits), or int8 (the coarsest steps whose output change on probe inputs stays within int8 weights')"})
    probe_margin: float = field(default=1.0, metadata={"help": "with target=int8: the budget is this times int8's output change"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._stats: dict = {}  # weight name -> (LayerView, H) measured on the train split

    def validate_options(self) -> None:
        if not 0.0 < self.bits <= 24.0:
            raise PipelineError(f"pass 'quantize': option bits={self.bits} must be in (0, 24]")
        if not 0.0 <= self.bias_bits <= 16.0:
            raise PipelineError(f"pass 'quantize': option bias_bits={self.bias_bits} must be in [0, 16]")
        if not 0.0 <= self.rdo <= 100.0:
            raise PipelineError(f"pass 'quantize': option rdo={self.rdo} must be in [0, 100]")
        if self.target not in ("rule", "int8"):
            raise self.option_error("target", self.target, "rule or int8")
        if not self.probe_margin > 0:
            raise self.option_error("probe_margin", self.probe_margin, "> 0")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        weights, skipped = find_weights(model)
        self.context.log.extend(skipped)
        if not weights and quantized_weights(model):
            # An already quantized model: pack codes its integer weights exactly.
            self.context.warn("quantize: no float weights; the model's integer weights are coded exactly by pack")
            return ir.passes.PassResult(model, False)
        if not weights:
            raise NothingToCompressError(
                "quantize: the model has no float weight initializer feeding Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN"
            )
        data = self.context.data
        self._stats: dict = {}
        calibration = None if data is None else data.train if data.train is not None else data.val
        if (self.importance or self.gptq) and calibration is not None:
            from onnxcomp.passes.quantize.layer_stats import input_covariances

            # Layer statistics come from the train split; data with only an evaluation split
            # (a plain .npz) calibrates on that.
            self._stats = input_covariances(model, weights, calibration)
        bits = {w.name: self.bits + (self.bias_bits if w.role == "bias" else 0.0) for w in weights}
        if self.context.max_error_increase is not None and data is not None:
            from onnxcomp.passes.quantize.step_search import search_bits

            bits = search_bits(model, weights, self, self.context)
        elif self.target == "int8":
            from onnxcomp.passes.quantize.probes import search_bits_on_probes

            bits = search_bits_on_probes(model, weights, self, self.context) or bits
        taken = all_names(model)
        for w in weights:
            k, step, _ = self.quantize(w, bits[w.name])
            latent = replace_with_latents(model, w, k, step, taken)
            self.context.note(w.name, bits=bits[w.name], rounding=self.rounding(w), latent=latent)
        return ir.passes.PassResult(model, True)

    def quantize(self, w: Weight, bits: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latents, step, dequantized weight) of ``w`` at ``bits``: what the graph will compute."""
        from onnxcomp.passes.quantize.gptq import gptq_round
        from onnxcomp.passes.quantize.layer_stats import importance_from

        array = w.value.const_value.numpy()
        step = step_for(array, w.channel_axes if self.per_channel else (), bits)
        stats = self._stats.get(w.name)
        how = self.rounding(w)
        if how == "gptq":
            view, h = stats
            k = view.from_matrix(gptq_round(view.to_matrix(array), h, _row_step(view, step, array.shape)), array.shape)
            k = np.clip(k, -(2**31 - 1), 2**31 - 1).astype(np.int32)
            return k, step, (k.astype(array.dtype) * step.astype(array.dtype)).astype(array.dtype)
        importance = importance_from(*stats, array.shape) if how == "rdo-weighted" else 1.0
        k, deq = quantize_array(array, step, importance, self.rdo * RD_SLOPE)
        return k, step, deq

    def rounding(self, w: Weight) -> str:
        """How ``w`` is rounded: gptq, rdo-weighted (by input importance), rdo, or nearest."""
        stats = self._stats.get(w.name)
        axes = set(w.channel_axes) if self.per_channel else set()
        # GPTQ walks the input features, so the step may vary only along the outputs.
        if stats is not None and self.gptq and stats[1].ndim == 2 and axes <= {stats[0].output_axis}:
            return "gptq"
        if self.rdo <= 0:
            return "nearest"
        return "rdo-weighted" if stats is not None and self.importance else "rdo"


def _row_step(view, step: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The step as one row of the [K, N] matrix view (it varies only along the outputs)."""
    return view.to_matrix(np.broadcast_to(step, shape))[0]


def replace_with_latents(model: ir.Model, w: Weight, k: np.ndarray, step: np.ndarray, taken: set[str]) -> str:
    """Swap weight ``w`` for latents + Cast + Mul producing a value of the weight's name; returns
    the latents' initializer name."""
    graph = model.graph
    array = w.value.const_value.numpy()
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
    replace_initializer(graph, w.value, mul.outputs[0])
    return latent.name

