"""``onnxcomp inspect``: what a model file holds, compressed or not."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxcomp.model_io import load_model
from onnxcomp.report import format_table, stored_tensors
from onnxcomp.runtime import format as fmt


def inspect_model(path: str | os.PathLike) -> dict[str, Any]:
    model = load_model(path)
    graph = model.graph
    coded_inputs: set[str] = set()
    coded = []
    for node in graph:
        if node.domain != fmt.DOMAIN:
            continue
        nbytes = sum(i.const_value.nbytes for i in node.inputs if i is not None and i.const_value is not None)
        coded_inputs.update(i.name for i in node.inputs if i is not None)
        shape = [int(d) for d in node.inputs[fmt.INPUT_SHAPE].const_value.numpy()] if node.op_type == fmt.ENTROPY_DECODE else []
        count = int(np.prod(shape)) if shape else 1
        coded.append({
            "output": node.outputs[0].name, "op": f"{node.domain}::{node.op_type}", "shape": shape,
            "bytes": int(nbytes), "bits_per_value": 8.0 * nbytes / max(1, count),
            "symbols": int(node.inputs[fmt.INPUT_FREQUENCIES].const_value.size),
            "format_version": node.attributes.get_int("format_version", -1),
        })
    # Every tensor the file stores, as compress counts them: initializers of all graphs (If/Loop
    # bodies too) and Constant-node values.
    stored = stored_tensors(model)
    plain = [
        {"name": name, "dtype": t.dtype.name.lower(), "shape": list(t.shape), "bytes": int(t.nbytes)}
        for name, t in stored.items()
        if name not in coded_inputs
    ]
    payload = sum(t.nbytes for t in stored.values())
    return {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "payload_bytes": int(payload),
        "ir_version": model.ir_version,
        "opsets": dict(model.opset_imports),
        "inputs": [{"name": v.name, "dtype": v.dtype.name.lower() if v.dtype else None, "shape": [str(d) for d in (v.shape or [])]} for v in graph.inputs],
        "outputs": [{"name": v.name, "dtype": v.dtype.name.lower() if v.dtype else None, "shape": [str(d) for d in (v.shape or [])]} for v in graph.outputs],
        "ops": dict(Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in ir.traversal.RecursiveGraphIterator(graph))),
        "coded_tensors": coded,
        "plain_tensors": plain,
    }


def format_inspection(info: dict[str, Any]) -> str:
    lines = [
        f"{info['file']}: {info['file_bytes']:,} bytes, payload {info['payload_bytes']:,} bytes, IR {info['ir_version']}, opsets {info['opsets']}",
        "inputs:  " + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in info["inputs"]),
        "outputs: " + ", ".join(f"{o['name']} {o['dtype']}{o['shape']}" for o in info["outputs"]),
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
