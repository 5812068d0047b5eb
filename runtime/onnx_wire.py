"""Just enough of the protobuf wire format to rewrite an ONNX model without the ``onnx`` package.

The deploy-only runtime must work with onnxruntime, numpy and constriction alone, and onnxruntime
does not expose a model parser. Decoding at load only needs to (1) find the ``ai.onnxcomp`` nodes
of the main graph, (2) read the initializers feeding them, and (3) write the graph back with
those nodes replaced by initializers. Every field this module does not understand is copied
through byte for byte, so the rest of the model is untouched.

Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.errors import ModelLoadError

# onnx.proto field numbers used here.
MODEL_OPSET_IMPORT, MODEL_GRAPH = 8, 7
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_I, ATTR_S, ATTR_G, ATTR_GRAPHS = 1, 3, 4, 6, 11
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_INT32_DATA, TENSOR_INT64_DATA = 1, 2, 5, 7
TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 9, 13, 14
VALUE_INFO_NAME = 1

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

# TensorProto.DataType -> numpy dtype (the integer and float types the custom domain uses).
ONNX_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
NUMPY_TO_ONNX = {np.dtype(v): k for k, v in ONNX_TO_NUMPY.items()}


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelLoadError("truncated or corrupt ONNX protobuf (varint runs past the end)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are written as 10-byte two's complement
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class Field:
    """One top-level field of a message: number, wire type, decoded value, and its raw bytes."""

    number: int
    wire_type: int
    value: int | memoryview  # varint/fixed value, or the payload of a LEN field
    raw: memoryview  # the whole field (key + payload) for copying through


def parse_fields(buf: memoryview) -> list[Field]:
    """Split a message into its fields; raises ModelLoadError on anything malformed."""
    fields = []
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == FIXED64:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire_type == FIXED32:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        elif wire_type == LEN:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ModelLoadError(f"unsupported protobuf wire type {wire_type} (field {number}): not an ONNX model")
        if pos > end or number == 0:
            raise ModelLoadError("truncated or corrupt ONNX protobuf (field runs past the end)")
        fields.append(Field(number, wire_type, value, buf[start:pos]))
    return fields


def len_field(number: int, payload: bytes) -> bytes:
    return encode_varint((number << 3) | LEN) + encode_varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return encode_varint((number << 3) | VARINT) + encode_varint(value)


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    int_attrs: dict[str, int] = field(default_factory=dict)
    subgraphs: list[memoryview] = field(default_factory=list)


def parse_node(payload: memoryview) -> Node:
    node = Node("", "", "", [], [])
    for f in parse_fields(payload):
        if f.number == NODE_INPUT:
            node.inputs.append(_text(f.value))
        elif f.number == NODE_OUTPUT:
            node.outputs.append(_text(f.value))
        elif f.number == NODE_NAME:
            node.name = _text(f.value)
        elif f.number == NODE_OP_TYPE:
            node.op_type = _text(f.value)
        elif f.number == NODE_DOMAIN:
            node.domain = _text(f.value)
        elif f.number == NODE_ATTRIBUTE:
            name, ival = "", None
            for a in parse_fields(f.value):
                if a.number == ATTR_NAME:
                    name = _text(a.value)
                elif a.number == ATTR_I:
                    ival = a.value - (1 << 64) if a.value >= 1 << 63 else a.value
                elif a.number in (ATTR_G, ATTR_GRAPHS):
                    node.subgraphs.append(a.value)
            if ival is not None:
                node.int_attrs[name] = ival
    return node


def string_field(payload: memoryview, number: int) -> str:
    """The first string field ``number`` of a message ("" if absent)."""
    for f in parse_fields(payload):
        if f.number == number and f.wire_type == LEN:
            return _text(f.value)
    return ""


def tensor_name(payload: memoryview) -> str:
    return string_field(payload, TENSOR_NAME)


def parse_tensor(payload: memoryview, where: str) -> np.ndarray:
    """Read a TensorProto of a dtype in ONNX_TO_NUMPY, from raw_data or the typed fields."""
    dims, data_type, raw, ints = [], None, None, []
    for f in parse_fields(payload):
        if f.number == TENSOR_DIMS:
            if f.wire_type == LEN:  # packed
                sub = f.value
                pos = 0
                while pos < len(sub):
                    d, pos = _read_varint(sub, pos)
                    dims.append(d)
            else:
                dims.append(f.value)
        elif f.number == TENSOR_DATA_TYPE:
            data_type = f.value
        elif f.number == TENSOR_RAW_DATA:
            raw = f.value
        elif f.number in (TENSOR_INT32_DATA, TENSOR_INT64_DATA):
            vals = []
            if f.wire_type == LEN:
                pos = 0
                while pos < len(f.value):
                    v, pos = _read_varint(f.value, pos)
                    vals.append(v)
            else:
                vals.append(f.value)
            ints.extend(v - (1 << 64) if v >= 1 << 63 else v for v in vals)
        elif f.number == TENSOR_DATA_LOCATION and f.value == 1:
            raise ModelLoadError(f"{where}: stored as external data, which the ai.onnxcomp domain does not use")
    dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
    if data_type not in ONNX_TO_NUMPY or any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: unsupported tensor type {data_type} or dims {dims}")
    dtype = np.dtype(ONNX_TO_NUMPY[data_type])
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ModelLoadError(f"{where}: raw_data holds {len(raw)} bytes, dims {dims} need {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if len(ints) != count:
        raise ModelLoadError(f"{where}: holds {len(ints)} values, dims {dims} need {count}")
    return np.array(ints, dtype=np.int64).astype(dtype).reshape(dims)


def external_tensor(payload: memoryview, base_dir: str | None) -> tuple[str, np.ndarray] | None:
    """(name, memory-mapped array) of a TensorProto stored as external data, else None."""
    fields = parse_fields(payload)
    if not any(f.number == TENSOR_DATA_LOCATION and f.value == 1 for f in fields):
        return None
    name = next((_text(f.value) for f in fields if f.number == TENSOR_NAME), "")
    dims = [f.value for f in fields if f.number == TENSOR_DIMS and f.wire_type == VARINT]
    data_type = next((f.value for f in fields if f.number == TENSOR_DATA_TYPE), None)
    entries = {}
    for f in fields:
        if f.number == TENSOR_EXTERNAL_DATA:
            kv = {g.number: _text(g.value) for g in parse_fields(f.value)}
            entries[kv.get(1, "")] = kv.get(2, "")
    if entries.get("location") == DECODED_WEIGHTS_FILE:
        return None  # ours: onnxruntime reads it from the temporary folder
    if base_dir is None:
        raise ModelLoadError(f"tensor {name!r} is stored as external data; load the model from its path, not from bytes")
    if data_type not in ONNX_TO_NUMPY:
        raise ModelLoadError(f"tensor {name!r}: external data of type {data_type} is not supported by the decoder")
    import os

    dtype = np.dtype(ONNX_TO_NUMPY[data_type]).newbyteorder("<")
    path = os.path.join(base_dir, entries.get("location", ""))
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    try:
        array = np.memmap(path, dtype=dtype, mode="r", offset=int(entries.get("offset", 0) or 0), shape=(count,))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"tensor {name!r}: cannot read external data {path!r} ({exc})") from None
    return name, array.reshape(dims)


DECODED_WEIGHTS_FILE = "decoded-weights.bin"


def external_data_ref(name: str, array: np.ndarray, location: str, offset: int) -> bytes:
    """A TensorProto that points at ``array``'s bytes in an external-data file."""
    out = bytearray()
    for d in array.shape:
        out += varint_field(TENSOR_DIMS, d)
    out += varint_field(TENSOR_DATA_TYPE, NUMPY_TO_ONNX[np.dtype(array.dtype)])
    out += len_field(TENSOR_NAME, name.encode())
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        out += len_field(TENSOR_EXTERNAL_DATA, len_field(1, key.encode()) + len_field(2, value.encode()))
    out += varint_field(TENSOR_DATA_LOCATION, 1)
    return bytes(out)


def tensor_proto(name: str, array: np.ndarray) -> bytes:
    """Serialize a numpy array as a TensorProto with raw_data (little-endian)."""
    a = np.asarray(array)  # not ascontiguousarray: that turns a 0-d array into shape [1]
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    out = bytearray()
    for d in a.shape:
        out += varint_field(TENSOR_DIMS, d)
    out += varint_field(TENSOR_DATA_TYPE, NUMPY_TO_ONNX[a.dtype])
    out += len_field(TENSOR_NAME, name.encode())
    out += len_field(TENSOR_RAW_DATA, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return bytes(out)


def graph_input_names(payload: memoryview) -> set[str]:
    """Every name any node reads in this graph and its subgraphs (outer-scope references too)."""
    names: set[str] = set()
    for f in parse_fields(payload):
        if f.number == GRAPH_NODE:
            node = parse_node(f.value)
            names.update(node.inputs)
            for sub in node.subgraphs:
                names.update(graph_input_names(sub))
    return names
