"""Data-driven step search for ``quantize``: the coarsest steps within an error budget.

The candidate weights are exactly what the graph will hold (``QuantizePass.quantize``: same
steps, same rounding, GPTQ included), so the error measured here is the packed model's error.
The budget is the original model's error on the validation split plus ``max_error_increase``
(a fraction: 0.001 = 0.1 percentage point). The error is ``onnxcomp.metrics``' one definition:
the classification error when the split has labels, otherwise the fraction of samples whose
predictions (at every position for sequence outputs such as OCR) differ anywhere from the
original model's, so unlabeled data still works. Two phases, each monotone in practice:

1. one global ``bits`` for all weights (biases keep their extra bits), found by bisection;
2. greedy per-tensor coarsening of the largest tensors (together 90% of the weights, at most
   12), largest first since it saves the most bytes, half a bit at a time while the budget holds
   and the tensor's coded size (estimated from its latents: entropy plus table) actually shrinks.

Every evaluation runs one onnxruntime session in which the weights are graph inputs, so trying
new steps costs one forward pass over the split, not a session build.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.coding import coded_bits_estimate
from onnxcomp.data import Split, batches
from onnxcomp.errors import DataError
from onnxcomp.graph.weights import Weight
from onnxcomp.metrics import error_rate, fixed_batch, predictions, truth_rows
from onnxcomp.model_io import proto_without_bytes
from onnxcomp.pass_base import PassReport


@dataclass
class StepSearchReport(PassReport):
    """What the step search found (report section ``search``)."""

    section = "search"
    base_error: float
    final_error: float
    budget: float
    evaluations: int
    seconds: float
    inputs: str = "validation split"  # what the error was measured on
    samples: int = 0
    method: str = "uniform"  # uniform (one bits, largest tensors refined) or per-tensor (allocation.py)


BITS_LOW, BITS_HIGH, BITS_TOLERANCE = 0.25, 16.0, 0.125
PER_TENSOR_STEP, PER_TENSOR_FLOOR = 0.5, 0.25
REFINE_COVERAGE, REFINE_MAX = 0.9, 12


class WeightSwapEvaluator:
    """Error of the model on a split with some weights replaced, from one session."""

    def __init__(self, model: ir.Model, weight_names: list[str], split: Split):
        import onnxruntime as ort

        names = set(weight_names)
        # The swapped weights become graph inputs: serialize the graph without their bytes, so
        # building the session costs no copy of the model.
        proto = proto_without_bytes(model, names)
        kept = [t for t in proto.graph.initializer if t.name not in names]
        moved = [t for t in proto.graph.initializer if t.name in names]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        for t in moved:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 4  # model warnings are normalize's business; a failing probe run is handled (step rule)
        self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name
        self.data_inputs = [i.name for i in self.session.get_inputs() if i.name not in names]
        missing = [n for n in self.data_inputs if n not in split.inputs]
        if missing:
            raise DataError(f"validation data has no array for model input(s) {missing}")
        self.split = split
        self.reference: np.ndarray | None = None
        self.evaluations = 0

    def predictions(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        def predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return self.session.run([self.output], {**{k: inputs[k] for k in self.data_inputs}, **weights})[0]

        return predictions(predict, self.split, self.fixed_batch or 1000)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs declare, None where the batch dim is symbolic."""
        return fixed_batch(self.session, self.data_inputs)

    @property
    def batch(self) -> int:
        """Samples per run when every output is kept (batched_outputs): bounded memory."""
        return self.fixed_batch or 16

    def batched_outputs(self, weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        """Every output of the model on the split, batch by batch (``self.batch`` samples each)."""
        return [self.session.run(None, {**{k: b.inputs[k] for k in self.data_inputs}, **weights})
                for b in batches(self.split, self.batch)]

    def error(self, weights: dict[str, np.ndarray]) -> float:
        self.evaluations += 1
        pred = self.predictions(weights)
        if self.split.labels is not None:
            return error_rate(pred, truth_rows(self.split.labels))
        if self.reference is None:
            raise RuntimeError("set the reference predictions first (unlabeled data)")
        return error_rate(pred, self.reference)


def search_bits(model: ir.Model, weights: list[Weight], qpass, context) -> dict[str, float]:
    """Per-weight ``bits`` for quantize: the coarsest found within the error budget."""
    data = context.data
    split = data.val if data is not None else None
    if split is None:
        raise DataError("--max-error-increase needs data with a validation split (e.g. --data mnist)")
    started = time.perf_counter()
    evaluator = WeightSwapEvaluator(model, [w.name for w in weights], split)
    originals = {w.name: w.value.const_value.numpy() for w in weights}
    if split.labels is None:
        evaluator.reference = evaluator.predictions(originals)
    base = evaluator.error(originals)
    budget = base + context.max_error_increase + 1e-12
    say = search_say(context)
    say(f"original validation error {base:.4%}, budget {budget:.4%} ({len(split)} samples)")
    candidates = Candidates(weights, qpass)
    bits, final, _ = coarsest_bits(weights, qpass, evaluator.error, budget, say, "error", BITS_HIGH, candidates,
                                   unseen_among(tensors_to_refine(weights), evaluator, candidates, originals))
    return finish_search(context, weights, bits, base, final, budget, evaluator.evaluations, started, say,
                         "validation error", ".4%", "validation split", len(split))


def unseen_among(weights: list[Weight], evaluator: WeightSwapEvaluator, candidates: Candidates,
                 originals: dict[str, np.ndarray]) -> set[str]:
    """Those of ``weights`` whose rounding alone moves no output on the evaluator's split."""
    from onnxcomp.passes.quantize.allocation import sensitivities, unseen_in
    from onnxcomp.passes.quantize.probes import relative_change

    reference = evaluator.batched_outputs(originals)
    return unseen_in(sensitivities(weights, candidates, originals,
                                   lambda feed: relative_change(reference, evaluator.batched_outputs(feed))))


def finish_search(context, weights: list[Weight], bits: dict[str, float], base: float, final: float, budget: float,
                  evaluations: int, started: float, say, what: str, spec: str, inputs: str, samples: int,
                  method: str = "uniform") -> dict[str, float]:
    """Say how a search ended, note each weight's bits and record the report; returns ``bits``."""
    seconds = time.perf_counter() - started
    say(f"final {what} {final:{spec}} (budget {budget:{spec}}, {method} bits); {evaluations} evaluations in {seconds:.1f} s")
    for w in weights:
        context.note(w.name, bits=bits[w.name])
    context.record(StepSearchReport(base, final, budget, evaluations, round(seconds, 2), inputs, samples, method))
    return bits


def search_say(context):
    if not context.progress:
        return lambda msg: None
    return lambda msg: print(f"  quantize search: {msg}", file=sys.stderr, flush=True)


class Candidates:
    """Quantized versions of the weights by (weight, bits): what the search feeds the evaluator,
    and the latents' coded size estimate (``coded_bits_estimate``) it minimizes.

    Sizes are kept for every candidate; the dequantized arrays only up to CACHE_WEIGHT_COPIES
    times the weights' own bytes, least recently used first out (recomputed when needed again:
    quantization is deterministic). Keeping every array made the search hold one float copy of
    the model per bit width tried: 24 GiB, killed, for a 615M-parameter model (issue 13)."""

    CACHE_WEIGHT_COPIES = 1.0

    def __init__(self, weights: list[Weight], qpass):
        self.weights, self.qpass = weights, qpass
        self._sizes: dict[tuple[str, float], float] = {}
        self._arrays: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()
        self._bytes = 0
        # One copy plus the largest tensor: a refinement trial feeds one copy with one tensor
        # changed, and a cache of exactly one copy would evict, in feed order, each tensor the
        # same feed is about to read (every trial recomputing the rest of the model).
        nbytes = [w.value.const_value.nbytes for w in weights]
        self._budget = max(64 << 20, int(self.CACHE_WEIGHT_COPIES * sum(nbytes)) + max(nbytes, default=0))

    def get(self, w: Weight, b: float) -> tuple[np.ndarray, float]:
        """(dequantized weight, its latents' coded size estimate in bits, table included)."""
        key = (w.name, b)
        deq = self._arrays.get(key)
        if deq is not None:
            self._arrays.move_to_end(key)
            return deq, self._sizes[key]
        deq, size = self._quantized(w, b)
        self._store(key, deq, size)
        return deq, size

    def _quantized(self, w: Weight, b: float) -> tuple[np.ndarray, float]:
        k, _, deq = self.qpass.quantize(w, b)
        size = self._sizes.get((w.name, b))
        return deq, coded_bits_estimate(k) if size is None else size

    def _store(self, key: tuple[str, float], deq: np.ndarray, size: float) -> None:
        self._sizes[key] = size
        self._arrays[key] = deq
        self._bytes += deq.nbytes
        while self._bytes > self._budget and len(self._arrays) > 1:
            _, old = self._arrays.popitem(last=False)
            self._bytes -= old.nbytes

    def feed(self, bits: dict[str, float]) -> dict[str, np.ndarray]:
        """Every weight at its ``bits``: the cached ones as they are, the others quantized on every
        core (the quantizer's native kernel and numpy release the GIL)."""
        fed, missing = {}, []
        for w in self.weights:
            key = (w.name, bits[w.name])
            if key in self._arrays:
                self._arrays.move_to_end(key)  # in use: evicted last while the rest is stored
                fed[w.name] = self._arrays[key]
            else:
                missing.append(w)
        with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1) or 1) as pool:
            for w, (deq, size) in zip(missing, pool.map(lambda w: self._quantized(w, bits[w.name]), missing)):
                self._store((w.name, bits[w.name]), deq, size)
                fed[w.name] = deq
        return {w.name: fed[w.name] for w in self.weights}

    def size(self, bits: dict[str, float]) -> float:
        return sum(self._sizes[(w.name, bits[w.name])] if (w.name, bits[w.name]) in self._sizes
                   else self.get(w, bits[w.name])[1] for w in self.weights)

    def uniform(self, b: float) -> dict[str, float]:
        """Every weight at ``b`` (biases keep their extra bits)."""
        return {w.name: b + (self.qpass.bias_bits if w.role == "bias" else 0.0) for w in self.weights}


