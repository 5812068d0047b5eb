"""The priors' rate subgraphs compute what their numpy twins compute, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.passes.epr.priors import PRIORS
from onnxcomp.graph.edit import NodeBuilder, new_initializer
from onnxcomp.model_io import to_proto
from tests.conftest import run


def rate_model(prior: str, n: int, params: dict[str, np.ndarray]) -> ir.Model:
    y = ir.Value(name="y", shape=ir.Shape([n]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([y], [], nodes=[], opset_imports={"": 17}, name="rate")
    model = ir.Model(graph, ir_version=8)
    b = NodeBuilder(model, {"y"})
    values = {k: new_initializer(graph, f"p.{k}", v) for k, v in params.items()}
    bits = PRIORS[prior].bits_graph(b, y, values, n, "t")
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
    (graph_bits,) = run(to_proto(rate_model(prior, y.size, params)), {"y": y})
    reference = PRIORS[prior].bits_numpy(y, params)
    assert graph_bits.shape == ()
    # Far in the tails (spread 40 against an initial scale of ~10) a float32 difference of two
    # small sigmoids loses digits to cancellation; the numpy twin computes in float64.
    assert graph_bits == pytest.approx(reference, rel=2e-5 if spread < 10 else 2e-3)
    # a rate is a code length: at least the ideal (entropy) of nothing, and finite
    assert 0 < reference < 40 * y.size


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
