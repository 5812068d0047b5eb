"""The trainable form of a graph: what ONNX Runtime training 1.19 cannot build or run, rewritten
into equal standard ops, checked on real inputs, before any training step.

Both training methods (EPR's finetune, weight fixing's retraining) call :func:`trainable_form` on
their graph (the model with its weights reparameterized, before the loss is added), with a few
training samples. The inference graph the pipeline writes is never changed: the rewritten copy
exists only for training, and the trained values go back by initializer name (no rewrite renames
or replaces an initializer). So a model with dynamic H/W stays dynamic in the output although
training pinned them.

What onnxruntime-training 1.19.2 does with each op was measured one op at a time (a weight, the
op, two consumers of its output; ``bench/corpus/trainability.py`` measures the corpus-level table):

- no gradient builder: HardSigmoid, HardSwish, Softplus, Softsign, Elu, Selu, Celu,
  ThresholdedRelu, PRelu, InstanceNormalization, GlobalMaxPool, variadic Sum, ReduceMax/Min/Prod,
  Einsum, DepthToSpace, SpaceToDepth, CumSum, LpNormalization, Atan, Mod, Shrink, Hardmax;
- a gradient but no CPU kernel for it (found only when the session opens): Resize (ResizeGrad),
  ConvTranspose (ConvTransposeGrad);
- wrong with symbolic dims: AveragePool with a symbolic batch, MaxPool with symbolic H/W ("Can
  broadcast 0 by 0 or 1" in a neighbour's gradient); both fine with fixed dims;
- LayerNormalization without its optional Mean/InvStdDev outputs breaks the gradient builder;
- ReduceSumSquare has no gradient builder; LSTM and GRU gradients take the forward direction only;
- a Reshape to a shape computed at run time breaks the backward pass of broadcasts after it;
- training mode switches behaviour: Dropout drops, inference-form BatchNormalization uses batch
  statistics. Distilling a frozen network wants neither.

So the form pins every non-batch dim of the data inputs to the samples' (all samples of a split
share a shape), and rewrites:

    HardSigmoid -> Clip(a x + b, 0, 1)         HardSwish -> x Clip(x / 6 + 1/2, 0, 1)
    ReduceSumSquare -> ReduceSum(x x)          ReduceMax/ReduceMin -> MaxPool over the reduced axes
    Softplus -> Relu(x) + Log(1 + Exp(-|x|))   Softsign -> x / (1 + |x|)
    Elu/Selu/Celu -> Where/Min forms over Exp(Min(x, 0)) (no inf * 0 in the backward pass)
    ThresholdedRelu -> Where(x > a, x, 0)      PRelu -> Relu(x) - slope Relu(-x)
    AveragePool -> depthwise Conv of ones, divided by the window counts the pool itself uses
    GlobalMaxPool -> MaxPool over the (pinned) spatial dims
    Resize -> one MatMul per resized axis with the interpolation matrix the node itself computes
              (read off by running it on one-hot inputs)
    ConvTranspose -> zero-insertion (MatMul per axis) + Conv with the flipped, transposed kernel
    InstanceNormalization -> ReduceMean forms    Sum -> Adds    Dropout -> removed
    BatchNormalization (inference, constant statistics) -> Mul + Add
    LayerNormalization -> given its optional outputs
    LSTM/GRU bidirectional or reverse -> forward ones (the backward half on the time-reversed
              sequence): LSTMGrad/GRUGrad take the forward direction only
    QuantizeLinear -> DequantizeLinear (per tensor) -> com.microsoft FakeQuant: ORT training's
              own QDQ fusion fails when the pair shares its zero-point initializer
    Reshape to a shape computed from the data -> a constant shape (batch as -1)

Every rewritten node's output keeps its name, so the check compares the rewritten graph with the
original value by value on the samples; a rewrite that does not reproduce its node (relative
change above CHECK_TOLERANCE) is named with the node and the size of the difference. What is left
that training cannot take is one TrainingError listing node, op and why, before any step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import TrainingError, first_line

CHECK_TOLERANCE = 1e-4  # relative L2 change of a rewritten value (float32 reassociation is ~1e-7)
OUTPUT_TOLERANCE = 1e-3  # of a graph output: ~1e-7 per rewritten node compounds through a deep net

# Ops ORT training 1.19.2 cannot differentiate and this module does not rewrite (measured).
NO_GRADIENT = {
    "ReduceMax": "no gradient builder", "ReduceMin": "no gradient builder", "ReduceProd": "no gradient builder",
    "Einsum": "no gradient builder", "DepthToSpace": "no gradient builder", "SpaceToDepth": "no gradient builder",
    "CumSum": "no gradient builder", "LpNormalization": "no gradient builder", "Atan": "no gradient builder",
    "Mod": "no gradient builder", "Shrink": "no gradient builder", "Hardmax": "no gradient builder",
    "Round": "no gradient builder", "Floor": "no gradient builder", "Ceil": "no gradient builder",
    "Sign": "no gradient builder", "Mish": "not in opset <= 17 and no gradient builder",
    # left here only when their rewrite did not apply (the attributes it does not handle)
    "Resize": "ResizeGrad has no CPU kernel (rewritten only without an axes attribute)",
    "ConvTranspose": "ConvTransposeGrad has no CPU kernel (rewritten only with explicit pads within the kernel span)",
    "AveragePool": "its backward fails with a symbolic batch (rewritten only with explicit pads)",
}


@dataclass
class TrainableForm:
    """The training copy of a graph and what was done to get it."""

    model: onnx.ModelProto
    rewritten: Counter = field(default_factory=Counter)  # op type -> nodes rewritten
    pinned: dict[str, list] = field(default_factory=dict)  # input -> dims after pinning
    worst_change: float = 0.0  # largest relative change of a rewritten value on the samples
    converted_from: int | None = None  # the graph's opset when it had to be converted
    # Extra scalar initializers (value 0) the caller must train beside its own: they put a
    # recurrence's constant weights on a gradient path (LSTMGrad crashes otherwise); their
    # trained values are meaningless and never leave training.
    anchors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{op} x{n}" if n > 1 else op for op, n in sorted(self.rewritten.items())]
        done = f"rewrote {', '.join(parts)}" if parts else "no op rewritten"
        pins = ", ".join(f"{name}{_dims_text(dims)}" for name, dims in self.pinned.items())
        check = f"; values equal within {self.worst_change:.1e}" if parts else ""
        if self.converted_from is not None:
            done = f"opset {self.converted_from} -> {TRAINING_OPSET}, {done}"
        return f"training form: {done}" + (f"; inputs pinned to {pins}" if pins else "") + check


def _dims_text(dims: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def trainable_form(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], data_inputs: list[str],
                   trainable: list[str], who: str) -> TrainableForm:
    """``model`` (not modified) in a form ORT training builds and runs (module doc), checked on
    ``sample`` (a feed of every graph input: a few samples of the ``data_inputs``, whose batch
    axis stays free, and whatever else the graph takes, such as noise)."""
    out = _at_training_opset(model, who)
    form = TrainableForm(out, converted_from=default_opset(model) if default_opset(out) != default_opset(model) else None)
    _pin_inputs(out, {name: sample[name] for name in data_inputs}, form)
    del out.graph.value_info[:]  # exporters' symbolic intermediate shapes would contradict the pins
    values = _all_values(out, sample, who)
    for value in out.graph.output:  # declared output shapes are sometimes wrong ([1, -1] for [T, 1, C])
        if value.type.HasField("tensor_type") and value.name in values:
            value.type.tensor_type.ClearField("shape")
            shape = value.type.tensor_type.shape
            for i in range(np.ndim(values[value.name])):
                shape.dim.add().dim_param = f"{value.name}.d{i}"
    # The check runs on fewer samples than the rewrites read shapes from, so a rewrite that
    # baked the batch size in (a frozen Reshape target) fails it instead of passing by luck.
    check_sample = _fewer(out, sample, data_inputs)
    rewriter = _Rewriter(out, values, batch=_batch_of(out, sample, data_inputs), trainable=trainable)
    new_nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        replacement = rewriter.rewrite(node)
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            form.rewritten[node.op_type] += 1
    if form.rewritten:
        reference = _all_values(out, check_sample, who) if check_sample is not sample else values
        del out.graph.node[:]
        out.graph.node.extend(new_nodes)
        out.graph.initializer.extend(rewriter.initializers)
        rewriter.bypass_removed(out)
        form.anchors = list(rewriter.anchors)
        if any(n.domain == "com.microsoft" for n in new_nodes) and not any(o.domain == "com.microsoft" for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid("com.microsoft", 1))  # FakeQuant
        form.worst_change = _check(out, check_sample, reference, rewriter.checked, who)
    _refuse_untrainable(out, trainable, who)
    return form


def _batch_of(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], data_inputs: list[str]) -> int | None:
    """The samples' batch size when the model's batch axis is free (None when it is fixed)."""
    if fixed_batch(model, data_inputs) is not None:
        return None
    sizes = {np.shape(sample[name])[0] for name in data_inputs if np.ndim(sample[name])}
    return sizes.pop() if len(sizes) == 1 else None


def _fewer(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], data_inputs: list[str]) -> Mapping[str, np.ndarray]:
    batch = _batch_of(model, sample, data_inputs)
    if batch is None or batch < 2:
        return sample
    return {name: (array[: batch - 1] if name in data_inputs and np.ndim(array) else array)
            for name, array in sample.items()}


TRAINING_OPSET = 17  # gradient builders emit opset-13+ nodes (Clip's LessOrEqual): older graphs are converted


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) domain a ModelProto imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _at_training_opset(model: onnx.ModelProto, who: str) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset >= 13:
        return onnx.ModelProto.FromString(model.SerializeToString())
    try:
        return onnx.version_converter.convert_version(model, TRAINING_OPSET)
    except Exception as failure:
        raise TrainingError(f"{who}: the graph is opset {opset}; ONNX Runtime training's gradients need opset 13 or "
                            f"newer and converting it to {TRAINING_OPSET} failed: {first_line(failure)}") from None


# --- pinning and reference values -----------------------------------------------------------------

def _pin_inputs(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], form: TrainableForm) -> None:
    for value in model.graph.input:
        if value.name not in sample or not value.type.HasField("tensor_type"):
            continue
        shape = np.shape(sample[value.name])
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or len(tensor.shape.dim) != len(shape):
            continue
        changed = False
        for i, dim in enumerate(tensor.shape.dim):
            if i > 0 and not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = int(shape[i])
                changed = True
        if changed:
            form.pinned[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    from onnxcomp.training.session import session_options

    options = session_options(1)
    options.log_severity_level = 3
    # No fusions: the check compares op semantics, and a fusion (QDQ into integer kernels) that
    # applies in one run and not in the other would differ by more than any rewrite.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_with_outputs(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], extra: list[str],
                      failed: str) -> dict[str, np.ndarray]:
    """``model`` run on ``sample`` with ``extra`` values made graph outputs too; every value it
    returned, by name, plus the graph inputs fed. A failure is a TrainingError starting ``failed``."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    for name in extra:
        if name and name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
            known.add(name)
    try:
        session = _session(probe)
        feed = {i.name: sample[i.name] for i in session.get_inputs()}
        return {**feed, **dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))}
    except Exception as failure:
        raise TrainingError(f"{failed}: {first_line(failure)}") from None


