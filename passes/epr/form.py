"""The EPR training form: what ``epr-reparam`` writes, what training reads, how it ends.

``epr-reparam`` turns each weight into a trainable latent, a decoder and a rate path (see that
pass), tagging every node it adds with a role (``train``, ``decoder``, ``rate``) and recording in
the model's ``onnxcomp.epr`` metadata (:class:`EprSpec`) which initializers are trainable. The
model also carries the driver's training-form mark (``onnxcomp.graph.forms``), so ``pack`` and the
other weight passes refuse it until :func:`finalize_epr` has run: ``finetune`` calls it when
training ends, and ``epr-finalize`` does for pipelines that do not train.

:func:`finalize_epr` gives the intermediate form every method ends in: integer latents ->
Cast -> decoder, which ``pack`` codes like any other integers. The rounding it applies
(:func:`rounded_latents`) repeats the training graph's float32 arithmetic, so the finalized
model's outputs equal the trained graph's at rounded latents bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir

from onnxcomp.coding import entropy_bits
from onnxcomp.graph.edit import NodeBuilder, all_names, new_initializer, node_role, remove_unused_initializers, unique_name
from onnxcomp.graph.forms import clear_training_form
from onnxcomp.passes.epr.priors import PRIORS

METADATA_KEY = "onnxcomp.epr"
NOISE_INPUT = "onnxcomp.noise"
RATE_OUTPUT = "onnxcomp.rate_bits"
LATENT_FACTOR = 64.0   # x = LATENT_FACTOR * phi (power of two: exact)
LATENT_LIMIT = 255.0   # |x| is clipped here: the fixed-point rounding is exact up to 256
FIXED_POINT = 65536.0  # x in 16.16 fixed point: x * 2^16 < 2^31 fits int32
ROUND_OFFSET = 256.0   # Cast truncates toward zero; the offset makes it a floor for |x| < 256
TRAIN, DECODER, RATE = "train", "decoder", "rate"


@dataclass
class EprTensor:
    """How one weight is represented in the training graph (names of values and initializers)."""

    name: str            # the weight's original name: the decoder output carries it
    role: str            # weight | bias
    shape: list[int]
    phi: str             # trainable latent initializer, x / LATENT_FACTOR
    log_step: str        # trainable log step (scalar, or per output channel)
    k: str               # value: straight-through rounded latent (decoder input)
    scale: str           # value: Exp(log_step) (decoder's multiplier)
    noise_offset: int    # this tensor's slice of the noise input
    prior_params: dict[str, str]
    decoder: str | None  # shared decoder matrix initializer (conv "dct"), else None
    log_step0: str | None = None  # latents=weight: the start's log step (constant); x = 64 phi exp(log_step0 - log step)
    step_speed: float = 1.0  # the log step is step_speed x the trained initializer log_step (a power of two: exact)


@dataclass
class EprSpec:
    """The ``onnxcomp.epr`` model metadata: what finetune trains and what finalize_epr rewrites."""

    prior: str
    num_params: int
    tensors: list[EprTensor]
    decoders: list[str] = field(default_factory=list)
    noise_input: str = NOISE_INPUT
    rate_output: str = RATE_OUTPUT

    @property
    def trainable(self) -> list[str]:
        names = [n for t in self.tensors for n in (t.phi, t.log_step, *t.prior_params.values())]
        return names + self.decoders

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_model(cls, model: ir.Model) -> EprSpec | None:
        text = model.metadata_props.get(METADATA_KEY)
        if text is None:
            return None
        raw = json.loads(text)
        raw["tensors"] = [EprTensor(**t) for t in raw["tensors"]]
        return cls(**raw)


def rounded_latents(phi: np.ndarray, ratio: np.ndarray | None = None) -> np.ndarray:
    """The integers the task path rounds ``phi`` to, computed with the graph's float32 arithmetic
    (``ratio``: exp(log_step0 - log_step) as onnxruntime computes it, for latents=weight)."""
    x = np.asarray(phi, np.float32) * np.float32(LATENT_FACTOR)
    if ratio is not None:
        x = x * np.asarray(ratio, np.float32)
    x = np.clip(x, np.float32(-LATENT_LIMIT), np.float32(LATENT_LIMIT))
    q = np.trunc(x * np.float32(FIXED_POINT)).astype(np.int32)
    x_det = q.astype(np.float32) * np.float32(1.0 / FIXED_POINT)
    shifted = np.trunc(x_det + np.float32(ROUND_OFFSET + 0.5)).astype(np.int32)
    return (shifted - np.int32(ROUND_OFFSET)).astype(np.int32)


def exp_in_onnxruntime(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exp of each array computed by onnxruntime's own kernel, so a packed step equals the
    Exp(log_step) the trained graph multiplied by, bit for bit (numpy's exp may differ by an ulp)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    if not arrays:
        return {}
    # One session for all (input of any shape: each array runs as the graph holds it, since
    # the kernel's vectorized and tail paths depend on an element's position).
    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "exp",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return {name: session.run(None, {"x": np.ascontiguousarray(array, np.float32)})[0] for name, array in arrays.items()}


def log_step_of(t: EprTensor, params: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor's log step as the graph computes it (the trained initializer times step_speed)."""
    return np.asarray(params[t.log_step], np.float32) * np.float32(t.step_speed)


