"""What a compressed model holds, tensor by tensor: the figures behind every size claim.

``payload_bytes`` counts every tensor byte in the file (bitstreams, tables, steps, decoders,
uncompressed tensors); ``compressed_bytes`` is the file. Each compressed weight is traced back
through its decode subgraph (the constant-only cone of nodes above the value that carries the
weight's name) so its row counts exactly the bytes that rebuild it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxcomp.coding import value_stats
from onnxcomp.runtime import format as fmt
from onnxcomp.runtime.ops import decode_node
from onnxcomp.inspection import format_table  # plain-text tables, import-light

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def stored_tensors(model: ir.Model) -> dict[str, ir.TensorProtocol]:
    """Every tensor the file stores: initializers of all graphs and Constant-node values (which
    is where some exporters keep weights, also inside If/Loop bodies), by value name."""
    tensors = {name: v.const_value for name, v in model.graph.initializers.items() if v.const_value is not None}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain == "" and "value" in node.attributes:
            tensors[node.outputs[0].name] = node.attributes["value"].as_tensor()
        for attr in node.attributes.values():
            graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else attr.value if attr.type == ir.AttributeType.GRAPHS else []
            for g in graphs:
                tensors.update({n: v.const_value for n, v in g.initializers.items() if v.const_value is not None})
    return tensors


def payload_bytes(model: ir.Model) -> int:
    return sum(t.nbytes for t in stored_tensors(model).values())


def weight_params(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Float tensors a model stores: the parameters compression is measured against."""
    return {name: tuple(t.shape) for name, t in stored_tensors(model).items() if t.dtype in FLOAT_TYPES}


def _constant_cone(value: ir.Value) -> tuple[list[ir.Value], list[ir.Node]] | None:
    """Initializers and nodes that compute ``value`` from constants only, or None if not constant."""
    inits: dict[int, ir.Value] = {}
    nodes: dict[int, ir.Node] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if v.is_initializer():
            inits[id(v)] = v
            continue
        node = v.producer()
        if node is None:
            return None
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(i for i in node.inputs if i is not None)
    return list(inits.values()), list(nodes.values())


def _decode_node(node: ir.Node) -> np.ndarray:
    arrays = [i.const_value.numpy() for i in node.inputs]
    attrs = {k: a.as_int() for k, a in node.attributes.items()}
    where = f"node {node.name!r}"
    return decode_node(node.domain, node.op_type, arrays, attrs, where)


def _stats_from(values) -> tuple[int, float]:
    return values if isinstance(values, tuple) else value_stats(values)


