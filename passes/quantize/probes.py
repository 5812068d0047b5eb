"""Steps as safe as int8: measure error compounding on the model's own outputs.

A per-tensor step rule cannot see how errors compound through depth: the same 4-bit rule that is
lossless on a LeNet moves a 20-layer net's outputs by a lot. The model can be run, though, and
the change of its outputs when weights are quantized measures that compounding for this very
model (``relative_change``: per output feature, so small scores beside large boxes count).

``quantize{target=int8}`` (the default) searches (``step_search.coarsest_bits``) the coarsest steps
whose output change stays within a budget set by int8 on the same inputs:

- without data, on *probe inputs* built from the model's declarations (random values of each
  input's type and shape, 256-pixel sides for images with free H/W; integers drawn from the range
  their consumers read: a table's rows, a OneHot's depth);
- with calibration inputs (``--data``, no labels needed), on the first CALIBRATION_SAMPLES of them.

The budget, with or without data: the change *int8's weights* cause on those inputs (symmetric,
per output channel, 127 levels: the peak grid at 8 bits). onnxruntime's int8 also quantizes
activations at run time; that part is not counted. On probe inputs it is meaningless (random
inputs make activation ranges unlike real ones); on calibration inputs it is real, but a budget
of it (up to twice int8's weights') lost boxes, lines or decisions that int8 keeps on four
corpus models (nudenet, ddddocr-det, the ddddocr CRNN, magika): activation rounding moves
outputs in ways that keep decisions, weight noise as large does not. Matching int8's weight
error and adding no activation error is the safe reading.

The steps are either one ``bits`` for all (``step_search.coarsest_bits``) or per tensor
(``allocation.allocated_bits``: each tensor's share of the budget in proportion to its size,
from its own measured output change), whichever is smaller. Per tensor only for models whose
inputs are floats (``integer_inputs``), and the split is always made and checked on probe
inputs: made on 32 calibration inputs it rates tensors by what those inputs happen to exercise
and lost more than int8 on two corpus models. With data, the candidates are the calibrated
uniform bits (GPTQ rounding) and the data-free default's own per-tensor split (probes, its
rounding); the smaller is kept and written as its search measured it, so giving data never
makes the file bigger than that split.

Either way it is a relative yardstick, "no more output change than int8 on the same inputs",
not an accuracy figure: BENCHMARKS.md (corpus) has the task metrics it gives.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx_ir as ir

from onnxcomp.data import Split
from onnxcomp.graph.weights import Weight
from onnxcomp.model_io import release_pages
from onnxcomp.passes.quantize.step_rule import quantize_array, step_for
from onnxcomp.passes.quantize.allocation import (RefinementModel, allocatable, allocated_bits, sensitivities,
                                                 unseen_in)
from onnxcomp.passes.quantize.step_search import (BITS_HIGH, Candidates, WeightSwapEvaluator, coarsest_bits, finish_search,
                                                  search_say, tensors_to_refine)

PROBE_SAMPLES = 8
SYMBOLIC_DIM = 32  # a probe's size for a symbolic non-batch dimension (sequence length)
SYMBOLIC_SIDE = 256  # for a symbolic spatial dim of an image-like [N, C, H, W] input: a 32-pixel
# image leaves a detector's deep stages at 1x1, nothing like the sizes it serves

NUMPY = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64,
         ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32, ir.DataType.BOOL: np.bool_,
         ir.DataType.UINT8: np.uint8, ir.DataType.INT8: np.int8}


PASS_THROUGH = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Cast", "Flatten", "Slice", "Identity", "Transpose"}


def _constant_behind(value: ir.Value | None) -> np.ndarray | None:
    """The constant ``value`` is, through shape-only ops (an Expand of a Range constant)."""
    while value is not None:
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is None or node.op_type not in PASS_THROUGH or not node.inputs:
            return None
        value = node.inputs[0]
    return None


def integer_range(value: ir.Value) -> tuple[int, int] | None:
    """[low, high) of the integers an input is meant to hold, read from what consumes it (through
    shape-only ops): the rows of the table a Gather indexes (token ids), a OneHot's depth, the
    constant an Equal compares it with (one-hot by comparison, as jax2tf writes it)."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        for use in v.uses():
            node = use.node
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Gather" and use.idx == 1 and node.inputs[0] is not None and node.inputs[0].const_value is not None:
                return 0, int(node.inputs[0].const_value.shape[node.attributes.get_int("axis", 0)])
            if node.op_type == "OneHot" and use.idx == 0:
                depth = _constant_behind(node.inputs[1])
                if depth is not None and depth.size == 1:
                    return 0, int(depth.reshape(-1)[0])
            if node.op_type == "Equal":
                other = _constant_behind(node.inputs[1 - use.idx])
                if other is not None and other.size and np.issubdtype(other.dtype, np.integer):
                    return int(other.min()), int(other.max()) + 1
            if node.op_type in PASS_THROUGH and use.idx == 0:
                stack.extend(node.outputs)
    return None


