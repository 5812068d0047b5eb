"""SPIKE: trained EPR parameters -> quantize-style inference model -> onnxcomp ``pack`` -> bytes.

The inference graph is exactly what ``passes/quantize/quantize.py`` writes (int32 latents ``W.latent`` +
Cast + Mul(``W.step``)), so ``pack`` and ``onnxcomp.runtime`` serve it unchanged. Payload is
``onnxcomp.report.payload_bytes`` of the packed model: every initializer byte (ANS bitstreams,
int32 frequency tables, offsets, shapes, float32 steps).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.coding import entropy_bits
from onnxcomp.pass_base import CompileContext
from onnxcomp.pipeline import parse_pipeline
from onnxcomp.report import payload_bytes


def quantized_model(model: onnx.ModelProto, ks: dict[str, np.ndarray], steps: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    kept = [t for t in g.initializer if t.name not in ks]
    del g.initializer[:]
    g.initializer.extend(kept)
    decode = []
    for name, k in ks.items():
        step = np.asarray(steps[name], np.float32)
        g.initializer.append(numpy_helper.from_array(k.astype(np.int32), f"{name}.latent"))
        g.initializer.append(numpy_helper.from_array(step, f"{name}.step"))
        decode.append(helper.make_node("Cast", [f"{name}.latent"], [f"{name}.dequant"], name=f"{name}/decode_cast", to=TensorProto.FLOAT))
        decode.append(helper.make_node("Mul", [f"{name}.dequant", f"{name}.step"], [name], name=f"{name}/decode_scale"))
    nodes = decode + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def pack(model: onnx.ModelProto) -> tuple[ir.Model, dict]:
    """Run onnxcomp's ``pack`` pass on ``model``; returns the packed IR model and per-tensor notes."""
    irm = ir.serde.deserialize_model(model)
    ctx = CompileContext(progress=False)
    parse_pipeline("pack").run(irm, ctx)
    return irm, ctx.tensor_notes


def size_report(ks: dict[str, np.ndarray], steps: dict[str, np.ndarray], packed: ir.Model, notes: dict) -> dict:
    """Ideal (n*H/8), coded, table and step bytes per tensor, and the packed payload."""
    rows = {}
    for name, k in ks.items():
        note = notes.get(f"{name}.latent", {})
        rows[name] = {
            "n": int(k.size),
            "entropy_bits": entropy_bits(k),
            "ideal_bytes": k.size * entropy_bits(k) / 8.0,
            "nonzero": float(np.count_nonzero(k) / k.size),
            "range": [int(k.min()), int(k.max())],
            "codec": note.get("codec"),
            "coded_bytes": note.get("coded_bytes", note.get("bitstream_bytes")),
            "step_bytes": int(np.asarray(steps[name]).size * 4),
            "dead_rows": int(np.sum(~np.any(k.reshape(k.shape[0], -1) != 0, axis=1))) if k.ndim == 2 else None,
        }
    return {
        "payload_bytes": payload_bytes(packed),
        "ideal_bytes_total": sum(r["ideal_bytes"] for r in rows.values()),
        "step_bytes_total": sum(r["step_bytes"] for r in rows.values()),
        "tensors": rows,
    }
