"""The native ai.onnxcomp library (runtime/csrc/): the same bytes as the Python decoders on every
golden stream, random tensors and the fuzz corpus's valid files; FORMAT.md's refusals made by its
own checks (not only by the Python checks in front of it); inside onnxruntime, one decode per node
per session, outputs equal to the Python op's, and a bad node refused with a typed error naming it
(never an abort). The deploy-venv test runs the library under the newest plain onnxruntime too."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

import onnxcomp.runtime as rt
from onnxcomp.coding import encode_floats, encode_tensor
from onnxcomp.errors import FormatError
from onnxcomp.runtime import format as fmt
from onnxcomp.runtime import native
from onnxcomp.runtime.byteplane_decode import NUMPY_TYPES, plan_byte_plane_decode
from onnxcomp.runtime.entropy_decode import DecodePlan, iter_values, plan_decode
from onnxcomp.runtime.load import _narrowest

from ..conftest import compile_bytes, tiny_mlp
from . import test_byteplane_decode as bp_golden
from . import test_entropy_decode as ed_golden

ROOT = Path(__file__).resolve().parents[2]

if not native.available():
    if shutil.which("c++") or shutil.which("g++"):
        pytest.fail("a C++ compiler exists but the native library is not built: pip install -e . builds it",
                    pytrace=False)
    pytest.skip("no C++ compiler: the native library cannot be built here", allow_module_level=True)


def python_values(plan: DecodePlan) -> np.ndarray:
    """constriction's decode of a plan, whatever the native library would do."""
    return np.concatenate([c.copy() for c in iter_values(plan)] or [np.zeros(0, np.int32)])


def native_values(plan: DecodePlan, dtype=np.int32) -> np.ndarray:
    out = np.empty(plan.count, dtype)
    native.entropy_decode_into(plan, out)
    return out


def plan_of(enc) -> DecodePlan:
    return plan_decode(enc.bitstream, enc.frequencies, np.int32(enc.offset), np.array(enc.shape, np.int64),
                       crc32=enc.crc32)


def test_golden_streams_decode_to_the_same_values():
    stream = np.frombuffer(bytes.fromhex(ed_golden.GOLDEN_HEX), np.uint8)
    table = np.array([1398102, 2796202, 8388606, 1398102, 1398102, 1398102], np.int32)
    plan = plan_decode(stream, table, np.int32(-2), np.array([3, 4], np.int64), crc32=ed_golden.GOLDEN_CRC)
    assert native_values(plan).tolist() == ed_golden.GOLDEN_VALUES.reshape(-1).tolist() == python_values(plan).tolist()

    enc = encode_floats(bp_golden.GOLDEN)
    assert enc.bitstream.tobytes().hex() == bp_golden.GOLDEN_HEX
    plan = plan_byte_plane_decode([enc.bitstream, enc.stream_bytes, enc.frequencies, np.array(enc.shape, np.int64)],
                                  {"format_version": 1, "to": enc.to, "crc32": bp_golden.GOLDEN_CRC}, "golden")
    out = np.empty(plan.count, NUMPY_TYPES[enc.to])
    native.byte_plane_decode_into(plan, out)
    assert out.tobytes() == bp_golden.GOLDEN.tobytes()


int_tensors = st.sampled_from([np.int8, np.int16, np.int32]).flatmap(
    lambda dt: hnp.arrays(dtype=dt, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
                          elements=st.integers(max(-3000, np.iinfo(dt).min), min(3000, np.iinfo(dt).max))))


@settings(max_examples=150, deadline=None)
@given(int_tensors)
def test_random_tensors_decode_to_the_same_bytes_as_constriction(values):
    plan = plan_of(encode_tensor(values))
    want = python_values(plan)
    assert native_values(plan).tobytes() == want.tobytes()
    narrow = _narrowest(*plan.value_range)  # what decode at load writes for a tensor read only by Casts
    assert native_values(plan, narrow).tobytes() == want.astype(narrow).tobytes()


