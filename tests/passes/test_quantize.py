"""quantize: latents + Cast/Mul rebuild exactly k * step, per output channel along the right axis;
shared weights once; integer weights untouched; nothing to compress is an error."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxcomp.errors import NothingToCompressError, PipelineError
from onnxcomp.pass_base import CompileContext
from onnxcomp.passes.quantize.quantize import QuantizePass
from onnxcomp.coding import entropy_bits
from onnxcomp.passes.quantize.step_rule import RD_SLOPE, rd_round, step_for

from onnxcomp.graph.weights import find_weights

from ..conftest import compile_proto, make_model, run, tiny_cnn, tiny_mlp


def quantized(proto, **options):
    model = ir.serde.deserialize_model(proto)
    qp = QuantizePass(**options)
    qp.context = CompileContext(progress=False)
    qp(model)
    return ir.serde.serialize_model(model), qp.context


def init(proto, name):
    return onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def test_decoded_weight_is_latent_times_step(mlp_input):
    proto = tiny_mlp()
    out, _ = quantized(proto, bits=6, rdo=0.0)
    onnx.checker.check_model(out)
    k, step = init(out, "W1.latent"), init(out, "W1.step")
    # latents are held in the narrowest integer type that holds them until pack codes them
    assert k.dtype == np.int8 and step.shape == (1, 48)  # Gemm B [K, N]: channels on axis 1
    assert init(out, "W2.step").shape == (10, 1)  # transB=1: channels on axis 0
    w = init(proto, "W1")
    np.testing.assert_array_equal(k, np.rint(w.astype(np.float64) / step).astype(np.int32))
    # The graph computes exactly k * step in float32.
    y = run(out, mlp_input)[0]
    ref = tiny_mlp()
    for t in ref.graph.initializer:
        if t.name in ("W1", "W2", "b1", "b2"):
            latent, s = init(out, f"{t.name}.latent"), init(out, f"{t.name}.step")
            t.CopyFrom(onnx.numpy_helper.from_array(latent.astype(np.float32) * s, t.name))
    np.testing.assert_array_equal(y, run(ref, mlp_input)[0])


def test_step_rule_gives_the_requested_signal_to_noise():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (256, 512)).astype(np.float32) * rng.uniform(0.1, 3, (256, 1)).astype(np.float32)
    for bits in (5.0, 7.0):  # the high-rate approximation behind the rule holds from ~4 bits on
        step = step_for(w, (0,), bits)
        noise = np.rint(w / step) * step - w
        snr_db = 10 * np.log10((w**2).mean(axis=1) / (noise**2).mean(axis=1))
        assert abs(snr_db.mean() - 6.02 * bits) < 0.1
        np.testing.assert_allclose(snr_db, 6.02 * bits, atol=1.0)  # 512 samples per channel


def test_conv_channels_and_finer_bits_mean_smaller_error(cnn_input):
    proto = tiny_cnn()
    coarse, _ = quantized(proto, bits=3)
    fine, _ = quantized(proto, bits=8)
    assert init(fine, "conv.W.step").shape == (8, 1, 1, 1)
    ref = run(proto, cnn_input)[0]
    err = lambda m: float(np.abs(run(m, cnn_input)[0] - ref).max())  # noqa: E731
    assert err(fine) < err(coarse) / 4


def test_shared_weight_is_quantized_once():
    w = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], {"w": w})
    out, _ = quantized(proto)
    assert sum(n.op_type == "Cast" for n in out.graph.node) == 1
    assert [t.name for t in out.graph.initializer if t.name.startswith("w.latent")] == ["w.latent"]


def test_integer_weights_are_left_alone_and_reported():
    nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])],
                       {"w": np.ones((4, 4), np.uint8)})
    out, ctx = quantized(proto)  # an already quantized model: nothing for quantize, pack codes w exactly
    assert [t.name for t in out.graph.initializer] == ["w"] and any("coded exactly by pack" in n for n in ctx.log)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])], {"w": np.ones((4, 4), np.int32)})
    with pytest.raises(NothingToCompressError):
        quantized(proto)


def test_fp16_weights_decode_to_fp16():
    w = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float16)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])], {"w": w})
    out, _ = quantized(proto, bits=8)
    x = np.ones((2, 8), np.float16)
    y = run(out, {"x": x})[0]
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, run(proto, {"x": x})[0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("options", [{"bits": 0.0}, {"bits": 40.0}, {"bias_bits": -1.0}])
def test_out_of_range_options_are_rejected(options):
    with pytest.raises(PipelineError, match="quantize"):
        QuantizePass(**options)


def test_rd_rounding_trades_a_little_distortion_for_fewer_bits():
    rng = np.random.default_rng(0)
    x = rng.laplace(0, 2.0, 100_000)
    plain, rdo = rd_round(x, 1.0, 0.0), rd_round(x, 1.0, RD_SLOPE)
    np.testing.assert_array_equal(plain, np.rint(x))
    assert np.all(np.abs(rdo) <= np.abs(plain))  # only ever toward zero
    lagrangian = lambda k, lam: np.mean((x - k) ** 2) + lam * entropy_bits(k)  # noqa: E731
    assert lagrangian(rdo, RD_SLOPE) < lagrangian(plain, RD_SLOPE)  # what it optimizes
    assert entropy_bits(rdo) < entropy_bits(plain)
    stronger = rd_round(x, 1.0, 8 * RD_SLOPE)
    assert entropy_bits(stronger) < entropy_bits(rdo) - 0.2
    assert lagrangian(stronger, 8 * RD_SLOPE) < lagrangian(plain, 8 * RD_SLOPE)
    np.testing.assert_array_equal(rd_round(x, 1.0, RD_SLOPE), rdo)  # deterministic


def test_weights_reading_dead_inputs_go_to_zero():
    rng = np.random.default_rng(1)
    x = rng.laplace(0, 1.5, (200, 50))
    importance = np.ones((200, 1))
    importance[:40] = 0.0  # inputs 0..39 never fire: their weights cost bits and nothing else
    k = rd_round(x, importance, RD_SLOPE)
    assert np.all(k[:40] == 0)
    assert np.all(np.abs(k[40:] - np.rint(x[40:])) <= 1)


def test_bias_added_after_a_matmul_is_a_bias():
    """Exporters write Linear as MatMul + Add(bias): the bias is quantized with the bias bits."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                       {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)})
    out, ctx = quantized(proto, bits=6)
    assert {"w.latent", "b.latent"} <= {t.name for t in out.graph.initializer}
    assert ctx.tensor_notes["b"]["bits"] == 6 + 4
    x = rng.random((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(proto, {"x": x})[0], atol=0.05)


def test_weights_reached_through_data_movement_and_inside_if_bodies_are_found():
    """Exporters reorder LSTM gates with Slice + Concat and keep weights in If branches."""
    from onnx import numpy_helper

    from onnxcomp.graph.weights import find_weights

    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 6)).astype(np.float32)
    then_w = rng.normal(size=(6, 6)).astype(np.float32)
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["tw"], value=numpy_helper.from_array(then_w)),
         helper.make_node("MatMul", ["h", "tw"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 6])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 6])])
    nodes = [
        helper.make_node("Slice", ["w", "starts", "ends", "axes"], ["w_top"]),
        helper.make_node("Slice", ["w", "ends", "stops", "axes"], ["w_bottom"]),
        helper.make_node("Concat", ["w_bottom", "w_top"], ["w_reordered"], axis=0),
        helper.make_node("MatMul", ["x", "w_reordered"], ["h"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
    ]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                       {"w": w, "starts": np.array([0]), "ends": np.array([4]), "stops": np.array([8]), "axes": np.array([0])})
    from ..conftest import compile_proto

    model = ir.serde.deserialize_model(compile_proto(proto, "normalize"))
    weights = {x.name: x for x in find_weights(model)[0]}
    assert set(weights) == {"w", "tw"}
    assert weights["w"].channel_axes == ()  # reached through Slice/Concat: per tensor
    out = compile_proto(proto, "normalize,quantize{bits=10},pack")
    x = rng.random((5, 8)).astype(np.float32)
    import onnxcomp.runtime as rt

    for cond in (True, False):  # 10 bits: 60 dB per weight, so outputs agree to ~0.1%
        feeds = {"x": x, "cond": np.array(cond)}
        want = run(proto, feeds)[0]
        np.testing.assert_allclose(rt.InferenceSession(out).run(None, feeds)[0], want, atol=0.005 * np.abs(want).max())


def test_the_default_finds_steps_whose_probe_output_change_stays_within_int8_weights(tmp_path):
    from onnxcomp.compile import compress
    from onnxcomp.passes.quantize.probes import int8_like, probe_inputs

    onnx.save(tiny_mlp(), tmp_path / "mlp.onnx")
    report = compress(tmp_path / "mlp.onnx", tmp_path / "o.onnx", "ptq", progress=False, seed=0)
    search = report["search"]
    assert search["inputs"].startswith("probe inputs vs ") and search["samples"] == 8
    assert 0 < search["final_error"] <= search["budget"] and search["evaluations"] > 5
    # The budget is what int8's weights alone do to the outputs on the same probes (measured here apart).
    model = ir.serde.deserialize_model(compile_proto(tiny_mlp(), "normalize"))
    weights = find_weights(model)[0]
    probes = probe_inputs(model, seed=0)
    for w in weights:
        w.value.const_value = ir.tensor(int8_like(w), name=w.name)
    plain = compile_proto(tiny_mlp(), "normalize")
    ref = run(plain, probes.inputs)[0].astype(np.float64)
    got = run(ir.serde.serialize_model(model), probes.inputs)[0].astype(np.float64)
    per_output = np.sum((got - ref) ** 2, axis=0) / np.sum(ref**2, axis=0)  # per output channel
    weights_only = np.sqrt(per_output.mean())
    assert search["inputs"].endswith("int8 weights")
    assert search["budget"] == pytest.approx(weights_only, rel=1e-6)
    tiny = compress(tmp_path / "mlp.onnx", tmp_path / "r.onnx", "ptq-tiny", progress=False)
    assert report["bits_per_param"] > tiny["bits_per_param"]  # int8's change is smaller than the 4-bit rule's
    assert any(r.get("bits", 4.0) != 4.0 for r in report["tensors"])


def test_probe_inputs_follow_the_declared_types_and_token_ranges():
    from onnxcomp.passes.quantize.probes import probe_inputs
    from tests.test_graph_forms import text_encoder

    model = ir.serde.deserialize_model(text_encoder())
    probes = probe_inputs(model, seed=0)
    ids = probes.inputs["ids"]
    assert ids.dtype == np.int64 and ids.shape == (8, 16) and 0 <= ids.min() and ids.max() < 1000


def test_the_peak_grid_at_8_bits_is_int8s_own_symmetric_per_channel_grid():
    rng = np.random.default_rng(3)
    w = rng.laplace(0, 0.05, (16, 8, 3, 3)).astype(np.float32)
    step = step_for(w, (0,), 8.0, "peak")
    scale = np.abs(w).reshape(16, -1).max(axis=1) / 127
    np.testing.assert_allclose(step.reshape(-1), scale, rtol=1e-6)
    k = np.rint(w / step)
    assert np.abs(k).max() == 127 and (np.abs(k).reshape(16, -1).max(axis=1) == 127).all()
    np.testing.assert_allclose(step_for(w, (0,), 7.0, "peak"), 2 * step, rtol=1e-6)  # a bit less doubles it


def test_output_change_is_measured_per_channel_so_small_scores_beside_large_boxes_count():
    from onnxcomp.passes.quantize.probes import relative_change

    ref = np.zeros((2, 5, 100))
    ref[:, :4] = 300.0  # box coordinates in pixels
    ref[:, 4] = 0.5     # a class score
    moved = ref.copy()
    moved[:, 4] = 0.25  # every score halved: detections lost
    whole = np.linalg.norm(moved - ref) / np.linalg.norm(ref)
    assert whole < 1e-3  # a norm over the whole tensor would not see it
    assert relative_change([[ref]], [[moved]]) == pytest.approx(np.sqrt(0.25 / 5))
    # batches pool: the same data in two batches gives the same change
    assert relative_change([[ref[:1]], [ref[1:]]], [[moved[:1]], [moved[1:]]]) == pytest.approx(np.sqrt(0.25 / 5))


def test_probe_inputs_give_images_a_realistic_side_and_fixed_batches_several_samples():
    from onnxcomp.passes.quantize.probes import PROBE_SAMPLES, SYMBOLIC_SIDE, probe_inputs

    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    w = np.ones((4, 3, 3, 3), np.float32)
    image = make_model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    fixed = make_model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    assert probe_inputs(ir.serde.deserialize_model(image), 0).inputs["x"].shape == (PROBE_SAMPLES, 3, SYMBOLIC_SIDE, SYMBOLIC_SIDE)
    assert probe_inputs(ir.serde.deserialize_model(fixed), 0).inputs["x"].shape == (PROBE_SAMPLES, 3, 20, 20)


def test_with_calibration_data_the_default_measures_int8_weights_on_it(tmp_path):
    """Unlabeled real inputs (an int64 token-id .npz here): the yardstick is what int8's weights
    do on those inputs, and the file decodes to what was searched."""
    from onnxcomp.compile import compress
    import onnxcomp.runtime as rt
    from tests.test_graph_forms import text_encoder

    src, out, calib = tmp_path / "enc.onnx", tmp_path / "c.onnx", tmp_path / "calib.npz"
    onnx.save(text_encoder(), src)
    ids = np.random.default_rng(5).integers(0, 1000, (40, 16)).astype(np.int32)  # stored narrower than int64
    np.savez(calib, ids=ids)
    report = compress(src, out, "ptq", data=str(calib), progress=False)
    search = report["search"]
    assert search["inputs"] == "calibration inputs vs int8 weights" and search["method"] == "uniform"  # token ids
    assert search["samples"] == 32 and 0 < search["final_error"] <= search["budget"]
    feeds = {"ids": ids[:4].astype(np.int64)}
    (got,) = rt.InferenceSession(str(out)).run(None, feeds)
    (want,) = run(text_encoder(), feeds)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2 * search["budget"] + 0.01


def test_float_weights_of_a_statically_quantized_model_stay_exact_by_default(tmp_path):
    from onnxcomp.compile import compress
    import onnxcomp.runtime as rt

    rng = np.random.default_rng(2)
    inits = {"pos": rng.normal(0, 1, (16, 64)).astype(np.float32), "s": np.array(0.05, np.float32),
             "z": np.array(0, np.int8), "w": rng.normal(0, 0.1, (64, 8)).astype(np.float32)}
    nodes = [helper.make_node("Add", ["x", "pos"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"]),
             helper.make_node("MatMul", ["hd", "w"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 8])], inits)
    onnx.save(proto, tmp_path / "qdq.onnx")
    report = compress(tmp_path / "qdq.onnx", tmp_path / "c.onnx", "ptq", progress=False)
    assert any("already quantized (1 activation quantizers)" in line for line in report["notes"])
    feeds = {"x": rng.normal(0, 1, (16, 64)).astype(np.float32)}
    np.testing.assert_array_equal(rt.InferenceSession(str(tmp_path / "c.onnx")).run(None, feeds)[0], run(proto, feeds)[0])
    # EPR distilling it would move what ptq keeps exact: refused by default, named.
    from onnxcomp.errors import NothingToCompressError

    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (80, 64)).astype(np.float32))
    with pytest.raises(NothingToCompressError, match=r"already quantized .*ptq keeps exact.*start=ptq"):
        compress(tmp_path / "qdq.onnx", tmp_path / "e.onnx", "epr", data=str(tmp_path / "calib.npz"), progress=False)
    quantized = compress(tmp_path / "qdq.onnx", tmp_path / "q.onnx", "normalize,quantize{bits=6},pack", progress=False)
    assert quantized["payload_bytes"] < report["payload_bytes"]  # asked for: quantized


