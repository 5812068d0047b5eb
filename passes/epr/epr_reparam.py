"""``epr-reparam``: every weight becomes a trainable latent, a decoder, and a rate under a learned prior.

Entropy-penalized reparameterization (Oktay et al., "Scalable Model Compression by Entropy
Penalized Reparameterization", ICLR 2020): each weight is decoded from integer latents, and
training penalizes the latents' code length under a learned prior, so the network learns
weights that are cheap to entropy code. For a weight W the pass writes, in the model itself (so
the pipeline's verifier and any ONNX tool see it), three subgraphs over new initializers:

    task path (role "train")    x = 64 * W.phi;  W.k = x + (round(x) - x)      straight-through round
                                (latents=weight: x = 64 * W.phi * Exp(W.log_step0 - W.log_step))
                                W.scale = Exp(W.log_step)
    decoder   (role "decoder")  W = W.k * W.scale                              affine (dense, biases)
                                W = Reshape(Reshape(W.k, [-1, hw]) @ D) * W.scale   conv kernels with
                                                                               decoder "dct"
    rate path (role "rate")     y = x + u,  u = slice of graph input onnxcomp.noise
                                bits = -sum log2 p(y) under the tensor's prior  -> onnxcomp.rate_bits

``finetune`` trains the initializers listed in the model's ``onnxcomp.epr`` metadata (JSON, see
``passes/epr/form.py``) and ends with ``finalize_epr``, which replaces the task and rate paths
with ``W.latent`` (int32) -> Cast and ``W.step`` (float), keeping the decoder nodes (the
``epr-finalize`` pass does the same without training); so a packed EPR file is EntropyDecode ->
Cast -> decoder -> the weight's consumers, and its outputs equal the trained graph's with its
latents exactly on the integers.

Why these forms (all measured in spikes/epr/FINDINGS.md against ONNX Runtime training 1.19):
``Round``/``Floor``/``Sign`` have no gradient builder and ``w + Cast(Cast(w)) - w`` trains with a zero
gradient, so the rounding residual is computed from a gradient-free fixed-point copy of x
(int32, |x| <= 255); the latent is stored as x/64 so that AdamW's step (lr 1e-3) moves x by at most
~0.06 per step, and 64 is a power of two so x = 64 * phi is exact both ways. The noise is a graph
input, not RandomUniform: ORT's random state cannot be checkpointed, and a resumed run must
reproduce an uninterrupted one bit for bit.

``latents=weight`` (the default) trains the decoded weight instead of the latents (phi is the
weight in units of the start step, a constant ``W.log_step0``): a step that grows then shrinks
the latents at an unchanged weight, so the rate term moves the steps directly, as learned-step
quantizers (LSQ) do. With ``latents=scaled`` a larger step rescales the weight, which the task
term resists, and the rate can fall only by moving every latent toward zero. Measured at fixed
lambdas on the three labeled models (LeNet-300-100 at 0.3 and 0.5, LeNet5-Caffe at 1, the
Fashion-MNIST LeNet at 0.3): 10-35% fewer bytes at no more test error; from ptq's start
(distillation on a corpus model) both keep the start (BENCHMARKS.md, issue 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import NothingToCompressError, PassError, PipelineError
from onnxcomp.graph.edit import NodeBuilder, all_names, new_initializer, replace_initializer
from onnxcomp.graph.forms import mark_training_form, training_form
from onnxcomp.graph.weights import Weight, already_int8, find_weights
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.passes.epr.form import (DECODER, FIXED_POINT, LATENT_FACTOR, LATENT_LIMIT, METADATA_KEY, NOISE_INPUT, RATE,
                                      RATE_OUTPUT, ROUND_OFFSET, TRAIN, EprSpec, EprTensor)
from onnxcomp.passes.epr.priors import PRIORS, latent_span
from onnxcomp.passes.quantize.step_rule import INT8_LEVELS, step_for


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, rows are frequencies: coefficients = D @ signal, signal = D.T @ c."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def inverse_dct_2d(kh: int, kw: int) -> np.ndarray:
    """[kh*kw, kh*kw] matrix M with kernel_flat = coefficients_flat @ M (the 2-D inverse DCT)."""
    return np.kron(dct_matrix(kh), dct_matrix(kw))


@register_pass
@dataclass
class EprReparamPass(CompressionPass):
    name = "epr-reparam"
    summary = "weights -> trainable latents + decoders + rate under a learned prior (train with finetune)"

    prior: str = field(default="factorized", metadata={"help": "learned prior per tensor: factorized (Balle 2018) or logistic (cheaper steps: ~4x on dense nets)"})
    start: str = field(default="auto", metadata={"help": "initial steps: rule (quantize's RD rule at bits, per tensor), ptq (per channel, the steps quantize's default search picks: output change within int8's, on the --data inputs), auto = ptq when the train split has no labels (distillation), else rule"})
    bits: float = field(default=2.0, metadata={"help": "initial step from the RD rule of quantize, in 6.02 dB units (start=rule)"})
    bias_bits: float = field(default=2.0, metadata={"help": "extra initial bits for biases"})
    per_channel: bool = field(default=False, metadata={"help": "one learned step per output channel (else per tensor: 4 B per channel saved)"})
    conv_decoder: str = field(default="affine", metadata={"help": "conv kernels: affine, or dct (learned HWxHW decoder initialised to the inverse DCT)"})
    share_decoders: bool = field(default=True, metadata={"help": "with conv_decoder=dct, one decoder per kernel shape for the whole network"})
    step_speed: float = field(default=1.0, metadata={"help": "the learned log steps move this many times faster than the latents (a power of two, 1..64): the rate's lever with latents=weight"})
    latents: str = field(default="weight", metadata={"help": "what training moves: weight (the decoded weight: x = 64 phi step0 / step, so a larger step codes the same weight in fewer bits) or scaled (the latents, x = 64 phi)"})

    def validate_options(self) -> None:
        if self.prior not in PRIORS:
            raise PipelineError(f"pass 'epr-reparam': option prior={self.prior!r} must be one of {sorted(PRIORS)}")
        if self.conv_decoder not in ("affine", "dct"):
            raise PipelineError(f"pass 'epr-reparam': option conv_decoder={self.conv_decoder!r} must be affine or dct")
        if self.latents not in ("scaled", "weight"):
            raise PipelineError(f"pass 'epr-reparam': option latents={self.latents!r} must be weight or scaled")
        if self.step_speed not in [2.0**i for i in range(7)]:
            raise PipelineError(f"pass 'epr-reparam': option step_speed={self.step_speed:g} must be a power of two from 1 to 64")
        if self.start not in ("auto", "rule", "ptq"):
            raise PipelineError(f"pass 'epr-reparam': option start={self.start!r} must be auto, rule or ptq")
        if not 0.0 < self.bits <= 16.0:
            raise PipelineError(f"pass 'epr-reparam': option bits={self.bits} must be in (0, 16]")
        if not 0.0 <= self.bias_bits <= 16.0:
            raise PipelineError(f"pass 'epr-reparam': option bias_bits={self.bias_bits} must be in [0, 16]")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if EprSpec.from_model(model) is not None or training_form(model) is not None:
            raise PassError("epr-reparam: the model is already reparameterized (it is in a training form)")
        weights, skipped = find_weights(model)
        self.context.log.extend(skipped)
        for w in weights:
            if w.value.const_value.dtype != ir.DataType.FLOAT:
                self.context.log.append(f"{w.name}: {w.value.const_value.dtype.name} weight left as is (epr-reparam trains float32)")
        weights = [w for w in weights if w.value.const_value.dtype == ir.DataType.FLOAT]
        if not weights:
            raise NothingToCompressError(
                "epr-reparam: the model has no float32 weight initializer feeding Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN")
        if self.start == "auto" and self.start_from() == "ptq" and (q := already_int8(model)):
            # ptq's own rule (quantize.py): the float tensors of an already-quantized model feed
            # re-quantized activations, where any change moves decisions (smart-turn-v3: 7 of
            # its eval decisions flipped after EPR from ptq's steps, 0 under ptq, which keeps them).
            raise NothingToCompressError(
                f"epr-reparam: the model is already quantized ({q}); distilling its float weights moves its "
                "decisions, which ptq keeps exact (-p ptq); epr-reparam{start=ptq} trains them anyway")
        self._start_bits = self._ptq_bits(model, weights) if self.start_from() == "ptq" else None
        if self._start_bits is not None:
            mean = sum(self._start_bits.values()) / len(self._start_bits)
            self.context.say(f"  initial steps from ptq's search, per channel (mean {mean:.2f} bits on int8's grid)")
        rng = np.random.default_rng(self.context.seed)
        b = NodeBuilder(model, all_names(model))
        total = sum(int(np.prod(w.shape)) for w in weights)
        noise = ir.Value(name=b.name(NOISE_INPUT), shape=ir.Shape([total]), type=ir.TensorType(ir.DataType.FLOAT))
        model.graph.inputs.append(noise)
        decoders: dict[tuple[int, int], ir.Value] = {}
        tensors, rates, offset = [], [], 0
        for w in weights:
            t, bits = self._reparam(model, b, w, noise, offset, rng, decoders)
            tensors.append(t)
            rates.append(bits)
            offset += int(np.prod(w.shape))
        rate = rates[0]
        for term in rates[1:]:  # a chain of Adds: the variadic Sum has no gradient builder
            rate = b.op("Add", [rate, term], "rate", RATE)
        rate = b.op("Identity", [rate], "rate", RATE, output_names=[b.name(RATE_OUTPUT)])
        rate.dtype, rate.shape = ir.DataType.FLOAT, ir.Shape([])
        model.graph.insert_before(model.graph[0], b.nodes)
        model.graph.outputs.append(rate)
        spec = EprSpec(self.prior, total, tensors, [d.name for d in decoders.values()], noise.name, rate.name)
        model.metadata_props[METADATA_KEY] = spec.to_json()
        mark_training_form(model, "epr-finalize")
        return ir.passes.PassResult(model, True)

    def start_from(self) -> str:
        """``start`` with auto resolved. Why labels decide: the rule's coarse start (2 bits per
        tensor) is recovered from only by long training on many labeled samples (the LeNets:
        ~10k steps on 50k labels); a few hundred unlabeled inputs give ~1k steps, from which a
        deep net never comes back (oww-embedding: cosine 0.60 after training from the rule,
        0.997 from ptq's steps; BENCHMARKS.md, issue 12)."""
        if self.start != "auto":
            return self.start
        data = self.context.data
        train = None if data is None else data.train
        return "ptq" if train is not None and train.labels is None else "rule"

    def _ptq_bits(self, model: ir.Model, weights: list[Weight]) -> dict[str, float]:
        """Per-weight bits of quantize's default search (output change within int8's weights' or,
        with --data, onnxruntime int8's on those inputs): EPR then trains from a point as good as
        ptq's instead of the LeNet-era rule, which is far coarser than deep nets tolerate."""
        from onnxcomp.pass_base import make_pass
        from onnxcomp.passes.quantize.probes import search_bits_on_probes

        qpass = make_pass("quantize", {})
        qpass.context = self.context
        # The steps ptq picks with its own rounding (GPTQ with data): coarser than nearest
        # rounding allows at the same output change; training then learns the rounding.
        qpass.collect_statistics(model, weights)
        bits = search_bits_on_probes(model, weights, qpass, self.context)
        self._qpass = qpass
        if bits is None:  # the model cannot be probed: the rule, per channel, at int8's grid
            return {w.name: 8.0 for w in weights}
        return bits

    def _reparam(self, model, b: NodeBuilder, w: Weight, noise: ir.Value, offset: int, rng, decoders) -> tuple[EprTensor, ir.Value]:
        graph, name = model.graph, w.name
        array = w.value.const_value.numpy().astype(np.float32)
        shape = list(array.shape)
        n = int(array.size)
        start_k = None
        if self._start_bits is not None:
            # ptq's choice, per channel on int8's grid; never finer than the latents can hold
            axes = w.channel_axes
            ptq_step = step_for(array, axes, self._start_bits[w.name], grid="peak")
            finest = step_for(array, axes, 8.0, grid="peak") * INT8_LEVELS / LATENT_LIMIT
            step = np.maximum(ptq_step, finest).astype(np.float32)
            if np.array_equal(step, ptq_step):
                # ptq's own rounding (GPTQ with data) as the starting latents: the start is the
                # calibrated ptq model itself, not nearest rounding at its steps
                k, quantize_step, _ = self._qpass.quantize(w, self._start_bits[w.name])
                if np.array_equal(quantize_step, step):
                    start_k = k.astype(np.float64)
        else:
            bits = self.bits + (self.bias_bits if w.role == "bias" else 0.0)
            axes = w.channel_axes if self.per_channel and w.role == "weight" else ()
            step = step_for(array, axes, bits)
        use_dct = self.conv_decoder == "dct" and w.role == "weight" and array.ndim == 4 and array.shape[2] * array.shape[3] > 1
        if use_dct:
            kh, kw = array.shape[2], array.shape[3]
            basis = inverse_dct_2d(kh, kw)
            coefficients = (array.reshape(-1, kh * kw).astype(np.float64) @ basis.T).reshape(array.shape)
            x0 = coefficients / step  # orthonormal: the coefficients have the kernels' rms
        elif start_k is not None:
            x0 = start_k
        else:
            x0 = array.astype(np.float64) / step
        x0 = np.clip(x0, -LATENT_LIMIT, LATENT_LIMIT)
        phi = new_initializer(graph, b.name(f"{name}.phi"), (x0 / LATENT_FACTOR).astype(np.float32))
        # The trained initializer is the log step / step_speed: AdamW moves each parameter by about
        # lr per step, so the steps move step_speed times faster than the latents (exact: a power of two).
        start_log_step = np.log(step).astype(np.float32)
        log_step = new_initializer(graph, b.name(f"{name}.log_step"), start_log_step / np.float32(self.step_speed))
        if self.step_speed != 1.0:
            log_step_value = b.op("Mul", [log_step, b.const(self.step_speed)], name, TRAIN)
        else:
            log_step_value = log_step
        log_step0 = None
        if self.latents == "weight":
            log_step0 = new_initializer(graph, b.name(f"{name}.log_step0"), start_log_step)

        def latent(role: str) -> ir.Value:
            """x = 64 phi, times step0 / step when training moves the weight (exactly 64 phi at the start)."""
            x = b.op("Mul", [phi, b.const(LATENT_FACTOR)], name, role)
            if log_step0 is None:
                return x
            return b.op("Mul", [x, b.op("Exp", [b.op("Sub", [log_step0, log_step_value], name, role)], name, role)], name, role)

        # task path: straight-through rounding of x
        x = latent(TRAIN)
        x = b.op("Clip", [x, b.const(-LATENT_LIMIT), b.const(LATENT_LIMIT)], name, TRAIN)
        k = b.op("Add", [x, round_residual(b, x, name)], name, TRAIN, output_names=[b.name(f"{name}.k")])
        k_name = k.name
        scale = b.op("Exp", [log_step_value], name, TRAIN, output_names=[b.name(f"{name}.scale")])
        # decoder: kept by pack
        decoder = None
        if use_dct:
            key = (kh, kw) if self.share_decoders else (kh, kw, name)
            if key not in decoders:
                label = f"onnxcomp.decoder.dct{kh}x{kw}" + ("" if self.share_decoders else f".{name}")
                decoders[key] = new_initializer(graph, b.name(label), basis.astype(np.float32))
            decoder = decoders[key]
            rows = b.op("Reshape", [k, b.const([-1, kh * kw], np.int64, f"{name}.rows_shape")], name, DECODER)
            mixed = b.op("MatMul", [rows, decoder], name, DECODER)
            k = b.op("Reshape", [mixed, b.const(shape, np.int64, f"{name}.shape")], name, DECODER)
        out = b.op("Mul", [k, scale], name, DECODER)
        out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(shape)
        replace_initializer(graph, w.value, out)

        # rate path: the prior's bits at x + U(-1/2, 1/2), the noise fed by the trainer
        start = b.const([offset], np.int64, f"{name}.noise_start")
        stop = b.const([offset + n], np.int64, f"{name}.noise_stop")
        u = b.op("Reshape", [b.op("Slice", [noise, start, stop], name, RATE), b.const(shape, np.int64)], name, RATE)
        y = b.op("Add", [latent(RATE), u], name, RATE)
        prior = PRIORS[self.prior]
        params = {key: new_initializer(graph, b.name(f"{name}.prior.{key}"), value)
                  for key, value in prior.init_params(x0, rng).items()}
        bits_value = prior.bits_graph(b, y, params, n, name, latent_span(x0))
        self.context.note(name, method="epr", prior=self.prior, decoder="dct" if use_dct else "affine")
        tensor = EprTensor(name, w.role, shape, phi.name, log_step.name, k_name, scale.name, offset, {key: v.name for key, v in params.items()},
                           decoder.name if decoder is not None else None, None if log_step0 is None else log_step0.name,
                           self.step_speed)
        return tensor, bits_value


def round_residual(b: NodeBuilder, x: ir.Value, prefix: str) -> ir.Value:
    """round(x) - x with no gradient path (x clipped to |x| <= 255).

    x_det = trunc(x * 2^16) / 2^16 is a copy of x the gradient cannot reach (error < 1.6e-5);
    r = trunc(x_det + 256.5) - 256 = floor(x_det + 1/2). The result is r - x_det, so the task
    path's forward value x + (r - x_det) is within 1.6e-5 of the integer r, and exactly r when x
    is an integer. :func:`rounded_latents` repeats this float32 arithmetic in numpy.
    """
    q = b.op("Cast", [b.op("Mul", [x, b.const(FIXED_POINT)], prefix, TRAIN)], prefix, TRAIN, to=ir.DataType.INT32)
    x_det = b.op("Mul", [b.op("Cast", [q], prefix, TRAIN, to=ir.DataType.FLOAT), b.const(1.0 / FIXED_POINT)], prefix, TRAIN)
    shifted = b.op("Cast", [b.op("Add", [x_det, b.const(ROUND_OFFSET + 0.5)], prefix, TRAIN)], prefix, TRAIN, to=ir.DataType.INT32)
    r = b.op("Sub", [b.op("Cast", [shifted], prefix, TRAIN, to=ir.DataType.FLOAT), b.const(ROUND_OFFSET)], prefix, TRAIN)
    return b.op("Sub", [r, x_det], prefix, TRAIN)