def latent_ratios(spec: EprSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Per tensor the factor its latents carry beyond 64 phi: step0 / step for latents=weight
    (computed by onnxruntime's Exp, as the training graph does), None for scaled latents."""
    moved = [t for t in spec.tensors if t.log_step0 is not None]
    exps = exp_in_onnxruntime({t.name: np.asarray(params[t.log_step0], np.float32) - log_step_of(t, params) for t in moved})
    return {t.name: exps.get(t.name) for t in spec.tensors}


def finalize_epr(model: ir.Model, context=None) -> bool:
    """Turn a (trained) EPR training graph into the inference form pack codes; False if not EPR.

    Each weight's task path becomes ``W.latent`` (int32, the rounded latents) -> Cast, its scale an
    initializer ``W.step``; the rate path, the noise input and the rate output are removed, and
    so are the trainable latents and prior parameters. Decoder nodes stay as they were.
    """
    spec = EprSpec.from_model(model)
    if spec is None:
        return False
    graph = model.graph
    inits = graph.initializers
    taken = all_names(model)
    produced = {v.name: v for node in graph for v in node.outputs}
    values = {n: inits[n].const_value.numpy() for t in spec.tensors for n in (t.phi, t.log_step, t.log_step0) if n}
    steps = exp_in_onnxruntime({t.log_step: log_step_of(t, values) for t in spec.tensors})
    ratios = latent_ratios(spec, values)
    casts = []
    for t in spec.tensors:
        k = rounded_latents(values[t.phi], ratios[t.name])
        latent = new_initializer(graph, unique_name(model, f"{t.name}.latent", taken), k)
        cast = ir.Node("", "Cast", [latent], {"to": ir.AttrInt64("to", int(ir.DataType.FLOAT))},
                       name=unique_name(model, f"{t.name}/decode_cast", taken))
        cast.outputs[0].name = unique_name(model, f"{t.name}.dequant", taken)
        cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(t.shape)
        casts.append(cast)
        produced[t.k].replace_all_uses_with(cast.outputs[0])
        step = new_initializer(graph, unique_name(model, f"{t.name}.step", taken), steps[t.log_step])
        produced[t.scale].replace_all_uses_with(step)
        if context is not None:
            # What the learned prior would cost as the coding table (pack codes under the
            # histogram's table, which is never larger: reported so the choice is visible).
            prior = {key: inits[name].const_value.numpy() for key, name in t.prior_params.items()}
            context.note(t.name, latent=latent.name, prior_code_bits=PRIORS[spec.prior].bits_numpy(k, prior))
    rate = produced.get(spec.rate_output)
    if rate is not None and rate in graph.outputs:
        graph.outputs.remove(rate)
    training = [node for node in graph if node_role(node) in (TRAIN, RATE)]
    graph.remove(training, safe=True)
    graph.inputs[:] = [v for v in graph.inputs if v.name != spec.noise_input]
    graph.insert_before(graph[0], casts)
    for node in graph:  # decoder nodes are ordinary inference nodes from here on
        node.metadata_props.pop(NodeBuilder.ROLE_KEY, None)
    remove_unused_initializers(graph)
    del model.metadata_props[METADATA_KEY]
    clear_training_form(model)
    return True


def latent_entropy_bits(spec: EprSpec, params: dict[str, np.ndarray]) -> float:
    """Sum over tensors of size x empirical entropy of the rounded latents: what pack's ANS will
    spend on bitstreams, within a fraction of a percent (tables and headers come on top)."""
    total = 0.0
    ratios = latent_ratios(spec, params)
    for t in spec.tensors:
        k = rounded_latents(params[t.phi], ratios[t.name])
        total += k.size * entropy_bits(k)
    return total
