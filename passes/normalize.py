"""``normalize``: bring any exported model to a form the other passes and onnxruntime handle.

- weights held in Constant nodes, in the main graph or inside If/Loop/Scan bodies, become
  initializers of the main graph (ONNX Runtime training and the weight passes see only those);
- initializers also listed as graph inputs lose that input entry (they are weights, not inputs);
- identical initializers are stored once;
- IR version <= 10 and a default-domain opset onnxruntime 1.19 runs (11..21): older opsets are
  converted to 17, newer ones to 21;
- BatchNormalization in inference form that follows a Conv, ConvTranspose (group 1) or Gemm whose
  weights are constants is folded into that op's weight and bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    LiftSubgraphInitializersToMainGraphPass,
    RemoveInitializersFromInputsPass,
)

from onnxcomp.errors import ModelError, first_line
from onnxcomp.graph.edit import const_array, remove_unused_initializers, set_initializer, unique_name
from onnxcomp.pass_base import CompressionPass, register_pass

MIN_OPSET, MAX_OPSET = 11, 21
MAX_IR_VERSION = 10


@register_pass
@dataclass
class NormalizePass(CompressionPass):
    name = "normalize"
    summary = "lift Constant weights, dedupe initializers, fix IR/opset, fold BatchNorm"

    fold_batchnorm: bool = field(default=True, metadata={"help": "fold BatchNormalization into a preceding Conv/Gemm"})
    fix_versions: bool = field(default=True, metadata={"help": "bring IR and opset into what onnxruntime 1.19 runs and trains (false: keep the exporter's, as preset lossless does)"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for sub in (
            LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
            LiftSubgraphInitializersToMainGraphPass(),
            RemoveInitializersFromInputsPass(),
        ):
            modified |= sub(model).modified
        modified |= deduplicate_initializers(model) > 0
        if self.fix_versions:
            modified |= fix_versions(model)
        if self.fold_batchnorm:
            modified |= fold_batchnorms(model) > 0
        return ir.passes.PassResult(model, modified)


FINGERPRINT_SAMPLES = 4096


def deduplicate_initializers(model: ir.Model) -> int:
    """Store identical initializers (same type, shape and bytes) once, in every graph: later ones
    are replaced by the first. Returns how many were dropped.

    Candidates are grouped by type, shape and a fingerprint of a few thousand evenly spaced
    elements, and only a group's members are compared, byte for byte: hashing every weight's
    bytes (onnx-ir's pass) costs 2 s per GB, and distinct weights almost always differ in the
    sample already."""
    dropped = 0
    for graph in model.graphs():
        kept: dict[tuple, list[ir.Value]] = {}
        for value in tuple(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or value.is_graph_input() or value.is_graph_output() or tensor.dtype == ir.DataType.STRING:
                continue
            array = np.ascontiguousarray(tensor.numpy()).reshape(-1)
            stride = max(1, array.size // FINGERPRINT_SAMPLES)
            key = (tensor.dtype, tuple(tensor.shape.numpy()), array[::stride].tobytes())
            group = kept.setdefault(key, [])
            twin = next((v for v in group if np.array_equal(_bytes_of(v), array.view(np.uint8))), None)
            if twin is None:
                group.append(value)
                continue
            value.replace_all_uses_with(twin)
            graph.initializers.pop(value.name)
            dropped += 1
    return dropped


def _bytes_of(value: ir.Value) -> np.ndarray:
    return np.ascontiguousarray(value.const_value.numpy()).reshape(-1).view(np.uint8)


def fix_versions(model: ir.Model) -> bool:
    modified = False
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        modified = True
    opset = model.opset_imports.get("", None)
    if opset is None:
        return modified
    target = 17 if opset < MIN_OPSET else MAX_OPSET if opset > MAX_OPSET else None
    if target is None:
        return modified
    proto = ir.serde.serialize_model(model)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:
        raise ModelError(
            f"opset {opset} is outside the {MIN_OPSET}..{MAX_OPSET} onnxruntime 1.19 runs and converting it to "
            f"{target} failed: {first_line(exc)}"
        ) from None
    new = ir.serde.deserialize_model(converted)
    # Replace the model's contents in place: passes mutate the object they were given.
    model.graph = new.graph  # the opset imports live on the graph
    model.ir_version = min(new.ir_version, MAX_IR_VERSION)
    model.functions.clear()
    model.functions.update(new.functions)
    return True


def _only_consumer(value: ir.Value) -> ir.Node | None:
    users = value.consumers()
    if len(users) != 1 or value.is_graph_output():
        return None
    return users[0]


def fold_batchnorms(model: ir.Model) -> int:
    """Fold BN(y) with y = Conv/ConvTranspose/Gemm(x, W, b) into W, b. Returns how many folded."""
    graph = model.graph
    folded = 0
    for bn in list(graph):
        if bn.op_type != "BatchNormalization" or bn.domain != "" or len(bn.outputs) != 1:
            continue
        if bn.attributes.get_int("training_mode", 0) != 0:
            continue
        producer = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose", "Gemm") or producer.domain != "":
            continue
        if _only_consumer(producer.outputs[0]) is not bn:
            continue
        params = [const_array(v) for v in bn.inputs[1:5]]
        weight = const_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
        if weight is None or any(p is None for p in params) or weight.dtype.kind != "f":
            continue
        if len(producer.inputs[1].uses()) != 1:
            continue  # a shared weight cannot absorb one consumer's BN
        bias_value = producer.inputs[2] if len(producer.inputs) > 2 else None
        bias = const_array(bias_value) if bias_value is not None else None
        if bias_value is not None and bias is None:
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = bn.attributes.get_float("epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        folded_w = _scale_weight(producer, weight.astype(np.float64), scale)
        if folded_w is None:
            continue
        b = np.zeros_like(mean) if bias is None else bias.astype(np.float64).reshape(-1)
        if producer.op_type == "Gemm":
            b = b * producer.attributes.get_float("beta", 1.0)
            producer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        folded_b = (b - mean) * scale + beta
        dtype = weight.dtype
        w_name = producer.inputs[1].name
        set_initializer(graph, producer, 1, folded_w.astype(dtype), w_name)
        b_name = bias_value.name if bias_value is not None else unique_name(model, f"{w_name}_bn_bias")
        set_initializer(graph, producer, 2, folded_b.astype(dtype), b_name)
        out = bn.outputs[0]
        out_name = out.name
        # The folded op now produces BN's output: keep its declared type (it may be a graph output).
        producer.outputs[0].type = out.type or producer.outputs[0].type
        producer.outputs[0].shape = out.shape or producer.outputs[0].shape
        out.replace_all_uses_with(producer.outputs[0], replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        producer.outputs[0].name = out_name
        folded += 1
    if folded:
        remove_unused_initializers(graph)  # the BatchNorm parameters
    return folded


def _scale_weight(node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    if node.op_type == "Conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if node.op_type == "ConvTranspose":
        if node.attributes.get_int("group", 1) != 1:
            return None
        return w * scale.reshape((1, -1) + (1,) * (w.ndim - 2))
    if node.attributes.get_int("transA", 0) or w.ndim != 2:  # Gemm
        return None
    if node.attributes.get_int("transB", 0):
        return w * scale[:, None]
    return w * scale[None, :]
