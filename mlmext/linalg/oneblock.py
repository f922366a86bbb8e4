"""Block-diagonal storage: a single random-effects term with q >= 2 effects per level.

With one grouping factor, ``M = Lambda' Z' W Z Lambda + I`` is block diagonal (one ``q x q``
block per level, it never fills) and the remainder is X and y alone.  Each piece of an
evaluation is then one vectorized operation on the ``(m, q, q)`` / ``(m, q, p + 1)`` stacks plus
a ``(p + 1)``-order Cholesky factorization: the general storage (:class:`DenseFactor`) reaches the
same numbers through its Schur-product and pair machinery, whose fixed cost per call dominates
the small fits of this shape (sleepstudy's ``(Days | Subject)``: 18 levels of 2 x 2 blocks).

With ``L_g`` the Cholesky factor of ``M_g``, ``C_g = L_g^-1 Lambda' A_{g,r}`` (q x (p + 1)) is the
off-diagonal part of the factor and the remainder's factor is that of
``A_rr - sum_g C_g' C_g``; the diagonal blocks of ``Omega^-1`` follow from ``L_g^-1`` alone.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from ._stacks import block_cross, lmul, sandwich, solve_lower_t
from .base import Factor

__all__ = ["OneBlockFactor"]


class OneBlockFactor(Factor):
    """Factor of ``Lambda' [Z X y]' W [Z X y] Lambda + I_Z`` for one random-effects block.

    ``OneBlockFactor(blocks, XY, weights=None)`` with ``blocks`` a single block (any q; q = 1 is
    :class:`ScalarFactor`'s shape, which stores it as vectors); see
    :class:`~mlmext.linalg.base.Factor` for the interface.  ``M1`` is the (m, q, q) stack of
    ``M``'s diagonal blocks.
    """

    rz = 0

    def __init__(self, blocks, XY, weights=None):
        if len(blocks) != 1:
            raise ValueError("OneBlockFactor takes exactly one random-effects block")
        b = blocks[0]
        self.blocks = list(blocks)
        self.m1, self.q1 = b.m, b.q
        self._eye = np.eye(b.q)
        self.p = XY.shape[1] - 1
        self.r = self.p + 1
        self.set_data(XY, weights)

    # -- data and theta ---------------------------------------------------------------
    def set_data(self, XY, weights=None):
        """Per-level cross-products: ``A11`` (m, q, q), ``A1r`` (m, q, p + 1) and ``A_rr``."""
        b = self.blocks[0]
        XY = np.asarray(XY, dtype=float)
        if XY.ndim != 2 or XY.shape[1] != self.r:
            raise ValueError(f"XY must have {self.r} columns; got shape {XY.shape}")
        n, q, m = XY.shape[0], self.q1, self.m1
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        self.A11 = block_cross(b.X, b.codes, m, w)
        Xw = b.X * w[:, None]
        # Z' W [X y]: one sparse product (row i of Z' holds x_i at the columns of its level)
        cols = (b.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        Zt = sparse.csr_matrix((Xw.ravel(), (cols, np.repeat(np.arange(n), q))), shape=(m * q, n))
        self.A1r = np.asarray(Zt @ XY).reshape(m, q, self.r)
        self.A_rr = XY.T @ (w[:, None] * XY)
        return self

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        lam = lams[0]
        M = sandwich(self.A11, lam, lam)
        M += self._eye
        LM = np.linalg.cholesky(M)          # LinAlgError where a block is numerically indefinite
        LMi = np.linalg.inv(LM)
        C = LMi @ lmul(lam.T, self.A1r)                       # (m, q, r)
        C2 = C.reshape(-1, self.r)
        S = self.A_rr - C2.T @ C2                             # Schur complement of the block
        c, info = linalg.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor is not positive definite")
        self.Lr, self.M1, self.lams, self.lam1 = c, M, lams, lam
        self._LM, self._LMi, self._C = LM, LMi, C
        return self

    # -- the profiled objective -------------------------------------------------------
    @property
    def logdet_zz(self):
        return 2.0 * float(np.log(np.diagonal(self._LM, axis1=1, axis2=2)).sum())

    @property
    def M1inv(self):
        LMi = self._LMi
        return np.swapaxes(LMi, 1, 2) @ LMi

    # -- solutions and pieces of the inverse ----------------------------------------------
    def solve(self):
        """Spherical modes ``u`` and fixed effects ``beta``: ``L_g' u_g = c_gy - C_gX beta``."""
        p = self.p
        beta = solve_lower_t(self.Lr[:p, :p], self.Lr[p, :p])
        C = self._C
        rhs = C[:, :, p] - C[:, :, :p] @ beta                 # (m, q)
        u = np.einsum("gji,gj->gi", self._LMi, rhs)           # L_g^-T rhs_g
        return u.ravel(), beta

    def solve_re(self, v):
        v = np.asarray(v, dtype=float).reshape(self.m1, self.q1)
        return np.einsum("gij,gj->gi", self.M1inv, v).ravel()

    def condvar_u(self):
        return [self.M1inv]

    def inverse_block_sums(self, k):
        """``sum_g (Omega_P^-1)_gg = sum_g M_g^-1 + F_g S_k^-1 F_g'`` with ``F_g = M_g^-1
        Lambda' A_gk = L_g^-T C_gk`` and ``S_k = L_k L_k'`` the leading rows of ``Lr``."""
        q = self.q1
        R = self._LMi.reshape(-1, q)
        s = R.T @ R                                           # sum_g L_g^-T L_g^-1
        if k:
            # G_g = F_g' with F_g = L_g^-T C_gk L_k^-T: sum_g F_g F_g' = G'G over the rows (g, k)
            Lki = linalg.lapack.dtrtri(self.Lr[:k, :k], lower=1)[0]   # upper part stays 0 (clean)
            G = (np.swapaxes(self._C[:, :, :k], 1, 2) @ self._LMi).reshape(-1, q)   # (m k, q)
            G = (Lki @ G.reshape(self.m1, k, q)).reshape(-1, q)
            s = s + G.T @ G
        return [s]

    def ztres(self, u, beta, lams):
        """``Z' W (y - X beta - Z Lambda u)`` per level, as an (m, q) array."""
        b1 = np.asarray(u, dtype=float).reshape(self.m1, self.q1) @ lams[0].T
        c_r = np.append(-np.asarray(beta, dtype=float), 1.0)
        return [self.A1r @ c_r - np.einsum("gij,gj->gi", self.A11, b1)]

    def local_inverse(self):
        b = self.blocks[0]
        a = b.X @ self.lam1                                   # row i: (Lambda' x_i)'
        return [a], [np.einsum("iab,ib->ia", self.M1inv[b.codes], a)]
