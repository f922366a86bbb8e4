"""Family-independent engine for non-Gaussian mixed models: PIRLS, Laplace and AGQ.

The conditional distribution of the response given the linear predictor
``eta = eta_fixed + Z Lambda(theta) u`` is described by an object following
the :class:`ConditionalModel` protocol (GLM families and the negative
binomial in :mod:`mlmext.glmm`, the cumulative-link model in the ordinal
module).  This module only needs its per-observation log-likelihood and the
first two derivatives in ``eta``; it never looks at the response itself.

With ``u ~ N(0, I)`` (spherical random effects, ``b = Lambda u``) the
marginal log-likelihood is

    l(theta, beta) = log int prod_i p(y_i | eta_i(u)) phi(u) du.

* :func:`pirls` finds the conditional modes ``u~`` by penalized iteratively
  reweighted least squares (Newton / Fisher scoring on
  ``sum_i log p(y_i | eta_i) - |u|^2 / 2`` with step halving).  Each step is
  one weighted penalized least-squares problem solved with the shared
  :class:`mlmext.linalg.BlockedCholesky` (the system
  ``Lambda' Z' W Z Lambda + I`` for ``u`` alone, or with the fixed effects
  when ``X`` is given: lme4's ``nAGQ = 0`` stage).
* :func:`laplace_loglik` is the Laplace approximation
  ``sum_i log p(y_i | eta~_i) - |u~|^2 / 2 - log|L|^2 / 2``, ``L L' =
  Lambda' Z' W Z Lambda + I`` with ``W`` the weights at the modes; every
  random-effects structure the factorization handles (crossed, nested,
  correlated vector terms) is allowed.
* :func:`agq_loglik` is adaptive Gauss-Hermite quadrature for a single
  grouping factor: the integral factors over its levels, each one centred at
  its conditional mode and scaled by its conditional covariance; a vector
  term with up to three random effects per level uses the product grid.
  Cost is O(n * nodes) (per-level sums by ``bincount``).
* :func:`laplace_gradient` is the exact gradient of the Laplace
  log-likelihood in ``theta``, ``beta`` and the conditional model's own
  parameters (for conditional models that supply the optional third-order
  pieces of the protocol), so that quasi-Newton optimizers need one
  evaluation per step.

All log-likelihoods are on the full scale (they include the constants of the
conditional distribution), so Laplace and AGQ values compare with each other
and with GLM fits.
"""
from __future__ import annotations

import functools
import math
import numbers
import weakref
from dataclasses import dataclass, field

import numpy as np

from .linalg import BlockedCholesky, ScalarFactor

__all__ = ["ConditionalModel", "Modes", "PIRLSError", "ScalarFactor", "make_chol", "pirls",
           "laplace_loglik", "agq_loglik", "laplace_gradient", "agq_loglik_gradient", "gh_rule",
           "random_effects_linear", "predict_modes", "check_nagq", "check_positive", "check_agq_grid",
           "MAX_NAGQ", "separation_direction"]


class ConditionalModel:
    """Protocol for the distribution of ``y`` given the linear predictor ``eta``.

    Subclass it (or duck-type it).  Only :meth:`loglik_obs` and
    :meth:`derivatives` are required.  The optional methods make analytic
    gradients of the Laplace log-likelihood possible
    (:func:`laplace_gradient`); without them callers fall back to finite
    differences.

    Prior weights are the conditional model's business: ``loglik_obs`` and
    the derivatives must already include them.
    """

    #: number of parameters of the conditional model itself (e.g. log alpha of
    #: the negative binomial, thresholds of an ordinal model)
    k_extra = 0
    #: size of the terms that cancel in the summed log-likelihood (e.g. the log-factorials of
    #: large counts): the level below which PIRLS's decrement is rounding
    loglik_scale = 0.0

    def loglik_obs(self, eta):
        """(n,) ``log p(y_i | eta_i)`` on the full scale (with all constants, prior weights applied)."""
        raise NotImplementedError

    def derivatives(self, eta):
        """``(d1, w)``: ``d1 = d loglik_i / d eta_i`` and positive weights ``w``.

        ``w`` is ``-d^2 loglik_i / d eta_i^2`` or its expectation (the GLM
        working weights, Fisher scoring).  ``w`` enters the Laplace
        determinant, so it defines which Laplace approximation is computed
        (lme4 uses the expected information).
        """
        raise NotImplementedError

    # -- optional --------------------------------------------------------------
    # def hessian_terms(self, eta):
    #     """``(h, dw)``: observed information ``h = -d^2 loglik_i / d eta_i^2``
    #     and ``dw = d w_i / d eta_i`` for the ``w`` of :meth:`derivatives`."""
    #
    # def param_derivatives(self, eta):
    #     """``(dl, dd1, dw)``, each (n, k_extra): derivatives of ``loglik_i``,
    #     ``d1_i`` and ``w_i`` with respect to the model's own parameters."""
    #
    # def param_loglik_derivatives(self, eta):
    #     """``dl`` of :meth:`param_derivatives` alone (cheaper, at AGQ nodes)."""
    #
    # vectorized_eta = False
    #     """True when the methods also take 2-D ``eta`` (nodes x n, each row a linear
    #     predictor): AGQ then evaluates all quadrature nodes in one call."""
    #
    # allow_negative_weights = False
    #     """True when single observations may have ``w < 0`` (observed information
    #     of a log-density that is not concave); only PIRLS' ``scalar_fast`` path
    #     accepts them, as long as the penalized information stays positive."""


class PIRLSError(RuntimeError):
    """PIRLS did not find the conditional modes (divergence or non-finite values)."""


@dataclass
class Modes:
    """Conditional modes and what PIRLS did to find them.

    Attributes
    ----------
    u : ndarray
        Spherical conditional modes (blocks in factorization order).
    eta : ndarray
        Linear predictor at the modes.
    beta : ndarray or None
        Fixed effects when they were updated inside PIRLS (``X`` given).
    loglik_cond : float
        ``sum_i log p(y_i | eta_i)`` at the modes.
    sqr_u : float
        ``|u|^2``.
    logdet : float
        ``log|L|^2`` for ``L L' = Lambda' Z' W Z Lambda + I`` at the modes.
    converged : bool
    niter, nhalf : int
        PIRLS iterations and step halvings.
    message : str
    """

    u: np.ndarray
    eta: np.ndarray
    beta: np.ndarray | None
    loglik_cond: float
    sqr_u: float
    logdet: float
    converged: bool
    niter: int = 0
    nhalf: int = 0
    message: str = ""
    decrement: float = np.nan
    extra: dict = field(default_factory=dict)
    d1: np.ndarray | None = None
    w: np.ndarray | None = None

    @property
    def laplace(self):
        """Laplace approximation of the marginal log-likelihood."""
        return self.loglik_cond - 0.5 * self.sqr_u - 0.5 * self.logdet


