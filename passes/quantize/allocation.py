"""Per-tensor steps: spend an output-change budget where it buys the most bytes.

One ``bits`` for every tensor (the uniform search) spends the budget evenly, though tensors differ
by orders of magnitude in how much their rounding moves the outputs per parameter: MiniLM's
position embeddings (24k values) move its outputs as much at 6 bits as its whole word table
(11.7M values) does, and its last feed-forward layer hardly at all. Measured on the corpus, each
tensor's own output change adds up in squares to the change of all of them together (MiniLM,
probe inputs: 9.66% predicted, 9.95% measured), so the budget can be split by the textbook
rule for independent noise:

- measure ``c_i``, the output change when tensor i alone is rounded at SENSITIVITY_BITS (the rest
  exact): one evaluation per tensor, the largest MEASURE_MAX of them;
- each bit finer halves a tensor's change and costs about one bit per value, so the rate for a
  given total change sum_i c_i**2 4**(SENSITIVITY_BITS - b_i) is least when every tensor's share
  of it is proportional to its size n_i: b_i = SENSITIVITY_BITS + log2(c_i**2 N / (n_i B**2)) / 2;
- one offset added to every b_i is then searched (bisection, measured as a whole, not predicted)
  for the coarsest allocation within the budget, bits clipped to [BITS_MIN, BITS_MAX].

Two kinds of tensor keep the uniform search's bits, because the inputs measure them badly and
no evidence is not safety:
- tensors the inputs cannot see (no measurable change: an If branch the probes do not take);
- tables read row by row (Gather): the inputs read a few hundred of their rows, real inputs read
  some rows far more than others (a [CLS] or pad token in every sequence). MiniLM's word table,
  allocated 4.6 bits on probe inputs, alone lost 1.6x int8's whole cosine on real sentences;
  at the uniform search's 8 bits it costs 1.5% of it.
The caller keeps whichever of this and the uniform search is smaller.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.weights import Weight
from onnxcomp.passes.quantize.step_search import BITS_TOLERANCE, Candidates

SENSITIVITY_BITS = 6.0  # four times int8's step: changes well above float noise, still small
BITS_MIN, BITS_MAX = 3.0, 12.0  # below 3 bits the one-bit-per-bit rate model fails; above 12 nothing is gained
BITS_GRID = 8  # allocated bits are multiples of 1/8 (and so are cached candidates)
MEASURE_MAX = 256  # tensors measured one by one (largest first); smaller ones keep the uniform bits
UNSEEN = 1e-6  # relative output change below which a tensor counts as not seen by the inputs
OFFSET_LOW, OFFSET_HIGH = -4.0, 6.0


def allocatable(weights: list[Weight]) -> list[Weight]:
    """The weights allocation measures: the largest MEASURE_MAX, tables and biases aside."""
    return sorted((w for w in weights if w.role == "weight" and not read_by_rows(w)),
                  key=lambda w: -w.value.const_value.size)[:MEASURE_MAX]


def sensitivities(weights: list[Weight], candidates: Candidates, originals: dict[str, np.ndarray],
                  change) -> dict[str, float]:
    """Output change with each of ``weights`` alone at SENSITIVITY_BITS (the rest ``originals``)."""
    return {w.name: change({**originals, w.name: candidates.get(w, SENSITIVITY_BITS)[0]}) for w in weights}


def unseen_in(changes: dict[str, float]) -> set[str]:
    """The measured weights whose rounding moves no output on the inputs."""
    return {name for name, c in changes.items() if c <= UNSEEN}


class RefinementModel:
    """Which tensors the uniform search's per-tensor refinement (``step_search.coarsest_bits``)
    may coarsen, on a relative output change: not the unseen ones. A tensor whose sensitivity was
    measured (``changes``) is unseen as ``unseen_in`` says; one not measured is unseen when its
    own refinement trial moved the change (either way, in squares) by no more than a tensor at
    the UNSEEN sensitivity would (a share of (c * 2**(SENSITIVITY_BITS - bits))**2, the module
    doc's model): the trial is its sensitivity measurement, so the refinement needs no
    sensitivity pass of its own, and an unseen tensor keeps its bits (no evidence is not safety)."""

    def __init__(self, changes: dict[str, float]):
        self.changes = changes

    @staticmethod
    def share(c: float, bits: float) -> float:
        return (c * 2.0 ** (SENSITIVITY_BITS - bits)) ** 2

    def unseen(self, name: str, old: float, new: float, current: float, err: float) -> bool:
        if name in self.changes:
            return self.changes[name] <= UNSEEN
        return abs(err * err - current * current) <= self.share(UNSEEN, new) - self.share(UNSEEN, old)


def read_by_rows(w: Weight) -> bool:
    """``w`` is a table every reader indexes (Gather): an embedding."""
    return bool(w.consumers) and all(c.startswith("Gather ") for c in w.consumers)


def base_allocation(sizes: dict[str, int], changes: dict[str, float], budget: float) -> dict[str, float]:
    """The module doc's b_i for the seen tensors (before the offset and clipping)."""
    total = sum(sizes.values())
    return {name: SENSITIVITY_BITS + 0.5 * float(np.log2(c * c * total / (sizes[name] * budget * budget)))
            for name, c in changes.items()}


def allocated_bits(weights: list[Weight], candidates: Candidates, changes: dict[str, float], change,
                   budget: float, fallback: dict[str, float], say) -> tuple[dict[str, float], float, float] | None:
    """Per-tensor bits within ``budget`` (module doc) from the ``sensitivities`` ``changes``, or
    None when even the finest offset exceeds it. ``fallback`` gives the bits of the tensors not
    allocated (unseen, unmeasured, tables, biases). Returns (bits, final change, estimated latent
    bits)."""
    unseen = unseen_in(changes)
    seen = {name: c for name, c in changes.items() if name not in unseen}
    if not seen:
        return None
    sizes = {w.name: int(w.value.const_value.size) for w in weights if w.name in seen}
    base = base_allocation(sizes, seen, budget)
    if unseen:
        say(f"allocation: {len(unseen)} tensor(s) move no output on these inputs and keep the uniform bits")

    def at(offset: float) -> dict[str, float]:
        bits = dict(fallback)
        for name, b in base.items():
            bits[name] = float(np.clip(np.round((b + offset) * BITS_GRID) / BITS_GRID, BITS_MIN, BITS_MAX))
        return bits

    top = change(candidates.feed(at(OFFSET_HIGH)))
    if top > budget:
        say(f"allocation: even offset +{OFFSET_HIGH:g} exceeds the budget ({top:.3%})")
        return None
    lo, hi, best = OFFSET_LOW, OFFSET_HIGH, top
    while hi - lo > BITS_TOLERANCE:
        mid = (lo + hi) / 2
        err = change(candidates.feed(at(mid)))
        say(f"allocation offset {mid:+.3f}: output change {err:.4%}")
        if err <= budget:
            hi, best = mid, err
        else:
            lo = mid
    bits = at(hi)
    return bits, best, candidates.size(bits)
