"""Diagonal storage: a single scalar random-effects term.

With one grouping factor and one random effect per level, ``M = Lambda' Z' W Z Lambda + I`` is
diagonal, ``M_g = 1 + lambda^2 sum_{i in g} w_i z_i^2``, and the remainder is X and y alone.  The
cross-products are per-level sums (``bincount``): ``a11`` (m,), ``A_r1`` (p + 1, m) and ``A_rr``,
so an update is a few vector operations and a (p + 1)-order Cholesky factorization.

The GLMM / ordinal PIRLS fast path (:func:`mlmext.laplace.pirls` with ``scalar_fast``) takes its
Newton steps level by level and computes ``M`` itself; it wraps that diagonal with
:meth:`ScalarFactor.from_diagonal`, a factor of the random-effects system alone, for the
Laplace and AGQ code that reads ``M1``, the log-determinant, solves and local inverses.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg

from ._stacks import solve_lower_t
from .base import Factor

__all__ = ["ScalarFactor"]


class ScalarFactor(Factor):
    """Factor of ``Lambda' [z X y]' W [z X y] Lambda + I_z`` for one scalar random-effects block.

    ``ScalarFactor(blocks, XY, weights=None, reweighting=False)`` with ``blocks`` a single block
    of q = 1; see :class:`~mlmext.linalg.base.Factor` for the interface.  ``M1`` is the (m,)
    diagonal of ``M``.
    """

    q1 = 1
    rz = 0

    def __init__(self, blocks, XY, weights=None, reweighting=False):
        if len(blocks) != 1 or blocks[0].q != 1:
            raise ValueError("ScalarFactor takes one random-effects block with one effect per level")
        self.blocks = list(blocks)
        self.m1 = blocks[0].m
        self.p = XY.shape[1] - 1
        self.r = self.p + 1
        self.set_data(XY, weights)

    @classmethod
    def from_diagonal(cls, block, lams, M):
        """The factor of the random-effects system alone at a known diagonal ``M`` (m,).

        No cross-products: it offers ``M1``, ``logdet_zz``, ``solve_re``, ``local_inverse``,
        ``condvar_u`` and ``inverse_block_sums(0)``; the rest of the interface needs ``[X y]``
        and raises.
        """
        self = cls.__new__(cls)
        self.blocks = [block]
        self.m1 = block.m
        self.p, self.r = 0, 1
        self.a11 = None
        self.lams, self.lam1, self.M1 = lams, lams[0], M
        return self

    # -- data and theta ---------------------------------------------------------------
    def set_data(self, XY, weights=None):
        """Per-level sums of the weighted cross-products (one pass over the rows per column)."""
        b = self.blocks[0]
        XY = np.asarray(XY, dtype=float)
        if XY.ndim != 2 or XY.shape[1] != self.p + 1:
            raise ValueError(f"XY must have {self.p + 1} columns; got shape {XY.shape}")
        w = np.ones(XY.shape[0]) if weights is None else np.asarray(weights, dtype=float)
        z = b.X[:, 0]
        wz = w * z
        self.a11 = np.bincount(b.codes, weights=wz * z, minlength=b.m)
        self.A_r1 = np.stack([np.bincount(b.codes, weights=wz * XY[:, j], minlength=b.m)
                              for j in range(self.p + 1)])
        self.A_rr = XY.T @ (w[:, None] * XY)
        return self

    def _cross(self):
        if self.a11 is None:
            raise RuntimeError("this ScalarFactor was made from its diagonal (PIRLS's scalar path) "
                               "and holds no cross-products of [X y]")

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        self._cross()
        lam = lams[0][0, 0]
        M = (lam * lam) * self.a11 + 1.0
        if not M.min() > 0:                              # negative working weights can do this
            raise np.linalg.LinAlgError("the random-effects block is not positive definite")
        A = self.A_r1
        with np.errstate(invalid="ignore", over="ignore"):   # non-finite: potrf fails below
            S = self.A_rr - (A * ((lam * lam) / M)) @ A.T    # Schur complement of the diagonal block
        c, info = linalg.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor is not positive definite")
        self.Lr, self.M1, self.lams, self.lam1 = c, M, lams, lams[0]
        return self

    # -- the profiled objective -------------------------------------------------------
    @property
    def M1inv(self):
        return (1.0 / self.M1)[:, None, None]

    @property
    def logdet_zz(self):
        return float(np.log(self.M1).sum())

    # -- solutions and pieces of the inverse ----------------------------------------------
    def solve(self):
        """Spherical modes ``u`` and fixed effects ``beta``."""
        self._cross()
        p = self.p
        beta = solve_lower_t(self.Lr[:p, :p], self.Lr[p, :p])
        u = self.lam1[0, 0] * (self.A_r1[p] - beta @ self.A_r1[:p]) / self.M1
        return u, beta

    def solve_re(self, v):
        return np.asarray(v, dtype=float) / self.M1

    def condvar_u(self):
        return [self.M1inv]

    def inverse_block_sums(self, k):
        """``sum_g (Omega_P^-1)_gg`` for the first k fixed effects in ``Omega_P``:
        ``M^-1 + E'E`` on the diagonal, ``E = L_k^-1 (lambda A_k1) M^-1`` (``L_k``: leading rows
        of ``Lr``, the factor of the fixed effects' Schur complement)."""
        Minv = 1.0 / self.M1
        s = Minv.sum()
        if k:                        # sum(E * E) = tr(L_k^-1 G L_k^-T), G = lambda^2 A_k1 M^-2 A_1k
            self._cross()
            A = self.A_r1[:k]
            G = (self.lam1[0, 0] ** 2) * ((A * (Minv * Minv)) @ A.T)
            Li = linalg.solve_triangular(self.Lr[:k, :k], np.eye(k), lower=True, check_finite=False)
            s += np.sum(Li * (Li @ G))
        return [np.array([[s]])]

    def ztres(self, u, beta, lams):
        """``z' W (y - X beta - z lambda u)`` per level, as an (m, 1) array."""
        self._cross()
        b = lams[0][0, 0] * np.asarray(u, dtype=float)
        c_r = np.append(-np.asarray(beta, dtype=float), 1.0)
        return [(c_r @ self.A_r1 - self.a11 * b).reshape(-1, 1)]

    def local_inverse(self):
        b = self.blocks[0]
        a = b.X * self.lam1[0, 0]                          # row i: Lambda' z_i
        return [a], [a / self.M1[b.codes][:, None]]
