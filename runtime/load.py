"""Decode at load: turn a model with ``ai.onnxcomp`` nodes into standard ONNX, then a session.

Each custom node of the main graph is decoded once (numpy + constriction) and replaced by a plain
initializer holding its output; the standard decode subgraph after it (Cast, Mul, Gather, ...)
then consists of constants only, and onnxruntime's constant folding turns it into float weights
when the session is created. Runs therefore cost exactly what the plain model costs.

Works on the serialized bytes (see :mod:`.onnx_wire`), so it needs no ``onnx`` package.
Memory: a decoded tensor whose only consumers are Cast nodes is stored in the narrowest integer
type that holds it (Cast reads any integer type, so outputs are unchanged), which keeps the peak
during session creation well below two copies of the float weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.errors import FormatError, ModelLoadError

from . import format as fmt
from . import onnx_wire as w
from .entropy_decode import DecodePlan, iter_values
from .ops import planner_for


def read_model_bytes(model: Any) -> bytes:
    """Accept a path, bytes, or anything with SerializeToString (onnx.ModelProto)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    path = Path(os.fspath(model))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None


def _narrowest(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.int16):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int32)


def _decode_ints(plan: DecodePlan, dtype: np.dtype) -> np.ndarray:
    out = np.empty(plan.count, dtype=dtype)
    pos = 0
    for chunk in iter_values(plan):
        out[pos : pos + chunk.size] = chunk  # values lie in the table's range: no overflow
        pos += chunk.size
    return out.reshape(plan.shape)


def _decode_scaled(plan: DecodePlan, step: np.ndarray, step_first: bool) -> np.ndarray | None:
    """float32 weight = Cast(values) * step, computed chunk by chunk along axis 0, exactly as
    onnxruntime computes it (exact int->float32 conversion, one correctly rounded multiply).
    None when step does not broadcast against the shape the way this loop needs."""
    shape = plan.shape
    try:
        full = np.broadcast_shapes(shape, step.shape)
    except ValueError:
        return None
    if full != shape or not shape:
        return None
    lead = step.ndim == len(shape) and step.shape[0] == shape[0] and shape[0] > 1
    row = math.prod(shape[1:])
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(shape[0], -1)
    r = 0
    for chunk in iter_values(plan, granularity=max(1, row)):
        rows = chunk.size // max(1, row)
        part = chunk.reshape((rows,) + shape[1:])
        s = step[r : r + rows] if lead else step
        block = np.multiply(s, part, dtype=np.float32, casting="unsafe") if step_first else \
            np.multiply(part, s, dtype=np.float32, casting="unsafe")
        flat[r : r + rows] = block.reshape(rows, -1)
        r += rows
    return out


def decode_model(model: Any) -> bytes:
    """Return standard ONNX bytes with every ``ai.onnxcomp`` node decoded into an initializer.

    A model without such nodes is returned unchanged. Raises FormatError naming the node when a
    bitstream, table, shape or CRC is wrong, ModelLoadError when the bytes are not ONNX.
    Tensors stored as external data stay external (resolved against the model's own folder).
    """
    return _rewrite(read_model_bytes(model), hand_over=False)[0]


def external_initializers(data: bytes, base_dir: str | None) -> dict[str, np.ndarray]:
    """Main-graph initializers stored as external data, memory-mapped from ``base_dir``."""
    out = {}
    for f in w.parse_fields(memoryview(data)):
        if f.number == w.MODEL_GRAPH:
            for g in w.parse_fields(f.value):
                if g.number == w.GRAPH_INITIALIZER:
                    ext = w.external_tensor(g.value, base_dir)
                    if ext is not None:
                        out[ext[0]] = ext[1]
    return out


FLOAT32 = 1  # TensorProto.FLOAT: the Cast target whose Cast -> Mul chain is folded here


