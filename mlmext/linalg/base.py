"""The factor interface: what every storage of the blocked Cholesky factor offers.

A factor holds the cross-products of one model's ``[Z X y]`` (formed once, or per PIRLS step by
:meth:`Factor.reweight`) and, after :meth:`Factor.update`, the lower Cholesky factor ``L`` of

    Omega(theta) = Lambda' [Z X y]' W [Z X y] Lambda + I_Z

(``Lambda`` is the identity on the X and y columns; ``I_Z`` adds 1 on the random effects only).
Implementations differ in how they store the random-effects part of ``L`` (see the package
docstring); all of them end with a dense factor ``Lr`` of the *remainder*: the random effects
they keep dense (``rz`` of them), then the ``p`` fixed effects, then y.  Everything the profiled
objective needs reads off ``Lr`` and the determinants of the structured part, so the parts of the
interface that only need ``Lr`` live here.
"""
from __future__ import annotations

import abc
import copy

import numpy as np
from scipy import linalg

__all__ = ["Factor"]


class Factor(abc.ABC):
    """Blocked Cholesky factor of ``Lambda' [Z X y]' W [Z X y] Lambda + I_Z``, one theta at a time.

    Attributes (set by the constructor / :meth:`update`)
    ----------------------------------------------------
    blocks : list of ReBlock
        The random-effects blocks, in factorization order.
    p : int
        Number of fixed effects (columns of ``XY`` less the response).
    rz : int
        Random effects held in the dense remainder.
    r : int
        Order of the dense remainder, ``rz + p + 1``.
    Lr : ndarray (r, r)
        Its lower Cholesky factor (only the lower triangle is meaningful).
    M1 : ndarray
        ``Lambda_1' A_11 Lambda_1 + I`` of the first block: (m1,) when q1 = 1, else (m1, q1, q1).
    lams : list of ndarray
        The templates of the last :meth:`update`.
    nested : bool
        Whether blocks after the first are kept block-diagonal (a chain of nested factors).
    """

    nested = False
    #: arrays :meth:`update` writes in place (the others it rebinds): a workspace gets its own
    _scratch = ()

    # -- data and theta ---------------------------------------------------------------
    @abc.abstractmethod
    def set_data(self, XY, weights=None):
        """(Re)compute the cross-products for new ``[X y]`` values and/or weights (same blocks)."""

    def reweight(self, XY, weights=None):
        """:meth:`set_data` through a structure reused between calls (a GLMM's PIRLS steps)."""
        return self.set_data(XY, weights)

    @abc.abstractmethod
    def update(self, lams):
        """Factor at the block templates ``lams`` (from ``design.lambdas(theta)``); returns self."""

    def workspace(self):
        """An independent factor over the same cross-products, for another thread or objective.

        The cross-products (and any plan derived from them) are shared read-only; everything
        :meth:`update` writes is the copy's own: :meth:`update` rebinds its results, and the
        arrays it writes in place (``_scratch``) are fresh in the copy.  A factor set up for
        :meth:`reweight` gives a copy that can reweight too (the values the reweighting plan
        overwrites are copied, its structure is shared); :meth:`set_data` rebinds everything.
        """
        new = copy.copy(self)
        for name in self._scratch:
            buf = getattr(self, name, None)
            if buf is not None:
                setattr(new, name, np.zeros(buf.shape))       # zeros: a sparse path reads them
        return new

    # -- the profiled objective -------------------------------------------------------
    @property
    @abc.abstractmethod
    def logdet_zz(self):
        """``log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)``."""

    @property
    def logdet_xx(self):
        """``log |L_XX|^2``, the fixed-effects block of the factor (REML's extra term)."""
        return 2.0 * np.log(np.diagonal(self.Lr)[self.rz:self.rz + self.p]).sum()

    @property
    def r2(self):
        """Penalized weighted residual sum of squares (the last diagonal element of L, squared)."""
        return self.Lr[-1, -1] ** 2

    def cov_beta_unscaled(self):
        """``(X' V^-1 X)^-1 / sigma^2``: the inverse of ``L_XX L_XX'``."""
        Lxx = self.Lr[self.rz:self.rz + self.p, self.rz:self.rz + self.p]
        Li = linalg.solve_triangular(Lxx, np.eye(self.p), lower=True, check_finite=False)
        return Li.T @ Li

    # -- solutions and pieces of the inverse at the current theta ------------------------
    @abc.abstractmethod
    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""

    @abc.abstractmethod
    def solve_re(self, v):
        """Solve ``(Lambda' Z' W Z Lambda + I) x = v`` (all random effects in block order)."""

    @abc.abstractmethod
    def condvar_u(self):
        """Diagonal blocks of ``(L_ZZ L_ZZ')^-1`` per block, as (m, q, q) arrays: lme4's
        conditional variance of the spherical random effects before scaling by sigma^2."""

    @abc.abstractmethod
    def inverse_block_sums(self, k):
        """Sums over levels of the diagonal blocks of ``Omega_P^-1``, one (q, q) array per block.

        ``Omega_P`` is the leading principal submatrix holding all random effects and the first
        ``k`` fixed effects (k = 0 for the ML objective, p for REML); with ``m I - S`` these
        give the derivative of ``log det Omega_P``
        (:meth:`mlmext.lmm.LinearMixedModel.deviance_and_gradient`).
        """

    @abc.abstractmethod
    def ztres(self, u, beta, lams):
        """``Z' W (y - X beta - Z Lambda u)`` per block, as (m, q) arrays (no n-sized work)."""

    @abc.abstractmethod
    def local_inverse(self):
        """Row-wise pieces of ``M^-1``, ``M = Lambda' Z' W Z Lambda + I``.

        For row i let ``t_i = Lambda' z_i`` (nonzero only at the row's own level of each block)
        and ``rho_i = M^-1 t_i`` restricted to those positions.  Returns ``(t, rho)``: one (n,
        q_b) array per block; ``sum_b (t_b * rho_b).sum(1)`` is the leverage
        ``z_i' Lambda M^-1 Lambda' z_i``.  Nothing of size n^2 is formed.
        """
