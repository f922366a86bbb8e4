"""The Laplace / adaptive Gauss-Hermite log-likelihood of a GLMM, as an object.

:class:`LaplaceDeviance` is what a GLMM fit optimizes.  It owns everything an
evaluation writes: its own copy of the conditional distribution (the negative
binomial's alpha), the PIRLS factorizations (``u`` alone, and lme4's first-stage
system with ``beta`` inside PIRLS) and the warm start of the conditional modes.
So fits, profiles and results of one model each work on their own deviance and
never see each other's state (lme4's ``devfun`` environment, one per fit).

Parameters are taken in the optimizer's order ``(theta, beta, extra)``, ``extra``
being ``log alpha`` for the negative binomial; the model's ``loglike`` converts
from its documented order ``(beta, theta[, alpha])``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import laplace as lp
from .._malloc import trim_heap

__all__ = ["LaplaceDeviance"]

#: data of at least this many rows: the PIRLS factorizations are the deviance's own, not
#: workspaces of a template cached on the model.  The first stage's is dropped after its first
#: stage (its Schur pairs and reweighting plan hold 260 MB at 1M ratings through the Laplace
#: phase); a template of the Laplace one would hold a second copy of the cross-products and
#: the Schur pairs' values (160 MB at 1M rows).  Building one costs about 1 s at 1M rows (3%
#: of a fit), paid again by each deviance of the model (profiles, conditional variances).
OWN_FACTOR_ROWS = 200_000


class LaplaceDeviance:
    """The log-likelihood of a GLMM by Laplace or AGQ, with its own factor and warm start.

    Made by :meth:`GeneralizedLinearMixedModel.deviance`.

    Attributes
    ----------
    cond : mlmext.laplace.ConditionalModel
        This deviance's conditional distribution (its own alpha).
    warm_start : ndarray or None
        Spherical modes to start the next PIRLS from.
    """

    def __init__(self, model):
        self.model = model
        self.design = model.re_design
        self.cond = model._make_conditional()
        self.k_extra = int(getattr(self.cond, "k_extra", 0))
        self.nt, self.p = self.design.ntheta, model.k_fe
        self._chol_u = None
        self._chol_x = None
        self.warm_start = None
        self._last = None
        #: extra keyword arguments of :func:`mlmext.laplace.pirls` for the modes (e.g. the
        #: scalar fast path, which takes negative observed information).  One scalar term with
        #: a canonical link (``w`` the observed information, so both paths take Newton steps):
        #: the diagonal path, a third less time per evaluation than the blocked factor's
        #: Python overhead on small data (lme4's cbpp: 56 rows, 15 herds)
        self.pirls_options = ({"scalar_fast": True} if getattr(self.cond, "canonical", False)
                              and lp.is_scalar_design(self.design) else {})
        #: the exact Laplace Hessian (:meth:`hessian`) applies: one scalar term on that path,
        #: a canonical link with the weights' derivatives, the rows in memory (it reads the
        #: modes' eta; not a subclass that evaluates elsewhere, as Dask's summed rows)
        self.exact_hessian = (bool(self.pirls_options)
                              and type(self).loglike_and_score is LaplaceDeviance.loglike_and_score
                              and lp.has_scalar_hessian(self.design, self.cond))
        #: PIRLS's tolerance in :meth:`stage1`
        self.stage1_tol = 1e-10

    @property
    def chol_u(self):
        """The PIRLS factorization for ``u`` alone (at the last modes found)."""
        if self._chol_u is None:
            m = self.model
            if m.endog.shape[0] >= OWN_FACTOR_ROWS and "_pirls_u" not in m.__dict__:
                self._chol_u = lp.make_chol(self.design, m.endog.shape[0])
            else:
                self._chol_u = m._pirls_factor(with_x=False).workspace()
            # the gradient inverts the factor where it lies (one r x r array less): everything
            # after it until the next PIRLS needs only solves, which the inverse gives
            self._chol_u.inverse_in_place = True
        return self._chol_u

    @property
    def chol_x(self):
        """The PIRLS factorization of lme4's first stage (``beta`` inside PIRLS)."""
        if self._chol_x is None:
            m = self.model
            n = m.endog.shape[0]
            if n >= OWN_FACTOR_ROWS and "_pirls_x" not in m.__dict__:
                self._chol_x = lp.make_chol(self.design, n, X=m.exog)
            else:
                self._chol_x = m._pirls_factor(with_x=True).workspace()
            # the EM start's inverse in the factor's place: PIRLS factors again next
            self._chol_x.inverse_in_place = True
        return self._chol_x

    @property
    def _modes_chol(self):
        """:attr:`chol_u` where the modes may come from PIRLS's blocked path; None where the
        scalar path finds them: they carry their own diagonal factor, which the prediction,
        the gradient and the Hessian read (the blocked one, ~15 us to make on cbpp, would not
        be)."""
        if self.pirls_options.get("scalar_fast") and lp.is_scalar_design(self.design):
            return None
        return self.chol_u

    def release_stage1(self):
        """Drop the first stage's factorization (:attr:`chol_x` makes a new one when asked) and
        give its memory back (its plan's arrays: 100 MB at 1M rows, not kept resident for the
        Laplace phase to reuse only in part)."""
        self._chol_x = None
        trim_heap(int(getattr(self.model, "nobs", 0)))      # (a Dask model holds no rows)

    # -- parameters: (theta, beta, extra)
    def split(self, params):
        params = np.asarray(params, dtype=float)
        nt, p = self.nt, self.p
        return params[:nt], params[nt:nt + p], params[nt + p:]

    def set_extra(self, extra):
        """Set the conditional distribution's own parameters (log alpha)."""
        if self.k_extra:
            self.cond.set_params(extra)

    def _extra_now(self):
        return self.cond.get_params().copy() if self.k_extra else None

    # -- the conditional modes
    def modes(self, theta, beta, tol=1e-14, warm=True, lams=None):
        """Conditional modes at (theta, beta) and the current extra; ``(Modes, lams)``.

        Starts from the modes of the previous evaluation moved to first order
        (:func:`mlmext.laplace.predict_modes`), and from ``u = 0`` if that fails.
        """
        des, m = self.design, self.model
        lams = des.lambdas(theta) if lams is None else lams
        u0 = self.warm_start if warm else None
        if warm and self._last is not None and u0 is not None:
            u0 = self._predicted_start(theta, beta, self._modes_chol)
        # the last modes' rows (d1, w: 16 MB at 1M rows) are done with: not held through
        # PIRLS, which makes its own
        self._last = None
        eta_f = m.exog @ beta + m.offset
        chol = self._modes_chol
        modes = lp.pirls(des, chol, eta_f, self.cond, theta, u0=u0, tol=tol, lams=lams,
                         **self.pirls_options)
        if not modes.converged and u0 is not None:
            modes = lp.pirls(des, chol, eta_f, self.cond, theta, u0=None, tol=tol, lams=lams,
                             **self.pirls_options)
            modes.message = "retried from u = 0; " + modes.message
        self._remember(theta, beta, modes, lams)
        return modes, lams

    def _remember(self, theta, beta, modes, lams):
        """Keep what the next evaluation's predicted start needs (converged modes only).

        Not the fixed part ``X beta + offset`` (its change is ``X dbeta``) nor the modes' eta
        unless the conditional model has parameters of its own (their derivatives read it):
        two n-sized arrays fewer between evaluations, at the gradient's and the next
        prediction's peaks of memory.
        """
        if not modes.converged:
            self._last = None
            return
        self.warm_start = modes.u
        extra = self._extra_now()
        kept = modes if extra is not None else replace(modes, eta=None)
        self._last = (np.array(theta, dtype=float), np.array(beta, dtype=float), kept, lams,
                      extra)

    def _predicted_start(self, theta, beta, chol):
        """The last modes moved to first order to ``(theta, beta)`` and the current extra."""
        th0, b0, m0, lams0, extra0 = self._last
        dd1 = None
        if extra0 is not None:                       # e.g. log alpha moved too
            dx = self._extra_now() - extra0
            if np.any(dx) and np.all(np.isfinite(dx)):
                dd1 = self.cond.param_derivatives(m0.eta)[1] @ dx
        deta = None
        if np.logical_or.reduce(np.asarray(beta, dtype=float) != b0):     # (np.any, unwrapped)
            # X beta - X beta0: with a zero offset, the numbers of (X beta + offset) minus the
            # last (X beta0 + offset), which is not held between evaluations
            X = self.model.exog
            deta = X @ beta
            deta -= X @ b0
        return lp.predict_modes(self.design, chol, m0, theta - th0, deta, lams=lams0, dd1=dd1)

    # -- the objective
    def loglike(self, params, nagq=1, tol=1e-14):
        """Laplace (``nagq = 1``) or AGQ log-likelihood at ``params = (theta, beta[, log alpha])``,
        less the constant ``cond.loglik_const`` (what the optimizer works on).  ``tol``: PIRLS's
        tolerance (the fit reports its final value at 1e-20)."""
        theta, beta, extra = self.split(params)
        self.set_extra(extra)
        modes, lams = self.modes(theta, beta, tol=tol)
        if not modes.converged:
            return -np.inf
        if nagq == 1:
            return modes.laplace
        llf, _ = lp.agq_loglik(self.design, self.chol_u, None, self.cond, theta, nagq,
                               modes=modes, lams=lams)
        return llf

    def loglike_and_score(self, params, tol=1e-14, keep_eta=False):
        """Laplace log-likelihood, its exact gradient in ``(theta, beta[, log alpha])``, the modes
        (their ``eta`` None when the model has no parameters of its own and not ``keep_eta``:
        not held through the gradient; :meth:`hessian` reads it).
        ``tol``: PIRLS's tolerance (errors in the modes enter the log-determinant, so the
        value and gradient to first order: ~1e-8 at 1e-14, ~1e-10 at 1e-20)."""
        theta, beta, extra = self.split(params)
        self.set_extra(extra)
        modes, lams = self.modes(theta, beta, tol=tol)
        if not modes.converged:
            return -np.inf, np.zeros(len(params)), modes
        # the modes' eta is not read after the gradient's Hessian terms (without parameters of
        # the conditional model's own): dropped there, the returned modes have eta None then
        gt, gb, ge = lp.laplace_gradient(self.design, self._modes_chol, self.cond, theta, modes,
                                         X=self.model.exog, release_eta=not keep_eta)
        g = np.concatenate([gt, gb] + ([ge] if self.k_extra else []))
        return modes.laplace, g, modes

    def hessian(self, modes):
        """The exact Hessian of the Laplace log-likelihood in ``(theta, beta)`` at converged
        ``modes`` with their ``eta`` (:func:`mlmext.laplace.scalar_laplace_hessian`; only where
        :attr:`exact_hessian`)."""
        return lp.scalar_laplace_hessian(self.design, self.cond, modes, self.model.exog)

    def stage1(self, theta, beta, u=None):
        """lme4's nAGQ = 0 objective at theta: beta inside PIRLS. Returns (deviance, modes)."""
        des, m = self.design, self.model
        fast = self.pirls_options.get("scalar_fast", False)
        # the blocked factor made only where PIRLS's scalar path leaves the system to it
        chol = (lambda: self.chol_x) if fast else self.chol_x
        modes = lp.pirls(des, chol, m.offset, self.cond, theta, u0=u, X=m.exog,
                         beta0=beta, tol=self.stage1_tol, scalar_fast=fast)
        if not modes.converged and (u is not None):
            modes = lp.pirls(des, chol, m.offset, self.cond, theta, X=m.exog,
                             beta0=None, tol=self.stage1_tol, scalar_fast=fast)
        value = -2.0 * modes.laplace if modes.converged else np.inf
        return value, modes

    def stage1_factor(self, modes):
        """The first stage's factor at its ``modes``: the diagonal one PIRLS's scalar path
        attached (without cross-products), else :attr:`chol_x`."""
        fac = modes.extra.get("factor")
        return self.chol_x if fac is None else fac

    def stage1_cov_beta(self, modes):
        """``(X' V^-1 X)^-1`` of the first stage at its ``modes`` (the scale of beta)."""
        cov = modes.extra.get("cov_beta")
        return self.chol_x.cov_beta_unscaled() if cov is None else cov

    # -- quantities at the estimates
    def condvar(self, theta, beta, extra, u):
        """Conditional covariances of b = Lambda u per block, (m, q, q) arrays, at the modes."""
        self.set_extra(extra)
        self.warm_start = np.asarray(u, dtype=float)
        modes, lams = self.modes(np.asarray(theta, dtype=float), np.asarray(beta, dtype=float),
                                 tol=1e-20)
        # the factor the modes were found with (PIRLS's scalar or dense path attach their own)
        cv = lp.factor_at(self.chol_u, modes).condvar_u()
        return [np.einsum("ij,gjk,lk->gil", lam, c, lam) for lam, c in zip(lams, cv)]

    def cov_rx(self, theta, modes, lams):
        """lme4's RX-based covariance: (X' W X - ...)^-1 from the joint PIRLS system at the modes."""
        m = self.model
        d1, w = self.cond.derivatives(modes.eta)
        z = modes.eta - m.offset
        pos = w > 0
        z[pos] += d1[pos] / w[pos]
        ch = self.chol_x
        ch.reweight(np.column_stack([m.exog, z]), w)
        try:
            ch.update(lams)
        except np.linalg.LinAlgError:
            # z in the span of [Z Lambda, X] (an exact fit): the covariance does not depend on
            # the response column, any column outside the span gives the factor
            e = np.random.default_rng(0).standard_normal(z.shape[0])
            ch.reweight(np.column_stack([m.exog, e]), w)
            try:
                ch.update(lams)
            except np.linalg.LinAlgError:
                # X' W X singular: the weights vanish (fitted probabilities 0 or 1, means 0),
                # as in separated data; no standard errors (the separation check warns)
                return np.full((m.k_fe, m.k_fe), np.nan)
        return ch.cov_beta_unscaled()
