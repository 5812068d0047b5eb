"""SPIKE: cost of the no-gradient rounding residual on a [300, 784] tensor (ORT inference, 1 thread).

    python spikes/epr/st_bench.py

int64 fixed point with integer Div (exact floor) vs int32 fixed point without Div (the one the
spike uses). Also: max |x + d - k| where k is the numpy replica of each variant's rounding.
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import epr_graph as E  # noqa: E402


def model(residual):
    b = E._B()
    d = residual(b, "x", "p") if residual else b.op("Mul", ["x", b.const(0.0)], "p")
    b.nodes.append(helper.make_node("Identity", [d], ["d"]))
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [300, 784])],
                          [helper.make_tensor_value_info("d", TensorProto.FLOAT, [300, 784])], b.inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


so = ort.SessionOptions()
so.intra_op_num_threads = 1
x = (np.random.default_rng(0).standard_normal((300, 784)) * 3).astype(np.float32)
k_int64 = np.floor(x.astype(np.float64) + 0.5)
k_int32 = E.latents({"phi": x}, {"phi": "phi", "c_phi": 1.0})
for label, fn, ref in [("none (Mul by 0)", None, None), ("int64 + Div", E.st_round_residual_int64, k_int64),
                       ("int32, no Div", E.st_round_residual, k_int32)]:
    s = ort.InferenceSession(model(fn).SerializeToString(), so, providers=["CPUExecutionProvider"])
    ts = []
    for _ in range(200):
        t = time.perf_counter()
        d = s.run(None, {"x": x})[0]
        ts.append(time.perf_counter() - t)
    err = "" if ref is None else f"  max|x+d-k| {np.abs(x + d - ref).max():.2e}"
    print(f"{label:16s} {1000 * np.median(ts):.3f} ms{err}")
