"""Which initializers are weights, and along which axes their output channels run.

Shared by every weight pass (quantize, epr-reparam, weight-fix), so all of them agree on what a
weight is: a float initializer feeding a Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU or
RNN in a weight or bias slot, or added by an Add right after a MatMul with a weight (the bias of an
exported Linear layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

# (op_type, input index) -> role. Gemm/MatMul input 0 is a weight only when it is a constant.
WEIGHT_SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "LSTM": {1: "weight", 2: "weight", 3: "bias"},
    "GRU": {1: "weight", 2: "weight", 3: "bias"},
    "RNN": {1: "weight", 2: "weight", 3: "bias"},
}
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


@dataclass
class Weight:
    """A weight initializer and how its consumers use it."""

    value: ir.Value
    role: str  # "weight" or "bias"
    channel_axes: tuple[int, ...]  # axes that index output channels (kept in per-channel steps)
    consumers: list[str]  # "op_type node-name" of every consumer, for reports and errors

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.const_value.shape)


def channel_axes(node: ir.Node, index: int, ndim: int) -> tuple[int, ...]:
    """Axes of the weight at ``node.inputs[index]`` that correspond to output channels."""
    op = node.op_type
    if ndim < 2:
        return ()
    if op == "Conv":
        return (0,)
    if op == "ConvTranspose":
        return (1,) if node.attributes.get_int("group", 1) == 1 else ()
    if op == "Gemm":
        if index == 1:
            return (0,) if node.attributes.get_int("transB", 0) else (1,)
        return (1,) if node.attributes.get_int("transA", 0) else (0,)
    if op == "MatMul":
        return (ndim - 1,) if index == 1 else (ndim - 2,)
    if op in ("LSTM", "GRU", "RNN"):
        return (0, 1)
    return ()


# Ops that only move or re-type data: a weight may pass through them on its way to its op (an
# exporter's gate reordering of LSTM weights is Slice + Concat, a Linear's weight a Transpose).
DATA_MOVEMENT = {"Reshape", "Transpose", "Cast", "Identity", "Unsqueeze", "Squeeze", "Slice", "Concat",
                 "Split", "Gather", "Flatten", "Expand"}


# Integer weights of already quantized graphs: (op_type, input index) of the ops that read them.
# Reported and left alone by every weight pass; DequantizeLinear is followed to the op it feeds.
QUANTIZED_SLOTS: dict[str, set[int]] = {
    "MatMulInteger": {1}, "ConvInteger": {1}, "QLinearConv": {3}, "QLinearMatMul": {3},
    "MatMulNBits": {1}, "DequantizeLinear": {0}, "DynamicQuantizeLSTM": {1, 2},
}


def _is_matmul_bias(node: ir.Node, value: ir.Value) -> bool:
    """``node`` is an Add of ``value`` (1-D) to a MatMul-with-weight's output: a Linear bias."""
    if node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2 or len(value.const_value.shape) > 1:
        return False
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    producer = other.producer() if other is not None else None
    return (producer is not None and producer.op_type == "MatMul" and producer.domain == ""
            and producer.inputs[1] is not None and producer.inputs[1].is_initializer())


def _weight_uses(value: ir.Value) -> list[tuple[ir.Node, int, str, bool]]:
    """(op, input index, role, direct) for every weight slot ``value`` reaches, directly or only
    through DATA_MOVEMENT ops (in any graph, subgraph bodies included)."""
    found = []
    stack = [(value, True)]
    seen: set[int] = set()
    while stack:
        v, direct = stack.pop()
        for use in v.uses():
            node, idx = use.node, use.idx
            if id(node) in seen or node.domain != "":
                continue
            role = WEIGHT_SLOTS.get(node.op_type, {}).get(idx)
            if role is not None:
                found.append((node, idx, role, direct))
            elif direct and _is_matmul_bias(node, v):
                found.append((node, idx, "bias", True))
            elif node.op_type in DATA_MOVEMENT and (idx == 0 or node.op_type == "Concat"):
                seen.add(id(node))
                stack.extend((out, False) for out in node.outputs)
    return found


# Inputs that hold shapes, indices, axes, sizes or regions, never data: a float initializer there
# (a Resize roi or scales) is left alone whatever its size.
NON_DATA_SLOTS: dict[str, set[int]] = {
    "Reshape": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Slice": {1, 2, 3, 4}, "Expand": {1}, "Tile": {1},
    "Pad": {1, 2, 3}, "ConstantOfShape": {0}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "TopK": {1},
    "Range": {0, 1, 2}, "OneHot": {1, 2}, "NonMaxSuppression": {2, 3, 4}, "Gather": {1}, "GatherElements": {1},
    "GatherND": {1}, "ScatterElements": {1}, "ScatterND": {1}, "CumSum": {1}, "Where": {0}, "Clip": {1, 2},
    "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
}
# A float tensor read as data by other ops (a positional embedding added to the activations, a
# constant attention bias) is a weight from this many elements on: below, steps and tables cost
# more than they save, and small vectors (LayerNorm scales) are the most sensitive values.
MIN_DATA_WEIGHT = 4096


