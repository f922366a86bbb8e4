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

Nested factors.  When every level of the first block lies within one level of
the second (``(1 | school/cls)``: each class in one school), the second block
does not fill either: its Schur complement ``Lambda_2' (A_22 - A_21 B A_12)
Lambda_2 + I`` is block diagonal (one q2 x q2 block per level, since a level
of the first factor meets only its parent level), and ``L_21`` has one
q2 x q1 block per level of the first factor.  The factor then has three parts,

    L = [[L11,  0,   0 ],
         [L21, L22,  0 ],
         [ C1,  C2,  Lr]]

with ``L22`` block diagonal, and only the blocks after the second (and X, y)
are dense (``Lr``; ``rz`` counts their random effects).  This is what
MixedModels.jl does for nested factors; it turns the O(m2^3) dense
factorization of the second block into O(m1 + m2) work.  Only the second block
is treated so: with three or more nested factors the third and later ones
stay in the dense part.  ``nested=False`` (or the class attribute
``nested_default``) keeps the general path.
"""
from __future__ import annotations

import copy
import functools

import numpy as np
from scipy import linalg, sparse

from ._blas import inverse_threads

__all__ = ["BlockedCholesky"]

#: systems with ``A_r1`` (r x m1 q1) of at most this many entries hold it dense for the
#: per-theta products (scipy.sparse's per-call overhead outweighs the arithmetic there)
SMALL_DENSE = 20_000
#: set_data forms the cross-products with dense matrices when that costs at most this many flops
SMALL_DENSE_FLOPS = 2_000_000


def _dense_Z(b):
    """Dense n x (m q) model matrix of a block (as ``b.Z()``), for small systems."""
    n, q = b.X.shape
    Z = np.zeros((n, b.m * q))
    Z[np.arange(n)[:, None], b.codes[:, None] * q + np.arange(q)[None, :]] = b.X
    return Z


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


def _nesting_parent(b1, b2):
    """``parent[g]``: the level of block ``b2`` that holds level g of ``b1``, or None when some
    level of ``b1`` meets several levels of ``b2`` (not nested)."""
    parent = np.full(b1.m, -1, dtype=np.int64)
    parent[b1.codes] = b2.codes
    if parent.min() < 0 or not np.array_equal(parent[b1.codes], b2.codes):
        return None
    return parent


def _rmul(X, R):
    """``X_g R`` for a stack X (m, a, b) and one matrix R, as one matrix product."""
    m, a, b = X.shape
    return (X.reshape(m * a, b) @ R).reshape(m, a, -1)


def _lmul(L, X):
    """``L X_g`` for one matrix L and a stack X (m, a, b), as one matrix product."""
    m, a, b = X.shape
    return np.swapaxes((np.swapaxes(X, 1, 2).reshape(m * b, a) @ L.T).reshape(m, b, -1), 1, 2)


def _sandwich(X, L, R):
    """``L' X_g R`` for each matrix of the stack X."""
    return _lmul(L.T, _rmul(X, R))


def _spd_inv_logdet(M):
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


