"""Which initializers are weights, and along which axes their output channels run.

Shared by every weight pass (quantize now; epr-reparam and weight-fix later), so all of them agree
on what a weight is: a float initializer feeding a Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU or
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


def _matmul_bias(node: ir.Node) -> ir.Value | None:
    """The float initializer an ``Add`` adds to a MatMul-with-weight's output (an exporter's
    Linear bias), if that is what the node is."""
    if node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2:
        return None
    for this, other in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        producer = this.producer() if this is not None else None
        if producer is None or producer.op_type != "MatMul" or producer.domain != "":
            continue
        weight = producer.inputs[1]
        if weight is None or not weight.is_initializer() or other is None or not other.is_initializer():
            continue
        if other.const_value is None or other.const_value.dtype not in FLOAT_TYPES or other.is_graph_output():
            continue
        if len(other.const_value.shape) <= 1 and len(other.uses()) == 1:
            return other
    return None


def find_weights(model: ir.Model) -> tuple[list[Weight], list[str]]:
    """All float weight initializers of the main graph, once each, and notes on what was skipped.

    A weight shared by consumers that disagree on its channel axes gets per-tensor treatment.
    """
    found: dict[str, Weight] = {}
    skipped: list[str] = []
    for node in model.graph:
        bias = _matmul_bias(node)
        if bias is not None and bias.name not in found:
            found[bias.name] = Weight(bias, "bias", (), [f"Add {node.name or '?'} after MatMul"])
            continue
        slots = WEIGHT_SLOTS.get(node.op_type) if node.domain == "" else None
        if not slots:
            continue
        for index, role in slots.items():
            if index >= len(node.inputs) or node.inputs[index] is None:
                continue
            value = node.inputs[index]
            if not value.is_initializer() or value.const_value is None or value.is_graph_output():
                continue
            dtype = value.const_value.dtype
            if dtype not in FLOAT_TYPES:
                skipped.append(f"{value.name}: {dtype.name} weight of {node.op_type} left as is (already quantized)")
                continue
            ndim = len(value.const_value.shape)
            if role == "weight" and ndim < 2:
                continue
            axes = channel_axes(node, index, ndim) if role == "weight" else ()
            who = f"{node.op_type} {node.name or '?'}"
            if value.name in found:
                w = found[value.name]
                if w.channel_axes != axes:
                    w.channel_axes = ()
                w.consumers.append(who)
            else:
                found[value.name] = Weight(value, role, axes, [who])
    # Deterministic order: graph order of first use, which is what users see in inspect.
    return list(found.values()), sorted(set(skipped))