# ----------------------------------------------------------------------------- Z Lambda u
class _ZOps:
    """Products with ``Z Lambda`` for a design, with per-block arrays cached."""

    def __init__(self, design):
        self.blocks = design.blocks
        self.n = self.blocks[0].X.shape[0]
        self.offsets = np.concatenate([[0], np.cumsum([b.nre for b in self.blocks])]).astype(int)
        self.scalar = [b.q == 1 for b in self.blocks]
        self.x0 = [np.ascontiguousarray(b.X[:, 0]) if b.q == 1 else None for b in self.blocks]
        self.all_ones = [bool(b.q == 1 and np.all(b.X[:, 0] == 1.0)) for b in self.blocks]

    def zlam(self, u, lams):
        """``Z Lambda u`` (n,)."""
        out = np.zeros(self.n)
        for k, (b, lam) in enumerate(zip(self.blocks, lams)):
            ub = u[self.offsets[k]:self.offsets[k + 1]]
            if self.scalar[k]:
                v = (lam[0, 0] * ub)[b.codes]
                out += v if self.all_ones[k] else v * self.x0[k]
            else:
                bb = ub.reshape(b.m, b.q) @ lam.T
                out += np.einsum("ij,ij->i", b.X, bb[b.codes])
        return out

    def ztv(self, v, lams):
        """``Lambda' Z' v`` (nre,) for an n-vector ``v``."""
        out = np.empty(self.offsets[-1])
        for k, (b, lam) in enumerate(zip(self.blocks, lams)):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            if self.scalar[k]:
                vv = v if self.all_ones[k] else v * self.x0[k]
                out[sl] = lam[0, 0] * np.bincount(b.codes, weights=vv, minlength=b.m)
            else:
                s = np.empty((b.m, b.q))
                for j in range(b.q):
                    s[:, j] = np.bincount(b.codes, weights=v * b.X[:, j], minlength=b.m)
                out[sl] = (s @ lam).ravel()
        return out

    def dtheta_cols(self, v, design, theta):
        """(n, ntheta): column k is ``Z (d Lambda / d theta_k) v``."""
        out = np.zeros((self.n, design.ntheta))
        for k, b in enumerate(self.blocks):
            vb = v[self.offsets[k]:self.offsets[k + 1]].reshape(b.m, b.q)
            if self.all_ones[k]:
                out[:, b.t_idx[0]] += vb[b.codes, 0]
                continue
            for r, c, t in zip(b.t_rows, b.t_cols, b.t_idx):
                out[:, t] += b.X[:, r] * vb[b.codes, c]
        return out


_ZOPS = weakref.WeakKeyDictionary()


def _zops(design):
    ops = _ZOPS.get(design)
    if ops is None:
        ops = _ZOps(design)
        _ZOPS[design] = ops
    return ops


def random_effects_linear(design, u, theta=None, lams=None):
    """``Z Lambda(theta) u``: the random-effects part of the linear predictor."""
    lams = design.lambdas(np.asarray(theta, dtype=float)) if lams is None else lams
    return _zops(design).zlam(np.asarray(u, dtype=float), lams)


def make_chol(design, n=None, X=None):
    """A :class:`~mlmext.linalg.BlockedCholesky` for PIRLS.

    With ``X=None`` the system is for ``u`` alone (``p = 0``); with a fixed
    design ``X`` (n, p) it is the joint system of lme4's ``nAGQ = 0`` stage.
    """
    n = design.blocks[0].X.shape[0] if n is None else n
    if X is None:
        XY = np.ones((n, 1))
    else:
        XY = np.column_stack([np.asarray(X, dtype=float), np.ones(n)])
    try:
        return BlockedCholesky(design.blocks, XY, np.ones(n), reweighting=True)
    except TypeError:                      # a BlockedCholesky without the reweighting path
        return BlockedCholesky(design.blocks, XY, np.ones(n))


def _reweight(chol, XY, w):
    """New working response and weights in the factorization (fast path when available)."""
    f = getattr(chol, "reweight", None)
    if f is not None:
        f(XY, w)
    else:
        chol.set_data(XY, w)


# ----------------------------------------------------------------------------- PIRLS
def _halving_step(evaluate, u_at, eta_at, obj, maxhalf):
    """PIRLS line search: the first t in 1, 1/2, 1/4, ... whose penalized log-likelihood
    ``loglik(eta_at(t)) - |u_at(t)|^2 / 2`` is not below ``obj`` (to rounding).

    Returns ``(t, u, eta, loglik, objective, d1, w, failed trials)``; ``t`` is None (and the
    rest is None too) when ``maxhalf`` halvings do not give such a step.
    """
    t = 1.0
    for k in range(maxhalf + 1):
        u_t, eta_t = u_at(t), eta_at(t)
        ll_t, d1_t, w_t = evaluate(eta_t)
        obj_t = ll_t - 0.5 * float(u_t @ u_t)
        if math.isfinite(obj_t) and obj_t >= obj - 1e-10 * (1.0 + abs(obj)):
            return t, u_t, eta_t, ll_t, obj_t, d1_t, w_t, k
        t *= 0.5
    return None, None, None, None, None, None, None, maxhalf + 1


#: relative size (to the magnitude of the terms summed into the penalized log-likelihood)
#: below which a decrement that stopped shrinking is rounding noise
_ROUNDING_RTOL = 1e-15


def _at_rounding_floor(dec, dec_prev, obj, scale=0.0):
    """True when the PIRLS decrement stopped decreasing at the level of rounding.

    The absolute ``tol`` on the decrement cannot be met when the penalized log-likelihood is
    large (counts of 1e9: terms ~1e10, steps solved to ~1e-9 relative give decrements
    ~1e-6): the iterations then hover, up or down by rounding (which way depends on the BLAS
    kernel).  Newton and Fisher scoring shrink the decrement by large factors until rounding
    takes over, so a decrement that did not halve and is below ``_ROUNDING_RTOL`` times the
    size of the terms summed (``scale``: a Poisson log-likelihood of counts near 1e9 is -11
    per row, the difference of two terms of 2e10, so it is known to ~1e-6 per row) means
    converged.
    """
    return dec > 0.5 * dec_prev and dec < _ROUNDING_RTOL * (1.0 + abs(obj) + scale)


def _solve_in_span(chol, X, z, w, lams):
    """PIRLS solution for a working response ``z`` whose factorization fails (see :func:`pirls`).

    Returns ``(u, beta)`` or None when the factor itself (not just the response's pivot) is
    not positive definite.  ``chol`` is left holding the factor with the auxiliary response.
    """
    e = np.random.default_rng(0).standard_normal(z.shape[0]) * (1.0 + np.max(np.abs(z)))
    sols = []
    for resp in (z + e, e):
        XY = np.column_stack([X, resp]) if X is not None else resp[:, None]
        _reweight(chol, XY, w)
        try:
            chol.update(lams)
        except np.linalg.LinAlgError:
            return None
        sols.append(chol.solve())
    (u1, b1), (u2, b2) = sols
    return u1 - u2, (None if b1 is None or X is None else b1 - b2)


def _halving_failed(dec, obj, it, maxhalf):
    """``(converged, message)`` of a PIRLS run whose line search found no better step: a
    decrement already at the floor of floating point counts as convergence."""
    if dec < 1e-6 * (1.0 + abs(obj)):
        return True, "converged to rounding level (step halving could not improve further)"
    return False, (f"PIRLS step halving failed to increase the penalized log-likelihood at "
                   f"iteration {it} after {maxhalf} halvings (decrement {dec:.3g})")


