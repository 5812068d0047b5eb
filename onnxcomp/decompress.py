"""``onnxcomp decompress``: standard ONNX for runtimes without the ``ai.onnxcomp`` ops.

The runtime's load-time decoder decodes every EntropyDecode node into memory of its own, folding
each ``Cast -> Mul(step)`` into its float weight as it goes (as for a session); then, by default,
the decode subgraphs left (Cast, Mul, Add, Gather, Reshape, Transpose over constants: a codebook's
Gather, a DCT decoder) are folded into plain float initializers under the weights' own names,
giving the float model the compressed file encodes. The folding computes in numpy exactly what
onnxruntime computes (integer-to-float casts are exact below 2**24, and a single float multiply or
add is correctly rounded in both), so the folded model's outputs equal the compressed model's.

Weights go to the output once, from the decoded arrays: inline below EXTERNAL_OUTPUT_BYTES of
tensors, else as external data beside the output (``<output>.data``), which onnxruntime maps
instead of parsing a protobuf of that size (measured in issue 13: a 987 MB inline file needed
twice the memory and time of its external-data original to load).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.graph.edit import remove_unused_initializers
from onnxcomp.errors import ModelError, ModelLoadError
from onnxcomp.model_io import save_model, serialize, tensor_bytes, write_bytes_atomic
from onnxcomp.runtime.load import decode_model, decode_to_arrays

FOLDABLE = {"Cast", "Mul", "Add", "Gather", "Reshape", "Transpose"}
EXTERNAL_OUTPUT_BYTES = 256 << 20  # tensors above this go to <output>.data


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


def _folded_size(node: ir.Node, args: list[np.ndarray]) -> int:
    """Elements the fold of ``node`` would produce, from shapes alone (before computing it)."""
    try:
        if node.op_type in ("Mul", "Add"):
            return math.prod(np.broadcast_shapes(*(a.shape for a in args)))
        if node.op_type == "Gather":
            data, idx = args
            axis = node.attributes.get_int("axis", 0)
            return idx.size * (data.size // max(1, data.shape[axis]))
    except (ValueError, IndexError, TypeError):
        return 0  # _fold_node reports it, naming the node
    return args[0].size


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
        args = [i.const_value.numpy() for i in node.inputs]
        if _folded_size(node, args) > max(a.size for a in args):
            continue  # an op that expands (a broadcast, a large Gather) is no decode subgraph onnxcomp writes
        try:
            result = _fold_node(node, args)
        except (ValueError, IndexError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"node {node.name!r} ({node.op_type}) of the decode graph does not compute: "
                             f"{type(exc).__name__}: {exc}") from None
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


def decompress(input_path: str | os.PathLike, output_path: str | os.PathLike, fold: bool = True, verify: bool = True,
               max_decoded_bytes: int | None = None) -> int:
    """Write the standard-ONNX form of a compressed model; returns the output size in bytes
    (of the .onnx file; external data beside it, ``<output>.data``, above EXTERNAL_OUTPUT_BYTES)."""
    if fold:  # weights decoded (Cast -> Mul folded) into arrays of their own
        decoded, weights = decode_to_arrays(input_path, verify=verify, max_decoded_bytes=max_decoded_bytes)
    else:  # the decode graphs kept: integer initializers inline
        decoded, weights = decode_model(input_path, verify=verify, max_decoded_bytes=max_decoded_bytes), {}
    # The decoder checked what it reads; the rest of the graph is read only now, by onnx and
    # onnx-ir, and folded here: a file whose decode subgraph does not compute (a shape that does
    # not fit, an index out of range) fails with the node named, never with a raw exception.
    try:
        proto = onnx.load_from_string(decoded)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"{input_path}: not a valid ONNX file ({type(exc).__name__}: {exc})") from None
    del decoded
    stage = "read"
    try:
        model = ir.serde.deserialize_model(proto)
        del proto
        base_dir = os.path.dirname(os.path.abspath(input_path))
        for value in model.graph.initializers.values():
            t = value.const_value
            if value.name in weights:  # decoded here: the array itself, no copy
                value.const_value = ir.tensor(weights.pop(value.name), name=value.name)
            elif isinstance(t, ir.ExternalTensor):  # the original's own external data, beside it
                value.const_value = ir.ExternalTensor(t.location, t.offset, t.length, t.dtype, shape=t.shape,
                                                      name=t.name, base_dir=base_dir)
            if value.const_value is not None:
                # Read (or mapped) now, while errors name the input: declared dims the bytes do not
                # fill, or an external location, offset or length that is wrong, fail here, not
                # half-way through writing the output.
                value.const_value.numpy()
        if fold:
            stage = "fold"
            fold_constant_decoders(model)
        stage = "written"
        if tensor_bytes(model) > EXTERNAL_OUTPUT_BYTES:
            return save_model(model, output_path, external_data=True)  # streamed tensor by tensor
        data = serialize(model)
    except ModelError:
        raise
    except OSError as exc:
        if stage != "read":
            raise  # the disk, not the file
        raise ModelLoadError(f"{input_path}: cannot read its external data ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - onnx-ir's errors on graphs it cannot represent
        raise ModelLoadError(f"{input_path}: the decoded model cannot be {'folded' if stage == 'fold' else stage} "
                             f"({type(exc).__name__}: {exc})") from None
    dest = Path(output_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(dest, data)
    return len(data)
