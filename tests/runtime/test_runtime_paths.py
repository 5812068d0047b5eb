"""The three ways to run a compressed model give the same numbers.

- decode at load (onnxcomp.runtime.InferenceSession) equals the decompressed standard model
  bit for bit, and equals `decompress`'s folded float model bit for bit;
- the custom op (onnxruntime-extensions) equals them bit for bit with graph optimizations off on
  both sides; with them on, onnxruntime pre-packs constant weights (decode at load) but not
  custom-op outputs, and float summation order may differ in the last bits.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp.runtime as rt
from onnxcomp.decompress import decompress
from onnxcomp.errors import FormatError, ModelLoadError

from onnxcomp.model_io import serialize

from ..conftest import compile_bytes, compile_proto, run, tiny_cnn, tiny_mlp


@pytest.fixture(params=["mlp", "cnn"])
def case(request, mlp_input, cnn_input):
    proto = tiny_mlp() if request.param == "mlp" else tiny_cnn()
    feeds = mlp_input if request.param == "mlp" else cnn_input
    return compile_bytes(proto), feeds


def no_opt():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def test_decode_at_load_equals_decoded_standard_model(case):
    packed, feeds = case
    assert b"ai.onnxcomp" in packed
    decoded = rt.decode_model(packed)
    assert b"ai.onnxcomp" not in decoded
    onnx.checker.check_model(onnx.load_from_string(decoded))
    want = run(decoded, feeds)
    got = rt.InferenceSession(packed).run(None, feeds)
    np.testing.assert_array_equal(got[0], want[0])


def test_custom_op_equals_decoded_model(case):
    packed, feeds = case
    so = no_opt()
    rt.register(so)
    custom = ort.InferenceSession(packed, so, providers=["CPUExecutionProvider"])
    first = custom.run(None, feeds)[0]
    second = custom.run(None, feeds)[0]  # served from the per-node cache
    want = run(rt.decode_model(packed), feeds, no_opt())[0]
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    so = ort.SessionOptions()
    rt.register(so)
    optimized = ort.InferenceSession(packed, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(optimized, rt.InferenceSession(packed).run(None, feeds)[0], rtol=1e-5, atol=1e-5)


def test_decompress_folds_to_float_weights_with_identical_outputs(case, tmp_path):
    packed, feeds = case
    src = tmp_path / "m.onnx"
    src.write_bytes(packed)
    decompress(src, tmp_path / "plain.onnx")
    plain = onnx.load(tmp_path / "plain.onnx")
    assert {n.op_type for n in plain.graph.node}.isdisjoint({"Cast", "EntropyDecode"})
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in plain.graph.initializer)
    np.testing.assert_array_equal(run(plain, feeds)[0], rt.InferenceSession(packed).run(None, feeds)[0])


def test_plain_model_passes_through_unchanged():
    data = tiny_mlp().SerializeToString()
    assert rt.decode_model(data) == data


def test_tampered_file_fails_with_the_node_named(case, tmp_path):
    packed, _ = case
    model = onnx.load_from_string(packed)
    bitstream = next(t for t in model.graph.initializer if t.name.endswith(".bitstream"))
    raw = bytearray(bitstream.raw_data)
    raw[len(raw) // 2] ^= 0x10
    bitstream.raw_data = bytes(raw)
    with pytest.raises(FormatError, match=bitstream.name.replace(".bitstream", "").split(".")[0]):
        rt.InferenceSession(serialize(model))


def test_not_onnx_and_truncated_bytes(case, tmp_path):
    packed, _ = case
    with pytest.raises(ModelLoadError):
        rt.decode_model(b"\xff\xff\xff\xff not a model")
    with pytest.raises(ModelLoadError):
        rt.decode_model(packed[: len(packed) // 2])
    with pytest.raises(ModelLoadError, match="no such file"):
        rt.InferenceSession(tmp_path / "missing.onnx")


def test_runtime_needs_neither_onnx_nor_the_compiler(case, tmp_path):
    """Deploy-only: import the runtime with onnx, onnx_ir and the passes made unimportable."""
    packed, feeds = case
    path = tmp_path / "m.onnx"
    path.write_bytes(packed)
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "want.npy", rt.InferenceSession(packed).run(None, feeds)[0])
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('onnx', 'onnx_ir', 'scipy', 'torch') or name.startswith('onnxcomp.passes'):
                    raise ImportError('blocked for this test: ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import onnxcomp.runtime as rt
        sess = rt.InferenceSession({str(path)!r})
        got = sess.run(None, {{'x': np.load({str(tmp_path / 'x.npy')!r})}})[0]
        assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}))
        assert not any(m.split('.')[0] in ('onnx', 'onnx_ir') for m in sys.modules)
        print('deploy-only ok')
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "deploy-only ok" in out.stdout


@pytest.fixture
def multi_stream(mlp_input):
    """W1 (64x48) coded as several row-block streams joined by Concat."""
    return compile_bytes(tiny_mlp(), "normalize,quantize{grid=rms bits=4},pack{stream_symbols=1024}"), mlp_input


def test_large_tensors_are_split_into_streams_and_decode_the_same(multi_stream, monkeypatch):
    packed, feeds = multi_stream
    model = onnx.load_from_string(packed)
    assert sum(n.op_type == "EntropyDecode" for n in model.graph.node) >= 3
    assert any(n.op_type == "Concat" for n in model.graph.node)
    want = run(rt.decode_model(packed), feeds)[0]
    import onnxcomp.runtime.load as load

    for workers in ("1", "2"):
        monkeypatch.setenv("ONNXCOMP_DECODE_WORKERS", workers)
        monkeypatch.setattr(load, "PARALLEL_MIN_SYMBOLS", 0)  # use processes even for a tiny model
        np.testing.assert_array_equal(rt.InferenceSession(packed).run(None, feeds)[0], want)
    so = no_opt()
    rt.register(so)
    custom = ort.InferenceSession(packed, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(custom, run(rt.decode_model(packed), feeds, no_opt())[0])


def test_an_error_in_a_decode_worker_reaches_the_caller(multi_stream, monkeypatch):
    packed, _ = multi_stream
    model = onnx.load_from_string(packed)
    victims = [t for t in model.graph.initializer if t.name.endswith(".bitstream")]
    raw = bytearray(victims[-1].raw_data)
    raw[len(raw) // 2] ^= 0x08
    victims[-1].raw_data = bytes(raw)
    import onnxcomp.runtime.load as load

    monkeypatch.setenv("ONNXCOMP_DECODE_WORKERS", "2")
    monkeypatch.setattr(load, "PARALLEL_MIN_SYMBOLS", 0)
    with pytest.raises(FormatError, match="CRC|corrupt|left"):
        rt.InferenceSession(serialize(model))


def test_decode_at_load_folds_raw_latents_read_through_cast_and_mul_like_coded_ones(case):
    # pack stores small latents (biases) raw; their Cast -> Mul decode chains are folded at load
    # like the coded tensors' (the decoded graph is the original's shape), with the same floats.
    packed, feeds = case
    from onnxcomp.runtime.load import decode_to_arrays

    graph, arrays = decode_to_arrays(packed)
    model = onnx.load_from_string(graph)
    raw = [t.name for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT16)]
    assert not raw and not [n for n in model.graph.node if n.op_type in ("Cast", "Mul")]
    weights = {i.name for i in onnx.load_from_string(packed).graph.initializer if i.name.endswith(".latent")}
    assert {name.removesuffix(".latent") for name in weights} <= set(arrays)  # coded and raw latents alike
    want = run(rt.decode_model(packed), feeds, no_opt())  # the decode graph computed by onnxruntime
    np.testing.assert_array_equal(rt.InferenceSession(packed, no_opt()).run(None, feeds)[0], want[0])
