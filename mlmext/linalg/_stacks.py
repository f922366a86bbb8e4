"""Small dense kernels of the factorization: stacks of per-level q x q blocks, triangular solves.

A block-diagonal matrix with one ``q x q`` block per level is held as an ``(m, q, q)`` array (a
*stack*); these helpers multiply, invert and reduce stacks without a Python loop over levels, and
wrap the few LAPACK calls the factors make on their dense parts (without scipy's per-call checks,
which cost more than the arithmetic on the small matrices of an objective evaluation).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from .._blas import inverse_threads


def dense_Z(b):
    """Dense n x (m q) model matrix of a block (as ``b.Z()``), for small systems."""
    n, q = b.X.shape
    Z = np.zeros((n, b.m * q))
    Z[np.arange(n)[:, None], b.codes[:, None] * q + np.arange(q)[None, :]] = b.X
    return Z


def block_cross(X, codes, m, w):
    """Per-level cross-products sum_i w_i x_i x_i' as an (m, q, q) array."""
    n, q = X.shape
    out = np.empty((m, q, q))
    Xw = X * w[:, None]
    for j in range(q):
        for k in range(j, q):
            v = np.bincount(codes, weights=Xw[:, j] * X[:, k], minlength=m)
            out[:, j, k] = v
            out[:, k, j] = v
    return out


def rmul(X, R):
    """``X_g R`` for a stack X (m, a, b) and one matrix R, as one matrix product."""
    m, a, b = X.shape
    return (X.reshape(m * a, b) @ R).reshape(m, a, -1)


def lmul(L, X):
    """``L X_g`` for one matrix L and a stack X (m, a, b), as one matrix product."""
    m, a, b = X.shape
    return np.swapaxes((np.swapaxes(X, 1, 2).reshape(m * b, a) @ L.T).reshape(m, b, -1), 1, 2)


def sandwich(X, L, R):
    """``L' X_g R`` for each matrix of the stack X."""
    return lmul(L.T, rmul(X, R))


def spd_inv_logdet(M):
    """Inverses and the summed log-determinants of a stack of symmetric positive definite
    matrices (m, q, q), from their lower triangles; LinAlgError if one is not definite.
    Closed forms for q <= 2 (the common scalar and intercept-slope blocks)."""
    m, q, _ = M.shape
    if q == 1:
        d = M[:, 0, 0]
        if not (d > 0).all():
            raise np.linalg.LinAlgError("block not positive definite")
        return (1.0 / d).reshape(m, 1, 1), float(np.log(d).sum())
    if q == 2:
        a, b, c = M[:, 0, 0], M[:, 1, 0], M[:, 1, 1]
        det = a * c - b * b
        if not ((a > 0).all() and (det > 0).all()):
            raise np.linalg.LinAlgError("block not positive definite")
        inv = np.empty_like(M)
        inv[:, 0, 0] = c / det
        inv[:, 1, 1] = a / det
        inv[:, 0, 1] = inv[:, 1, 0] = -b / det
        return inv, float(np.log(det).sum())
    L = np.linalg.cholesky(M)
    Li = np.linalg.inv(L)
    return np.swapaxes(Li, 1, 2) @ Li, 2.0 * float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())


def tri_inv(L):
    """Inverse of the lower triangle of ``L`` (its strict upper triangle is ignored)."""
    with inverse_threads(L.shape[0]):
        Li, info = linalg.lapack.dtrtri(L, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return np.tril(Li)


def solve_lower_t(L, b):
    """Solve ``L' x = b`` for lower-triangular ``L``: the LAPACK call ``solve_triangular`` makes
    for a C-ordered ``L`` (``trtrs`` on its transpose), without that wrapper's ~20 us of checks."""
    if L.shape[0] == 0:                          # LAPACK rejects empty systems
        return np.zeros(0)
    x, info = linalg.lapack.dtrtrs(L.T, b, lower=0, trans=0)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return x


def level_gram(E):
    """``sum_g E_g E_g'`` for a stack E (m, q, k): ``np.tensordot(E, E, ([0, 2], [0, 2]))`` as
    one matrix product, without tensordot's overhead."""
    F = np.swapaxes(E, 0, 1).reshape(E.shape[1], -1)
    return F @ F.T


def blockdiag_sparse(B):
    """(m, q, q) array -> sparse block-diagonal (m q) x (m q) matrix."""
    m, q, _ = B.shape
    return sparse.bsr_matrix((B, np.arange(m), np.arange(m + 1)), shape=(m * q, m * q)).tocsr()
