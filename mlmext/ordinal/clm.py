"""The cumulative link model without random effects (``clm``): starting values of the mixed model."""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from ..optimize import backtrack

from .thresholds import _increasing

__all__ = ["fit_clm"]


def _jacobians(cond, T, X):
    """Parameter Jacobians of ``u`` and ``l`` in (alpha, beta): each (n, k + p)."""
    Tu = np.where(cond.has_upper[:, None], T[cond._iu], 0.0)
    Tl = np.where(cond.has_lower[:, None], T[cond._il], 0.0)
    return np.hstack([Tu, -X]), np.hstack([Tl, -X])


def fit_clm(cond, thr, X, offset=None, start=None, maxiter=100, tol=1e-10, jacobians=None):
    """Maximum likelihood fit of the cumulative link model without random effects.

    Newton-Raphson in (alpha, beta) with step halving; the log-likelihood is
    concave for the log-concave links.  Used for starting values of the
    mixed model (as ``clmm`` does) and as the no-random-effects baseline.

    Parameters
    ----------
    cond : CumulativeLinkConditional
    thr : Thresholds
    X : ndarray (n, p)
        Fixed-effects design without intercept.
    offset : ndarray, optional
    start : ndarray, optional
        Starting (alpha, beta).
    jacobians : tuple of ndarray, optional
        The Jacobians of the interval ends in (alpha, beta), when already computed.

    Returns
    -------
    params : ndarray
        (alpha, beta).
    llf : float
    hessian : ndarray
        Hessian of the log-likelihood in (alpha, beta).
    converged : bool
    """
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    k = thr.k
    if start is None:
        # thresholds from the marginal cumulative proportions, beta = 0
        w = np.ones(n) if cond.weights is None else cond.weights
        counts = np.bincount(cond.y, weights=w, minlength=cond.n_cat)
        cum = np.cumsum(counts)[:-1] / counts.sum()
        cum = np.clip(cum, 1e-4, 1 - 1e-4)
        th0 = cond.link.ppf(cum) + (np.median(off) if off.any() else 0.0)
        th0 = np.maximum.accumulate(th0 + 1e-3 * np.arange(th0.size))
        alpha = thr.alpha_from_thresholds(th0)
        if thr.kind != "flexible":      # make sure the structure's thresholds are increasing
            if thr.kind == "equidistant":
                alpha[1] = max(alpha[1], 0.1)
            else:
                alpha = thr.alpha(thr.psi(alpha)) if _increasing(thr.thresholds(alpha)) else \
                    _symmetric_default(thr, th0)
        x = np.concatenate([alpha, np.zeros(p)])
    else:
        x = np.asarray(start, dtype=float).copy()
    Ju, Jl = _jacobians(cond, thr.T, X) if jacobians is None else jacobians
    JuT, JlT = np.ascontiguousarray(Ju.T), np.ascontiguousarray(Jl.T)

    def grad_hess(eta):
        lu, ll_, luu, lll, lul = cond.interval_derivatives(eta)
        H = (luu * JuT + lul * JlT) @ Ju + (lul * JuT + lll * JlT) @ Jl
        return JuT @ lu + JlT @ ll_, H

    def loglik(x):
        th = thr.thresholds(x[:k])
        if not _increasing(th):
            return -np.inf, None
        cond.set_thresholds(th)
        eta = X @ x[k:] + off
        ll = float(np.sum(cond.loglik_obs(eta)))
        return ll, eta

    ll, eta = loglik(x)
    if not np.isfinite(ll):
        raise ValueError("non-finite log-likelihood at the starting values of the fixed-effects fit")
    converged = False
    H = None
    for it in range(maxiter):
        g, H = grad_hess(eta)
        step = _spd_solve(-H, g)                 # the concave case, else as it comes
        if step is None:
            try:
                step = -np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                step = g * 1e-2
        dec = float(g @ step)                    # = g' (-H)^-1 g > 0 for an ascent direction
        if not np.isfinite(dec) or dec < 0:      # not an ascent direction (non-concave): gradient step
            step = g / max(1.0, np.abs(g).max())
            dec = float(g @ step)
        if abs(dec) < tol:
            converged = True
            return x, ll, H, converged
        ls = backtrack(lambda t: loglik(x + t * step),
                       lambda t, ll_new, eta_new: ll_new >= ll - 1e-12 * abs(ll))
        if ls.t is None:
            break
        x = x + ls.t * step
        ll, eta = ls.value, ls.payload
    cond.set_thresholds(thr.thresholds(x[:k]))
    eta = X @ x[k:] + off
    H = grad_hess(eta)[1]
    return x, float(np.sum(cond.loglik_obs(eta))), H, converged


def _symmetric_default(thr, th0):
    """Increasing symmetric thresholds spread like ``th0``."""
    nt = thr.n_thresholds
    span = max(th0[-1] - th0[0], 1.0)
    grid = np.linspace(-0.5, 0.5, nt) * span + np.mean(th0)
    return thr.alpha_from_thresholds(grid)


def _spd_solve(A, b):
    """``A^-1 b`` by Cholesky for a symmetric positive definite ``A``, None if it is not.

    LAPACK directly: for the handful of parameters numpy's checks cost more than the work."""
    c, info = lapack.dpotrf(A, lower=True)
    if info != 0:
        return None
    x, info = lapack.dpotrs(c, b, lower=True)
    return x if info == 0 and np.all(np.isfinite(x)) else None