def _rewrite(data: bytes, hand_over: bool) -> tuple[bytes, dict[str, np.ndarray]]:
    """Decode every ai.onnxcomp node of the main graph.

    hand_over=False: decoded tensors become inline initializers (standard ONNX bytes).
    hand_over=True: in addition, each ``EntropyDecode -> Cast(float) -> Mul(step)`` chain is
    folded here into the float weight, and every decoded tensor is returned as an array to hand
    to onnxruntime (``add_external_initializers``) while the bytes keep only a small external-data
    stub for it: no copy of the weights is serialized, and nothing is left for onnxruntime to fold.
    """
    buf = memoryview(data)
    top = w.parse_fields(buf)
    graphs = [f for f in top if f.number == w.MODEL_GRAPH and f.wire_type == w.LEN]
    if len(graphs) != 1:
        raise ModelLoadError("not an ONNX model (no graph)")
    graph_fields = w.parse_fields(graphs[0].value)

    nodes = [(f, w.parse_node(f.value)) for f in graph_fields if f.number == w.GRAPH_NODE]
    custom = [(f, n) for f, n in nodes if n.domain == fmt.DOMAIN]
    if not custom:
        return data, {}
    _reject_custom_nodes_in_subgraphs(n for _, n in nodes)

    initializers = {w.tensor_name(f.value): f for f in graph_fields if f.number == w.GRAPH_INITIALIZER}
    graph_outputs = {w.string_field(f.value, w.VALUE_INFO_NAME) for f in graph_fields if f.number == w.GRAPH_OUTPUT}
    readers: dict[str, list[w.Node]] = {}
    subgraph_reads: set[str] = set()
    for _, n in nodes:
        for name in n.inputs:
            readers.setdefault(name, []).append(n)
        for sub in n.subgraphs:
            subgraph_reads.update(w.graph_input_names(sub))

    def sole_reader(name: str) -> w.Node | None:
        users = readers.get(name, [])
        if len(users) != 1 or name in graph_outputs or name in subgraph_reads:
            return None
        return users[0]

    removed: set[int] = set()  # ids of Node objects dropped from the graph
    results: dict[str, np.ndarray] = {}
    for _, node in custom:
        where = f"node {node.name or node.outputs[:1]} ({node.domain}::{node.op_type})"
        if len(node.outputs) != 1:
            raise FormatError(f"{where}: must have exactly one output")
        arrays = []
        for name in node.inputs:
            if name not in initializers:
                raise FormatError(f"{where}: input {name!r} is not an initializer of the main graph")
            arrays.append(w.parse_tensor(initializers[name].value, f"{where} input {name!r}"))
        plan = planner_for(node.domain, node.op_type, node.int_attrs.get("format_version", -1), where)(arrays, node.int_attrs, where)
        del arrays
        removed.add(id(node))
        name = node.outputs[0]
        target = _scale_chain(name, sole_reader, initializers) if hand_over else None
        if target is not None:
            cast, mul, weight_name, step, step_first = target
            weight = _decode_scaled(plan, step, step_first)
            if weight is not None:
                removed.update((id(cast), id(mul)))
                results[weight_name] = weight
                continue
            plan = planner_for(node.domain, node.op_type, node.int_attrs.get("format_version", -1), where)(
                [w.parse_tensor(initializers[i].value, where) for i in node.inputs], node.int_attrs, where)
        users = readers.get(name, [])
        cast_only = bool(users) and all(u.op_type == "Cast" and u.domain in ("", "ai.onnx") for u in users) \
            and name not in graph_outputs and name not in subgraph_reads
        # Cast reads any integer type, so its input may be held in fewer bytes.
        results[name] = _decode_ints(plan, _narrowest(*plan.value_range) if cast_only else np.dtype(np.int32))

    still_read = set(graph_outputs) | subgraph_reads
    for _, n in nodes:
        if id(n) not in removed:
            still_read.update(n.inputs)
    dropped = {name for _, n in nodes if id(n) in removed for name in n.inputs} - still_read
    dropped |= set(results)  # a decoded name replaces whatever stood there

    node_of = {id(f): n for f, n in nodes}
    parts: list[bytes | memoryview] = []
    for f in graph_fields:
        if f.number == w.GRAPH_NODE and id(node_of[id(f)]) in removed:
            continue
        if f.number == w.GRAPH_INITIALIZER and w.tensor_name(f.value) in dropped:
            continue
        if f.number == w.GRAPH_VALUE_INFO and w.string_field(f.value, w.VALUE_INFO_NAME) in results:
            continue  # its declared int32 type may no longer hold after narrowing or folding
        parts.append(f.raw)
    for name, array in results.items():
        proto = w.external_stub(name, array) if hand_over else w.tensor_proto(name, array)
        parts.append(w.len_field(w.GRAPH_INITIALIZER, proto))
    graph_payload = b"".join(parts)
    del parts

    out_parts: list[bytes | memoryview] = []
    for f in top:
        if f.number == w.MODEL_GRAPH:
            out_parts.append(w.len_field(w.MODEL_GRAPH, graph_payload))
        elif f.number == w.MODEL_OPSET_IMPORT and w.string_field(f.value, w.OPSET_DOMAIN) == fmt.DOMAIN:
            continue  # no ai.onnxcomp node is left
        else:
            out_parts.append(f.raw)
    return b"".join(out_parts), (results if hand_over else {})


