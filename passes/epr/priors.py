"""Learned priors over EPR latents: the rate subgraph each one adds, and a numpy twin of it.

A prior gives the probability mass of an integer bin, p(k) = c(k + 1/2) - c(k - 1/2) for a
cumulative c; the rate of a tensor is sum(-log2 p(y)) evaluated at y = latent + uniform noise
(the noise stands in for rounding, so the rate is differentiable). Each prior is one
:class:`Prior` with

* ``init_params(latents, rng)``: initial parameter arrays (trainable initializers),
* ``bits_graph(builder, y, params, n, prefix, span)``: nodes computing the rate in bits (a
  scalar), built only from ops that have gradient builders in ONNX Runtime training 1.19 (no
  Softplus, Sign, Round: see spikes/epr/FINDINGS.md); ``span`` bounds |y| (``latent_span``),
* ``bits_numpy(y, params)``: the rate in float64 from the density itself, the reference the
  tests hold the graph to (the factorized graph reads a table of it: within ``TABLE_TOLERANCE``).

The priors are training devices. ``pack`` codes the final integer latents under tables built
from their own histogram, which the spike measured 1.6-1.8x smaller than tables built from the
learned prior (the prior is fitted to noisy latents, not to the rounded ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from onnxcomp.graph.edit import NodeBuilder

P_MIN = 1e-9  # probability floor: keeps log finite for latents far out in a tail
ROLE = "rate"
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class Prior:
    name: str
    init_params: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
    bits_graph: Callable[[NodeBuilder, ir.Value, dict[str, ir.Value], int, str, int], ir.Value]
    bits_numpy: Callable[[np.ndarray, dict[str, np.ndarray]], float]


def _neg_log2_sum(b: NodeBuilder, prob: ir.Value, prefix: str) -> ir.Value:
    total = b.op("ReduceSum", [b.op("Log", [prob], prefix, ROLE)], prefix, ROLE, keepdims=0)
    return b.op("Mul", [total, b.const(-1.0 / _LN2)], prefix, ROLE)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# -- logistic: one learned scale per tensor, centred on zero ------------------------------------

def _logistic_init(latents: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s = max(float(np.std(latents)) * math.sqrt(3.0) / math.pi, 0.05)  # logistic with the latents' std
    return {"log_scale": np.asarray(math.log(s), np.float32)}


def _logistic_graph(b: NodeBuilder, y: ir.Value, params: dict[str, ir.Value], n: int, prefix: str, span: int) -> ir.Value:
    # Evaluated at -|y|, where both sigmoids sit in the accurate tail (the density is symmetric).
    a = b.op("Abs", [y], prefix, ROLE)
    inv = b.op("Reciprocal", [b.op("Exp", [params["log_scale"]], prefix, ROLE)], prefix, ROLE)
    upper = b.op("Sigmoid", [b.op("Mul", [b.op("Sub", [b.const(0.5), a], prefix, ROLE), inv], prefix, ROLE)], prefix, ROLE)
    lower = b.op("Sigmoid", [b.op("Mul", [b.op("Sub", [b.const(-0.5), a], prefix, ROLE), inv], prefix, ROLE)], prefix, ROLE)
    prob = b.op("Max", [b.op("Sub", [upper, lower], prefix, ROLE), b.const(P_MIN)], prefix, ROLE)
    return _neg_log2_sum(b, prob, prefix)


def _logistic_numpy(y: np.ndarray, params: dict[str, np.ndarray]) -> float:
    a = np.abs(np.asarray(y, np.float64))
    inv = 1.0 / math.exp(float(params["log_scale"]))
    prob = np.maximum(_sigmoid((0.5 - a) * inv) - _sigmoid((-0.5 - a) * inv), P_MIN)
    return float(-np.log2(prob).sum())


# -- factorized: the non-parametric density of Balle et al. 2018, widths 1-3-3-3-1 ---------------

FACTORIZED_FILTERS = (3, 3, 3)
FACTORIZED_INIT_SCALE = 10.0  # tensorflow_compression's EntropyBottleneck default


def _factorized_init(latents: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """tensorflow_compression's initialisation: a wide density (``init_scale``) centred near 0."""
    filters = (1, *FACTORIZED_FILTERS, 1)
    scale = FACTORIZED_INIT_SCALE ** (1.0 / (len(filters) - 1))
    out = {}
    for i in range(len(filters) - 1):
        out[f"H{i}"] = np.full((filters[i + 1], filters[i]), math.log(math.expm1(1.0 / scale / filters[i + 1])), np.float32)
        out[f"b{i}"] = rng.uniform(-0.5, 0.5, (filters[i + 1], 1)).astype(np.float32)
        if i < len(filters) - 2:
            out[f"a{i}"] = np.zeros((filters[i + 1], 1), np.float32)
    return out