def test_the_feature_axis_is_the_short_one_of_axis_1_and_the_last():
    from onnxcomp.passes.quantize.probes import feature_axis

    assert feature_axis((1, 84, 8400)) == 1       # YOLOv8: [N, 4 + classes, anchors]
    assert feature_axis((1, 3549, 6)) == 2        # YOLOX: [N, anchors, 4 + 1 + classes]
    assert feature_axis((1, 60, 18710)) == 1      # CTC: [N, T, classes], per time step
    assert feature_axis((8, 384)) == 1 and feature_axis((8,)) is None


# ---- the native quantizer (runtime/csrc/quantize.cc) is numpy's arithmetic, bit for bit ----

def _numpy_quantize(w: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_array's numpy path with plain rounding (what it computes without the library)."""
    from onnxcomp.passes.quantize.step_rule import dequantize

    k = np.clip(np.rint(w.astype(np.float64) / step.astype(np.float64)), -(2**31 - 1), 2**31 - 1)
    with np.errstate(invalid="ignore"):
        k = k.astype(np.int32)
    return k, dequantize(k, step, w.dtype)


@pytest.mark.parametrize("shape, axes", [((64, 300), (0,)), ((300, 64), (1,)), ((8, 4, 3, 3), (0,)),
                                         ((1001,), ()), ((5, 7, 9), (1,)), ((3, 2, 5), (2,))])
@pytest.mark.parametrize("bits", [8.0, 3.0, 0.5, 20.0])
def test_the_native_quantizer_gives_numpys_latents_and_floats_exactly(shape, axes, bits):
    from onnxcomp.runtime import native

    if not native.available():
        pytest.skip("native library not built")
    rng = np.random.default_rng(len(shape) + int(bits))
    w = rng.standard_normal(shape).astype(np.float32)
    # ties (round half to even), values clipped at +-(2**31 - 1), NaN, infinities, signed zero
    specials = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1e30, -1e30, np.nan, 0.0, -0.0, 3.5, 1e9, -1e9,
                           np.inf, -np.inf, 1e-30, 7.0])
    w.reshape(-1)[:specials.size] = specials
    for step in (step_for(w, axes, bits, "peak"), np.full((1,) * w.ndim, 0.5, np.float32), np.float32(1.0)):
        step = np.asarray(step, np.float32)
        with np.errstate(all="ignore"):
            want_k, want_deq = _numpy_quantize(w, step)
            got = native.quantize_nearest(w, step)
        assert got is not None
        k, deq, lo, hi = got
        np.testing.assert_array_equal(k, want_k)
        assert deq.tobytes() == want_deq.tobytes()
        assert (lo, hi) == (int(want_k.min()), int(want_k.max()))


