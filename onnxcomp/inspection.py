"""``onnxcomp inspect``: what a model file holds, compressed or not.

Read with the runtime's own wire-level parser, not the ``onnx`` package: it works in the
deploy-only install, and a compressed file is checked first exactly as the decoders check it
(the seal, then every ai.onnxcomp node's sizes against its bytes), so inspecting a hostile file
gives the decoders' typed errors and allocates nothing it declares.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from onnxcomp.runtime import format as fmt
from onnxcomp.runtime import onnx_wire as w
from onnxcomp.runtime.byteplane_decode import BytePlanePlan
from onnxcomp.runtime.load import check_graph, read_model_bytes


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def inspect_model(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """What the file holds. Counts the tensors compress counts: initializers of every graph (If and
    Loop bodies too) and Constant-node values; coded tensors are the ai.onnxcomp nodes' outputs."""
    data = read_model_bytes(path)
    checked = check_graph(data, verify=verify)
    top = checked.top if checked is not None else w.parse_fields(memoryview(data))
    graphs = [f for f in top if f.number == w.MODEL_GRAPH and f.wire_type == w.LEN]
    if len(graphs) != 1:
        from onnxcomp.errors import ModelLoadError

        raise ModelLoadError(f"{path}: not an ONNX model (no graph)")
    ir_version = next((f.value for f in top if f.number == 1 and f.wire_type == w.VARINT), None)
    opsets = dict(w.opset_imports(top))

    coded, coded_inputs = [], set()
    if checked is not None:
        for t in checked.tensors:
            for node, plan in zip(t.parts, t.plans):
                nbytes = sum(a.nbytes for a in checked.node_inputs[id(node)])
                coded_inputs.update(node.inputs)
                symbols = plan.frequencies.size if not isinstance(plan, BytePlanePlan) else \
                    sum(p.frequencies.size for p in plan.planes)
                coded.append({
                    "output": node.outputs[0], "op": f"{node.domain}::{node.op_type}", "shape": list(plan.shape),
                    "bytes": int(nbytes), "bits_per_value": 8.0 * nbytes / max(1, plan.count),
                    "symbols": int(symbols), "format_version": node.int_attrs.get("format_version", -1),
                })

    ops: Counter[str] = Counter()
    stored: dict[str, w.TensorSummary] = {}
    inputs, outputs = [], []
    for f in w.parse_fields(graphs[0].value):
        if f.number in (w.GRAPH_INPUT, w.GRAPH_OUTPUT):
            w._expect(f, w.LEN, "graph input/output")
            name, dtype, dims = w.value_info_summary(f.value)
            (inputs if f.number == w.GRAPH_INPUT else outputs).append({"name": name, "dtype": dtype, "shape": dims or []})
    for kind, item in w.walk_graph(graphs[0].value):
        if kind == "node":
            ops[f"{item.domain + '::' if item.domain else ''}{item.op_type}"] += 1
        else:
            stored[item.name] = item
    initializer_names = set(stored)
    inputs = [i for i in inputs if i["name"] not in initializer_names]  # IR < 4 lists initializers as inputs
    plain = [{"name": t.name, "dtype": t.dtype, "shape": t.shape, "bytes": t.nbytes}
             for t in stored.values() if t.name not in coded_inputs]
    return {
        "file": str(path),
        "file_bytes": len(data) if not isinstance(path, (str, os.PathLike)) else Path(path).stat().st_size,
        "payload_bytes": sum(t.nbytes for t in stored.values()),
        "ir_version": ir_version,
        "opsets": opsets,
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(ops),
        "coded_tensors": coded,
        "plain_tensors": plain,
    }


def format_inspection(info: dict[str, Any]) -> str:
    shape = lambda dims: "[" + ", ".join(str(d) for d in dims) + "]"  # noqa: E731 - 'N' symbolic, 64 fixed
    lines = [
        f"{info['file']}: {info['file_bytes']:,} bytes, payload {info['payload_bytes']:,} bytes, IR {info['ir_version']}, opsets {info['opsets']}",
        "inputs:  " + ", ".join(f"{i['name']} {i['dtype']}{shape(i['shape'])}" for i in info["inputs"]),
        "outputs: " + ", ".join(f"{o['name']} {o['dtype']}{shape(o['shape'])}" for o in info["outputs"]),
        "ops:     " + ", ".join(f"{k} x{v}" for k, v in sorted(info["ops"].items())),
    ]
    if info["coded_tensors"]:
        rows = [[c["output"], "x".join(map(str, c["shape"])), f"{c['bytes']:,}", f"{c['bits_per_value']:.3f}", str(c["symbols"])]
                for c in info["coded_tensors"]]
        lines += ["", format_table(["coded tensor", "shape", "bytes", "bits/value", "symbols"], rows)]
    big = sorted(info["plain_tensors"], key=lambda t: -t["bytes"])
    rows = [[t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", f"{t['bytes']:,}"] for t in big[:20]]
    if rows:
        lines += ["", format_table(["plain tensor", "dtype", "shape", "bytes"], rows)]
        if len(big) > 20:
            lines.append(f"... and {len(big) - 20} more plain tensors ({sum(t['bytes'] for t in big[20:]):,} bytes)")
    return "\n".join(lines)
