"""pack: integer latents become EntropyDecode nodes (or narrow raw tensors when smaller), the
model computes the same outputs, and nothing that is not pure data is touched."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

import onnxcomp.runtime as rt
from onnxcomp.model_io import serialize
from onnxcomp.pass_base import CompileContext
from onnxcomp.passes.pack import PackPass

from ..conftest import compile_proto, make_model, run, tiny_cnn


def test_packed_model_computes_what_the_quantized_model_computes(cnn_input):
    quant = compile_proto(tiny_cnn(), "normalize,quantize{grid=rms bits=4}")
    packed = compile_proto(quant, "pack")
    ops = [n.op_type for n in packed.graph.node]
    assert ops.count("EntropyDecode") == 1  # fc.W; the 72-value conv kernel is cheaper raw
    assert {o.domain: o.version for o in packed.opset_import}["ai.onnxcomp"] == 3  # sealed when written
    assert not any(t.data_type == TensorProto.INT32 and t.name.endswith(".latent") and len(t.dims) > 1
                   for t in packed.graph.initializer)
    np.testing.assert_array_equal(rt.InferenceSession(serialize(packed)).run(None, cnn_input)[0], run(quant, cnn_input)[0])
    # smaller than the quantized form (int8 latents) and than half the float model
    assert packed.ByteSize() <= quant.ByteSize() and packed.ByteSize() < tiny_cnn().ByteSize() / 2


def test_tiny_tensors_are_stored_raw_in_the_narrowest_type():
    quant = compile_proto(tiny_cnn(), "normalize,quantize{grid=rms bits=4}")
    model = ir.serde.deserialize_model(quant)
    p = PackPass()
    p.context = CompileContext(progress=False)
    p(model)
    bias = model.graph.initializers["conv.b.latent"]
    assert bias.const_value.dtype in (ir.DataType.INT8, ir.DataType.INT16)
    assert p.context.tensor_notes["conv.b.latent"]["codec"].startswith("raw-int")
    assert p.context.tensor_notes["conv.W.latent"]["codec"] == "raw-int8"
    assert p.context.tensor_notes["fc.W.latent"]["codec"] == "ans"


def test_integer_tensors_used_as_shapes_or_by_other_ops_are_not_packed():
    shape = np.array([2, 2, 2, 2] * 8, np.int64)[:4]
    table = np.arange(64, dtype=np.int64)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Add", ["r", "bias"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, [16])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 2, 2, 2])],
                       {"shape": shape, "bias": table[:16].reshape(2, 2, 2, 2)})
    out = compile_proto(proto, "pack")
    assert [n.op_type for n in out.graph.node] == ["Reshape", "Add"]
    onnx.checker.check_model(out)


def test_the_reports_figures_from_packs_notes_equal_those_decoded_from_the_graph():
    from onnxcomp.graph.weights import find_weights
    from onnxcomp.report import tensor_rows
    from ..conftest import tiny_mlp

    context = CompileContext(progress=False)
    model = ir.serde.deserialize_model(tiny_mlp())
    original = {w.name: tuple(w.shape) for w in find_weights(model)[0]}
    from onnxcomp.pipeline import parse_pipeline

    parse_pipeline("normalize,quantize{bits=5},pack{stream_symbols=1024}").run(model, context)
    with_notes = tensor_rows(original, model, context.tensor_notes)
    decoded = tensor_rows(original, model, {})  # no notes: every coded tensor decoded from its nodes
    assert any(r["codec"] == "ans" for r in with_notes)
    assert [(r["name"], r["codec"], r["unique_values"]) for r in with_notes] == \
        [(r["name"], r["codec"], r["unique_values"]) for r in decoded]
    for a, b in zip(with_notes, decoded):
        assert abs(a["entropy_bits"] - b["entropy_bits"]) < 1e-9