def _tri_inv(L):
    """Inverse of the lower triangle of ``L`` (its strict upper triangle is ignored)."""
    with inverse_threads(L.shape[0]):
        Li, info = linalg.lapack.dtrtri(L, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return np.tril(Li)


def _solve_lower_t(L, b):
    """Solve ``L' x = b`` for lower-triangular ``L``: the LAPACK call ``solve_triangular`` makes
    for a C-ordered ``L`` (``trtrs`` on its transpose), without that wrapper's ~20 us of checks."""
    if L.shape[0] == 0:                          # LAPACK rejects empty systems
        return np.zeros(0)
    x, info = linalg.lapack.dtrtrs(L.T, b, lower=0, trans=0)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return x


def _level_gram(E):
    """``sum_g E_g E_g'`` for a stack E (m, q, k): ``np.tensordot(E, E, ([0, 2], [0, 2]))`` as
    one matrix product, without tensordot's overhead."""
    F = np.swapaxes(E, 0, 1).reshape(E.shape[1], -1)
    return F @ F.T


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
    nested : bool, optional
        Keep the second block block-diagonal when the first block's factor is
        nested in it (attribute ``nested`` says whether it is).  None (default):
        ``nested_default``, i.e. whenever the levels are nested; False: the dense
        path always; True: require nesting (ValueError otherwise).
    """

    #: default of ``nested``: use the block-diagonal second block when the first factor nests in it
    nested_default = True

    def __init__(self, blocks, XY, weights=None, reweighting=False, nested=None):
        self.blocks = blocks
        b1 = blocks[0]
        self.m1, self.q1 = b1.m, b1.q
        parent = None
        if (self.nested_default if nested is None else nested) and len(blocks) > 1:
            parent = _nesting_parent(b1, blocks[1])
        if nested and parent is None and len(blocks) > 1:
            raise ValueError(f"the levels of {b1.name!r} are not nested in those of {blocks[1].name!r}")
        self.nested = parent is not None
        self._k0 = 2 if self.nested else 1               # index of the first densely stored block
        if self.nested:
            b2 = blocks[1]
            self.m2, self.q2 = b2.m, b2.q
            self.parent = parent
        rest = blocks[self._k0:]
        self._rest_blocks = rest
        self.rest_sizes = [b.nre for b in rest]
        self.rz = int(sum(self.rest_sizes))
        self.p = XY.shape[1] - 1
        self.r = self.rz + self.p + 1
        self._scalar_rest = all(b.q == 1 for b in rest)
        self._schur = None
        if reweighting:             # set up for repeated reweight() calls (GLMM PIRLS) only
            self.reweight(XY, weights)
        else:
            self.set_data(XY, weights)

    # sparse model matrices, built when first needed (small systems' set_data does without them)
    @functools.cached_property
    def _Zrest(self):
        return sparse.hstack([b.Z() for b in self._rest_blocks], format="csc") if self.rz else None

    @functools.cached_property
    def _Z1(self):
        return self.blocks[0].Z().tocsc()

    def set_data(self, XY, weights=None):
        """(Re)compute the cross-products for new [X y] values and/or weights.

        The random-effects structure is kept; a GLMM calls this once per
        PIRLS iteration with its working weights and response.
        """
        n = XY.shape[0]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        b1 = self.blocks[0]
        self.A11 = _block_cross(b1.X, b1.codes, b1.m, w)
        m1q1 = self.m1 * self.q1
        if n * (m1q1 + self.r) * self.r <= SMALL_DENSE_FLOPS:
            # small: dense products (scipy.sparse construction would cost ~1 ms of overhead)
            sw = np.sqrt(w)[:, None]
            Zr = np.hstack([_dense_Z(b) for b in self._rest_blocks] + [XY]) * sw
            self.A_r1 = sparse.csr_matrix(Zr.T @ (_dense_Z(b1) * sw))
            self.A_rr = Zr.T @ Zr
        else:
            sw = sparse.diags(np.sqrt(w))
            XYs = sparse.csc_matrix(XY)
            Zr = XYs if self._Zrest is None else sparse.hstack([self._Zrest, XYs], format="csc")
            Zr = (sw @ Zr).tocsc()
            Z1 = (sw @ self._Z1).tocsc()
            self.A_r1 = (Zr.T @ Z1).tocsr()          # r x (m1 q1), sparse
            self.A_rr = (Zr.T @ Zr).toarray()        # r x r, dense
        self.A_1r = self.A_r1.T.tocsr()
        if self.r * m1q1 <= SMALL_DENSE:
            self._schur = _DenseSchur(self.A_r1, self.m1, self.q1)
        else:
            self._schur = _SchurProduct(self.A_r1, self.m1, self.q1)
        self._set_operators()
        self._a1y = self.A_r1[self.r - 1].toarray().ravel()      # A_1r[:, -1], for solve()
        self._S = np.empty_like(self.A_rr)
        if self.nested:
            self._nested_cross(XY, w)
        return self

    def workspace(self):
        """An independent factor over the same cross-products, for another thread or objective.

        The cross-products (and the Schur plan) are shared read-only; everything
        :meth:`update` writes (the factor, its scratch matrix) is the copy's own.
        Not for :meth:`reweight`/:meth:`set_data`, which overwrite the shared
        cross-products: a reweighting factor is built per objective instead.
        """
        new = copy.copy(self)
        new._S = np.empty_like(self._S)
        return new

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
        self._set_operators()
        if getattr(self, "_S", None) is None or self._S.shape != Arr.shape:
            self._S = np.empty_like(Arr)
        if self.nested:
            self._nested_cross(XY, w)
        return self

    def _set_operators(self):
        """``_ar1`` / ``_a1r``: ``A_r1`` / ``A_1r`` for the per-theta products.  Small systems
        keep them as dense arrays (the dense Schur product holds ``A_r1`` anyway): a numpy
        product of a few hundred entries costs ~1 us, a scipy.sparse one ~20 us of overhead."""
        schur = self._schur
        if isinstance(schur, _DenseSchur) and schur.A.size <= SMALL_DENSE:
            self._ar1, self._a1r = schur.A, schur.A.T
        else:
            self._ar1, self._a1r = self.A_r1, self.A_1r

    def _nested_cross(self, XY, w):
        """Cross-products with the second (nesting) block: ``A21`` per level of the first block
        as an (m1, q2, q1) array (its only nonzero block in a row of levels is at the parent),
        ``A22`` as (m2, q2, q2) and ``A_r2`` (rest x second block) dense."""
        b1, b2 = self.blocks[0], self.blocks[1]
        m1, m2, q1, q2, rz = self.m1, self.m2, self.q1, self.q2, self.rz
        m2q2 = m2 * q2
        A21 = np.empty((m1, q2, q1))
        X1w = b1.X * w[:, None]
        for a in range(q2):
            for b in range(q1):
                A21[:, a, b] = np.bincount(b1.codes, weights=X1w[:, b] * b2.X[:, a], minlength=m1)
        self.A21 = A21
        self.A22 = _block_cross(b2.X, b2.codes, m2, w)
        A_r2 = np.empty((self.r, m2q2))
        X2w = b2.X * w[:, None]
        for j in range(self.p + 1):
            row = A_r2[rz + j].reshape(m2, q2)
            for a in range(q2):
                row[:, a] = np.bincount(b2.codes, weights=X2w[:, a] * XY[:, j], minlength=m2)
        if rz:
            plan = getattr(self, "_n2_plan", None)
            if plan is None:                             # rest nonzeros -> (rest column, level of b2)
                Zr = self._Zrest.tocoo()
                rows = np.repeat(Zr.row.astype(np.int64), q2)
                comp = np.tile(np.arange(q2), Zr.nnz)
                key = np.repeat(Zr.col.astype(np.int64), q2) * m2q2 + b2.codes[rows] * q2 + comp
                plan = self._n2_plan = (rows, np.repeat(Zr.data, q2) * b2.X[rows, comp], key)
            rows, vals, key = plan
            A_r2[:rz] = np.bincount(key, weights=w[rows] * vals, minlength=rz * m2q2).reshape(rz, m2q2)
        self.A_r2 = A_r2

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
            for b, lam in zip(self._rest_blocks, lams[self._k0:]):
                d[off:off + b.nre] = lam[0, 0]
                off += b.nre
            return d
        mats = [sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                for b, lam in zip(self._rest_blocks, lams[self._k0:])]
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
            self.M1inv, self.logdet1 = _spd_inv_logdet(M)      # closed forms for q1 = 2
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
        if self.nested:
            S -= self._update_second(lam1, lams[1], lr)
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

    def _update_second(self, lam1, lam2, lr):
        """Factor the second (nesting) block at the current theta; returns ``L_r2 L_r2'``.

        With ``W_g = Lambda_2' A21_g Lambda_1`` (the only nonzero block of level g of the first
        factor in the second block's rows, at its parent level h) and ``K_g = M1_g^-1 W_g'``,
        the Schur complement of the first block in the second is block diagonal:

            M2_h = Lambda_2' A22_h Lambda_2 + I - sum_{g in h} W_g K_g

        and the part of the rest's Schur complement that the second block removes is
        ``S_r2 M2^-1 S_r2'`` with ``S_r2 = Lambda_r' (A_r2 Lambda_2 - A_r1 Lambda_1 K)``.
        """
        m1, m2, q1, q2, r = self.m1, self.m2, self.q1, self.q2, self.r
        if q1 == 1 and q2 == 1:
            l1, l2 = lam1[0, 0], lam2[0, 0]
            W = (l1 * l2) * self.A21[:, 0, 0]
            K = W / self.M1
            d = l2 * l2 * self.A22[:, 0, 0] + 1.0 - self._sum_children(W * K)
            if not (d > 0).all():
                raise np.linalg.LinAlgError("second block not positive definite")
            self.K = K.reshape(m1, 1, 1)
            self.M2 = d.reshape(m2, 1, 1)
            self.M2inv = (1.0 / d).reshape(m2, 1, 1)
            self.logdet2 = np.log(d).sum()
            D = l1 * K
        else:
            if q1 == 1:
                W = (self.A21[:, :, 0] @ lam2)[:, :, None] * lam1[0, 0]    # (m1, q2, 1)
                K = np.swapaxes(W, 1, 2) * self.M1inv                    # (m1, 1, q2)
                WK = W * K                                               # outer products
                D = lam1[0, 0] * K
            else:
                W = _sandwich(self.A21, lam2, lam1)                      # (m1, q2, q1)
                K = self.M1inv @ np.swapaxes(W, 1, 2)                    # (m1, q1, q2)
                WK = W @ K
                D = _lmul(lam1, K)                                       # (m1, q1, q2)
            M2 = _sandwich(self.A22, lam2, lam2)
            M2[:, np.arange(q2), np.arange(q2)] += 1.0
            M2 -= self._sum_children(WK.reshape(m1, -1)).reshape(m2, q2, q2)
            self.K, self.M2 = K, M2
            self.M2inv, self.logdet2 = _spd_inv_logdet(M2)
        self.lam2 = lam2
        # A_r1 times the block-sparse (Lambda_1 K_g at (g, parent g)): one bincount over A_r1's entries
        A = self.A_r1
        cache = getattr(self, "_ar1_cache", None)
        if cache is None or cache[0] is not A.indices or cache[1] != A.nnz:
            rows = np.repeat(np.arange(r, dtype=np.int64), np.diff(A.indptr))
            cols = A.indices.astype(np.int64)
            dest = (rows * (m2 * q2) + self.parent[cols // q1] * q2)[:, None] + np.arange(q2)[None, :]
            cache = self._ar1_cache = (A.indices, A.nnz, cols, dest.ravel())
        _, _, cols, dest = cache
        vals = (A.data[:, None] * D.reshape(m1 * q1, q2)[cols]).ravel()
        Sr2 = (self.A_r2.reshape(r, m2, q2) @ lam2).reshape(r, m2 * q2)
        Sr2 -= np.bincount(dest, weights=vals, minlength=r * m2 * q2).reshape(r, m2 * q2)
        if isinstance(lr, np.ndarray):
            Sr2 *= lr[:, None]
        else:
            Sr2 = np.asarray(lr.T @ Sr2)
        if q2 == 1:
            T = Sr2 * self.M2inv[:, 0, 0][None, :]
        else:
            T = (Sr2.reshape(r, m2, 1, q2) @ self.M2inv).reshape(r, -1)
        return T @ Sr2.T

    def _sum_children(self, X):
        """Sums of the rows of ``X`` (one row per level of the first block) within each level of
        the second block: (m1,) or (m1, k) -> (m2,) or (m2, k)."""
        par, m2 = self.parent, self.m2
        if X.ndim == 1:
            return np.bincount(par, weights=X, minlength=m2)
        k = X.shape[1]
        if k <= 16:
            out = np.empty((m2, k))
            for j in range(k):
                out[:, j] = np.bincount(par, weights=X[:, j], minlength=m2)
            return out
        ch = getattr(self, "_children", None)
        if ch is None:
            ch = self._children = sparse.csr_matrix((np.ones(self.m1), (par, np.arange(self.m1))),
                                                    shape=(m2, self.m1))
        return np.asarray(ch @ X)

    def _front_solve(self, c1, c2):
        """Solve with the first two blocks of the nested system, ``M_F [x1; x2] = [c1; c2]``.

        ``c1`` is (m1, q1, k), ``c2`` (m2, q2, k); ``M_F = [[M1, W'], [W, Lambda_2' A22 Lambda_2
        + I]]`` with ``W`` block-sparse (one block per level of the first factor).
        """
        K = self.K
        y1 = self.M1inv @ c1 if self.q1 > 1 else c1 * self.M1inv
        kc = np.swapaxes(K, 1, 2) @ c1                           # K_g' c1_g = W_g M1_g^-1 c1_g
        z2 = c2 - self._sum_children(kc.reshape(self.m1, -1)).reshape(c2.shape)
        x2 = self.M2inv @ z2
        x1 = y1 - K @ x2[self.parent]
        return x1, x2

    def _front_diag(self):
        """Diagonal blocks of ``M_F^-1`` for the first block (m1, q1, q1); the second's are ``M2inv``."""
        return self.M1inv + (self.K @ self.M2inv[self.parent]) @ np.swapaxes(self.K, 1, 2)

    def _front_rest(self, Kr):
        """``[Lambda_1' A_1R; Lambda_2' A_2R] Kr`` as (m1, q1, k) and (m2, q2, k) arrays: the
        first two blocks' rows of the system times ``Kr`` (rest rows R = the first rows of the rest)."""
        nr, k = Kr.shape
        if nr < self.r:                                  # zero rows rather than a column slice
            Kr = np.concatenate([Kr, np.zeros((self.r - nr, k))])
        F1 = np.asarray(self._a1r @ Kr).reshape(self.m1, self.q1, k)
        F1 = self.lam1.T @ F1
        F2 = (self.A_r2.T @ Kr).reshape(self.m2, self.q2, k)
        F2 = self.lam2.T @ F2
        return F1, F2

    # -- quantities for the profiled objective -------------------------------------
    @property
    def diag_rest(self):
        return np.diagonal(self.Lr)

    @property
    def logdet_zz(self):
        """log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)."""
        ld = self.logdet1 + 2.0 * np.log(self.diag_rest[:self.rz]).sum()
        return ld + self.logdet2 if self.nested else ld

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
        return (self.M1inv @ rhs.reshape(self.m1, self.q1, 1)).reshape(-1)

    def _apply_lam1T(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1).reshape(-1)   # rows: Lambda_1' v_g

    def _apply_lam1(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1.T).reshape(-1)

    def _apply_lam_rest(self, v):
        lr = self.lam_rest
        return lr * v if isinstance(lr, np.ndarray) else lr @ v

    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""
        if self.nested:
            return self._nested_solve()
        r = self.r
        v_rest = _solve_lower_t(self.Lr[:r - 1, :r - 1], self.Lr[r - 1, :r - 1])
        full = np.zeros(r)
        full[:r - 1] = v_rest
        t = self._apply_lam_rest(full)                 # Lambda_r v (y entry 0)
        rhs = self._apply_lam1T(self._a1y - self._a1r @ t)
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
        if self.nested:
            return self._nested_condvar_u()
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
        if self.nested:
            return self._nested_inverse_block_sums(k)
        rz, r = self.rz, self.r
        kk = rz + k
        out = []
        # inverse of the leading kk x kk block, embedded in an r x r array (zero elsewhere):
        # factor diag(L_P, I) -> potri gives diag(Omega_P^-1, I) in place (lower triangle)
        X = self.Lr.copy()
        X[kk:, :] = 0.0
        X[np.arange(kk, r), np.arange(kk, r)] = 1.0
        if kk:
            with inverse_threads(kk):
                _, info = linalg.lapack.dpotri(X.T, lower=0, overwrite_c=1)
            if info:
                raise np.linalg.LinAlgError("singular factor in gradient")
        X[np.arange(kk, r), np.arange(kk, r)] = 0.0
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
            # symmetric from the lower triangle (the upper one holds leftovers): one pass, no sums
            X = np.where(np.tri(r, dtype=bool), X, X.T)
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
        if self.nested:
            return self._nested_ztres(u, beta, lams)
        m1, q1 = self.m1, self.q1
        b1 = (u[:m1 * q1].reshape(m1, q1) @ lams[0].T)
        b_rest = self._apply_lam_rest(np.concatenate([u[m1 * q1:], np.zeros(self.p + 1)]))[:self.rz]
        c_r = np.concatenate([-b_rest, -np.asarray(beta, dtype=float), [1.0]])
        w1 = -np.einsum("gij,gj->gi", self.A11, b1).ravel() + self._a1r @ c_r
        # all rows, then the first rz: a row slice of a sparse matrix costs more than p + 1 rows
        wr = -(self._ar1 @ b1.ravel())[:self.rz] + self.A_rr[:self.rz] @ c_r
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
        if self.nested:
            return self._nested_solve_re(v)
        m1q1, rz = self.m1 * self.q1, self.rz
        v1 = v[:m1q1]
        y1 = self._solve_M1(v1)
        if rz == 0:
            return y1
        full = np.zeros(self.r)
        t = self._ar1 @ self._apply_lam1(y1)
        full[:rz] = t[:rz]
        rhs = v[m1q1:] - self._lam_rest_T(full)[:rz]
        Lzz = self.Lr[:rz, :rz]
        xr = linalg.cho_solve((Lzz, True), rhs, check_finite=False)
        full[:] = 0.0
        full[:rz] = xr
        x1 = self._solve_M1(v1 - self._apply_lam1T(self._a1r @ self._apply_lam_rest(full)))
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
        if self.nested:
            return self._nested_local_inverse()
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

    # -- the same quantities when the second block is kept block diagonal (nested factors) --------
    def _rest_lam_cols(self, Linv, nr):
        """``Lambda_R Linv'`` for the first ``nr`` rest rows (``Linv`` is nr x nr)."""
        lr = self.lam_rest
        if isinstance(lr, np.ndarray):
            return (Linv * lr[:nr][None, :]).T
        return np.asarray(lr[:nr, :nr] @ Linv.T)

    def _nested_solve(self):
        r, rz, m1, q1 = self.r, self.rz, self.m1, self.q1
        v_rest = _solve_lower_t(self.Lr[:r - 1, :r - 1], self.Lr[r - 1, :r - 1])
        t = self._apply_lam_rest(np.append(v_rest, 0.0))
        c1 = self._apply_lam1T(self._a1y - self._a1r @ t).reshape(m1, q1, 1)
        c2 = ((self.A_r2[r - 1] - t @ self.A_r2).reshape(self.m2, self.q2) @ self.lam2).reshape(
            self.m2, self.q2, 1)
        x1, x2 = self._front_solve(c1, c2)
        u = np.concatenate([x1.ravel(), x2.ravel(), v_rest[:rz]])
        return u, v_rest[rz:]

    def _nested_condvar_u(self):
        rz = self.rz
        base1, base2 = self._front_diag(), self.M2inv.copy()
        out = [base1, base2]
        if rz:
            E1, E2, cols = self._nested_rest_inverse(rz)
            base1 += np.einsum("gir,gjr->gij", E1, E1)
            base2 += np.einsum("gir,gjr->gij", E2, E2)
            out.extend(np.einsum("rgi,rgj->gij", c, c) for c in cols)
        return out

    def _nested_rest_inverse(self, kk):
        """The pieces of the inverse that the leading ``kk`` rows of the dense factor give:
        ``E = M_F^-1 Omega_FP L_P^-T`` split into the front's two blocks, and ``L_P^-1``'s
        columns for each further block, shaped (kk, m, q)."""
        Linv = _tri_inv(self.Lr[:kk, :kk])
        E1, E2 = self._front_solve(*self._front_rest(self._rest_lam_cols(Linv, kk)))
        cols, off = [], 0
        for b in self._rest_blocks:
            cols.append(Linv[:, off:off + b.nre].reshape(kk, b.m, b.q))
            off += b.nre
        return E1, E2, cols

    def _nested_inverse_block_sums(self, k):
        """:meth:`inverse_block_sums` with the first two blocks as the (sparse) front F:
        ``(Omega_P^-1)_FF = M_F^-1 + E E'`` with ``E = M_F^-1 Omega_FP L_P^-T`` and
        ``(Omega_P^-1)_PP = L_P^-T L_P^-1`` (``L_P``: leading rows of the dense factor)."""
        kk = self.rz + k
        s1 = self._front_diag().sum(axis=0)
        s2 = self.M2inv.sum(axis=0)
        out = [s1, s2]
        if kk == 0:
            return out
        E1, E2, cols = self._nested_rest_inverse(kk)
        s1 += _level_gram(E1)
        s2 += _level_gram(E2)
        out.extend(np.einsum("rgi,rgj->ij", c, c) for c in cols)
        return out

    def _nested_ztres(self, u, beta, lams):
        m1, q1, m2, q2, rz = self.m1, self.q1, self.m2, self.q2, self.rz
        n1, n2 = m1 * q1, m2 * q2
        b1 = u[:n1].reshape(m1, q1) @ lams[0].T
        b2 = u[n1:n1 + n2].reshape(m2, q2) @ lams[1].T
        b_rest = self._apply_lam_rest(np.concatenate([u[n1 + n2:], np.zeros(self.p + 1)]))[:rz]
        c_r = np.concatenate([-b_rest, -np.asarray(beta, dtype=float), [1.0]])
        A21 = self.A21
        w1 = (-np.einsum("gij,gj->gi", self.A11, b1) - np.einsum("gai,ga->gi", A21, b2[self.parent])
              + (self._a1r @ c_r).reshape(m1, q1))
        w2 = (-self._sum_children(np.einsum("gai,gi->ga", A21, b1))
              - np.einsum("hab,hb->ha", self.A22, b2) + (c_r @ self.A_r2).reshape(m2, q2))
        out = [w1, w2]
        if rz:
            wr = (-(self._ar1 @ b1.ravel())[:rz] - self.A_r2[:rz] @ b2.ravel()
                  + self.A_rr[:rz] @ c_r)
            off = 0
            for b in self._rest_blocks:
                out.append(wr[off:off + b.nre].reshape(b.m, b.q))
                off += b.nre
        return out

    def _nested_solve_re(self, v):
        m1, q1, m2, q2, rz = self.m1, self.q1, self.m2, self.q2, self.rz
        n1, n2 = m1 * q1, m2 * q2
        v1, v2 = v[:n1].reshape(m1, q1, 1), v[n1:n1 + n2].reshape(m2, q2, 1)
        y1, y2 = self._front_solve(v1, v2)
        if rz == 0:
            return np.concatenate([y1.ravel(), y2.ravel()])
        full = np.zeros(self.r)
        full[:rz] = ((self._ar1 @ self._apply_lam1(y1.ravel()))[:rz]
                     + self.A_r2[:rz] @ (y2.reshape(m2, q2) @ self.lam2.T).ravel())
        rhs = v[n1 + n2:] - self._lam_rest_T(full)[:rz]
        xr = linalg.cho_solve((self.Lr[:rz, :rz], True), rhs, check_finite=False)
        full[:] = 0.0
        full[:rz] = xr
        t = self._apply_lam_rest(full)
        c1 = v1 - self._apply_lam1T(self._a1r @ t).reshape(m1, q1, 1)
        c2 = v2 - ((t @ self.A_r2).reshape(m2, q2) @ self.lam2).reshape(m2, q2, 1)
        x1, x2 = self._front_solve(c1, c2)
        return np.concatenate([x1.ravel(), x2.ravel(), xr])

    def _nested_local_inverse(self):
        """:meth:`local_inverse` for the nested structure: a row's random effects in the first
        two blocks sit at level g of the first and its parent level, whose joint block of
        ``M_F^-1`` is known per g; the rest as in the crossed case, with ``C = M_F^-1 Omega_FR``."""
        b1, b2 = self.blocks[0], self.blocks[1]
        m1, q1, m2, q2, rz = self.m1, self.q1, self.m2, self.q2, self.rz
        g, par = b1.codes, self.parent
        lams = self.lams
        a = np.hstack([b1.X @ lams[0], b2.X @ self.lam2])          # (n, q1 + q2)
        qf = q1 + q2
        M2p = self.M2inv[par]                                      # (m1, q2, q2)
        Fl = np.empty((m1, qf, qf))                                # joint block of M_F^-1 per g
        Fl[:, :q1, :q1] = self._front_diag()
        Fl[:, :q1, q1:] = -np.einsum("gac,gcb->gab", self.K, M2p)
        Fl[:, q1:, :q1] = np.swapaxes(Fl[:, :q1, q1:], 1, 2)
        Fl[:, q1:, q1:] = M2p
        if rz == 0:
            rho = np.einsum("iab,ib->ia", Fl[g], a)
            return [a[:, :q1], a[:, q1:]], [rho[:, :q1], rho[:, q1:]]
        P_list, c_list = [], []
        off = 0
        for b, lam in zip(self._rest_blocks, lams[2:]):
            P_list.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
            c_list.append(b.X @ lam)
            off += b.nre
        P, c = np.hstack(P_list), np.hstack(c_list)
        Ginv, info = linalg.lapack.dpotri(self.Lr[:rz, :rz], lower=1)
        if info:
            raise np.linalg.LinAlgError("singular factor in local_inverse")
        G = np.tril(Ginv) + np.tril(Ginv, -1).T                    # S^-1 (rest random effects)
        C1, C2 = self._front_solve(*self._front_rest(self._rest_lam_cols(np.eye(rz), rz)))
        C = np.concatenate([C1.reshape(m1 * q1, rz), C2.reshape(m2 * q2, rz)])
        KK = C @ G                                                 # (nF, rz)
        fidx = np.hstack([np.arange(m1)[:, None] * q1 + np.arange(q1)[None, :],
                          m1 * q1 + par[:, None] * q2 + np.arange(q2)[None, :]])   # (m1, qf)
        J = np.einsum("gar,gbr->gab", KK[fidx], C[fidx])
        fi = fidx[g]                                               # (n, qf)
        KP = KK[fi[:, :, None], P[:, None, :]]                     # (n, qf, k)
        GPP = G[P[:, :, None], P[:, None, :]]                      # (n, k, k)
        rho = np.einsum("iab,ib->ia", Fl[g] + J[g], a) - np.einsum("iak,ik->ia", KP, c)
        rhor = np.einsum("ikl,il->ik", GPP, c) - np.einsum("iak,ia->ik", KP, a)
        t_out, rho_out = [a[:, :q1], a[:, q1:]], [rho[:, :q1], rho[:, q1:]]
        off = 0
        for b, cb in zip(self._rest_blocks, c_list):
            t_out.append(cb)
            rho_out.append(rhor[:, off:off + b.q])
            off += b.q
        return t_out, rho_out