def _final_message(message, converged, restarted):
    """The PIRLS message after the iterations (shared by :func:`pirls` and the scalar path)."""
    if not converged and not message:
        message = "PIRLS failed"
    if restarted:
        message = ("restarted from u = 0 (non-finite start); " + message).rstrip("; ")
    return message


def pirls(design, chol, eta_fixed, cond, theta, u0=None, X=None, beta0=None, tol=1e-12,
          maxiter=100, maxhalf=30, lams=None, newton=None, scalar_fast=False):
    """Conditional modes of the random effects by penalized IRLS.

    Maximizes ``sum_i loglik_i(eta_i) - |u|^2 / 2`` over ``u`` (and over
    ``beta`` too when ``X`` is given) with Newton / Fisher-scoring steps and
    step halving.  Each step solves
    ``(Lambda' Z' W Z Lambda + I) u_new = Lambda' Z' W z`` with the working
    response ``z = Z Lambda u + d1 / w`` through ``chol``.

    Parameters
    ----------
    design : mlmext.design.RandomEffectsDesign
    chol : mlmext.linalg.BlockedCholesky
        Made by :func:`make_chol` (``p = 0``, or ``p = X.shape[1]`` with ``X``).
        On return it holds the factor at the modes (weights ``w(eta~)``).
    eta_fixed : ndarray
        Fixed part of the linear predictor (``X beta + offset``; just the
        offset when ``X`` is given).
    cond : ConditionalModel
    theta : ndarray
        Relative covariance parameters.
    u0, beta0 : ndarray, optional
        Starting values (warm start); zeros / ``beta0`` required with ``X``.
    X : ndarray, optional
        Fixed-effects design to update ``beta`` inside PIRLS.
    tol : float
        Convergence when the squared Newton decrement
        ``dlin' W dlin + |du|^2`` of the next step is below ``tol`` (the
        penalized log-likelihood is then within ``tol / 2`` of its maximum).
        The modes are not moved by that last step, so the factor, the weights
        and the modes are consistent.
    maxiter, maxhalf : int
        Iteration and step-halving limits.
    lams : list of ndarray, optional
        ``design.lambdas(theta)`` if already computed.
    newton : bool, optional
        Iterate with the observed information (``cond.hessian_terms``, when
        it is positive) instead of the weights ``w`` of ``cond.derivatives``:
        quadratic instead of linear convergence for non-canonical links.  The
        factor left in ``chol`` (and ``logdet``) always uses ``w``.  Default:
        when ``cond`` has ``hessian_terms``.
    scalar_fast : bool
        Opt-in fast path for a single scalar random-effects term (one
        grouping factor, one random effect per level) without ``X``: the
        system is diagonal and the Newton steps are taken level by level
        (:func:`_pirls_scalar`), without the blocked factorization.  ``chol``
        is then not touched; the returned modes carry the diagonal factor as
        ``modes.extra["factor"]`` (a :class:`ScalarFactor`), which
        :func:`agq_loglik`, :func:`laplace_gradient` and
        :func:`predict_modes` use in place of ``chol``.  Ignored for other
        designs.

    Returns
    -------
    Modes
        ``converged`` is False (with a ``message`` saying what was tried)
        when the iterations diverged; no exception is raised.
    """
    theta = np.asarray(theta, dtype=float)
    lams = design.lambdas(theta) if lams is None else lams
    if scalar_fast and X is None and _is_scalar_design(design):
        return _pirls_scalar(design, eta_fixed, cond, lams, u0=u0, tol=tol, maxiter=maxiter,
                             maxhalf=maxhalf)
    ops = _zops(design)
    nre = ops.offsets[-1]
    eta_fixed = np.asarray(eta_fixed, dtype=float)
    has_x = X is not None
    if has_x:
        X = np.asarray(X, dtype=float)
        beta = np.zeros(X.shape[1]) if beta0 is None else np.array(beta0, dtype=float)
    else:
        beta = None
    u = np.zeros(nre) if u0 is None else np.array(u0, dtype=float)
    if newton is None:
        newton = hasattr(cond, "hessian_terms") and not getattr(cond, "canonical", False)
    fused = getattr(cond, "loglik_derivs", None)

    def linear(u, beta):
        lin = ops.zlam(u, lams)
        if has_x:
            lin += X @ beta
        return lin

    def evaluate(eta):
        """(sum loglik, d1, w) at eta; d1, w are None when the value is not finite."""
        with np.errstate(all="ignore"):
            if fused is not None:
                lo, d1, w = fused(eta)
                ll = float(np.sum(lo))
            else:
                ll = float(np.sum(cond.loglik_obs(eta)))
                d1 = w = None
                if np.isfinite(ll):
                    d1, w = cond.derivatives(eta)
        return ll, d1, w

    lin = linear(u, beta)
    eta = eta_fixed + lin
    ll, d1, w = evaluate(eta)
    obj = ll - 0.5 * float(u @ u)
    restarted = False
    if not np.isfinite(obj) and (u0 is not None or beta0 is not None):
        u = np.zeros(nre)
        if has_x:
            beta = np.zeros(X.shape[1])
        lin = linear(u, beta)
        eta = eta_fixed + lin
        ll, d1, w = evaluate(eta)
        obj = ll - 0.5 * float(u @ u)
        restarted = True
    factor_weights_are_w = True
    nhalf_total = 0
    converged = False
    message = ""
    dec = np.nan
    dec_prev = np.inf
    it = 0
    if not np.isfinite(obj):
        message = ("the log-likelihood is not finite at the starting values (before the "
                   "first iteration)")
        maxiter_run = 0
    else:
        maxiter_run = maxiter
    for it in range(1, maxiter_run + 1):
        if d1 is None or not (np.isfinite(d1.sum()) and np.isfinite(w.sum())) or w.min() < 0:
            message = (f"non-finite or negative working weights at PIRLS iteration {it} "
                       f"(max |eta| = {np.max(np.abs(eta)):.3g})")
            break
        wt = w
        factor_weights_are_w = True
        # Newton weights far from the modes, the weights w once the last step was small: if
        # that check converges, the factor is already the one the Laplace determinant needs
        if newton and not dec < 1e-9:
            with np.errstate(all="ignore"):
                hobs = cond.hessian_terms(eta)[0]
            if np.all(np.isfinite(hobs)) and hobs.min() > 0:
                wt = hobs
                factor_weights_are_w = False
        with np.errstate(divide="ignore", invalid="ignore"):
            z = lin + np.where(wt > 0, d1 / wt, 0.0)
        exact = not np.any(z)                      # zero working response: nothing to move
        if exact:                                  # any response outside the span gives the factor
            z = np.random.default_rng(0).standard_normal(z.shape[0])
        XY = np.column_stack([X, z]) if has_x else z[:, None]
        _reweight(chol, XY, wt)
        try:
            chol.update(lams)
            solved = None
        except np.linalg.LinAlgError:
            # a working response in the span of [Z Lambda, X] (a constant response: the fit is
            # exact) leaves no residual for the last pivot; the solution is linear in the
            # response, so solve for z + e and for e (e outside the span) and subtract
            solved = _solve_in_span(chol, X, z, wt, lams) if not exact else None
            if solved is None:
                message = f"factorization failed at PIRLS iteration {it}"
                break
        if exact:
            converged, dec = True, 0.0
            break
        u_new, b_new = chol.solve() if solved is None else solved
        du = u_new - u
        dlin = linear(u_new, b_new if has_x else None)
        dlin -= lin
        dec = float(wt @ (dlin * dlin) + du @ du)
        if not np.isfinite(dec):
            message = f"non-finite PIRLS step at iteration {it}"
            break
        if dec < tol or _at_rounding_floor(dec, dec_prev, obj, getattr(cond, "loglik_scale", 0.0)):
            converged = True
            break
        dec_prev = dec
        db = (b_new - beta) if has_x else None
        lin_at = lambda t: lin + t * dlin if t != 1.0 else lin + dlin
        t, u_t, eta_t, ll_t, obj_t, d1_t, w_t, nh = _halving_step(
            evaluate, lambda t: u + t * du, lambda t: eta_fixed + lin_at(t), obj, maxhalf)
        nhalf_total += nh
        if t is None:
            converged, message = _halving_failed(dec, obj, it, maxhalf)
            break
        u, lin, eta, ll, obj, d1, w = u_t, lin_at(t), eta_t, ll_t, obj_t, d1_t, w_t
        if has_x:
            beta = beta + t * db
        if d1 is None:
            with np.errstate(all="ignore"):
                d1, w = cond.derivatives(eta)
    else:
        if maxiter_run:
            message = f"PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    message = _final_message(message, converged, restarted)
    if converged and not factor_weights_are_w:        # the Laplace factor uses w, not the Newton weights
        # the response column does not enter log|L_ZZ|; it only has to be outside the span
        with np.errstate(divide="ignore", invalid="ignore"):
            zf = lin + np.where(w > 0, d1 / w, 0.0)
        for resp in (zf, np.random.default_rng(0).standard_normal(lin.shape[0])):
            XY = np.column_stack([X, resp]) if has_x else resp[:, None]
            _reweight(chol, XY, w)
            try:
                chol.update(lams)
                break
            except np.linalg.LinAlgError:
                continue
        else:
            converged, message = False, "factorization with the working weights failed at the modes"
    logdet = np.nan
    if it:
        try:
            logdet = float(chol.logdet_zz)
        except Exception:  # noqa: BLE001
            logdet = np.nan
    return Modes(u=u, eta=eta, beta=beta, loglik_cond=ll, sqr_u=float(u @ u),
                 logdet=logdet, converged=converged, niter=it, nhalf=nhalf_total,
                 message=message, decrement=dec, d1=d1, w=w)


