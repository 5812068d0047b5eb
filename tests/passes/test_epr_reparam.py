"""epr-reparam builds a graph whose task path rounds exactly as documented, and pack's finalize
turns it into latents -> Cast -> decoder with outputs equal to the graph's at rounded latents."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxcomp.runtime as rt
from onnxcomp.errors import NothingToCompressError, PassError, PipelineError
from onnxcomp.model_io import serialize, to_proto
from onnxcomp.pass_base import CompileContext
from onnxcomp.passes.epr.epr_reparam import inverse_dct_2d
from onnxcomp.passes.epr.form import LATENT_FACTOR, EprSpec, finalize_epr, latent_ratios, rounded_latents
from onnxcomp.pipeline import parse_pipeline
from tests.conftest import make_model, run, tiny_cnn, tiny_mlp


def reparam(proto: onnx.ModelProto, options: str = "") -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    parse_pipeline(f"normalize,epr-reparam{options}").run(model, CompileContext(progress=False))
    return model


def feeds(model: ir.Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec = EprSpec.from_model(model)
    return {**inputs, spec.noise_input: np.zeros(spec.num_params, np.float32)}


def with_outputs(model: ir.Model, names: list[str]) -> onnx.ModelProto:
    proto = to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return proto


def set_latents(model: ir.Model, values: dict[str, np.ndarray]) -> None:
    for name, array in values.items():
        model.graph.initializers[name].const_value = ir.tensor(np.asarray(array, np.float32), name=name)


def no_opt() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def test_every_weight_gets_latents_a_rate_and_metadata():
    model = reparam(tiny_mlp())
    spec = EprSpec.from_model(model)
    assert [t.name for t in spec.tensors] == ["W1", "b1", "W2", "b2"]
    assert spec.num_params == 64 * 48 + 48 + 10 * 48 + 10
    assert [v.name for v in model.graph.inputs] == ["x", spec.noise_input]
    assert [v.name for v in model.graph.outputs] == ["y", spec.rate_output]
    assert all(n in model.graph.initializers for n in spec.trainable)
    assert not {"W1", "b1", "W2", "b2"} & set(model.graph.initializers)  # weights are computed now


def test_task_path_rounds_as_documented_and_exactly_on_integers(mlp_input):
    model = reparam(tiny_mlp())
    spec = EprSpec.from_model(model)
    w1 = spec.tensors[0]
    rng = np.random.default_rng(1)
    phi = (rng.normal(0, 3, w1.shape) / LATENT_FACTOR).astype(np.float32)
    phi.flat[:4] = np.array([0.5, -0.5, 2.5, 300.0]) / LATENT_FACTOR  # ties and a clipped value
    set_latents(model, {w1.phi: phi})
    (k,) = run(with_outputs(model, [w1.k]), feeds(model, mlp_input))
    expected = rounded_latents(phi)
    assert np.abs(k - expected).max() < 2e-5  # forward = round(x) up to the fixed-point residual
    assert expected.flat[3] == 255  # |x| is clipped to 255
    np.testing.assert_array_equal(np.floor(np.clip(phi * LATENT_FACTOR, -255, 255) + 0.5), expected)  # half up
    set_latents(model, {w1.phi: expected / np.float32(LATENT_FACTOR)})
    (k_exact,) = run(with_outputs(model, [w1.k]), feeds(model, mlp_input))
    np.testing.assert_array_equal(k_exact, expected.astype(np.float32))


def test_weight_latents_shrink_as_the_step_grows_and_finalize_rounds_as_the_graph(mlp_input):
    """latents=weight: x = 64 phi step0 / step, so at an unchanged weight a larger step is a
    smaller latent; finalize's numpy twin picks the integers the graph's task path rounds to."""
    model = reparam(tiny_mlp(), "{latents=weight per_channel=true step_speed=4}")
    spec = EprSpec.from_model(model)
    w1 = spec.tensors[0]
    inits = model.graph.initializers
    assert w1.log_step0 and w1.log_step0 not in spec.trainable  # a constant, not trained
    rng = np.random.default_rng(3)
    phi = (rng.normal(0, 8, w1.shape) / LATENT_FACTOR).astype(np.float32)
    log_step = inits[w1.log_step].const_value.numpy()
    grown = (log_step + rng.uniform(0.1, 0.9, log_step.shape) / 4).astype(np.float32)  # each channel's step grows
    set_latents(model, {w1.phi: phi, w1.log_step: grown})
    (k,) = run(with_outputs(model, [w1.k]), feeds(model, mlp_input))
    values = {n: inits[n].const_value.numpy() for t in spec.tensors for n in (t.phi, t.log_step, t.log_step0)}
    expected = rounded_latents(phi, latent_ratios(spec, values)[w1.name])
    assert np.abs(k - expected).max() < 2e-5
    assert np.abs(expected).sum() < np.abs(rounded_latents(phi)).sum()  # the same phi at a larger step: smaller latents


def test_latents_train_the_weight_by_default_and_scaled_on_request():
    assert all(t.log_step0 for t in EprSpec.from_model(reparam(tiny_mlp())).tensors)
    assert not any(t.log_step0 for t in EprSpec.from_model(reparam(tiny_mlp(), "{latents=scaled}")).tensors)


def test_initial_graph_is_the_original_model_quantized(mlp_input):
    proto = tiny_mlp()
    (reference,) = run(proto, mlp_input)
    model = reparam(proto, "{bits=6}")  # fine steps, latents still inside the +-255 clip
    outputs = run(to_proto(model), feeds(model, mlp_input))
    assert np.abs(outputs[0] - reference).max() < 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("builder, options", [(tiny_mlp, "{prior=logistic}"), (tiny_mlp, "{per_channel=true}"),
                                              (tiny_cnn, "{conv_decoder=dct}"), (tiny_cnn, "{conv_decoder=dct share_decoders=false}"),
                                              (tiny_mlp, "{latents=weight per_channel=true}"), (tiny_cnn, "{latents=weight step_speed=8}")])
def test_packed_outputs_equal_the_graph_at_rounded_latents(builder, options, mlp_input, cnn_input):
    inputs = mlp_input if builder is tiny_mlp else cnn_input
    model = reparam(builder(), options)
    spec = EprSpec.from_model(model)
    rng = np.random.default_rng(5)
    # trained-looking latents: mostly zero, some large, and the steps moved off their start
    moved = {}
    for t in spec.tensors:
        x = np.where(rng.random(t.shape) < 0.7, 0.0, rng.normal(0, 6, t.shape))
        moved[t.phi] = (np.rint(x) / LATENT_FACTOR).astype(np.float32)
        moved[t.log_step] = model.graph.initializers[t.log_step].const_value.numpy() + np.float32(0.37)
        if t.log_step0:  # latents=weight: the same start step, so that x = 64 phi stays on the integers
            moved[t.log_step0] = moved[t.log_step] * np.float32(t.step_speed)
    set_latents(model, moved)
    # Same session options on both sides: the thread count changes float summation order.
    graph_outputs = run(to_proto(model), feeds(model, inputs), ort.SessionOptions())
    to_proto_before_pack, model_before_pack = to_proto(model), ir.serde.deserialize_model(to_proto(model))
    parse_pipeline("epr-finalize,pack").run(model, CompileContext(progress=False))
    packed = to_proto(model)
    assert [i.name for i in packed.graph.input] == list(inputs)
    assert [o.name for o in packed.graph.output] == [to_proto(reparam(builder())).graph.output[0].name]
    assert not [n for n in packed.graph.node if n.op_type in ("Exp", "Sigmoid", "Slice", "Clip")]
    (decoded,) = rt.InferenceSession(serialize(packed), ort.SessionOptions()).run(None, inputs)
    np.testing.assert_array_equal(decoded, graph_outputs[0])
    # The custom op decodes at run time, so its weights are not constants ORT can pre-pack for
    # Conv: compare with graph optimizations off on both sides, as tests/runtime does.
    (graph_no_opt, _) = run(to_proto_before_pack, feeds(model_before_pack, inputs), no_opt())
    options = no_opt()
    rt.register(options)
    (custom,) = run(packed, inputs, options)
    np.testing.assert_array_equal(custom, graph_no_opt)


def test_dct_decoder_starts_at_the_inverse_dct_and_shares_one_matrix():
    model = reparam(tiny_cnn(), "{conv_decoder=dct}")
    spec = EprSpec.from_model(model)
    assert len(spec.decoders) == 1
    matrix = model.graph.initializers[spec.decoders[0]].const_value.numpy()
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(9), atol=1e-6)  # orthonormal
    np.testing.assert_allclose(matrix, inverse_dct_2d(3, 3), atol=1e-7)
    conv = next(t for t in spec.tensors if t.decoder)
    assert conv.decoder == spec.decoders[0] and conv.shape == [8, 1, 3, 3]


def test_finalize_is_a_no_op_on_other_models():
    model = ir.serde.deserialize_model(tiny_mlp())
    assert finalize_epr(model) is False


def test_bad_input_is_named():
    with pytest.raises(PipelineError, match="prior='gaussian'"):
        parse_pipeline("epr-reparam{prior=gaussian}")
    with pytest.raises(PipelineError, match="conv_decoder"):
        parse_pipeline("epr-reparam{conv_decoder=fft}")
    with pytest.raises(PipelineError, match="step_speed=3"):
        parse_pipeline("epr-reparam{step_speed=3}")
    with pytest.raises(PipelineError, match="latents='steps'"):
        parse_pipeline("epr-reparam{latents=steps}")
    model = reparam(tiny_mlp())
    with pytest.raises(PassError, match="already reparameterized"):
        parse_pipeline("epr-reparam").run(model, CompileContext(progress=False))
    no_weights = make_model([onnx.helper.make_node("Relu", ["x"], ["y"])],
                            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], {})
    with pytest.raises(NothingToCompressError, match="epr-reparam"):
        reparam(no_weights)


def test_decompress_of_a_dct_model_is_standard_onnx_with_equal_outputs(cnn_input, tmp_path):
    from onnxcomp.decompress import decompress
    from onnxcomp.model_io import save_model

    model = reparam(tiny_cnn(), "{conv_decoder=dct}")
    parse_pipeline("epr-finalize,pack").run(model, CompileContext(progress=False))
    save_model(model, tmp_path / "packed.onnx")
    decompress(tmp_path / "packed.onnx", tmp_path / "plain.onnx")
    plain = onnx.load(tmp_path / "plain.onnx")
    assert all(n.domain == "" for n in plain.graph.node)
    assert any(n.op_type == "MatMul" for n in plain.graph.node)  # the learned decoder stays an op
    want = rt.InferenceSession(str(tmp_path / "packed.onnx"), ort.SessionOptions()).run(None, cnn_input)[0]
    np.testing.assert_array_equal(run(plain, cnn_input, ort.SessionOptions())[0], want)


def test_shared_and_transposed_weights_are_reparameterized_once():
    """W feeds two MatMuls directly; V reaches its MatMul through Transpose (an exporter's Linear)."""
    rng = np.random.default_rng(2)
    nodes = [onnx.helper.make_node("MatMul", ["x", "W"], ["a"]), onnx.helper.make_node("MatMul", ["a", "W"], ["b"]),
             onnx.helper.make_node("Transpose", ["V"], ["Vt"], perm=[1, 0]),
             onnx.helper.make_node("MatMul", ["b", "Vt"], ["y"])]
    proto = make_model(nodes, [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
                       {"W": rng.normal(0, 0.3, (16, 16)).astype(np.float32), "V": rng.normal(0, 0.3, (4, 16)).astype(np.float32)})
    model = reparam(proto)
    assert [(t.name, t.shape) for t in EprSpec.from_model(model).tensors] == [("W", [16, 16]), ("V", [4, 16])]
    x = {"x": rng.random((3, 16)).astype(np.float32)}
    set_latents(model, {t.phi: rounded_latents(model.graph.initializers[t.phi].const_value.numpy()) / np.float32(LATENT_FACTOR)
                        for t in EprSpec.from_model(model).tensors})  # the graph at rounded latents
    before = run(to_proto(model), feeds(model, x), ort.SessionOptions())[0]
    parse_pipeline("epr-finalize,pack").run(model, CompileContext(progress=False))
    np.testing.assert_array_equal(rt.InferenceSession(serialize(model), ort.SessionOptions()).run(None, x)[0],
                                  before)


def test_pack_refuses_the_training_form_and_names_the_pass_that_ends_it():
    model = reparam(tiny_mlp())
    with pytest.raises(PassError, match="still in a training form; end it with 'epr-finalize'"):
        parse_pipeline("pack").run(model, CompileContext(progress=False))
    with pytest.raises(PassError, match="already reparameterized"):
        parse_pipeline("weight-fix{epochs=0}").run(model, CompileContext(progress=False))
    parse_pipeline("epr-finalize,pack").run(model, CompileContext(progress=False))
    assert not [k for k in model.metadata_props if k.startswith("onnxcomp.")]  # nothing of training is left
    with pytest.raises(PassError, match="epr-finalize: the model is not an epr-reparam training graph"):
        parse_pipeline("epr-finalize").run(ir.serde.deserialize_model(tiny_mlp()), CompileContext(progress=False))


def test_start_ptq_takes_quantizes_per_channel_steps_and_auto_follows_the_labels(mlp_input):
    from onnxcomp.data import Data, Split
    from onnxcomp.graph.weights import find_weights
    from onnxcomp.passes.quantize.step_rule import step_for

    proto = tiny_mlp()
    quantized = ir.serde.deserialize_model(proto)
    notes = CompileContext(progress=False)
    parse_pipeline("normalize,quantize").run(quantized, notes)
    model = reparam(proto, "{start=ptq}")
    spec = EprSpec.from_model(model)
    weights = {w.name: w for w in find_weights(ir.serde.deserialize_model(proto))[0]}
    for t in spec.tensors:
        array = weights[t.name].value.const_value.numpy()
        bits = notes.tensor_notes[t.name]["bits"]
        axes = weights[t.name].channel_axes  # per output channel (a bias: one step)
        expected = np.log(np.maximum(step_for(array, axes, bits, grid="peak"),
                                     step_for(array, axes, 8.0, grid="peak") * 127 / 255))
        got = model.graph.initializers[t.log_step].const_value.numpy()
        np.testing.assert_allclose(got.reshape(-1), expected.reshape(-1).astype(np.float32), rtol=1e-6)
    # The ptq start is as close to the original as quantize's own steps: within int8's change.
    reference = run(proto, mlp_input)[0]
    at_start = run(to_proto(model), feeds(model, mlp_input))[0]
    rule = reparam(proto, "{start=rule}")
    coarse = run(to_proto(rule), feeds(rule, mlp_input))[0]
    assert np.abs(at_start - reference).max() < 0.25 * np.abs(coarse - reference).max()
    pass_ = parse_pipeline("epr-reparam").passes[0]
    x = mlp_input["x"]
    for labels, start in ((None, "ptq"), (np.zeros(len(x), np.int64), "rule")):
        pass_.context = CompileContext(progress=False, data=Data("test", Split({"x": x}, labels), None, None))
        assert pass_.start_from() == start
    with pytest.raises(PipelineError, match="start='best'"):
        parse_pipeline("epr-reparam{start=best}")