def _table_use(value: ir.Value) -> Weight | None:
    """``value`` as a weight read as data: an embedding table (Gather's data, one step per row of
    a [rows, width] table read along axis 0), or any large float tensor every reader takes as
    data (per-tensor step). None for tensors in shape, index or region slots, or small ones."""
    uses = list(value.uses())
    tensor = value.const_value
    if not uses or tensor.size < MIN_DATA_WEIGHT or any(u.node.domain not in ("", "com.microsoft") for u in uses):
        return None
    if any(u.idx in NON_DATA_SLOTS.get(u.node.op_type, ()) for u in uses):
        return None
    consumers = [f"{u.node.op_type} {u.node.name or '?'}" for u in uses]
    rows = all(u.node.op_type == "Gather" and u.idx == 0 and u.node.attributes.get_int("axis", 0) == 0 for u in uses)
    axes = (0,) if rows and len(tensor.shape) == 2 else ()
    return Weight(value, "weight", axes, consumers)


def is_quantized_use(use: ir.Usage) -> bool:
    """``use`` reads the integer weights of an already quantized graph (QUANTIZED_SLOTS)."""
    node = use.node
    return node.domain in ("", "com.microsoft") and use.idx in QUANTIZED_SLOTS.get(node.op_type, ())


def quantized_weights(model: ir.Model) -> list[str]:
    """Integer initializers an already quantized graph reads as weights (QUANTIZED_SLOTS)."""
    return [name for name, value in model.graph.initializers.items()
            if value.const_value is not None and value.const_value.dtype not in FLOAT_TYPES
            and any(is_quantized_use(u) for u in value.uses())]


def find_weights(model: ir.Model) -> tuple[list[Weight], list[str]]:
    """All float weight initializers of the main graph, once each, and notes on what was skipped.

    A weight is an initializer that reaches a weight or bias slot of Conv/ConvTranspose/Gemm/
    MatMul/LSTM/GRU/RNN (also inside If/Loop bodies), directly or through data-movement ops, or
    the bias an Add puts on a MatMul; or a float tensor of at least MIN_DATA_WEIGHT elements that
    its readers take as data (embedding tables read by Gather, positional embeddings, constant
    attention masks), never one in a shape, index or region slot. One used directly gets
    per-output-channel treatment along its op's channel axes (when all its direct uses agree); one
    reached through other ops, whose layout the op no longer sees, gets per-tensor treatment.
    """
    found: list[Weight] = []
    skipped: list[str] = []
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or value.is_graph_output() or value.is_graph_input():
            continue
        uses = _weight_uses(value)
        if tensor.dtype not in FLOAT_TYPES and not uses:
            quantized = sorted({u.node.op_type for u in value.uses() if is_quantized_use(u)})
            if quantized:
                skipped.append(f"{name}: {tensor.dtype.name} weight of {'/'.join(quantized)} left as is (already quantized)")
            continue
        if not uses and tensor.dtype in FLOAT_TYPES:
            table = _table_use(value)
            if table is not None:
                found.append(table)
            continue
        if tensor.dtype not in FLOAT_TYPES:
            ops = sorted({n.op_type for n, *_ in uses})
            skipped.append(f"{name}: {tensor.dtype.name} weight of {'/'.join(ops)} left as is (already quantized)")
            continue
        ndim = len(tensor.shape)
        roles = {role for *_, role, _ in uses}
        role = "weight" if "weight" in roles else "bias"
        if role == "weight" and ndim < 2:
            continue
        axes_seen = {channel_axes(n, i, ndim) if direct else () for n, i, r, direct in uses if r == role}
        axes = axes_seen.pop() if len(axes_seen) == 1 and role == "weight" else ()
        found.append(Weight(value, role, axes, [f"{n.op_type} {n.name or '?'}" for n, *_ in uses]))
    return found, sorted(set(skipped))


def already_int8(model: ir.Model) -> str:
    """What makes ``model`` an already quantized one ("" if nothing): activation quantizers
    (QuantizeLinear, DynamicQuantizeLinear) or integer weights of quantized ops."""
    quantizers = sum(1 for n in model.graph if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")
                     and n.domain in ("", "com.microsoft"))
    integer = len(quantized_weights(model))
    parts = [f"{quantizers} activation quantizers"] * bool(quantizers) + [f"{integer} integer weights"] * bool(integer)
    return ", ".join(parts)