# ----------------------------------------------------------------------------- one scalar term
def _is_scalar_design(design):
    return len(design.blocks) == 1 and design.blocks[0].q == 1


@np.errstate(all="ignore")     # failures are reported in the result, not as warnings
def _pirls_scalar(design, eta_fixed, cond, lams, u0=None, tol=1e-12, maxiter=100, maxhalf=30):
    """:func:`pirls` for a single scalar random-effects term: Newton steps level by level.

    Same iteration, step halving, convergence test (``du' M du < tol``) and
    return value as :func:`pirls`; the per-level sums are ``bincount``
    passes, so an iteration costs a few O(n) vector operations.  A
    conditional model with ``allow_negative_weights = True`` (a link whose
    log-density is not concave) may have observations with ``w < 0`` as
    long as every ``M_g`` stays positive.
    """
    ops = _zops(design)
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    lam = float(lams[0][0, 0])
    ones = ops.all_ones[0]
    zx = ops.x0[0]
    lz = lam if ones else lam * zx
    zx2 = None if ones else zx * zx
    eta_fixed = np.asarray(eta_fixed, dtype=float)
    neg_ok = bool(getattr(cond, "allow_negative_weights", False))
    fused = getattr(cond, "loglik_derivs", None)

    def evaluate(eta):
        if fused is not None:
            lo, d1, w = fused(eta)
            ll = float(lo.sum())
        else:
            ll = float(np.sum(cond.loglik_obs(eta)))
            d1 = w = None
            if math.isfinite(ll):
                d1, w = cond.derivatives(eta)
        return ll, d1, w

    u = np.zeros(m) if u0 is None else np.array(u0, dtype=float)
    eta = eta_fixed + lz * u[codes]
    ll, d1, w = evaluate(eta)
    obj = ll - 0.5 * float(u @ u)
    restarted = False
    if not math.isfinite(obj) and u0 is not None:
        u = np.zeros(m)
        eta = eta_fixed.copy()
        ll, d1, w = evaluate(eta)
        obj = ll
        restarted = True
    converged = False
    message = ""
    dec = np.nan
    dec_prev = np.inf
    nhalf_total = 0
    M = None
    it = 0
    maxiter_run = maxiter if math.isfinite(obj) else 0
    if not maxiter_run:
        message = ("the log-likelihood is not finite at the starting values (before the "
                   "first iteration)")
    for it in range(1, maxiter_run + 1):
        if d1 is None or not math.isfinite(float(d1.sum()) + float(w.sum())) or \
                (not neg_ok and w.min() < 0):
            message = (f"non-finite or negative working weights at PIRLS iteration {it} "
                       f"(max |eta| = {np.max(np.abs(eta)):.3g})")
            break
        if ones:
            g = lam * np.bincount(codes, weights=d1, minlength=m) - u
            M = 1.0 + (lam * lam) * np.bincount(codes, weights=w, minlength=m)
        else:
            g = lam * np.bincount(codes, weights=d1 * zx, minlength=m) - u
            M = 1.0 + (lam * lam) * np.bincount(codes, weights=w * zx2, minlength=m)
        if M.min() <= 0:
            message = f"the penalized information is not positive definite at PIRLS iteration {it}"
            break
        du = g / M
        dec = float(du @ g)
        if not math.isfinite(dec):
            message = f"non-finite PIRLS step at iteration {it}"
            break
        if dec < tol or _at_rounding_floor(dec, dec_prev, obj, getattr(cond, "loglik_scale", 0.0)):
            converged = True
            break
        dec_prev = dec
        dlin = lz * du[codes]
        t, u_t, eta_t, ll_t, obj_t, d1_t, w_t, nh = _halving_step(
            evaluate, lambda t: u + du if t == 1.0 else u + t * du,
            lambda t: eta + dlin if t == 1.0 else eta + t * dlin, obj, maxhalf)
        nhalf_total += nh
        if t is None:
            converged, message = _halving_failed(dec, obj, it, maxhalf)
            break
        u, eta, ll, obj, d1, w = u_t, eta_t, ll_t, obj_t, d1_t, w_t
        if d1 is None:
            d1, w = cond.derivatives(eta)
    else:
        if maxiter_run:
            message = f"PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    message = _final_message(message, converged, restarted)
    extra = {}
    logdet = np.nan
    if M is not None:
        fac = ScalarFactor.from_diagonal(blk, lams, M)
        extra["factor"] = fac
        logdet = fac.logdet_zz
    return Modes(u=u, eta=eta, beta=None, loglik_cond=ll, sqr_u=float(u @ u), logdet=logdet,
                 converged=converged, niter=it, nhalf=nhalf_total, message=message, decrement=dec,
                 extra=extra, d1=d1, w=w)


