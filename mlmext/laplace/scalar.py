"""One scalar random-effects term: a diagonal system solved level by level."""
from __future__ import annotations

import math

import numpy as np

from ..linalg import ScalarFactor
from .protocol import Modes
from .steps import _at_rounding_floor, _final_message, _halving_failed, _halving_step
from .zops import _zops


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
    long as every ``M_g`` stays positive at the modes; where a level's ``M_g`` is not
    positive, a model with ``fisher_weights(eta)`` (positive weights) takes a Fisher-scoring
    step for that level instead.
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
    fisher = getattr(cond, "fisher_weights", None) if neg_ok else None
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
        M_step = M
        if M.min() <= 0:
            if fisher is None:
                message = f"the penalized information is not positive definite at PIRLS iteration {it}"
                break
            # away from the modes the observed information of a non-concave log-density can
            # make a level's curvature negative: Fisher scoring there (the modes are a maximum,
            # so the Newton curvature is positive again near them)
            wf = fisher(eta) if ones else fisher(eta) * zx2
            M_step = np.where(M > 0, M, 1.0 + (lam * lam) * np.bincount(codes, weights=wf, minlength=m))
        du = g / M_step
        dec = float(du @ g)
        if not math.isfinite(dec):
            message = f"non-finite PIRLS step at iteration {it}"
            break
        if M_step is M and (dec < tol or _at_rounding_floor(dec, dec_prev, obj,
                                                            getattr(cond, "loglik_scale", 0.0))):
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
