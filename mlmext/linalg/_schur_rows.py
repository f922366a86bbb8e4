"""The Schur product of the first block with the rows of X and y apart, as dense products.

Eliminating the first block subtracts ``G = A_r1 blockdiag(B) A_1r`` from the remainder.  Its
rows are the remainder's random effects (``rz``: sparse, a few per level of the first block)
and the ``t = p + 1`` rows of X and y, which have entries at (nearly) every level.  The pairs of
nonzeros that share a level (:class:`~mlmext.linalg._schur.SchurProduct`) are enumerated for the
random-effects rows only; the X and y rows' part is a dense product per theta,

    G_zx = A_z1 (blockdiag(B) A_1x),    G_xx = A_x1 (blockdiag(B) A_1x),

``O(nnz(A_z1) t)``, against the ``~nnz(A_z1) t`` pairs (30 % of them at 1M ratings, half at
100k, 85 % at STAR) that would otherwise be set up, stored and multiplied at every theta.

* :class:`DenseRows`: ``A_x1`` held dense and these products (also the sparse remainder's,
  :mod:`~mlmext.linalg._sparse_rest`);
* :class:`SplitSchur`: the whole ``G`` with :class:`SchurProduct`'s interface, for the dense
  remainder (:class:`~mlmext.linalg._lead.LeadBlockFactor`).
"""
from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from ._schur import SchurProduct

__all__ = ["DenseRows", "SplitSchur"]


def _leading_rows(A, rz):
    """The first ``rz`` rows of the csr ``A`` as a csr matrix sharing its arrays (no copy)."""
    nz = A.indptr[rz]
    return sparse.csr_matrix((A.data[:nz], A.indices[:nz], A.indptr[:rz + 1]),
                             shape=(rz, A.shape[1]), copy=False)


class DenseRows:
    """The last ``t`` rows of ``A_r1`` (X and y) dense, and their products with the first block.

    Parameters
    ----------
    A_r1 : csr_matrix (r, m1 q1)
        Random-effects rows first (``rz`` of them), then X and y.
    rz, m1, q1 : int
    """

    def __init__(self, A_r1, rz, m1, q1):
        self.rz, self.m1, self.q1 = rz, m1, q1
        A = sparse.csr_matrix(A_r1)
        # the random-effects rows by levels (A_1z, csr): the products read H in order and
        # write the small rz x t result (by rows they gather H's rows at random: 2x slower at
        # 1M ratings); the pairs are enumerated from the same arrays (SplitSchur)
        self.A_1z = _leading_rows(A, rz).T.tocsr()
        self.Ax = A[rz:].toarray()                                  # (t, m1 q1)

    @property
    def AxT(self):
        """``A_1x``, (m1 q1, t) (a view)."""
        return self.Ax.T

    def times_b(self, B):
        """``(blockdiag(B) A_1x)'`` (t, m1 q1)."""
        q1 = self.q1
        if q1 == 1:
            return self.Ax * B.reshape(1, -1)
        # a component at a time along the levels (numpy's einsum or per-level blocks of t
        # entries cost 3 to 5 times as much)
        t = self.Ax.shape[0]
        A3 = self.Ax.reshape(t, self.m1, q1)
        Ht = np.empty(A3.shape)
        tmp = np.empty((t, self.m1))
        for a in range(q1):
            np.multiply(B[:, a, 0], A3[:, :, 0], out=Ht[:, :, a])
            for b in range(1, q1):
                np.multiply(B[:, a, b], A3[:, :, b], out=tmp)
                Ht[:, :, a] += tmp
        return Ht.reshape(t, -1)

    def products(self, B):
        """``(G_zx, G_xx)``: ``A_z1 blockdiag(B) A_1x`` (rz, t) and ``A_x1 blockdiag(B) A_1x``
        (t, t)."""
        Ht = self.times_b(B)
        return self.A_1z.T @ np.ascontiguousarray(Ht.T), self.Ax @ Ht.T

    def add_pair_sums(self, V, Kzx, Kxx):
        """``V_g += A_zg' K_zx A_xg + (its transpose) + A_xg' K_xx A_xg`` per level g: the X and
        y rows' part of ``sum_g A_g' K A_g`` for a symmetric K, ``Kzx`` (rz, k) and ``Kxx``
        (k, k, whole) its blocks on the random effects x the first k of these rows."""
        m1, q1 = self.m1, self.q1
        k = Kxx.shape[0]
        AxT = self.AxT[:, :k]
        Mz = self.A_1z @ Kzx                               # A_1z K_zx, (m1 q1, k)
        Nx = AxT @ Kxx
        if q1 == 1:
            V[:, 0, 0] += np.einsum("gk,gk->g", 2.0 * Mz + Nx, AxT)
            return V
        A3 = AxT.reshape(m1, q1, k)
        C = np.einsum("gak,gbk->gab", Mz.reshape(m1, q1, k), A3)
        return V + C + np.swapaxes(C, 1, 2) + np.einsum("gak,gbk->gab", Nx.reshape(m1, q1, k), A3)


