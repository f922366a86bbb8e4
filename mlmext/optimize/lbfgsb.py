"""L-BFGS-B through scipy's own core, without ``scipy.optimize.minimize``'s wrapper.

On a small mixed model an evaluation of the deviance costs tens of microseconds and
``minimize(method="L-BFGS-B")``'s machinery (option checks, the ``ScalarFunction`` wrapper
with its copies and comparisons per call, the ``OptimizeResult`` with its inverse-Hessian
operator) costs about as much per iteration: half a millisecond of a 2-3 ms fit.  This driver
runs the same loop as scipy's ``_minimize_lbfgsb`` over the same compiled ``setulb`` with the
same settings, so the iterates, evaluations and end point are scipy's exactly (a test compares
them); where scipy's private core is missing or has another signature it calls
``minimize`` instead.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize

try:  # scipy's compiled L-BFGS-B (private; checked on first use, minimize() otherwise)
    from scipy.optimize import _lbfgsb
except ImportError:  # pragma: no cover - a scipy without it
    _lbfgsb = None

__all__ = ["lbfgsb"]

_CONVERGED, _FG, _NEW_X = 4, 3, 1
_usable = [_lbfgsb is not None and hasattr(_lbfgsb, "setulb")]


def _scipy(fg, x0, lower, maxiter, maxfun, ftol, gtol):
    bounds = optimize.Bounds(np.where(np.isfinite(lower), lower, -np.inf), np.full(len(lower), np.inf))
    return optimize.minimize(fg, x0, method="L-BFGS-B", jac=True, bounds=bounds,
                             options={"maxiter": maxiter, "maxfun": maxfun, "ftol": ftol,
                                      "gtol": gtol})


def lbfgsb(fg, x0, lower, maxiter=15000, maxfun=15000, ftol=2.2e-9, gtol=1e-5, maxcor=10, maxls=20,
           decrement_stop=None):
    """Minimize ``fg`` (returning value and gradient) subject to ``x >= lower`` by L-BFGS-B.

    The arguments mean what ``scipy.optimize.minimize(method="L-BFGS-B")``'s options do (no
    upper bounds).  ``decrement_stop``: also stop (successfully) at an iterate where the
    quasi-Newton estimate of the decrease still available, ``g' H g / 2`` with ``H`` the
    limited-memory inverse Hessian of the iterates' steps (:func:`qn_decrement`), is below it
    and no bound is active: for a caller that finishes with Newton steps (the LMM fit's
    polish), the iteration that would only confirm the relative-reduction stop is saved.
    Returns an ``OptimizeResult`` with ``x, fun, jac, nfev, nit, success, message`` (no
    ``hess_inv``) and ``last_step``: with ``decrement_stop``, the last step ``s`` and its change
    of gradient ``y`` when it ends at ``x`` (else None).
    """
    x0 = np.asarray(x0, dtype=float).ravel()
    lower = np.asarray(lower, dtype=float)
    if not _usable[0]:
        return _scipy(fg, x0, lower, maxiter, maxfun, ftol, gtol)
    n = x0.size
    bounded = np.isfinite(lower)
    low = np.where(bounded, lower, 0.0)
    nbd = bounded.astype(np.int32)                    # 1: lower bound only; 0: none
    x = np.array(np.clip(x0, np.where(bounded, lower, -np.inf), np.inf), dtype=np.float64)
    m = maxcor
    f = np.array(0.0, dtype=np.float64)
    g = np.zeros(n, dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    factr = ftol / np.finfo(float).eps
    up = np.zeros(n, dtype=np.float64)
    nfev = nit = 0
    last = None                                       # scipy evaluates a repeated point once
    pairs, prev = [], (x.copy(), None)                # (decrement_stop) steps and their iterates
    step = None
    setulb = _lbfgsb.setulb
    while True:
        g = np.array(g, dtype=np.float64)             # setulb writes it: the caller's stays
        try:
            setulb(m, x, low, up, nbd, f, g, factr, gtol, wa, iwa, task, lsave, isave,
                   dsave, maxls, ln_task)
        except (TypeError, ValueError):
            if nfev == 0:                             # another core's signature: scipy's way
                _usable[0] = False
                return _scipy(fg, x0, lower, maxiter, maxfun, ftol, gtol)
            raise
        if task[0] == _FG:
            key = x.tobytes()                         # (np.array_equal's test, cheaper)
            if last is None or key != last[0]:
                fv, gv = fg(x.copy())
                fv = float(np.asarray(fv).item()) if not np.isscalar(fv) else fv
                last = (key, fv, np.atleast_1d(np.asarray(gv, dtype=float)).copy())
                nfev += 1
                if nfev == 1:                         # the start: the first step's origin
                    prev = (x.copy(), last[2])
            f, g = last[1], last[2]
        elif task[0] == _NEW_X:
            nit += 1
            if nit >= maxiter:
                task[0], task[1] = 5, 504
            elif nfev > maxfun:
                task[0], task[1] = 5, 502
            elif decrement_stop is not None and last is not None and last[0] == x.tobytes():
                pairs = _remember(pairs, prev, x, last[2], m)
                if prev[1] is not None:               # the last step, ending at x
                    step = (x - prev[0], last[2] - prev[1], x.copy())
                prev = (x.copy(), last[2])
                if pairs and not np.any(bounded & (x <= low)) and \
                        qn_decrement(pairs, prev[1]) < decrement_stop:
                    task[0], task[1] = _CONVERGED, _QN_STOP
                    break
        else:
            break
    success = task[0] == _CONVERGED
    # (decrement_stop) the last step and its change of gradient when it ends at the end point
    last_step = step[:2] if step is not None and np.array_equal(step[2], x) else None
    return optimize.OptimizeResult(x=x, fun=f, jac=g, nfev=nfev, njev=nfev, nit=nit,
                                   success=bool(success), status=0 if success else 1,
                                   message=_message(task), last_step=last_step)


#: the message code of a stop by ``decrement_stop``
_QN_STOP = 901


def _remember(pairs, prev, x, g, m):
    """The last ``m`` (step, gradient change) pairs with positive curvature, with the step
    from ``prev`` (iterate, its gradient; None before the first gradient) to ``x``."""
    if prev[1] is None:
        return pairs
    s = x - prev[0]
    y = np.asarray(g, dtype=float) - prev[1]
    sy = float(s @ y)
    if sy > 1e-10 * float(np.sqrt((s @ s) * (y @ y))):
        pairs = (pairs + [(s, y, 1.0 / sy)])[-m:]
    return pairs


def qn_decrement(pairs, g):
    """``g' H g / 2``, ``H`` the limited-memory BFGS inverse Hessian of ``pairs`` ((s, y,
    1 / s'y), oldest first) with the initial scaling ``s'y / y'y`` of the newest (two-loop
    recursion)."""
    q = np.array(g, dtype=float)
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        alphas.append(a)
        q -= a * y
    s, y, _ = pairs[-1]
    q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        q += s * (a - rho * float(y @ q))
    return 0.5 * float(np.asarray(g, dtype=float) @ q)


def _message(task):
    text = {401: "NORM OF PROJECTED GRADIENT <= PGTOL", 402: "RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
            _QN_STOP: "QUASI-NEWTON DECREMENT <= DECREMENT_STOP",
            502: "TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT", 504: "TOTAL NO. OF ITERATIONS REACHED LIMIT"}
    state = {4: "CONVERGENCE", 5: "STOP", 6: "WARNING", 7: "ERROR", 8: "ABNORMAL"}
    return f"{state.get(int(task[0]), str(int(task[0])))}: {text.get(int(task[1]), str(int(task[1])))}"
