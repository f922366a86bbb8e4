"""One scalar random-effects term: a diagonal system solved level by level."""
from __future__ import annotations

import math

import numpy as np

from scipy import linalg

from ..linalg import ScalarFactor
from .protocol import Modes
from .steps import _decrement_stop, _final_message, _halving_failed, _halving_step
from .zops import _zops

# the reductions of 1-D arrays by the ufuncs (the ndarray methods' Python wrappers cost more
# than the sums of a small model's rows; the same sums)
_sum, _min = np.add.reduce, np.minimum.reduce


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
            ll = float(_sum(lo))
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
        if d1 is None or not math.isfinite(float(_sum(d1)) + float(_sum(w))) or \
                (not neg_ok and _min(w) < 0):
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
        if _min(M) <= 0:
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
        stop = _decrement_stop(dec, dec_prev, obj, tol, it, cond, M_step is M)
        if stop is not None:
            converged, message = stop
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


@np.errstate(all="ignore")
def _pirls_scalar_x(design, eta_fixed, cond, lams, X, u0=None, beta0=None, tol=1e-12,
                    maxiter=100, maxhalf=30):
    """:func:`pirls` with ``X`` (beta inside PIRLS, lme4's first stage) for one scalar term and a
    canonical link: Newton steps on ``(u, beta)`` from per-level sums.

    The Hessian of the penalized log-likelihood is ``[[M, lambda B], [lambda B', X'WX]]`` with
    ``M`` diagonal and ``B_gj = S_g(w z x_j)``, so a step is a ``p``-order Schur complement
    ``K`` and a division.  Same iteration, halving, convergence test (the step's quadratic
    form) and return value as the blocked path, which leaves its factor at the modes in
    ``chol``; here ``modes.extra`` holds what the first stage's callers read from it: the
    diagonal ``"factor"`` (:func:`factor_at`) and ``"cov_beta"`` (``K^-1``, the blocked
    factor's ``cov_beta_unscaled``).  None where ``K`` is not positive definite (the blocked
    path handles those cases: its solve in the span, its messages).

    A conditional model with ``allow_negative_weights`` (the zeros of a zero-inflated count
    model) may have ``w < 0`` for single rows: the step is Newton's where ``M > 0`` and ``K``
    is positive definite, else a Fisher-scoring step with its ``fisher_weights`` (which does
    not certify convergence); None where that fails too.
    """
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    ops = _zops(design)
    zx = None if ops.all_ones[0] else ops.x0[0]
    lam = float(lams[0][0, 0])
    lz = lam if zx is None else lam * zx
    X = np.asarray(X, dtype=float)
    p = X.shape[1]
    if not p:
        return None
    fused = cond.loglik_derivs
    neg_ok = bool(getattr(cond, "allow_negative_weights", False))
    fisher = getattr(cond, "fisher_weights", None) if neg_ok else None

    def sums(v):                               # S_g(v z)
        return np.bincount(codes, weights=v if zx is None else v * zx, minlength=m)

    def system(w):
        """``(M, B, K's factor)`` with the weights ``w``; the factor None where ``M`` or ``K``
        is not positive definite."""
        wz = w if zx is None else w * zx
        M = 1.0 + (lam * lam) * sums(wz)
        XW = X * wz[:, None]
        B = ops.level_sums(XW)                              # S_g(w z x_j)
        # X' W X: with z all ones, X * w (w x_ij is x_ij w, bit for bit)
        K = X.T @ (XW if zx is None else w[:, None] * X) - (lam * lam) * (B.T @ (B / M[:, None]))
        # LAPACK's Cholesky directly: the wrappers of scipy's cho_factor / cho_solve and of
        # numpy's cholesky / solve cost several times more than a p x p factorization
        L, info = linalg.lapack.dpotrf(K, lower=1, clean=1)
        if info != 0 or not math.isfinite(float(_sum(L, axis=None))) or _min(M) <= 0:
            return M, B, None                                # (NaN and inf stay)
        return M, B, L

    def evaluate(eta):
        lo, d1, w = fused(eta)
        return float(_sum(lo)), d1, w

    u = np.zeros(m) if u0 is None else np.array(u0, dtype=float)
    beta = np.zeros(p) if beta0 is None else np.array(beta0, dtype=float)
    eta = eta_fixed + X @ beta + lz * u[codes]
    ll, d1, w = evaluate(eta)
    obj = ll - 0.5 * float(u @ u)
    restarted = False
    if not math.isfinite(obj) and (u0 is not None or beta0 is not None):
        u, beta = np.zeros(m), np.zeros(p)
        eta = eta_fixed.copy()
        ll, d1, w = evaluate(eta)
        obj = ll
        restarted = True
    converged, message, dec, dec_prev, nhalf_total, M, L, it = \
        False, "", np.nan, np.inf, 0, None, None, 0
    maxiter_run = maxiter if math.isfinite(obj) else 0
    if not maxiter_run:
        message = ("the log-likelihood is not finite at the starting values (before the "
                   "first iteration)")
    for it in range(1, maxiter_run + 1):
        if not math.isfinite(float(_sum(d1)) + float(_sum(w))) or (not neg_ok and _min(w) < 0):
            message = (f"non-finite or negative working weights at PIRLS iteration {it} "
                       f"(max |eta| = {np.max(np.abs(eta)):.3g})")
            break
        M, B, L = system(w)
        newton = L is not None
        if not newton:
            if fisher is None:
                return None
            # away from the modes: a Fisher-scoring step (positive weights)
            Mf, B, L = system(fisher(eta))
            if L is None:
                return None
        Ms = M if newton else Mf
        gu = lam * sums(d1) - u
        gb = X.T @ d1
        db = linalg.lapack.dpotrs(L, gb - lam * (B.T @ (gu / Ms)), lower=1)[0]
        du = (gu - lam * (B @ db)) / Ms
        dec = float(du @ gu + db @ gb)
        stop = _decrement_stop(dec, dec_prev, obj, tol, it, cond, newton)
        if stop is not None:
            converged, message = stop
            break
        dec_prev = dec
        dlin = lz * du[codes] + X @ db
        t, u_t, eta_t, ll_t, obj_t, d1_t, w_t, nh = _halving_step(
            evaluate, lambda t: u + t * du, lambda t: eta + t * dlin, obj, maxhalf)
        nhalf_total += nh
        if t is None:
            converged, message = _halving_failed(dec, obj, it, maxhalf)
            if converged and not newton:      # (a Fisher step's decrement certifies nothing)
                converged, message = False, ("step halving could not improve a Fisher-scoring "
                                             f"step at iteration {it}: modes not certified")
            break
        u, eta, ll, obj, d1, w = u_t, eta_t, ll_t, obj_t, d1_t, w_t
        beta = beta + t * db
    else:
        if maxiter_run:
            message = f"PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    message = _final_message(message, converged, restarted)
    extra, logdet = {}, np.nan
    if M is not None:
        extra["factor"] = ScalarFactor.from_diagonal(blk, lams, M)
        logdet = extra["factor"].logdet_zz
        # K^-1 in the lower triangle, zeros above (potrf's clean factor): the lower triangle
        # mirrored, the diagonal doubled and halved exactly (np.tril's copies cost more)
        cov = linalg.lapack.dpotri(L, lower=1)[0]
        cov += cov.T
        cov.flat[::p + 1] *= 0.5
        extra["cov_beta"] = cov
    return Modes(u=u, eta=eta, beta=beta, loglik_cond=ll, sqr_u=float(u @ u), logdet=logdet,
                 converged=converged, niter=it, nhalf=nhalf_total, message=message, decrement=dec,
                 extra=extra, d1=d1, w=w)
