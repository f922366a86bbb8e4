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

    def __init__(self, A_r1, m1, q1):
        self.r = r = A_r1.shape[0]
        self.m1, self.q1 = m1, q1
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
        e1s, e2s, gs = [], [], []
        for kv in np.unique(k):                          # unordered entry pairs, grouped by k
            if kv == 0:
                continue
            lev = np.flatnonzero(k == kv)
            a, b = np.tril_indices(kv)
            e1s.append((starts[lev][:, None] + a[None, :]).ravel())
            e2s.append((starts[lev][:, None] + b[None, :]).ravel())
            gs.append(np.repeat(lev, a.size))
        e1, e2, g = (np.concatenate(x) for x in (e1s, e2s, gs))
        i, j = A.indices[e1], A.indices[e2]
        val = A.data[e1] * A.data[e2]
        if q1 > 1:   # same row, two components: the pair stands for both orders
            val = np.where((i == j) & (e1 != e2), 2.0 * val, val)
        hi, lo = np.maximum(i, j), np.minimum(i, j)
        col = (g * q1 + comp[e1]) * q1 + comp[e2]
        self.P = sparse.csc_matrix((val, (hi * r + lo, col)), shape=(r * r, m1 * q1 * q1))

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
    """

    def __init__(self, blocks, XY, weights=None):
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
        return self

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
        self.Lr = linalg.cholesky(S, lower=True, overwrite_a=S is not self._S, check_finite=False)
        self.lam1 = lam1
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
        X = np.zeros((r, r))
        if kk:
            inv, info = linalg.lapack.dpotri(self.Lr[:kk, :kk], lower=1)
            if info:
                raise np.linalg.LinAlgError("singular factor in gradient")
            inv = np.tril(inv) + np.tril(inv, -1).T
            X[:kk, :kk] = inv
        lr = self.lam_rest
        if isinstance(lr, np.ndarray):
            K = X * lr[:, None] * lr[None, :]
        else:
            K = np.asarray(lr @ np.asarray((lr @ X).T).T)     # Lambda_r X Lambda_r'
        V = self._schur.trace_weights(K)
        C = self.lam1 @ self.M1inv if self.q1 > 1 else self.lam1[0, 0] * self.M1inv
        Vs = 0.5 * (V + np.swapaxes(V, 1, 2))
        out.append(self.M1inv.sum(axis=0) + np.einsum("gia,gij,gjb->ab", C, Vs, C))
        off = 0
        for b in self.blocks[1:]:
            idx = off + np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :]
            out.append(X[idx[:, :, None], idx[:, None, :]].sum(axis=0))
            off += b.nre
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