def probe_inputs(model: ir.Model, seed: int, samples: int = PROBE_SAMPLES) -> Split | None:
    """Random inputs of every graph input's type and shape, or None when an input's type is not
    one probes can make (strings, sequences)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = NUMPY.get(value.dtype)
        if dtype is None or value.shape is None:
            return None
        dims = []
        for i, d in enumerate(value.shape.dims):
            if isinstance(d, int):
                dims.append(d)
            elif i == 0:
                dims.append(samples)
            else:
                dims.append(SYMBOLIC_SIDE if len(value.shape.dims) == 4 and i >= 2 else SYMBOLIC_DIM)
        if dims and isinstance(value.shape.dims[0], int):
            # A fixed batch b: samples * b rows, run b at a time (the evaluator batches by b).
            dims[0] = samples * max(1, dims[0])
        shape = tuple(dims)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            array = np.ones(shape, np.bool_)
        elif (span := integer_range(value)) is not None:
            array = rng.integers(span[0], span[1], shape).astype(dtype)
        elif "mask" in value.name.lower():
            array = np.ones(shape, dtype)
        else:
            array = np.zeros(shape, dtype)
        inputs[value.name] = array
    if not inputs:
        return None
    return Split(inputs, None)


def integer_inputs(model: ir.Model) -> list[str]:
    """Data inputs that hold integers or booleans (token ids, masks, bytes, flags). Per-tensor
    allocation trusts the ratios of tensors' output changes on the inputs it measures, and for
    symbol inputs those ratios follow which symbols, lengths and masks the inputs happen to hold:
    MiniLM's probes (every position a random token, every position attended) rate its position
    embeddings 3.5x higher against its word table than its real sentences do, and per-tensor
    bits spent the difference where real sentences lost twice int8's cosine; on magika's own
    calibration files per-tensor bits flipped 4 file types where int8 flips 2. Float inputs
    (pixels, audio features) were safe on every corpus model, probes or real."""
    return [v.name for v in model.graph.inputs
            if v.name not in model.graph.initializers and v.dtype is not None
            and np.dtype(NUMPY.get(v.dtype, np.object_)).kind not in "fc"]


def int8_like(w: Weight) -> np.ndarray:
    """``w`` as int8 quantizers store it (symmetric, 127 levels, one scale per output channel; per
    tensor where the weight has no channel axes), dequantized: the peak grid at 8 bits."""
    array = w.value.const_value.numpy()
    try:
        return quantize_array(array, step_for(array, w.channel_axes, 8.0, "peak"))[1]
    finally:
        release_pages(array)


def search_bits_on_probes(model: ir.Model, weights: list[Weight], qpass, context) -> dict[str, float] | None:
    """Per-weight bits whose output change stays within int8's (module doc), on the calibration
    inputs when ``--data`` gives some, else on probe inputs; None when the model cannot be probed
    (the caller falls back to the step rule)."""
    say = search_say(context)
    inputs, what = yardstick_inputs(model, context)
    if inputs is None:
        context.warn("quantize{target=int8}: the model's inputs cannot be probed (types or shapes); using the step rule")
        return None
    started = time.perf_counter()
    try:
        evaluator = WeightSwapEvaluator(model, [w.name for w in weights], inputs)
        originals = {w.name: w.value.const_value.numpy() for w in weights}
        reference = evaluator.batched_outputs(originals)
        for array in originals.values():
            release_pages(array)  # read again by each quantization, one tensor at a time
    except Exception as exc:  # noqa: BLE001 - onnxruntime rejects some random inputs; fall back
        context.warn(f"quantize{{target=int8}}: the model does not run on {what} ({str(exc).splitlines()[0][:160]}); "
                     "using the step rule")
        return None

    def change(candidate: dict[str, np.ndarray]) -> float:
        evaluator.evaluations += 1
        return relative_change(reference, evaluator.batched_outputs(candidate))

    # Quantized on every core (the native quantizer releases the GIL): 8.2 s -> 4 s at 616M.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        weights_only = change(dict(zip((w.name for w in weights), pool.map(int8_like, weights))))
    source = "int8 weights"
    budget = weights_only * qpass.probe_margin + 1e-12
    say(f"{source} change the outputs on {len(inputs)} {what} by {weights_only:.3%}; budget {budget:.3%}")
    # On the peak grid bits 8 *is* int8's weights: within the budget by definition, so the search
    # starts there (rounding noise makes 8.1 bits no safer than 8). The peak grid is the default
    # because it compares like with like: on the rms grid (RD rounding or not) MiniLM met the same
    # probe budget at 0.59x int8's file and lost twice int8's cosine on real sentences.
    high = 8.0 if qpass.grid == "peak" and qpass.probe_margin >= 1.0 else BITS_HIGH
    per_tensor = qpass.allocate
    if per_tensor and (symbolic := integer_inputs(model)):
        say(f"per-tensor bits not tried: integer inputs {', '.join(symbolic)} (ids, masks, bytes)")
        per_tensor = False
    on_probes = what == "probe inputs"
    # Each measured tensor costs an evaluation: allocation's and the refinement's when allocation
    # runs on these inputs. Without allocation the refinement measures its tensors by its own
    # trials (RefinementModel: a trial that moves nothing marks its tensor unseen): measuring them
    # first would double its evaluations, a whole-model run each (seconds at 600M parameters).
    candidates = Candidates(weights, qpass)
    allocated_names = {w.name for w in allocatable(weights)} if per_tensor and on_probes else set()
    measured = [w for w in weights if w.name in allocated_names]
    if allocated_names:
        measured += [w for w in tensors_to_refine(weights) if w.name not in allocated_names]
    changes = sensitivities(measured, candidates, originals, change)
    bits, final, size = coarsest_bits(weights, qpass, change, budget, say, "output change", high, candidates,
                                      unseen_in(changes), from_top=high == 8.0, refinement=RefinementModel(changes))
    say(f"uniform: about {size / 8:,.0f} bytes of latents")
    method = "uniform"
    if per_tensor and on_probes:
        allocated = allocated_bits(weights, candidates, {n: c for n, c in changes.items() if n in allocated_names},
                                   change, budget, bits, say)
        if allocated is not None:
            say(f"per-tensor: about {allocated[2] / 8:,.0f} bytes of latents")
            if allocated[2] < size:
                (bits, final, size), method = allocated, "per-tensor"
    elif per_tensor:
        # The data-free default's own per-tensor split (probe inputs, int8's weights there, its
        # rounding): taken when smaller, and then written exactly as without data, so giving data
        # never makes the file bigger than that split, nor less accurate. The same split with
        # GPTQ rounding lost a box int8 keeps on ddddocr-det (99.6%); as the data-free default
        # writes it, it keeps all.
        calibrated_stats, qpass._stats = qpass._stats, {}
        data_free = Candidates(weights, qpass)
        probed = allocation_on_probes(model, weights, qpass, data_free, originals, bits, context.seed, say)
        if probed is not None and probed[0][2] < size:
            (allocated, probe_budget, probe_samples) = probed
            say(f"per-tensor (the data-free split): about {allocated[2] / 8:,.0f} bytes of latents, smaller than "
                f"the calibrated uniform bits; written as without data")
            return finish_search(context, weights, allocated[0], 0.0, allocated[1], probe_budget, evaluator.evaluations,
                                 started, say, "output change", ".3%", f"probe inputs vs {source}", probe_samples,
                                 "per-tensor (the data-free split; smaller than the calibrated uniform bits)")
        qpass._stats = calibrated_stats  # the calibrated uniform bits stand, with their GPTQ rounding
    return finish_search(context, weights, bits, 0.0, final, budget, evaluator.evaluations, started, say,
                         "output change", ".3%", f"{what} vs {source}", len(inputs), method)


def allocation_on_probes(model: ir.Model, weights: list[Weight], qpass, candidates: Candidates,
                         originals: dict[str, np.ndarray], fallback: dict[str, float], seed: int, say):
    """The data-free per-tensor split made on probe inputs against int8's weights there:
    ((bits, change on probes, estimated latent bits), the probe budget, probe samples), or None
    when the model cannot be probed or no split meets the budget."""
    probes = probe_inputs(model, seed)
    if probes is None:
        return None
    try:
        evaluator = WeightSwapEvaluator(model, [w.name for w in weights], probes)
        reference = evaluator.batched_outputs(originals)
    except Exception:  # noqa: BLE001 - random inputs the model rejects: no split, the uniform bits stand
        return None

    def change(candidate: dict[str, np.ndarray]) -> float:
        return relative_change(reference, evaluator.batched_outputs(candidate))

    budget = change({w.name: int8_like(w) for w in weights}) * qpass.probe_margin + 1e-12
    changes = sensitivities(allocatable(weights), candidates, originals, change)
    allocated = allocated_bits(weights, candidates, changes, change, budget, fallback, say)
    return None if allocated is None else (allocated, budget, len(probes))


CALIBRATION_SAMPLES = 32  # of the calibration split, for the yardstick (int8's change is stable by then)


def yardstick_inputs(model: ir.Model, context) -> tuple[Split | None, str]:
    """The inputs target=int8 compares on: the first CALIBRATION_SAMPLES of the train split (the
    val split for a plain .npz) when there is data, else probe inputs."""
    data = context.data
    if data is not None:
        split = data.train if data.train is not None else data.val
        if split is not None:
            return split.take(slice(0, CALIBRATION_SAMPLES)), "calibration inputs"
    return probe_inputs(model, context.seed), "probe inputs"


def feature_axis(shape: tuple[int, ...]) -> int | None:
    """The axis relative_change measures per index: None (the whole tensor) below rank 2."""
    if len(shape) < 2:
        return None
    if len(shape) == 2:
        return 1
    return 1 if shape[1] <= shape[-1] else len(shape) - 1


def relative_change(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """How much ``candidate`` moved the outputs (lists of batches of lists of outputs): for each
    float output, the relative change ||candidate - reference|| / ||reference|| of every feature
    (index along the feature axis, everything else pooled over all batches), root-mean-square
    over the features; the largest over the outputs.

    Per feature, because one output often packs quantities of very different scale: a detector's
    [N, 4 + classes, anchors] (or [N, anchors, 4 + 1 + classes]) holds box coordinates in pixels
    beside class scores in [0, 1], and a norm over the whole tensor would see only the boxes. The
    feature axis is the shorter of axis 1 and the last one (the anchors, positions or time
    steps are the long one); axis 1 for [N, D]."""
    errors: dict[int, np.ndarray] = {}
    norms: dict[int, np.ndarray] = {}
    for ref_batch, cand_batch in zip(reference, candidate):
        for i, (a, b) in enumerate(zip(ref_batch, cand_batch)):
            if not np.issubdtype(np.asarray(a).dtype, np.floating):
                continue
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            feature = feature_axis(a64.shape)
            axes = tuple(k for k in range(a64.ndim) if k != feature)
            norms[i] = norms.get(i, 0.0) + np.sum(a64 * a64, axis=axes)
            errors[i] = errors.get(i, 0.0) + np.sum((b64 - a64) ** 2, axis=axes)
    worst = 0.0
    for i, norm in norms.items():
        live = np.asarray(norm) > 0
        if np.any(live):
            worst = max(worst, float(np.sqrt(np.mean(np.asarray(errors[i])[live] / np.asarray(norm)[live]))))
    return worst