def _all_values(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], who: str) -> dict[str, np.ndarray]:
    """Every main-graph value on ``sample``, by name: the shapes rewrites need and the reference
    the check compares with."""
    return _run_with_outputs(model, sample, [name for node in model.graph.node for name in node.output],
                             f"{who}: the graph to train does not run on the training samples")


def _check(model: onnx.ModelProto, sample, reference: dict[str, np.ndarray], checked: list[tuple[str, str]],
           who: str) -> float:
    """Run the rewritten graph and compare every rewritten node's value and every graph output
    with the original's; returns the largest relative change."""
    got = _run_with_outputs(model, sample, [name for name, _ in checked], f"{who}: the rewritten training graph does not run")
    worst = 0.0
    tolerance = {name: CHECK_TOLERANCE for name, _ in checked}
    for name, what in checked + [(o.name, "graph output") for o in model.graph.output]:
        a, b = reference.get(name), got.get(name)
        if a is None or b is None or not np.issubdtype(np.asarray(a).dtype, np.floating):
            continue
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            raise TrainingError(f"{who}: rewriting {what} changed the shape of {name!r}: {a64.shape} -> {b64.shape}")
        scale = float(np.linalg.norm(a64)) or 1.0
        change = float(np.linalg.norm(b64 - a64)) / scale
        if not change <= tolerance.get(name, OUTPUT_TOLERANCE):
            raise TrainingError(f"{who}: the trainable form of {what} is not equal to it: value {name!r} changed by "
                                f"{change:.2e} (relative) on the training samples; this op cannot be trained here")
        worst = max(worst, change)
    return worst