def _scale_chain(name, sole_reader, initializers):
    """(cast, mul, weight name, step, step is Mul's first input) when ``name`` feeds only
    Cast(to float32) -> Mul(by a float32 initializer), else None."""
    cast = sole_reader(name)
    if cast is None or cast.op_type != "Cast" or cast.domain not in ("", "ai.onnx"):
        return None
    if cast.int_attrs.get("to", -1) != FLOAT32 or len(cast.outputs) != 1:
        return None
    mul = sole_reader(cast.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2:
        return None
    step_first = mul.inputs[1] == cast.outputs[0]
    other = mul.inputs[0] if step_first else mul.inputs[1]
    if other not in initializers or other == cast.outputs[0]:
        return None
    step = w.parse_tensor(initializers[other].value, f"initializer {other!r}")
    if step.dtype != np.float32:
        return None
    return cast, mul, mul.outputs[0], step, step_first


def _reject_custom_nodes_in_subgraphs(nodes) -> None:
    for n in nodes:
        for sub in n.subgraphs:
            for f in w.parse_fields(sub):
                if f.number == w.GRAPH_NODE:
                    inner = w.parse_node(f.value)
                    if inner.domain == fmt.DOMAIN:
                        raise FormatError(
                            f"node {inner.name!r} ({fmt.DOMAIN}::{inner.op_type}) sits inside a subgraph of "
                            f"{n.name!r}; FORMAT.md allows ai.onnxcomp nodes only in the main graph"
                        )
                    _reject_custom_nodes_in_subgraphs([inner])


def InferenceSession(path_or_model: Any, sess_options: Any = None, providers: Any = None, **kwargs: Any):
    """An ``onnxruntime.InferenceSession`` over the decoded model: decode once, no per-Run cost.

    Takes what onnxruntime.InferenceSession takes (a path, bytes, or an onnx.ModelProto), plus the
    same keyword arguments. Outputs are identical to those of the decompressed model.
    """
    import onnxruntime as ort

    decoded, arrays = _rewrite(read_model_bytes(path_or_model), hand_over=True)
    if providers is None:
        providers = ["CPUExecutionProvider"]
    if sess_options is None:
        sess_options = ort.SessionOptions()
    is_path = not isinstance(path_or_model, (bytes, bytearray, memoryview)) and not hasattr(path_or_model, "SerializeToString")
    base_dir = str(Path(os.fspath(path_or_model)).resolve().parent) if is_path else None
    # A session made from bytes cannot find external data files, so hand those tensors over
    # directly (memory-mapped); onnxruntime then ignores their stored locations.
    external = external_initializers(decoded, base_dir)
    external.update(arrays)
    del arrays
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in external.values()]
    if external:
        sess_options.add_external_initializers(list(external), values)
    try:
        session = ort.InferenceSession(decoded, sess_options, providers=providers, **kwargs)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"onnxruntime rejected the decoded model: {exc}") from None
    session._onnxcomp_external_values = values  # onnxruntime needs them alive as long as the session
    return session
