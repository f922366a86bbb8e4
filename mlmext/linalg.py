"""Blocked Cholesky factorization of the mixed-model system.

For random-effects blocks Z_1, ..., Z_K (see :mod:`mlmext.design`), fixed
effects X and response y with prior weights W, the cross-product

    A = [Z_1 ... Z_K X y]' W [Z_1 ... Z_K X y]

is formed once.  For each theta the scaled matrix ``Lambda' A Lambda + I_Z``
(Lambda is identity on the X and y columns) is factored as

    L = [[L11,  0 ],
         [ C,   Lr]]

where ``L11`` belongs to the first (largest) random-effects block and is
block diagonal (one q x q factor per level: it never fills), ``C`` is sparse,
and ``Lr`` is the dense factor of everything else (the other random-effects
blocks, X and y).  ``Lr`` comes from the Schur complement

    Lambda_r' (A_rr - A_r1 B A_1r) Lambda_r + I,   B = Lambda_1 (Lambda_1' A_11 Lambda_1 + I)^-1 Lambda_1'

so no n-sized array is touched per theta: cost is one sparse product with a
block-diagonal B and a dense Cholesky of the (usually small) remainder.

This is the MixedModels.jl scheme with the blocks after the first stored
densely; the profiled (RE)ML objective reads off ``log|L_ZZ|^2``,
``log|L_XX|^2`` and ``r^2`` (the squared last diagonal element).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from ._blas import INVERSE_THREADED_MIN_ROWS, blas_threads

__all__ = ["BlockedCholesky"]


def _block_cross(X, codes, m, w):
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


def _level_pairs(starts, T, it, chunk=1 << 18):
    """Entry pairs (e1 >= e2) within each level, in level order, in chunks of levels.

    Level g owns entries ``starts[g]:starts[g+1]`` and ``T[g] = k(k+1)/2`` pairs; pair l of a
    level decodes as a = floor((sqrt(8 l + 1) - 1) / 2), b = l - a(a+1)/2.  Yields
    ``(first level, end level, e1, e2)``.
    """
    m = T.size
    cum = np.cumsum(T)
    g0 = 0
    while g0 < m:
        g1 = int(np.searchsorted(cum, (cum[g0 - 1] if g0 else 0) + chunk, side="right"))
        g1 = max(g1, g0 + 1)
        Tc = T[g0:g1]
        n = int(Tc.sum())
        g = np.repeat(np.arange(g0, g1, dtype=it), Tc)
        l = np.arange(n, dtype=it) - np.repeat((np.cumsum(Tc) - Tc).astype(it), Tc)
        a = ((np.sqrt(8.0 * l + 1.0) - 1.0) * 0.5).astype(it)
        b = l - a * (a + 1) // 2
        bad = np.flatnonzero((b < 0) | (b > a))          # rounding of the square root (rare)
        if bad.size:
            a[bad] += np.where(b[bad] > a[bad], 1, -1).astype(it)
            b[bad] = l[bad] - a[bad] * (a[bad] + 1) // 2
        base = starts[g].astype(it)
        yield g0, g1, a + base, b + base
        g0 = g1


class _SchurProduct:
    """Computes the lower triangle of ``G = A_r1 blockdiag(B) A_1r`` for many B.

    For each level g of the first block, every pair of nonzeros of
    ``A_r1[:, g-columns]`` contributes ``A[i, (g,a)] B_g[a, b] A[j, (g, b)]`` to
    ``G[i, j]``.  The pairs are enumerated once into a sparse matrix P (rows:
    positions ``i*r + j`` with i >= j, columns: (g, a, b)), so each theta costs
    one sparse matrix-vector product ``P @ B.ravel()``.  When P would be too
    large (levels touching very many rows) the product is formed directly.
    """

    max_pairs = 30_000_000

    def __init__(self, A_r1, m1, q1, refreshable=False):
        self.r = r = A_r1.shape[0]
        self.m1, self.q1 = m1, q1
        self._plan = None
        if refreshable:                                  # remember where each csc entry comes from
            idx = A_r1.tocsr(copy=True)
            idx.data = np.arange(idx.nnz, dtype=float)
            A = idx.tocsc()
            A.sort_indices()
            perm = A.data.astype(np.int64)
            A.data = np.asarray(A_r1.tocsr().data, dtype=float)[perm]
        else:
            A = A_r1.tocsc()
            A.sort_indices()
        starts = A.indptr[0:m1 * q1 + 1:q1]             # entries of level g: starts[g]:starts[g+1]
        k = np.diff(starts)
        npairs = int((k.astype(np.int64) * (k + 1) // 2).sum())
        self.P = None
        if npairs > self.max_pairs:
            self.A_r1 = A_r1.tocsr()
            self.A_1r = self.A_r1.T.tocsr()
            return
        comp = np.repeat(np.arange(m1 * q1) % q1, np.diff(A.indptr))   # component of each entry
        it = np.int32 if max(npairs, A.nnz, r * r) < 2**31 - 1 else np.int64
        T = k.astype(np.int64) * (k + 1) // 2
        indices = A.indices.astype(it, copy=False)
        if q1 == 1 and not refreshable:
            # one component, sorted rows within a column: e1 >= e2 means i >= j; filled in
            # chunks of levels so the temporaries stay small (fresh large arrays page-fault)
            val = np.empty(npairs)
            rows = np.empty(npairs, dtype=it)
            p1 = 0
            for _, _, e1, e2 in _level_pairs(starts, T, it):
                p0, p1 = p1, p1 + e1.size
                np.take(A.data, e1, out=val[p0:p1])
                val[p0:p1] *= np.take(A.data, e2)
                np.take(indices, e1, out=rows[p0:p1])
                rows[p0:p1] *= it(r)
                rows[p0:p1] += np.take(indices, e2)
            indptr = np.concatenate([[0], np.cumsum(T)])
            self.P = sparse.csc_matrix((val, rows, indptr), shape=(r * r, m1))
            return
        chunks = list(_level_pairs(starts, T, it))
        e1 = np.concatenate([c[2] for c in chunks])
        e2 = np.concatenate([c[3] for c in chunks])
        g = np.repeat(np.arange(m1, dtype=it), T)
        val = np.take(A.data, e1)
        val *= np.take(A.data, e2)
        i, j = np.take(indices, e1), np.take(indices, e2)
        dbl = None
        if q1 > 1:   # same row, two components: the pair stands for both orders
            dbl = (i == j) & (e1 != e2)
            val = np.where(dbl, 2.0 * val, val)
        hi, lo = np.maximum(i, j).astype(np.int64), np.minimum(i, j).astype(np.int64)
        col = g if q1 == 1 else (g.astype(np.int64) * q1 + comp[e1]) * q1 + comp[e2]
        if not refreshable:
            rows = hi * r + lo
            if q1 > 1:                                   # columns (g, a, b) must be grouped
                order = np.argsort(col, kind="stable")
                rows, val, col = rows[order], val[order], col[order]
            indptr = np.searchsorted(col, np.arange(m1 * q1 * q1 + 1))
            self.P = sparse.csc_matrix((val, rows, indptr), shape=(r * r, m1 * q1 * q1))
            return
        # same matrix, built so that new values for the same structure need one bincount
        rr = r * r
        key = col.astype(np.int64) * rr + (hi.astype(np.int64) * r + lo)
        uniq, dest = np.unique(key, return_inverse=True)
        indptr = np.searchsorted(uniq // rr, np.arange(m1 * q1 * q1 + 1))
        data = np.bincount(dest, weights=val, minlength=uniq.size)
        self.P = sparse.csc_matrix((data, uniq % rr, indptr), shape=(rr, m1 * q1 * q1))
        self._plan = (perm, e1, e2, dbl, dest.ravel(), uniq.size)

    def refresh(self, A_r1):
        """New values of ``A_r1`` with the structure it had at construction (``refreshable=True``)."""
        if self.P is None:
            self.A_r1 = A_r1.tocsr()
            self.A_1r = self.A_r1.T.tocsr()
            return
        perm, e1, e2, dbl, dest, nnz = self._plan
        v = A_r1.data[perm]
        val = v[e1] * v[e2]
        if dbl is not None:
            val[dbl] *= 2.0
        self.P.data[:] = np.bincount(dest, weights=val, minlength=nnz)

    def trace_weights(self, K):
        """v with ``v . vec(B) = trace(K G(B))`` for symmetric K and B, shape (m1, q1, q1)."""
        if self.P is not None:
            Kw = 2.0 * K
            Kw[np.diag_indices(self.r)] *= 0.5                 # off-diagonal pairs count twice
            return (self.P.T @ Kw.ravel()).reshape(self.m1, self.q1, self.q1)
        F = np.asarray(self.A_1r @ K)                    # (m1 q1) x r
        D = self.A_1r.toarray()
        V = np.einsum("gar,gbr->gab", F.reshape(self.m1, self.q1, -1), D.reshape(self.m1, self.q1, -1))
        return V

    def subtract_from(self, S, B):
        """S -= G(B) on the lower triangle (full matrix in the fallback)."""
        if self.P is not None:
            S.ravel()[:] -= self.P @ B.ravel()
        else:
            G = self.A_r1 @ _blockdiag_sparse(B.reshape(self.m1, self.q1, self.q1)) @ self.A_1r
            S -= G.toarray()
        return S


class _DenseSchur:
    """``G = A_r1 blockdiag(B) A_1r`` with ``A_r1`` held dense (few rows, dense fill).

    Same interface as :class:`_SchurProduct` (``P`` is None: full matrices);
    used by :meth:`BlockedCholesky.reweight` when the dense product is cheaper
    than enumerating the pairs, e.g. a large first factor crossed with a small one.
    """

    P = None

    def __init__(self, A_r1, m1, q1):
        self.r = A_r1.shape[0]
        self.m1, self.q1 = m1, q1
        A = A_r1.tocsr()
        rows = np.repeat(np.arange(self.r), np.diff(A.indptr))
        self._flat = rows * (m1 * q1) + A.indices
        self.A = np.zeros((self.r, m1 * q1))
        self.refresh(A)

    def refresh(self, A_r1):
        self.A.ravel()[self._flat] = A_r1.data

    def subtract_from(self, S, B):
        A = self.A
        if self.q1 == 1:
            S -= (A * B.reshape(1, -1)) @ A.T
        else:
            T = np.einsum("rga,gab->rgb", A.reshape(self.r, self.m1, self.q1),
                          B.reshape(self.m1, self.q1, self.q1)).reshape(self.r, -1)
            S -= T @ A.T
        return S

    def trace_weights(self, K):
        A = self.A
        F = K @ A
        return np.einsum("iga,igb->gab", A.reshape(self.r, self.m1, self.q1),
                         F.reshape(self.r, self.m1, self.q1))


def _blockdiag_sparse(B):
    """(m, q, q) array -> sparse block-diagonal (m q) x (m q) matrix."""
    m, q, _ = B.shape
    return sparse.bsr_matrix((B, np.arange(m), np.arange(m + 1)), shape=(m * q, m * q)).tocsr()


class BlockedCholesky:
    """Factorization of ``Lambda' [Z X y]' W [Z X y] Lambda + I`` for one theta at a time.

    Parameters
    ----------
    blocks : list of ReBlock
        Random-effects blocks, the first one with the most random effects.
    XY : ndarray, shape (n, p + 1)
        Fixed-effects design with the response as its last column
        (``p`` may be 0, as in the penalized least squares step of a GLMM).
    weights : ndarray, shape (n,), optional
        Prior (or working) weights.
    reweighting : bool
        Build only what :meth:`reweight` needs (its structure-reusing path),
        not the general one of :meth:`set_data`.
    """

    def __init__(self, blocks, XY, weights=None, reweighting=False):
        self.blocks = blocks
        b1 = blocks[0]
        self.m1, self.q1 = b1.m, b1.q
        self.rest_sizes = [b.nre for b in blocks[1:]]
        self.rz = int(sum(self.rest_sizes))
        self.p = XY.shape[1] - 1
        self.r = self.rz + self.p + 1
        self._Zrest = sparse.hstack([b.Z() for b in blocks[1:]], format="csc") if self.rz else None
        self._Z1 = b1.Z().tocsc()
        self._scalar_rest = all(b.q == 1 for b in blocks[1:])
        self._schur = None
        if reweighting:             # set up for repeated reweight() calls (GLMM PIRLS) only
            self.reweight(XY, weights)
        else:
            self.set_data(XY, weights)

    def set_data(self, XY, weights=None):
        """(Re)compute the cross-products for new [X y] values and/or weights.

        The random-effects structure is kept; a GLMM calls this once per
        PIRLS iteration with its working weights and response.
        """
        n = XY.shape[0]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        b1 = self.blocks[0]
        self.A11 = _block_cross(b1.X, b1.codes, b1.m, w)
        sw = sparse.diags(np.sqrt(w))
        XYs = sparse.csc_matrix(XY)
        Zr = XYs if self._Zrest is None else sparse.hstack([self._Zrest, XYs], format="csc")
        Zr = (sw @ Zr).tocsc()
        Z1 = (sw @ self._Z1).tocsc()
        self.A_r1 = (Zr.T @ Z1).tocsr()              # r x (m1 q1), sparse
        self.A_1r = self.A_r1.T.tocsr()
        self.A_rr = (Zr.T @ Zr).toarray()            # r x r, dense
        self._schur = _SchurProduct(self.A_r1, self.m1, self.q1)
        self._S = np.empty_like(self.A_rr)
        self._a1y = None
        return self

    # -- fast re-weighting (PIRLS) ----------------------------------------------------
    def reweight(self, XY, weights=None):
        """:meth:`set_data` for new ``[X y]`` values and weights, reusing the structure.

        Gives the same cross-products as ``set_data`` (same blocks, same number
        of columns in ``XY``).  The sparsity pattern of ``A_r1``, its transpose
        and the Schur-product pairs are worked out on the first call; later
        calls cost a few ``bincount`` passes over the rows and no sparse-matrix
        construction.  This is the path for a GLMM's PIRLS iterations, where
        only the working response and weights change.
        """
        XY = np.asarray(XY, dtype=float)
        if XY.ndim != 2 or XY.shape[1] != self.p + 1:
            raise ValueError(f"XY must have {self.p + 1} columns (the factorization was set up "
                             f"with p = {self.p}); got shape {XY.shape}")
        n = XY.shape[0]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        plan = getattr(self, "_rw_plan", None)
        if plan is None:
            plan = self._rw_plan = self._make_reweight_plan()
        b1 = self.blocks[0]
        rz, m1q1 = self.rz, self.m1 * self.q1
        g1 = b1.codes
        if plan["x1sq"] is not None:                     # scalar first block
            x1sq = plan["x1sq"]
            self.A11 = np.bincount(g1, weights=w if plan["x1"] is None else w * x1sq,
                                   minlength=b1.m).reshape(-1, 1, 1)
        else:
            self.A11 = _block_cross(b1.X, b1.codes, b1.m, w)
        A_r1, A_1r = plan["A_r1"], plan["A_1r"]
        nnz1 = plan["nnz1"]
        WXY = XY * w[:, None]
        if nnz1:
            wr = w if plan["row1"] is None else w[plan["row1"]]
            A_r1.data[:nnz1] = np.bincount(plan["dest1"], weights=wr * plan["val1"], minlength=nnz1)
        if plan["x1sq"] is not None:
            x1 = plan["x1"]
            tail = A_r1.data[nnz1:].reshape(self.p + 1, m1q1)
            for j in range(self.p + 1):
                tail[j] = np.bincount(g1, weights=WXY[:, j] if x1 is None else WXY[:, j] * x1,
                                      minlength=m1q1)
        else:
            A_r1.data[nnz1:] = np.asarray(plan["Z1T"] @ WXY).T.ravel()
        A_1r.data[:] = A_r1.data[plan["tperm"]]
        self._a1y = A_r1.data[A_r1.data.size - m1q1:].copy()      # A_1r[:, -1], for solve()
        Arr = np.zeros((self.r, self.r))
        if rz:
            wr = w if plan["row_rr"] is None else w[plan["row_rr"]]
            Arr.ravel()[plan["uniq_rr"]] = np.bincount(plan["dest_rr"], weights=wr * plan["val_rr"],
                                                       minlength=plan["uniq_rr"].size)
            ZtW = np.empty((rz, self.p + 1))
            rows, cols, vals = plan["rest_nz"]
            for j in range(self.p + 1):
                ZtW[:, j] = np.bincount(cols, weights=vals * (WXY[:, j] if rows is None else WXY[rows, j]),
                                        minlength=rz)
            Arr[:rz, rz:] = ZtW
            Arr[rz:, :rz] = ZtW.T
        Arr[rz:, rz:] = XY.T @ WXY
        self.A_r1, self.A_1r, self.A_rr = A_r1, A_1r, Arr
        plan["schur"].refresh(A_r1)
        self._schur = plan["schur"]
        if getattr(self, "_S", None) is None or self._S.shape != Arr.shape:
            self._S = np.empty_like(Arr)
        return self

    def _make_reweight_plan(self):
        b1 = self.blocks[0]
        n = b1.X.shape[0]
        q1, m1q1, rz, r, p1 = self.q1, self.m1 * self.q1, self.rz, self.r, self.p + 1
        plan = {}
        if rz:
            Zr = self._Zrest.tocsr()
            Zr.sort_indices()
            cnt = np.diff(Zr.indptr)
            rows = np.repeat(np.arange(n), cnt)
            cols, vals = Zr.indices.astype(np.int64), Zr.data
            comp = np.tile(np.arange(q1), rows.size)
            row1 = np.repeat(rows, q1)
            key = np.repeat(cols, q1) * m1q1 + b1.codes[row1] * q1 + comp
            uniq1, dest1 = np.unique(key, return_inverse=True)
            plan.update(row1=row1, val1=np.repeat(vals, q1) * b1.X[row1, comp], dest1=dest1.ravel())
            # rest x rest: all ordered pairs of a row's entries
            e1s, e2s = [], []
            for kv in np.unique(cnt):
                if kv == 0:
                    continue
                st = Zr.indptr[:-1][cnt == kv]
                a, b = np.meshgrid(np.arange(kv), np.arange(kv), indexing="ij")
                e1s.append((st[:, None] + a.ravel()[None, :]).ravel())
                e2s.append((st[:, None] + b.ravel()[None, :]).ravel())
            e1, e2 = np.concatenate(e1s), np.concatenate(e2s)
            uniq_rr, dest_rr = np.unique(cols[e1] * r + cols[e2], return_inverse=True)
            plan.update(row_rr=rows[e1], val_rr=vals[e1] * vals[e2], uniq_rr=uniq_rr,
                        dest_rr=dest_rr.ravel(), rest_nz=(rows, cols, vals))
            ident = np.arange(n)
            for key in ("row1", "row_rr"):                # skip the gather when it is the identity
                if plan[key].size == n and np.array_equal(plan[key], ident):
                    plan[key] = None
            if rows.size == n and np.array_equal(rows, ident):
                plan["rest_nz"] = (None, cols, vals)
        else:
            uniq1 = np.zeros(0, dtype=np.int64)
        plan["nnz1"] = nnz1 = uniq1.size
        plan["x1sq"] = plan["x1"] = None
        if q1 == 1:
            x1 = b1.X[:, 0]
            ones = bool(np.all(x1 == 1.0))
            plan["x1"] = None if ones else x1.copy()
            plan["x1sq"] = x1 * x1
        row_all = np.concatenate([uniq1 // m1q1, np.repeat(np.arange(rz, r), m1q1)])
        col_all = np.concatenate([uniq1 % m1q1, np.tile(np.arange(m1q1), p1)])
        indptr = np.searchsorted(row_all, np.arange(r + 1))
        nnz = row_all.size
        A_r1 = sparse.csr_matrix((np.zeros(nnz), col_all, indptr), shape=(r, m1q1))
        idx = A_r1.copy()
        idx.data = np.arange(1.0, nnz + 1.0)
        T = idx.T.tocsr()
        T.sort_indices()
        plan["tperm"] = T.data.astype(np.int64) - 1
        plan["A_1r"] = sparse.csr_matrix((np.zeros(nnz), T.indices, T.indptr), shape=(m1q1, r))
        plan["A_r1"] = A_r1
        plan["Z1T"] = self._Z1.T.tocsr()
        # dense Schur product when it costs less than the enumerated pairs
        csc = A_r1.tocsc()
        kk = np.diff(csc.indptr[0:m1q1 + 1:q1]).astype(np.int64)
        npairs = int((kk * (kk + 1) // 2).sum()) * q1 * q1
        if r * r * m1q1 <= 4 * npairs and r * m1q1 <= 50_000_000:
            plan["schur"] = _DenseSchur(A_r1, self.m1, q1)
        else:
            plan["schur"] = _SchurProduct(A_r1, self.m1, q1, refreshable=True)
        del nnz1
        return plan

    # -- per-theta factorization -------------------------------------------------
    def _lambda_rest(self, lams):
        """Lambda on the rest (other RE blocks, then identity on X and y)."""
        if self._scalar_rest:
            d = np.ones(self.r)
            off = 0
            for b, lam in zip(self.blocks[1:], lams[1:]):
                d[off:off + b.nre] = lam[0, 0]
                off += b.nre
            return d
        mats = [sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                for b, lam in zip(self.blocks[1:], lams[1:])]
        mats.append(sparse.identity(self.p + 1))
        return sparse.block_diag(mats, format="csr")

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        lam1 = lams[0]
        if self.q1 == 1:
            t2 = lam1[0, 0] ** 2
            d = t2 * self.A11[:, 0, 0] + 1.0
            self.M1 = d
            self.logdet1 = np.log(d).sum()
            B = t2 / d
            self.M1inv = (1.0 / d)[:, None, None]
        else:
            M = np.einsum("ji,gjk,kl->gil", lam1, self.A11, lam1)
            M[:, np.arange(self.q1), np.arange(self.q1)] += 1.0
            self.M1 = M
            L11 = np.linalg.cholesky(M)
            self.logdet1 = 2.0 * np.log(np.diagonal(L11, axis1=1, axis2=2)).sum()
            self.M1inv = np.linalg.inv(M)
            B = lam1 @ self.M1inv @ lam1.T             # (m1, q1, q1)
        S = self._S
        np.copyto(S, self.A_rr)
        self._schur.subtract_from(S, B)
        lr = self._lambda_rest(lams)
        self.lam_rest = lr
        if isinstance(lr, np.ndarray):
            S *= lr[:, None]
            S *= lr[None, :]
        else:
            if self._schur.P is not None:                # only the lower triangle is current
                S = np.tril(S) + np.tril(S, -1).T
            S = np.asarray((lr.T @ (lr.T @ S).T).T)
        idx = np.arange(self.rz)
        S[idx, idx] += 1.0
        # In-place LAPACK on the transposed view: a C-ordered lower factor is a Fortran-ordered
        # upper one, so nothing is copied.  Only the lower triangle of Lr is meaningful.
        S = np.ascontiguousarray(S)
        c, info = linalg.lapack.dpotrf(S.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor is not positive definite")
        self.Lr = c.T
        self.lam1 = lam1
        self.lams = lams
        return self

    # -- quantities for the profiled objective -------------------------------------
    @property
    def diag_rest(self):
        return np.diagonal(self.Lr)

    @property
    def logdet_zz(self):
        """log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)."""
        return self.logdet1 + 2.0 * np.log(self.diag_rest[:self.rz]).sum()

    @property
    def logdet_xx(self):
        return 2.0 * np.log(self.diag_rest[self.rz:self.rz + self.p]).sum()

    @property
    def r2(self):
        """Penalized weighted residual sum of squares."""
        return self.Lr[-1, -1] ** 2

    # -- solutions at the current theta -------------------------------------------
    def _solve_M1(self, rhs):
        """Solve (Lambda_1' A_11 Lambda_1 + I) x = rhs blockwise; rhs is (m1 q1,)."""
        if self.q1 == 1:
            return rhs / self.M1
        x = np.linalg.solve(self.M1, rhs.reshape(self.m1, self.q1, 1))
        return x.reshape(-1)

    def _apply_lam1T(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1).reshape(-1)   # rows: Lambda_1' v_g

    def _apply_lam1(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1.T).reshape(-1)

    def _apply_lam_rest(self, v):
        lr = self.lam_rest
        return lr * v if isinstance(lr, np.ndarray) else lr @ v

    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""
        r = self.r
        Lv = self.Lr[:r - 1, :r - 1]
        l_rest = self.Lr[r - 1, :r - 1]
        v_rest = linalg.solve_triangular(Lv, l_rest, lower=True, trans="T", check_finite=False)
        full = np.append(v_rest, 0.0)
        t = self._apply_lam_rest(full)                 # Lambda_r v (y entry 0)
        a1y = getattr(self, "_a1y", None)
        if a1y is None:
            a1y = self.A_1r[:, r - 1].toarray().ravel()
        rhs = self._apply_lam1T(a1y - self.A_1r @ t)
        u1 = self._solve_M1(rhs)
        u = np.concatenate([u1, v_rest[:self.rz]])
        beta = v_rest[self.rz:]
        return u, beta

    def cov_beta_unscaled(self):
        """(X' V^-1 X)^-1 / sigma^2: the inverse of L_XX L_XX'."""
        Lxx = self.Lr[self.rz:self.rz + self.p, self.rz:self.rz + self.p]
        Li = linalg.solve_triangular(Lxx, np.eye(self.p), lower=True, check_finite=False)
        return Li.T @ Li

    def condvar_u(self):
        """Diagonal blocks of (L_ZZ L_ZZ')^-1, per block as (m, q, q) arrays.

        This is lme4's conditional variance of the spherical random effects
        given beta, before scaling by sigma^2 and Lambda.
        """
        rz = self.rz
        out = []
        # first block: M1^-1 + E'E with E = Lzz^-1 Lambda_rz' A_rz,1 Lambda_1 M1^-1
        if rz:
            Lzz = self.Lr[:rz, :rz]
            Linv = linalg.solve_triangular(Lzz, np.eye(rz), lower=True, check_finite=False)
        if self.q1 == 1:
            base = (1.0 / self.M1)[:, None, None]
        else:
            base = np.linalg.inv(self.M1)
        if rz:
            lr = self.lam_rest
            if isinstance(lr, np.ndarray):
                K = Linv * lr[:rz][None, :]
            else:
                K = np.asarray((lr[:rz, :rz] @ Linv.T).T)
            # (m1 q1) x rz, then right-multiply by K' -> rows = columns of A_1,rz Lambda_rz Lzz^-T
            F = np.asarray(self.A_1r[:, :rz] @ K.T)     # (m1 q1) x rz
            F = F.reshape(self.m1, self.q1, rz)
            F = np.einsum("ji,gjr->gir", self.lam1, F)   # Lambda_1' applied per level
            if self.q1 == 1:
                E = F / self.M1[:, None, None]
            else:
                E = np.linalg.solve(self.M1, F)
            base = base + np.einsum("gir,gjr->gij", E, E)
        out.append(base)
        if rz:
            off = 0
            P = Linv
            for b in self.blocks[1:]:
                cols = P[:, off:off + b.nre].reshape(rz, b.m, b.q)
                out.append(np.einsum("rgi,rgj->gij", cols, cols))
                off += b.nre
        return out

    # -- pieces of the gradient of the profiled objective ---------------------------
    def inverse_block_sums(self, k):
        """Sum over levels of the diagonal blocks of Omega_P^-1, one (q, q) array per block.

        Omega_P is the leading principal submatrix of the scaled system that
        holds all random effects and the first ``k`` fixed effects (k = 0 for
        the ML objective, k = p for REML).  With ``m I - S`` these give the
        derivative of log det Omega_P (see :meth:`mlmext.lmm.LinearMixedModel.gradient`).
        """
        rz, r = self.rz, self.r
        kk = rz + k
        out = []
        # inverse of the leading kk x kk block, embedded in an r x r array (zero elsewhere):
        # factor diag(L_P, I) -> potri gives diag(Omega_P^-1, I) in place (lower triangle)
        X = self.Lr.copy()
        X[kk:, :] = 0.0
        X[np.arange(kk, r), np.arange(kk, r)] = 1.0
        if kk:
            with blas_threads(kk, INVERSE_THREADED_MIN_ROWS):
                _, info = linalg.lapack.dpotri(X.T, lower=0, overwrite_c=1)
            if info:
                raise np.linalg.LinAlgError("singular factor in gradient")
        X[np.arange(kk, r), np.arange(kk, r)] = 0.0
        X = np.tril(X) if not (isinstance(self.lam_rest, np.ndarray) and self._schur.P is not None) else X
        diagX = np.diagonal(X).copy()
        blocks_rest = []
        off = 0
        for b in self.blocks[1:]:
            if b.q == 1:
                blocks_rest.append(diagX[off:off + b.m].sum().reshape(1, 1))
            else:
                idx = off + np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :]
                low = np.tril(X[idx[:, :, None], idx[:, None, :]]).sum(axis=0)
                blocks_rest.append(low + np.tril(low, -1).T)
            off += b.nre
        lr = self.lam_rest
        if isinstance(lr, np.ndarray) and self._schur.P is not None:
            # only the lower triangle is read: K = Lambda_r X Lambda_r', off-diagonal doubled
            K = X
            K *= (2.0 * lr)[:, None]
            K *= lr[None, :]
            K[np.diag_indices(r)] *= 0.5
            V = (self._schur.P.T @ K.ravel()).reshape(self.m1, self.q1, self.q1)
        else:
            X = X + np.tril(X, -1).T
            if isinstance(lr, np.ndarray):
                K = X * lr[:, None] * lr[None, :]
            else:
                K = np.asarray(lr @ np.asarray(lr @ X).T)         # Lambda_r X Lambda_r' (X symmetric)
            V = self._schur.trace_weights(K)
        C = self.lam1 @ self.M1inv if self.q1 > 1 else self.lam1[0, 0] * self.M1inv
        Vs = 0.5 * (V + np.swapaxes(V, 1, 2))
        out.append(self.M1inv.sum(axis=0) + np.einsum("gia,gij,gjb->ab", C, Vs, C))
        out.extend(blocks_rest)
        return out

    def ztres(self, u, beta, lams):
        """Z' W (y - X beta - Z Lambda u) per block, as (m, q) arrays (no n-sized work)."""
        m1, q1 = self.m1, self.q1
        b1 = (u[:m1 * q1].reshape(m1, q1) @ lams[0].T)
        b_rest = self._apply_lam_rest(np.concatenate([u[m1 * q1:], np.zeros(self.p + 1)]))[:self.rz]
        c_r = np.concatenate([-b_rest, -np.asarray(beta, dtype=float), [1.0]])
        w1 = -np.einsum("gij,gj->gi", self.A11, b1).ravel() + self.A_1r @ c_r
        wr = -(self.A_r1[:self.rz] @ b1.ravel()) + self.A_rr[:self.rz] @ c_r
        out = [w1.reshape(m1, q1)]
        off = 0
        for b in self.blocks[1:]:
            out.append(wr[off:off + b.nre].reshape(b.m, b.q))
            off += b.nre
        return out

    # -- pieces of the inverse for GLMM gradients (at the current factor) -----------------
    def _lam_rest_T(self, v):
        lr = self.lam_rest
        return lr * v if isinstance(lr, np.ndarray) else lr.T @ v

    def solve_re(self, v):
        """Solve ``(Lambda' Z' W Z Lambda + I) x = v`` for the random effects.

        ``v`` and ``x`` hold all random effects in block order (as ``u`` from
        :meth:`solve`); the fixed-effects columns play no part.
        """
        v = np.asarray(v, dtype=float)
        m1q1, rz = self.m1 * self.q1, self.rz
        v1 = v[:m1q1]
        y1 = self._solve_M1(v1)
        if rz == 0:
            return y1
        full = np.zeros(self.r)
        t = self.A_r1 @ self._apply_lam1(y1)
        full[:rz] = t[:rz]
        rhs = v[m1q1:] - self._lam_rest_T(full)[:rz]
        Lzz = self.Lr[:rz, :rz]
        xr = linalg.cho_solve((Lzz, True), rhs, check_finite=False)
        full[:] = 0.0
        full[:rz] = xr
        x1 = self._solve_M1(v1 - self._apply_lam1T(self.A_1r @ self._apply_lam_rest(full)))
        return np.concatenate([x1, xr])

    def _a1z_index(self):
        """Entries of ``A_1r`` in the random-effects columns of the rest: (positions, cols, indptr, rows)."""
        A = self.A_1r
        cache = getattr(self, "_a1z_cache", None)
        if cache is None or cache[0] is not A.indices or cache[1] != A.nnz:
            keep = np.flatnonzero(A.indices < self.rz)
            rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))[keep]
            indptr = np.searchsorted(rows, np.arange(A.shape[0] + 1))
            cache = (A.indices, A.nnz, keep, A.indices[keep], indptr, rows)
            self._a1z_cache = cache
        return cache[2:]

    def local_inverse(self):
        """Row-wise pieces of ``M^-1``, ``M = Lambda' Z' W Z Lambda + I``, at the current factor.

        For row i let ``t_i = Lambda' z_i`` (nonzero only at the row's own level
        of each block) and ``rho_i = M^-1 t_i`` restricted to those positions.

        Returns
        -------
        t, rho : list of ndarray
            One (n, q_b) array per block.  ``sum_b (t_b * rho_b).sum(1)`` is the
            leverage ``z_i' Lambda M^-1 Lambda' z_i``.  Cost: the dense inverse
            of the rest of the factor, a sparse-times-dense product with it and
            O(n k^2) gathers for k random effects per row outside the first
            block; nothing of size n^2.
        """
        b1 = self.blocks[0]
        g = b1.codes
        q1, m1, rz = self.q1, self.m1, self.rz
        lams = self.lams
        a = b1.X @ lams[0]                                 # row i: (Lambda_1' x_i)'
        Minv = self.M1inv if self.q1 > 1 else (1.0 / self.M1)[:, None, None]
        if rz == 0:
            return [a], [np.einsum("iab,ib->ia", Minv[g], a)]
        P_list, c_list = [], []
        off = 0
        for b, lam in zip(self.blocks[1:], lams[1:]):
            P_list.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
            c_list.append(b.X @ lam)
            off += b.nre
        P = np.hstack(P_list)
        c = np.hstack(c_list)
        Ginv, info = linalg.lapack.dpotri(self.Lr[:rz, :rz], lower=1)
        if info:
            raise np.linalg.LinAlgError("singular factor in local_inverse")
        G = np.tril(Ginv) + np.tril(Ginv, -1).T            # S^-1 (rest random effects)
        lr = self.lam_rest
        if q1 == 1 and isinstance(lr, np.ndarray):        # scalar blocks: work on the arrays
            A = self.A_1r
            keep, cols, indptr, rows = self._a1z_index()
            cdata = A.data[keep] * (lams[0][0, 0] * Minv[rows, 0, 0]) * lr[cols]
            if m1 * rz <= 4_000_000:
                Cd = np.zeros((m1, rz))
                Cd[rows, cols] = cdata
                K = Cd @ G
            else:
                K = np.asarray(sparse.csr_matrix((cdata, cols, indptr), shape=(m1, rz)) @ G)
            J = np.bincount(rows, weights=cdata * K[rows, cols], minlength=m1)
            base = Minv[:, 0, 0] + J
            KP = K[g[:, None], P]                          # (n, k)
            rho1 = (base[g] * a[:, 0] - np.einsum("ik,ik->i", KP, c))[:, None]
            if P.shape[1] == 1:
                rhor = G[P[:, 0], P[:, 0]][:, None] * c - KP * a
            else:
                GPP = G[P[:, :, None], P[:, None, :]]
                rhor = np.einsum("ikl,il->ik", GPP, c) - KP * a
            return self._split_local(a, rho1, c_list, rhor)
        keep, cols, indptr, rows = self._a1z_index()
        A1z = sparse.csr_matrix((self.A_1r.data[keep], cols, indptr), shape=(m1 * q1, rz))
        if isinstance(lr, np.ndarray):
            A1z = A1z @ sparse.diags(lr[:rz])
        else:
            A1z = A1z @ lr[:rz, :rz]
        A1z = sparse.csr_matrix(A1z)
        # C = M11^-1 Lambda_1' A_1z Lambda_z (sparse, level blocks of rows)
        C = _blockdiag_sparse(np.einsum("gab,cb->gac", Minv, lams[0])) @ A1z
        C = sparse.csr_matrix(C)
        K = np.asarray(C @ G)                              # (m1 q1) x rz, dense
        Cd = C.toarray().reshape(m1, q1, rz)
        K3 = K.reshape(m1, q1, rz)
        J = np.einsum("gar,gbr->gab", K3, Cd)
        KP = K3[g[:, None, None], np.arange(q1)[None, :, None], P[:, None, :]]     # (n, q1, k)
        GPP = G[P[:, :, None], P[:, None, :]]                                    # (n, k, k)
        rho1 = np.einsum("iab,ib->ia", Minv[g] + J[g], a) - np.einsum("iak,ik->ia", KP, c)
        rhor = np.einsum("ikl,il->ik", GPP, c) - np.einsum("iak,ia->ik", KP, a)
        return self._split_local(a, rho1, c_list, rhor)

    def _split_local(self, a, rho1, c_list, rhor):
        t_out, rho_out = [a], [rho1]
        off = 0
        for b, cb in zip(self.blocks[1:], c_list):
            t_out.append(cb)
            rho_out.append(rhor[:, off:off + b.q])
            off += b.q
        return t_out, rho_out