def _factor(chol, modes):
    """The factor at ``modes``: the one PIRLS' scalar fast path attached, else ``chol``."""
    extra = getattr(modes, "extra", None)
    return extra.get("factor", chol) if extra else chol


def predict_modes(design, chol, modes, dtheta, deta_fixed=None, lams=None, dd1=None):
    """First-order prediction of the conditional modes after a change of the parameters.

    With ``chol`` still holding the factor at ``modes`` (weights ``w``), the
    implicit-function derivative of ``u~`` gives

        du = M^-1 [Lambda(dtheta)' Z' d1 - Lambda' Z' W (deta_fixed + Z Lambda(dtheta) u~)]

    (``Lambda`` is linear in theta).  Used as a warm start it leaves PIRLS
    an error of second order in the change, typically saving one iteration.

    Parameters
    ----------
    design, chol : as for :func:`pirls`
    modes : Modes
        Converged modes (with ``d1`` and ``w``) at the old parameters.
    dtheta : ndarray
        Change of theta.
    deta_fixed : ndarray, optional
        Change of the fixed part of the linear predictor.
    lams : list of ndarray, optional
        ``design.lambdas`` at the old theta.
    dd1 : ndarray, optional
        Change of ``d1`` at the modes caused by a change ``dpsi`` of the
        conditional model's own parameters (``param_derivatives()[1] @ dpsi``);
        it adds ``M^-1 Lambda' Z' dd1``.

    Returns
    -------
    ndarray
        Predicted ``u``.
    """
    if modes.d1 is None or modes.w is None:
        return modes.u
    chol = _factor(chol, modes)
    ops = _zops(design)
    lams = getattr(chol, "lams", None) if lams is None else lams
    dl = design.lambdas(np.asarray(dtheta, dtype=float))
    v = ops.zlam(modes.u, dl)
    if deta_fixed is not None:
        v = v + deta_fixed
    rhs = ops.ztv(modes.d1, dl) - ops.ztv(modes.w * v, lams)
    if dd1 is not None:
        rhs += ops.ztv(dd1, lams)
    du = chol.solve_re(rhs)
    out = modes.u + du
    return out if np.all(np.isfinite(out)) else modes.u


# ----------------------------------------------------------------------------- separation
def separation_direction(G, C=None, tol=1e-6):
    """A direction of (quasi-)complete separation: ``d != 0`` with ``G d >= 0`` and ``C d >= 0``.

    The log-likelihood of a binary or ordinal model keeps increasing along such a ``d`` (each
    row of ``G`` is the direction in which one observation's probability grows), so the
    maximum likelihood estimates are infinite in it: the data are separated (Albert and
    Anderson 1984; the linear program of Konis 2007, as in R's ``detectseparation``).
    Solved as ``max sum(G d)`` subject to the constraints and ``|d_j| <= 1``.

    Parameters
    ----------
    G : ndarray (r, m)
        One row per observation (its direction of improvement); duplicate rows are merged.
    C : ndarray (c, m), optional
        Further constraints that do not count in the objective (increasing thresholds).
    tol : float
        ``max(G d)`` above ``tol`` (columns scaled to unit maximum) means separation.

    Returns
    -------
    ndarray or None
        The direction (``|d_j| <= 1``, in the scaled columns: only its pattern of zeros and
        signs is meaningful), or None when the data are not separated or the linear program
        could not be solved.
    """
    from scipy.optimize import linprog
    G = np.asarray(G, dtype=float)
    if G.size == 0:
        return None
    scale = np.max(np.abs(G), axis=0)
    if C is not None and len(C):
        scale = np.maximum(scale, np.max(np.abs(C), axis=0))
    scale[scale == 0] = 1.0
    Gs = np.unique(G / scale, axis=0)
    A = Gs if C is None or not len(C) else np.vstack([Gs, np.asarray(C, dtype=float) / scale])
    try:
        res = linprog(-Gs.sum(axis=0), A_ub=-A, b_ub=np.zeros(A.shape[0]),
                      bounds=[(-1.0, 1.0)] * G.shape[1], method="highs")
    except (ValueError, MemoryError):  # an LP the solver refuses: no verdict
        return None
    if res.status != 0 or res.x is None:
        return None
    d = res.x
    if np.max(Gs @ d) <= tol or np.min(A @ d) < -tol:
        return None
    d[np.abs(d) < tol] = 0.0
    return d


def laplace_loglik(design, chol, eta_fixed, cond, theta, u0=None, **kwargs):
    """Laplace approximation to the marginal log-likelihood.

    ``sum_i log p(y_i | eta~_i) - |u~|^2 / 2 - log|L|^2 / 2`` at the
    conditional modes found by :func:`pirls` (same arguments; ``kwargs`` go
    to it, e.g. ``X`` and ``beta0`` for lme4's ``nAGQ = 0`` stage, ``tol``,
    ``lams``).

    Returns
    -------
    llf : float
        ``-inf`` when PIRLS failed.
    modes : Modes
    """
    modes = pirls(design, chol, eta_fixed, cond, theta, u0=u0, **kwargs)
    llf = modes.laplace if modes.converged and np.isfinite(modes.logdet) else -np.inf
    return llf, modes


# ----------------------------------------------------------------------------- AGQ
def gh_rule(nagq, q=1):
    """Gauss-Hermite nodes and weights for the standard normal in ``q`` dimensions.

    Product grid of the one-dimensional ``nagq``-point rule (lme4's
    ``GHrule``): ``sum_k w_k f(z_k) ~ E f(Z)``, ``Z ~ N(0, I_q)``.

    Returns
    -------
    z : ndarray, shape (nagq**q, q)
    w : ndarray, shape (nagq**q,)
    """
    nagq = check_nagq(nagq)
    z, ww = _gh_rule_cached(nagq, int(q))
    return z.copy(), ww.copy()


#: most quadrature nodes per random effect: lme4's limit (``GHrule``: ``ord < 101``); numpy's
#: Gauss-Hermite rule itself breaks down (overflow, NaN nodes) a few hundred nodes further on
MAX_NAGQ = 100


#: most nodes of a product grid (``nagq**q``) per level: every node costs a pass over the data
#: for each likelihood evaluation, and the fit needs hundreds of evaluations
MAX_AGQ_GRID = 100_000