def coarsest_bits(weights: list[Weight], qpass, error, budget: float, say, what: str,
                  high: float = BITS_HIGH, candidates: Candidates | None = None,
                  unseen: set[str] = frozenset(), *, from_top: bool = False,
                  refinement=None) -> tuple[dict[str, float], float, float]:
    """The two phases of the module doc: a global ``bits`` by bisection in [BITS_LOW, ``high``],
    then per-tensor coarsening of the largest tensors but the ``unseen`` ones (rounding them
    changes nothing on these inputs, so coarsening would look free: an If branch the inputs do
    not take), keeping ``error(weights by name) <= budget``. Returns the bits per weight, the
    final error and the latents' estimated coded size in bits (``coded_bits_estimate``, summed).

    ``from_top``: the answer is expected at ``high`` (the peak grid's int8 anchor, where any
    coarser uniform step moves the outputs more than int8): the bisection's last point is tried
    first, one evaluation instead of log2(range / tolerance) when ``high`` is the answer, and
    the same answer as the bisection's otherwise. ``refinement`` (``allocation.RefinementModel``,
    when ``error`` is a relative output change): a trial that leaves the change where it was
    marks its tensor unseen (the trial measured it), for tensors no sensitivity was measured of."""
    c = candidates or Candidates(weights, qpass)
    lo, hi = BITS_LOW, high
    top = error(c.feed(c.uniform(hi)))
    if top > budget:
        say(f"even {hi} bits exceed the budget; using {hi}")
        bits = c.uniform(hi)
        return bits, top, c.size(bits)
    current, measured = top, {}
    if from_top:
        # The last point a bisection tries when every point fails: if it fails, so does every
        # coarser one, and ``high`` is the bisection's answer without the other five tries.
        last = lo
        while hi - last > BITS_TOLERANCE:
            last = (last + hi) / 2
        if last < hi:
            measured[last] = err = error(c.feed(c.uniform(last)))
            say(f"bits={last:.3f} {what} {err:.4%}")
            if err > budget:
                lo = hi
    while hi - lo > BITS_TOLERANCE:
        mid = (lo + hi) / 2
        err = measured[mid] if mid in measured else error(c.feed(c.uniform(mid)))
        say(f"bits={mid:.3f} {what} {err:.4%}")
        if err <= budget:
            hi, current = mid, err
        else:
            lo = mid
    bits = c.uniform(hi)
    refine = [w for w in tensors_to_refine(weights) if w.name not in unseen]
    say(f"global bits {hi:.3f}; refining the {len(refine)} largest tensors")
    for w in refine:
        while bits[w.name] - PER_TENSOR_STEP >= PER_TENSOR_FLOOR:
            old, new = bits[w.name], bits[w.name] - PER_TENSOR_STEP
            # Coarser is not always smaller: error-compensating rounding at very coarse steps can
            # spread more nonzero latents than it saves. Only a smaller tensor is worth a try.
            if c.get(w, new)[1] >= c.get(w, old)[1]:
                break
            trial = {**bits, w.name: new}
            err = error(c.feed(trial))
            if err > budget or (refinement is not None and refinement.unseen(w.name, old, new, current, err)):
                break
            bits, current = trial, err
        say(f"{w.name}: bits {bits[w.name]:.3f}")
    return bits, current, c.size(bits)


def tensors_to_refine(weights: list[Weight]) -> list[Weight]:
    """The largest weights, together at least REFINE_COVERAGE of all weight parameters and at
    most REFINE_MAX of them: where a per-tensor half bit saves bytes worth an evaluation."""
    big_first = sorted((w for w in weights if w.role == "weight"), key=lambda w: -int(np.prod(w.shape)))
    total = sum(int(np.prod(w.shape)) for w in big_first)
    chosen, covered = [], 0
    for w in big_first:
        if len(chosen) >= REFINE_MAX or covered >= REFINE_COVERAGE * total:
            break
        chosen.append(w)
        covered += int(np.prod(w.shape))
    return chosen
