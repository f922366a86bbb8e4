"""The Schur-complement product level by level, for systems with too many pairs to enumerate.

:class:`~mlmext.linalg._schur.SchurProduct` stores every pair of nonzeros of ``A_r1`` that share
a level of the first block, so a theta costs one sparse product.  With 500k users rating ~20
of 3k items each that is ~3e8 pairs: too many to store (and enumerating them in numpy at every
evaluation costs ~40 s).  :class:`LevelGather` stores instead, per level g of the first block,
the rows of ``A_r1`` its columns touch (``k_g`` of them, the union over the ``q1`` components)
and the ``k_g x q1`` dense block ``A_g`` of their values, and works on the levels with the same
``k_g`` together:

* ``trace_weights(K)``: ``V_g = A_g' K[R_g, R_g] A_g`` -- one gather of the ``k_g x k_g``
  submatrices of K (``np.take`` on flat positions) and two batched matrix products;
* ``subtract_from(S, B)``: ``S[R_g, R_g] -= A_g B_g A_g'`` -- batched products, their entries
  summed into S by ``np.bincount`` over flat positions in large chunks.

Memory: the rows and values of ``A_r1`` once, plus chunks of ~``CHUNK`` entries.
"""
from __future__ import annotations

import copy

import numpy as np

__all__ = ["LevelGather"]

#: entries (pairs of rows times levels) per batch of the gathers and products
CHUNK = 1 << 21
#: numpy's ``np.add.at`` has a fast path from 1.25 on (before, a bincount per batch is faster)
_FAST_ADD_AT = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (1, 25)


class LevelGather:
    """``G(B) = A_r1 blockdiag(B) A_1r`` and its adjoint, level by level (dense blocks per level).

    Parameters
    ----------
    A : scipy.sparse matrix, shape (r, m1 q1)
        ``A_r1`` (columns ``g q1 + a``).
    m1, q1 : int
        Levels and template size of the first block.
    refreshable : bool
        Keep what :meth:`refresh` needs (new values of ``A_r1``, same structure).
    """

    P = None
    #: renumber the rows by popularity (False: natural order; the tests compare the two)
    reorder = True
    #: sum the batches into the r x r array with ``np.add.at`` (else ``np.bincount``)
    use_add_at = _FAST_ADD_AT

    def __init__(self, A, m1, q1, refreshable=False):
        A = A.tocsc()
        A.sort_indices()
        self.r = r = A.shape[0]
        self.m1, self.q1 = m1, q1
        cnt = np.diff(A.indptr)
        col = np.repeat(np.arange(m1 * q1, dtype=np.int64), cnt)
        key = (col // q1) * r + A.indices
        comp = col % q1
        if q1 == 1:                                   # already sorted by (level, row), unique
            uniq, inv = key, np.arange(key.size)
        elif self._same_rows(cnt, key, comp):
            # every component of a level has the same rows (a slope nonzero on every row):
            # the first component's entries are the union, in order (no sort)
            first = comp == 0
            uniq = key[first]
            inv = np.empty(key.size, dtype=np.int64)
            for a in range(q1):
                inv[comp == a] = np.arange(uniq.size)
        else:
            uniq, inv = np.unique(key, return_inverse=True)
        self._inv, self._comp = inv.ravel(), comp.astype(np.int32)
        lev = uniq // r
        rows = uniq - lev * r
        # rows renumbered by how many levels touch them, most first: the popular rows' pairs,
        # most of all pairs, then fall in one corner of the r x r arrays (cache-resident)
        self.order = (np.argsort(-np.bincount(rows, minlength=r), kind="stable") if self.reorder
                      else np.arange(r))
        self.rank = np.empty(r, dtype=np.int64)
        self.rank[self.order] = np.arange(r)
        self.rows = self.rank[rows]
        self.k = np.bincount(lev, minlength=m1)
        self.starts = np.concatenate([[0], np.cumsum(self.k)[:-1]])
        self.D = np.zeros((uniq.size, q1))
        self.refresh(A)
        if not refreshable:                           # (two n-sized index arrays)
            del self._inv, self._comp
        # levels grouped by their number of rows, each group in batches of about CHUNK entries
        self._batches = []
        order = np.argsort(self.k, kind="stable")
        ks = self.k[order]
        bounds = np.flatnonzero(np.diff(ks)) + 1
        for lv in np.split(order, bounds):
            k = int(self.k[lv[0]]) if lv.size else 0
            if k == 0:
                continue
            step = max(1, CHUNK // (k * k))
            for b in range(0, lv.size, step):
                self._batches.append((k, lv[b:b + step]))

    def _same_rows(self, cnt, key, comp):
        """Whether each level's ``q1`` columns hold the same rows (``key``: level r + row)."""
        c = cnt.reshape(self.m1, self.q1)
        if not np.all(c == c[:, :1]):
            return False
        k0 = key[comp == 0]
        return all(np.array_equal(k0, key[comp == a]) for a in range(1, self.q1))

    def own_copy(self):
        """A copy whose values :meth:`refresh` can overwrite without touching this one's."""
        new = copy.copy(self)
        new.D = self.D.copy()
        return new

    def refresh(self, A_r1):
        """New values of ``A_r1`` with the structure it had at construction."""
        A = A_r1.tocsc()
        A.sort_indices()
        self.D[:] = 0.0
        self.D[self._inv, self._comp] = A.data

    def _batch(self, k, lv):
        ent = self.starts[lv][:, None] + np.arange(k)[None, :]      # (n, k) entries
        idx = self.rows[ent]
        flat = idx[:, :, None] * self.r + idx[:, None, :]             # (n, k, k) positions
        return self.D[ent], flat

    def trace_weights(self, K):
        """v with ``v . vec(B) = trace(K G(B))`` for symmetric K (full), shape (m1, q1, q1)."""
        o = self.order
        Kf = K[o[:, None], o[None, :]].reshape(-1)             # K in the popularity order
        V = np.zeros((self.m1, self.q1, self.q1))
        for k, lv in self._batches:
            Dg, flat = self._batch(k, lv)
            Kg = np.take(Kf, flat)
            V[lv] = np.swapaxes(Dg, 1, 2) @ (Kg @ Dg)
        return V

    def subtract_from(self, S, B):
        """S -= G(B) (the full matrix; S C-contiguous)."""
        B = B.reshape(self.m1, self.q1, self.q1)
        r = self.r
        acc = np.zeros(r * r)                          # G in the popularity order
        for k, lv in self._batches:
            Dg, flat = self._batch(k, lv)
            G = (Dg @ B[lv]) @ np.swapaxes(Dg, 1, 2)
            if self.use_add_at:
                np.add.at(acc, flat.reshape(-1), G.reshape(-1))
            else:
                acc += np.bincount(flat.reshape(-1), G.reshape(-1), minlength=r * r)
        r_ = self.rank
        S -= acc.reshape(r, r)[r_[:, None], r_[None, :]]
        return S
