"""The weighted cross-products of a chunk of rows, through a plan reused at every pass.

A chunk's random-effects structure does not change between PIRLS iterations; only the
weights and the working response do.  The plan (built at the first pass, kept on the chunk:
on a Dask worker, with the persisted rows) holds where each row's products go in the sparse
``A_r1`` and ``A_rr``; a pass is then a few ``bincount`` calls, no sparse-matrix product.
It gives what :func:`mlmext.linalg.row_cross_products` gives (``dense_rr=False``), summed in
another order.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["chunk_cross_products"]


class _Plan:
    def __init__(self, blocks, n, nxy):
        b1, rest = blocks[0], blocks[1:]
        self.m1, self.q1 = b1.m, b1.q
        m1q1 = self.m1 * self.q1
        rz = sum(b.nre for b in rest)
        self.r = r = rz + nxy
        cols, off = [], 0
        for b in rest:
            cols.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
            off += b.nre
        cols.append(np.broadcast_to(rz + np.arange(nxy)[None, :], (n, nxy)))
        C = np.hstack(cols).astype(np.int64)                 # (n, k): a row's rest columns
        self.k = k = C.shape[1]
        self.kz = k - nxy
        self.Zr = np.hstack([b.X for b in rest]) if rest else np.zeros((n, 0))
        self.X1 = b1.X
        self.g1 = b1.codes
        c1 = b1.codes[:, None] * self.q1 + np.arange(self.q1)[None, :]
        key = (C[:, :, None] * m1q1 + c1[:, None, :]).ravel()
        uniq, self.dest_r1 = np.unique(key, return_inverse=True)
        self.n_r1 = uniq.size
        self.indptr_r1 = np.searchsorted(uniq // m1q1, np.arange(r + 1))
        self.indices_r1 = uniq % m1q1
        self.jj, self.ll = np.tril_indices(k)
        a, b = C[:, self.jj], C[:, self.ll]
        key = (np.maximum(a, b) * r + np.minimum(a, b)).ravel()
        uniq, self.dest_rr = np.unique(key, return_inverse=True)
        hi, lo = np.divmod(uniq, r)
        off_diag = hi != lo
        self.rr_rows = np.concatenate([hi, lo[off_diag]])
        self.rr_cols = np.concatenate([lo, hi[off_diag]])
        self.rr_off = off_diag
        self.n_rr = uniq.size
        q1 = self.q1
        self.key11 = (self.g1[:, None, None] * q1 * q1 + np.arange(q1)[None, :, None] * q1
                      + np.arange(q1)[None, None, :]).ravel()

    def products(self, XY, w):
        V = np.hstack([self.Zr, XY])                         # (n, k)
        wV = V * w[:, None]
        q1, m1 = self.q1, self.m1
        A11 = np.bincount(self.key11, weights=(w[:, None, None] * self.X1[:, :, None]
                                               * self.X1[:, None, :]).ravel(),
                          minlength=m1 * q1 * q1).reshape(m1, q1, q1)
        d = np.bincount(self.dest_r1, weights=(wV[:, :, None] * self.X1[:, None, :]).ravel(),
                        minlength=self.n_r1)
        A_r1 = sparse.csr_matrix((d, self.indices_r1, self.indptr_r1), shape=(self.r, m1 * q1))
        v = np.bincount(self.dest_rr, weights=(wV[:, self.jj] * V[:, self.ll]).ravel(),
                        minlength=self.n_rr)
        A_rr = sparse.csr_matrix((np.concatenate([v, v[self.rr_off]]),
                                  (self.rr_rows, self.rr_cols)), shape=(self.r, self.r))
        return A11, A_r1, A_rr


def chunk_cross_products(chunk, XY, w):
    """``(A11, A_r1, A_rr)`` of the chunk's rows with ``[X y]`` = ``XY`` and weights ``w``
    (``A_r1``, ``A_rr`` sparse); the plan is built at the first call and kept on the chunk."""
    plan = getattr(chunk, "_cross_plan", None)
    if plan is None or plan.k - plan.kz != XY.shape[1]:
        plan = chunk._cross_plan = _Plan(chunk.design.blocks, chunk.n, XY.shape[1])
    return plan.products(XY, w)
