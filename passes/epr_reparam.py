"""``epr-reparam``: every weight becomes a trainable latent, a decoder, and a rate under a learned prior.

Entropy-penalized reparameterization (Oktay et al., ICLR 2020; shared/notes/methods.md). For a
weight W the pass writes, in the model itself (so the pipeline's verifier and any ONNX tool see
it), three subgraphs over new initializers:

    task path (role "train")    x = 64 * W.phi;  W.k = x + (round(x) - x)      straight-through round
                                W.scale = Exp(W.log_step)
    decoder   (role "decoder")  W = W.k * W.scale                              affine (dense, biases)
                                W = Reshape(Reshape(W.k, [-1, hw]) @ D) * W.scale   conv kernels with
                                                                               decoder "dct"
    rate path (role "rate")     y = x + u,  u = slice of graph input onnxcomp.noise
                                bits = -sum log2 p(y) under the tensor's prior  -> onnxcomp.rate_bits

``finetune`` trains the initializers listed in the model's ``onnxcomp.epr`` metadata (JSON, see
:class:`EprSpec`); ``pack`` calls :func:`finalize_epr` first, which replaces the task and rate
paths with ``W.latent`` (int32) -> Cast and ``W.step`` (float), keeping the decoder nodes; so a
packed EPR file is EntropyDecode -> Cast -> decoder -> the weight's consumers, and its outputs equal
the trained graph's with its latents exactly on the integers.

Why these forms (all measured in spikes/epr/FINDINGS.md against ONNX Runtime training 1.19):
``Round``/``Floor``/``Sign`` have no gradient builder and ``w + Cast(Cast(w)) - w`` trains with a zero
gradient, so the rounding residual is computed from a gradient-free fixed-point copy of x
(int32, |x| <= 255); the latent is stored as x/64 so that AdamW's step (lr 1e-3) moves x by at most
~0.06 per step, and 64 is a power of two so x = 64 * phi is exact both ways. The noise is a graph
input, not RandomUniform: ORT's random state cannot be checkpointed, and a resumed run must
reproduce an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.entropy_models import PRIORS
from onnxcomp.errors import NothingToCompressError, PassError, PipelineError
from onnxcomp.irutil import NodeBuilder, all_names, new_initializer, node_role, remove_unused_initializers, unique_name
from onnxcomp.pass_base import CompressionPass, register_pass
from onnxcomp.quantize_math import step_for
from onnxcomp.weights import Weight, find_weights

METADATA_KEY = "onnxcomp.epr"
NOISE_INPUT = "onnxcomp.noise"
RATE_OUTPUT = "onnxcomp.rate_bits"
LATENT_FACTOR = 64.0   # x = LATENT_FACTOR * phi (power of two: exact)
LATENT_LIMIT = 255.0   # |x| is clipped here: the fixed-point rounding below is exact up to 256
_FIX = 65536.0         # x in 16.16 fixed point: x * 2^16 < 2^31 fits int32
_OFFSET = 256.0        # Cast truncates toward zero; the offset makes it a floor for |x| < 256
TRAIN, DECODER, RATE = "train", "decoder", "rate"


@dataclass
class EprTensor:
    """How one weight is represented in the training graph (names of values and initializers)."""

    name: str            # the weight's original name: the decoder output carries it
    role: str            # weight | bias
    shape: list[int]
    phi: str             # trainable latent initializer, x / LATENT_FACTOR
    log_step: str        # trainable log step (scalar, or per output channel)
    k: str               # value: straight-through rounded latent (decoder input)
    scale: str           # value: Exp(log_step) (decoder's multiplier)
    noise_offset: int    # this tensor's slice of the noise input
    prior_params: dict[str, str]
    decoder: str | None  # shared decoder matrix initializer (conv "dct"), else None


@dataclass
class EprSpec:
    """The ``onnxcomp.epr`` model metadata: what finetune trains and what finalize_epr rewrites."""

    prior: str
    num_params: int
    tensors: list[EprTensor]
    decoders: list[str] = field(default_factory=list)
    noise_input: str = NOISE_INPUT
    rate_output: str = RATE_OUTPUT

    @property
    def trainable(self) -> list[str]:
        names = [n for t in self.tensors for n in (t.phi, t.log_step, *t.prior_params.values())]
        return names + self.decoders

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_model(cls, model: ir.Model) -> EprSpec | None:
        text = model.metadata_props.get(METADATA_KEY)
        if text is None:
            return None
        raw = json.loads(text)
        raw["tensors"] = [EprTensor(**t) for t in raw["tensors"]]
        return cls(**raw)


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
    bits: float = field(default=2.0, metadata={"help": "initial step from the RD rule of quantize, in 6.02 dB units"})
    bias_bits: float = field(default=2.0, metadata={"help": "extra initial bits for biases"})
    per_channel: bool = field(default=False, metadata={"help": "one learned step per output channel (else per tensor: 4 B per channel saved)"})
    conv_decoder: str = field(default="affine", metadata={"help": "conv kernels: affine, or dct (learned HWxHW decoder initialised to the inverse DCT)"})
    share_decoders: bool = field(default=True, metadata={"help": "with conv_decoder=dct, one decoder per kernel shape for the whole network"})

    def validate_options(self) -> None:
        if self.prior not in PRIORS:
            raise PipelineError(f"pass 'epr-reparam': option prior={self.prior!r} must be one of {sorted(PRIORS)}")
        if self.conv_decoder not in ("affine", "dct"):
            raise PipelineError(f"pass 'epr-reparam': option conv_decoder={self.conv_decoder!r} must be affine or dct")
        if not 0.0 < self.bits <= 16.0:
            raise PipelineError(f"pass 'epr-reparam': option bits={self.bits} must be in (0, 16]")
        if not 0.0 <= self.bias_bits <= 16.0:
            raise PipelineError(f"pass 'epr-reparam': option bias_bits={self.bias_bits} must be in [0, 16]")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if EprSpec.from_model(model) is not None:
            raise PassError("epr-reparam: the model is already reparameterized (it has onnxcomp.epr metadata)")
        weights, skipped = find_weights(model)
        self.context.log.extend(skipped)
        for w in weights:
            if w.value.const_value.dtype != ir.DataType.FLOAT:
                self.context.log.append(f"{w.name}: {w.value.const_value.dtype.name} weight left as is (epr-reparam trains float32)")
        weights = [w for w in weights if w.value.const_value.dtype == ir.DataType.FLOAT]
        if not weights:
            raise NothingToCompressError(
                "epr-reparam: the model has no float32 weight initializer feeding Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN")
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
        return ir.passes.PassResult(model, True)

    def _reparam(self, model, b: NodeBuilder, w: Weight, noise: ir.Value, offset: int, rng, decoders) -> tuple[EprTensor, ir.Value]:
        graph, name = model.graph, w.name
        array = w.value.const_value.numpy().astype(np.float32)
        shape = list(array.shape)
        n = int(array.size)
        bits = self.bits + (self.bias_bits if w.role == "bias" else 0.0)
        axes = w.channel_axes if self.per_channel and w.role == "weight" else ()
        step = step_for(array, axes, bits)
        use_dct = self.conv_decoder == "dct" and w.role == "weight" and array.ndim == 4 and array.shape[2] * array.shape[3] > 1
        if use_dct:
            kh, kw = array.shape[2], array.shape[3]
            basis = inverse_dct_2d(kh, kw)
            coefficients = (array.reshape(-1, kh * kw).astype(np.float64) @ basis.T).reshape(array.shape)
            x0 = coefficients / step  # orthonormal: the coefficients have the kernels' rms
        else:
            x0 = array.astype(np.float64) / step
        x0 = np.clip(x0, -LATENT_LIMIT, LATENT_LIMIT)
        phi = new_initializer(graph, b.name(f"{name}.phi"), (x0 / LATENT_FACTOR).astype(np.float32))
        log_step = new_initializer(graph, b.name(f"{name}.log_step"), np.log(step).astype(np.float32))

        # task path: straight-through rounding of x
        x = b.op("Mul", [phi, b.const(LATENT_FACTOR)], name, TRAIN)
        x = b.op("Clip", [x, b.const(-LATENT_LIMIT), b.const(LATENT_LIMIT)], name, TRAIN)
        k = b.op("Add", [x, round_residual(b, x, name)], name, TRAIN, output_names=[b.name(f"{name}.k")])
        k_name = k.name
        scale = b.op("Exp", [log_step], name, TRAIN, output_names=[b.name(f"{name}.scale")])
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
        w.value.replace_all_uses_with(out)
        del graph.initializers[name]
        out.name = name

        # rate path: the prior's bits at x + U(-1/2, 1/2), the noise fed by the trainer
        start = b.const([offset], np.int64, f"{name}.noise_start")
        stop = b.const([offset + n], np.int64, f"{name}.noise_stop")
        u = b.op("Reshape", [b.op("Slice", [noise, start, stop], name, RATE), b.const(shape, np.int64)], name, RATE)
        y = b.op("Add", [b.op("Mul", [phi, b.const(LATENT_FACTOR)], name, RATE), u], name, RATE)
        prior = PRIORS[self.prior]
        params = {key: new_initializer(graph, b.name(f"{name}.prior.{key}"), value)
                  for key, value in prior.init_params(x0, rng).items()}
        bits_value = prior.bits_graph(b, y, params, n, name)
        self.context.note(name, method="epr", prior=self.prior, decoder="dct" if use_dct else "affine")
        tensor = EprTensor(name, w.role, shape, phi.name, log_step.name, k_name, scale.name, offset, {key: v.name for key, v in params.items()},
                           decoder.name if decoder is not None else None)
        return tensor, bits_value


def round_residual(b: NodeBuilder, x: ir.Value, prefix: str) -> ir.Value:
    """round(x) - x with no gradient path (x clipped to |x| <= 255).

    x_det = trunc(x * 2^16) / 2^16 is a copy of x the gradient cannot reach (error < 1.6e-5);
    r = trunc(x_det + 256.5) - 256 = floor(x_det + 1/2). The result is r - x_det, so the task
    path's forward value x + (r - x_det) is within 1.6e-5 of the integer r, and exactly r when x
    is an integer. :func:`rounded_latents` repeats this float32 arithmetic in numpy.
    """
    q = b.op("Cast", [b.op("Mul", [x, b.const(_FIX)], prefix, TRAIN)], prefix, TRAIN, to=ir.DataType.INT32)
    x_det = b.op("Mul", [b.op("Cast", [q], prefix, TRAIN, to=ir.DataType.FLOAT), b.const(1.0 / _FIX)], prefix, TRAIN)
    shifted = b.op("Cast", [b.op("Add", [x_det, b.const(_OFFSET + 0.5)], prefix, TRAIN)], prefix, TRAIN, to=ir.DataType.INT32)
    r = b.op("Sub", [b.op("Cast", [shifted], prefix, TRAIN, to=ir.DataType.FLOAT), b.const(_OFFSET)], prefix, TRAIN)
    return b.op("Sub", [r, x_det], prefix, TRAIN)


def rounded_latents(phi: np.ndarray) -> np.ndarray:
    """The integers the task path rounds ``phi`` to, computed with the graph's float32 arithmetic."""
    x = np.clip(np.asarray(phi, np.float32) * np.float32(LATENT_FACTOR), np.float32(-LATENT_LIMIT), np.float32(LATENT_LIMIT))
    q = np.trunc(x * np.float32(_FIX)).astype(np.int32)
    x_det = q.astype(np.float32) * np.float32(1.0 / _FIX)
    shifted = np.trunc(x_det + np.float32(_OFFSET + 0.5)).astype(np.int32)
    return (shifted - np.int32(_OFFSET)).astype(np.int32)