def tensor_rows(original: dict[str, tuple[int, ...]], model: ir.Model, notes: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per original float weight, as it is stored in ``model``. A coded tensor's distinct
    values and entropy are pack's own figures where it noted them (it checked every stream decodes
    to those values), else decoded from the graph's nodes, one tensor per core at a time."""
    values: dict[str, ir.Value] = {}
    for node in model.graph:
        for out in node.outputs:
            if out.name in original:
                values[out.name] = out
    for name, v in model.graph.initializers.items():
        if name in original:
            values[name] = v
    rows, stats_of = [], []  # stats_of[i]: what row i's value statistics are computed from
    for name, shape in original.items():
        params = int(np.prod(shape)) if shape else 1
        v = values.get(name)
        if v is None:
            continue  # folded away (e.g. BatchNorm parameters)
        row: dict[str, Any] = {"name": name, "shape": list(shape), "params": params}
        if v.is_initializer():
            arr = v.const_value.numpy()
            row.update(codec=str(arr.dtype), bytes=int(arr.nbytes))
            source = (lambda arr=arr: arr)
        else:
            cone = _constant_cone(v)
            if cone is None:
                continue
            inits, nodes = cone
            row["bytes"] = int(sum(i.const_value.nbytes for i in inits))
            coded = [n for n in nodes if n.domain == fmt.DOMAIN]
            latent_notes = notes.get(notes.get(name, {}).get("latent", ""), {})
            if coded and "unique_values" in latent_notes and len(coded) == latent_notes.get("streams") and \
                    all(n.op_type == fmt.ENTROPY_DECODE for n in coded):
                # pack's own figures of the latents it coded (and checked to decode): no decode
                source = (lambda n=latent_notes: (n["unique_values"], n["value_entropy_bits"]))
                row["codec"] = "ans"
            elif coded:
                source = (lambda coded=coded: np.concatenate([_decode_node(n).reshape(-1) for n in coded]))
                exact = any(n.op_type == fmt.BYTE_PLANE_DECODE for n in coded)
                row["codec"] = "exact-float" if exact else "ans"
            else:
                int_inits = [i for i in inits if i.const_value.dtype not in FLOAT_TYPES]
                source = (lambda ii=int_inits: np.concatenate([i.const_value.numpy().reshape(-1) for i in ii])
                          if ii else np.zeros(0))
                row["codec"] = f"raw-{int_inits[0].const_value.dtype.name.lower()}" if int_inits else "float-graph"
        row["bits_per_param"] = 8.0 * row["bytes"] / params if params else 0.0
        rows.append(row)
        stats_of.append(source)
    # One tensor per thread at a time (the native decoder releases the GIL): only the statistics
    # are kept, never every decoded tensor at once.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        stats = list(pool.map(lambda source: _stats_from(source()), stats_of))
    for row, (unique, entropy) in zip(rows, stats):
        name = row["name"]
        row["unique_values"], row["entropy_bits"] = unique, entropy
        for key in ("bits", "rounding", "method", "prior", "decoder"):
            if key in notes.get(name, {}):
                row[key] = notes[name][key]
        if "prior_code_bits" in notes.get(name, {}):  # EPR: the learned prior as a code, for comparison
            row["prior_code_bytes"] = notes[name]["prior_code_bits"] / 8.0
        latent_notes = notes.get(notes.get(name, {}).get("latent", ""), {})
        if "ideal_bits" in latent_notes:
            row["ideal_bytes"] = latent_notes["ideal_bits"] / 8.0
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """The before/after table ``onnxcomp compress`` prints."""
    params = report["params"]
    rows = [
        ["file bytes", f"{report['original_bytes']:,}", f"{report['compressed_bytes']:,}"],
        ["payload bytes", f"{report['original_payload_bytes']:,}", f"{report['payload_bytes']:,}"],
        ["bits/param", f"{8 * report['original_payload_bytes'] / max(1, params):.2f}", f"{report['bits_per_param']:.3f}"],
        ["ratio (file)", "1.0x", f"{report['original_bytes'] / max(1, report['compressed_bytes']):.1f}x"],
    ]
    m = report.get("metrics") or {}
    if "val_error_original" in m:
        rows.append(["val error", f"{100 * m['val_error_original']:.2f}%", f"{100 * m['val_error']:.2f}%"])
    if "val_task_change" in m:
        rows.append(["val task change (outputs' kinds)", "-", f"{100 * m['val_task_change']:.2f}%"])
    if "val_disagreement" in m:
        rows.append(["val predictions changed", "-", f"{100 * m['val_disagreement']:.2f}%"])
    top = format_table(["", "original", "compressed"], rows)
    trows = [
        [t["name"], "x".join(map(str, t["shape"])), t["codec"], f"{t['bytes']:,}", f"{t['bits_per_param']:.3f}",
         str(t["unique_values"]), f"{t['entropy_bits']:.3f}"]
        for t in report["tensors"]
    ]
    bottom = format_table(["tensor", "shape", "codec", "bytes", "bits/param", "unique", "entropy"], trows)
    for line in report.get("summaries", []):  # one paragraph per pass that reports itself (PassReport)
        top += "\n\n" + line
    return top + "\n\n" + bottom
