"""Uniform quantization with per-channel steps: the arithmetic of ``quantize`` and its search.

See ``quantize.py`` beside this file for the step rule and why it is what it is.
"""

from __future__ import annotations

import math

import numpy as np

from onnxcomp.runtime import native

SQRT12 = math.sqrt(12.0)


def channel_rms(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """RMS over all axes but ``axes`` (kept as size-1 dims for broadcasting); a scalar if none."""
    w64 = w.astype(np.float64)
    reduce = tuple(i for i in range(w.ndim) if i not in axes)
    return np.sqrt(np.mean(w64 * w64, axis=reduce, keepdims=bool(axes)))


def channel_peak(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """max |w| over all axes but ``axes`` (kept as size-1 dims); a scalar if none."""
    reduce = tuple(i for i in range(w.ndim) if i not in axes)
    # abs and max are exact in the weight's own type: widen the peaks only, not a copy of w.
    exact = w if w.dtype in (np.float16, np.float32, np.float64) else w.astype(np.float64)
    return np.max(np.abs(exact), axis=reduce, keepdims=bool(axes)).astype(np.float64) if w.size else np.float64(0.0)


INT8_LEVELS = 127  # symmetric int8, as onnxruntime's quantizers store weights


def step_for(w: np.ndarray, axes: tuple[int, ...], bits: float, grid: str = "rms") -> np.ndarray:
    """The float32 step (per channel along ``axes``, else scalar) for a target ``bits``.

    grid ``rms``: step = rms * sqrt(12) * 2**-bits (signal-to-noise ``bits`` in every channel).
    grid ``peak``: step = peak / 127 * 2**(8 - bits), so ``bits`` 8 is exactly the grid of
    symmetric int8 weights (what onnxruntime's int8 stores) and each bit less doubles the step.
    """
    return step_from_scale(channel_scale(w, axes, grid), bits, grid)


def channel_scale(w: np.ndarray, axes: tuple[int, ...], grid: str) -> np.ndarray:
    """What a grid's steps are proportional to: each channel's peak or rms (``step_from_scale``).
    It does not depend on ``bits``, so a search over bits measures it once per tensor."""
    return channel_peak(w, axes) if grid == "peak" else channel_rms(w, axes)


def step_from_scale(scale: np.ndarray, bits: float, grid: str) -> np.ndarray:
    """``step_for`` from the tensor's ``channel_scale``."""
    if grid == "peak":
        step = scale / INT8_LEVELS * 2.0 ** (8.0 - bits)
    else:
        step = scale * SQRT12 * 2.0 ** (-bits)
    # An all-zero channel quantizes to zeros under any step; 1.0 keeps the decode exact.
    step = np.where(step > 0, step, 1.0)
    return np.asarray(step, dtype=np.float32)


# Lagrangian slope of an entropy-coded uniform quantizer at its operating point, in squared
# steps per bit: D(R) ~ 2**(-2R) / 12 gives -dD/dR = 2 ln 2 / 12.
RD_SLOPE = 2.0 * math.log(2.0) / 12.0
RDO_ITERATIONS = 3


def rd_round(x: np.ndarray, importance: np.ndarray | float, lam: float) -> np.ndarray:
    """Rate-distortion optimized rounding of ``x`` (weights in units of the step).

    Each value picks, among round(x), one step toward zero, and zero, the integer minimizing
    importance * (x - k)**2 + lam * bits(k), with bits(k) from the histogram of the current
    choice (refined a few times). importance 1 and lam 0 give plain rounding; a weight of
    importance 0 (it reads a dead input) costs only bits and goes to the cheapest candidate.
    Deterministic: ties keep the earlier candidate.
    """
    k = np.rint(x)
    if lam <= 0 or k.size == 0:
        return k
    toward_zero = k - np.sign(k)
    candidates = (k, toward_zero, np.zeros_like(k))
    h = np.broadcast_to(np.asarray(importance, dtype=np.float64), x.shape)
    for _ in range(RDO_ITERATIONS):
        lo = int(k.min())
        counts = np.bincount((k - lo).astype(np.int64).reshape(-1)).astype(np.float64) + 0.5
        bits = -np.log2(counts / counts.sum())

        def cost(c: np.ndarray) -> np.ndarray:
            idx = np.clip((c - lo).astype(np.int64), 0, bits.size - 1)
            rate = np.where((c - lo >= 0) & (c - lo < bits.size), bits[idx], bits.max() + 1.0)
            return h * (x - c) ** 2 + lam * rate

        costs = np.stack([cost(c) for c in candidates])
        best = np.argmin(costs, axis=0)
        new = np.choose(best, candidates)
        if np.array_equal(new, k):
            break
        k = new
    return k


def decode_dtype(dtype: np.dtype) -> np.dtype:
    """The type the decode subgraph multiplies in: the weight's own, float32 for bfloat16 (no CPU
    kernel multiplies bfloat16; the product is cast back)."""
    return np.dtype(np.float32) if np.dtype(dtype).name == "bfloat16" else np.dtype(dtype)


def quantize_array(w: np.ndarray, step: np.ndarray, importance: np.ndarray | float = 1.0,
                   lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(latents int32, dequantized in w's dtype) exactly as the decode subgraph computes it."""
    if lam <= 0 and (fast := native.quantize_nearest(w, step)) is not None:
        return fast[0], fast[1]  # plain rounding of float32, in the native library: same bits
    k = rd_round(w.astype(np.float64) / step.astype(np.float64), importance, lam)
    limit = 2**31 - 1
    k = np.clip(k, -limit, limit).astype(np.int32)
    return k, dequantize(k, step, w.dtype)


def dequantize(k: np.ndarray, step: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``k * step`` in ``dtype`` exactly as the decode subgraph computes it (in decode_dtype)."""
    compute = decode_dtype(dtype)
    return (k.astype(compute) * step.astype(compute)).astype(dtype)



