"""Uniform quantization with per-channel steps: the arithmetic of ``quantize`` and its search.

See passes/quantize.py for the step rule and why it is what it is.
"""

from __future__ import annotations

import math

import numpy as np

SQRT12 = math.sqrt(12.0)


def channel_rms(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """RMS over all axes but ``axes`` (kept as size-1 dims for broadcasting); a scalar if none."""
    w64 = w.astype(np.float64)
    reduce = tuple(i for i in range(w.ndim) if i not in axes)
    return np.sqrt(np.mean(w64 * w64, axis=reduce, keepdims=bool(axes)))


def step_for(w: np.ndarray, axes: tuple[int, ...], bits: float) -> np.ndarray:
    """The float32 step (per channel along ``axes``, else scalar) for a target ``bits``."""
    rms = channel_rms(w, axes)
    step = rms * SQRT12 * 2.0 ** (-bits)
    # An all-zero channel quantizes to zeros under any step; 1.0 keeps the decode exact.
    step = np.where(step > 0, step, 1.0)
    return np.asarray(step, dtype=np.float32)


def quantize_array(w: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latents int32, dequantized in w's dtype) exactly as the decode subgraph computes it."""
    k = np.rint(w.astype(np.float64) / step.astype(np.float64))
    limit = 2**31 - 1
    k = np.clip(k, -limit, limit).astype(np.int32)
    step_t = step.astype(w.dtype)
    return k, (k.astype(w.dtype) * step_t).astype(w.dtype)




def dequantized(w: np.ndarray, step: np.ndarray) -> np.ndarray:
    return quantize_array(w, step)[1]
