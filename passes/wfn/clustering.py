"""Weight fixing (WFN, Subia-Waud & Dasmahapatra, ECCV 2022): the clustering half, in numpy.

All weights of the network are one flat vector. Each round fixes a growing share of it to
"centres": zero and signed powers of two, or sums of ``order + 1`` powers of two where no single
power fits. The greedy step takes the centre that is nearest to the most free weights, sorts those
weights by relative distance |w - c| / |w| and fixes the longest prefix whose running mean stays
within the round's threshold a_t = max(delta, delta * (T - t)); weights below gamma0 go to zero
first. The last round (share 1.0) fixes what no centre takes within the threshold to its nearest
centre of the highest order: every weight ends on a centre.

Centres are exact in float32 (a power of two, or a sum of two within 24 bits of each other), so a
fixed weight is a codebook entry bit for bit. Retraining between rounds is the driver's job
(``retraining.py``); this module only decides which weights are fixed, and to what.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp.coding import entropy_bits

PAPER_SCHEDULE = (0.30, 0.60, 0.80, 0.90, 0.95, 0.975, 0.99, 0.9975, 0.999, 1.0)


def candidates(gamma0: float, max_abs: float, order: int) -> np.ndarray:
    """Sorted centres: 0 and +-2^n for n from log2(gamma0) - order - 1 up to the first power at or
    above ``max_abs``; with order k also every sum of up to k + 1 distinct such powers."""
    lo = int(math.floor(math.log2(gamma0))) - order - 1
    hi = int(math.ceil(math.log2(max(max_abs, gamma0))))
    powers = [2.0**n for n in range(lo, hi + 1)]
    sums = {0.0}
    for _ in range(order + 1):
        sums |= {s + p for s in sums for p in powers if s < p}  # distinct powers, each sum once
    positive = np.array(sorted(sums - {0.0}))
    return np.concatenate([-positive[::-1], [0.0], positive]).astype(np.float32)


def threshold(round_index: int, rounds: int, delta: float) -> float:
    """a_t = max(delta, delta * (T - t)) for round t = round_index + 1 of T (the paper counts from
    1: round 1 allows (T - 1) delta, rounds T - 1 and T delta)."""
    return max(delta, delta * (rounds - round_index - 1))


def fix_round(w: np.ndarray, fixed: np.ndarray, target: int, limit: float, gamma0: float, order: int,
              force_rest: bool = False) -> None:
    """Fix free weights of ``w`` (float32, flat) in place until ``target`` are fixed or no centre
    can take more within the mean relative distance ``limit``: ``w`` takes the centre, ``fixed``
    becomes True. Weights with |w| < gamma0 are fixed to zero first, smallest first. Centres of
    order k + 1 are tried only once every centre of order k is blocked. ``force_rest`` (the last
    round) then fixes what is still short of ``target`` to its nearest centre of the highest order."""
    free = np.flatnonzero(~fixed)
    tiny = free[np.abs(w[free]) < gamma0]
    tiny = tiny[np.argsort(np.abs(w[tiny]), kind="stable")]
    take = tiny[: max(0, target - int(fixed.sum()))]
    w[take] = 0.0
    fixed[take] = True
    max_abs = float(np.abs(w).max()) if w.size else 0.0
    for current_order in range(order + 1):
        centres = candidates(gamma0, max_abs, current_order)
        blocked = np.zeros(centres.size, bool)
        while int(fixed.sum()) < target:
            free = np.flatnonzero(~fixed)
            if free.size == 0:
                return
            nearest = nearest_centre(w[free], centres)
            counts = np.bincount(nearest, minlength=centres.size)
            counts[blocked] = 0
            if counts.max() == 0:
                break  # every centre is blocked at this order: try sums of more powers
            c = int(counts.argmax())
            members = free[nearest == c]
            rel = relative_distance(w[members], centres[c])
            by_distance = np.argsort(rel, kind="stable")
            running = np.cumsum(rel[by_distance]) / np.arange(1, by_distance.size + 1)
            n_ok = int(np.searchsorted(running > limit, True))  # running is not monotone; first breach ends the prefix
            n_ok = min(n_ok, target - int(fixed.sum()))
            if n_ok == 0:
                blocked[c] = True
                continue
            chosen = members[by_distance[:n_ok]]
            w[chosen] = centres[c]
            fixed[chosen] = True
    if force_rest and int(fixed.sum()) < target:
        centres = candidates(gamma0, max_abs, order)
        rest = np.flatnonzero(~fixed)
        rest = rest[np.argsort(relative_distance_to_nearest(w[rest], centres), kind="stable")][: target - int(fixed.sum())]
        w[rest] = centres[nearest_centre(w[rest], centres)]
        fixed[rest] = True


def nearest_centre(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest (absolute distance) of the sorted ``centres`` for each value."""
    right = np.clip(np.searchsorted(centres, values), 1, centres.size - 1)
    left = right - 1
    return np.where(np.abs(values - centres[left]) <= np.abs(centres[right] - values), left, right)


def relative_distance_to_nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return relative_distance(values, centres[nearest_centre(values, centres)])


def relative_distance(values: np.ndarray, centre: float | np.ndarray) -> np.ndarray:
    return np.abs(values - centre) / np.maximum(np.abs(values), np.float32(1e-12))


def power_terms(values: np.ndarray) -> np.ndarray:
    """How many powers of two each value is a sum of (0 for zero): set bits of the float32 mantissa."""
    v = np.abs(np.asarray(values, np.float32))
    mantissa, _ = np.frexp(v)  # v = mantissa * 2^e, mantissa in [0.5, 1)
    ints = np.round(mantissa.astype(np.float64) * 2.0**24).astype(np.int64)
    return np.array([bin(int(i)).count("1") for i in ints], np.int64) if ints.size else np.zeros(0, np.int64)


@dataclass(frozen=True)
class CodebookStats:
    """What the report says about a fixed network (issue 4): over all fixed weights pooled."""

    weights: int
    unique: int
    zeros: float                   # share of weights that are 0
    power_of_two: float            # share of nonzero weights that are +-2^n
    sum_of_two: float              # share of nonzero weights that are a sum of two powers
    entropy_bits: float            # pooled histogram, bits per weight
    entropy_nonzero_bits: float    # the same over nonzero weights only
    codebook: tuple[float, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> CodebookStats:
        values = np.asarray(values, np.float32).ravel()
        book, counts = np.unique(values, return_counts=True)
        terms = power_terms(book)
        nonzero = max(1, int(counts[book != 0].sum()))
        return cls(
            weights=int(values.size), unique=int(book.size), zeros=float(counts[book == 0].sum() / max(1, values.size)),
            power_of_two=float(counts[terms == 1].sum() / nonzero), sum_of_two=float(counts[terms == 2].sum() / nonzero),
            # + 0.0: a one-value histogram has entropy -0.0, printed as "-0.000"
            entropy_bits=entropy_bits(values) + 0.0, entropy_nonzero_bits=entropy_bits(values[values != 0]) + 0.0,
            codebook=tuple(float(x) for x in book),
        )