@settings(max_examples=80, deadline=None)
@given(int_tensors, st.floats(0.0009765625, 8, width=32), st.integers(-1, 2))
def test_the_folded_scale_rounds_as_onnxruntime_cast_then_mul(values, scale, axis):
    # axis -1: one scalar step; else one step per index of that axis (rows, columns, ...)
    plan = plan_of(encode_tensor(values))
    if axis < 0 or axis >= values.ndim:
        step = np.array([scale], np.float32)
    else:
        dims = [1] * values.ndim
        dims[axis] = values.shape[axis]
        step = (np.float32(scale) * (1 + np.arange(values.shape[axis], dtype=np.float32))).reshape(dims)
    stride = native.step_layout(step, values.shape)
    assert stride is not None
    out = np.empty(plan.count, np.float32)
    native.entropy_decode_into(plan, out, step, stride)
    want = (values.astype(np.float32) * step).astype(np.float32)
    assert out.tobytes() == want.reshape(-1).tobytes()


def test_steps_varying_along_two_axes_are_left_to_numpy():
    assert native.step_layout(np.ones((3, 4), np.float32), (3, 4)) is None
    assert native.step_layout(np.ones((1, 4), np.float32), (3, 4)) == 1
    assert native.step_layout(np.ones((3, 1, 1), np.float32), (3, 5, 2)) == 10


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float16]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=30),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=16)))
def test_exact_floats_decode_to_the_same_bytes(values):
    enc = encode_floats(values)
    plan = plan_byte_plane_decode([enc.bitstream, enc.stream_bytes, enc.frequencies, np.array(enc.shape, np.int64)],
                                  {"format_version": 1, "to": enc.to, "crc32": enc.crc32}, "t")
    out = np.empty(plan.count, values.dtype)
    native.byte_plane_decode_into(plan, out)
    assert out.tobytes() == values.tobytes()


@pytest.fixture
def plan():
    return plan_of(encode_tensor(np.rint(np.random.default_rng(1).normal(0, 4, (64, 32))).astype(np.int32)))


def table(values) -> np.ndarray:
    return np.asarray(values, np.int64)


@pytest.mark.parametrize("edit, message", [
    (lambda p: dict(frequencies=p.frequencies + table([1] + [0] * (p.frequencies.size - 1))), "sum to exactly"),
    (lambda p: dict(frequencies=table([1 << 24])), "need 2"),
    (lambda p: dict(frequencies=np.concatenate([table([0]), p.frequencies[1:], table([p.frequencies[0]])])), "entry < 1"),
    (lambda p: dict(words=np.concatenate([p.words, np.zeros(1, np.uint32)])), "zero word"),
    (lambda p: dict(shape=(10_000, 10_000)), "more than a"),
    (lambda p: dict(shape=(64, 31)), "data left"),
    (lambda p: dict(crc32=p.crc32 ^ 1), "CRC mismatch"),
    (lambda p: dict(offset=np.iinfo(np.int32).max), "outside int32"),
    (lambda p: dict(words=p.words[:-1]), "data left|CRC|zero word|more than"),
])
def test_the_native_decoder_refuses_by_its_own_checks(plan, edit, message):
    # Plans built past plan_decode's checks: what the kernels inside onnxruntime meet.
    bad = dataclasses.replace(plan, **edit(plan))
    with pytest.raises(FormatError, match=message):
        native_values(bad)


def test_exact_float_planes_are_checked_natively():
    enc = encode_floats(np.random.default_rng(0).normal(0, 0.05, (64, 32)).astype(np.float32))
    plan = plan_byte_plane_decode([enc.bitstream, enc.stream_bytes, enc.frequencies, np.array(enc.shape, np.int64)],
                                  {"format_version": 1, "to": enc.to, "crc32": enc.crc32}, "t")
    out = np.empty(plan.count, np.float32)
    with pytest.raises(FormatError, match="CRC"):
        native.byte_plane_decode_into(dataclasses.replace(plan, crc32=plan.crc32 ^ 1), out)
    swapped = dataclasses.replace(plan, planes=(plan.planes[1], plan.planes[0]) + plan.planes[2:])
    with pytest.raises(FormatError):
        native.byte_plane_decode_into(swapped, out)


# ---- inside onnxruntime ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed() -> bytes:
    return compile_bytes(tiny_mlp())


@pytest.fixture(scope="module")
def seeds():
    sys.path.insert(0, str(ROOT / "bench"))
    import fuzz

    return fuzz.build_seeds()


def custom_nodes(data: bytes) -> int:
    return sum(n.domain == fmt.DOMAIN for n in onnx.load_from_string(data).graph.node)


