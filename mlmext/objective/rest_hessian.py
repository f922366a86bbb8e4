"""The exact Hessian of the profiled LMM criterion in the theta of the dense remainder's scalar
blocks, from the inverse the gradient formed.

With the first block eliminated (its theta held), the remainder's system is
``S = Lambda T0 Lambda + J`` (``J``: 1 on the random effects), ``Lambda`` diagonal, ``theta_b``
on block b's rows.  With ``X = S_PP^-1`` (P: the random effects, and the fixed effects for
REML), ``J_b`` block b's rows, ``delta`` the identity and ``v`` the minimizer of ``r2 = v' S v``
with its response entry 1 (``v_Q = -S_QQ^-1 S_Qy``):

* ``d2 log det S_PP / d theta_b d theta_c = 2 / (theta_b theta_c) sum_{i in b, j in c}
  (delta - X)_ij (2 X - delta)_ij``, i.e. ``2 / (theta_b theta_c) [delta_bc (3 tr X_bb - m_b)
  - 2 |X_bc|_F^2]`` (from ``d S / d theta_b = (J_b T + T J_b) / theta_b``, ``T = S - J``, and
  ``X T = I - X J`` on P);
* ``d r2 / d theta_b = -2 / theta_b |v_b|^2`` and ``d2 r2 / d theta_b d theta_c =
  2 / (theta_b theta_c) [3 delta_bc |v_b|^2 - 4 z_b' S_QQ^-1 z_c]``, ``z_b`` = v on block b's
  rows (envelope theorem, then the derivative of the minimizer);
* the criterion ``log det S_PP + nu log r2``: ``H = H_logdet + nu (r2'' / r2 - r2' r2'^T / r2^2)``.

The sums of squares of ``X`` come from the gradient's inverse (no new factorization), the
rest from two triangular solves: O(r^2) against the O(r^3) of a gradient evaluation, so the
Newton polish differences the gradient only along the first block's entries.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["rest_hessian"]


def rest_hessian(ch, blocks, theta, nu, k, units):
    """``(idx, H)``: the exact Hessian of the criterion in the entries ``idx`` of theta (the
    dense remainder's scalar blocks), or None where it is not available: a remainder block
    not scalar or with a (near) zero theta, the remainder not dense, or the factor's kept
    inverse not current (``ch.rest_inverse_squares``).  ``k``: fixed effects in P (REML: p);
    ``units``: per block the root mean square of its column of Z (zero tests, as the
    gradient's)."""
    rest = blocks[1:]
    if not rest or any(b.q != 1 for b in rest):
        return None
    th = np.array([theta[b.t_idx[0]] for b in rest], dtype=float)
    rms = np.array([u[0] for u in units[1:]], dtype=float)
    if np.any(np.abs(th) * rms <= 1e-6 * np.maximum(1.0, np.abs(th) * rms)):
        return None
    sq = getattr(ch, "rest_inverse_squares", None)
    got = None if sq is None else sq(k)
    if got is None:
        return None
    F, tr = got
    m = np.array([b.m for b in rest], dtype=float)
    outer = np.outer(th, th)
    H = 2.0 * (np.diag(3.0 * tr - m) - 2.0 * F) / outer
    # the penalized residual sum of squares: v from the factor's last row
    Lr, r = ch.Lr, ch.r
    u, _ = ch.solve()
    v = u[u.size - ch.rz:]                        # the remainder's modes (natural order): +-v_Z
    r2 = ch.r2
    bounds = np.concatenate([[0], np.cumsum([b.m for b in rest])])
    nb = len(rest)
    Zb = np.zeros((r - 1, nb))
    vv = np.empty(nb)
    for b in range(nb):
        seg = v[bounds[b]:bounds[b + 1]]
        Zb[bounds[b]:bounds[b + 1], b] = seg
        vv[b] = seg @ seg
    # L_QQ w = z on the whole factor (the response's row last, right-hand side 0 there): the
    # transposed view goes to LAPACK in place, no copy of the leading block
    Zb = np.vstack([Zb, np.zeros((1, nb))])
    W, info = linalg.lapack.dtrtrs(Lr.T, Zb, lower=0, trans=1)
    if info:
        return None
    W = W[:r - 1]
    d1 = -2.0 * vv / th
    d2 = 2.0 * (3.0 * np.diag(vv) - 4.0 * (W.T @ W)) / outer
    H += nu * (d2 / r2 - np.outer(d1, d1) / r2 ** 2)
    idx = np.array([b.t_idx[0] for b in rest], dtype=np.int64)
    return idx, 0.5 * (H + H.T)
