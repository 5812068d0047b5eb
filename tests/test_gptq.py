"""Error-compensating rounding and the layer statistics it uses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxcomp.passes.quantize.layer_stats import im2col, input_covariances
from onnxcomp.data import Split
from onnxcomp.passes.quantize.gptq import gptq_round
from onnxcomp.graph.weights import find_weights

from .conftest import make_model, run


def test_gptq_beats_nearest_rounding_on_correlated_inputs():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(32, 32))
    x = rng.normal(size=(4000, 32)) @ mix  # strongly correlated features
    w = rng.normal(0, 0.3, (32, 16))
    h = x.T @ x / len(x)
    step = np.full(16, 0.25)
    k_gptq = gptq_round(w, h, step)
    k_near = np.rint(w / step)
    assert np.array_equal(k_gptq, np.rint(k_gptq))  # integers on the same grid
    out_err = lambda k: np.mean((x @ (w - k * step)) ** 2)  # noqa: E731
    assert out_err(k_gptq) < 0.6 * out_err(k_near)
    np.testing.assert_array_equal(gptq_round(w, h, step), k_gptq)  # deterministic


def test_dead_inputs_get_zero_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8))
    x[:, [2, 5]] = 0.0
    k = gptq_round(rng.normal(size=(8, 4)), x.T @ x / 500, np.full(4, 0.1))
    assert np.all(k[[2, 5]] == 0)


def test_im2col_matches_onnx_conv():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    w = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)
    attrs = dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])
    proto = make_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    y = run(proto, {"x": x})[0]
    cols = im2col(x, {"kernel": (3, 2), "pads": (1, 0, 2, 1), "strides": (2, 1), "dilations": (1, 2)})
    got = (cols @ w.reshape(5, -1).T).reshape(2, y.shape[2], y.shape[3], 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_covariances_are_measured_per_weight(mlp_input):
    from .conftest import tiny_mlp

    model = ir.serde.deserialize_model(tiny_mlp())
    weights, _ = find_weights(model)
    x = mlp_input["x"]
    stats = input_covariances(model, weights, Split({"x": x}, None))
    view, h = stats["W1"]
    np.testing.assert_allclose(h, x.astype(np.float64).T @ x / len(x), rtol=1e-6)
    view2, h2 = stats["W2"]  # transB=1: stored [N, K], seen as [K, N]
    assert view2.transposed and h2.shape == (48, 48)
