"""SPIKE: build the EPR training graph for a Gemm model with onnx.helper (not production code).

Every Gemm weight W [out, in] and bias b [out] becomes

    phi (trainable, stored / C_PHI)  --Mul(C_PHI)-->  x          (latent, in units of the step)
    x  --no-grad integer path-->  d = floor(x + 0.5) - x          (straight-through residual)
    k_st = x + d                                                  (forward: round(x); backward: identity)
    W = k_st * Exp(log_scale * C_SCALE)                           (log_scale [out,1] or [1])

and the rate of x under a per-tensor prior, evaluated at y = x + noise * U(-0.5, 0.5):

    logistic:   p(y) = sigmoid((0.5 - |y|)/s) - sigmoid((-0.5 - |y|)/s),  s = Exp(prior_log_s * C_PRIOR)
    factorized: Balle 2018 1-3-3-3-1 CDF, p = |sigmoid(sign*u) - sigmoid(sign*l)|
    rate_bits = -sum log2 max(p, 1e-9)

loss = CE + lam * sum(rate_bits) / num_params   (first output), then logits, rate_bits, ce.
``lam`` and ``noise`` are scalar graph inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.passes.quantize.step_rule import step_for

C_PHI = 50.0     # latent stored / C_PHI: effective latent step = C_PHI * lr (in integer units)
C_SCALE = 1.0    # log-scale stored / C_SCALE
C_PRIOR = 1.0    # prior parameters stored / C_PRIOR
FIX = 2**24      # fixed-point factor of the no-grad rounding path
BIAS = 2**20     # offset making integer division a floor
P_MIN = 1e-9


@dataclass
class EprSpec:
    prior: str = "logistic"        # logistic | factorized | none (no rate path)
    bits: float = 2.0              # initial step from the rms rule of passes/quantize/quantize.py
    bias_bits: float = 4.0         # extra bits for biases (as quantize's bias_bits)
    per_channel: bool = True       # weight log-scale per output channel (biases: per tensor)
    c_phi: float = C_PHI
    c_scale: float = C_SCALE
    c_prior: float = C_PRIOR
    factorized_init_scale: float = 10.0


@dataclass
class EprGraph:
    model: onnx.ModelProto
    trainable: list[str]
    tensors: dict[str, dict] = field(default_factory=dict)   # weight name -> names/shape/c constants
    num_params: int = 0


class _B:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value, dtype=np.float32, name=None) -> str:
        self.n += 1
        name = name or f"const_{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, n_out: int = 1, **attrs) -> str | list[str]:
        self.n += 1
        outs = [f"{prefix}/{op_type.lower()}_{self.n}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{prefix}/{op_type}_{self.n}", **attrs))
        return outs[0] if n_out == 1 else outs


FIX32 = 2.0**16   # fixed-point factor of the fast no-grad path (|x| < 2^15)
OFF32 = 256.0     # offset making truncation a floor (|x| < 256)


def st_round_residual(b: _B, x: str, p: str) -> str:
    """d = round(x) - x with no gradient path, int32 and no division (5x faster than int64+Div).

    x_det = trunc(x * 2^16) / 2^16 is a gradient-free copy of x (error < 1.6e-5);
    r = trunc(x_det + 256.5) - 256 = floor(x_det + 0.5) for |x| < 256. Forward k_st = x + d
    differs from the integer r by < 1.6e-5. :func:`latents` repeats this float32 arithmetic.
    """
    q = b.op("Cast", [b.op("Mul", [x, b.const(FIX32)], p)], p, to=TensorProto.INT32)
    x_det = b.op("Mul", [b.op("Cast", [q], p, to=TensorProto.FLOAT), b.const(1.0 / FIX32)], p)
    shifted = b.op("Cast", [b.op("Add", [x_det, b.const(OFF32 + 0.5)], p)], p, to=TensorProto.INT32)
    r = b.op("Sub", [b.op("Cast", [shifted], p, to=TensorProto.FLOAT), b.const(OFF32)], p)
    return b.op("Sub", [r, x_det], p)


def st_round_residual_int64(b: _B, x: str, p: str) -> str:
    """d = floor(x + 0.5) - x computed with NO gradient path (everything after Cast-to-INT64).

    Cast(float->INT64) truncates toward zero, so floor is built as (q + off) div FIX - BIAS on
    non-negative int64; q = trunc(x * FIX) is x in fixed point (error < 2^-24).
    """
    q = b.op("Cast", [b.op("Mul", [x, b.const(float(FIX))], p)], p, to=TensorProto.INT64)
    shifted = b.op("Add", [q, b.const(FIX // 2 + BIAS * FIX, np.int64)], p)
    r = b.op("Sub", [b.op("Div", [shifted, b.const(FIX, np.int64)], p), b.const(BIAS, np.int64)], p)
    diff = b.op("Sub", [b.op("Mul", [r, b.const(FIX, np.int64)], p), q], p)
    return b.op("Mul", [b.op("Cast", [diff], p, to=TensorProto.FLOAT), b.const(1.0 / FIX)], p)


def logistic_bits(b: _B, y: str, log_s_param: str, c_prior: float, p: str) -> str:
    a = b.op("Abs", [y], p)
    s = b.op("Exp", [b.op("Mul", [log_s_param, b.const(c_prior)], p)], p)
    inv = b.op("Reciprocal", [s], p)
    hi = b.op("Sigmoid", [b.op("Mul", [b.op("Sub", [b.const(0.5), a], p), inv], p)], p)
    lo = b.op("Sigmoid", [b.op("Mul", [b.op("Sub", [b.const(-0.5), a], p), inv], p)], p)
    prob = b.op("Max", [b.op("Sub", [hi, lo], p), b.const(P_MIN)], p)
    return _neg_log2_sum(b, prob, p)


def _neg_log2_sum(b: _B, prob: str, p: str) -> str:
    total = b.op("ReduceSum", [b.op("Log", [prob], p)], p, keepdims=0)
    return b.op("Mul", [total, b.const(-1.0 / math.log(2.0))], p)


def softplus(b: _B, x: str, p: str) -> str:
    """Relu(x) + Log(1 + Exp(-Abs(x))): Softplus has no gradient builder in ORT 1.19."""
    tail = b.op("Log", [b.op("Add", [b.const(1.0), b.op("Exp", [b.op("Neg", [b.op("Abs", [x], p)], p)], p)], p)], p)
    return b.op("Add", [b.op("Relu", [x], p), tail], p)


FACTORIZED_FILTERS = (3, 3, 3)


def factorized_init(init_scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """tensorflow_compression EntropyBottleneck initialisation for widths 1-3-3-3-1."""
    filters = (1, *FACTORIZED_FILTERS, 1)
    scale = init_scale ** (1.0 / (len(filters) - 1))
    out = {}
    for i in range(len(filters) - 1):
        init = math.log(math.expm1(1.0 / scale / filters[i + 1]))
        out[f"H{i}"] = np.full((filters[i + 1], filters[i]), init, np.float32)
        out[f"b{i}"] = rng.uniform(-0.5, 0.5, (filters[i + 1], 1)).astype(np.float32)
        if i < len(filters) - 2:
            out[f"a{i}"] = np.zeros((filters[i + 1], 1), np.float32)
    return out


def factorized_bits(b: _B, y: str, params: dict[str, str], c_prior: float, p: str, n: int) -> str:
    """Rate under the Balle et al. 2018 factorized density (one univariate CDF per tensor)."""
    flat = b.op("Reshape", [y, b.const([1, n], np.int64)], p)
    z = b.op("Concat", [b.op("Sub", [flat, b.const(0.5)], p), b.op("Add", [flat, b.const(0.5)], p)], p, axis=1)
    layers = len(FACTORIZED_FILTERS) + 1
    for i in range(layers):
        def par(key):
            return b.op("Mul", [params[key], b.const(c_prior)], p) if c_prior != 1.0 else params[key]
        h = softplus(b, par(f"H{i}"), p)
        z = b.op("Add", [b.op("MatMul", [h, z], p), par(f"b{i}")], p)
        if i < layers - 1:
            gate = b.op("Tanh", [par(f"a{i}")], p)
            z = b.op("Add", [z, b.op("Mul", [gate, b.op("Tanh", [z], p)], p)], p)
    lower, upper = b.op("Split", [z, b.const([n, n], np.int64)], p, n_out=2, axis=1)
    # sign = -sign(lower + upper), from a bool condition: no gradient path, no Sign op
    sign = b.op("Where", [b.op("Greater", [b.op("Add", [lower, upper], p), b.const(0.0)], p),
                          b.const(-1.0), b.const(1.0)], p)
    diff = b.op("Sub", [b.op("Sigmoid", [b.op("Mul", [sign, upper], p)], p),
                        b.op("Sigmoid", [b.op("Mul", [sign, lower], p)], p)], p)
    prob = b.op("Max", [b.op("Abs", [diff], p), b.const(P_MIN)], p)
    return _neg_log2_sum(b, prob, p)


def build_epr_training_graph(model: onnx.ModelProto, spec: EprSpec, seed: int = 0) -> EprGraph:
    """Training graph [loss, logits, rate_bits, ce] from an inference graph of Gemm layers."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    gemm_inputs = [(n.input[1], n.input[2] if len(n.input) > 2 else None) for n in graph.node if n.op_type == "Gemm"]
    b = _B()
    trainable: list[str] = []
    tensors: dict[str, dict] = {}
    rate_terms: list[str] = []
    num_params = 0
    for w_name, b_name in gemm_inputs:
        for name, role in ((w_name, "weight"), (b_name, "bias")):
            if name is None:
                continue
            w = weights.pop(name).astype(np.float32)
            p = name
            bits = spec.bits + (spec.bias_bits if role == "bias" else 0.0)
            axes = (0,) if (role == "weight" and spec.per_channel) else ()
            step = step_for(w, axes, bits).astype(np.float64)        # [out,1] or scalar
            step = np.asarray(step).reshape(-1, 1) if axes else np.asarray(step).reshape(1)
            x0 = w.astype(np.float64) / (step if role == "weight" else step)
            phi = (x0 / spec.c_phi).astype(np.float32)
            log_scale = (np.log(step) / spec.c_scale).astype(np.float32)
            names = {"phi": f"{name}.phi", "log_scale": f"{name}.log_scale", "role": role,
                     "shape": w.shape, "c_phi": spec.c_phi, "c_scale": spec.c_scale}
            b.inits.append(numpy_helper.from_array(phi, names["phi"]))
            b.inits.append(numpy_helper.from_array(log_scale, names["log_scale"]))
            trainable += [names["phi"], names["log_scale"]]
            # task path
            x = b.op("Mul", [names["phi"], b.const(spec.c_phi)], p)
            k_st = b.op("Add", [x, st_round_residual(b, x, p)], p)
            scale = b.op("Exp", [b.op("Mul", [names["log_scale"], b.const(spec.c_scale)], p)], p)
            b.nodes.append(helper.make_node("Mul", [k_st, scale], [name], name=f"{p}/decode"))
            # rate path
            u = b.op("RandomUniform", [], p, shape=list(w.shape), low=-0.5, high=0.5, dtype=TensorProto.FLOAT)
            y = b.op("Add", [x, b.op("Mul", [u, "noise"], p)], p)
            if spec.prior == "logistic":
                s0 = max(float(np.std(x0)) * math.sqrt(3.0) / math.pi, 0.05)
                names["prior"] = {"log_s": f"{name}.prior_log_s"}
                b.inits.append(numpy_helper.from_array(np.asarray(math.log(s0) / spec.c_prior, np.float32), names["prior"]["log_s"]))
                trainable.append(names["prior"]["log_s"])
                rate_terms.append(logistic_bits(b, y, names["prior"]["log_s"], spec.c_prior, p))
            elif spec.prior == "factorized":
                init = factorized_init(spec.factorized_init_scale, rng)
                names["prior"] = {}
                for key, value in init.items():
                    pname = f"{name}.prior_{key}"
                    b.inits.append(numpy_helper.from_array((value / spec.c_prior).astype(np.float32), pname))
                    names["prior"][key] = pname
                    trainable.append(pname)
                rate_terms.append(factorized_bits(b, y, names["prior"], spec.c_prior, p, w.size))
            elif spec.prior != "none":   # "none": task path only (timing baseline)
                raise ValueError(spec.prior)
            names["c_prior"] = spec.c_prior
            tensors[name] = names
            num_params += w.size
    # total rate: chain of Adds (variadic Sum has no gradient builder)
    rate = rate_terms[0] if rate_terms else b.op("Mul", ["lam", b.const(0.0)], "rate")
    for term in rate_terms[1:]:
        rate = b.op("Add", [rate, term], "rate")
    b.nodes.append(helper.make_node("Identity", [rate], ["rate_bits"], name="rate_bits"))
    ce_nodes = [helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["ce", "ce.log_prob"], name="ce", reduction="mean")]
    n_before = len(b.nodes)
    per_param = b.op("Mul", ["rate_bits", b.const(1.0 / num_params)], "loss")
    b.nodes.append(helper.make_node("Add", ["ce", b.op("Mul", ["lam", per_param], "loss")], ["loss"], name="loss"))
    ce_nodes += b.nodes[n_before:]
    del b.nodes[n_before:]
    kept_inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    g = helper.make_graph(
        b.nodes + list(graph.node) + ce_nodes,
        "epr_" + graph.name,
        [*graph.input,
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("lam", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("rate_bits", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("ce", TensorProto.FLOAT, [])],
        b.inits + kept_inits,
    )
    out = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(out)
    return EprGraph(out, trainable, tensors, num_params)


def latents(params: dict[str, np.ndarray], info: dict) -> np.ndarray:
    """k exactly as the graph's forward rounds (float32 arithmetic of st_round_residual)."""
    x = params[info["phi"]].astype(np.float32) * np.float32(info["c_phi"])
    q = np.trunc(x * np.float32(FIX32)).astype(np.int32)
    x_det = q.astype(np.float32) * np.float32(1.0 / FIX32)
    shifted = np.trunc(x_det + np.float32(OFF32 + 0.5)).astype(np.int32)
    return (shifted.astype(np.float32) - np.float32(OFF32)).astype(np.float64)


def scales(params: dict[str, np.ndarray], info: dict) -> np.ndarray:
    return np.exp(params[info["log_scale"]].astype(np.float32) * np.float32(info["c_scale"])).astype(np.float32)
