"""The start of a fit with several grouping factors: each factor's model alone.

:meth:`mlmext.lmm.LinearMixedModel._start_theta` optimizes each random-effects block with the
others left out; with one block the system is block-diagonal plus ``[X y]``, so its criterion
comes from per-level cross-products (:func:`block_alone_cross`) at O(levels) per evaluation
(:func:`one_block_criterion`).
"""
from __future__ import annotations

import numpy as np

from ..linalg._stacks import block_cross, sandwich, spd_inv_logdet
from ..optimize.lbfgsb import lbfgsb

__all__ = ["block_alone_cross", "one_block_criterion", "fit_block_alone", "GRAM_MAX_ENTRIES", "GROUPED_MAX_VALUES"]


def block_alone_cross(blk, XY, w):
    """Cross-products of the model with one random-effects block alone, from the rows:
    ``Z_g' W Z_g`` (m, q, q), ``Z_g' W [X y]`` by component (q, m, p + 1), ``[X y]' W [X y]``.

    The start of a fit with several blocks optimizes each block alone; with one block the
    system is block-diagonal plus ``[X y]``, so its cross-products come from bincounts over
    the rows (no sparse factor to set up) and an evaluation costs O(levels), not O(n).
    """
    m, q, k = blk.m, blk.q, XY.shape[1]
    A = block_cross(blk.X, blk.codes, m, w)
    WXY = XY if np.all(w == 1.0) else XY * w[:, None]      # unit weights: no n x (p + 1) copy
    C = np.empty((q, m, k))
    for a in range(q):
        for j in range(k):
            C[a, :, j] = np.bincount(blk.codes, weights=blk.X[:, a] * WXY[:, j], minlength=m)
    return A, C, XY.T @ WXY


#: the start's one-block criterion precomputes the per-level outer products of ``Z_g' W [X y]``
#: (levels x pairs of template components x (p + 1)^2 entries) when they hold at most this many
GRAM_MAX_ENTRIES = 4_000_000
#: ... and for a scalar block whose levels share few values of ``Z_g' W Z_g`` (unweighted
#: intercepts: the level counts), their sums per value when there are at most this many values
GROUPED_MAX_VALUES = 512


def one_block_criterion(cross, nu, reml):
    """``lam -> criterion`` (up to a constant) of the model with one block alone, from its
    cross-products (:func:`block_alone_cross`).

    With ``B_g = Lambda M_g^-1 Lambda'`` the profiled system is ``S = G - sum_g C_g' B_g C_g``
    (``C_g = Z_g' W [X y]``, q x (p + 1)).  The sum is linear in the entries of ``B_g``, so the
    outer products of the rows of ``C_g`` are formed once and a call costs one product of them
    with ``B`` (the start evaluates this ~20-150 times); for a scalar block whose levels share
    few values of ``a_g = Z_g' W Z_g``, ``B_g`` depends on ``a_g`` only and the outer products
    are summed per value first."""
    A, C, G = cross
    m, q, _ = A.shape
    k = G.shape[0]
    if q == 1:
        vals, inv, cnt = np.unique(A[:, 0, 0], return_inverse=True, return_counts=True)
        if vals.size <= GROUPED_MAX_VALUES and 4 * vals.size <= m:
            Cs = C[0][np.argsort(inv.ravel(), kind="stable")]
            ends = np.cumsum(cnt)
            D = np.stack([Cs[e - c:e].T @ Cs[e - c:e] for c, e in zip(cnt, ends)]).reshape(vals.size, k * k)
            cntf = cnt.astype(float)

            def crit_grouped(lam):
                t2 = lam[0, 0] ** 2
                d = 1.0 + t2 * vals
                if not d.min() > 0:
                    return np.inf
                return _profiled_tail(G - ((t2 / d) @ D).reshape(k, k), cntf @ np.log(d), nu, reml)
            return crit_grouped
    npairs = q * (q + 1) // 2
    if m * npairs * k * k <= GRAM_MAX_ENTRIES:
        a_idx, b_idx = np.tril_indices(q)
        # E[g, (a, b)] = C_ga' C_gb + C_gb' C_ga for a > b (B_g symmetric), C_ga' C_ga on the diagonal
        E = C[a_idx][:, :, :, None] * C[b_idx][:, :, None, :]
        off = a_idx != b_idx
        E[off] += np.swapaxes(E[off], 2, 3)
        if q == 2:
            return _two_effect_criterion(A, E.reshape(npairs * m, k * k), G, nu, reml)
        E = np.ascontiguousarray(np.swapaxes(E, 0, 1)).reshape(m * npairs, k * k)

        def crit_gram(lam):
            inv = _level_inverses(A, lam)
            if inv is None:
                return np.inf
            Minv, logdet = inv
            B = sandwich(Minv, lam.T, lam.T)                 # Lambda M_g^-1 Lambda'
            return _profiled_tail(G - (B[:, a_idx, b_idx].ravel() @ E).reshape(k, k), logdet, nu, reml)
        return crit_gram

    def crit(lam):
        # per level: S = G - sum_g T_g' M_g^-1 T_g with T_g = Lambda' C_g; by component, so
        # each step is an operation on (m, p + 1) arrays (no stacks of tiny matrix products)
        inv = _level_inverses(A, lam)
        if inv is None:
            return np.inf
        Minv, logdet = inv
        T = [sum(lam[b, a] * C[b] for b in range(q)) for a in range(q)]
        S = G.copy()
        for a in range(q):
            U = sum(Minv[:, a, b, None] * T[b] for b in range(q))
            S -= U.T @ T[a]
        return _profiled_tail(S, logdet, nu, reml)
    return crit