def _softplus_graph(b: NodeBuilder, x: ir.Value, prefix: str) -> ir.Value:
    """Relu(x) + Log(1 + Exp(-|x|)): Softplus has no gradient builder in ORT training 1.19."""
    neg_abs = b.op("Neg", [b.op("Abs", [x], prefix, ROLE)], prefix, ROLE)
    tail = b.op("Log", [b.op("Add", [b.const(1.0), b.op("Exp", [neg_abs], prefix, ROLE)], prefix, ROLE)], prefix, ROLE)
    return b.op("Add", [b.op("Relu", [x], prefix, ROLE), tail], prefix, ROLE)


# The factorized rate is read from a table: -log2 p at every 1/TABLE_STEPS between -span and
# span, from one evaluation of the density's MLP on that grid per step (a few thousand points),
# then linearly interpolated at each latent. Evaluating the MLP at every latent's two bin edges
# made a step 13.5x a plain one on LeNet-300-100 (BENCHMARKS: "EPR training step"); with the
# table it is 4.2x, 1.4x the logistic prior's (4.2x before), and below it on LeNet5. The gradient reaches the prior's parameters through
# the table entries (GatherElements' backward) and the latents through the interpolation's slope.
TABLE_STEPS = 8  # grid points per unit: the bin edges y +- 1/2 fall on the grid
TABLE_TOLERANCE = 2e-3  # the bound the tests hold the table's rate to, relative to the density's
MAX_SPAN = 256  # |latent| the task path clips to (epr-reparam's round_residual: 255) plus one


def latent_span(latents: np.ndarray) -> int:
    """How far from zero the table reaches for a tensor starting at ``latents``: twice its largest
    latent and 8 more (training moves latents toward 0 under the rate; a latent beyond the span
    is charged the edge's bits, with no rate gradient), at most MAX_SPAN."""
    top = float(np.max(np.abs(latents))) if np.size(latents) else 0.0
    return int(min(MAX_SPAN, 2 * math.ceil(top) + 8))


def _factorized_logits_graph(b: NodeBuilder, z: ir.Value, params: dict[str, ir.Value], prefix: str) -> ir.Value:
    layers = len(FACTORIZED_FILTERS) + 1
    for i in range(layers):
        z = b.op("Add", [b.op("MatMul", [_softplus_graph(b, params[f"H{i}"], prefix), z], prefix, ROLE), params[f"b{i}"]],
                 prefix, ROLE)
        if i < layers - 1:
            gate = b.op("Tanh", [params[f"a{i}"]], prefix, ROLE)
            z = b.op("Add", [z, b.op("Mul", [gate, b.op("Tanh", [z], prefix, ROLE)], prefix, ROLE)], prefix, ROLE)
    return z


def table_grid(span: int) -> np.ndarray:
    """The cumulative's evaluation points: -span - 1/2 to span + 1/2 in steps of 1/TABLE_STEPS."""
    return (np.arange(2 * (span * TABLE_STEPS) + TABLE_STEPS + 1, dtype=np.float64) / TABLE_STEPS - span - 0.5)