def check_agq(design, nagq):
    """Whether adaptive quadrature with ``nagq`` nodes applies to ``design`` (GLMM and clmm).

    ``NotImplementedError`` unless there is a single grouping factor with at most three
    random effects per level; ``ValueError`` when the product grid is too large.
    """
    if nagq <= 1:
        return
    if len(design.blocks) != 1:
        raise NotImplementedError(
            "adaptive Gauss-Hermite quadrature (nagq > 1) needs a single grouping factor; "
            f"this model has {len(design.blocks)} ({', '.join(b.name for b in design.blocks)}). "
            "Use nagq=1 (Laplace).")
    q = design.blocks[0].q
    if q > 3:
        raise NotImplementedError(
            f"adaptive Gauss-Hermite quadrature supports at most 3 random effects per level; "
            f"the term on {design.blocks[0].name!r} has {q}. Use nagq=1 (Laplace).")
    check_agq_grid(nagq, q)


def check_agq_grid(nagq, q):
    """``ValueError`` when the product grid of ``nagq`` nodes in ``q`` dimensions is too large."""
    if q > 1 and nagq ** q > MAX_AGQ_GRID:
        top = int(math.floor(MAX_AGQ_GRID ** (1.0 / q) + 1e-9))
        raise ValueError(f"nagq={nagq} with {q} random effects per level is a product grid of "
                         f"{nagq ** q:,} nodes per level (at most {MAX_AGQ_GRID:,}: each node is a "
                         f"pass over the data per likelihood evaluation); use nagq <= {top}")


def check_positive(integer=False, **kw):
    """``ValueError`` unless the one keyword value is a positive number (whole, if ``integer``):
    the fits' ``maxiter`` and tolerances (0 or a negative value would end the iterations at
    once or never)."""
    (name, v), = kw.items()
    ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and v > 0
    if ok and integer:
        ok = float(v) == int(v)
    if not ok:
        raise ValueError(f"{name} must be a positive {'whole number' if integer else 'number'}; "
                         f"got {v!r}")


def check_nagq(nagq, allow=None):
    """``nagq`` as an int in ``1 .. MAX_NAGQ``, else a ``ValueError`` saying what is allowed.

    Parameters
    ----------
    nagq : int
        Quadrature nodes per random effect (1 = Laplace).  Floats are accepted only when
        they are whole numbers (``25.0``): ``2.5`` is an error, not silently 2.
    allow : callable, optional
        ``allow(n)`` is True for values below 1 that the caller handles itself (returned
        unchanged).
    """
    try:
        ok = isinstance(nagq, numbers.Real) and float(nagq) == int(nagq)
    except (TypeError, ValueError, OverflowError):      # nan, inf
        ok = False
    if not ok or isinstance(nagq, (bool, np.bool_)):
        raise ValueError(f"nagq must be a whole number of quadrature nodes (1 = Laplace, 2 to "
                         f"{MAX_NAGQ} = adaptive Gauss-Hermite); got {nagq!r}")
    n = int(nagq)
    if n < 1 and not (allow is not None and allow(n)):
        raise ValueError(f"nagq must be at least 1 (1 = Laplace, 2 to {MAX_NAGQ} = adaptive "
                         f"Gauss-Hermite); got {n}")
    if n > MAX_NAGQ:
        raise ValueError(f"nagq={n} is more quadrature nodes than the {MAX_NAGQ} allowed (lme4's "
                         "limit); the adaptive rule has converged long before: 25 nodes usually "
                         "agree with 100 to many digits")
    return n


@functools.lru_cache(maxsize=64)
def _gh_rule_cached(nagq, q):
    """:func:`gh_rule` without the copies (the rule is the same for every evaluation of a fit)."""
    from numpy.polynomial.hermite_e import hermegauss
    if nagq == 1:
        return np.zeros((1, q)), np.ones(1)
    x, w = hermegauss(nagq)
    w = w / np.sqrt(2.0 * np.pi)
    x[np.abs(x) < 1e-14] = 0.0
    grids = np.meshgrid(*([x] * q), indexing="ij")
    wgrids = np.meshgrid(*([w] * q), indexing="ij")
    z = np.column_stack([g.ravel() for g in grids])
    ww = np.prod(np.column_stack([g.ravel() for g in wgrids]), axis=1)
    return z, ww


def agq_loglik(design, chol, eta_fixed, cond, theta, nagq, u0=None, modes=None, **kwargs):
    """Adaptive Gauss-Hermite approximation for a single grouping factor.

    With one grouping factor the integral factors over its levels ``g``.
    Each is centred at the conditional mode ``u~_g`` and scaled by
    ``S_g`` with ``S_g S_g' = (Lambda' Z_g' W Z_g Lambda + I)^-1``:

        l_g = -log|L_g|^2 / 2 + log sum_k w_k exp(sum_{i in g} loglik_i(eta~_i + x_i' Lambda S_g z_k)
                                                 - |u~_g + S_g z_k|^2 / 2 + |z_k|^2 / 2)

    with the standard-normal Gauss-Hermite rule (:func:`gh_rule`; a product
    grid of ``nagq**q`` nodes for a term with ``q`` random effects).  With
    ``nagq = 1`` this is the Laplace approximation.

    Parameters
    ----------
    design, chol, eta_fixed, cond, theta, u0 :
        As for :func:`pirls`.
    nagq : int
        Quadrature points per dimension.
    modes : Modes, optional
        Modes already found at this ``theta`` and ``eta_fixed`` (``chol`` must
        still hold their factor); PIRLS is then skipped.

    Returns
    -------
    llf : float
        ``-inf`` when PIRLS failed.
    modes : Modes
    """
    if len(design.blocks) != 1:
        raise NotImplementedError("adaptive Gauss-Hermite quadrature (nagq > 1) needs a single "
                                  "grouping factor; the model has "
                                  f"{len(design.blocks)} ({', '.join(b.name for b in design.blocks)}). "
                                  "Use the Laplace approximation (nagq=1).")
    blk = design.blocks[0]
    q = blk.q
    if q > 3:
        raise NotImplementedError(f"adaptive Gauss-Hermite quadrature supports up to 3 random "
                                  f"effects per level; the term on {blk.name!r} has {q}")
    theta = np.asarray(theta, dtype=float)
    lams = kwargs.pop("lams", None)
    lams = design.lambdas(theta) if lams is None else lams
    if modes is None:
        modes = pirls(design, chol, eta_fixed, cond, theta, u0=u0, lams=lams, **kwargs)
    if not modes.converged or not np.isfinite(modes.logdet):
        return -np.inf, modes
    llf = _agq_from_modes(blk, _factor(chol, modes), lams[0], cond, modes, nagq)
    return llf, modes


def _node_values(cond, ETA, what):
    """``what(cond, eta)`` for each row of ETA (nodes x n): in one call when the conditional
    model takes 2-D ``eta`` (``vectorized_eta = True``), else row by row."""
    with np.errstate(all="ignore"):
        if getattr(cond, "vectorized_eta", False):
            return what(cond, ETA)
        return np.stack([what(cond, row) for row in ETA])


