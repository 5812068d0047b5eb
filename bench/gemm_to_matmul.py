"""Rewrite Gemm with a constant weight as MatMul (+ Add) before running ORT's quantizers.

Why: onnxruntime's weight-only 4-bit quantizer (MatMulNBits) handles MatMul, not Gemm, so
without this rewrite a Gemm-only network (LeNet-300-100) comes out of it unquantized (its
quantize_dynamic does handle Gemm). The rewrite is exact when alpha == beta == 1 (the usual export):
Y = A @ B^T + C  becomes  MatMul(A, B^T stored transposed) then Add(C).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from model_stats import all_graphs


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Return a rewritten copy and the number of Gemm nodes rewritten (main graph only)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes, rewritten = [], 0
    for node in g.node:
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        if _attr(node, "transA", 0):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if _attr(node, "transB", 0):
            w = w.T
        if alpha != 1.0:
            w = w * np.asarray(alpha, dtype=w.dtype)
        w_name = f"{node.input[1]}__matmul"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        base = node.name or node.output[0]
        has_c = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{base}__matmul_out" if has_c else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                          name=f"{base}__matmul"))
        if has_c:
            c_name = node.input[2]
            if beta != 1.0:
                if c_name not in inits:
                    raise ValueError(f"Gemm {base}: beta={beta} with a non-constant C")
                c = numpy_helper.to_array(inits[c_name]) * np.float32(beta)
                c_name = f"{c_name}__beta"
                g.initializer.append(numpy_helper.from_array(c, c_name))
            new_nodes.append(helper.make_node("Add", [mm_out, c_name], [node.output[0]],
                                              name=f"{base}__add"))
        rewritten += 1
    del g.node[:]
    g.node.extend(new_nodes)
    # Drop the original Gemm weights no longer referenced (otherwise they count as payload).
    used = {i for sub in all_graphs(g) for n in sub.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model, rewritten