def _factorized_graph(b: NodeBuilder, y: ir.Value, params: dict[str, ir.Value], n: int, prefix: str, span: int) -> ir.Value:
    grid = table_grid(span)
    z = _factorized_logits_graph(b, b.const(grid.reshape(1, -1)), params, prefix)  # [1, M]
    m = grid.size
    points = m - TABLE_STEPS  # table entries: y = -span .. span
    lower = b.op("Slice", [z, b.const([0], np.int64), b.const([points], np.int64), b.const([1], np.int64)], prefix, ROLE)
    upper = b.op("Slice", [z, b.const([TABLE_STEPS], np.int64), b.const([m], np.int64), b.const([1], np.int64)], prefix, ROLE)
    # Flip to the side where the sigmoids are accurate: sign = -sign(lower + upper), made from a
    # bool condition so no gradient flows through it (and no Sign op is needed).
    positive = b.op("Greater", [b.op("Add", [lower, upper], prefix, ROLE), b.const(0.0)], prefix, ROLE)
    sign = b.op("Where", [positive, b.const(-1.0), b.const(1.0)], prefix, ROLE)
    diff = b.op("Sub", [b.op("Sigmoid", [b.op("Mul", [sign, upper], prefix, ROLE)], prefix, ROLE),
                        b.op("Sigmoid", [b.op("Mul", [sign, lower], prefix, ROLE)], prefix, ROLE)], prefix, ROLE)
    prob = b.op("Max", [b.op("Abs", [diff], prefix, ROLE), b.const(P_MIN)], prefix, ROLE)
    table = b.op("Mul", [b.op("Log", [prob], prefix, ROLE), b.const(-1.0 / _LN2)], prefix, ROLE)  # [1, points] bits
    # Position of each latent on the table, its entry below (an integer: Cast has no gradient
    # path) and the fraction to the next; latents are clipped half a grid step short of +span so
    # the entry below is at most the last but one (a Min on the indices cost as much as a lookup).
    # GatherElements on [1, points], not Gather on [points]: onnxruntime's CPU Gather takes 12x
    # as long for 266k scalar lookups (4.8 ms against 0.4), and both have gradient builders.
    flat = b.op("Reshape", [y, b.const([1, n], np.int64)], prefix, ROLE)
    top = span - 0.5 / TABLE_STEPS
    position = b.op("Mul", [b.op("Add", [b.op("Clip", [flat, b.const(-float(span)), b.const(top)], prefix, ROLE),
                                         b.const(float(span))], prefix, ROLE), b.const(float(TABLE_STEPS))], prefix, ROLE)
    below = b.op("Cast", [position], prefix, ROLE, to=ir.DataType.INT64)
    fraction = b.op("Sub", [position, b.op("Cast", [below], prefix, ROLE, to=ir.DataType.FLOAT)], prefix, ROLE)
    low = b.op("GatherElements", [table, below], prefix, ROLE, axis=1)
    high = b.op("GatherElements", [table, b.op("Add", [below, b.const([1], np.int64)], prefix, ROLE)], prefix, ROLE, axis=1)
    bits = b.op("Add", [low, b.op("Mul", [b.op("Sub", [high, low], prefix, ROLE), fraction], prefix, ROLE)], prefix, ROLE)
    return b.op("ReduceSum", [bits], prefix, ROLE, keepdims=0)


def factorized_table_bits(y: np.ndarray, params: dict[str, np.ndarray], span: int) -> float:
    """The numpy twin of the factorized graph (the table and its interpolation), in float64."""
    grid = table_grid(span)
    z = factorized_logits(grid, params)
    lower, upper = z[:-TABLE_STEPS], z[TABLE_STEPS:]
    sign = np.where(lower + upper > 0, -1.0, 1.0)
    table = -np.log2(np.maximum(np.abs(_sigmoid(sign * upper) - _sigmoid(sign * lower)), P_MIN))
    position = (np.clip(np.asarray(y, np.float64).ravel(), -span, span - 0.5 / TABLE_STEPS) + span) * TABLE_STEPS
    below = position.astype(np.int64)
    fraction = position - below
    return float(np.sum(table[below] + (table[below + 1] - table[below]) * fraction))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def factorized_logits(x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The factorized density's cumulative, before the final sigmoid, at points ``x`` (float64)."""
    z = np.asarray(x, np.float64).reshape(1, -1)
    layers = len(FACTORIZED_FILTERS) + 1
    for i in range(layers):
        z = _softplus(params[f"H{i}"].astype(np.float64)) @ z + params[f"b{i}"].astype(np.float64)
        if i < layers - 1:
            z = z + np.tanh(params[f"a{i}"].astype(np.float64)) * np.tanh(z)
    return z.reshape(np.shape(x))


def _factorized_numpy(y: np.ndarray, params: dict[str, np.ndarray]) -> float:
    y = np.asarray(y, np.float64).ravel()
    lower, upper = factorized_logits(y - 0.5, params), factorized_logits(y + 0.5, params)
    sign = np.where(lower + upper > 0, -1.0, 1.0)
    prob = np.maximum(np.abs(_sigmoid(sign * upper) - _sigmoid(sign * lower)), P_MIN)
    return float(-np.log2(prob).sum())


PRIORS: dict[str, Prior] = {
    "logistic": Prior("logistic", _logistic_init, _logistic_graph, _logistic_numpy),
    "factorized": Prior("factorized", _factorized_init, _factorized_graph, _factorized_numpy),
}
