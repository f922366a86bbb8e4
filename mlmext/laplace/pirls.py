"""Penalized IRLS for the conditional modes, their first-order prediction, the Laplace value."""
from __future__ import annotations

import numpy as np

from .dense import _pirls_dense
from .protocol import Modes
from .scalar import _is_scalar_design, _pirls_scalar, _pirls_scalar_x
from .rows import MemoryRows
from .steps import _decrement_stop, _final_message, _halving_failed, _halving_step
from .zops import _zops


# ----------------------------------------------------------------------------- PIRLS
def pirls(design, chol, eta_fixed, cond, theta, u0=None, X=None, beta0=None, tol=1e-12,
          maxiter=100, maxhalf=30, lams=None, newton=None, scalar_fast=False, dense=False,
          rows=None):
    """Conditional modes of the random effects by penalized IRLS.

    Maximizes ``sum_i loglik_i(eta_i) - |u|^2 / 2`` over ``u`` (and over
    ``beta`` too when ``X`` is given) with Newton / Fisher-scoring steps and
    step halving.  Each step solves
    ``(Lambda' Z' W Z Lambda + I) u_new = Lambda' Z' W z`` with the working
    response ``z = Z Lambda u + d1 / w`` through ``chol``.

    Parameters
    ----------
    design : mlmext.design.RandomEffectsDesign
    chol : mlmext.linalg.BlockedCholesky or callable
        Made by :func:`make_chol` (``p = 0``, or ``p = X.shape[1]`` with ``X``).
        On return it holds the factor at the modes (weights ``w(eta~)``).  Or a
        function of no arguments that gives it, called only where the blocked path
        runs (the scalar and dense paths do not read it).
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
        :func:`predict_modes` use in place of ``chol``.  With ``X`` and a
        canonical link (lme4's first stage): joint Newton steps from per-level
        sums (:func:`_pirls_scalar_x`), ``chol`` not touched either; the
        modes carry the diagonal factor and ``extra["cov_beta"]`` (the
        fixed-effects block of the inverse).  Ignored for other designs.
    dense : bool
        Unless the scalar fast path is taken: Newton steps with the dense system
        ``M = Lambda' Z' W Z Lambda + I`` (:mod:`.dense`; with ``X``, in ``(u, beta)``
        jointly), which takes weights ``w`` that are negative for single observations (the
        observed information of a log-density that is not concave) as long as ``M`` is
        positive definite at the modes.  ``chol`` is not touched; the factor is
        ``modes.extra["factor"]`` (with ``X`` also ``extra["cov_beta"]``).

    Returns
    -------
    Modes
        ``converged`` is False (with a ``message`` saying what was tried)
        when the iterations diverged; no exception is raised.
    """
    theta = np.asarray(theta, dtype=float)
    lams = design.lambdas(theta) if lams is None else lams
    if rows is None and scalar_fast and X is None and _is_scalar_design(design):
        return _pirls_scalar(design, eta_fixed, cond, lams, u0=u0, tol=tol, maxiter=maxiter,
                             maxhalf=maxhalf)
    if (rows is None and scalar_fast and X is not None and _is_scalar_design(design)
            and getattr(cond, "canonical", False) and hasattr(cond, "loglik_derivs")
            and (not getattr(cond, "k_extra", 0) or getattr(cond, "allow_negative_weights", False))):
        # beta inside PIRLS by per-level sums; None: a Schur complement that is not positive
        # definite, left to the blocked path below (its solve in the span, its messages)
        modes = _pirls_scalar_x(design, eta_fixed, cond, lams, X, u0=u0, beta0=beta0,
                                tol=tol, maxiter=maxiter, maxhalf=maxhalf)
        if modes is not None:
            return modes
    if rows is None and dense:
        return _pirls_dense(design, eta_fixed, cond, lams, u0=u0, tol=tol, maxiter=maxiter,
                            maxhalf=maxhalf, X=X, beta0=beta0)
    if callable(chol):
        chol = chol()
    nre = sum(b.nre for b in design.blocks)
    if rows is None:
        rows = MemoryRows(design, eta_fixed, cond, X)
    has_x = rows.has_x
    p = rows.p if getattr(rows, "summed", False) else (X.shape[1] if has_x else 0)
    if has_x:
        beta = np.zeros(p) if beta0 is None else np.array(beta0, dtype=float)
    else:
        beta = None
    u = np.zeros(nre) if u0 is None else np.array(u0, dtype=float)
    if newton is None:
        newton = hasattr(cond, "hessian_terms") and not getattr(cond, "canonical", False)
    ll = rows.point(u, beta, lams)
    obj = ll - 0.5 * float(u @ u)
    restarted = False
    if not np.isfinite(obj) and (u0 is not None or beta0 is not None):
        u = np.zeros(nre)
        if has_x:
            beta = np.zeros(p)
        ll = rows.point(u, beta, lams)
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
        problem = rows.weights_problem()
        if problem is not None:
            message = f"non-finite or negative working weights at PIRLS iteration {it} ({problem})"
            break
        # Newton weights far from the modes, the weights w once the last step was small: if
        # that check converges, the factor is already the one the Laplace determinant needs
        status, solved = rows.factor(chol, lams, bool(newton and not dec < 1e-9))
        factor_weights_are_w = rows.wt_is_w
        if status == "failed":
            message = f"factorization failed at PIRLS iteration {it}"
            break
        if status == "exact":
            converged, dec = True, 0.0
            break
        u_new, b_new = chol.solve() if solved is None else solved
        du = u_new - u
        dec = rows.step(u_new, b_new, lams) + float(du @ du)
        stop = _decrement_stop(dec, dec_prev, obj, tol, it, cond)
        if stop is not None:
            converged, message = stop
            break
        dec_prev = dec
        db = (b_new - beta) if has_x else None
        t, u_t, _, ll_t, obj_t, _, _, nh = _halving_step(
            lambda t: (rows.trial(t, u + t * du, beta + t * db if has_x else None, lams), None,
                       None),
            lambda t: u + t * du, lambda t: t, obj, maxhalf)
        nhalf_total += nh
        if t is None:
            converged, message = _halving_failed(dec, obj, it, maxhalf)
            break
        rows.accept()
        u, ll, obj = u_t, ll_t, obj_t
        if has_x:
            beta = beta + t * db
    else:
        if maxiter_run:
            message = f"PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    message = _final_message(message, converged, restarted)
    if converged and not factor_weights_are_w:        # the Laplace factor uses w, not the Newton weights
        if not rows.factor_with_w(chol, lams):
            converged, message = False, "factorization with the working weights failed at the modes"
    logdet = np.nan
    if it:
        try:
            logdet = float(chol.logdet_zz)
        except Exception:  # noqa: BLE001
            logdet = np.nan
    return Modes(u=u, eta=rows.eta, beta=beta, loglik_cond=ll, sqr_u=float(u @ u),
                 logdet=logdet, converged=converged, niter=it, nhalf=nhalf_total,
                 message=message, decrement=dec, d1=rows.d1, w=rows.w)


