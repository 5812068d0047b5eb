"""weight-fix on real (pooled 8x8) MNIST digits through ONNX Runtime training: every weight ends
on one shared power-of-two codebook, fixed weights never move, the three runtime paths agree,
runs are reproducible and resumable, and bad input is named."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxcomp.runtime as rt
from onnxcomp import cli
from onnxcomp.compile import compress
from onnxcomp.errors import DataError, PassError, PipelineError
from onnxcomp.pipeline import parse_pipeline
from onnxcomp.passes.wfn.clustering import candidates, fix_round, power_terms
from onnxcomp.passes.wfn.retraining import RetrainOptions, retrain_round
from onnxcomp.training.losses import Teacher, resolve_loss
from tests.conftest import make_model, mnist_npz, run, tiny_cnn, tiny_mlp

FAST = "normalize,weight-fix{schedule=0.5:0.8:0.95:1 epochs=1 lr=0.001},pack"


def compress_quiet(src, out, pipeline=FAST, **kw):
    return compress(src, out, pipeline, progress=False, **kw)


def decoded_weights(path) -> dict[str, np.ndarray]:
    """Every weight of a packed WFN model, rebuilt through its decode subgraph by onnxruntime."""
    from onnxcomp.decompress import decompress

    plain = path.with_name(path.stem + ".plain.onnx")
    decompress(path, plain)
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(plain).graph.initializer}


def test_every_weight_lands_on_one_shared_power_of_two_codebook(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "out.onnx", data=digits)
    wfn = report["weight_fixing"]
    packed = onnx.load(tmp_path / "out.onnx")
    ops = [(n.domain, n.op_type) for n in packed.graph.node]
    assert ops.count(("", "Gather")) == 4 and ("ai.onnxcomp", "EntropyDecode") in ops
    weights = decoded_weights(tmp_path / "out.onnx")
    pooled = np.concatenate([weights[n].ravel() for n in ("W1", "b1", "W2", "b2")])
    book = np.array(wfn["codebook"], np.float32)
    assert np.isin(pooled, book).all() and wfn["unique"] == np.unique(pooled).size == book.size
    assert set(power_terms(book)) <= {0, 1}  # order 0: zero and powers of two only
    assert np.abs(book[book != 0]).min() >= 2.0**-6 and wfn["power_of_two"] == 1.0
    assert wfn["zeros"] == pytest.approx(np.mean(pooled == 0))
    assert [r["round"] for r in wfn["history"]] == [1, 2, 3, 4] and wfn["history"][-1]["fixed_share"] == 1.0
    # pack codes the indices near their entropy, far below 32 bits (or log2(unique)) per weight
    assert 8 * report["payload_bytes"] / report["params"] < np.log2(wfn["unique"])
    assert report["metrics"]["val_error"] <= report["metrics"]["val_error_original"] + 0.05
    assert {t["method"] for t in report["tensors"]} == {"wfn"}
    # the 10-value bias is cheaper raw: int8 indices, read by Gather through a Cast to int32
    assert next(t for t in report["tensors"] if t["name"] == "b2")["codec"] == "raw-int8"
    assert any(n.op_type == "Cast" and n.input[0] == "b2.idx.raw" for n in packed.graph.node)
    assert not (tmp_path / "out.onnx.train").exists()


def test_custom_op_decode_at_load_and_decompressed_give_equal_outputs(tmp_path, digits):
    src = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(), src)
    cnn_digits = mnist_npz(tmp_path / "d.npz", "x", (1, 8, 8), pool=4)
    compress_quiet(src, tmp_path / "out.onnx", data=cnn_digits)
    from onnxcomp.decompress import decompress

    decompress(tmp_path / "out.onnx", tmp_path / "plain.onnx")
    x = {"x": np.load(cnn_digits)["val/x"][:16]}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (plain,) = run(onnx.load(tmp_path / "plain.onnx"), x, options)
    at_load = rt.InferenceSession(str(tmp_path / "out.onnx"), options).run(None, x)[0]
    rt.register(options)
    (custom,) = run(onnx.load(tmp_path / "out.onnx"), x, options)
    np.testing.assert_array_equal(at_load, plain)
    np.testing.assert_array_equal(custom, plain)


def test_retraining_moves_free_weights_and_never_fixed_ones(digits):
    from onnxcomp.data import load_data, model_input_shapes

    model = tiny_mlp()
    data = load_data(digits, model_input_shapes(model))
    values = {t.name: onnx.numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    flat = np.concatenate([v.ravel() for v in values.values()])
    fixed = np.zeros(flat.size, bool)
    fix_round(flat, fixed, flat.size // 2, 0.2, 2.0**-5, 0)
    sizes = np.cumsum([v.size for v in values.values()])[:-1]
    split = lambda a: {n: p.reshape(values[n].shape) for n, p in zip(values, np.split(a, sizes))}  # noqa: E731
    start, masks = split(flat), split(fixed)
    teacher = Teacher(model.SerializeToString())
    result = retrain_round(model, start, masks, candidates(2.0**-5, 1.0, 0), data.train, teacher,
                           RetrainOptions(epochs=1, lr=1e-3), resolve_loss("ce", data.train, teacher, "test"),
                           seed=0, round_index=0)
    for name in values:
        # AdamW without decay and a zero gradient (mask = 1) leaves W.free exactly where it was
        np.testing.assert_array_equal(result.values[name][masks[name]], start[name][masks[name]])
        assert np.count_nonzero(result.values[name][~masks[name]] != start[name][~masks[name]]) > 0.9 * (~masks[name]).sum()
    assert result.steps == 4 and result.regularizer > 0


def test_same_seed_same_bytes_and_resume_after_an_interrupted_round(mlp, digits, tmp_path, monkeypatch, capsys):
    compress_quiet(mlp, tmp_path / "a.onnx", data=digits, seed=2)
    compress_quiet(mlp, tmp_path / "b.onnx", data=digits, seed=2)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    import onnxcomp.passes.wfn.weight_fix as wf

    real = wf.retrain_round

    def interrupted(*args, round_index, **kw):
        if round_index == 2:
            raise KeyboardInterrupt
        return real(*args, round_index=round_index, **kw)

    monkeypatch.setattr(wf, "retrain_round", interrupted)
    code = cli.main(["compress", str(mlp), "-o", str(tmp_path / "c.onnx"), "-p", FAST, "--data", digits,
                     "--seed", "2", "--quiet"])
    assert code == cli.EXIT_INTERRUPTED and "--resume" in capsys.readouterr().err
    assert not (tmp_path / "c.onnx").exists()
    monkeypatch.setattr(wf, "retrain_round", real)
    lines = []
    compress(mlp, tmp_path / "c.onnx", FAST, data=digits, seed=2, resume=True, say=lines.append)
    assert any("resuming weight-fix after round 2 of 4" in line for line in lines)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_error_budget_refines_order_and_gamma0_and_keeps_the_most_accurate_when_none_fits(mlp, digits, tmp_path):
    report = compress_quiet(mlp, tmp_path / "out.onnx", "normalize,weight-fix{schedule=0.5:1 epochs=0.5 search_runs=4},pack",
                            data=digits, max_error=0.0)
    runs = report["weight_fixing"]["runs"]
    assert [(r["gamma0"], r["order"]) for r in runs] == [(2.0**-5, 0), (2.0**-5, 1), (2.0**-6, 1), (2.0**-6, 2)]
    best = min(runs, key=lambda r: r["val_error"])
    assert (report["weight_fixing"]["gamma0"], report["weight_fixing"]["order"]) == (best["gamma0"], best["order"])
    assert any("no run met the error budget" in line for line in report["notes"])
    within = compress_quiet(mlp, tmp_path / "easy.onnx", "normalize,weight-fix{schedule=0.5:1 epochs=0.5},pack",
                            data=digits, max_error=0.99)
    assert len(within["weight_fixing"]["runs"]) == 1 and within["weight_fixing"]["budget"] == 0.99


def test_distillation_without_labels_and_data_free_fixing(mlp, tmp_path):
    unlabeled = mnist_npz(tmp_path / "unlabeled.npz", "x", (64,), pool=4, labels=False)
    report = compress_quiet(mlp, tmp_path / "out.onnx", data=unlabeled, max_error_increase=0.9)
    assert report["weight_fixing"]["loss"] == "distill"
    assert 0.0 <= report["metrics"]["val_disagreement"] <= 1.0
    free = compress_quiet(mlp, tmp_path / "free.onnx", "normalize,weight-fix{epochs=0},pack")
    assert free["weight_fixing"]["unique"] <= 15 and "steps" not in free["weight_fixing"]["history"][0]


def rounded_to_8_bits(path) -> onnx.ModelProto:
    model = onnx.load(path)
    for t in model.graph.initializer:  # every initializer of the tiny MLP is a Gemm weight or bias
        w = onnx.numpy_helper.to_array(t)
        step = np.abs(w).max() / 127
        t.CopyFrom(onnx.numpy_helper.from_array((np.round(w / step) * step).astype(np.float32), t.name))
    return model


def test_without_labels_or_budget_a_codebook_coarser_than_8_bit_rounding_is_refused(mlp, tmp_path):
    unlabeled = mnist_npz(tmp_path / "unlabeled.npz", "x", (64,), pool=4, labels=False)
    pipeline = "normalize,weight-fix{schedule=0.5:1 epochs=0.5 search_runs=2},pack"
    with pytest.raises(PassError, match=r"more than 8-bit rounding of the same weights does") as refused:
        compress_quiet(mlp, tmp_path / "out.onnx", pipeline, data=unlabeled)
    assert not (tmp_path / "out.onnx").exists()
    # The bar is how far rounding each weight to 8 bits (one step per tensor) moves the val
    # outputs, measured here independently of the pass: the tiny MLP's [N, 10] output is taken
    # as values (no softmax follows it), so the change is the relative RMS error per feature.
    with np.load(unlabeled) as arrays:
        x = arrays["val/x"]
    original = ort.InferenceSession(str(mlp)).run(None, {"x": x})[0].astype(np.float64)
    rounded = ort.InferenceSession(rounded_to_8_bits(mlp).SerializeToString()).run(None, {"x": x})[0].astype(np.float64)
    change = np.sqrt(np.mean(((rounded - original) ** 2).sum(0) / (original ** 2).sum(0)))
    assert f"8-bit {100 * change:.2f}%" in str(refused.value)
    # both runs of the search are named: powers of two, then sums of two
    assert "gamma0 0.03125 order 0" in str(refused.value) and "gamma0 0.03125 order 1" in str(refused.value)
    # a budget the user gives is theirs to set: the same model is then written
    report = compress_quiet(mlp, tmp_path / "out.onnx", pipeline, data=unlabeled, max_error_increase=0.9)
    assert report["weight_fixing"]["budget_from"] == "given" and (tmp_path / "out.onnx").exists()


def test_batchnorm_scales_join_the_codebook_when_asked(tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(), src)
    pipeline = "normalize{fold_batchnorm=false},weight-fix{epochs=0 batchnorm=true},pack"
    report = compress_quiet(src, tmp_path / "out.onnx", pipeline)
    weights = decoded_weights(tmp_path / "out.onnx")
    assert np.isin(weights["bn.scale"], report["weight_fixing"]["codebook"]).all()
    assert not np.isin(weights["bn.mean"], report["weight_fixing"]["codebook"]).all()  # statistics stay float
    assert report["weight_fixing"]["weights"] == sum(weights[n].size for n in ("conv.W", "conv.b", "bn.scale", "bn.B", "fc.W"))


def test_integer_weights_are_left_alone_and_said_so(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"]),
             helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Gemm", ["h", "W2"], ["y"])]
    inits = {"Wq": rng.integers(-100, 100, (64, 16)).astype(np.int8), "s": np.float32(0.01), "z": np.int8(0),
             "W2": rng.normal(0, 0.1, (16, 10)).astype(np.float32)}
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(model, tmp_path / "q.onnx")
    report = compress_quiet(tmp_path / "q.onnx", tmp_path / "out.onnx", "normalize,weight-fix{epochs=0},pack")
    assert report["weight_fixing"]["weights"] == 160  # W2 only
    assert any("Wq" in line and "left as is" in line for line in report["notes"])
    only_int = make_model(nodes[:2], model.graph.input, [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 16])],
                          {k: inits[k] for k in ("Wq", "s", "z")})
    onnx.save(only_int, tmp_path / "only.onnx")
    report = compress_quiet(tmp_path / "only.onnx", tmp_path / "only.out.onnx", "normalize,weight-fix{epochs=0}")
    assert "weight_fixing" not in report and any("no float32 weights to fix" in line for line in report["notes"])


@pytest.mark.parametrize("options, message", [
    ("schedule=0.5:0.3:1", "strictly increasing"),
    ("schedule=0.3:0.9", "ending at 1"),
    ("schedule=30:60:100", "fractions, not percent"),
    ("delta=-0.01", "delta=-0.01 must be > 0"),
    ("gamma0=0", "gamma0=0.0 must be in (0, 1)"),
    ("order=3", "order=3 must be 0, 1 or 2"),
    ("loss=mse", "loss=mse must be one of"),
])
def test_bad_options_are_named(options, message, mlp, tmp_path, capsys):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pipeline(f"normalize,weight-fix{{{options}}},pack")
    code = cli.main(["compress", str(mlp), "-o", str(tmp_path / "o.onnx"), "-p", f"weight-fix{{{options}}}"])
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


def test_bad_input_is_named(mlp, digits, tmp_path):
    with pytest.raises(DataError, match=r"needs --data .* or weight-fix\{epochs=0\}"):
        compress_quiet(mlp, tmp_path / "o.onnx", "wfn")
    wrong_shape = mnist_npz(tmp_path / "big.npz", "x", (784,))
    with pytest.raises(DataError, match="x"):
        compress_quiet(mlp, tmp_path / "o.onnx", data=wrong_shape)
    compress_quiet(mlp, tmp_path / "fixed.onnx", "normalize,weight-fix{epochs=0}")
    with pytest.raises(PassError, match="already reparameterized"):
        compress_quiet(tmp_path / "fixed.onnx", tmp_path / "twice.onnx", "weight-fix{epochs=0}")
    with pytest.raises(PassError, match="already reparameterized"):
        compress_quiet(mlp, tmp_path / "o.onnx", "normalize,epr-reparam,weight-fix{epochs=0}")
