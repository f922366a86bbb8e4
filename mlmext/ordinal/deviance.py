"""The evaluation state of a clmm's log-likelihood, one per fit (or result, or profile).

An evaluation sets the thresholds on the conditional distribution (which caches the
category probabilities of the last linear predictor), refactors the PIRLS system and,
for a single scalar term, fills the exact-Hessian workspace.  :class:`OrdinalDeviance`
owns those three; everything else (data, thresholds' structure, design) it reads from
the model, which an evaluation never writes to.
"""
from __future__ import annotations

import numpy as np

from .. import laplace as _laplace
from .thresholds import _increasing

__all__ = ["OrdinalDeviance"]


class OrdinalDeviance:
    """A clmm's Laplace / AGQ log-likelihood with its own conditional, factor and workspace.

    Made by :meth:`OrdinalMixedModel.deviance`; the fit's engine reads the model's data
    and structure through it (attribute access falls through to the model).
    """

    def __init__(self, model):
        self.model = model
        self.cond = model.cond.workspace()
        self._chol = None
        self._scalar_lap = None

    def __getattr__(self, name):          # data and structure: the model's (read-only)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def chol(self):
        """The PIRLS factorization (at the last modes found)."""
        if self._chol is None:
            self._chol = self.model._pirls_factor().workspace()
        return self._chol

    def _scalar_laplace(self):
        """The exact-Hessian evaluator for a single scalar term (a workspace of the model's)."""
        if self._scalar_lap is None:
            self._scalar_lap = self.model._scalar_laplace_template().workspace()
        return self._scalar_lap

    def loglike_parts(self, alpha, beta, theta, nagq=1, u0=None, tol=None):
        """Laplace (``nagq = 1``) or AGQ log-likelihood at R's parameters.

        Parameters
        ----------
        alpha : array_like
            Threshold parameters (``clmm``'s ``coef`` order).
        beta : array_like
            Fixed effects.
        theta : array_like
            Relative covariance parameters (lme4's ``theta``; with no
            residual scale, ``Lambda(theta) Lambda(theta)'`` is the
            random-effects covariance).
        nagq : int
        u0 : ndarray, optional
            Warm start for the conditional modes.
        tol : float, optional
            PIRLS tolerance on the squared Newton decrement (default 1e-20).

        Returns
        -------
        llf : float
            ``-inf`` for non-increasing thresholds or failed inner iterations.
        modes : mlmext.laplace.Modes or None
        """
        m = self.model
        alpha = np.asarray(alpha, dtype=float)
        th = m.thr.thresholds(alpha)
        if not _increasing(th):
            return -np.inf, None
        self.cond.set_thresholds(th)
        eta_fixed = m.offset + (m.exog @ np.asarray(beta, dtype=float) if m.k_fe else 0.0)
        theta = np.asarray(theta, dtype=float)
        # The Laplace value is not stationary in u (its log-determinant depends on the modes),
        # so modes accurate to ~sqrt(tol) give errors ~sqrt(tol) in the value: a tight inner
        # tolerance keeps finite differences of the log-likelihood clean (one Newton step more).
        tol = m._pirls_tol if tol is None else tol
        if nagq == 1:
            return _laplace.laplace_loglik(m.re_design, self.chol, eta_fixed, self.cond, theta,
                                           u0=u0, tol=tol, scalar_fast=True)
        return _laplace.agq_loglik(m.re_design, self.chol, eta_fixed, self.cond, theta, nagq,
                                   u0=u0, tol=tol, scalar_fast=True)
