"""The priors' rate subgraphs compute what their numpy twins compute, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.passes.epr.priors import PRIORS, TABLE_TOLERANCE, factorized_table_bits, latent_span
from onnxcomp.graph.edit import NodeBuilder, new_initializer
from onnxcomp.model_io import to_proto
from tests.conftest import run


def rate_model(prior: str, n: int, params: dict[str, np.ndarray], span: int = 256) -> ir.Model:
    y = ir.Value(name="y", shape=ir.Shape([n]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([y], [], nodes=[], opset_imports={"": 17}, name="rate")
    model = ir.Model(graph, ir_version=8)
    b = NodeBuilder(model, {"y"})
    values = {k: new_initializer(graph, f"p.{k}", v) for k, v in params.items()}
    bits = PRIORS[prior].bits_graph(b, y, values, n, "t", span)
    graph.extend(b.nodes)
    graph.outputs.append(bits)
    return model


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("spread", [0.3, 4.0, 40.0])
def test_graph_rate_matches_numpy(prior, spread):
    rng = np.random.default_rng(3)
    y = (rng.laplace(0, spread, 2000) + rng.uniform(-0.5, 0.5, 2000)).astype(np.float32)
    params = PRIORS[prior].init_params(y, rng)
    if prior == "factorized":  # move away from the symmetric initialisation
        params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in params.items()}
    span = latent_span(y)
    (graph_bits,) = run(to_proto(rate_model(prior, y.size, params, span)), {"y": y})
    reference = PRIORS[prior].bits_numpy(y, params)
    assert graph_bits.shape == ()
    # Far in the tails (spread 40 against an initial scale of ~10) a float32 difference of two
    # small sigmoids loses digits to cancellation; the numpy twin computes in float64.
    float32 = 2e-5 if spread < 10 else 2e-3
    if prior == "factorized":  # the graph reads a table of the density: its twin, then the density
        assert graph_bits == pytest.approx(factorized_table_bits(y, params, span), rel=float32)
        assert graph_bits == pytest.approx(reference, rel=TABLE_TOLERANCE + float32)
    else:
        assert graph_bits == pytest.approx(reference, rel=float32)
    # a rate is a code length: at least the ideal (entropy) of nothing, and finite
    assert 0 < reference < 40 * y.size


def test_the_factorized_table_charges_latents_beyond_its_span_the_edge():
    rng = np.random.default_rng(5)
    params = PRIORS["factorized"].init_params(rng.normal(0, 3, 500), rng)
    span = latent_span(np.array([3.0]))  # 14
    assert span == 14 and latent_span(np.array([1000.0])) == 256
    inside = factorized_table_bits(np.array([14.0]), params, span)
    assert factorized_table_bits(np.array([40.0]), params, span) == inside
    (graph_bits,) = run(to_proto(rate_model("factorized", 2, params, span)), {"y": np.array([14.0, 40.0], np.float32)})
    assert graph_bits == pytest.approx(2 * inside, rel=2e-5)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_bin_masses_sum_to_one(prior):
    """p(k) = c(k + 1/2) - c(k - 1/2) over all integers is a probability distribution."""
    rng = np.random.default_rng(0)
    params = PRIORS[prior].init_params(rng.normal(0, 3, 500), rng)
    ks = np.arange(-2000, 2001, dtype=np.float64)
    masses = [2.0 ** -PRIORS[prior].bits_numpy(np.array([k]), params) for k in ks]
    assert sum(masses) == pytest.approx(1.0, abs=1e-4)


def test_the_coded_size_estimate_tracks_what_the_encoder_writes_table_included():
    from onnxcomp.coding import coded_bits_estimate, encode_tensor, narrowest_int_dtype

    rng = np.random.default_rng(4)
    # a coarse step; a fine one whose table is a fifth of the stream; one where raw int16 wins
    for scale, n in ((3.0, 200_000), (300.0, 100_000), (300.0, 20_000)):
        k = np.rint(rng.laplace(0, scale, n)).astype(np.int32)
        raw = k.size * narrowest_int_dtype(int(k.min()), int(k.max())).itemsize
        written = 8 * min(encode_tensor(k).payload_bytes, raw)  # pack's choice
        assert coded_bits_estimate(k) == pytest.approx(written, rel=0.02)
    tiny = np.array([-3, 100, 7], np.int32)  # raw int8 beats any stream and table
    assert coded_bits_estimate(tiny) == 3 * 8


def test_training_on_the_factorized_table_moves_the_prior_and_the_latents(tmp_path):
    """The table's gradient reaches the density's parameters (GatherElements' backward) and the latents
    (the interpolation's slope): one AdamW step on the rate alone moves both, and lowers it."""
    from onnxcomp.training.session import TrainingSession, generate_artifacts

    rng = np.random.default_rng(6)
    latents = rng.laplace(0, 4, 300).astype(np.float32)
    params = PRIORS["factorized"].init_params(latents, rng)
    y = ir.Value(name="y", shape=ir.Shape([latents.size]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 17}, name="rate")
    model = ir.Model(graph, ir_version=8)
    b = NodeBuilder(model, set())
    latent = new_initializer(graph, "latents", latents)
    values = {k: new_initializer(graph, f"p.{k}", v) for k, v in params.items()}
    bits = PRIORS["factorized"].bits_graph(b, b.op("Identity", [latent], "t", "rate"), values, latents.size, "t",
                                           latent_span(latents))
    bits.dtype, bits.shape = ir.DataType.FLOAT, ir.Shape([])  # the loss output training needs typed
    graph.extend(b.nodes)
    graph.outputs.append(bits)
    trainable = ["latents", *(f"p.{k}" for k in params)]
    session = TrainingSession(generate_artifacts(to_proto(model), trainable, [], tmp_path), lr=0.01, seed=0, threads=1)
    before = session.parameters(trainable_only=True)
    first = float(np.asarray(session.step({})[0]))
    after = session.parameters(trainable_only=True)
    for name in trainable:
        assert not np.array_equal(before[name], after[name]), name
    assert float(np.asarray(session.step({})[0])) < first