def _level_inverses(A, lam):
    """``M_g^-1`` and ``sum_g log|M_g|`` for ``M_g = Lambda' A_g Lambda + I``, or None where
    an ``M_g`` is not positive definite."""
    M = sandwich(A, lam, lam)
    q = lam.shape[0]
    M[:, np.arange(q), np.arange(q)] += 1.0
    try:
        return spd_inv_logdet(M)
    except np.linalg.LinAlgError:
        return None


def _two_effect_criterion(A, E, G, nu, reml):
    """The one-block criterion of a block of two effects per level in closed form: the entries
    (00, 10, 11) of ``M_g = Lambda' A_g Lambda + I`` and of ``B_g = Lambda M_g^-1 Lambda'``
    are linear maps (3 x 3, from Lambda) of those of ``A_g`` and of ``M_g^-1``, so a call is
    a dozen operations on (3, levels) arrays.  ``E``: the outer products, pair-major."""
    a_idx, b_idx = np.tril_indices(2)
    Av = A[:, a_idx, b_idx].T.copy()                             # (3, m): a00, a10, a11
    off = (a_idx != b_idx)[None, :]
    i, j = a_idx[:, None], b_idx[:, None]
    c, d = a_idx[None, :], b_idx[None, :]
    k = G.shape[0]

    def coef(F):
        """``X -> F' X F`` on the (00, 10, 11) entries of symmetric 2 x 2 matrices."""
        return F[c, i] * F[d, j] + off * F[d, i] * F[c, j]

    def crit_two(lam):
        M = coef(lam) @ Av
        M[0] += 1.0
        M[2] += 1.0
        det = M[0] * M[2] - M[1] * M[1]
        if not ((M[0] > 0).all() and (det > 0).all()):
            return np.inf
        Minv = np.stack([M[2], -M[1], M[0]])
        Minv /= det
        B = coef(lam.T) @ Minv                                   # Lambda M^-1 Lambda'
        return _profiled_tail(G - (B.ravel() @ E).reshape(k, k), np.log(det).sum(), nu, reml)
    return crit_two


def _profiled_tail(S, logdet, nu, reml):
    """The one-block criterion from the Schur complement ``S`` of [X y] and log det of the
    random-effects part (inf where ``S`` is numerically indefinite)."""
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return np.inf
    d = np.diagonal(L)
    ld = logdet + (2.0 * np.log(d[:-1]).sum() if reml else 0.0)
    return ld + nu * np.log(d[-1] ** 2)


#: the one-block fit's criterion calls at most (each ~3 ms at 1M rows)
BLOCK_ALONE_MAXFUN = 200


def fit_block_alone(dev, x0, maxfun=BLOCK_ALONE_MAXFUN):
    """Minimize a one-block criterion ``dev`` (of the block's theta, scaled) from ``x0``:
    L-BFGS-B on forward differences, without bounds (the criterion is even in each column of
    the block's template; the caller maps the end point to the canonical theta).

    Nelder-Mead took 150-200 calls on the ratings' block of two correlated effects (its
    simplex collapsed on the zero bound of the slope's SD and was restarted off it); this takes
    ~45 and ends lower.  Returns the end point, or None where the criterion was not finite
    along the way (the caller falls back to Nelder-Mead).
    """
    x0 = np.asarray(x0, dtype=float)
    calls = [0]

    def fg(x):
        f0 = dev(x)
        calls[0] += 1
        g = np.zeros(x.size)
        if not np.isfinite(f0):
            return f0, g
        for i in range(x.size):
            h = 1e-6 * max(1.0, abs(x[i]))
            xi = x.copy()
            xi[i] += h
            g[i] = (dev(xi) - f0) / h
            calls[0] += 1
        return f0, g

    n = max(1, maxfun // (x0.size + 1))
    r = lbfgsb(fg, x0, np.full(x0.size, -np.inf), maxiter=n, maxfun=n, ftol=1e-10, gtol=1e-6)
    if not (np.isfinite(r.fun) and np.all(np.isfinite(r.x))):
        return None
    return np.asarray(r.x, dtype=float)