def factor_at(chol, modes):
    """The factor at ``modes``: the one PIRLS' scalar fast path attached, else ``chol``."""
    extra = getattr(modes, "extra", None)
    return extra.get("factor", chol) if extra else chol


def predict_modes(design, chol, modes, dtheta, deta_fixed=None, lams=None, dd1=None, rows=None,
                  dbeta=None):
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
    rows, dbeta : SummedRows and ndarray, optional
        Rows held elsewhere, still at ``modes`` (their cross-products and ``Z' d1``), and the
        change of beta (in place of ``deta_fixed = X dbeta``): no pass over the rows.
    dd1 : ndarray, optional
        Change of ``d1`` at the modes caused by a change ``dpsi`` of the
        conditional model's own parameters (``param_derivatives()[1] @ dpsi``);
        it adds ``M^-1 Lambda' Z' dd1``.

    Returns
    -------
    ndarray
        Predicted ``u``.
    """
    if rows is None and (modes.d1 is None or modes.w is None):
        return modes.u
    chol = factor_at(chol, modes)
    lams = getattr(chol, "lams", None) if lams is None else lams
    dl = design.lambdas(np.asarray(dtheta, dtype=float))
    if rows is not None:
        # summed rows at the modes: the same right-hand side from their cross-products
        rhs = rows.predict_rhs(modes.u, dl, lams, dbeta)
    else:
        ops = _zops(design)
        # in place (the same numbers): two n-sized temporaries fewer
        v = ops.zlam(modes.u, dl)
        if deta_fixed is not None:
            v += deta_fixed
        v *= modes.w
        rhs = ops.ztv(modes.d1, dl) - ops.ztv(v, lams)
        if dd1 is not None:
            rhs += ops.ztv(dd1, lams)
    du = chol.solve_re(rhs)
    out = modes.u + du
    return out if np.logical_and.reduce(np.isfinite(out)) else modes.u    # (np.all, unwrapped)


def laplace_loglik(design, chol, eta_fixed, cond, theta, u0=None, **kwargs):
    """Laplace approximation to the marginal log-likelihood.

    ``sum_i log p(y_i | eta~_i) - |u~|^2 / 2 - log|L|^2 / 2`` at the
    conditional modes found by :func:`pirls` (same arguments; ``kwargs`` go
    to it, e.g. ``X`` and ``beta0`` for lme4's ``nAGQ = 0`` stage, ``tol``,
    ``lams``).

    Returns
    -------
    llf : float
        ``-inf`` when PIRLS failed; less ``cond.loglik_const`` (as ``loglik_obs``).
    modes : Modes
    """
    modes = pirls(design, chol, eta_fixed, cond, theta, u0=u0, **kwargs)
    llf = modes.laplace if modes.converged and np.isfinite(modes.logdet) else -np.inf
    return llf, modes