def test_layouts_the_kernel_does_not_tile_and_other_types_are_left_to_numpy():
    from onnxcomp.runtime import native

    w = np.ones((4, 6), np.float32)
    assert native.quantize_nearest(w, np.ones((4, 6), np.float32)) is None  # a step per element
    assert native.quantize_nearest(w.astype(np.float16), np.ones((4, 1), np.float32)) is None
    # quantize_array gives the same answer either way
    from onnxcomp.passes.quantize.step_rule import quantize_array

    step = np.full((4, 6), 0.25, np.float32)
    k, deq = quantize_array(w, step)
    np.testing.assert_array_equal(k, np.full((4, 6), 4, np.int32))
    np.testing.assert_array_equal(deq, w)


def test_integer_histograms_count_what_sorting_counts():
    from onnxcomp.coding import HISTOGRAM_MAX_BINS, entropy_bits, integer_histogram, value_stats

    rng = np.random.default_rng(3)
    for values in (rng.integers(-300, 300, 10_000).astype(np.int32), rng.integers(0, 9, 999).astype(np.int8),
                   np.array([-(2**31), 2**31 - 1], np.int64), rng.integers(-5, 5, (7, 11)).astype(np.int64)):
        uniq, counts = np.unique(values, return_counts=True)
        p = counts / values.size
        assert value_stats(values) == (uniq.size, pytest.approx(float(-(p * np.log2(p)).sum())))
        assert entropy_bits(values) == pytest.approx(float(-(p * np.log2(p)).sum()))
        hist = integer_histogram(values)
        if int(values.max()) - int(values.min()) + 1 > HISTOGRAM_MAX_BINS:
            assert hist is None  # too wide to count by bins: sorted instead
        else:
            lo, bins = hist
            assert lo == values.min() and bins.sum() == values.size
            np.testing.assert_array_equal(np.flatnonzero(bins) + lo, uniq)
            np.testing.assert_array_equal(bins[bins > 0], counts)
