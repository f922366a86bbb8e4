"""Newton's method with the exact Hessian at every iterate, for objectives whose Hessian costs
about a gradient (the small one-grouping-factor LMMs) and have no bounds (the LMM's reflected
theta).

The iterations of :func:`~mlmext.optimize.polish.newton_polish` carry what a Hessian from
differences needs (BFGS updates near the end, saddle probes, noisy-decrement rules); with an
exact Hessian at hand most of that is bookkeeping, about as costly as the evaluations on
these models.  :func:`newton_exact` takes plain Newton steps with a backtracking line search
while the Hessian is positive definite and the steps are accepted, and ends either at a
point passing :func:`newton_polish`'s checks (there, without bounds: the decrement
``g' H^-1 g / 2`` below ``check_tol`` and the smallest eigenvalue above ``-1e-8`` of the
largest, with ``H`` the exact Hessian at that point) or by handing the point it reached to
:func:`newton_polish`, whose full machinery then decides.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.linalg import lapack

from .polish import Polish, newton_polish, rounding_level

__all__ = ["newton_exact"]


_syevd = lapack.dsyevd
_sum = np.add.reduce          # (ndarray.sum's Python wrapper costs as much as the sum here)

#: longest Newton step (largest entry, in the optimizer's scaled variables: theta in its
#: predictors' units, where lme4's start has diagonals 1) where the Hessian is not positive
#: definite, and where it is: far from the optimum a full step overshoots
MAX_STEP, MAX_STEP_PD = 0.5, 1.0
#: Newton steps taken at most once the decrement is below check_tol (quadratic convergence
#: needs one or two to go from there to any useful tol)
CERTIFIED_STEPS = 2


def newton_exact(fg, hess, x, f, g, H, lower, tol, check_tol, maxit, value=None):
    """Newton from ``x`` (value ``f``, gradient ``g``, exact Hessian ``H``) without bounds.

    ``hess`` (and ``H``) must give symmetric matrices, as the LMM's exact Hessians are (each
    is symmetrized where it is computed, and scaled by the symmetric ``outer(s, s)``):
    symmetrizing them again here changed no bit and cost three NumPy calls per iteration.

    Returns a :class:`~mlmext.optimize.polish.Polish`: converged where the checks pass,
    else :func:`newton_polish`'s verdict from the last point reached (which may restart
    from an escape, as usual).  ``nfev`` counts gradients and Hessians as
    :func:`newton_polish` does.
    """
    nfev = used = extra = 0
    for used in range(maxit):
        # (the few entries' tests and maxima in Python: a NumPy call each costs more)
        if not (math.isfinite(f) and math.isfinite(_sum(H, None))):
            break
        w, V, info = _syevd(H)                       # (LAPACK: eigh's checks cost as much)
        if info:
            break
        wl = w.tolist()
        mine = wl[0]
        scale = max(1.0, max(map(abs, wl)))
        pdef = mine > -1e-8 * scale
        # not positive definite: the |eigenvalues| give a descent direction (a saddle's
        # region is left along it; the checks still need a positive-definite end)
        # (the K coefficients -(V'g)_i / max(|w_i|, floor) in Python floats: the same divisions
        # as NumPy's, and V @ (-c) is -(V @ c) bit for bit)
        floor = (1e-10 if pdef else 1e-6) * scale
        step = V @ np.array([-(z / (a if a > floor else floor))
                             for z, a in zip((V.T @ g).tolist(), map(abs, wl))])
        dec = float(-g @ step) / 2.0
        # below check_tol the point passes; steps go on to tol, at most CERTIFIED_STEPS of them
        # (the decrement's rounding can stay above a tiny tol on large data)
        certified = pdef and dec < check_tol and \
            mine > -1e-8 * max(1.0, max(map(abs, H.diagonal().tolist())))
        if certified and (dec < tol or extra >= CERTIFIED_STEPS):
            return Polish(x, f, g, H, True, dec, mine, f"Newton decrement {dec:.3g}", nfev)
        extra += certified
        if dec < tol:
            break                 # (not positive definite: a saddle, newton_polish probes it)
        big, cap = max(map(abs, step.tolist())), MAX_STEP_PD if pdef else MAX_STEP
        if big > cap:                                # far from the optimum
            step *= cap / big
            dec = float(-g @ step) / 2.0
        # the full step with its gradient (usually accepted), shortened ones by value alone
        t, xn, fn, gn = 1.0, None, np.inf, None
        for _ in range(30):
            xt = x + t * step
            if t == 1.0 or value is None:
                ft, gt = fg(xt)
            else:
                ft, gt = value(xt), None
            nfev += 1
            if math.isfinite(ft) and ft <= f - 1e-4 * t * dec + rounding_level(f):
                xn, fn, gn = xt, ft, gt
                break
            t *= 0.5
        if xn is None:
            break                                    # newton_polish's line search decides
        if gn is None:
            fn, gn = fg(xn)
            nfev += 1
        x, f, g = xn, float(fn), np.asarray(gn, dtype=float)
        H = hess(x)
        nfev += 1
    else:
        used = maxit
    # (the iterations left: maxit bounds Newton's iterations here and there together)
    p = newton_polish(fg, x, lower, f=f, g=g, H0=H, tol=tol, check_tol=check_tol,
                      maxit=maxit - used, value=value, hess=hess)
    p.nfev += nfev
    return p
