"""``quantize``: every float weight becomes integer latents plus a standard decode subgraph.

    W  ->  k (int32 initializer) -> Cast(to=W's type) -> Mul(step) -> W's consumers

k = round(W / step), with one step per output channel (or per tensor). This is the same
representation the learned methods produce, so ``pack`` and the runtime serve all of them.

Steps (``grid``, ``bits``): on the ``peak`` grid (default) step_c = peak_c / 127 * 2**(8 - bits),
so bits 8 is exactly the symmetric per-channel grid int8 quantizers store and each bit less
doubles the step. On the ``rms`` grid step_c = rms_c * sqrt(12) * 2**-bits: the noise (step**2 /
12) is the same fraction, 4**-bits, of every channel's power, the equal-slope rate-distortion
solution when each channel's output error is weighted by its signal power; entropy coded, a
Gaussian-like weight then costs about bits + 0.25 bits per value.

Which step (``target``): a per-tensor rule cannot see how errors compound through depth (the
4-bit rms rule is lossless on the LeNets and loses far more than int8 on deep third-party nets),
so by default (``target=int8``) the pass measures it on the model itself: the coarsest steps whose
output change stays within int8's (``probes.py``): onnxruntime's own int8 on the ``--data`` inputs
when given (no labels needed; at most twice int8's weights' change), int8's weights on probe
inputs built from the model's declared inputs otherwise; one ``bits`` for all or, where the
inputs are samples rather than guesses, per tensor (``allocation.py``: each tensor's share of
the change in proportion to its size), whichever is smaller. ``target=rule`` takes ``bits`` as
it is for every tensor.

Integers: rate-distortion optimized rounding (``rdo``): each value may move one step toward
zero, or to zero, when that saves more bits (under the tensor's own histogram) than it costs in
squared error at the step's own RD slope. With data (``--data``), the train split's layer
input statistics weigh each weight's error by how much its input matters (dead inputs cost
nothing), and Gemm/MatMul/Conv weights are rounded by GPTQ, which spreads each rounding error
onto the weights not yet rounded (``gptq.py``); all of it stays on the same step grid.

With labelled or unlabelled data and ``--max-error-increase D`` the pass searches instead, on the
validation split, the coarsest steps whose task error stays within D of the original model's
(``step_search.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.coding import narrowest_int_dtype
from onnxcomp.errors import NothingToCompressError, PipelineError
from onnxcomp.graph.edit import all_names, new_initializer, replace_initializer, unique_name
from onnxcomp.graph.weights import Weight, already_int8, find_weights, quantized_weights
from onnxcomp.model_io import release_pages
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.quantize.step_rule import (RD_SLOPE, channel_scale, decode_dtype, dequantize, quantize_array,
                                               step_from_scale)


# The rule's step per grid (target=rule, and target=int8 where the model cannot be run on probe
# inputs): peak 8 = int8's own weights, entropy coded; rms 4 = the signal-to-noise rule that
# suits shallow nets (LeNets) and loses more than int8 on deep ones (BENCHMARKS.md, corpus).
DEFAULT_BITS = {"peak": 8.0, "rms": 4.0}


@register_pass
@dataclass
class QuantizePass(CompressionPass):
    name = "quantize"
    summary = "weights -> int32 latents + Cast/Mul decode subgraph (step from an RD rule or a data search)"

    grid: str = field(default="peak", metadata={"help": "what bits measure: peak (8 = int8's symmetric per-channel grid, each bit less doubles the step) or rms (signal-to-noise of every channel, 6.02 dB units)"})
    bits: float | None = field(default=None, metadata={"help": "the step on the grid (default: 8 on peak, 4 on rms)"})
    bias_bits: float = field(default=4.0, metadata={"help": "extra bits for biases (few values, output-critical)"})
    per_channel: bool = field(default=True, metadata={"help": "one step per output channel (else per tensor)"})
    rdo: float | None = field(default=None, metadata={"help": "rate-distortion rounding strength, x the RD slope of the step (0 = plain rounding; default 0 on peak, 1 on rms)"})
    importance: bool = field(default=True, metadata={"help": "with data, weigh each weight's error by its input's mean square"})
    gptq: bool = field(default=True, metadata={"help": "with data, error-compensating rounding (GPTQ) for Gemm/MatMul/Conv weights"})
    target: str | None = field(default=None, metadata={"help": "without an error budget: int8 (the coarsest steps whose output change stays within int8's: onnxruntime int8 on the --data inputs, int8 weights on probe inputs without data) or rule (every tensor at bits); default int8, rule when bits is given"})
    allocate: bool = field(default=True, metadata={"help": "with target=int8: also try per-tensor bits (each tensor's share of the output change in proportion to its size) and keep them when smaller"})
    probe_margin: float = field(default=1.0, metadata={"help": "with target=int8: the budget is this times int8's output change"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._stats: dict = {}  # weight name -> (LayerView, H) measured on the train split
        self._scales: dict[tuple, np.ndarray] = {}  # (weight, its tensor) -> channel_scale (QuantizePass.scale)

    def validate_options(self) -> None:
        if self.grid not in ("rms", "peak"):
            raise self.option_error("grid", self.grid, "rms or peak")
        if not 0.0 < self.base_bits <= 24.0:
            raise PipelineError(f"pass 'quantize': option bits={self.bits} must be in (0, 24]")
        if not 0.0 <= self.bias_bits <= 16.0:
            raise PipelineError(f"pass 'quantize': option bias_bits={self.bias_bits} must be in [0, 16]")
        if not 0.0 <= self.rdo_strength <= 100.0:
            raise PipelineError(f"pass 'quantize': option rdo={self.rdo} must be in [0, 100]")
        if self.target not in (None, "rule", "int8"):
            raise self.option_error("target", self.target, "rule or int8")
        if not self.probe_margin > 0:
            raise self.option_error("probe_margin", self.probe_margin, "> 0")

    @property
    def base_bits(self) -> float:
        """``bits``, or its grid's default (DEFAULT_BITS)."""
        return self.bits if self.bits is not None else DEFAULT_BITS[self.grid]

    @property
    def step_target(self) -> str:
        """``target``, or by default: rule when ``bits`` is given, int8 otherwise."""
        return self.target or ("rule" if self.bits is not None else "int8")

    @property
    def rdo_strength(self) -> float:
        """``rdo``, or its grid's default: plain rounding on peak (int8's own rounding), 1 on rms."""
        return self.rdo if self.rdo is not None else (0.0 if self.grid == "peak" else 1.0)

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
        if self.step_target == "int8" and self.context.max_error_increase is None and (q := already_int8(model)):
            # int8 is no yardstick for a model that already is int8 (its int8 is itself), and its
            # float tensors feed activations that are re-quantized, where any change can cross a
            # rounding boundary (smart-turn-v3's decisions move even between onnxruntime's own
            # optimization levels): they stay exact unless asked (bits=B, or a budget).
            self.context.warn(f"quantize: the model is already quantized ({q}); its {len(weights)} float "
                              f"weight(s) stay exact (quantize{{bits=B}} quantizes them)")
            return ir.passes.PassResult(model, False)
        data = self.context.data
        self.collect_statistics(model, weights)
        bits = {w.name: self.base_bits + (self.bias_bits if w.role == "bias" else 0.0) for w in weights}
        if self.context.max_error_increase is not None and data is not None:
            from onnxcomp.passes.quantize.step_search import search_bits

            bits = search_bits(model, weights, self, self.context)
        elif self.step_target == "int8":
            from onnxcomp.passes.quantize.probes import search_bits_on_probes

            bits = search_bits_on_probes(model, weights, self, self.context) or bits
        taken = all_names(model)
        # The per-tensor unit (quantize), on every core; the graph edits stay in order.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for w, (k, step) in zip(weights, pool.map(lambda w: narrow_latents(*self.quantize(w, bits[w.name])[:2]),
                                                      weights)):
                latent = replace_with_latents(model, w, k, step, taken)
                self.context.note(w.name, bits=bits[w.name], rounding=self.rounding(w), latent=latent)
        return ir.passes.PassResult(model, True)

    def collect_statistics(self, model: ir.Model, weights: list[Weight]) -> None:
        """The layer input statistics importance weighting and GPTQ rounding use (none without
        data): from the train split; data with only an evaluation split (a plain .npz)
        calibrates on that."""
        data = self.context.data
        self._stats: dict = {}
        calibration = None if data is None else data.train if data.train is not None else data.val
        if (self.importance or self.gptq) and calibration is not None:
            from onnxcomp.passes.quantize.layer_stats import input_covariances

            self._stats = input_covariances(model, weights, calibration)

    def quantize(self, w: Weight, bits: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latents, step, dequantized weight) of ``w`` at ``bits``: what the graph will compute.
        A weight mapped from its file is handed back to the OS afterwards (``release_pages``)."""
        try:
            return self._quantize(w, bits)
        finally:
            release_pages(w.value.const_value.numpy())

    def _quantize(self, w: Weight, bits: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from onnxcomp.passes.quantize.gptq import gptq_round
        from onnxcomp.passes.quantize.layer_stats import importance_from

        array = w.value.const_value.numpy()
        step = step_from_scale(self.scale(w), bits, self.grid)
        stats = self._stats.get(w.name)
        how = self.rounding(w)
        if how == "gptq":
            view, h = stats
            k = view.from_matrix(gptq_round(view.to_matrix(array), h, _row_step(view, step, array.shape)), array.shape)
            k = np.clip(k, -(2**31 - 1), 2**31 - 1).astype(np.int32)
            return k, step, dequantize(k, step, array.dtype)
        importance = importance_from(*stats, array.shape) if how == "rdo-weighted" else 1.0
        k, deq = quantize_array(array, step, importance, self.rdo_strength * RD_SLOPE)
        return k, step, deq

    def scale(self, w: Weight) -> np.ndarray:
        """``w``'s ``channel_scale`` (peaks or rms per channel), measured once per weight: searches
        quantize the same tensor at many bits."""
        key = (w.name, id(w.value.const_value))  # the tensor itself: a pass may swap a weight's value
        scale = self._scales.get(key)
        if scale is None:
            axes = w.channel_axes if self.per_channel else ()
            scale = self._scales[key] = channel_scale(w.value.const_value.numpy(), axes, self.grid)
        return scale

    def rounding(self, w: Weight) -> str:
        """How ``w`` is rounded: gptq, rdo-weighted (by input importance), rdo, or nearest."""
        stats = self._stats.get(w.name)
        axes = set(w.channel_axes) if self.per_channel else set()
        # GPTQ walks the input features, so the step may vary only along the outputs.
        if stats is not None and self.gptq and stats[1].ndim == 2 and axes <= {stats[0].output_axis}:
            return "gptq"
        if self.rdo_strength <= 0:
            return "nearest"
        return "rdo-weighted" if stats is not None and self.importance else "rdo"


def _row_step(view, step: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The step as one row of the [K, N] matrix view (it varies only along the outputs)."""
    return view.to_matrix(np.broadcast_to(step, shape))[0]


