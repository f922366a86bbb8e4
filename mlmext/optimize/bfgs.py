"""Quasi-Newton (BFGS) minimization with lower bounds on some variables (the clmm fit's
minimizer)."""
from __future__ import annotations

import numpy as np
from scipy import optimize

from .linesearch import backtrack

__all__ = ["minimize_bfgs"]


def minimize_bfgs(fg, x0, lower, B0=None, gtol=1e-6, maxiter=500, f0g0=None, dec_tol=1e-10):
    """Quasi-Newton (BFGS) minimization with lower bounds on some variables.

    Projected BFGS with an active set: a variable at its bound whose gradient
    points outwards is held there; the search direction solves the BFGS model
    on the free variables; steps are projected onto the bounds with
    backtracking (Armijo).  Small and dense: meant for the handful of
    parameters of a mixed model, where the cost of an evaluation (inner
    iterations for the conditional modes) dominates.

    Parameters
    ----------
    fg : callable
        ``x -> (f, g)``; ``f = inf`` marks an infeasible point.
    x0 : ndarray
    lower : ndarray
        Lower bounds (``-inf`` for free variables).
    B0 : ndarray, optional
        Initial Hessian approximation (identity scaled after the first step
        when not given).
    f0g0 : tuple, optional
        ``fg(x0)`` when the caller has it already.
    gtol : float
        Convergence when the largest projected-gradient entry is below it.
    dec_tol : float
        Convergence when the decrease the quasi-Newton model predicts for the
        next step, ``g' B^-1 g / 2``, is below it (in units of the objective:
        for a negative log-likelihood, 1e-10 puts the estimates within about
        1e-5 standard errors of the optimum).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x, fun, jac, nit, nfev, success, message``.

    Notes
    -----
    The clmm fit's minimizer.  The GLMM fit keeps its own (``mlmext.optimize.quasi_newton``:
    Powell-damped updates, eigenvalue-modified directions, theta steps capped at 1): swapped,
    each reaches the same optima along other iterates, so merging would change fits.
    """
    lower = np.asarray(lower, dtype=float)
    x = np.maximum(np.asarray(x0, dtype=float), lower)
    f, g = fg(x) if f0g0 is None else f0g0
    nfev = 1
    if not np.isfinite(f):
        return optimize.OptimizeResult(x=x, fun=f, jac=g, nit=0, nfev=nfev, success=False,
                              message="non-finite objective at the starting point")
    n = x.size
    B = np.eye(n) if B0 is None else np.array(B0, dtype=float)
    scaled = B0 is not None
    bounded = np.isfinite(lower)
    message = "maximum number of iterations reached"
    success = False
    it = 0
    for it in range(1, maxiter + 1):
        at_bound = bounded & (x <= lower)
        active = at_bound & (g > 0)
        free = ~active
        pg = np.where(active, 0.0, g)
        if np.max(np.abs(pg)) < gtol:
            success, message = True, "projected gradient below tolerance"
            break
        d = np.zeros(n)
        try:
            if active.any():
                d[free] = -np.linalg.solve(B[np.ix_(free, free)], g[free])
            else:
                d = -np.linalg.solve(B, g)
        except np.linalg.LinAlgError:
            d[free] = -g[free]
        slope = float(g @ d)
        if not np.isfinite(slope) or slope >= 0:        # not a descent direction: reset
            B = np.eye(n) * max(1.0, np.abs(np.diag(B)).max())
            d = -pg / np.diag(B)
            slope = float(g @ d)
        if -0.5 * slope < dec_tol:
            success, message = True, "predicted decrease below tolerance"
            break
        def trial(t):
            xt = np.maximum(x + t * d, lower)
            ft, gt = fg(xt)
            return ft, (xt, gt)

        ls = backtrack(trial, lambda t, ft, p: ft <= f + 1e-4 * float(g @ (p[0] - x)),
                       nonfinite_shrink=0.25)
        nfev += ls.evaluations
        ft, (xt, gt) = ls.value, ls.payload
        if ls.t is None:
            message = "line search failed to decrease the objective"
            success = bool(np.max(np.abs(pg)) < 1e3 * gtol)
            break
        s = xt - x
        y = gt - g
        sy = float(s @ y)
        if not scaled and sy > 0:
            B = np.eye(n) * (float(y @ y) / sy)
            scaled = True
        if sy > 1e-12 * np.sqrt(float(s @ s) * float(y @ y)):
            Bs = B @ s
            B = B + np.outer(y, y) / sy - np.outer(Bs, Bs) / float(s @ Bs)
        x, f, g = xt, ft, gt
    return optimize.OptimizeResult(x=x, fun=f, jac=g, nit=it, nfev=nfev, success=success, message=message)