def exp_in_onnxruntime(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exp of each array computed by onnxruntime's own kernel, so a packed step equals the
    Exp(log_step) the trained graph multiplied by, bit for bit (numpy's exp may differ by an ulp)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    out = {}
    for name, array in arrays.items():
        graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "exp",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(array.shape))],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(array.shape))])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out[name] = session.run(None, {"x": np.ascontiguousarray(array, np.float32)})[0]
    return out


def finalize_epr(model: ir.Model, context=None) -> bool:
    """Turn a (trained) EPR training graph into the inference form pack codes; False if not EPR.

    Each weight's task path becomes ``W.latent`` (int32, the rounded latents) -> Cast, its scale an
    initializer ``W.step``; the rate path, the noise input and the rate output are removed, and
    so are the trainable latents and prior parameters. Decoder nodes stay as they were.
    """
    spec = EprSpec.from_model(model)
    if spec is None:
        return False
    graph = model.graph
    inits = graph.initializers
    taken = all_names(model)
    produced = {v.name: v for node in graph for v in node.outputs}
    steps = exp_in_onnxruntime({t.log_step: inits[t.log_step].const_value.numpy() for t in spec.tensors})
    casts = []
    for t in spec.tensors:
        k = rounded_latents(inits[t.phi].const_value.numpy())
        latent = new_initializer(graph, unique_name(model, f"{t.name}.latent", taken), k)
        cast = ir.Node("", "Cast", [latent], {"to": ir.AttrInt64("to", int(ir.DataType.FLOAT))},
                       name=unique_name(model, f"{t.name}/decode_cast", taken))
        cast.outputs[0].name = unique_name(model, f"{t.name}.dequant", taken)
        cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(t.shape)
        casts.append(cast)
        produced[t.k].replace_all_uses_with(cast.outputs[0])
        step = new_initializer(graph, unique_name(model, f"{t.name}.step", taken), steps[t.log_step])
        produced[t.scale].replace_all_uses_with(step)
        if context is not None:
            # What the learned prior would cost as the coding table (pack codes under the
            # histogram's table, which is never larger: reported so the choice is visible).
            prior = {key: inits[name].const_value.numpy() for key, name in t.prior_params.items()}
            context.note(t.name, latent=latent.name, prior_code_bits=PRIORS[spec.prior].bits_numpy(k, prior))
    rate = produced.get(spec.rate_output)
    if rate is not None and rate in graph.outputs:
        graph.outputs.remove(rate)
    training = [node for node in graph if node_role(node) in (TRAIN, RATE)]
    graph.remove(training, safe=True)
    graph.inputs[:] = [v for v in graph.inputs if v.name != spec.noise_input]
    graph.insert_before(graph[0], casts)
    for node in graph:  # decoder nodes are ordinary inference nodes from here on
        node.metadata_props.pop(NodeBuilder.ROLE_KEY, None)
    remove_unused_initializers(graph)
    del model.metadata_props[METADATA_KEY]
    return True


def latent_entropy_bits(spec: EprSpec, params: dict[str, np.ndarray]) -> float:
    """Sum over tensors of size x empirical entropy of the rounded latents: what pack's ANS will
    spend on bitstreams, within a fraction of a percent (tables and headers come on top)."""
    from onnxcomp.coding import entropy_bits

    total = 0.0
    for t in spec.tensors:
        k = rounded_latents(params[t.phi])
        total += k.size * entropy_bits(k)
    return total
