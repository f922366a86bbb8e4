"""The Schur complement and the gradient's pair sums of a sparse remainder, on the plan's storage.

When the remainder's random effects are factored on their pattern
(:class:`~mlmext.linalg._supernodal.SupernodalPlan`), the Schur complement of the first block,

    S = Lambda_r' (A_rr - A_r1 B A_1r) Lambda_r,

is assembled straight into the plan's flat storage, in two parts:

* the random effects (``rz x rz``): a :class:`~mlmext.linalg._schur.SchurProduct` of the pairs
  of ``A_z1`` (the rows of ``A_r1`` that are random effects) that share a first-block level, on
  the positions of its pattern only (with ``A_zz``'s nonzeros and the diagonal);
* the ``t = p + 1`` rows of X and y: ``A_x1 B A_1r`` by dense products
  (:class:`~mlmext.linalg._schur_rows.DenseRows`; ``A_x1`` is dense-ish: every level has rows
  in X), instead of enumerating the pairs of X rows with everything else (at STAR they are
  85 % of the pairs, and what makes the product slow to set up).

The gradient's sums ``sum_g A_g' K A_g`` (``K = Lambda_r X Lambda_r``, X the selected inverse)
split the same way.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from ._schur import SchurProduct
from ._schur_rows import DenseRows

__all__ = ["SparseRest"]


class SparseRest:
    """What the Schur complement and the gradient's sums need, fixed per model.

    Parameters
    ----------
    plan : SupernodalPlan
    A_r1 : csr_matrix (r, m1 q1)
        In the plan's order (random effects permuted, then X and y).
    A_rr : csr_matrix or ndarray (r, r)
        In the plan's order.
    m1, q1 : int
        The first block's levels and effects per level.
    refreshable : bool
        :meth:`refresh` may be given new values of the same structure.
    """

    def __init__(self, plan, A_r1, A_rr, m1, q1, refreshable=False):
        self.plan, self.m1, self.q1 = plan, m1, q1
        rz, r = plan.rz, plan.r
        A_z1 = A_r1[:rz]
        self.schur = SchurProduct(A_z1, m1, q1, refreshable=refreshable)
        self.ok = self.schur.P is not None             # else: too many pairs to hold
        if not self.ok:
            return
        P = self.schur.P
        # the pattern: the pairs' positions (i rz + j, i >= j), A_zz's lower triangle, the diagonal
        on = np.zeros(rz * rz, dtype=bool)       # (a sort of the pairs' positions costs more)
        on[P.indices] = True
        if sparse.issparse(A_rr):
            Z = A_rr[:rz, :rz].tocoo()
            low = Z.row >= Z.col
            on[Z.row[low].astype(np.int64) * rz + Z.col[low]] = True
            zval = (Z.row[low].astype(np.int64) * rz + Z.col[low], Z.data[low])
        else:
            on[np.flatnonzero(np.tril(A_rr[:rz, :rz]))] = True
            zval = None
        on[np.arange(rz, dtype=np.int64) * (rz + 1)] = True
        keys = np.flatnonzero(on)
        self.pi, self.pj = np.divmod(keys, rz)
        self.dst = plan.positions(self.pi, self.pj)
        self.twice = np.where(self.pi == self.pj, 1.0, 2.0)
        self.compact = self.schur.compact(keys, _index_of(keys, P.indices, rz * rz))
        # the X and y rows below every random effect: positions of (rz + x, j), as (rz, t)
        t = r - rz
        self.tail_dst = plan.positions(rz + np.arange(t)[None, :], np.arange(rz)[:, None])
        self._keys = keys
        self._values(A_r1, A_rr, zval)

    def _values(self, A_r1, A_rr, zval=None):
        rz = self.plan.rz
        self.rows = DenseRows(A_r1, rz, self.m1, self.q1)
        if sparse.issparse(A_rr):
            self.A_rx = A_rr[:, rz:].toarray()
            if zval is None:
                Z = A_rr[:rz, :rz].tocoo()
                low = Z.row >= Z.col
                zval = (Z.row[low].astype(np.int64) * rz + Z.col[low], Z.data[low])
            self.a = np.bincount(np.searchsorted(self._keys, zval[0]), weights=zval[1],
                                 minlength=self._keys.size)
        else:
            self.A_rx = np.array(A_rr[:, rz:])
            self.a = A_rr[self.pi, self.pj]

    def refresh(self, A_r1, A_rr):
        """New values of ``A_r1`` and ``A_rr`` (the plan's order) with this structure."""
        self.schur.refresh(A_r1[:self.plan.rz])     # (the compact product shares its values)
        self._values(A_r1, A_rr)

    def assemble(self, L, B, lr):
        """Write ``S`` (lower triangle) into the storage ``L``, zeros off its pattern."""
        rz = self.plan.rz
        vals = self.a.copy()
        self.compact.subtract_from(vals, B)
        vals *= lr[self.pi] * lr[self.pj]
        L.fill(0.0)
        L[self.dst] = vals
        Cz, Cxx = self.rows.products(B)                       # A_z1 B A_1x, A_x1 B A_1x
        Cz -= self.A_rx[:rz]
        Cz *= -lr[:rz, None]
        L[self.tail_dst] = Cz
        T = self.plan.tail(L)
        T[...] = np.tril(self.A_rx[rz:] - Cxx)                # (the upper triangle stays 0)
        return L

    def pair_sums(self, X, lr, kk):
        """``sum_g A_g' K A_g`` per level g (m1, q1, q1), symmetric, for ``K = Lambda_r X Lambda_r``
        with X the selected inverse of the leading ``kk`` rows (the plan's storage)."""
        V = self.compact.pair_sums(X[self.dst] * (lr[self.pi] * lr[self.pj] * self.twice))
        V = 0.5 * (V + np.swapaxes(V, 1, 2))
        rz = self.plan.rz
        k = kk - rz
        if k <= 0:                         # the X rows are outside the leading kk: X is 0 there
            return V
        # K_zx and K_xx (the latter written whole in the storage's tail)
        return self.rows.add_pair_sums(V, X[self.tail_dst[:, :k]] * lr[:rz, None],
                                       self.plan.tail(X)[:k, :k])


def _index_of(keys, values, n):
    """Positions in the sorted ``keys`` (all < n) of ``values`` (each one of them): a lookup
    table where it is small (a binary search per value costs ~20x more: 7 ms for STAR's pairs)."""
    if n > 1 << 26:
        return np.searchsorted(keys, values)
    table = np.empty(n, dtype=np.int32)
    table[keys] = np.arange(keys.size, dtype=np.int32)
    return table[values]