class SplitSchur:
    """``G = A_r1 blockdiag(B) A_1r`` (lower triangle; the full matrix where the pairs go level
    by level) as the pairs of the random-effects rows and the dense products of the X and y
    rows; the interface of :class:`~mlmext.linalg._schur.SchurProduct`.

    Parameters
    ----------
    A_r1 : csr_matrix (r, m1 q1)
    rz, m1, q1 : int
    refreshable : bool
        :meth:`refresh` may be given new values of the same structure.
    """

    def __init__(self, A_r1, rz, m1, q1, refreshable=False):
        A = sparse.csr_matrix(A_r1)
        self.r, self.rz, self.m1, self.q1 = A.shape[0], rz, m1, q1
        self.rows = rows = DenseRows(A, rz, m1, q1)
        if refreshable:       # refresh takes values in A_r1's (CSR) order, which this reads
            Az = self._padded(A)
        else:                 # A_r1's CSC form without the X rows: the arrays of A_1z
            Az = sparse.csc_matrix((rows.A_1z.data, rows.A_1z.indices, rows.A_1z.indptr),
                                   shape=A.shape, copy=False)
        self.pairs = SchurProduct(Az, m1, q1, refreshable=refreshable)
        self.P = self.pairs.P

    def _padded(self, A):
        """``A_r1`` (csr) with its X and y rows empty (the pairs' positions stay ``i r + j``)."""
        nz = A.indptr[self.rz]
        indptr = np.concatenate([A.indptr[:self.rz + 1], np.full(self.r - self.rz, nz)])
        return sparse.csr_matrix((A.data[:nz], A.indices[:nz], indptr), shape=A.shape,
                                 copy=False)

    def refresh(self, A_r1):
        """New values of ``A_r1`` with the structure it had at construction."""
        A = sparse.csr_matrix(A_r1)
        self.pairs.refresh(self._padded(A))
        self.rows = DenseRows(A, self.rz, self.m1, self.q1)

    def with_response(self, a_new):
        """This product for ``A_r1`` with the last (response) row ``a_new`` (m1 q1,): the pairs
        shared (the response's row is not among them)."""
        new = copy.copy(self)
        new.rows = copy.copy(self.rows)
        new.rows.Ax = self.rows.Ax.copy()
        new.rows.Ax[-1] = a_new
        return new

    def subtract_from(self, S, B):
        """S -= G(B) on the lower triangle (the full matrix where ``P`` is None)."""
        rz = self.rz
        self.pairs.subtract_from(S, B)
        Gzx, Gxx = self.rows.products(B)
        S[rz:, :rz] -= Gzx.T
        S[rz:, rz:] -= Gxx
        if self.P is None:
            S[:rz, rz:] -= Gzx
        return S

    def pair_sums(self, K):
        """As :meth:`SchurProduct.pair_sums` (K's lower triangle, its off-diagonal doubled);
        the X rows' part is added symmetric (the callers read ``V + V'``)."""
        rz = self.rz
        V = self.pairs.pair_sums(K)
        tail = K[rz:]
        nz = np.flatnonzero(tail.any(axis=1))
        if nz.size == 0:                         # (ML's gradient: K is 0 on the X rows)
            return V
        k = int(nz[-1]) + 1
        Kxx = np.tril(tail[:k, rz:rz + k])
        Kxx = 0.5 * (Kxx + Kxx.T)               # (the halved diagonal doubled back)
        return self.rows.add_pair_sums(V, 0.5 * tail[:k, :rz].T, Kxx)

    def trace_weights(self, K):
        """v with ``v . vec(B) = trace(K G(B))`` for symmetric K and B, shape (m1, q1, q1)."""
        if self.P is not None:
            Kw = 2.0 * K
            Kw[np.diag_indices(self.r)] *= 0.5                 # off-diagonal pairs count twice
            return self.pair_sums(Kw)
        rz = self.rz
        return self.rows.add_pair_sums(self.pairs.trace_weights(K), K[:rz, rz:], K[rz:, rz:])