def narrow_latents(k: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents in the narrowest integer type that holds them, until pack codes them (int8 at
    int8's grid: a quarter of the weight's bytes, not all of them, while the model is in memory)."""
    return (k.astype(narrowest_int_dtype(int(k.min()), int(k.max())), copy=False) if k.size else k), step


def replace_with_latents(model: ir.Model, w: Weight, k: np.ndarray, step: np.ndarray, taken: set[str]) -> str:
    """Swap weight ``w`` for latents + Cast + Mul producing a value of the weight's name; returns
    the latents' initializer name."""
    graph = model.graph
    array = w.value.const_value.numpy()
    name = w.name
    latent = new_initializer(graph, unique_name(model, f"{name}.latent", taken), k)
    dtype = w.value.const_value.dtype
    # bfloat16 has no CPU Mul kernel: its weights decode in float32 and are cast at the end,
    # the arithmetic quantize_array does (step_rule.decode_dtype).
    compute = ir.DataType.from_numpy(decode_dtype(array.dtype))
    step_v = new_initializer(graph, unique_name(model, f"{name}.step", taken), step.astype(decode_dtype(array.dtype)))
    cast = ir.Node("", "Cast", [latent], {"to": ir.AttrInt64("to", int(compute))},
                   name=unique_name(model, f"{name}/decode_cast", taken))
    mul = ir.Node("", "Mul", [cast.outputs[0], step_v], name=unique_name(model, f"{name}/decode_scale", taken))
    cast.outputs[0].name = unique_name(model, f"{name}.dequant", taken)
    cast.outputs[0].dtype = compute
    mul.outputs[0].dtype = compute
    mul.outputs[0].shape = ir.Shape(array.shape)
    nodes, decoded = [cast, mul], mul.outputs[0]
    if compute != dtype:
        back = ir.Node("", "Cast", [decoded], {"to": ir.AttrInt64("to", int(dtype))},
                       name=unique_name(model, f"{name}/decode_to_{dtype.name.lower()}", taken))
        back.outputs[0].dtype = dtype
        back.outputs[0].shape = ir.Shape(array.shape)
        nodes.append(back)
        decoded = back.outputs[0]
    # Decode nodes read only initializers, so the top of the graph is always a valid place
    # (consumers inside If/Loop bodies read the decoded value from the outer scope).
    graph.insert_before(graph[0], nodes)
    replace_initializer(graph, w.value, decoded)
    return latent.name