def test_the_fuzz_corpus_decodes_to_the_same_bytes_and_outputs_on_every_path(seeds, monkeypatch):
    for seed in seeds:
        decoded = rt.decode_model(seed.data)
        with monkeypatch.context() as m:
            m.setenv(native.DISABLE_ENV, "0")
            assert not native.available()
            assert rt.decode_model(seed.data) == decoded, seed.name
        before = native.kernel_decodes()
        session = rt.CustomOpSession(seed.data, op="native")
        assert native.kernel_decodes() - before == custom_nodes(seed.data), seed.name  # all at creation
        got = [session.run(None, seed.feeds) for _ in range(2)]
        assert native.kernel_decodes() - before == custom_nodes(seed.data), seed.name  # none in Runs
        want = rt.CustomOpSession(seed.data, op="python").run(None, seed.feeds)
        for run in got:
            assert all(a.tobytes() == b.tobytes() for a, b in zip(run, want)), seed.name


def corrupt_stream(data: bytes) -> bytes:
    from onnxcomp.model_io import serialize

    model = onnx.load_from_string(data)
    stream = next(t for t in model.graph.initializer if t.name.endswith(".bitstream"))
    raw = bytearray(stream.raw_data)
    raw[len(raw) // 2] ^= 0x10
    stream.raw_data = bytes(raw)
    return serialize(model)  # sealed again: only the node's own checks stand in the way


def test_a_bad_stream_fails_session_creation_with_the_node_named(packed):
    bad = corrupt_stream(packed)
    with pytest.raises(FormatError, match=r"ai\.onnxcomp::EntropyDecode node '.+': (CRC mismatch|bitstream)"):
        rt.CustomOpSession(bad, op="native")
    # A host that registers the library by itself, with no onnxcomp check in front, gets an error
    # from onnxruntime, not an abort (run in a child: an abort would end this test process).
    code = textwrap.dedent(f"""
        import sys, onnxruntime as ort
        so = ort.SessionOptions()
        so.register_custom_ops_library({rt.native_library_path()!r})
        try:
            ort.InferenceSession(sys.stdin.buffer.read(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            print("refused:", exc)
    """)
    r = subprocess.run([sys.executable, "-c", code], input=bad, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"refused:" in r.stdout and b"onnxcomp: " in r.stdout, r.stderr[-500:]


def graph_fed_model() -> bytes:
    """EntropyDecode whose inputs come from the graph's inputs (not initializers)."""
    node = helper.make_node("EntropyDecode", ["b", "f", "o", "s"], ["v"], domain=fmt.DOMAIN, format_version=1,
                            crc32=0)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("b", TensorProto.UINT8, [None]),
        helper.make_tensor_value_info("f", TensorProto.INT32, [None]),
        helper.make_tensor_value_info("o", TensorProto.INT32, []),
        helper.make_tensor_value_info("s", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("v", TensorProto.INT32, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(fmt.DOMAIN, 1)],
                             ir_version=8).SerializeToString()


def test_inputs_fed_at_run_time_are_checked_and_decoded_on_each_run():
    values = np.arange(15, dtype=np.int32).reshape(3, 5) % 4
    model = onnx.load_from_string(graph_fed_model())
    enc = encode_tensor(values)
    next(a for a in model.graph.node[0].attribute if a.name == "crc32").i = enc.crc32
    so = ort.SessionOptions()
    so.register_custom_ops_library(rt.native_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"b": enc.bitstream, "f": enc.frequencies, "o": np.array(enc.offset, np.int32),
             "s": np.array(enc.shape, np.int64)}
    before = native.kernel_decodes()
    assert sess.run(None, feeds)[0].tolist() == values.tolist()
    assert sess.run(None, feeds)[0].tolist() == values.tolist()
    assert native.kernel_decodes() - before == 2
    with pytest.raises(Exception, match="onnxcomp: .*EntropyDecode.*(larger|more than)"):
        sess.run(None, {**feeds, "s": np.array([1 << 20, 1 << 10], np.int64)})
    with pytest.raises(Exception, match="onnxcomp: .*negative"):
        sess.run(None, {**feeds, "s": np.array([-1, 5], np.int64)})


def test_byte_planes_fed_at_run_time_are_checked_before_the_output_is_allocated():
    values = np.random.default_rng(1).normal(0, 0.05, (8, 6)).astype(np.float32)
    enc = encode_floats(values)
    node = helper.make_node("BytePlaneDecode", ["b", "n", "f", "s"], ["v"], domain=fmt.DOMAIN, format_version=1,
                            crc32=enc.crc32, to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("b", TensorProto.UINT8, [None]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("f", TensorProto.INT32, [None, None]),
        helper.make_tensor_value_info("s", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(fmt.DOMAIN, 2)],
                              ir_version=8)
    so = ort.SessionOptions()
    so.register_custom_ops_library(rt.native_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"b": enc.bitstream, "n": enc.stream_bytes, "f": enc.frequencies, "s": np.array(enc.shape, np.int64)}
    before = native.kernel_decodes()
    assert sess.run(None, feeds)[0].tobytes() == values.tobytes()
    assert native.kernel_decodes() - before == 1
    short = enc.stream_bytes.copy()
    short[-1] -= 4  # the planes no longer cover the bitstream
    zero = enc.frequencies.copy()
    zero[2, 0] = 0
    for bad, message in (({"n": short}, "stream_bytes must be multiples of 4 summing"),
                         ({"f": zero}, "plane 2: frequency table has an entry < 1"),
                         ({"s": np.array([1 << 16, 64], np.int64)}, "plane 0: declared .* more than")):
        with pytest.raises(Exception, match=f"onnxcomp: .*BytePlaneDecode.*{message}"):
            sess.run(None, {**feeds, **bad})
    assert native.kernel_decodes() - before == 1  # refused before an output was allocated


def test_the_decode_budget_applies_per_node_and_can_be_raised(packed, monkeypatch):
    monkeypatch.setenv(native.BUDGET_ENV, "16")
    with pytest.raises(FormatError, match="over the decode budget"):
        rt.CustomOpSession(packed, op="native", max_decoded_bytes=None, verify=True)
    monkeypatch.delenv(native.BUDGET_ENV)
    assert rt.CustomOpSession(packed, op="native", max_decoded_bytes=1 << 30) is not None


def test_a_batch_decodes_as_one_stream_at_a_time_and_refuses_per_stream():
    rng = np.random.default_rng(3)
    plans = [plan_of(encode_tensor(np.rint(rng.laplace(0, s, n)).astype(np.int32)))
             for s, n in ((0.5, 70_000), (3, 20_000), (40, 50_000), (2, 0), (1, 5), (8, 33_000))]
    bad = dataclasses.replace(plans[2], crc32=plans[2].crc32 ^ 1)
    jobs = [(p, np.empty(p.count, np.int32), None, 0) for p in plans[:2] + [bad] + plans[3:]]
    errors = native.entropy_decode_batch(jobs)
    assert [e is None for e in errors] == [True, True, False, True, True, True]
    assert "CRC mismatch" in str(errors[2])
    for (plan, out, _, _), error in zip(jobs, errors):
        if error is None:
            assert out.tobytes() == python_values(plan).tobytes()
    step = np.float32(0.25) * np.arange(1, 71, dtype=np.float32).reshape(70, 1)
    scaled = np.empty(70_000, np.float32)
    assert native.entropy_decode_batch([(plans[0], scaled, step, 1000)]) == [None]
    assert scaled.tobytes() == (python_values(plans[0]).reshape(70, 1000).astype(np.float32) * step).tobytes()


def test_the_crc_check_holds_at_every_length_around_its_folding_blocks():
    # The library's CRC-32 folds 64-byte blocks by carry-less multiplication where the CPU has it
    # and finishes 16-byte blocks and the tail by table: a decode only succeeds when its CRC
    # equals the file's (zlib's), so every length from 1 to 130 values (4 to 520 bytes) and a
    # chunk-sized one check both parts, and a flipped CRC is still refused.
    rng = np.random.default_rng(11)
    for n in list(range(1, 131)) + [4096 * 4 + 3]:
        plan = plan_of(encode_tensor(rng.integers(-50, 50, n).astype(np.int32)))
        assert native_values(plan).tobytes() == python_values(plan).tobytes()
        with pytest.raises(FormatError, match="CRC"):
            native_values(dataclasses.replace(plan, crc32=plan.crc32 ^ 0x80000000))
