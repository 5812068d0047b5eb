"""Graph forms real exports bring, each compressed, run and decompressed: 0-d constants (scalar
Gather indices in shape arithmetic), empty float tensors (a Resize ``roi`` of shape [0]), weights
inside If bodies. Every path (decode at load, ``decompress``) must give valid ONNX whose outputs
equal each other's bit for bit."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import onnxcomp.runtime as rt
from onnxcomp.compile import compress
from onnxcomp.decompress import decompress
from onnxcomp.inspection import inspect_model
from tests.conftest import make_model


def scalar_index_model() -> onnx.ModelProto:
    """y = Reshape(x @ W, [N, 2, 16]) with N from Shape(x)[0]: a 0-d Gather index and a 1-element
    Concat the exporters write for dynamic batch reshapes; plus an empty Resize roi."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(0, 0.1, (24, 32)).astype(np.float32),
             "zero": np.array(0, np.int64),                 # 0-d: Gather index
             "rest": np.array([2, 16], np.int64),
             "roi": np.zeros(0, np.float32),                # empty float tensor
             "scales": np.array([1.0, 1.0, 2.0], np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),   # 0-d output
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Resize", ["r", "roi", "scales"], ["y"], mode="nearest")]
    inits["axes"] = np.array([0], np.int64)
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 32])], inits)


