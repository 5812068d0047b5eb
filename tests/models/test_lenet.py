"""Reference model builders, and the shipped trained files measured for real on (Fashion-)MNIST test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxcomp.models
from onnxcomp.data import load_data, model_input_shapes
from onnxcomp.metrics import evaluate_session
from onnxcomp.models.datasets import FASHION_MNIST_DIR
from onnxcomp.models.lenet import BUILDERS, build_lenet5_caffe, build_lenet_300_100, with_training_loss
from onnxcomp.training.session import TrainingSession, generate_artifacts

MODELS_DIR = Path(onnxcomp.models.__file__).parent
PARAMETERS = {"lenet-300-100": 266_610, "lenet5-caffe": 431_080}
MAX_TEST_ERROR = {"lenet-300-100": 0.020, "lenet5-caffe": 0.011}
FASHION_MAX_TEST_ERROR = 0.108  # lenet-300-100-fashion.onnx measured 10.37% (models/README.md)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_batch(model: onnx.ModelProto, n: int) -> dict[str, np.ndarray]:
    (name, shape), = model_input_shapes(model).items()
    return {name: np.random.default_rng(0).random((n, *shape[1:]), dtype=np.float32)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_makes_a_valid_seeded_model_that_runs(name):
    model = BUILDERS[name](0)
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 17)
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == PARAMETERS[name]
    assert model.SerializeToString() == BUILDERS[name](0).SerializeToString()
    assert model.SerializeToString() != BUILDERS[name](1).SerializeToString()
    for n in (1, 7):
        (logits,) = session(model).run(["logits"], random_batch(model, n))
        assert logits.shape == (n, 10) and logits.dtype == np.float32


def test_declared_interfaces():
    assert model_input_shapes(build_lenet_300_100()) == {"input": ("N", 784)}
    assert model_input_shapes(build_lenet5_caffe()) == {"input": ("N", 1, 28, 28)}
    ops = [node.op_type for node in build_lenet5_caffe().graph.node]
    assert ops == ["Conv", "MaxPool", "Conv", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]


def test_training_loss_graph_trains(tmp_path):
    model = build_lenet_300_100()
    with_loss = with_training_loss(model)
    assert [o.name for o in with_loss.graph.output] == ["loss", "logits"]
    assert [o.name for o in model.graph.output] == ["logits"]  # the caller's model is untouched
    trainable = [t.name for t in model.graph.initializer]
    trainer = TrainingSession(generate_artifacts(with_loss, trainable, [], tmp_path), lr=1e-3)
    batch = load_data("mnist:val", model_input_shapes(model)).val.take(slice(0, 256))
    feeds = {"input": batch.inputs["input"], "labels": batch.labels}
    first = float(trainer.step(feeds)[0])
    for _ in range(10):
        last = float(trainer.step(feeds)[0])
    assert last < 0.5 * first


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shipped_model_is_the_builder_graph_and_reaches_its_test_error(name):
    shipped = onnx.load(MODELS_DIR / f"{name}.onnx")
    assert_builder_graph(shipped, name)
    test = load_data("mnist:test", model_input_shapes(shipped)).test
    assert evaluate_session(session(shipped), test) <= MAX_TEST_ERROR[name]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_shipped_fashion_model_is_the_builder_graph_and_reaches_its_test_error():
    shipped = onnx.load(MODELS_DIR / "lenet-300-100-fashion.onnx")
    assert_builder_graph(shipped, "lenet-300-100")
    test = load_data("fashion-mnist:test", model_input_shapes(shipped)).test
    assert evaluate_session(session(shipped), test) <= FASHION_MAX_TEST_ERROR


def assert_builder_graph(shipped: onnx.ModelProto, name: str) -> None:
    """``shipped`` is builder ``name``'s graph with trained initializers of the same names and shapes."""
    built = BUILDERS[name](0)
    assert shipped.graph.node == built.graph.node
    assert shipped.graph.input == built.graph.input and shipped.graph.output == built.graph.output
    trained = {t.name: numpy_helper.to_array(t) for t in shipped.graph.initializer}
    initial = {t.name: numpy_helper.to_array(t) for t in built.graph.initializer}
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in initial.items()}
