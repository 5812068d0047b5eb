"""Decode at load: turn a model with ``ai.onnxcomp`` nodes into a plain onnxruntime session.

Each EntropyDecode node of the main graph (or group of them joined by a Concat on axis 0: one
large tensor coded as several streams) is decoded once. For the session, each decoded tensor
that feeds ``Cast(to float32) -> Mul(step)`` is folded into its float32 weight right here, and
every decoded tensor is written straight into a temporary external-data file that onnxruntime
memory-maps: the weights are never serialized, copied or handed over through Python, and nothing
is left for onnxruntime to fold. Runs then cost exactly what the plain model costs.
:func:`decode_model` instead writes the decoded integers inline, giving standard ONNX bytes.

Works on the serialized bytes (see :mod:`.onnx_wire`), so it needs no ``onnx`` package. Streams
are decoded on all cores (:mod:`.parallel_decode`). Integers whose only readers are Cast nodes
are held in the narrowest type their table's range allows (Cast reads any integer type).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.errors import FormatError, ModelLoadError

from . import format as fmt
from . import onnx_wire as w
from .byteplane_decode import BytePlanePlan
from .entropy_decode import DecodePlan
from .integrity import check_budget, check_seal, domain_version, is_seal
from .ops import planner_for
from .parallel_decode import PARALLEL_MIN_SYMBOLS, Arena, Job, needs_shared_memory, run_jobs, workers_available

FLOAT32 = 1  # TensorProto.FLOAT: the Cast target whose Cast -> Mul chain is folded here


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


def decode_model(model: Any, *, max_decoded_bytes: int | None = None, verify: bool = True,
                 workers: int | None = None) -> bytes:
    """Return standard ONNX bytes with every ``ai.onnxcomp`` node decoded into an initializer.

    A model without such nodes is returned unchanged. Raises FormatError naming the node when a
    bitstream, table, shape, CRC or the file's seal is wrong, ModelLoadError when the bytes are
    not ONNX. Tensors stored as external data stay external (resolved against the model's own
    folder). ``max_decoded_bytes`` raises the decode budget (FORMAT.md section 8); ``verify=False``
    skips the seal check (a file you edited yourself); ``workers`` > 1 decodes in forked
    processes (see :mod:`.parallel_decode`).
    """
    return _rewrite(read_model_bytes(model), max_decoded_bytes=max_decoded_bytes, verify=verify, workers=workers)


def decode_to_arrays(model: Any, *, max_decoded_bytes: int | None = None, verify: bool = True,
                     workers: int | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """Decode into memory: the standard graph (every ``Cast(float32) -> Mul(step)`` of a decoded
    tensor folded into its float weight) whose decoded initializers are external-data references
    to a location that does not exist (:data:`HANDED_OVER`), and those tensors' arrays by name,
    decoded in place on every core. Checks and arguments are those of :func:`decode_model`."""
    arrays: dict[str, np.ndarray] = {}
    graph = _rewrite(read_model_bytes(model), arrays, max_decoded_bytes=max_decoded_bytes, verify=verify,
                     workers=workers)
    return graph, arrays


def external_initializers(data: bytes, base_dir: str | None) -> dict[str, np.ndarray]:
    """Main-graph initializers stored as external data, memory-mapped from ``base_dir`` (the
    decoded-weights file of :func:`InferenceSession` excepted)."""
    out = {}
    for f in w.parse_fields(memoryview(data)):
        if f.number == w.MODEL_GRAPH:
            for g in w.parse_fields(f.value):
                if g.number == w.GRAPH_INITIALIZER:
                    ext = w.external_tensor(g.value, base_dir)
                    if ext is not None:
                        out[ext[0]] = ext[1]
    return out


def _narrowest(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.int16):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int32)


@dataclass
class DecodedTensor:
    """One decoded value of the graph: a single EntropyDecode output, or a Concat (axis 0) of
    several, each read only by that Concat."""

    name: str
    parts: list[w.Node]
    concat: w.Node | None = None
    plans: list[DecodePlan] = field(default_factory=list)

    @property
    def nodes(self) -> list[w.Node]:
        return self.parts + ([self.concat] if self.concat is not None else [])

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.plans[0].shape
        if self.concat is None:
            return first
        return (sum(p.shape[0] for p in self.plans),) + first[1:]

    @property
    def value_range(self) -> tuple[int, int]:
        return min(p.value_range[0] for p in self.plans), max(p.value_range[1] for p in self.plans)

    @property
    def float_dtype(self) -> np.dtype | None:
        """The output type of exactly coded floats (BytePlaneDecode), None for integers."""
        types = {p.dtype for p in self.plans if isinstance(p, BytePlanePlan)}
        if not types:
            return None
        if len(types) > 1 or any(not isinstance(p, BytePlanePlan) for p in self.plans):
            raise FormatError(f"node {self.concat.name if self.concat else self.name!r}: joins streams of different types")
        return types.pop()


@dataclass
class CheckedGraph:
    """A compressed model after every check that can be made before decoding: the seal, the
    graph's structure, and each ai.onnxcomp node's inputs planned (sizes against bytes)."""

    top: list[w.Field]
    graph_fields: list[w.Field]
    nodes: list[tuple[w.Field, w.Node]]
    initializers: dict[str, w.Field]
    graph_outputs: set[str]
    readers: dict[str, list[w.Node]]
    subgraph_reads: set[str]
    tensors: list[DecodedTensor]
    node_inputs: dict[int, list[np.ndarray]]  # id(node) -> its input arrays, in order

    def sole_reader(self, name: str) -> w.Node | None:
        users = self.readers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs or name in self.subgraph_reads:
            return None
        return users[0]


def check_graph(data: bytes, *, verify: bool = True, max_decoded_bytes: int | None = None) -> CheckedGraph | None:
    """Check a model's bytes as every decode path does before it allocates anything; None when
    the model has no ai.onnxcomp node. Raises FormatError / ModelLoadError naming what is wrong."""
    top = w.parse_fields(memoryview(data))
    version = domain_version(top)
    # The seal first: nothing else in the file is believed before the hash over it matches.
    if verify:
        check_seal(top, version)
    graphs = [f for f in top if f.number == w.MODEL_GRAPH and f.wire_type == w.LEN]
    if len(graphs) != 1:
        raise ModelLoadError("not an ONNX model (no graph)")
    graph_fields = w.parse_fields(graphs[0].value)

    for f in graph_fields:
        if f.number in (w.GRAPH_NODE, w.GRAPH_INITIALIZER, w.GRAPH_INPUT, w.GRAPH_OUTPUT, w.GRAPH_VALUE_INFO):
            w._expect(f, w.LEN, "graph node/initializer/value_info")
    nodes = [(f, w.parse_node(f.value)) for f in graph_fields if f.number == w.GRAPH_NODE]
    if not any(n.domain == fmt.DOMAIN for _, n in nodes):
        return None
    if version is None:
        raise FormatError(f"the graph has {fmt.DOMAIN} nodes but the model does not import the domain")
    _reject_custom_nodes_in_subgraphs(n for _, n in nodes)

    initializers: dict[str, w.Field] = {}
    for f in graph_fields:
        if f.number == w.GRAPH_INITIALIZER:
            name = w.tensor_name(f.value)
            if name in initializers:
                raise FormatError(f"initializer {name!r} appears twice in the main graph")
            initializers[name] = f
    graph_outputs = {w.string_field(f.value, w.VALUE_INFO_NAME) for f in graph_fields if f.number == w.GRAPH_OUTPUT}
    _reject_duplicate_outputs([n for _, n in nodes], initializers, version)
    readers: dict[str, list[w.Node]] = {}
    subgraph_reads: set[str] = set()
    for _, n in nodes:
        for name in n.inputs:
            readers.setdefault(name, []).append(n)
        for sub in n.subgraphs:
            subgraph_reads.update(w.graph_input_names(sub))
    checked = CheckedGraph(top, graph_fields, nodes, initializers, graph_outputs, readers, subgraph_reads, [], {})

    checked.tensors = tensors = _group_streams([n for _, n in nodes], checked.sole_reader)
    coded_bytes = 0
    for t in tensors:
        for node in t.parts:
            where = f"node {node.name or node.outputs[:1]} ({node.domain}::{node.op_type})"
            if len(node.outputs) != 1:
                raise FormatError(f"{where}: must have exactly one output")
            arrays = []
            for name in node.inputs:
                if name not in initializers:
                    raise FormatError(f"{where}: input {name!r} is not an initializer of the main graph")
                arrays.append(w.parse_tensor(initializers[name].value, f"{where} input {name!r}"))
            for attr in ("format_version", "crc32", "to"):
                if attr in node.other_attrs:
                    raise FormatError(f"{where}: attribute {attr!r} must be an integer")
            planner = planner_for(node.domain, node.op_type, node.int_attrs.get("format_version", -1), where)
            t.plans.append(planner(arrays, node.int_attrs, where))
            checked.node_inputs[id(node)] = arrays
            coded_bytes += sum(a.nbytes for a in arrays)
        if t.concat is not None and any(p.shape[1:] != t.plans[0].shape[1:] or not p.shape for p in t.plans):
            raise FormatError(f"node {t.concat.name!r}: the streams it joins disagree in shape")
    _check_declared_shapes(checked)
    # Every size is checked; now the total against the decode budget, before allocating it.
    declared = sum(p.count * (p.dtype.itemsize if isinstance(p, BytePlanePlan) else 4) for t in tensors for p in t.plans)
    check_budget(declared, coded_bytes, max_decoded_bytes, "the model")

    return checked


def _rewrite(data: bytes, handed_over: dict[str, np.ndarray] | None = None, *, weights_file: str | None = None,
             max_decoded_bytes: int | None = None, verify: bool = True, workers: int | None = None) -> bytes:
    """Decode every ai.onnxcomp node of the main graph.

    Neither ``weights_file`` nor ``handed_over``: decoded tensors become inline initializers
    (standard ONNX bytes). Either: Cast(float32) -> Mul(step) chains are folded too, every decoded
    tensor is decoded in place (by all workers) and the returned graph declares it as external
    data: ``weights_file``, a file the graph references by its base name (save the graph beside
    it); ``handed_over``, a dict that receives the arrays by name, at the location
    :data:`HANDED_OVER`, which does not exist.
    """
    hand_over = handed_over is not None or weights_file is not None
    checked = check_graph(data, verify=verify, max_decoded_bytes=max_decoded_bytes)
    if checked is None:
        return data
    top, graph_fields, nodes = checked.top, checked.graph_fields, checked.nodes
    initializers, graph_outputs, readers = checked.initializers, checked.graph_outputs, checked.readers
    subgraph_reads, tensors, sole_reader = checked.subgraph_reads, checked.tensors, checked.sole_reader

    removed: set[int] = set()  # ids of the parsed nodes dropped from the graph
    specs, targets = [], []
    for t in tensors:
        removed.update(id(n) for n in t.nodes)
        if t.float_dtype is not None:  # exact floats: written as decoded, nothing to fold or narrow
            specs.append((t.shape, t.float_dtype))
            targets.append((t.name, None, False))
            continue
        chain = _scale_chain(t.name, sole_reader, initializers) if hand_over else None
        if chain is not None and _broadcasts(chain[3], t.shape):
            cast, mul, weight_name, step, step_first = chain
            removed.update((id(cast), id(mul)))
            specs.append((t.shape, np.dtype(np.float32)))
            targets.append((weight_name, step, step_first))
            continue
        users = readers.get(t.name, [])
        cast_only = bool(users) and all(u.op_type == "Cast" and u.domain in ("", "ai.onnx") for u in users) \
            and t.name not in graph_outputs and t.name not in subgraph_reads
        specs.append((t.shape, _narrowest(*t.value_range) if cast_only else np.dtype(np.int32)))
        targets.append((t.name, None, False))

    # Integer initializers stored raw (tensors pack found cheaper uncoded: biases, mostly) that
    # are read through the same Cast(float32) -> Mul(step) chain are folded alike, so the decoded
    # graph is the original's: with 60 such bias chains left in a 616M-parameter model,
    # onnxruntime 1.19 at its default optimization level loaded it in 5.3-5.7 s against the
    # original's 2.8-3.4 s (fresh processes; equal at the basic and extended levels).
    raw_chains = _raw_scale_chains(checked, {t.name for t in tensors}) if hand_over else []
    for _, k, weight_name, cast, mul, step in raw_chains:
        removed.update((id(cast), id(mul)))
        specs.append((k.shape, np.dtype(np.float32)))

    total = sum(p.count for t in tensors for p in t.plans)
    workers = workers_available(workers) if total >= PARALLEL_MIN_SYMBOLS else 1
    arena = Arena(specs, shared=needs_shared_memory(workers), path=weights_file)
    jobs = []
    results: dict[str, np.ndarray] = {}
    for t, full, (name, step, step_first) in zip(tensors, arena.arrays, targets):
        row0 = 0
        for plan in t.plans:
            rows = plan.shape[0] if t.concat is not None else None
            part_step = step
            if step is not None and rows is not None and step.ndim == len(t.shape) and step.shape[0] == t.shape[0] > 1:
                part_step = step[row0 : row0 + rows]
            jobs.append(Job(plan, full[row0 : row0 + rows] if rows is not None else full, part_step, step_first))
            row0 += rows or 0
        results[name] = full
    for (_, k, weight_name, _, _, step), full in zip(raw_chains, arena.arrays[len(tensors):]):
        np.multiply(k.astype(np.float32), step, out=full)  # onnxruntime's Cast then Mul, in float32
        results[weight_name] = full
    del full
    run_jobs(jobs, workers)

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
    for (name, array), offset in zip(results.items(), arena.offsets):
        if hand_over:
            location = os.path.basename(weights_file) if weights_file else HANDED_OVER
            proto = w.external_data_ref(name, array, location, offset if weights_file else 0)
            if handed_over is not None:
                handed_over[name] = array
        else:
            proto = w.tensor_proto(name, array)
        parts.append(w.len_field(w.GRAPH_INITIALIZER, proto))
    graph_payload = b"".join(parts)
    del parts, results, jobs
    if handed_over is None:
        arena.close()  # a file's data stays in it; handed-over memory lives on with its arrays

    out_parts: list[bytes | memoryview] = []
    for f in top:
        if f.number == w.MODEL_GRAPH:
            out_parts.append(w.len_field(w.MODEL_GRAPH, graph_payload))
        elif f.number == w.MODEL_OPSET_IMPORT and w.string_field(f.value, w.OPSET_DOMAIN) == fmt.DOMAIN:
            continue  # no ai.onnxcomp node is left
        elif is_seal(f):
            continue  # it sealed the compressed bytes, not these
        else:
            out_parts.append(f.raw)
    return b"".join(out_parts)


MAX_DECLARED_DIM = 1 << 31
# Where decode_to_arrays' tensors "live" in its graph: a location that does not exist (the caller
# holds the arrays).
HANDED_OVER = "onnxcomp-decoded-in-memory.bin"
# InferenceSession's temporary file of decoded weights, which onnxruntime memory-maps: the pages
# the decoder wrote are the pages onnxruntime reads (the page cache holds one copy). Handing
# arrays over in memory instead is not safe: add_initializer shares them but onnxruntime's graph
# optimizers (constant folding) still read the graph's own copy (measured, 1.19), and
# add_external_initializers copies every tensor.
DECODED_WEIGHTS = w.DECODED_WEIGHTS_FILE


def _check_declared_shapes(checked: CheckedGraph) -> None:
    """A shape the graph declares for a decoded value (value_info, graph output) must be the one
    its stream decodes to: onnxruntime plans buffers from it, and a custom op whose output
    disagrees ends the process (measured) instead of failing the Run."""
    declared = {}
    for f in checked.graph_fields:
        if f.number in (w.GRAPH_VALUE_INFO, w.GRAPH_OUTPUT, w.GRAPH_INPUT):
            name, _, dims = w.value_info_summary(f.value)
            # No real model declares a dimension of 2**31 or more; onnxruntime 1.19 spins forever
            # planning one of 2**62 (measured), so a file carrying it is refused here.
            bad = [d for d in dims or [] if isinstance(d, int) and not 0 <= d < MAX_DECLARED_DIM]
            if bad:
                raise FormatError(f"the graph declares {name!r} with dimension {bad[0]}, outside [0, 2**31)")
            if f.number != w.GRAPH_INPUT:
                declared[name] = dims
    for t in checked.tensors:
        for node, plan in zip(t.parts, t.plans):
            dims = declared.get(node.outputs[0])
            if dims is None:
                continue  # nothing declared, or a type without a shape
            fits = len(dims) == len(plan.shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, plan.shape))
            if not fits:
                raise FormatError(f"node {node.name!r}: the graph declares {node.outputs[0]!r} as {dims}, its stream "
                                  f"decodes to {list(plan.shape)}")


def _reject_duplicate_outputs(nodes: list[w.Node], initializers: dict[str, w.Field], version: int) -> None:
    """Each value of the main graph has one producer (ONNX requires it; a decoder that kept the
    last of two same-named decoded tensors would hand onnxruntime the wrong weights)."""
    produced: dict[str, str] = {}
    custom_names: set[str] = set()
    for n in nodes:
        if n.domain == fmt.DOMAIN:
            if n.op_type == fmt.BYTE_PLANE_DECODE and version < fmt.BYTE_PLANE_DOMAIN_VERSION:
                raise FormatError(f"node {n.name!r}: {n.op_type} needs {fmt.DOMAIN} version "
                                  f"{fmt.BYTE_PLANE_DOMAIN_VERSION}, the model imports {version}")
            if n.name and n.name in custom_names:
                raise FormatError(f"two {fmt.DOMAIN} nodes are named {n.name!r}")
            custom_names.add(n.name)
        for out in n.outputs:
            if not out:
                continue
            if out in produced or (n.domain == fmt.DOMAIN and out in initializers):
                raise FormatError(f"value {out!r} is produced twice (node {n.name!r} and "
                                  f"{produced.get(out, 'an initializer')!r}): a graph has one producer per value")
            produced[out] = n.name


def _group_streams(nodes: list[w.Node], sole_reader) -> list[DecodedTensor]:
    """Custom nodes as decoded tensors: Concat(axis 0) groups of streams, then single nodes."""
    custom = [n for n in nodes if n.domain == fmt.DOMAIN]
    producer = {n.outputs[0]: n for n in custom if n.outputs}
    grouped: set[int] = set()
    tensors = []
    for n in nodes:
        if n.op_type != "Concat" or n.domain not in ("", "ai.onnx") or n.int_attrs.get("axis", None) != 0 \
                or len(n.outputs) != 1:
            continue
        parts = [producer.get(i) for i in n.inputs]
        if len(parts) < 2 or any(p is None or sole_reader(p.outputs[0]) is not n for p in parts):
            continue
        tensors.append(DecodedTensor(n.outputs[0], parts, n))
        grouped.update(id(p) for p in parts)
    tensors += [DecodedTensor(n.outputs[0] if n.outputs else "", [n]) for n in custom if id(n) not in grouped]
    return tensors


def _broadcasts(step: np.ndarray, shape: tuple[int, ...]) -> bool:
    try:
        return bool(shape) and np.broadcast_shapes(shape, step.shape) == shape
    except ValueError:
        return False


def _raw_scale_chains(checked: CheckedGraph, coded: set[str]) -> list[tuple]:
    """(name, its integers, the weight name, cast, mul, step) for every integer initializer of the
    main graph, not a coded tensor's name nor a graph input (an input may be fed), whose sole
    reader is a Cast(float32) -> Mul(float32 initializer step that broadcasts to it)."""
    inputs = {w.string_field(f.value, w.VALUE_INFO_NAME) for f in checked.graph_fields if f.number == w.GRAPH_INPUT}
    chains = []
    for name, field in checked.initializers.items():
        if name in coded or name in inputs:
            continue
        chain = _scale_chain(name, checked.sole_reader, checked.initializers)
        if chain is None:
            continue
        cast, mul, weight_name, step, _ = chain
        k = w.parse_tensor(field.value, f"initializer {name!r}")
        if k.dtype.kind not in "iu" or not _broadcasts(step, k.shape) or weight_name in coded:
            continue
        chains.append((name, k, weight_name, cast, mul, step))
    return chains


def _scale_chain(name, sole_reader, initializers):
    """(cast, mul, weight name, step, step is Mul's first input) when ``name`` feeds only
    Cast(to float32) -> Mul(by a float32 initializer), else None."""
    cast = sole_reader(name)
    if cast is None or cast.op_type != "Cast" or cast.domain not in ("", "ai.onnx"):
        return None
    if cast.int_attrs.get("to", -1) != FLOAT32 or len(cast.outputs) != 1:
        return None
    mul = sole_reader(cast.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2 \
            or len(mul.outputs) != 1:
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


def InferenceSession(path_or_model: Any, sess_options: Any = None, providers: Any = None, *,
                     max_decoded_bytes: int | None = None, verify: bool = True, decode_workers: int | None = None,
                     **kwargs: Any):
    """An ``onnxruntime.InferenceSession`` over the decoded model: decode once, no per-Run cost.

    Takes what onnxruntime.InferenceSession takes (a path, bytes, or an onnx.ModelProto), plus the
    same keyword arguments. Outputs are identical to those of the decompressed model.
    ``max_decoded_bytes``, ``verify`` and ``decode_workers`` are those of :func:`decode_model`.

    The weights are decoded, by all cores, straight into a temporary external-data file (a shared
    mapping of it) that onnxruntime then memory-maps while it loads the model from a path, as it
    would load any model with external data: the pages the decoder wrote are the ones onnxruntime
    reads, and no copy of the weights is serialized or handed over, so peak memory and load time
    stay close to the plain model's. The temporary files are removed once the session exists (set
    ONNXCOMP_TMPDIR to choose where they go).
    """
    import onnxruntime as ort

    data = read_model_bytes(path_or_model)
    if providers is None:
        providers = ["CPUExecutionProvider"]
    if sess_options is None:
        sess_options = ort.SessionOptions()
    is_path = not isinstance(path_or_model, (bytes, bytearray, memoryview)) and not hasattr(path_or_model, "SerializeToString")
    base_dir = str(Path(os.fspath(path_or_model)).resolve().parent) if is_path else None
    with tempfile.TemporaryDirectory(prefix="onnxcomp-", dir=os.environ.get("ONNXCOMP_TMPDIR"), ignore_cleanup_errors=True) as tmp:
        decoded = _rewrite(data, weights_file=os.path.join(tmp, DECODED_WEIGHTS), max_decoded_bytes=max_decoded_bytes,
                           verify=verify, workers=decode_workers)
        del data
        # Tensors the original model keeps as external data live beside *it*, not in tmp: they go
        # to onnxruntime directly (memory-mapped here).
        external = external_initializers(decoded, base_dir)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in external.values()]
        if external:
            sess_options.add_external_initializers(list(external), values)
        model_path = os.path.join(tmp, "model.onnx")
        with open(model_path, "wb") as fh:
            fh.write(decoded)
        del decoded
        try:
            return ort.InferenceSession(model_path, sess_options, providers=providers, **kwargs)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"onnxruntime rejected the decoded model: {exc}") from None


def umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 less the umask): mkstemp's 0o600
    would otherwise make every output private whatever the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically (a temporary file beside it, fsync'ed, then renamed),
    with the mode a plain open() would give it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), umask_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
