"""``onnxcomp decompress``: standard ONNX for runtimes without the ``ai.onnxcomp`` ops.

The runtime's load-time decoder replaces every EntropyDecode node by an integer initializer;
then, by default, the decode subgraphs (Cast, Mul, Add, Gather, Reshape, Transpose over constants)
are folded into plain float initializers under the weights' own names, giving the float model
the compressed file encodes. The folding computes in numpy exactly what onnxruntime computes
(integer-to-float casts are exact below 2**24, and a single float multiply or add is correctly
rounded in both), so the folded model's outputs equal the compressed model's.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.graph.edit import remove_unused_initializers
from onnxcomp.model_io import save_model
from onnxcomp.runtime.load import decode_model

FOLDABLE = {"Cast", "Mul", "Add", "Gather", "Reshape", "Transpose"}


def _fold_node(node: ir.Node, args: list[np.ndarray]) -> np.ndarray | None:
    op = node.op_type
    if op == "Cast":
        to = ir.DataType(node.attributes.get_int("to"))
        return args[0].astype(to.numpy())
    if op == "Mul":
        return np.multiply(args[0], args[1])
    if op == "Add":
        return np.add(args[0], args[1])
    if op == "Gather":
        return np.take(args[0], args[1].astype(np.int64), axis=node.attributes.get_int("axis", 0))
    if op == "Reshape":
        shape = [d if d != 0 else args[0].shape[i] for i, d in enumerate(args[1].tolist())]
        return args[0].reshape(shape)
    if op == "Transpose":
        perm = node.attributes.get_ints("perm", None)
        return np.transpose(args[0], perm)
    return None


def _widens_a_float(node: ir.Node) -> bool:
    """A Cast from a float type to a wider one (a bfloat16/float16 weight read as float32): the
    model's own way of storing weights small, never a decode subgraph's (those cast integers, or
    narrow at the end); folding it would change the weight's stored type and double its bytes."""
    if node.op_type != "Cast":
        return False
    source = node.inputs[0].const_value.dtype
    to = ir.DataType(node.attributes.get_int("to"))
    return source.is_floating_point() and to.is_floating_point() and to.itemsize > source.itemsize


def fold_constant_decoders(model: ir.Model) -> int:
    """Fold nodes of FOLDABLE types whose inputs are all initializers. Returns how many."""
    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.domain != "" or node.op_type not in FOLDABLE or len(node.outputs) != 1:
            continue
        if any(i is None or not i.is_initializer() for i in node.inputs):
            continue
        if _widens_a_float(node):
            continue
        result = _fold_node(node, [i.const_value.numpy() for i in node.inputs])
        if result is None:
            continue
        out = node.outputs[0]
        name = out.name
        value = ir.Value(name=name + ".folding", shape=ir.Shape(result.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(result.dtype)),
                         # np.asarray: ascontiguousarray would turn a 0-d result into shape [1]
                         const_value=ir.tensor(np.asarray(result) if result.flags.c_contiguous else result.copy(order="C")))
        graph.register_initializer(value)
        out.replace_all_uses_with(value, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        value.name = name
        folded += 1
    remove_unused_initializers(graph)
    return folded


def decompress(input_path: str | os.PathLike, output_path: str | os.PathLike, fold: bool = True) -> int:
    """Write the standard-ONNX form of a compressed model; returns the output size in bytes."""
    decoded = decode_model(input_path)
    proto = onnx.load_from_string(decoded)
    onnx.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(input_path)))
    model = ir.serde.deserialize_model(proto)
    if fold:
        fold_constant_decoders(model)
    return save_model(model, output_path)