def _node_chunks(K, n, size=1 << 20):
    """Slices of the K nodes with about ``size`` node-observation pairs each (bounded memory)."""
    step = max(1, size // max(n, 1))
    return [slice(a, min(a + step, K)) for a in range(0, K, step)]


def _level_node_sums(codes, m, V):
    """(K, n) -> (K, m): per-level sums of each row."""
    K = V.shape[0]
    idx = (codes[None, :] + m * np.arange(K)[:, None]).ravel()
    return np.bincount(idx, weights=V.ravel(), minlength=K * m).reshape(K, m)


def _agq_from_modes(blk, chol, lam, cond, modes, nagq):
    q, m, codes = blk.q, blk.m, blk.codes
    z, wts = gh_rule(nagq, q)
    u = modes.u.reshape(m, q)
    M = np.asarray(chol.M1)
    if q == 1:
        M = M.reshape(m, 1, 1)
    Lg = np.linalg.cholesky(M)                                   # M_g = L_g L_g'
    logdet_g = 2.0 * np.log(np.diagonal(Lg, axis1=1, axis2=2)).sum(axis=1)
    # S_g = L_g^-T, so S_g S_g' = M_g^-1
    eye = np.broadcast_to(np.eye(q), Lg.shape)
    S = np.swapaxes(np.linalg.solve(Lg, eye), 1, 2)              # (m, q, q)
    R = np.einsum("ab,gbc->gac", lam, S)                         # Lambda S_g
    XR = np.einsum("ia,iac->ic", blk.X, R[codes])                # x_i' Lambda S_g, (n, q)
    eta0 = modes.eta
    with np.errstate(all="ignore"):
        l0 = np.bincount(codes, weights=cond.loglik_obs(eta0), minlength=m)
    base = l0 - 0.5 * np.sum(u * u, axis=1)
    A = np.empty((m, z.shape[0]))
    for sl in _node_chunks(z.shape[0], eta0.shape[0]):
        zk = z[sl]
        lk = _level_node_sums(codes, m, _node_values(cond, eta0 + zk @ XR.T, lambda c, e: c.loglik_obs(e)))
        uk = u[None, :, :] + np.einsum("gab,kb->kga", S, zk)    # nodes in u: u~_g + S_g z_k
        A[:, sl] = (lk - 0.5 * np.sum(uk * uk, axis=2) - base + 0.5 * np.sum(zk * zk, axis=1)[:, None]).T
    A[~np.isfinite(A)] = -np.inf
    A += np.log(wts)[None, :]
    amax = A.max(axis=1, keepdims=True)
    amax[~np.isfinite(amax)] = 0.0      # a level impossible at every node: its sum is -inf
    with np.errstate(divide="ignore"):
        lse = amax[:, 0] + np.log(np.exp(A - amax).sum(axis=1))
    return float(np.sum(base + lse - 0.5 * logdet_g))


def agq_loglik_gradient(design, chol, cond, theta, modes, nagq, X=None):
    """AGQ log-likelihood and its exact gradient for a single scalar random-effects term.

    Per level ``g`` the quadrature is ``l_g = log sum_k w_k exp(B_gk) - log M_g / 2`` with
    ``B_gk = sum_{i in g} loglik_i(eta_ik) - v_gk^2 / 2 + t_k^2 / 2`` at the nodes ``v_gk =
    u~_g + s_g t_k``, ``s_g = M_g^(-1/2)``, ``eta_ik = eta~_i + lambda z_i s_g t_k``.  A
    parameter moves ``B_gk`` directly (``beta`` and the conditional model's own parameters
    through ``loglik_i``, ``lambda`` through ``eta_ik``) and through the nodes, which follow
    the mode ``u~_g`` and the scale ``s_g``: their derivatives come from the implicit function
    theorem at the modes, as in :func:`laplace_gradient` (``d u~ = G_u. / H`` with the
    observed information ``H``; ``dM`` from ``dw/deta`` and the model's ``dw/dpsi``).  One
    pass over the nodes gives the value and the gradient (central differences need ``2 p``).

    Parameters and returns as :func:`laplace_gradient` (``g_theta``, ``g_beta``,
    ``g_extra``), preceded by the AGQ log-likelihood (``-inf`` when it is not finite).
    The conditional model needs ``hessian_terms`` (and ``param_derivatives`` for ``g_extra``).
    """
    if not (_is_scalar_design(design) and hasattr(cond, "hessian_terms")):
        raise NotImplementedError("the AGQ gradient needs a single scalar random-effects term and "
                                  "hessian_terms(); use finite differences")
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    zx = np.asarray(blk.X[:, 0], dtype=float)
    lam = float(np.asarray(theta, dtype=float)[blk.t_idx[0]])
    M = np.asarray(_factor(chol, modes).M1, dtype=float).reshape(m)
    eta, u = modes.eta, modes.u
    n = eta.shape[0]
    d1, w = (modes.d1, modes.w) if modes.d1 is not None else cond.derivatives(eta)
    h, dw = cond.hessian_terms(eta)
    if getattr(cond, "canonical", False):
        h = w
    kx = getattr(cond, "k_extra", 0) if hasattr(cond, "param_derivatives") else 0
    Xf = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=float)
    p = Xf.shape[1]
    # d u~ / dphi = G_uphi / H and d M / dphi for phi = (theta, beta, psi): per-level sums
    cols = [zx * d1, h * zx * zx, w * zx * zx, dw * zx ** 3, (h * zx)[:, None] * Xf,
            (dw * zx * zx)[:, None] * Xf]
    if kx:
        _, dd1, dwp = cond.param_derivatives(eta)
        cols += [zx[:, None] * dd1, (zx * zx)[:, None] * dwp]
    S = _level_col_sums(codes, m, np.column_stack(cols))
    S_zd1, S_hz2, S_wz2, S_dwz3 = S[:, 0], S[:, 1], S[:, 2], S[:, 3]
    S_hzX, S_dwz2X = S[:, 4:4 + p], S[:, 4 + p:4 + 2 * p]
    G_u = [(S_zd1 - lam * S_hz2 * u)[:, None], -lam * S_hzX]
    dM = [(2.0 * lam * S_wz2 + lam * lam * S_dwz3 * u)[:, None], lam * lam * S_dwz2X]
    if kx:
        G_u.append(lam * S[:, 4 + 2 * p:4 + 2 * p + kx])
        dM.append(lam * lam * S[:, 4 + 2 * p + kx:])
    du = np.hstack(G_u) / (1.0 + lam * lam * S_hz2)[:, None]
    dM = np.hstack(dM) + (lam ** 3 * S_dwz3)[:, None] * du      # ... plus the move of eta~
    # the nodes: value, d loglik / d eta and d loglik / d psi there
    t, wts = gh_rule(nagq, 1)
    t = t[:, 0]
    s = 1.0 / np.sqrt(M)
    v = u[None, :] + s[None, :] * t[:, None]                     # (K, m)
    ETA = eta[None, :] + (lam * zx * s[codes])[None, :] * t[:, None]
    Lsum = _level_node_sums(codes, m, _node_values(cond, ETA, lambda c, e: c.loglik_obs(e)))
    D1 = _node_values(cond, ETA, lambda c, e: c.derivatives(e)[0])
    Zl = _level_node_sums(codes, m, D1 * zx[None, :])
    if kx:
        dl_psi = getattr(cond, "param_loglik_derivatives", None) or (lambda e: cond.param_derivatives(e)[0])
        LP = _node_values(cond, ETA, lambda c, e: dl_psi(e))
    B = Lsum - 0.5 * v * v + 0.5 * (t * t)[:, None]
    B[~np.isfinite(B)] = -np.inf
    A = B + np.log(wts)[:, None]
    amax = A.max(axis=0)
    amax[~np.isfinite(amax)] = 0.0      # a level impossible at every node: its sum is -inf
    e = np.exp(A - amax)
    tot = e.sum(axis=0)
    with np.errstate(divide="ignore"):
        llf = float(np.sum(amax + np.log(tot) - 0.5 * np.log(M)))
    if not np.isfinite(llf):
        return (-np.inf, np.full(1, np.nan), None if X is None else np.full(p, np.nan),
                np.full(kx, np.nan) if kx else None)
    pi = e / tot                                                 # (K, m) node weights per level
    pi_obs = pi[:, codes]
    # direct derivatives of sum_k pi_gk B_gk, then through the nodes v_gk = u~_g + s_g t_k
    g = np.concatenate([[np.sum(pi * v * Zl)], Xf.T @ np.einsum("kn,kn->n", pi_obs, D1),
                        np.einsum("kn,knx->x", pi_obs, LP) if kx else []])
    a = lam * Zl - v                                             # d B_gk / d v_gk
    A1 = np.sum(pi * a, axis=0)
    A2 = np.sum(pi * a * t[:, None], axis=0)
    g += A1 @ du - 0.5 * ((1.0 + A2 * s) / M) @ dM
    return llf, g[:1], (None if X is None else g[1:1 + p]), (g[1 + p:] if kx else None)


