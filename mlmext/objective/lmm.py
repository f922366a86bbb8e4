"""The profiled (RE)ML deviance of a linear mixed model, as an object (lme4's ``devfun``).

:class:`LMMDeviance` is a function of theta: beta and sigma are profiled out in
closed form from the blocked Cholesky factor of ``Lambda' [Z X y]' W [Z X y]
Lambda + I`` (:mod:`mlmext.linalg`).  It owns a private workspace of the model's
cross-products, so deviances of one model can be evaluated side by side (two
fits, a fit and a profile, two threads); after the cross-products no evaluation
touches anything of order n.  :meth:`LMMDeviance.at` gives the immutable
:class:`LMMState` that the results keep.

Besides the profiled deviance it has the pieces inference needs with sigma (and
one fixed effect) held fixed: lmerTest's deviance in (theta, sigma), lme4's
profile deviance in (sd/cor, sigma) and the deviance at a given fixed effect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from .params import sdcor_from_theta, theta_from_sdcor
from .rest_hessian import rest_hessian

__all__ = ["LMMDeviance", "LMMState"]

_LOG2PI = np.log(2.0 * np.pi)


def _frozen(a):
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class LMMState:
    """A linear mixed model at one theta: everything the results read.

    Attributes
    ----------
    theta, beta, u : ndarray
        Relative covariance parameters, fixed effects, spherical random effects
        (``b = Lambda u``), all read-only.
    sigma : float
        Residual standard deviation (REML or ML estimate at theta).
    criterion : float
        The REML criterion or -2 log-likelihood.
    cov_beta : ndarray
        Covariance of beta, ``sigma^2 (X' V^-1 X)^-1``.
    reml : bool
    """

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    sigma: float
    criterion: float
    cov_beta: np.ndarray
    reml: bool


def _read_only(a):
    a.setflags(write=False)
    return a


def state_of(**fields):
    """An :class:`LMMState` of fields in their final form, set as one dict: the frozen
    dataclass's __init__ (a guarded setattr per field) costs more than the rest of ``at``'s
    bookkeeping on a small model (and than a batched refit member's state)."""
    new = object.__new__(LMMState)
    new.__dict__.update(fields)
    return new


_state = state_of


class LMMDeviance:
    """The profiled REML criterion (or -2 log-likelihood) of an LMM as a function of theta.

    Made by :meth:`mlmext.lmm.LinearMixedModel.deviance`.

    Parameters
    ----------
    model : LinearMixedModel
    reml : bool
        REML criterion (default) or -2 log-likelihood.

    Attributes
    ----------
    names : list of str
        Names of the entries of theta.
    lower : ndarray
        Lower bounds of theta (0 on the diagonals of the templates).
    """

    def __init__(self, model, reml=True):
        self.model = model
        self.reml = bool(reml)
        self.design = model.re_design
        self.names = self.design.theta_names()
        self.lower = self.design.lower
        self.n = float(model.nobs)
        self.p = int(model.k_fe)
        self._logw = model._logw
        self._last = None                 # the theta (bytes) the workspace was last updated to
        # a small system with one grouping factor: the criterion, its derivatives and the state
        # level by level (a fraction of the dense storage's cost); the factor is made on first
        # use (the inference's pieces with sigma or a fixed effect held fixed)
        levels = getattr(model, "_small_levels", None)
        lv = levels() if levels is not None else None
        self._levels = None if lv is None else lv.criterion(self.reml, self.n, self._logw)

    @property
    def _factor(self):
        """This deviance's own workspace of the model's factor (made on first use)."""
        f = self.__dict__.get("_workspace")
        if f is None:
            # the dense storage of a small system where the model has one (not a whitened view)
            small = getattr(self.model, "_small_factor", None)
            fac = small() if small is not None else None
            f = self._workspace = (self.model._cross_products() if fac is None else fac).workspace()
        return f

    @_factor.setter
    def _factor(self, factor):
        """Evaluate on ``factor`` (a storage of the model's cross-products) alone."""
        self._workspace, self._levels, self._last = factor, None, None

    @property
    def nparams(self):
        return self.design.ntheta

    @property
    def size(self):
        """Order of the dense part of the factor (what a BLAS call works on)."""
        if self._levels is not None:          # (the small system's order: no factor made)
            return self._levels.m * self._levels.q + self.p + 1
        return self._factor.r

    # ------------------------------------------------------------------ the criterion
    def factor(self, theta, lams=None):
        """The factor updated to theta (LinAlgError where numerically indefinite).

        The workspace is this deviance's own, so a theta equal to the last one's factor is
        the factor as it stands (Newton's Hessian and the final state at a point whose value
        and gradient were just computed)."""
        theta = np.asarray(theta, dtype=float)
        key = theta.tobytes()             # (bytes: np.array_equal costs more than a small update's
        if key == self._last:             # share; -0.0 and 0.0 differ and are just recomputed)
            return self._factor
        self._last = None
        ch = self._factor.update(self.design.lambdas(theta) if lams is None else lams)
        self._last = key
        return ch

    def _from_factor(self, ch):
        return self._profiled(ch, ch.r2, self.reml)

    def _profiled(self, ch, r2, reml):
        """The criterion profiled over sigma for a penalized residual sum of squares r2."""
        nu = self.n - (self.p if reml else 0)
        logdet = ch.logdet_zz + (ch.logdet_xx if reml else 0.0)
        return logdet + nu * (1.0 + _LOG2PI + np.log(r2 / nu)) - self._logw

    def value(self, theta):
        """The criterion at theta (inf where the factor is numerically indefinite)."""
        if self._levels is not None:
            return self._levels.value(theta)
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        return self._from_factor(ch)

    __call__ = value

    def value_and_grad(self, theta):
        """The criterion and its gradient in theta.

        With ``Omega = Lambda' A Lambda + I`` restricted to the random effects
        (ML) or to random and fixed effects (REML), and ``r2`` the penalized
        residual sum of squares,

        * d log det(Omega_P) / d theta_k = 2 [(m_b I - S_b) lambda_b^-1]_{ji}
          where S_b sums the level-diagonal blocks of Omega_P^-1 for the block
          holding theta_k at template position (i, j);
        * d r2 / d theta_k = -2 sum_g [Z'W res]_{g,i} u_{g,j}.

        Both come from the factor plus one triangular inversion of the dense
        part: no n-sized work.  Entries of a block whose template has a (near)
        zero diagonal use central differences (steps in the predictors' units).
        """
        if self._levels is not None:
            return self._levels.value_and_grad(theta)
        theta = np.asarray(theta, dtype=float)
        des = self.design
        lams = des.lambdas(theta)
        try:
            ch = self.factor(theta, lams)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(theta)
        nu = self.n - self.p if self.reml else self.n
        r2 = ch.r2
        dev = self._from_factor(ch)
        if hasattr(ch, "first_derivatives"):       # the dense storage: exact, no differences
            dld, dr2 = ch.first_derivatives(self.p if self.reml else 0)
            return dev, dld + nu * dr2 / r2
        u, beta = ch.solve()
        S = ch.inverse_block_sums(self.p if self.reml else 0)
        W = ch.ztres(u, beta, lams)
        grad = np.empty_like(theta)
        fd = []
        off = 0
        for blk, lam, Sb, Wb, rms in zip(des.blocks, lams, S, W, self._block_units()):
            ub = u[off:off + blk.nre].reshape(blk.m, blk.q)
            off += blk.nre
            if blk.q == 1:                    # scalar block: no 1 x 1 arrays (numpy overhead)
                l = lam[0, 0]
                if abs(l) * rms[0] <= 1e-6 * max(1.0, abs(l) * rms[0]):
                    fd.extend(blk.t_idx)
                    continue
                grad[blk.t_idx] = 2.0 * (blk.m - Sb[0, 0]) / l - 2.0 * nu * (Wb * ub).sum() / r2
                continue
            d = (np.abs(lam.diagonal()) * rms).tolist()          # in the predictors' units
            if min(d) <= 1e-6 * max(1.0, max(d)):
                fd.extend(blk.t_idx)
                continue
            # (m I - S) lambda^-1, lambda lower triangular (its LAPACK inverse leaves 0 above);
            # entry (i, j) of the template: -2 [H_ji + nu/r2 sum_g Wb_gi u_gj]
            Sb = Sb.copy()
            Sb.flat[::blk.q + 1] -= blk.m
            G = (Sb @ linalg.lapack.dtrtri(lam, lower=1)[0]).T + (nu / r2) * (Wb.T @ ub)
            grad[blk.t_idx] = -2.0 * G[blk.t_rows, blk.t_cols]
        if fd:
            # central differences: the deviance is smooth through a zero diagonal (it is even
            # in a template's column), and the Newton checks difference this gradient again
            units = self._units()
            for k in fd:
                h = 1e-4 * max(abs(theta[k]), 1.0 / units[k])
                tp, tm = theta.copy(), theta.copy()
                tp[k] += h
                tm[k] -= h
                grad[k] = (self.value(tp) - self.value(tm)) / (2.0 * h)
        return dev, grad

    def hessian_part(self, theta):
        """``(idx, H)``: the exact Hessian in the entries ``idx`` of theta (the dense
        remainder's scalar blocks, :func:`~mlmext.objective.rest_hessian.rest_hessian`) from
        the inverse of the last :meth:`value_and_grad`, which must have been at ``theta``;
        None where it is not available (the Newton polish then differences every entry)."""
        theta = np.asarray(theta, dtype=float)
        if self._last != theta.tobytes() or hasattr(self._factor, "first_derivatives"):
            return None
        nu = self.n - self.p if self.reml else self.n
        return rest_hessian(self._factor, self.design.blocks, theta, nu,
                            self.p if self.reml else 0, self._block_units())

    @property
    def cheap_hessian(self):
        """Whether the exact Hessian costs about a gradient (one grouping factor, small system):
        Newton then starts the fit (:func:`~mlmext.optimize.minimize_theta`'s ``newton_first``)."""
        return self._levels is not None

    @property
    def has_hessian(self):
        """Whether :meth:`value_grad_hess` is available (small systems: the dense storage)."""
        return self._levels is not None or hasattr(self._factor, "derivatives")

    def value_grad_hess(self, theta):
        """The criterion, its gradient and its exact Hessian in theta (small systems).

        From :meth:`~mlmext.linalg.small.SmallDenseFactor.derivatives`: with ``d`` the
        log-determinant's derivatives and ``r2`` the penalized residual sum of squares,
        ``grad = d' + nu r2' / r2`` and ``H = d'' + nu (r2'' / r2 - r2' r2'^T / r2^2)``
        (``nu = n - p`` for REML, ``n`` for ML).  No difference quotients: exact at a zero
        standard deviation too.  ``(inf, 0, NaN)`` where the system is indefinite.
        """
        if not self.has_hessian:
            raise NotImplementedError("the exact Hessian is available for small systems only "
                                      "(the dense storage); use a difference of value_and_grad")
        if self._levels is not None:
            return self._levels.value_grad_hess(theta)
        theta = np.asarray(theta, dtype=float)
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            k = theta.size
            return np.inf, np.zeros(k), np.full((k, k), np.nan)
        nu = self.n - self.p if self.reml else self.n
        r2 = ch.r2
        dld, d2ld, dr2, d2r2 = ch.derivatives(self.p if self.reml else 0)
        grad = dld + nu * dr2 / r2
        hess = d2ld + nu * (d2r2 / r2 - np.outer(dr2, dr2) / r2 ** 2)
        return self._from_factor(ch), grad, 0.5 * (hess + hess.T)

    def hessian(self, theta):
        """The exact Hessian in theta: :meth:`value_grad_hess`'s third item (small systems),
        without the copies of the value and gradient on the level-by-level evaluator."""
        if self._levels is not None:
            return self._levels.hessian(theta)
        return self.value_grad_hess(theta)[2]

    def _block_units(self):
        u = self.design.__dict__.get("_lmm_block_units")
        if u is None:                  # root mean square of each block's columns of Z (the
            u = [np.where(r > 0, r, 1.0) for r in        # design never changes: once per design)
                 (b.column_rms() for b in self.design.blocks)]
            self.design._lmm_block_units = u
        return u

    def _units(self):
        u = self.__dict__.get("_theta_units")
        if u is None:                  # computed once per deviance, then read only
            u = self._theta_units = self.design.theta_units()
        return u

    def at(self, theta):
        """The model at theta: an immutable :class:`LMMState`."""
        theta = np.asarray(theta, dtype=float)
        nu = self.n - self.p if self.reml else self.n
        if self._levels is not None:
            beta, u, r2, crit, cov = self._levels.estimates(theta)
            sigma2 = r2 / nu
            # (the estimates are fresh arrays: made read-only, not copied; math.sqrt and
            # np.sqrt are both the correctly rounded square root)
            return _state(theta=_frozen(theta), beta=_read_only(beta), u=_read_only(u),
                          sigma=math.sqrt(sigma2), criterion=float(crit),
                          cov_beta=_read_only(sigma2 * cov), reml=self.reml)
        ch = self.factor(theta)
        u, beta = ch.solve()
        sigma2 = ch.r2 / nu
        return LMMState(theta=_frozen(theta), beta=_frozen(beta), u=_frozen(u),
                        sigma=float(np.sqrt(sigma2)), criterion=float(self._from_factor(ch)),
                        cov_beta=_frozen(sigma2 * ch.cov_beta_unscaled()), reml=self.reml)

    def condvar(self, theta, sigma):
        """Conditional covariances of b = Lambda u per block, (m, q, q) arrays (lme4's condVar)."""
        lams = self.design.lambdas(np.asarray(theta, dtype=float))
        cv = self.factor(theta, lams).condvar_u()
        return [sigma ** 2 * np.einsum("ij,gjk,lk->gil", lam, c, lam) for lam, c in zip(lams, cv)]

    # ------------------------------------------------- with sigma or a fixed effect held fixed
    def _lxx(self, ch):
        """L_XX, the fixed-effects block of the factor (only the lower triangle of ``Lr`` is set)."""
        rz, p = ch.rz, ch.p
        return np.tril(ch.Lr[rz:rz + p, rz:rz + p])

    def _beta_hat(self, ch):
        """beta(theta) from L_XX' beta = l_yX (the last row of the factor): cheaper than
        ``solve``, which also solves for the random effects (this runs per profile point)."""
        rz, p = ch.rz, ch.p
        return np.linalg.solve(self._lxx(ch).T, ch.Lr[-1, rz:rz + p])

    def _cov_unscaled(self, ch):
        """(L_XX L_XX')^-1; a small dense inverse is cheaper than its triangular solve with I."""
        Li = np.linalg.inv(self._lxx(ch))
        return Li.T @ Li

    def value_sigma(self, theta, sigma, reml=None):
        """-2 log-likelihood (REML: restricted) at (theta, sigma), beta profiled out (lmerTest)."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        return self._value_r2(ch, ch.r2, sigma, self.reml if reml is None else reml)

    def cov_beta(self, theta, sigma):
        """Covariance of beta at (theta, sigma)."""
        return sigma ** 2 * self._cov_unscaled(self.factor(theta))

    def sdcor_from_theta(self, theta, sigma):
        return sdcor_from_theta(self.design, theta, sigma)

    def theta_from_sdcor(self, v, sigma):
        return theta_from_sdcor(self.design, v, sigma)

    def value_sdcor(self, vp):
        """ML deviance at (sd/cor parameters, sigma), beta profiled out (lme4's ``devfun2``)."""
        sigma = vp[-1]
        return self.value_sigma(self.theta_from_sdcor(vp[:-1], sigma), sigma, reml=False)

    def value_fixed(self, theta, j, value):
        """ML deviance, profiled over sigma and the other fixed effects, at beta_j = value."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        b = self._beta_hat(ch)
        cjj = self._cov_unscaled(ch)[j, j]
        return self._profiled(ch, ch.r2 + (value - b[j]) ** 2 / cjj, reml=False)

    # ------------------------------------------------------------------ full parameters
    def loglike(self, beta, theta, sigma):
        """Log-likelihood at (beta, theta, sigma); the restricted one (free of beta) for REML."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return -np.inf
        r2 = ch.r2
        if not self.reml and self.p:         # r2(beta) = r2 + |L_XX' (beta - beta_hat)|^2
            d = np.asarray(beta, dtype=float) - self._beta_hat(ch)
            r2 = r2 + float(np.sum((self._lxx(ch).T @ d) ** 2))
        return -0.5 * self._value_r2(ch, r2, sigma, self.reml)

    def _value_r2(self, ch, r2, sigma, reml):
        """The deviance at sigma for a penalized residual sum of squares r2."""
        s2 = sigma ** 2
        dev = ch.logdet_zz + r2 / s2 + self.n * (_LOG2PI + np.log(s2)) - self._logw
        if reml:
            dev += ch.logdet_xx - self.p * (_LOG2PI + np.log(s2))
        return dev
