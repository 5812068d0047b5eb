"""Reference models of the compression literature, built with onnx.helper: LeNet-300-100, LeNet5-Caffe.

Both are the MNIST baselines of Deep Compression, Variational Dropout and EPR papers, so compressed
sizes and errors can be compared with published numbers. Contract of every builder:

* opset 17, IR version 8 (ORT 1.19 reads it), graph input ``input`` float32 with a symbolic batch
  dimension ``N``, graph output ``logits`` float32 ``[N, 10]``;
* weights are initializers named like a PyTorch export (``fc1.weight`` of shape ``[out, in]`` used
  by ``Gemm(transB=1)``, ``conv1.weight`` ``[out, in, kh, kw]``), biases start at zero;
* initial weights come from ``numpy.random.default_rng(seed)``: He-normal before a ReLU,
  Glorot-uniform elsewhere, so the same seed gives byte-identical models.

:func:`with_training_loss` turns such a model into the graph ORT training needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import ModelError

OPSET = 17
IR_VERSION = 8
INPUT = "input"
LOGITS = "logits"
LABELS = "labels"
LOSS = "loss"


class _GraphBuilder:
    """Collects nodes and seeded initializers; layer names become tensor-name prefixes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _weight(self, name: str, shape: tuple[int, ...], fan_in: int, fan_out: int, relu_follows: bool) -> str:
        if relu_follows:
            values = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            values = self.rng.uniform(-limit, limit, shape)
        self.initializers.append(numpy_helper.from_array(values.astype(np.float32), f"{name}.weight"))
        self.initializers.append(numpy_helper.from_array(np.zeros(shape[0], np.float32), f"{name}.bias"))
        return name

    def dense(self, x: str, name: str, n_in: int, n_out: int, relu: bool, out: str | None = None) -> str:
        self._weight(name, (n_out, n_in), n_in, n_out, relu)
        out = out or f"{name}.out"
        self.nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
        return self._relu(out, name) if relu else out

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int, relu: bool) -> str:
        self._weight(name, (c_out, c_in, k, k), c_in * k * k, c_out * k * k, relu)
        out = f"{name}.out"
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, kernel_shape=[k, k]))
        return self._relu(out, name) if relu else out

    def max_pool(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        return name

    def flatten(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("Flatten", [x], [name], name=name, axis=1))
        return name

    def _relu(self, x: str, layer: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [f"{layer}.relu"], name=f"{layer}.relu"))
        return f"{layer}.relu"

    def model(self, graph_name: str, input_dims: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *input_dims])],
            [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", 10])],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        model.producer_name = "onnxcomp.models.lenet"
        onnx.checker.check_model(model, full_check=True)
        return model


def build_lenet_300_100(seed: int = 0) -> onnx.ModelProto:
    """784 -> 300 -> ReLU -> 100 -> ReLU -> 10 (266,610 parameters, 1.07 MB as float32)."""
    b = _GraphBuilder(seed)
    x = b.dense(INPUT, "fc1", 784, 300, relu=True)
    x = b.dense(x, "fc2", 300, 100, relu=True)
    b.dense(x, "fc3", 100, 10, relu=False, out=LOGITS)
    return b.model("lenet_300_100", [784])


def build_lenet5_caffe(seed: int = 0) -> onnx.ModelProto:
    """Caffe's LeNet5: conv20 5x5, pool, conv50 5x5, pool, fc500 ReLU, fc10 (431,080 parameters).

    As in Caffe's ``lenet_train_test.prototxt`` the convolutions have no ReLU after them.
    """
    b = _GraphBuilder(seed)
    x = b.conv(INPUT, "conv1", 1, 20, 5, relu=False)
    x = b.max_pool(x, "pool1")
    x = b.conv(x, "conv2", 20, 50, 5, relu=False)
    x = b.max_pool(x, "pool2")
    x = b.flatten(x, "flatten")
    x = b.dense(x, "fc1", 800, 500, relu=True)
    b.dense(x, "fc2", 500, 10, relu=False, out=LOGITS)
    return b.model("lenet5_caffe", [1, 28, 28])


BUILDERS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "lenet-300-100": build_lenet_300_100,
    "lenet5-caffe": build_lenet5_caffe,
}


def with_training_loss(model: onnx.ModelProto, logits: str = LOGITS) -> onnx.ModelProto:
    """A copy of ``model`` with input ``labels`` (int64 ``[N]``) and outputs ``[loss, logits]``.

    The loss is mean softmax cross-entropy, the FIRST output as ``generate_artifacts`` requires.
    SoftmaxCrossEntropyLoss produces its optional ``log_prob`` output: without it ORT's gradient
    builder fails with an index assertion.
    """
    result = onnx.ModelProto.FromString(model.SerializeToString())
    graph = result.graph
    outputs = {o.name: o for o in graph.output}
    if logits not in outputs:
        raise ModelError(f"graph {graph.name!r} has no output {logits!r}; outputs: {sorted(outputs)}")
    batch = outputs[logits].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or batch.dim_value or "N"
    graph.node.append(
        helper.make_node(
            "SoftmaxCrossEntropyLoss", [logits, LABELS], [LOSS, f"{LOSS}.log_prob"], name=LOSS, reduction="mean"
        )
    )
    graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, [batch_dim]))
    kept = onnx.ValueInfoProto()
    kept.CopyFrom(outputs[logits])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []), kept])
    return result