def _level_col_sums(codes, m, V):
    """(n, c) -> (m, c): per-level sums of each column (one bincount)."""
    c = V.shape[1]
    idx = (codes[:, None] * c + np.arange(c)[None, :]).ravel()
    return np.bincount(idx, weights=V.ravel(), minlength=m * c).reshape(m, c)


# ----------------------------------------------------------------------------- gradient
def _solve_md(chol, ops, lams, h, w, v, tol=1e-13, maxiter=200):
    """Solve ``(Lambda' Z' H Z Lambda + I) x = v`` (observed information ``h``) by conjugate
    gradients preconditioned with the factor for the weights ``w`` held by ``chol``."""
    x = chol.solve_re(v)
    if h is w:
        return x
    apply = lambda y: y + ops.ztv(h * ops.zlam(y, lams), lams)
    r = v - apply(x)
    z = chol.solve_re(r)
    pvec = z.copy()
    rz = float(r @ z)
    vnorm = max(float(np.sqrt(v @ v)), 1e-300)
    for _ in range(maxiter):
        if np.sqrt(abs(rz)) <= tol * vnorm or not np.isfinite(rz):
            break
        Ap = apply(pvec)
        alpha = rz / float(pvec @ Ap)
        x += alpha * pvec
        r -= alpha * Ap
        z = chol.solve_re(r)
        rz_new = float(r @ z)
        pvec = z + (rz_new / rz) * pvec
        rz = rz_new
    return x


def laplace_gradient(design, chol, cond, theta, modes, X=None):
    """Exact gradient of the Laplace log-likelihood at converged modes.

    The Laplace log-likelihood ``F = sum_i l_i(eta~) - |u~|^2/2 - log|M|/2``,
    ``M = Lambda' Z' W Z Lambda + I``, depends on a parameter ``psi`` directly
    and through the modes.  By the envelope theorem the first two terms need
    only their partial derivatives; for the determinant,
    ``d log|M| = tr(M^-1 dM)`` with ``dM`` from ``d Lambda``, from parameters
    of the conditional model (``dw``), and from the move of ``eta~``:
    ``d eta~ = d eta_direct + Z Lambda H^-1 (d grad_u)`` where ``H`` is the
    penalized observed information.  The traces reduce to the leverages
    ``z_i' Lambda M^-1 Lambda' z_i`` and the row-local pieces of ``M^-1``
    (:meth:`mlmext.linalg.BlockedCholesky.local_inverse`), plus one solve with
    ``H`` (conjugate gradients preconditioned by ``M`` when the weights are
    expected rather than observed information).  Cost: O(n (q + p)) beyond
    the factor already computed.

    Parameters
    ----------
    design : RandomEffectsDesign
    chol : BlockedCholesky
        Holding the factor at the modes (as :func:`pirls` leaves it).
    cond : ConditionalModel
        Must provide ``hessian_terms``; ``param_derivatives`` for the gradient
        in its own parameters.
    theta : ndarray
    modes : Modes
        Converged modes at ``theta`` (and the fixed part used to find them).
    X : ndarray, optional
        Fixed-effects design; the gradient in ``beta`` is returned when given.

    Returns
    -------
    g_theta : ndarray
    g_beta : ndarray or None
    g_extra : ndarray or None
        Gradient in the conditional model's parameters (``k_extra`` of them).
    """
    if not hasattr(cond, "hessian_terms"):
        raise NotImplementedError("the conditional model has no hessian_terms(); use finite differences")
    chol = _factor(chol, modes)
    theta = np.asarray(theta, dtype=float)
    lams = getattr(chol, "lams", None) or design.lambdas(theta)
    ops = _zops(design)
    eta = modes.eta
    if modes.d1 is not None and modes.w is not None:
        d1, w = modes.d1, modes.w
    else:
        d1, w = cond.derivatives(eta)
    h, dw = cond.hessian_terms(eta)
    if getattr(cond, "canonical", False):
        h = w
    t_list, rho_list = chol.local_inverse()
    lev = np.zeros(eta.shape[0])
    for tb, rb in zip(t_list, rho_list):
        lev += np.einsum("ij,ij->i", tb, rb)
    a = dw * lev
    s = _solve_md(chol, ops, lams, h, w, ops.ztv(a, lams))
    zs = ops.zlam(s, lams)
    hzs = h * zs
    # theta
    Ku = ops.dtheta_cols(modes.u, design, theta)          # (n, ntheta): Z dLambda_k u~
    Ks = ops.dtheta_cols(s, design, theta)
    T = np.zeros(design.ntheta)
    for kb, (b, rb) in enumerate(zip(design.blocks, rho_list)):
        if ops.all_ones[kb]:
            T[b.t_idx[0]] += w @ rb[:, 0]
            continue
        for r, c, k in zip(b.t_rows, b.t_cols, b.t_idx):
            T[k] += w @ (b.X[:, r] * rb[:, c])
    g_theta = Ku.T @ d1 - T - 0.5 * (Ku.T @ a + Ks.T @ d1 - Ku.T @ hzs)
    g_beta = None
    if X is not None:
        g_beta = np.asarray(X).T @ (d1 - 0.5 * a + 0.5 * hzs)
    g_extra = None
    if getattr(cond, "k_extra", 0) and hasattr(cond, "param_derivatives"):
        dl, dd1, dwp = cond.param_derivatives(eta)
        g_extra = dl.sum(axis=0) - 0.5 * (lev @ dwp + zs @ dd1)
    return g_theta, g_beta, g_extra
