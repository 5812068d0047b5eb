"""Files that are not what onnxcomp wrote: every decode path refuses them with a typed error,
before allocating what they declare (FORMAT.md sections 4 and 8).

"Re-sealed" cases are a hostile or buggy writer's: the edit is sealed again, so they get past the
seal and must be stopped by the checks behind it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxcomp.runtime as rt
from onnxcomp.errors import FormatError, ModelLoadError
from onnxcomp.model_io import serialize
from onnxcomp.runtime import onnx_wire as w
from onnxcomp.runtime.entropy_decode import entropy_decode
from onnxcomp.runtime.integrity import SEAL_KEY, seal

from ..conftest import compile_bytes, run, tiny_mlp

DECODERS = {
    "decode_model": lambda data: rt.decode_model(data),
    "InferenceSession": lambda data: rt.InferenceSession(data),
    "CustomOpSession": lambda data: rt.CustomOpSession(data),
}


@pytest.fixture(scope="module")
def packed() -> bytes:
    return compile_bytes(tiny_mlp())


def edited(packed: bytes, edit, reseal: bool = True) -> bytes:
    model = onnx.load_from_string(packed)
    edit(model)
    return serialize(model) if reseal else model.SerializeToString()


def first(model, suffix):
    return next(t for t in model.graph.initializer if t.name.endswith(suffix))


def custom_nodes(model):
    return [n for n in model.graph.node if n.domain == rt.DOMAIN]


@pytest.mark.parametrize("path", DECODERS)
def test_a_flipped_bit_outside_the_bitstreams_is_caught_by_the_seal(packed, path):
    # A step is a plain float initializer: no CRC covers it, the seal does.
    model = onnx.load_from_string(packed)
    step = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.raw_data)
    at = packed.index(step.raw_data)
    data = bytearray(packed)
    data[at] ^= 0x01
    with pytest.raises(FormatError, match="integrity check failed"):
        DECODERS[path](bytes(data))


def test_the_seal_survives_onnx_load_and_save_and_is_required(packed, mlp_input):
    want = run(rt.decode_model(packed), mlp_input)[0]
    resaved = onnx.load_from_string(packed).SerializeToString()  # onnx moves the seal among the metadata
    np.testing.assert_array_equal(run(rt.decode_model(resaved), mlp_input)[0], want)

    def drop_seal(m):
        kept = [p for p in m.metadata_props if p.key != SEAL_KEY]
        del m.metadata_props[:]
        m.metadata_props.extend(kept)

    with pytest.raises(FormatError, match="no 'ai.onnxcomp.sha256' seal"):
        rt.decode_model(edited(packed, drop_seal, reseal=False))
    with pytest.raises(FormatError, match="2 'ai.onnxcomp.sha256' seals"):
        rt.decode_model(seal(packed))
    # The check can be turned off for a file one edited on purpose.
    np.testing.assert_array_equal(run(rt.decode_model(edited(packed, drop_seal, reseal=False), verify=False),
                                      mlp_input)[0], want)


def set_domain_version(version):
    def edit(m):
        next(o for o in m.opset_import if o.domain == rt.DOMAIN).version = version
    return edit


def test_domain_versions(packed):
    # 3 -> 2 flips one bit: the seal is still there and still checked.
    with pytest.raises(FormatError, match="integrity check failed"):
        rt.decode_model(edited(packed, set_domain_version(2), reseal=False))
    with pytest.raises(FormatError, match="version 4; this decoder reads versions 1, 2, 3"):
        rt.decode_model(edited(packed, set_domain_version(4)))

    def twice(m):
        m.opset_import.append(helper.make_opsetid(rt.DOMAIN, 3))
    with pytest.raises(FormatError, match="imports the ai.onnxcomp domain 2 times"):
        rt.decode_model(edited(packed, twice))


def test_a_duplicated_decode_node_is_refused(packed):
    def duplicate(m, rename=False):
        copy = onnx.NodeProto()
        copy.CopyFrom(custom_nodes(m)[0])
        copy.name += ".again" if rename else ""
        m.graph.node.append(copy)
    with pytest.raises(FormatError, match="two ai.onnxcomp nodes are named"):
        rt.decode_model(edited(packed, duplicate))
    with pytest.raises(FormatError, match="produced twice"):
        rt.decode_model(edited(packed, lambda m: duplicate(m, rename=True)))


@pytest.mark.parametrize("attr_edit, message", [
    (lambda n: setattr(next(a for a in n.attribute if a.name == "crc32"), "i", (1 << 32) + 5), "not a 32-bit CRC"),
    (lambda n: n.attribute.append(helper.make_attribute("crc32", 7)), "appears twice"),
    (lambda n: n.attribute.append(helper.make_attribute("to", 1.5)), "must be an integer"),
])
@pytest.mark.parametrize("path", DECODERS)
def test_bad_attributes_are_refused(packed, attr_edit, message, path):
    data = edited(packed, lambda m: attr_edit(custom_nodes(m)[0]))
    with pytest.raises((FormatError, ModelLoadError), match=message):
        DECODERS[path](data)


def test_a_stream_ending_in_a_zero_word_is_refused():
    table = np.array([1 << 23, 1 << 23], np.int32)
    with pytest.raises(FormatError, match="zero word"):
        entropy_decode(np.array([1, 0, 0, 0, 0, 0, 0, 0], np.uint8), table, np.int32(0), np.array([4], np.int64), crc32=0)


def bomb(count: int) -> bytes:
    """FORMAT.md-conforming except for what it declares: an empty stream, a lopsided table (one
    symbol costs ~0 bits, so the stream-derived bound allows ~10^10 values), a correct CRC."""
    values = np.zeros(count, np.int32)
    from onnxcomp.runtime.entropy_decode import crc32_of

    crc = crc32_of(values) if count <= 1 << 20 else 0
    inits = [numpy_helper.from_array(np.zeros(0, np.uint8), "b"),
             numpy_helper.from_array(np.array([(1 << 24) - 1, 1], np.int32), "f"),
             numpy_helper.from_array(np.array(0, np.int32), "o"),
             numpy_helper.from_array(np.array([count], np.int64), "s")]
    node = helper.make_node("EntropyDecode", ["b", "f", "o", "s"], ["v"], domain=rt.DOMAIN, format_version=1, crc32=crc)
    cast = helper.make_node("Cast", ["v"], ["y"], to=onnx.TensorProto.FLOAT)
    graph = helper.make_graph([node, cast], "bomb", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [count])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(rt.DOMAIN, 3)])
    model.ir_version = 8
    return serialize(model)


def test_the_decode_budget_refuses_a_memory_bomb_before_allocating():
    small = bomb(1000)
    assert rt.decode_model(small)  # a small one is a valid file: 1000 zeros from an empty stream
    with pytest.raises(FormatError, match="over the decode budget"):
        rt.decode_model(bomb(700_000_000))  # 2.8 GB declared by ~300 bytes
    with pytest.raises(FormatError, match="over the decode budget"):
        rt.CustomOpSession(bomb(700_000_000))
    # The budget is explicit and can be raised: refused then only by what the stream can hold.
    with pytest.raises(FormatError, match="over the decode budget"):
        rt.decode_model(bomb(2000), max_decoded_bytes=4000)


def test_hostile_wire_fields_give_typed_errors(packed):
    # dims whose product overflows int64, checked against the bytes that are there
    tensor = w.varint_field(w.TENSOR_DIMS, 1 << 40) + w.varint_field(w.TENSOR_DIMS, 1 << 40) + \
        w.varint_field(w.TENSOR_DATA_TYPE, 6) + w.len_field(w.TENSOR_RAW_DATA, b"\0" * 8)
    with pytest.raises(ModelLoadError, match="raw_data holds 8 bytes"):
        w.parse_tensor(memoryview(tensor), "t")
    # a node input given as a varint instead of a string
    with pytest.raises(ModelLoadError, match="wire type varint, expected length-delimited"):
        w.parse_node(memoryview(w.varint_field(w.NODE_INPUT, 5)))
    # subgraphs nested deeper than any real model
    graph = b""
    for _ in range(w.MAX_GRAPH_DEPTH + 2):
        attr = w.len_field(w.ATTR_NAME, b"then_branch") + w.len_field(w.ATTR_G, graph)
        graph = w.len_field(w.GRAPH_NODE, w.len_field(w.NODE_OP_TYPE, b"If") + w.len_field(w.NODE_ATTRIBUTE, attr))
    with pytest.raises(ModelLoadError, match="nested more than"):
        w.graph_input_names(memoryview(graph))


def test_the_python_op_session_refuses_in_process_what_would_abort_a_run(packed, mlp_input, monkeypatch):
    # In a child: a plain registered session would abort the interpreter on this file (exit 134).
    bad = edited(packed, flip_a_bitstream_bit)
    code = textwrap.dedent("""
        import sys, onnxcomp.runtime as rt
        from onnxcomp.errors import FormatError
        try:
            rt.CustomOpSession(sys.stdin.buffer.read(), op="python")
        except FormatError as exc:
            print("refused:", exc)
    """)
    r = subprocess.run([sys.executable, "-c", code], input=bad, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"refused:" in r.stdout, r.stderr.decode()[-500:]
    session = rt.CustomOpSession(packed, op="python")
    from onnxcomp.runtime import custom_op

    decodes = []
    planner = custom_op.planner_for
    monkeypatch.setattr(custom_op, "planner_for", lambda *a: (decodes.append(a), planner(*a))[1])
    got = session.run(None, mlp_input)[0]
    assert decodes == []  # every Run is served from what the session checked and decoded
    np.testing.assert_allclose(got, rt.InferenceSession(packed).run(None, mlp_input)[0], rtol=1e-5, atol=1e-6)


def flip_a_bitstream_bit(m):
    raw = bytearray(first(m, ".bitstream").raw_data)
    raw[len(raw) // 2] ^= 0x10
    first(m, ".bitstream").raw_data = bytes(raw)


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_earlier_domain_versions_still_decode(packed, mlp_input, version):
    """Versions 1 and 2 had no seal: such files decode as before (with their guarantees)."""
    def legacy(m):
        set_domain_version(version)(m)
        kept = [p for p in m.metadata_props if p.key != SEAL_KEY]
        del m.metadata_props[:]
        m.metadata_props.extend(kept)
    old = edited(packed, legacy, reseal=False)
    assert b"ai.onnxcomp.sha256" not in old
    np.testing.assert_array_equal(run(rt.decode_model(old), mlp_input)[0], run(rt.decode_model(packed), mlp_input)[0])
    np.testing.assert_array_equal(rt.InferenceSession(old).run(None, mlp_input)[0],
                                  rt.InferenceSession(packed).run(None, mlp_input)[0])