def plain_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_zero_d_constants_and_empty_tensors_survive_every_path(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(scalar_index_model(), src)
    out = tmp_path / "c.onnx"
    report = compress(src, out, "ptq", progress=False)
    assert {r["name"] for r in report["tensors"]} >= {"W"}
    feeds = {"x": np.random.default_rng(1).random((3, 24)).astype(np.float32)}
    (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    onnx.checker.check_model(onnx.load(plain))
    scalars = {t.name: list(t.dims) for t in onnx.load(plain).graph.initializer}
    assert scalars["zero"] == [] and scalars["roi"] == [0]
    (decompressed,) = plain_run(plain, feeds)
    np.testing.assert_array_equal(decompressed, loaded)
    assert loaded.shape == (3, 2, 32)


def if_body_model() -> onnx.ModelProto:
    """Weights in Constant nodes inside both branches of an If, as silero-vad's export has them."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)

    def branch(name):
        w = rng.normal(0, 0.1, (24, 16)).astype(np.float32)
        const = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(w))
        mm = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])
        return helper.make_graph([const, mm], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 16])])

    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24]),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], {})


def test_inspect_and_compress_count_the_same_weights_inside_if_bodies(tmp_path):
    src = tmp_path / "if.onnx"
    onnx.save(if_body_model(), src)
    info = inspect_model(src)
    out = tmp_path / "c.onnx"
    report = compress(src, out, "ptq", progress=False)
    assert info["payload_bytes"] == report["original_payload_bytes"] == 2 * 24 * 16 * 4
    assert {t["name"] for t in info["plain_tensors"]} == {"then_w", "else_w"}
    feeds = {"x": np.random.default_rng(1).random((3, 24)).astype(np.float32)}
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    for cond in (True, False):
        feeds["cond"] = np.array(cond)
        (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
        np.testing.assert_array_equal(plain_run(plain, feeds)[0], loaded)


def quantized_model() -> onnx.ModelProto:
    """What onnxruntime's quantizers write: an int8 QDQ weight (DequantizeLinear -> MatMul) and a
    uint8 MatMulInteger weight, plus a float Gemm weight left unquantized."""
    rng = np.random.default_rng(0)
    inits = {"wq": np.clip(np.round(rng.laplace(0, 12, (64, 48))), -127, 127).astype(np.int8),
             "wq_scale": np.array(0.01, np.float32), "wq_zero": np.array(0, np.int8),
             "wi": np.clip(np.round(rng.normal(128, 6, (48, 256))), 0, 255).astype(np.uint8),
             "wi_zero": np.array(128, np.uint8),
             "wf": rng.normal(0, 0.1, (256, 16)).astype(np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "wq_scale", "wq_zero"], ["w1"]),
             helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("DynamicQuantizeLinear", ["h"], ["hq", "h_scale", "h_zero"]),
             helper.make_node("MatMulInteger", ["hq", "wi", "h_zero", "wi_zero"], ["hi"]),
             helper.make_node("Cast", ["hi"], ["hf"], to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["hf", "wf"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)


def test_integer_weights_of_quantized_models_are_coded_exactly(tmp_path):
    src = tmp_path / "q.onnx"
    onnx.save(quantized_model(), src)
    feeds = {"x": np.random.default_rng(1).random((5, 64)).astype(np.float32)}
    (reference,) = plain_run(src, feeds)
    for preset in ("ptq", "lossless"):
        out = tmp_path / f"{preset}.onnx"
        report = compress(src, out, preset, progress=False)
        codecs = {r["name"]: r["codec"] for r in report["tensors"]}
        packed = onnx.load(out)
        decoded = {n.output[0] for n in packed.graph.node if n.domain == "ai.onnxcomp"}
        assert {"wq.decoded", "wi.decoded"} <= decoded, decoded
        (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
        plain = tmp_path / f"{preset}.plain.onnx"
        decompress(out, plain)
        (decompressed,) = plain_run(plain, feeds)
        np.testing.assert_array_equal(decompressed, loaded)
        if preset == "lossless":  # every weight exact: the outputs are the original's, bit for bit
            np.testing.assert_array_equal(loaded, reference)
            assert os.path.getsize(out) < os.path.getsize(src)
        else:  # already int8: int8 is no yardstick, so the float Gemm weight stays exact
            assert codecs.get("wf") == "float32"
            np.testing.assert_array_equal(loaded, reference)
    asked = compress(src, tmp_path / "q.onnx", "normalize,quantize{bits=6},pack", progress=False)
    assert {r["name"]: r["codec"] for r in asked["tensors"]}["wf"] in ("ans", "raw-int8")  # unless asked


def cnn_with_batchnorm() -> onnx.ModelProto:
    """Conv + BatchNorm (which lossless must not fold: folding changes float arithmetic) + a
    float32 MatMul weight large enough to gain from exact coding, and a float16 one."""
    rng = np.random.default_rng(0)
    inits = {"conv.W": rng.normal(0, 0.2, (8, 1, 3, 3)).astype(np.float32),
             "bn.scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.B": rng.normal(0, 0.1, 8).astype(np.float32),
             "bn.mean": rng.normal(0, 0.1, 8).astype(np.float32), "bn.var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
             "fc.W": rng.normal(0, 0.05, (8 * 8 * 8, 64)).astype(np.float32),
             "fc2.W": rng.normal(0, 0.1, (64, 128)).astype(np.float16)}
    nodes = [helper.make_node("Conv", ["x", "conv.W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "fc.W"], ["h"]),
             helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["h16", "fc2.W"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 128])], inits)


def test_lossless_codes_floats_exactly_and_every_path_agrees(tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(cnn_with_batchnorm(), src)
    out = tmp_path / "l.onnx"
    report = compress(src, out, "lossless", progress=False)
    codecs = {r["name"]: r["codec"] for r in report["tensors"]}
    assert codecs["fc.W"] == codecs["fc2.W"] == "exact-float" and codecs["bn.scale"] == "float32"
    assert {o.domain: o.version for o in onnx.load(out).opset_import}["ai.onnxcomp"] == 3
    feeds = {"x": np.random.default_rng(1).random((4, 1, 8, 8)).astype(np.float32)}
    (reference,) = plain_run(src, feeds)
    (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
    np.testing.assert_array_equal(loaded, reference)
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    original = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
    restored = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(plain).graph.initializer}
    assert restored.keys() == original.keys()
    for name, array in original.items():
        assert restored[name].dtype == array.dtype and restored[name].tobytes() == array.tobytes(), name
    # The custom op serves float32 outputs; a file with a float16 BytePlaneDecode decodes at load.
    out32 = tmp_path / "l32.onnx"
    src32 = tmp_path / "cnn32.onnx"
    model32 = cnn_with_batchnorm()
    del model32.graph.node[-2:]
    model32.graph.output[0].CopyFrom(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 64]))
    del model32.graph.initializer[-1]
    onnx.save(model32, src32)
    compress(src32, out32, "lossless", progress=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rt.register(options)
    out, src = out32, src32
    (custom,) = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    no_opt = ort.SessionOptions()
    no_opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # onnxruntime pre-packs constant MatMul weights (another summation order) but never a custom
    # op's output: compare with pre-packing off
    no_opt.add_session_config_entry("session.disable_prepacking", "1")
    np.testing.assert_array_equal(custom, ort.InferenceSession(str(src), no_opt, providers=["CPUExecutionProvider"]).run(None, feeds)[0])


def text_encoder() -> onnx.ModelProto:
    """Token embedding read by Gather, a positional embedding added as data, one projection: the
    tables of a transformer text encoder."""
    rng = np.random.default_rng(0)
    inits = {"tok": rng.normal(0, 0.5, (1000, 256)).astype(np.float32),
             "pos": rng.normal(0, 0.1, (1, 16, 256)).astype(np.float32),
             "proj": rng.normal(0, 0.1, (256, 32)).astype(np.float32),
             "mean_axes": np.array([1], np.int64)}
    nodes = [helper.make_node("Gather", ["tok", "ids"], ["e"], axis=0),
             helper.make_node("Add", ["e", "pos"], ["h"]),
             helper.make_node("MatMul", ["h", "proj"], ["p"]),
             helper.make_node("ReduceMean", ["p", "mean_axes"], ["y"], keepdims=0)]
    return make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits, opset=18)


def test_embedding_tables_and_large_data_tensors_are_weights(tmp_path):
    src = tmp_path / "enc.onnx"
    onnx.save(text_encoder(), src)
    out = tmp_path / "c.onnx"
    report = compress(src, out, "ptq", progress=False)
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["tok"]["codec"] == "ans" and rows["pos"]["codec"] in ("ans", "raw-int8")  # quantized, not float
    assert [t.name for t in onnx.load(out).graph.initializer if t.name == "mean_axes"] == ["mean_axes"]  # axes untouched
    steps = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer if t.name.endswith(".step")}
    assert steps["tok.step"] == [1000, 1] and steps["pos.step"] == []  # per row of the table; per tensor
    assert report["payload_bytes"] < 0.25 * report["original_payload_bytes"]  # below int8's 8 bits a value
    feeds = {"ids": np.random.default_rng(1).integers(0, 1000, (8, 16)).astype(np.int64)}
    (reference,) = plain_run(src, feeds)
    (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
    cosine = (reference * loaded).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(loaded, axis=1)
    assert cosine.min() > 0.99
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    np.testing.assert_array_equal(plain_run(plain, feeds)[0], loaded)


def test_dynamic_quantize_lstm_integer_weights_are_coded_exactly(tmp_path):
    """onnxruntime's quantize_dynamic turns an LSTM into com.microsoft DynamicQuantizeLSTM with
    int8 W and R (ddddocr's OCR model has one): lossless codes them, the outputs stay bit-exact."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    hidden, features = 64, 32
    inits = {"W": rng.normal(0, 0.3, (1, 4 * hidden, features)).astype(np.float32),
             "R": rng.normal(0, 0.3, (1, 4 * hidden, hidden)).astype(np.float32)}
    lstm = make_model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden)],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, features])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, hidden])], inits)
    onnx.save(lstm, tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    src = tmp_path / "q.onnx"
    assert [n.op_type for n in onnx.load(src).graph.node] == ["DynamicQuantizeLSTM"]
    out = tmp_path / "c.onnx"
    compress(src, out, "lossless", progress=False)
    decoded = {n.output[0] for n in onnx.load(out).graph.node if n.domain == "ai.onnxcomp"}
    assert {"W_quantized.decoded", "R_quantized.decoded"} <= decoded, decoded
    feeds = {"x": rng.normal(0, 1, (5, 1, features)).astype(np.float32)}
    np.testing.assert_array_equal(rt.InferenceSession(str(out)).run(None, feeds)[0], plain_run(src, feeds)[0])
    assert os.path.getsize(out) < os.path.getsize(src)


def test_bfloat16_weights_decode_to_bfloat16_on_every_path(tmp_path):
    """A bfloat16 weight read through Cast (how bf16 checkpoints export): quantized to int8's
    accuracy, decoded in float32 and cast back (no CPU kernel multiplies bfloat16); decompress
    gives it back as bfloat16 and decode at load computes the same bits."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (64, 48)).astype(np.float32)
    bf16 = helper.make_tensor("w", TensorProto.BFLOAT16, [64, 48], (w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "wf"], ["y"])], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])], [bf16])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    src = tmp_path / "bf16.onnx"
    onnx.save(proto, src)
    feeds = {"x": rng.normal(0, 1, (4, 64)).astype(np.float32)}
    (reference,) = plain_run(src, feeds)
    for preset in ("ptq", "lossless"):
        out, flat = tmp_path / f"{preset}.onnx", tmp_path / f"{preset}.plain.onnx"
        compress(src, out, preset, progress=False)
        (loaded,) = rt.InferenceSession(str(out)).run(None, feeds)
        decompress(out, flat)
        stored = {t.name: t.data_type for t in onnx.load(flat).graph.initializer}
        assert stored == {"w": TensorProto.BFLOAT16}, stored
        np.testing.assert_array_equal(plain_run(flat, feeds)[0], loaded)
        if preset == "lossless":
            np.testing.assert_array_equal(loaded, reference)
        else:
            assert np.linalg.norm(loaded - reference) / np.linalg.norm(reference) < 0.02
