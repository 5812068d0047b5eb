"""ORT training without torch: artifacts, steps, parameters by name, exact resume, clear errors."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxcomp.errors import TrainingError
from onnxcomp.training.session import TrainingSession, apply_parameters, generate_artifacts

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 4] x, int64[N] labels) => (float loss, float[N, 3] logits)
<float[4, 3] W = {0.3, -0.2, 0.1, 0.0, 0.5, -0.4, -0.1, 0.2, 0.3, 0.4, -0.3, 0.1}, float[3] b = {0.0, 0.0, 0.0},
 float[3] offset = {0.5, 0.5, 0.5}>
{
    z = Gemm(x, W, b)
    logits = Add(z, offset)
    loss, log_prob = SoftmaxCrossEntropyLoss <reduction = "mean"> (logits, labels)
}
"""


def tiny_model() -> onnx.ModelProto:
    return onnx.parser.parse_model(TINY)


def tiny_batch(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return {"x": x, "labels": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)}


@pytest.fixture
def artifacts(tmp_path):
    return generate_artifacts(tiny_model(), ["W", "b"], ["offset"], tmp_path / "artifacts")


def test_training_api_imports_without_torch():
    code = (
        "import sys; from onnxcomp.training.session import training_api; api = training_api();"
        "assert api.api.Module and api.artifacts.generate_artifacts;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_steps_reduce_loss_and_eval_matches_outputs(artifacts):
    session = TrainingSession(artifacts, lr=0.05)
    batch = tiny_batch()
    first = session.eval(batch)[0]
    for _ in range(40):
        loss, logits = session.step(batch)
    assert logits.shape == (32, 3)
    assert session.steps == 40
    assert session.eval(batch)[0] < 0.5 * first


def test_parameters_read_back_by_name(artifacts):
    session = TrainingSession(artifacts, lr=0.05)
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in tiny_model().graph.initializer}
    session.step(tiny_batch())
    params = session.parameters()
    assert set(params) == {"W", "b", "offset"}
    assert set(session.parameters(trainable_only=True)) == {"W", "b"}
    assert params["W"].shape == (4, 3) and not np.array_equal(params["W"], initial["W"])
    np.testing.assert_array_equal(params["offset"], initial["offset"])  # frozen


def test_resume_from_checkpoint_matches_uninterrupted_run(artifacts, tmp_path):
    batches = [tiny_batch(seed=s) for s in range(10)]
    straight = TrainingSession(artifacts, lr=0.05, seed=1)
    for batch in batches:
        straight.step(batch)

    first_half = TrainingSession(artifacts, lr=0.05, seed=1)
    for batch in batches[:5]:
        first_half.step(batch)
    first_half.save_checkpoint(tmp_path / "resume.ckpt")
    del first_half
    resumed = TrainingSession(artifacts, lr=0.05, seed=1, checkpoint=tmp_path / "resume.ckpt")
    assert resumed.steps == 5
    for batch in batches[5:]:
        resumed.step(batch)
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[name], value, err_msg=name)


def test_set_parameters_and_apply_parameters(artifacts):
    session = TrainingSession(artifacts, lr=0.0)
    session.set_parameters({"b": np.array([1.0, 2.0, 3.0], np.float32)})
    np.testing.assert_array_equal(session.parameters()["b"], [1, 2, 3])
    exported = apply_parameters(tiny_model(), session.parameters())
    b = next(t for t in exported.graph.initializer if t.name == "b")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(b), [1, 2, 3])
    with pytest.raises(TrainingError, match="'nope'"):
        session.set_parameters({"nope": np.zeros(3, np.float32)})
    with pytest.raises(TrainingError, match="'nope'"):
        apply_parameters(tiny_model(), {"nope": np.zeros(3, np.float32)})


def test_generate_artifacts_keeps_cwd_clean_and_quiet(tmp_path, monkeypatch, capfd):
    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), model_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "temp.onnx").write_text("a user's file: onnxblock deletes <cwd>/temp.onnx on its own")
    monkeypatch.chdir(cwd)
    made = generate_artifacts(model_path, ["W"], [], tmp_path / "out")
    gc.collect()
    assert os.listdir(cwd) == ["temp.onnx"]
    assert made.training_model.is_file() and made.checkpoint.exists()
    out, err = capfd.readouterr()
    assert "GraphTransformer" not in out + err


def test_op_without_gradient_is_named(tmp_path):
    model = onnx.parser.parse_model(TINY.replace("z = Gemm(x, W, b)", "g = Gemm(x, W, b)\n z = Round(g)"))
    model.graph.node[1].name = "rounder"
    with pytest.raises(TrainingError, match=r"Round.*rounder"):
        generate_artifacts(model, ["W", "b"], [], tmp_path)


def test_loss_without_log_prob_is_rejected(tmp_path):
    model = onnx.parser.parse_model(TINY.replace("loss, log_prob = ", "loss = "))
    with pytest.raises(TrainingError, match="log_prob"):
        generate_artifacts(model, ["W"], [], tmp_path)


def test_bad_parameter_lists_are_rejected(tmp_path):
    with pytest.raises(TrainingError, match="missing_weight"):
        generate_artifacts(tiny_model(), ["W", "missing_weight"], [], tmp_path)
    with pytest.raises(TrainingError, match="both trainable and frozen"):
        generate_artifacts(tiny_model(), ["W"], ["W"], tmp_path)


def test_wrong_inputs_and_divergence_raise(artifacts):
    session = TrainingSession(artifacts, lr=0.05)
    with pytest.raises(TrainingError, match=r"missing \['labels'\]"):
        session.step({"x": tiny_batch()["x"]})
    poisoned = tiny_batch()
    poisoned["x"][0, 0] = np.nan
    before = session.parameters()["W"]
    with pytest.raises(TrainingError, match="diverged"):
        session.step(poisoned)
    np.testing.assert_array_equal(session.parameters()["W"], before)


SCALED = """
<ir_version: 8, opset_import: ["" : 17]>
scaled (float[N, 4] x, int64[N] labels, float lam) => (float loss, float[N, 3] logits)
<float[4, 3] W = {0.3, -0.2, 0.1, 0.0, 0.5, -0.4, -0.1, 0.2, 0.3, 0.4, -0.3, 0.1}>
{
    logits = MatMul(x, W)
    ce, log_prob = SoftmaxCrossEntropyLoss <reduction = "mean"> (logits, labels)
    sq = Mul(W, W)
    l2 = ReduceSum <keepdims = 0> (sq)
    penalty = Mul(lam, l2)
    loss = Add(ce, penalty)
}
"""


def test_scalar_graph_inputs_stay_scalars(tmp_path, capfd):
    """A schedule feeds lambda as a scalar input each step; it must reach the graph as rank 0."""
    arts = generate_artifacts(onnx.parser.parse_model(SCALED), ["W"], [], tmp_path / "a")
    session = TrainingSession(arts, lr=0.05)
    batch = tiny_batch()
    capfd.readouterr()
    loss_off = session.eval({**batch, "lam": np.float32(0.0)})[0]
    loss_on = session.eval({**batch, "lam": np.array(10.0, np.float32)})[0]
    loss, _ = session.step({**batch, "lam": np.array(1.0, np.float32)})
    assert loss_on > loss_off
    assert np.ndim(loss) == 0 and np.ndim(loss_on) == 0  # a [1]-shaped lambda makes the loss [1]
    assert "does not match actual shape" not in capfd.readouterr().err
