"""Linear mixed models fitted by (RE)ML on the profiled objective (lme4's ``lmer``)."""
from __future__ import annotations

import numpy as np

from .base import MixedModel
from .linalg import BlockedCholesky
from .optimize import minimize_theta

__all__ = ["LinearMixedModel"]

_LOG2PI = np.log(2.0 * np.pi)


class LinearMixedModel(MixedModel):
    """Linear mixed model ``y = X beta + Z b + e``, ``b ~ N(0, sigma^2 Lambda Lambda')``.

    Usually created with :func:`mlmext.formula.api.lmer`.

    The profiled deviance is evaluated from the blocked Cholesky factor of
    ``[Z Lambda, X, y]' W [Z Lambda, X, y] + I`` (:class:`mlmext.linalg.BlockedCholesky`):
    after the cross-products are formed once, an evaluation costs nothing of order n.
    """

    def __init__(self, endog, exog, re_design, weights=None, offset=None, **kwargs):
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        y = np.asarray(self.endog, dtype=float) - self.offset
        self._XY = np.column_stack([self.exog, y])
        self._chol = None
        self._logw = np.log(self.weights[self.weights > 0]).sum()

    @property
    def chol(self):
        if self._chol is None:
            self._chol = BlockedCholesky(self.re_design.blocks, self._XY, self.weights)
        return self._chol

    def deviance_profiled(self, theta, reml=True):
        """-2 log-likelihood (or REML criterion) profiled over beta and sigma."""
        ch = self.chol.update(self.re_design.lambdas(np.asarray(theta, dtype=float)))
        n = self.nobs
        r2 = ch.r2
        if reml:
            nmp = n - self.k_fe
            return ch.logdet_zz + ch.logdet_xx + nmp * (1.0 + _LOG2PI + np.log(r2 / nmp)) - self._logw
        return ch.logdet_zz + n * (1.0 + _LOG2PI + np.log(r2 / n)) - self._logw

    def loglike(self, params, reml=True):
        """Profiled log-likelihood at relative covariance parameters ``params`` (theta)."""
        return -0.5 * self.deviance_profiled(params, reml=reml)

    def fit(self, reml=True, start_params=None, method="auto", maxiter=2000, tol=1e-9,
            disp=False, **kwargs):
        """Fit by REML (default) or maximum likelihood.

        Parameters
        ----------
        reml : bool
            Restricted maximum likelihood (lme4's default) or ML.
        start_params : array_like, optional
            Starting theta (lme4's order, see ``theta`` on the results).
        method : str
            ``"auto"`` (bounded quasi-Newton, with a derivative-free restart
            if it stalls), or any bounded method of ``scipy.optimize.minimize``.
        maxiter, tol : optimizer settings.

        Returns
        -------
        LMMResults
        """
        from .results import LMMResults, MixedResultsWrapper
        des = self.re_design
        start = des.theta_start if start_params is None else np.asarray(start_params, dtype=float)
        fun = lambda th: self.deviance_profiled(th, reml=reml)
        opt = minimize_theta(fun, start, des.lower, method=method, maxiter=maxiter, tol=tol)
        theta = opt.x
        ch = self.chol.update(des.lambdas(theta))
        u, beta = ch.solve()
        n, p = self.nobs, self.k_fe
        sigma2 = ch.r2 / (n - p if reml else n)
        cov_beta = sigma2 * ch.cov_beta_unscaled()
        crit = self.deviance_profiled(theta, reml=reml)
        res = LMMResults(self, beta, cov_beta, theta=theta, u=u, sigma=np.sqrt(sigma2),
                         reml=reml, criterion=crit, optim=opt)
        return MixedResultsWrapper(res)
