"""Error-compensating rounding (GPTQ, Frantar et al. 2023) on onnxcomp's fixed step grid.

Rounding each weight on its own ignores that errors of weights reading correlated inputs can
cancel. GPTQ rounds the input features of a layer one at a time and spreads each rounding error
onto the features not yet rounded, using the inverse of H = E[x x^T] (the layer's input
covariance), which minimizes the expected output error ||X (W - W_hat)||^2 greedily. With the
steps fixed, the result is still integers k times the step, so the representation, the packing
and the runtime are unchanged; the step search can then choose coarser steps for the same error.

Conventions: the weight is a matrix [K input features, N outputs]; ``step`` broadcasts against
a row (one step per output, or a scalar). Features are processed in order of decreasing H
diagonal ("act order"), in blocks of BLOCK with the lazy update of the original paper.
"""

from __future__ import annotations

import numpy as np

BLOCK = 128


def gptq_round(w: np.ndarray, h: np.ndarray, step: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Integer matrix k [K, N] with k * step close to ``w`` in the output-error sense of ``h``."""
    W = w.astype(np.float64).copy()
    step = np.broadcast_to(np.asarray(step, np.float64).reshape(1, -1) if np.ndim(step) else np.float64(step), (1, W.shape[1]))
    H = np.array(h, dtype=np.float64)
    K = W.shape[0]
    diag = np.diag(H).copy()
    dead = diag <= 0
    H[dead, dead] = 1.0  # inputs that are always zero: any weight works, zero is cheapest
    W[dead, :] = 0.0
    H[np.diag_indices(K)] += damp * float(np.mean(np.diag(H)))
    perm = np.argsort(-np.diag(H), kind="stable")
    W, H = W[perm], H[np.ix_(perm, perm)]
    # Upper Cholesky factor of H^-1: row i holds how feature i's error propagates to later ones.
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.empty_like(W)
    for b0 in range(0, K, BLOCK):
        b1 = min(b0 + BLOCK, K)
        W1 = W[b0:b1].copy()
        errors = np.empty_like(W1)
        for i in range(b1 - b0):
            q = np.rint(W1[i] / step[0])
            Q[b0 + i] = q
            err = (W1[i] - q * step[0]) / U[b0 + i, b0 + i]
            W1[i + 1 :] -= np.outer(U[b0 + i, b0 + i + 1 : b1], err)
            errors[i] = err
        W[b1:] -= U[b0:b1, b1:].T @ errors
    k = np.empty_like(Q)
    k[perm] = Q
    return k
