"""What each weight's layer sees on data: the second moments of its input features.

Quantizing W by E changes the layer's output by X E, whose expected square is
trace(E^T H E) with H = E[x x^T] over input features x. H (or its diagonal) is therefore what a
weight's error costs: zero for weights that read dead inputs (MNIST's blank border pixels, ReLU
units that never fire), large for weights that read busy ones. ``quantize`` uses the diagonal as
per-weight importance in its rate-distortion rounding, and the full H for error-compensating
rounding (GPTQ; ``gptq.py``).

Weights are seen as matrices [input features K, outputs N] (see :class:`LayerView`):
Gemm/MatMul weights directly, Conv (group 1) kernels as [C*kh*kw, O] over im2col patches of
their input. Other consumers, and weights read by several nodes, get no statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.graph.weights import Weight
from onnxcomp.metrics import fixed_batch

MAX_ROWS = 65536  # input rows per layer for H: a conv on a 416x416 image has 173k per sample;
# H of K features needs a few times K rows, and every row costs K*K multiply-adds
MAX_FULL_FEATURES = 4096  # beyond this only the diagonal of H is kept (K*K*8 bytes per layer)
MAX_SAMPLES = 4096
BATCH = 16  # samples per run: the fetched activations of every layer are held at once
ROW_CHUNK = 1 << 15  # rows of input features multiplied at a time


@dataclass
class LayerView:
    """How a weight tensor maps onto a [K inputs, N outputs] matrix, and where its input comes from."""

    weight: Weight
    activation: str  # name of the node input the weight multiplies
    kind: str  # "dense" (features on the last axis) or "conv"
    transposed: bool = False  # dense weight stored [N, K] (Gemm transB=1)
    conv: dict | None = None  # kernel, pads, strides, dilations for im2col

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        if self.kind == "conv":  # [O, C, kh, kw] -> [C*kh*kw, O]
            return w.reshape(w.shape[0], -1).T
        return w.T if self.transposed else w

    def from_matrix(self, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "conv":
            return m.T.reshape(shape)
        return m.T if self.transposed else m

    @property
    def output_axis(self) -> int:
        """The weight axis that indexes outputs (the matrix view's columns)."""
        return 0 if self.kind == "conv" or self.transposed else 1

    def num_outputs(self, shape: tuple[int, ...]) -> int:
        return shape[0] if self.kind == "conv" or self.transposed else shape[1]


def layer_view(w: Weight) -> LayerView | None:
    if w.role != "weight" or len(w.value.uses()) != 1:
        return None
    node = next(iter(w.value.uses())).node
    ins = node.inputs
    if ins[0] is None or not ins[0].name or node.domain != "":
        return None
    if node.op_type == "Gemm" and len(ins) > 1 and ins[1] is w.value and not node.attributes.get_int("transA", 0):
        return LayerView(w, ins[0].name, "dense", transposed=bool(node.attributes.get_int("transB", 0)))
    if node.op_type == "MatMul" and ins[1] is w.value and len(w.shape) == 2:
        return LayerView(w, ins[0].name, "dense")
    if node.op_type == "Conv" and ins[1] is w.value and node.attributes.get_int("group", 1) == 1 and len(w.shape) == 4:
        pads = node.attributes.get_ints("pads", [0, 0, 0, 0])
        if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        return LayerView(w, ins[0].name, "conv", conv={
            "kernel": tuple(w.shape[2:]), "pads": tuple(pads),
            "strides": tuple(node.attributes.get_ints("strides", [1, 1])),
            "dilations": tuple(node.attributes.get_ints("dilations", [1, 1])),
        })
    return None


def im2col(x: np.ndarray, conv: dict) -> np.ndarray:
    """Patches of an [N, C, H, W] input as rows [N*oh*ow, C*kh*kw] (ONNX Conv semantics)."""
    (kh, kw), (pt, pl, pb, pr) = conv["kernel"], conv["pads"]
    (sh, sw), (dh, dw) = conv["strides"], conv["dilations"]
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, oh, ow, kh, kw]
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def input_covariances(model: ir.Model, weights: list[Weight], split, max_samples: int = MAX_SAMPLES
                      ) -> dict[str, tuple[LayerView, np.ndarray]]:
    """For each weight it can see as a matrix: (view, H) with H = E[x x^T] over its K input
    features (K x K), or only the diagonal (K,) when K > MAX_FULL_FEATURES."""
    import onnxruntime as ort

    views = {w.name: v for w in weights if (v := layer_view(w)) is not None}
    if not views or split is None:
        return {}
    proto = ir.serde.serialize_model(model)
    existing = {o.name for o in proto.graph.output}
    fetch = sorted({v.activation for v in views.values()})
    for name in fetch:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about the model are normalize's business, not the search's
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    n = min(len(split), max_samples)
    batch = fixed_batch(session, inputs) or BATCH
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    stride: dict[str, int] = {}  # every stride-th row (positions evenly spread), <= MAX_ROWS in all
    for start in range(0, n - n % batch, batch):
        feed = {k: split.inputs[k][start : start + batch] for k in inputs}
        acts = dict(zip(fetch, session.run(fetch, feed)))
        for name, v in views.items():
            if name not in stride:
                per_batch = _row_count(acts[v.activation], v)
                stride[name] = max(1, -(-per_batch * (n // batch) // MAX_ROWS))
            for x in _feature_rows(acts[v.activation], v):
                x = x[:: stride[name]]
                k = x.shape[1]
                part = (x * x).sum(axis=0) if k > MAX_FULL_FEATURES else x.T @ x
                sums[name] = sums.get(name, 0.0) + part
                rows[name] = rows.get(name, 0) + x.shape[0]
    out = {}
    for name, v in views.items():
        h = sums[name] / rows[name]
        if h.shape[0] * v.num_outputs(v.weight.shape) == int(np.prod(v.weight.shape)):
            out[name] = (v, h)
    return out


def _row_count(a: np.ndarray, view: LayerView) -> int:
    """Rows _feature_rows gives for the activation ``a``."""
    if view.kind != "conv":
        return int(np.prod(a.shape[:-1]))
    return im2col(a[:1], view.conv).shape[0] * len(a) if len(a) else 0


def _feature_rows(a: np.ndarray, view: LayerView):
    """The layer's input as [rows, K] float64 blocks of at most ROW_CHUNK rows (im2col for convs,
    a few samples at a time: a full im2col of a wide feature map would not fit in memory)."""
    if view.kind != "conv":
        x = a.reshape(-1, a.shape[-1])
        for start in range(0, x.shape[0], ROW_CHUNK):
            yield x[start : start + ROW_CHUNK].astype(np.float64)
        return
    per_sample = im2col(a[:1], view.conv).shape[0] if len(a) else 1
    step = max(1, ROW_CHUNK // max(1, per_sample))
    for start in range(0, len(a), step):
        yield im2col(a[start : start + step], view.conv).astype(np.float64)


def importance_from(view: LayerView, h: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-weight importance (mean 1) in the weight's own layout, from H's diagonal."""
    d = np.diag(h) if h.ndim == 2 else h
    mean = d.mean()
    d = d / mean if mean > 0 else np.ones_like(d)
    matrix = np.broadcast_to(d[:, None], (d.size, view.num_outputs(shape)))
    return np.ascontiguousarray(view.from_matrix(matrix, shape))
