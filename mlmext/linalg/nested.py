"""Nested storage: the first two blocks block-diagonal, the rest dense.

When every level of the first block lies within one level of the second (``(1 | school/cls)``:
each class in one school), the second block does not fill either: its Schur complement
``Lambda_2' (A_22 - A_21 B A_12) Lambda_2 + I`` is block diagonal (one q2 x q2 block per level,
since a level of the first factor meets only its parent level), and ``L_21`` has one q2 x q1
block per level of the first factor.  The factor has three parts,

    L = [[L11,  0,   0 ],
         [L21, L22,  0 ],
         [ C1,  C2,  Lr]]

with ``L22`` block diagonal, and only the blocks after the second (and X, y) are dense (``Lr``;
``rz`` counts their random effects).  This is what MixedModels.jl does for nested factors; it
turns the O(m2^3) dense factorization of the second block into O(m1 + m2) work.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from ._lead import LeadBlockFactor
from ._stacks import block_cross, level_gram, lmul, sandwich, solve_lower_t, spd_inv_logdet, tri_inv

__all__ = ["NestedFactor", "nesting_parent"]


def nesting_parent(b1, b2):
    """``parent[g]``: the level of block ``b2`` that holds level g of ``b1``, or None when some
    level of ``b1`` meets several levels of ``b2`` (not nested)."""
    parent = np.full(b1.m, -1, dtype=np.int64)
    parent[b1.codes] = b2.codes
    if parent.min() < 0 or not np.array_equal(parent[b1.codes], b2.codes):
        return None
    return parent


class NestedFactor(LeadBlockFactor):
    """Blocked Cholesky factor with the first two blocks block-diagonal (the first nested in the
    second: ``parent[g]`` is the level of the second block holding level g of the first).

    ``NestedFactor(blocks, XY, weights=None, reweighting=False, parent=None)``; see
    :class:`~mlmext.linalg._lead.LeadBlockFactor` for the other parameters and
    :class:`~mlmext.linalg.base.Factor` for the interface.
    """

    nested = True

    def __init__(self, blocks, XY, weights=None, reweighting=False, parent=None):
        b2 = blocks[1]
        self.m2, self.q2 = b2.m, b2.q
        self.parent = nesting_parent(blocks[0], b2) if parent is None else parent
        if self.parent is None:
            raise ValueError(f"the levels of {blocks[0].name!r} are not nested in those of {b2.name!r}")
        super().__init__(blocks, XY, weights, reweighting, depth=2)

    def set_data(self, XY, weights=None):
        super().set_data(XY, weights)
        self._nested_cross(XY, self._weights(XY, weights))
        return self

    def reweight(self, XY, weights=None):
        super().reweight(XY, weights)
        self._nested_cross(np.asarray(XY, dtype=float), self._weights(XY, weights))
        return self

    @staticmethod
    def _weights(XY, weights):
        return np.ones(XY.shape[0]) if weights is None else np.asarray(weights, dtype=float)

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
        self.A22 = block_cross(b2.X, b2.codes, m2, w)
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


    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        S = self._eliminate_first(lams)
        S -= self._update_second(lams[0], lams[1], self.lam_rest)
        self._factor_rest(S)
        self.lams = lams
        return self

    @property
    def logdet_zz(self):
        """log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)."""
        return self.logdet1 + self.logdet2 + 2.0 * np.log(self.diag_rest[:self.rz]).sum()

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
                W = sandwich(self.A21, lam2, lam1)                      # (m1, q2, q1)
                K = self.M1inv @ np.swapaxes(W, 1, 2)                    # (m1, q1, q2)
                WK = W @ K
                D = lmul(lam1, K)                                       # (m1, q1, q2)
            M2 = sandwich(self.A22, lam2, lam2)
            M2[:, np.arange(q2), np.arange(q2)] += 1.0
            M2 -= self._sum_children(WK.reshape(m1, -1)).reshape(m2, q2, q2)
            self.K, self.M2 = K, M2
            self.M2inv, self.logdet2 = spd_inv_logdet(M2)
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

    # -- solutions and pieces of the inverse ---------------------------------------------
    def _rest_lam_cols(self, Linv, nr):
        """``Lambda_R Linv'`` for the first ``nr`` rest rows (``Linv`` is nr x nr)."""
        lr = self.lam_rest
        if isinstance(lr, np.ndarray):
            return (Linv * lr[:nr][None, :]).T
        return np.asarray(lr[:nr, :nr] @ Linv.T)

    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""
        r, rz, m1, q1 = self.r, self.rz, self.m1, self.q1
        v_rest = solve_lower_t(self.Lr[:r - 1, :r - 1], self.Lr[r - 1, :r - 1])
        t = self._apply_lam_rest(np.append(v_rest, 0.0))
        c1 = self._apply_lam1T(self._a1y - self._a1r @ t).reshape(m1, q1, 1)
        c2 = ((self.A_r2[r - 1] - t @ self.A_r2).reshape(self.m2, self.q2) @ self.lam2).reshape(
            self.m2, self.q2, 1)
        x1, x2 = self._front_solve(c1, c2)
        u = np.concatenate([x1.ravel(), x2.ravel(), v_rest[:rz]])
        return u, v_rest[rz:]

    def condvar_u(self):
        rz = self.rz
        base1, base2 = self._front_diag(), self.M2inv.copy()
        out = [base1, base2]
        if rz:
            E1, E2, cols = self._rest_inverse(rz)
            base1 += np.einsum("gir,gjr->gij", E1, E1)
            base2 += np.einsum("gir,gjr->gij", E2, E2)
            out.extend(np.einsum("rgi,rgj->gij", c, c) for c in cols)
        return out

    def _rest_inverse(self, kk):
        """The pieces of the inverse that the leading ``kk`` rows of the dense factor give:
        ``E = M_F^-1 Omega_FP L_P^-T`` split into the front's two blocks, and ``L_P^-1``'s
        columns for each further block, shaped (kk, m, q)."""
        Linv = tri_inv(self.Lr[:kk, :kk])
        E1, E2 = self._front_solve(*self._front_rest(self._rest_lam_cols(Linv, kk)))
        cols, off = [], 0
        for b in self._rest_blocks:
            cols.append(Linv[:, off:off + b.nre].reshape(kk, b.m, b.q))
            off += b.nre
        return E1, E2, cols

    def inverse_block_sums(self, k):
        """:meth:`inverse_block_sums` with the first two blocks as the (sparse) front F:
        ``(Omega_P^-1)_FF = M_F^-1 + E E'`` with ``E = M_F^-1 Omega_FP L_P^-T`` and
        ``(Omega_P^-1)_PP = L_P^-T L_P^-1`` (``L_P``: leading rows of the dense factor)."""
        kk = self.rz + k
        s1 = self._front_diag().sum(axis=0)
        s2 = self.M2inv.sum(axis=0)
        out = [s1, s2]
        if kk == 0:
            return out
        E1, E2, cols = self._rest_inverse(kk)
        s1 += level_gram(E1)
        s2 += level_gram(E2)
        out.extend(np.einsum("rgi,rgj->ij", c, c) for c in cols)
        return out

    def ztres(self, u, beta, lams):
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

    def solve_re(self, v):
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

    def local_inverse(self):
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
