"""Size accounting shared by every benchmark row, so all methods are measured the same way.

Definitions (the columns of BENCHMARKS.md):
- file bytes: size of the .onnx file on disk (or of the zstd stream for the zstd row).
- payload bytes: stored bytes of every initializer tensor in the file, main graph and subgraphs,
  whatever its type (float weights, int8/uint4 codes, scales, zero points, entropy-coded words,
  int64 shape constants). Sizes come from dims and dtype, never from unpacking: an int4 tensor
  counts 4 bits per element. Constant-node tensors are counted apart (`constant_bytes`) because
  some exporters keep weights there.
- params: the number of floating-point initializer elements of the ORIGINAL float model; every
  row of one model divides by the same number, so bits/param = 8 * payload bytes / params.

Works with onnx 1.16 (main venv) and current onnx (peers venv); imports no onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import onnx
from onnx import TensorProto

# Bits per element of each ONNX tensor type; strings are counted by their stored length.
_BITS = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32,
    TensorProto.UINT64: 64, TensorProto.BFLOAT16: 16,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8),
                     ("FLOAT8E5M2FNUZ", 8), ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4)):
    if hasattr(TensorProto, _name):  # newer onnx only
        _BITS[getattr(TensorProto, _name)] = _bits

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def tensor_bytes(t: TensorProto) -> int:
    """Stored bytes of one tensor, from its dims and dtype (external data included)."""
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    n = 1
    for d in t.dims:
        n *= d
    return (n * _BITS[t.data_type] + 7) // 8


def tensor_elements(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from all_graphs(sub)


def initializers(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for g in all_graphs(model.graph):
        yield from g.initializer


def constant_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for g in all_graphs(model.graph):
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        yield a.t


def model_stats(path: str) -> dict:
    """file_bytes, payload_bytes, constant_bytes, float_params, op histogram of one ONNX file."""
    model = onnx.load(path, load_external_data=False)
    inits = list(initializers(model))
    ops: dict[str, int] = {}
    for g in all_graphs(model.graph):
        for n in g.node:
            key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            ops[key] = ops.get(key, 0) + 1
    return {
        "file_bytes": os.path.getsize(path),
        "payload_bytes": sum(tensor_bytes(t) for t in inits),
        "constant_bytes": sum(tensor_bytes(t) for t in constant_tensors(model)),
        "float_params": sum(tensor_elements(t) for t in inits if t.data_type in FLOAT_TYPES),
        "ops": dict(sorted(ops.items())),
        "domains": sorted({o.domain for o in model.opset_import}),
    }


def bits_per_param(payload_bytes: int, params: int) -> float:
    return 8.0 * payload_bytes / params if params else float("nan")