def _refuse_untrainable(model: onnx.ModelProto, trainable: list[str], who: str) -> None:
    """One error naming every node on a path from a trained tensor whose op ORT cannot train."""
    reached = set(trainable)
    blocked = []
    for node in model.graph.node:
        if not any(i in reached for i in node.input):
            continue
        reached.update(o for o in node.output if o)
        if node.op_type in NO_GRADIENT and node.domain in ("", "ai.onnx"):
            blocked.append(f"{node.name or node.output[0]} ({node.op_type}: {NO_GRADIENT[node.op_type]})")
        elif node.op_type in ("LSTM", "GRU") and _attr(node, "direction", b"forward") not in (b"forward", "forward"):
            blocked.append(f"{node.name or node.output[0]} ({node.op_type}: its gradient kernel takes the forward "
                           "direction only; rewritten only without sequence_lens, activation_alpha/beta, layout 1)")
    if blocked:
        shown = "; ".join(blocked[:8]) + (f"; and {len(blocked) - 8} more" if len(blocked) > 8 else "")
        raise TrainingError(f"{who}: ONNX Runtime training cannot train through {len(blocked)} node(s) between the "
                            f"weights and the outputs: {shown}. No rewrite exists for these ops yet; ptq compresses "
                            "this model without training")


# --- rewrites --------------------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Rewriter:
    """Rewrites one node at a time into equal differentiable nodes; the last new node writes the
    node's (first) output name, so the check can compare it."""

    def __init__(self, model: onnx.ModelProto, values: dict[str, np.ndarray], batch: int | None,
                 trainable: list[str] = ()) -> None:
        self.model = model
        self.reached = set(trainable)  # values on a path from a trained tensor (gradients flow there)
        for n in model.graph.node:
            if any(i in self.reached for i in n.input):
                self.reached.update(o for o in n.output if o)
        self.anchors: list[str] = []
        self.values = values
        self.batch = batch  # the samples' batch size where the model's is free
        self.opset = default_opset(model)
        self.initializers: list[onnx.TensorProto] = []
        self.checked: list[tuple[str, str]] = []
        self.removed: dict[str, str] = {}  # output -> input of removed pass-through nodes
        self.taken = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
        self.taken |= {o for n in model.graph.node for o in n.output} | {n.name for n in model.graph.node}
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.absorbed: set[int] = set()  # ids of later nodes an earlier rewrite replaced
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for name in n.input:
                self.readers.setdefault(name, []).append(n)

    # naming and small builders
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def const(self, array, base: str) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.values[name] if name in self.values else self.constants[name]))

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        if id(node) in self.absorbed:
            return []  # folded into an earlier node's rewrite
        method = getattr(self, f"_{node.op_type}", None)
        if method is None:
            return None
        self.base = (node.name or node.output[0]) + "/trainable"
        self.nodes: list[onnx.NodeProto] = []
        result = method(node)
        if result is None:
            return None
        if result is not self.REMOVED:
            self.checked.append((node.output[0], f"{node.op_type} node {node.name or node.output[0]!r}"))
        return self.nodes

    REMOVED = object()

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.fresh(f"{self.base}/{op_type.lower()}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(f"{self.base}/{op_type}"), **attrs))
        return out

    def scalar(self, value: float, dtype=np.float32) -> str:
        return self.const(np.asarray(value, dtype), f"{self.base}/c")

    def axes_op(self, op_type: str, x: str, axes: list[int], output: str | None = None, **attrs) -> str:
        """Unsqueeze/Squeeze/ReduceMean with ``axes`` in the form of the graph's opset."""
        takes_input = self.opset >= (18 if op_type.startswith("Reduce") and op_type != "ReduceSum" else 13)
        if takes_input:
            return self.op(op_type, [x, self.const(np.asarray(axes, np.int64), f"{self.base}/axes")], output, **attrs)
        return self.op(op_type, [x], output, axes=list(axes), **attrs)

    def bypass_removed(self, model: onnx.ModelProto) -> None:
        """Readers of a removed node's output read its input instead (graph outputs keep an Identity)."""
        if not self.removed:
            return

        def source(name: str) -> str:
            while name in self.removed:
                name = self.removed[name]
            return name

        outputs = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in self.removed:
                    node.input[i] = source(name)
        for name in sorted(self.removed.keys() & outputs):
            model.graph.node.append(helper.make_node("Identity", [source(name)], [name], name=self.fresh(f"{name}/identity")))

    # recurrences
    def _LSTM(self, node):
        return self._recurrence(node, activations=3, states=2)

    def _GRU(self, node):
        return self._recurrence(node, activations=2, states=1)

    def _recurrence(self, node, activations: int, states: int):
        """An LSTM/GRU in the one form whose gradient kernels run in ORT training 1.19 (measured:
        LSTMGrad rejects any direction but forward, fails to build without initial states, and
        segfaults unless W, R and B all receive gradients):

        - bidirectional/reverse -> forward ones, the backward half on the time-reversed sequence
          with its Y reversed back; Y concatenated on the direction axis, final states on axis 0;
        - absent initial states -> zeros of [1, batch, hidden] (the node's own default);
        - absent B -> zeros; a W, R or B no trained tensor reaches -> itself plus 0 x an anchor
          (a zero scalar the caller trains: TrainableForm.anchors).
        """
        direction = _attr(node, "direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if _attr(node, "layout", 0) != 0 or self.values[node.input[0]].dtype != np.float32:
            return None
        if direction != "forward" and len(node.input) > 4 and node.input[4]:
            return None  # per-sequence lengths: reversing needs ReverseSequence (no gradient); named below
        if _attr(node, "activation_alpha") is not None or _attr(node, "activation_beta") is not None:
            return None
        inputs = list(node.input) + [""] * (8 - len(node.input))
        wanted_states = 2 if node.op_type == "LSTM" else 1
        if (direction == "forward" and all(inputs[5:5 + wanted_states]) and inputs[3]
                and all(inputs[i] in self.reached for i in (1, 2, 3))):
            return None  # already in the trainable form
        x = node.input[0]
        steps, batch = self.shape(x)[:2]
        hidden = int(_attr(node, "hidden_size"))
        backward = [True] if direction == "reverse" else [False, True] if direction == "bidirectional" else [False]
        reverse = self.const(np.arange(steps - 1, -1, -1, dtype=np.int64), f"{self.base}/reverse") if any(backward) else None
        acts = _attr(node, "activations")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in ("direction", "activations")}
        gates = self.shape(inputs[1])[1]
        ys, finals = [], [[] for _ in range(states)]
        for k, flip in enumerate(backward):
            def part(name: str) -> str:
                if len(backward) == 1:
                    return name
                return self.op("Slice", [name, self.const(np.int64([k]), f"{self.base}/start"),
                                         self.const(np.int64([k + 1]), f"{self.base}/end"),
                                         self.const(np.int64([0]), f"{self.base}/axis")])
            w, r = (self._on_gradient_path(part(inputs[i]), inputs[i]) for i in (1, 2))
            b = (self._on_gradient_path(part(inputs[3]), inputs[3]) if inputs[3] else
                 self._on_gradient_path(self.const(np.zeros((1, 2 * gates), np.float32), f"{self.base}/bias"), ""))
            initial = [part(inputs[5 + i]) if inputs[5 + i] else self._zero_state(x, hidden) for i in range(states)]
            peephole = [part(inputs[7])] if node.op_type == "LSTM" and inputs[7] else []
            seq = self.op("Gather", [x, reverse], axis=0) if flip else x
            lens = [inputs[4]] if inputs[4] else [""]
            outs = [self.fresh(f"{self.base}/y{k}")] + [self.fresh(f"{self.base}/state{k}_{i}") for i in range(states)]
            extra = {"activations": list(acts[k * activations:(k + 1) * activations])} if acts else {}
            self.nodes.append(helper.make_node(node.op_type, [seq, w, r, b] + lens + initial + peephole, outs,
                                               name=self.fresh(f"{self.base}/{node.op_type}{k}"), direction="forward",
                                               **attrs, **extra))
            ys.append(self.op("Gather", [outs[0], reverse], axis=0) if flip else outs[0])
            for i in range(states):
                finals[i].append(outs[1 + i])
        wanted = list(node.output) + [""] * (1 + states - len(node.output))
        for name, parts, axis in [(wanted[0], ys, 1)] + [(wanted[1 + i], finals[i], 0) for i in range(states)]:
            if name:
                self.op("Concat", parts, name, axis=axis) if len(parts) > 1 else self.op("Identity", parts, name)
        return wanted[0] or self.REMOVED  # Y unread: the states are checked as graph outputs or not at all

    def _zero_state(self, x: str, hidden: int) -> str:
        """Zeros of [1, batch, hidden] with the batch read from ``x`` at run time (it stays free)."""
        batch = self.op("Gather", [self.op("Shape", [x]), self.const(np.int64([1]), f"{self.base}/batch_axis")], axis=0)
        dims = self.op("Concat", [self.const(np.int64([1]), f"{self.base}/one"), batch,
                                  self.const(np.int64([hidden]), f"{self.base}/hidden")], axis=0)
        zero = numpy_helper.from_array(np.zeros(1, np.float32), "value")
        return self.op("ConstantOfShape", [dims], value=zero)

    def _on_gradient_path(self, name: str, source: str) -> str:
        """``name`` (a part of ``source``) as it is when a trained tensor reaches ``source``,
        else plus 0 x the anchor."""
        if source in self.reached:
            return name
        if not self.anchors:
            self.anchors.append(self.const(np.float32(0.0), "onnxcomp.trainable.anchor"))
        nothing = self.op("Mul", [self.anchors[0], self.scalar(0.0)])
        return self.op("Add", [name, nothing])

    # quantized activations
    def _QuantizeLinear(self, node):
        """A per-tensor QuantizeLinear read only by DequantizeLinear nodes with its scale and zero
        point -> one com.microsoft FakeQuant (the same values; gradient straight through inside the
        range). ORT training's own QDQ fusion does this but fails on zero points shared by the pair."""
        x, scale = node.input[0], node.input[1]
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
        readers = self.readers.get(node.output[0], [])
        outputs = {o.name for o in self.model.graph.output}
        if node.output[0] in outputs or not readers or self.values[x].dtype != np.float32:
            return None
        if scale not in self.constants or np.size(self.constants[scale]) != 1:
            return None
        zp = self.constants.get(zero) if zero else np.uint8(0)
        if zp is None or np.size(zp) != 1 or zp.dtype not in (np.uint8, np.int8):
            return None
        for reader in readers:
            same_zero = (reader.input[2] if len(reader.input) > 2 else "") == (zero or "")
            if reader.op_type != "DequantizeLinear" or reader.input[1] != scale or not same_zero:
                return None
        info = np.iinfo(zp.dtype)
        fq = readers[0].output[0]  # the pair's value keeps its name (the check compares it)
        self.nodes.append(helper.make_node(
            "FakeQuant", [x, scale, self.const(np.asarray(zp, np.float32).reshape(()), f"{self.base}/zero_point")],
            [fq, self.fresh(f"{self.base}/mask")], name=self.fresh(f"{self.base}/FakeQuant"), domain="com.microsoft",
            quant_min=int(info.min), quant_max=int(info.max)))
        for reader in readers:
            self.absorbed.add(id(reader))
            if reader.output[0] != fq:
                self.removed[reader.output[0]] = fq  # equal values: readers read the first one's
        self.checked.append((fq, f"QuantizeLinear/DequantizeLinear pair at {readers[0].name or fq!r}"))
        return self.REMOVED

    # shapes computed at run time
    def _Reshape(self, node):
        """A target shape computed from the data (Shape -> Gather -> Concat) becomes a constant,
        the batch as -1: the backward pass of a broadcast after it needs static shapes."""
        target = node.input[1]
        if target in self.constants or target not in self.values:
            return None
        shape = np.asarray(self.values[target], np.int64).copy()
        if self.batch is not None:
            at_batch = np.flatnonzero(shape == self.batch)
            if at_batch.size != 1 or (shape == -1).any():
                return None
            shape[at_batch[0]] = -1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return self.op("Reshape", [node.input[0], self.const(shape, f"{self.base}/shape")], node.output[0], **attrs)

    # element-wise activations
    def _HardSigmoid(self, node):
        x, y = node.input[0], node.output[0]
        a = self.op("Add", [self.op("Mul", [x, self.scalar(_attr(node, "alpha", 0.2))]), self.scalar(_attr(node, "beta", 0.5))])
        return self.op("Clip", [a, self.scalar(0.0), self.scalar(1.0)], y)

    def _HardSwish(self, node):
        x, y = node.input[0], node.output[0]
        gate = self.op("Clip", [self.op("Add", [self.op("Mul", [x, self.scalar(1 / 6)]), self.scalar(0.5)]),
                                self.scalar(0.0), self.scalar(1.0)])
        return self.op("Mul", [x, gate], y)

    def _Softplus(self, node):
        x, y = node.input[0], node.output[0]
        tail = self.op("Log", [self.op("Add", [self.op("Exp", [self.op("Neg", [self.op("Abs", [x])])]), self.scalar(1.0)])])
        return self.op("Add", [self.op("Relu", [x]), tail], y)

    def _Softsign(self, node):
        x, y = node.input[0], node.output[0]
        return self.op("Div", [x, self.op("Add", [self.op("Abs", [x]), self.scalar(1.0)])], y)

    def _negative_part(self, x: str, alpha: float, inner_scale: float = 1.0) -> str:
        """alpha * (exp(min(x, 0) * inner_scale) - 1): finite for every x, so no inf * 0."""
        low = self.op("Min", [x, self.scalar(0.0)])
        if inner_scale != 1.0:
            low = self.op("Mul", [low, self.scalar(inner_scale)])
        return self.op("Mul", [self.op("Sub", [self.op("Exp", [low]), self.scalar(1.0)]), self.scalar(alpha)])

    def _Elu(self, node):
        x, y = node.input[0], node.output[0]
        positive = self.op("Greater", [x, self.scalar(0.0)])
        return self.op("Where", [positive, x, self._negative_part(x, _attr(node, "alpha", 1.0))], y)

    def _Selu(self, node):
        x, y = node.input[0], node.output[0]
        alpha, gamma = _attr(node, "alpha", 1.67326319217681884765625), _attr(node, "gamma", 1.05070102214813232421875)
        positive = self.op("Greater", [x, self.scalar(0.0)])
        inner = self.op("Where", [positive, x, self._negative_part(x, alpha)])
        return self.op("Mul", [inner, self.scalar(gamma)], y)

    def _Celu(self, node):
        x, y = node.input[0], node.output[0]
        alpha = _attr(node, "alpha", 1.0)
        return self.op("Add", [self.op("Relu", [x]), self._negative_part(x, alpha, 1.0 / alpha)], y)

    def _ThresholdedRelu(self, node):
        x, y = node.input[0], node.output[0]
        keep = self.op("Greater", [x, self.scalar(_attr(node, "alpha", 1.0))])
        return self.op("Where", [keep, x, self.scalar(0.0)], y)

    def _PRelu(self, node):
        x, slope, y = node.input[0], node.input[1], node.output[0]
        negative = self.op("Neg", [self.op("Relu", [self.op("Neg", [x])])])  # min(x, 0), exactly
        return self.op("Add", [self.op("Relu", [x]), self.op("Mul", [slope, negative])], y)

    def _Sum(self, node):
        if len(node.input) == 1:
            return self.op("Identity", [node.input[0]], node.output[0])
        total = node.input[0]
        for i, term in enumerate(node.input[1:], start=1):
            total = self.op("Add", [total, term], node.output[0] if i == len(node.input) - 1 else None)
        return total

    # training-mode behaviour
    def _Dropout(self, node):
        if len(node.output) > 1 and node.output[1]:
            return None  # a mask someone reads: keep the node (its gradient builder then works)
        self.removed[node.output[0]] = node.input[0]
        return self.REMOVED

    def _BatchNormalization(self, node):
        if len(node.output) > 1 and any(node.output[1:]):
            return None
        params = [self.constants.get(n) for n in node.input[1:5]]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
        shift = beta - mean * scale
        rank = len(self.shape(node.input[0]))
        dims = (-1,) + (1,) * (rank - 2)
        dtype = self.values[node.input[0]].dtype
        scaled = self.op("Mul", [node.input[0], self.const(scale.reshape(dims).astype(dtype), f"{self.base}/scale")])
        return self.op("Add", [scaled, self.const(shift.reshape(dims).astype(dtype), f"{self.base}/shift")], node.output[0])

    def _LayerNormalization(self, node):
        if len(node.output) >= 3 and all(node.output[:3]):
            return None
        outputs = list(node.output) + [""] * (3 - len(node.output))
        outputs[1] = outputs[1] or self.fresh(f"{self.base}/mean")
        outputs[2] = outputs[2] or self.fresh(f"{self.base}/inv_std_dev")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.nodes.append(helper.make_node("LayerNormalization", list(node.input), outputs,
                                           name=node.name or self.fresh(self.base), **attrs))
        return outputs[0]

    def _InstanceNormalization(self, node):
        x, s, b, y = node.input[0], node.input[1], node.input[2], node.output[0]
        rank = len(self.shape(x))
        axes = list(range(2, rank))
        dims = np.array((-1,) + (1,) * (rank - 2), np.int64)
        mean = self.axes_op("ReduceMean", x, axes, keepdims=1)
        centred = self.op("Sub", [x, mean])
        var = self.axes_op("ReduceMean", self.op("Mul", [centred, centred]), axes, keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.scalar(_attr(node, "epsilon", 1e-5))])])
        normed = self.op("Div", [centred, std])
        scale = self.op("Reshape", [s, self.const(dims, f"{self.base}/dims")])
        shift = self.op("Reshape", [b, self.const(dims, f"{self.base}/dims")])
        return self.op("Add", [self.op("Mul", [normed, scale]), shift], y)

    # pooling
    def _AveragePool(self, node):
        x, y = node.input[0], node.output[0]
        in_shape, out_shape = self.shape(x), self.shape(y)
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None  # rare; left to the check below (symbolic batch) and named if it fails
        kernel = list(_attr(node, "kernel_shape"))
        k = len(kernel)
        strides = list(_attr(node, "strides", [1] * k))
        dilations = list(_attr(node, "dilations", [1] * k))
        pads = list(_attr(node, "pads", [0] * (2 * k)))
        # Conv output sizes are floor-mode: pad the end so they reach the pool's (ceil mode).
        ends = list(pads[k:])
        for i in range(k):
            span = dilations[i] * (kernel[i] - 1) + 1
            need = (out_shape[2 + i] - 1) * strides[i] + span - (in_shape[2 + i] + pads[i] + ends[i])
            ends[i] += max(0, need)
        channels = in_shape[1]
        dtype = self.values[x].dtype
        ones = self.const(np.ones((channels, 1, *kernel), dtype), f"{self.base}/ones")
        conv_attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads[:k] + ends, group=channels)
        total = self.op("Conv", [x, ones], **conv_attrs)
        counts = self._window_counts(node, in_shape, out_shape, kernel, conv_attrs, dtype)
        if counts is None:
            return None
        cropped = self._crop(total, out_shape)
        return self.op("Div", [cropped, self.const(counts, f"{self.base}/counts")], y)

    def _window_counts(self, node, in_shape, out_shape, kernel, conv_attrs, dtype) -> np.ndarray | None:
        """The divisor the pool uses per output position: its sum of ones (zero padding) over its
        average of ones, both computed by onnxruntime on one channel."""
        k = len(kernel)
        shape = [1, 1, *in_shape[2:]]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes = [helper.make_node("AveragePool", ["x"], ["avg"], **attrs),
                 helper.make_node("Conv", ["x", "w"], ["sum"], **{**conv_attrs, "group": 1})]
        w = numpy_helper.from_array(np.ones((1, 1, *kernel), np.float32), "w")
        graph = helper.make_graph(nodes, "counts", [x], [helper.make_tensor_value_info("avg", TensorProto.FLOAT, None),
                                                         helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(11, self.opset))])
        model.ir_version = min(self.model.ir_version, 9) or 9
        avg, total = _session(model).run(None, {"x": np.ones(shape, np.float32)})
        window = tuple(slice(0, d) for d in out_shape[2:])
        total = total[(0, 0, *window)]
        if total.shape != avg.shape[2:]:
            return None
        return (total / avg[0, 0]).astype(dtype)[None, None]

    def _crop(self, value: str, out_shape: tuple[int, ...]) -> str:
        """``value`` sliced to ``out_shape``'s spatial sizes (a no-op Slice when equal is skipped)."""
        axes = list(range(2, len(out_shape)))
        ends = [int(out_shape[a]) for a in axes]
        return self.op("Slice", [value, self.const(np.zeros(len(axes), np.int64), f"{self.base}/starts"),
                                 self.const(np.asarray(ends, np.int64), f"{self.base}/ends"),
                                 self.const(np.asarray(axes, np.int64), f"{self.base}/axes")])

    def _ReduceMax(self, node):
        return self._reduce_extreme(node, negate=False)

    def _ReduceMin(self, node):
        return self._reduce_extreme(node, negate=True)

    def _reduce_extreme(self, node, negate: bool):
        """Max (Min: of -x) over some axes as a MaxPool: the reduced axes moved last and flattened,
        one pool window over them ([M, 1, L] -> [M, 1, 1]), reshaped to the node's output."""
        x, y = node.input[0], node.output[0]
        in_shape, out_shape = self.shape(x), self.shape(y)
        rank = len(in_shape)
        axes = _attr(node, "axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.constants.get(node.input[1], self.values.get(node.input[1]))
        axes = list(range(rank)) if axes is None or len(axes) == 0 else sorted(int(a) % rank for a in axes)
        if 0 in axes or rank == 0 or self.values[x].dtype.kind != "f":
            return None  # over the batch: left to the error
        kept = [a for a in range(rank) if a not in axes]
        moved = self.op("Transpose", [self.op("Neg", [x]) if negate else x], perm=kept + axes)
        length = int(np.prod([in_shape[a] for a in axes]))
        flat = self.op("Reshape", [moved, self.const(np.asarray([-1, 1, length], np.int64), f"{self.base}/shape")])
        pooled = self.op("MaxPool", [flat], kernel_shape=[length])
        dims = np.asarray([-1, *out_shape[1:]], np.int64)  # the batch axis stays free
        shaped = self.op("Reshape", [pooled, self.const(dims, f"{self.base}/out_shape")], None if negate else y)
        return self.op("Neg", [shaped], y) if negate else shaped

    def _ReduceSumSquare(self, node):
        x, y = node.input[0], node.output[0]
        axes = _attr(node, "axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.constants.get(node.input[1], self.values.get(node.input[1]))
            if axes is None:
                return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "axes"}
        square = self.op("Mul", [x, x])
        if axes is None or len(axes) == 0:
            return self.op("ReduceSum", [square], y, **attrs)
        return self.axes_op("ReduceSum", square, [int(a) for a in axes], y, **attrs)

    def _GlobalMaxPool(self, node):
        x, y = node.input[0], node.output[0]
        spatial = list(self.shape(x)[2:])
        return self.op("MaxPool", [x], y, kernel_shape=spatial)

    # resampling
    def _Resize(self, node):
        x, y = node.input[0], node.output[0]
        in_shape, out_shape = self.shape(x), self.shape(y)
        if len(in_shape) != len(out_shape) or _attr(node, "axes") is not None:
            return None  # named by _refuse_untrainable
        axes = [a for a in range(len(in_shape)) if in_shape[a] != out_shape[a]]
        if not axes:
            return self.op("Identity", [x], y)
        value = x
        for axis in axes:
            matrix = self._resize_matrix(node, in_shape, out_shape, axis)  # [out, in]
            value = self._along_axis(value, matrix.T.astype(self.values[x].dtype), axis, len(in_shape),
                                     y if axis == axes[-1] else None)
        return value

    def _resize_matrix(self, node, in_shape, out_shape, axis) -> np.ndarray:
        """[out, in] interpolation matrix of ``node`` along ``axis``: the node run (its own
        attributes, its scale or size along that axis) on n one-hot inputs of shape 1 along every
        other axis (the modes onnxruntime implements are separable)."""
        if axis < 2:
            raise TrainingError(f"Resize node {node.name!r} resizes axis {axis}: only spatial axes can be trained")
        n, rank = in_shape[axis], len(in_shape)
        basis_shape = [1] * rank
        basis_shape[0], basis_shape[axis] = n, n
        basis = np.zeros(basis_shape, np.float32)
        index = [0] * rank
        for i in range(n):
            index[0] = index[axis] = i
            basis[tuple(index)] = 1.0
        names, initializers = ["x"], []
        for i, name in enumerate(node.input[1:], start=1):
            source = self.values.get(name, self.constants.get(name)) if name else None
            if source is None or np.size(source) == 0:
                if i == 1 and self.opset < 13:  # opset 11's roi is a required input, empty when unused
                    initializers.append(numpy_helper.from_array(np.zeros(0, np.float32), "in1"))
                    names.append("in1")
                else:
                    names.append("")  # absent or empty (an unused roi or scales)
                continue
            array = np.asarray(source).copy()
            if i == 2:  # scales: 1 everywhere but along the axis
                keep = array[axis]
                array[:] = 1
                array[axis] = keep
            elif i == 3:  # sizes: the basis's
                array = np.asarray(basis_shape, np.int64)
                array[axis] = out_shape[axis]
            initializers.append(numpy_helper.from_array(array, f"in{i}"))
            names.append(f"in{i}")
        while names and names[-1] == "":
            names.pop()
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        graph = helper.make_graph([helper.make_node("Resize", names, ["y"], **attrs)], "resize",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, basis_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(11, self.opset))])
        model.ir_version = min(self.model.ir_version, 9) or 9
        out = _session(model).run(None, {"x": basis})[0]
        if out.shape[axis] != out_shape[axis]:
            raise TrainingError(f"Resize node {node.name!r}: along axis {axis} it makes {out.shape[axis]} values from "
                                f"{n} alone but {out_shape[axis]} in the model; cannot be trained")
        return out.reshape(n, out_shape[axis]).T  # column i is what one-hot i becomes

    def _along_axis(self, value: str, matrix: np.ndarray, axis: int, rank: int, output: str | None) -> str:
        """``value`` with ``axis`` mapped by ``matrix`` ([in, out]): MatMul on the last axis,
        with transposes around it for any other axis."""
        weights = self.const(matrix, f"{self.base}/interpolation")
        if axis == rank - 1:
            return self.op("MatMul", [value, weights], output)
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = self.op("Transpose", [value], perm=perm)
        mapped = self.op("MatMul", [moved, weights])
        return self.op("Transpose", [mapped], output, perm=perm)

    def _ConvTranspose(self, node):
        x, w, y = node.input[0], node.input[1], node.output[0]
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or _attr(node, "output_shape") is not None:
            return None
        in_shape, out_shape, w_shape = self.shape(x), self.shape(y), self.shape(w)
        k = len(w_shape) - 2
        kernel = list(w_shape[2:])
        group = _attr(node, "group", 1)
        strides = list(_attr(node, "strides", [1] * k))
        dilations = list(_attr(node, "dilations", [1] * k))
        pads = list(_attr(node, "pads", [0] * (2 * k)))
        extra = list(_attr(node, "output_padding", [0] * k))
        conv_pads = [dilations[i] * (kernel[i] - 1) - pads[i] for i in range(k)]
        conv_pads += [dilations[i] * (kernel[i] - 1) - pads[k + i] + extra[i] for i in range(k)]
        if min(conv_pads) < 0:
            return None  # pads larger than the kernel span: would need a crop; left to the error
        value = x
        for i in range(k):  # zeros between input samples: a MatMul per spatial axis
            if strides[i] > 1:
                n = in_shape[2 + i]
                insert = np.zeros((n, (n - 1) * strides[i] + 1), self.values[x].dtype)
                insert[np.arange(n), np.arange(n) * strides[i]] = 1.0
                value = self._along_axis(value, insert, 2 + i, len(in_shape), None)
        c_in, c_out_g = w_shape[0], w_shape[1]
        grouped = self.op("Reshape", [w, self.const(np.asarray([group, c_in // group, c_out_g, *kernel], np.int64), f"{self.base}/shape")])
        swapped = self.op("Transpose", [grouped], perm=[0, 2, 1, *range(3, 3 + k)])
        kernel_t = self.op("Reshape", [swapped, self.const(np.asarray([group * c_out_g, c_in // group, *kernel], np.int64), f"{self.base}/shape")])
        for i in range(k):  # spatial flip by a Gather (Slice with step -1 has no CPU gradient kernel here)
            reverse = self.const(np.arange(kernel[i] - 1, -1, -1, dtype=np.int64), f"{self.base}/reverse")
            kernel_t = self.op("Gather", [kernel_t, reverse], axis=2 + i)
        inputs = [value, kernel_t] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
        return self.op("Conv", inputs, y, kernel_shape=kernel, dilations=dilations, pads=conv_pads, group=group,
                       strides=[1] * k)


def fixed_batch(model: onnx.ModelProto, data_inputs) -> int | None:
    """The batch size the model's data inputs declare (a model exported for one sample at a time
    takes nothing else), None where it is free."""
    for value in model.graph.input:
        if value.name in data_inputs and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def training_sample(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray]) -> dict:
    """The feed :func:`trainable_form` checks on: three samples of ``inputs`` (or the model's
    fixed batch of them) plus ``extra`` (noise, switches), every graph input the model has."""
    n = fixed_batch(model, inputs) or 3
    feed = {name: np.asarray(array)[:n] for name, array in inputs.items()}
    feed.update(extra)
    return feed
