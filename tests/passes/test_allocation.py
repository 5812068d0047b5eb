"""Per-tensor bits (passes/quantize/allocation.py) in the default quantize search."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxcomp.passes.quantize.allocation import SENSITIVITY_BITS, base_allocation, read_by_rows

from ..conftest import compile_proto, make_model, run


def two_branch_model(seed: int = 0) -> onnx.ModelProto:
    """y = x @ A + 0.01 * ((x @ B) @ C): the big B and C matter a hundred times less per value
    than the small A, so one bits for all wastes most of them on B and C."""
    rng = np.random.default_rng(seed)
    inits = {"A": rng.laplace(0, 0.1, (32, 8)).astype(np.float32),
             "B": rng.laplace(0, 0.1, (32, 256)).astype(np.float32),
             "C": rng.laplace(0, 0.1, (256, 8)).astype(np.float32),
             "small": np.array(0.01, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]),
             helper.make_node("MatMul", ["x", "B"], ["h"]),
             helper.make_node("MatMul", ["h", "C"], ["c"]),
             helper.make_node("Mul", ["c", "small"], ["cs"]),
             helper.make_node("Add", ["a", "cs"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)


def test_the_rate_optimal_split_gives_each_tensor_a_share_of_the_change_in_proportion_to_its_size():
    sizes = {"a": 1000, "b": 9000, "c": 90000}
    changes = {"a": 0.02, "b": 0.05, "c": 0.01}  # each alone at SENSITIVITY_BITS
    budget = 0.03
    bits = base_allocation(sizes, changes, budget)
    # Additive noise model: a tensor's change halves per bit; its share of budget**2 is n_i / N.
    shares = {k: (changes[k] * 2.0 ** (SENSITIVITY_BITS - bits[k])) ** 2 for k in sizes}
    assert sum(shares.values()) == pytest.approx(budget**2)
    total = sum(sizes.values())
    for k in sizes:
        assert shares[k] / budget**2 == pytest.approx(sizes[k] / total)


def test_per_tensor_bits_are_smaller_than_one_bits_for_all_and_the_file_holds_what_was_searched(tmp_path):
    from onnxcomp.compile import compress
    from onnxcomp.passes.quantize.probes import probe_inputs, relative_change

    src = tmp_path / "m.onnx"
    onnx.save(two_branch_model(), src)
    per_tensor = compress(src, tmp_path / "a.onnx", "ptq", progress=False, seed=0)
    uniform = compress(src, tmp_path / "u.onnx", "normalize,quantize{allocate=false},pack", progress=False, seed=0)
    search = per_tensor["search"]
    assert search["method"] == "per-tensor" and uniform["search"]["method"] == "uniform"
    assert 0 < search["final_error"] <= search["budget"] == pytest.approx(uniform["search"]["budget"])
    bits = {t["name"]: t["bits"] for t in per_tensor["tensors"] if t.get("bits") is not None}
    one_for_all = {t["name"]: t["bits"] for t in uniform["tensors"] if t.get("bits") is not None}
    # A buys its precision from B and C: finer than the uniform search's global bits, they coarser.
    assert bits["A"] > one_for_all["A"] and bits["B"] <= one_for_all["B"] and bits["C"] < one_for_all["C"]
    assert per_tensor["payload_bytes"] < uniform["payload_bytes"]
    # The change the search measured is the packed file's change on the same probe inputs.
    import onnxcomp.runtime as rt

    normalized = compile_proto(two_branch_model(), "normalize")
    probes = probe_inputs(ir.serde.deserialize_model(normalized), seed=0)
    want = run(normalized, probes.inputs)
    got = rt.InferenceSession(str(tmp_path / "a.onnx")).run(None, probes.inputs)
    assert relative_change([want], [got]) == pytest.approx(search["final_error"], rel=1e-3)


def if_model(seed: int = 1) -> onnx.ModelProto:
    """y = x @ A + 0.01 * If(max(x) > 50, then: x @ T, else: x @ E) @ M. Probe inputs (standard
    normal) never reach 50, so T is never run on them; real inputs may. E and M matter a hundred
    times less per value than A, so per-tensor bits pay."""
    rng = np.random.default_rng(seed)

    def branch(name, weight):
        w = helper.make_tensor(weight, TensorProto.FLOAT, [32, 512], rng.laplace(0, 0.1, 32 * 512).astype(np.float32))
        return helper.make_graph([helper.make_node("MatMul", ["x", weight], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 512])], [w])

    nodes = [helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
             helper.make_node("Greater", ["peak", "limit"], ["flag"]),
             helper.make_node("If", ["flag"], ["h"], then_branch=branch("then", "T"), else_branch=branch("else", "E")),
             helper.make_node("MatMul", ["h", "M"], ["hm"]),
             helper.make_node("Mul", ["hm", "small"], ["hs"]),
             helper.make_node("MatMul", ["x", "A"], ["a"]),
             helper.make_node("Add", ["a", "hs"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                      {"M": rng.laplace(0, 0.1, (512, 4)).astype(np.float32), "A": rng.laplace(0, 0.1, (32, 4)).astype(np.float32),
                       "small": np.array(0.01, np.float32), "limit": np.array(50.0, np.float32)})


def test_a_branch_the_inputs_never_take_keeps_the_uniform_bits_instead_of_looking_free(tmp_path):
    from onnxcomp.compile import compress

    src = tmp_path / "if.onnx"
    onnx.save(if_model(), src)
    report = compress(src, tmp_path / "o.onnx", "ptq", progress=False, seed=0)
    assert report["search"]["method"] == "per-tensor"
    bits = {t["name"].rsplit("__", 1)[-1]: t["bits"] for t in report["tensors"] if t.get("bits") is not None}
    uniform = compress(src, tmp_path / "u.onnx", "normalize,quantize{allocate=false},pack", progress=False, seed=0)
    one_for_all = {t["name"].rsplit("__", 1)[-1]: t["bits"] for t in uniform["tensors"] if t.get("bits") is not None}
    # Rounding T changes nothing on the probes: neither the uniform search's refinement nor the
    # allocation may take that as licence to coarsen it; it stays at the global bits both ways.
    assert bits["T"] == one_for_all["T"] == one_for_all["M"] >= 7.0
    assert bits["E"] < bits["T"] < bits["A"]  # E was allocated, coarser; A finer
    # and the branch computes what the original does, at int8-like accuracy
    import onnxcomp.runtime as rt

    feeds = {"x": 100 * np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)}
    (want,) = run(if_model(), feeds)
    (got,) = rt.InferenceSession(str(tmp_path / "o.onnx")).run(None, feeds)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02


def test_tables_and_token_inputs_are_left_to_the_uniform_search(tmp_path):
    from onnxcomp.compile import compress
    from onnxcomp.graph.weights import find_weights
    from tests.test_graph_forms import text_encoder

    model = ir.serde.deserialize_model(text_encoder())
    tables = [w for w in find_weights(model)[0] if read_by_rows(w)]
    assert tables, "the text encoder has an embedding table"
    src = tmp_path / "enc.onnx"
    onnx.save(text_encoder(), src)
    report = compress(src, tmp_path / "o.onnx", "ptq", progress=False, seed=0)
    # Per-tensor ratios measured on token ids follow the ids chosen: not trusted.
    assert report["search"]["method"] == "uniform"
    assert json.loads(json.dumps(report))["search"]["inputs"].startswith("probe inputs")


def test_with_calibration_inputs_the_data_free_split_stays_a_candidate(tmp_path):
    """Data never makes the file bigger than the data-free per-tensor split: on this model it is
    smaller than the calibrated uniform bits, so it is kept, measured on probe inputs as without
    data, and the file holds what was searched."""
    from onnxcomp.compile import compress
    from onnxcomp.passes.quantize.probes import probe_inputs, relative_change

    src, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(two_branch_model(), src)
    np.savez(calib, x=np.random.default_rng(3).normal(0, 1, (40, 32)).astype(np.float32))
    report = compress(src, tmp_path / "c.onnx", "ptq", data=str(calib), progress=False, seed=0)
    search = report["search"]
    assert search["method"] == "per-tensor (the data-free split; smaller than the calibrated uniform bits)"
    assert search["inputs"] == "probe inputs vs int8 weights" and 0 < search["final_error"] <= search["budget"]
    uniform = compress(src, tmp_path / "u.onnx", "normalize,quantize{allocate=false},pack", data=str(calib),
                       progress=False, seed=0)
    assert uniform["search"]["inputs"] == "calibration inputs vs int8 weights"
    assert report["payload_bytes"] < uniform["payload_bytes"]
    # Written exactly as the data-free default writes it: the same bytes as without data.
    compress(src, tmp_path / "f.onnx", "ptq", progress=False, seed=0)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "f.onnx").read_bytes()
    import onnxcomp.runtime as rt

    normalized = compile_proto(two_branch_model(), "normalize")
    probes = probe_inputs(ir.serde.deserialize_model(normalized), seed=0)
    got = rt.InferenceSession(str(tmp_path / "c.onnx")).run(None, probes.inputs)
    assert relative_change([run(normalized, probes.inputs)], [got]) == pytest.approx(search["final_error"], rel=1e-3)


def test_the_refinement_model_marks_unseen_only_a_trial_that_moves_nothing():
    from onnxcomp.passes.quantize.allocation import UNSEEN, RefinementModel

    model = RefinementModel({"measured": 0.04, "blind": UNSEEN / 2})
    assert model.unseen("blind", 8.0, 7.5, 0.03, 0.03) and not model.unseen("measured", 8.0, 7.5, 0.03, 0.03)
    # tensors measured by their trial: no change is unseen; a change either way is seen
    assert model.unseen("other", 8.0, 7.5, 0.03, 0.03)
    assert not model.unseen("other", 8.0, 7.5, 0.03, 0.031)
    assert not model.unseen("other", 8.0, 7.5, 0.03, 0.029)  # coarser and the change went down: seen
