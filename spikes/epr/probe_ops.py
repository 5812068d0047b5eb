"""SPIKE: which EPR building blocks ORT 1.19.2 training accepts, on a one-weight toy graph.

    python spikes/epr/probe_ops.py

loss = ReduceSum(f(w) * input), w trainable [4]. For each f, reports whether generate_artifacts
succeeds and the gradient d loss / d w after one step with lr 0 (read back via AdamW's moment is
awkward, so we use plain finite-difference-free check: lr=1, AdamW's first step moves every
parameter with a non-zero gradient by ~lr*sign(g); zero gradient -> no move).
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import TrainingError
from onnxcomp.training.session import TrainingSession, generate_artifacts

W0 = np.array([-1.3, -0.2, 0.4, 2.6], np.float32)


def graph(nodes, extra_inits=()):
    inits = [numpy_helper.from_array(W0, "w"), *extra_inits]
    nodes = nodes + [
        helper.make_node("Mul", ["f", "input"], ["prod"]),
        helper.make_node("ReduceSum", ["prod"], ["loss"], keepdims=0),
    ]
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


CASES = {
    "Round(w)": ([helper.make_node("Round", ["w"], ["f"])], []),
    "Floor(w + 0.5)": ([helper.make_node("Add", ["w", "h"], ["a"]), helper.make_node("Floor", ["a"], ["f"])], [c("h", 0.5)]),
    "Softplus(w)": ([helper.make_node("Softplus", ["w"], ["f"])], []),
    "Sign(w) * w": ([helper.make_node("Sign", ["w"], ["s"]), helper.make_node("Mul", ["s", "w"], ["f"])], []),
    "Cast(Cast(w, INT64), FLOAT)": ([helper.make_node("Cast", ["w"], ["i"], to=TensorProto.INT64),
                                     helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT)], []),
    "naive ST: w + Castround(w) - w": ([helper.make_node("Cast", ["w"], ["i"], to=TensorProto.INT64),
                                        helper.make_node("Cast", ["i"], ["r"], to=TensorProto.FLOAT),
                                        helper.make_node("Add", ["w", "r"], ["a"]),
                                        helper.make_node("Sub", ["a", "w"], ["f"])], []),
    "fixed-point ST (spike)": (None, []),
    "RandomUniformLike(w) + w": ([helper.make_node("RandomUniformLike", ["w"], ["u"]), helper.make_node("Add", ["u", "w"], ["f"])], []),
    "RandomUniform(shape) + w": ([helper.make_node("RandomUniform", [], ["u"], shape=[4]), helper.make_node("Add", ["u", "w"], ["f"])], []),
    "Where(w > 0, -1, 1) * w": ([helper.make_node("Greater", ["w", "z"], ["g"]), helper.make_node("Where", ["g", "m", "p"], ["s"]),
                                 helper.make_node("Mul", ["s", "w"], ["f"])], [c("z", 0.0), c("m", -1.0), c("p", 1.0)]),
}


def fixed_point_case():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from epr_graph import _B, st_round_residual

    b = _B()
    d = st_round_residual(b, "w", "st")
    b.nodes.append(helper.make_node("Add", ["w", d], ["f"]))
    return graph(b.nodes, b.inits)


def main() -> int:
    x = np.ones(4, np.float32)
    for label, (nodes, inits) in CASES.items():
        model = fixed_point_case() if nodes is None else graph(nodes, inits)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                art = generate_artifacts(model, ["w"], [], tmp)
            except TrainingError as e:
                print(f"{label:34s} generate_artifacts FAILED: {e}")
                continue
            try:
                s = TrainingSession(art, lr=0.1)
                fwd = float(np.asarray(s.step({"input": x})[0]).sum())
                moved = s.parameters()["w"] - W0
                print(f"{label:34s} ok   loss {fwd:8.4f}  w moved by {np.round(moved, 3).tolist()}")
            except Exception as e:  # noqa: BLE001
                print(f"{label:34s} artifacts ok, RUN FAILED: {str(e).splitlines()[0][:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
