"""The dense-remainder factor of a new response on the same design (a refit): only ``Z' W y``,
``X' W y`` and ``y' W y`` are computed again.

The Schur product's pairs (:class:`~mlmext.linalg._schur.SchurProduct`, the most costly part of
setting a factor up) include the response's row of ``A_r1`` in their values.  Rather than
enumerating them again, :class:`ResponseSchur` keeps the parent's pairs and corrects the
response's row of the product at each theta: with ``a`` the response's row of ``A_r1`` (old and
new) and ``A_z`` the other rows (unchanged),

    G_new[y, j] = G_old[y, j] + (a_new - a_old)' blockdiag(B) A_z[j]'     (j < y)
    G_new[y, y] = a_new' blockdiag(B) a_new

one sparse product per theta (O(nnz(A_r1)), against the O(r^2) Schur update itself).
"""
from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from ._schur import DenseSchur, SchurProduct

__all__ = ["ResponseSchur", "factor_with_response"]


class ResponseSchur:
    """A :class:`~mlmext.linalg._schur.SchurProduct` of ``A_r1`` whose last (response) row
    ``a_old`` is replaced by ``a_new`` (both ``(m1 q1,)``); ``A_z``: the other rows (csr)."""

    def __init__(self, base, A_z, a_old, a_new):
        self.base, self.P, self.r = base, base.P, base.r
        self.m1, self.q1 = base.m1, base.q1
        self._ab, self._order = base._ab, base._order
        self.A_z, self.A_zT = A_z, A_z.T.tocsr()
        self.a_old = a_old.reshape(self.m1, self.q1)
        self.a_new = a_new.reshape(self.m1, self.q1)
        self.delta = self.a_new - self.a_old

    def _bdot(self, B, v):
        """blockdiag(B) v for v (m1, q1)."""
        if self.q1 == 1:
            return B.reshape(-1) * v[:, 0]
        return np.einsum("gab,gb->ga", B.reshape(self.m1, self.q1, self.q1), v).ravel()

    def subtract_from(self, S, B):
        """S -= G(B) on the lower triangle, the response's row for the new response."""
        self.base.subtract_from(S, B)
        y = self.r - 1
        S[y, :y] -= self.A_z @ self._bdot(B, self.delta)
        S[y, y] += float(self.a_old.ravel() @ self._bdot(B, self.a_old)
                         - self.a_new.ravel() @ self._bdot(B, self.a_new))
        return S

    def pair_sums(self, K):
        """``P_new' vec(K)``: the parent's sums plus the change of the pairs on the response's
        row (the lower triangle's row y of K)."""
        V = self.base.pair_sums(K)
        y, q = self.r - 1, self.q1
        ky = K[y, :y]
        kyy = K[y, y]
        if not (np.any(ky) or kyy):                      # (the gradient's K: zero there)
            return V
        T = (self.A_zT @ ky).reshape(self.m1, q)          # sum_j K[y, j] A[j, (g, b)]
        D, an, ao = self.delta, self.a_new, self.a_old
        for a in range(q):
            for b in range(a + 1):
                if a == b:
                    V[:, a, a] += D[:, a] * T[:, a] + kyy * (an[:, a] ** 2 - ao[:, a] ** 2)
                else:
                    V[:, a, b] += (D[:, a] * T[:, b] + T[:, a] * D[:, b]
                                   + 2.0 * kyy * (an[:, a] * an[:, b] - ao[:, a] * ao[:, b]))
        return V

    def trace_weights(self, K):
        """As :meth:`SchurProduct.trace_weights`."""
        Kw = 2.0 * K
        Kw[np.diag_indices(self.r)] *= 0.5
        return self.pair_sums(Kw)


def factor_with_response(f, XY, weights):
    """A copy of the dense-remainder factor ``f`` (its cross-products set, natural order, no
    structure-reusing plan) for the new ``[X y]`` (only the last column differs from the one
    ``f`` was set up with), or None where ``f``'s storage does not allow it (then the caller
    builds the factor anew)."""
    schur = f.__dict__.get("_schur")
    if f._sn is not None or f._rpos is not None or f.__dict__.get("_rest") is not None \
            or f.__dict__.get("_rw_plan") is not None or schur is None:
        return None
    a_old = f._a1y
    if isinstance(schur, ResponseSchur):           # a refit's factor: from the design's pairs
        schur, a_old = schur.base, schur.a_old.ravel()
    if isinstance(schur, SchurProduct):
        if schur.P is None or schur._ab is None:
            return None
    elif not isinstance(schur, DenseSchur):
        return None
    r, rz = f.r, f.rz
    n = XY.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    wy = XY[:, -1] * w
    a_new = np.asarray(f._Z1.T @ wy, dtype=float).ravel()
    col = np.empty(r)
    if rz:
        col[:rz] = f._Zrest.T @ wy
    col[rz:] = XY.T @ wy
    new = copy.copy(f)
    A_rr = f.A_rr.copy()
    A_rr[:, -1] = col
    A_rr[-1, :] = col
    new.A_rr = A_rr
    A_z = f.A_r1[:r - 1]
    new.A_r1 = sparse.vstack([A_z, sparse.csr_matrix(a_new[None, :])], format="csr")
    new.A_1r = new.A_r1.T.tocsr()
    new._a1y = a_new
    if isinstance(schur, DenseSchur):
        ns = schur.own_copy()
        ns.A[-1] = a_new
    else:
        ns = ResponseSchur(schur, A_z.tocsr(), a_old, a_new)
    new._schur = ns
    new._set_operators()
    new._S = np.zeros((r, r))
    new._inverse_kept = None
    return new
