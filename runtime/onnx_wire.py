"""Just enough of the protobuf wire format to rewrite an ONNX model without the ``onnx`` package.

The deploy-only runtime must work with onnxruntime, numpy and constriction alone, and onnxruntime
does not expose a model parser. Decoding at load only needs to (1) find the ``ai.onnxcomp`` nodes
of the main graph, (2) read the initializers feeding them, and (3) write the graph back with
those nodes replaced by initializers. Every field this module does not understand is copied
through byte for byte, so the rest of the model is untouched.

Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.errors import ModelLoadError

# onnx.proto field numbers used here.
MODEL_OPSET_IMPORT, MODEL_GRAPH = 8, 7
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
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


WIRE_NAMES = {VARINT: "varint", FIXED64: "fixed64", LEN: "length-delimited", FIXED32: "fixed32"}


def _expect(f: Field, wire_type: int, what: str) -> None:
    """A known field must have its schema's wire type: anything else is a corrupt file (and would
    otherwise surface as a TypeError deep in the decoder)."""
    if f.wire_type != wire_type:
        raise ModelLoadError(f"corrupt ONNX protobuf: {what} (field {f.number}) has wire type "
                             f"{WIRE_NAMES.get(f.wire_type, f.wire_type)}, expected {WIRE_NAMES[wire_type]}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# Subgraphs (If/Loop/Scan bodies) nest; a hostile file can nest them thousands deep for a few
# bytes each. Real models nest a handful of levels.
MAX_GRAPH_DEPTH = 64
# Attribute types of onnx.proto's AttributeProto.AttributeType that carry one integer.
ATTR_TYPE_FIELD, ATTR_TYPE_INT = 20, 2


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    int_attrs: dict[str, int] = field(default_factory=dict)
    subgraphs: list[memoryview] = field(default_factory=list)
    other_attrs: set[str] = field(default_factory=set)  # attributes present but not integers


def parse_node(payload: memoryview) -> Node:
    """The parts of a NodeProto the decoder reads. Attributes are checked as ONNX requires: each
    name once, and an integer attribute (``i`` set) typed INT, so a file cannot carry a second
    ``crc32`` or a ``format_version`` given as a float and still be read as valid."""
    node = Node("", "", "", [], [])
    names = {NODE_INPUT: "node input", NODE_OUTPUT: "node output", NODE_NAME: "node name",
             NODE_OP_TYPE: "node op_type", NODE_DOMAIN: "node domain", NODE_ATTRIBUTE: "node attribute"}
    attr_names: set[str] = set()
    for f in parse_fields(payload):
        if f.number in names:
            _expect(f, LEN, names[f.number])
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
            name, ival, atype = "", None, None
            for a in parse_fields(f.value):
                if a.number == ATTR_NAME:
                    _expect(a, LEN, "attribute name")
                    name = _text(a.value)
                elif a.number == ATTR_I:
                    _expect(a, VARINT, "attribute i")
                    ival = _signed64(a.value)
                elif a.number == ATTR_TYPE_FIELD:
                    _expect(a, VARINT, "attribute type")
                    atype = a.value
                elif a.number in (ATTR_G, ATTR_GRAPHS):
                    _expect(a, LEN, "attribute graph")
                    node.subgraphs.append(a.value)
            if name in attr_names:
                raise ModelLoadError(f"node {node.name!r}: attribute {name!r} appears twice")
            attr_names.add(name)
            if ival is not None and atype not in (None, ATTR_TYPE_INT):
                raise ModelLoadError(f"node {node.name!r}: attribute {name!r} holds an integer but is typed {atype}")
            if ival is not None:
                node.int_attrs[name] = ival
            else:
                node.other_attrs.add(name)
    return node


def string_field(payload: memoryview, number: int) -> str:
    """The first string field ``number`` of a message ("" if absent)."""
    for f in parse_fields(payload):
        if f.number == number:
            _expect(f, LEN, "string")
            return _text(f.value)
    return ""


def tensor_name(payload: memoryview) -> str:
    return string_field(payload, TENSOR_NAME)


# Typed (non-raw) integer fields are for a few values (a scalar offset, a shape); tensors of data
# use raw_data. Reading more through Python ints would cost ~30x the bytes.
MAX_TYPED_VALUES = 4096
MAX_TENSOR_RANK = 64


def _dims_and_type(fields: list[Field], where: str) -> tuple[list[int], int | None]:
    dims, data_type = [], None
    for f in fields:
        if f.number == TENSOR_DIMS:
            if f.wire_type == LEN:  # packed
                pos = 0
                while pos < len(f.value):
                    d, pos = _read_varint(f.value, pos)
                    dims.append(_signed64(d))
            else:
                _expect(f, VARINT, f"{where}: dims")
                dims.append(_signed64(f.value))
            if len(dims) > MAX_TENSOR_RANK:
                raise ModelLoadError(f"{where}: more than {MAX_TENSOR_RANK} dims")
        elif f.number == TENSOR_DATA_TYPE:
            _expect(f, VARINT, f"{where}: data_type")
            data_type = f.value
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: negative dims {dims}")
    return dims, data_type


def parse_tensor(payload: memoryview, where: str) -> np.ndarray:
    """Read a TensorProto of a dtype in ONNX_TO_NUMPY, from raw_data or the typed fields. The
    declared dims are checked against the bytes that are there before anything is allocated."""
    fields = parse_fields(payload)
    dims, data_type = _dims_and_type(fields, where)
    raw, ints = None, []
    for f in fields:
        if f.number == TENSOR_RAW_DATA:
            _expect(f, LEN, f"{where}: raw_data")
            raw = f.value
        elif f.number in (TENSOR_INT32_DATA, TENSOR_INT64_DATA):
            if f.wire_type == LEN:
                pos = 0
                while pos < len(f.value):
                    v, pos = _read_varint(f.value, pos)
                    ints.append(_signed64(v))
                    if len(ints) > MAX_TYPED_VALUES:
                        break
            else:
                _expect(f, VARINT, f"{where}: int data")
                ints.append(_signed64(f.value))
            if len(ints) > MAX_TYPED_VALUES:
                raise ModelLoadError(f"{where}: more than {MAX_TYPED_VALUES} values in typed fields (use raw_data)")
        elif f.number == TENSOR_DATA_LOCATION and f.value == 1:
            raise ModelLoadError(f"{where}: stored as external data, which the ai.onnxcomp domain does not use")
    if data_type not in ONNX_TO_NUMPY:
        raise ModelLoadError(f"{where}: unsupported tensor type {data_type}")
    dtype = np.dtype(ONNX_TO_NUMPY[data_type])
    count = math.prod(dims)  # Python ints: no overflow, however hostile the dims
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ModelLoadError(f"{where}: raw_data holds {len(raw)} bytes, dims {dims} need {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if len(ints) != count:
        raise ModelLoadError(f"{where}: holds {len(ints)} values, dims {dims} need {count}")
    if dtype.kind not in "iu":
        raise ModelLoadError(f"{where}: {dtype} values must be stored in raw_data")
    info = np.iinfo(dtype)
    if ints and not (info.min <= min(ints) and max(ints) <= info.max):
        raise ModelLoadError(f"{where}: values outside the range of {dtype}")
    return np.array(ints, dtype=np.int64).astype(dtype).reshape(dims)


def external_tensor(payload: memoryview, base_dir: str | None) -> tuple[str, np.ndarray] | None:
    """(name, memory-mapped array) of a TensorProto stored as external data, else None."""
    fields = parse_fields(payload)
    if not any(f.number == TENSOR_DATA_LOCATION and f.wire_type == VARINT and f.value == 1 for f in fields):
        return None
    name = tensor_name(payload)
    where = f"tensor {name!r}"
    dims, data_type = _dims_and_type(fields, where)
    entries = {}
    for f in fields:
        if f.number == TENSOR_EXTERNAL_DATA:
            _expect(f, LEN, f"{where}: external_data")
            kv = {}
            for g in parse_fields(f.value):
                _expect(g, LEN, f"{where}: external_data entry")
                kv[g.number] = _text(g.value)
            entries[kv.get(1, "")] = kv.get(2, "")
    if entries.get("location") == DECODED_WEIGHTS_FILE:
        return None  # ours: onnxruntime reads it from the temporary folder
    if base_dir is None:
        raise ModelLoadError(f"{where} is stored as external data; load the model from its path, not from bytes")
    if data_type not in ONNX_TO_NUMPY:
        raise ModelLoadError(f"{where}: external data of type {data_type} is not supported by the decoder")
    import os

    dtype = np.dtype(ONNX_TO_NUMPY[data_type]).newbyteorder("<")
    location = entries.get("location", "")
    path = os.path.join(base_dir, location)
    count = math.prod(dims)
    try:
        offset = int(entries.get("offset", 0) or 0)
        length = int(entries["length"]) if entries.get("length") else count * dtype.itemsize
    except ValueError:
        raise ModelLoadError(f"{where}: external data offset/length are not integers: {entries}") from None
    if offset < 0 or length != count * dtype.itemsize:
        raise ModelLoadError(f"{where}: external data at offset {offset}, length {length}: dims {dims} need "
                             f"{count * dtype.itemsize} bytes")
    try:
        size = os.path.getsize(path)
        if offset + length > size:
            raise ModelLoadError(f"{where}: external data {location!r} holds {size} bytes, the tensor needs "
                                 f"{offset + length}")
        array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)) if count else np.empty(0, dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{where}: cannot read external data {path!r} ({exc})") from None
    return name, array.reshape(dims)


DECODED_WEIGHTS_FILE = "decoded-weights.bin"  # InferenceSession's temporary file (runtime/load.py)


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


def graph_input_names(payload: memoryview, depth: int = 1) -> set[str]:
    """Every name any node reads in this graph and its subgraphs (outer-scope references too)."""
    if depth > MAX_GRAPH_DEPTH:
        raise ModelLoadError(f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep")
    names: set[str] = set()
    for f in parse_fields(payload):
        if f.number == GRAPH_NODE:
            _expect(f, LEN, "graph node")
            node = parse_node(f.value)
            names.update(node.inputs)
            for sub in node.subgraphs:
                names.update(graph_input_names(sub, depth + 1))
    return names


# ---- read-only summaries (``onnxcomp inspect`` without the onnx package) ------------------------
# TensorProto.DataType -> (name as onnx-ir spells it, bits per element).
DATA_TYPES = {
    1: ("float", 32), 2: ("uint8", 8), 3: ("int8", 8), 4: ("uint16", 16), 5: ("int16", 16), 6: ("int32", 32),
    7: ("int64", 64), 8: ("string", 0), 9: ("bool", 8), 10: ("float16", 16), 11: ("double", 64), 12: ("uint32", 32),
    13: ("uint64", 64), 14: ("complex64", 64), 15: ("complex128", 128), 16: ("bfloat16", 16),
    17: ("float8e4m3fn", 8), 18: ("float8e4m3fnuz", 8), 19: ("float8e5m2", 8), 20: ("float8e5m2fnuz", 8),
    21: ("uint4", 4), 22: ("int4", 4),
}
ATTR_T = 5
TYPE_TENSOR, TENSOR_TYPE_ELEM, TENSOR_TYPE_SHAPE, SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2, 1, 1, 2
VALUE_INFO_TYPE = 2


@dataclass
class TensorSummary:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int  # as stored: elements x element size (4-bit types packed two per byte)


def tensor_summary(payload: memoryview, where: str) -> TensorSummary:
    """Name, type, shape and size of a TensorProto, read without its data."""
    fields = parse_fields(payload)
    dims, data_type = _dims_and_type(fields, where)
    name = tensor_name(payload)
    dtype, bits = DATA_TYPES.get(data_type, (f"type{data_type}", 0))
    count = math.prod(dims)
    nbytes = -(-count * bits // 8)
    if bits == 0:  # strings: the bytes they hold
        nbytes = sum(len(f.value) for f in fields if f.number == 6 and f.wire_type == LEN)
    return TensorSummary(name, dtype, dims, nbytes)


def value_info_summary(payload: memoryview) -> tuple[str, str | None, list[int | str] | None]:
    """(name, element type, dims) of a ValueInfoProto: fixed dims as ints, symbolic ones by name;
    dims None when no shape is declared (unknown rank; [] is a scalar)."""
    name, dtype, dims = "", None, None
    for f in parse_fields(payload):
        if f.number == VALUE_INFO_NAME:
            _expect(f, LEN, "value_info name")
            name = _text(f.value)
        elif f.number == VALUE_INFO_TYPE:
            _expect(f, LEN, "value_info type")
            for t in parse_fields(f.value):
                if t.number == TYPE_TENSOR and t.wire_type == LEN:  # sequences, maps, optionals: no tensor type
                    dtype, dims = _tensor_type(t.value)
    return name, dtype, dims


def _tensor_type(payload: memoryview) -> tuple[str | None, list[int | str] | None]:
    """(element type, dims) of a TypeProto.Tensor; dims None without a shape."""
    dtype, dims = None, None
    for g in parse_fields(payload):
        if g.number == TENSOR_TYPE_ELEM:
            _expect(g, VARINT, "tensor elem_type")
            dtype = DATA_TYPES.get(g.value, (f"type{g.value}", 0))[0]
        elif g.number == TENSOR_TYPE_SHAPE:
            _expect(g, LEN, "tensor shape")
            dims = []
            for d in parse_fields(g.value):
                if d.number == SHAPE_DIM:
                    _expect(d, LEN, "shape dim")
                    dims.append(_dim(d.value))
    return dtype, dims


def _dim(payload: memoryview) -> int | str:
    """A TensorShapeProto.Dimension: its value, its symbolic name, or "?" for neither."""
    dim: int | str = "?"
    for v in parse_fields(payload):
        if v.number == DIM_VALUE and v.wire_type == VARINT:
            dim = _signed64(v.value)
        elif v.number == DIM_PARAM and v.wire_type == LEN:
            dim = _text(v.value)
    return dim


def opset_imports(top: list[Field]) -> list[tuple[str, int]]:
    """(domain, version) of each opset_import of a ModelProto's top-level fields, in file order."""
    out = []
    for f in top:
        if f.number != MODEL_OPSET_IMPORT:
            continue
        _expect(f, LEN, "opset_import")
        domain, version = "", 1
        for g in parse_fields(f.value):
            if g.number == OPSET_DOMAIN:
                _expect(g, LEN, "opset_import domain")
                domain = _text(g.value)
            elif g.number == OPSET_VERSION:
                _expect(g, VARINT, "opset_import version")
                version = _signed64(g.value)
        out.append((domain, version))
    return out


def walk_graph(payload: memoryview, depth: int = 1):
    """Yield ("node", Node) and ("tensor", TensorSummary) for a graph and all its subgraphs:
    every node, every initializer, every Constant node's value."""
    if depth > MAX_GRAPH_DEPTH:
        raise ModelLoadError(f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep")
    for f in parse_fields(payload):
        if f.number == GRAPH_INITIALIZER:
            _expect(f, LEN, "graph initializer")
            yield "tensor", tensor_summary(f.value, "initializer")
        elif f.number == GRAPH_NODE:
            _expect(f, LEN, "graph node")
            node = parse_node(f.value)
            yield "node", node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in parse_fields(f.value):
                    if a.number != NODE_ATTRIBUTE:
                        continue
                    for g in parse_fields(a.value):
                        if g.number == ATTR_T:
                            _expect(g, LEN, "attribute tensor")
                            t = tensor_summary(g.value, f"Constant {node.name!r}")
                            t.name = node.outputs[0] if node.outputs else t.name
                            yield "tensor", t
            for sub in node.subgraphs:
                yield from walk_graph(sub, depth + 1)
