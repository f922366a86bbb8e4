"""Bounded minimizers of the deviances: theta (bounded below on the diagonals), with the probes
that move a fit off a bound or onto it (bounded BFGS: :mod:`.bfgs`)."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize

from .bfgs import minimize_bfgs
from .bound_steps import at_bound, escape_bound, snap_to_bound
from .lbfgsb import lbfgsb
from .newton_exact import newton_exact
from .polish import Polish, newton_polish, secant_completed

__all__ = ["minimize_theta", "minimize_bfgs"]

_max = np.maximum.reduce


def _bounds(lower):
    return optimize.Bounds(np.where(np.isfinite(lower), lower, -np.inf), np.full(len(lower), np.inf))


def _run(method, fun, x0, lower, grad, maxiter, tol, ftol=None, decrement_stop=None):
    """One optimizer run; ``grad`` (if given) returns (value, gradient) in one call; ``ftol``
    overrides L-BFGS-B's relative-reduction stop; ``decrement_stop``: L-BFGS-B's quasi-Newton
    stop (:func:`~mlmext.optimize.lbfgsb.lbfgsb`)."""
    if method == "L-BFGS-B":              # scipy's L-BFGS-B core without minimize()'s wrapper
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return lbfgsb(grad, x0, lower, maxiter=maxiter, maxfun=maxiter,
                          ftol=tol * 1e-1 if ftol is None else ftol, gtol=1e-5,
                          decrement_stop=decrement_stop)
    bounds = _bounds(lower)               # (scipy's Bounds: only for the other methods)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "COBYQA":
            scale = max(1.0, float(np.max(np.abs(x0))))
            return optimize.minimize(fun, x0, method="COBYQA", bounds=bounds,
                                     options={"maxfev": maxiter, "initial_tr_radius": 0.5 * scale,
                                              "final_tr_radius": tol ** 0.5 * 1e-2 * scale})
        if method == "Nelder-Mead":
            return optimize.minimize(fun, np.maximum(x0, np.where(np.isfinite(lower), lower, -np.inf)),
                                     method="Nelder-Mead", bounds=bounds,
                                     options={"maxfev": maxiter, "xatol": max(1e-6, tol), "fatol": tol})
        opts = {"maxfun": maxiter} if method == "TNC" else {"maxiter": maxiter}   # TNC's name
        if grad is not None:
            return optimize.minimize(grad, x0, method=method, jac=True, bounds=bounds, options=opts)
        return optimize.minimize(fun, x0, method=method, bounds=bounds, options=opts)


def minimize_theta(fun, start, lower, method="auto", maxiter=2000, tol=1e-9, grad=None, scale=None,
                   check_tol=1e-7, reflect=None, hess=None, warm=False, warm_hessian=None,
                   newton_first=False, hess_part=None, costly=False):
    """Minimize an objective of theta subject to ``theta >= lower``.

    Parameters
    ----------
    fun : callable
        Objective (a deviance).
    start : ndarray
        Starting value.
    lower : ndarray
        Lower bounds (0 for standard-deviation-like entries, -inf otherwise).
    method : str
        ``"auto"`` (needs ``grad``): L-BFGS-B, then Newton steps with the Hessian from
        differences of the gradient until the Newton decrement is below ``tol``, every
        entry at its bound probed inward; a probe that finds descent restarts L-BFGS-B
        from the better point, and COBYQA is tried if Newton cannot finish.  Without
        ``grad``, the derivative-free trust-region method COBYQA (lme4's BOBYQA's
        analogue) and Nelder-Mead if it fails.  Any other name is passed to
        :func:`scipy.optimize.minimize` as the only method.
    tol : float
        ``"auto"``: target of the Newton decrement (deviance units); other methods:
        their own tolerance.
    grad : callable, optional
        Returns ``(fun(x), gradient)`` in one call.  When given, every method's end point
        is checked (:func:`~mlmext.optimize.polish.newton_polish`): ``success`` means the
        Newton decrement is below ``check_tol``, the Hessian on the free entries is
        positive definite and no inward probe from a bound finds descent.
    scale : ndarray, optional
        Positive scale per entry: the optimizer works on ``x * scale`` (so that unit
        steps mean alike in every entry: units of the predictors, curvature).
    check_tol : float
        Largest Newton decrement (deviance units) at a converged point.
    reflect : callable, optional
        Maps any x to an equivalent point within the bounds (the LMM's
        :meth:`~mlmext.design.RandomEffectsDesign.canonical_theta`; x itself, not a copy,
        where nothing is mirrored, saves the comparisons): the objective is then
        smooth across the bounds, ``"auto"`` minimizes without them and maps its end point
        back, and the checks look at both sides of a bound.  Without it, entries at a bound
        are probed inward (:func:`~mlmext.optimize.polish.probe_bounds`).
    hess : callable, optional
        ``x -> H``, the exact Hessian: the checks (and Newton) use it instead of differences
        of ``grad``.
    warm : bool
        ``"auto"`` with ``hess``: the start may be near the optimum (a refit, an ML refit of a
        REML fit): where its Newton decrement is at most ``WARM_MAX_DECREMENT``, Newton steps
        from it first, L-BFGS-B only if they do not end at a point passing the checks (the
        same checks either way).
    warm_hessian : ndarray, optional
        With ``warm``: the Hessian (in the scaled variables) of the fit whose end point is
        the start (a refit's parent).  A start whose Newton decrement estimated with it is
        above ``FAR_FACTOR * WARM_MAX_DECREMENT`` goes to L-BFGS-B without the exact Hessian
        there (a refit to a new response usually starts that far).
    newton_first : bool
        ``"auto"`` with ``hess``: the exact Hessian costs about a gradient, so Newton steps
        start from any start (no decrement test), L-BFGS-B only if they do not end at a point
        passing the checks (the same checks either way).
    hess_part : callable, optional
        ``x -> (idx, H_idx)`` or None: the exact Hessian in the entries ``idx``, available at
        the point of the last ``grad`` call (the LMM's dense remainder); the Newton polish
        then differences the gradient along the other entries only.  Unused with ``hess``.
    costly : bool
        ``"auto"``: an evaluation costs a dense factorization and inverse of hundreds of rows
        or more (a large LMM): the first L-BFGS-B run hands over to Newton by its quasi-Newton
        decrement (:data:`NEWTON_SWITCH_DECREMENT`), and a warm start in the metric of
        ``warm_hessian`` takes the full Newton step first.

    Returns
    -------
    scipy.optimize.OptimizeResult
        With extra fields ``tried`` (list of (method, success, nfev)), ``snapped``
        (indices of theta set to their bound at the end), ``decrement`` and
        ``min_eigenvalue`` (of the Hessian on the free entries, scaled variables).
    """
    start = np.asarray(start, dtype=float)
    lower = np.asarray(lower, dtype=float)
    # (np.allclose's test, without its overhead: this runs on every fit; the reductions
    # without np.max's and np.outer's Python wrappers)
    if scale is not None and \
            _max(np.abs(np.asarray(scale, dtype=float) - 1.0), None) > 1.00001e-5:
        s = np.asarray(scale, dtype=float)
        fs = lambda x: fun(x / s)

        def gs(x):
            f, g = grad(x / s)
            return f, g / s

        ss = s[:, None] * s[None, :]
        hs = None if hess is None else (lambda x: hess(x / s) / ss)

        def rs(x):
            # entries the reflection leaves as they are stay bit for bit (x / s * s may not
            # be x: the end point would count as mirrored and be evaluated again)
            t = x / s
            c = reflect(t)
            if c is t:                         # (not mirrored: x as it is)
                return x
            c = np.asarray(c, dtype=float)
            return np.where(c == t, x, c * s)

        def ps(x):
            got = hess_part(x / s)
            return None if got is None else (got[0], got[1] / np.outer(s[got[0]], s[got[0]]))

        res = minimize_theta(fs, start * s, lower * s, method=method, maxiter=maxiter, tol=tol,
                             grad=None if grad is None else gs, check_tol=check_tol,
                             reflect=None if reflect is None else rs,
                             hess=hs, warm=warm, warm_hessian=warm_hessian,
                             newton_first=newton_first,
                             hess_part=None if hess_part is None else ps, costly=costly)
        res.x = res.x / s
        return res
    # where the objective extends smoothly across the bounds, the checks look across them
    lower_check = lower if reflect is None else np.full(lower.size, -np.inf)
    if method == "auto" and grad is not None:
        first = newton_first and hess is not None
        res = _minimize_auto(fun, grad, start, lower_check, maxiter, tol, check_tol, hess=hess,
                             warm=(warm or first) and (hess is not None
                                                       or (costly and warm_hessian is not None)),
                             warm_hessian=None if first else warm_hessian, newton_first=first,
                             hess_part=hess_part, costly=costly)
        if reflect is not None:
            x = np.asarray(reflect(res.x), dtype=float)
            fx = res.fun
            if x is not res.x and np.any(x != res.x):   # mirrored: the same model, evaluated again
                fx = float(fun(x))
                res.nfev += 1
            # a diagonal that Newton drove to (practically) zero is a zero standard deviation
            x, res.fun, _, n_snap = snap_to_bound(fun, x, fx, lower, 1e-9, width=1e-6)
            res.x = x
            res.nfev += n_snap
            res.snapped = at_bound(x, lower)
        return res
    nfev = 0
    tried = []
    methods = ["COBYQA", "Nelder-Mead"] if method == "auto" else [method]
    x = start
    res = None
    for meth in methods:
        r = _run(meth, fun, x, lower, grad if meth in ("L-BFGS-B", "BFGS", "TNC", "trust-constr") else None,
                 maxiter, tol)
        nfev += int(getattr(r, "nfev", 0))
        tried.append((meth, bool(r.success), int(getattr(r, "nfev", 0))))
        if res is None or r.fun <= res.fun:
            res = r
        x = res.x
        if r.success:
            break
    x = np.maximum(np.asarray(res.x, dtype=float), lower)
    if np.any(x != res.x):
        res.fun = float(fun(x))
    res.x, res.fun = x, float(res.fun)
    for _ in range(3):
        best = escape_bound(fun, res.x, res.fun, lower)
        nfev += 3 * int(np.sum(np.isfinite(lower) & (res.x <= lower + 1e-10)))
        if best is None:
            break
        r = _run(methods[0], fun, best[0], lower, grad if methods[0] == "L-BFGS-B" else None, maxiter, tol)
        nfev += int(getattr(r, "nfev", 0))
        tried.append((methods[0] + " (restart off the bound)", bool(r.success), int(getattr(r, "nfev", 0))))
        x = np.maximum(np.asarray(r.x, dtype=float), lower)
        fx = float(fun(x))
        if fx < res.fun:
            res.x, res.fun, res.success, res.message = x, fx, r.success, r.message
        else:
            break
    # entries practically at the bound set to it, at a cost of at most 1e-5 in deviance units
    res.x, res.fun, snapped, n_snap = snap_to_bound(fun, res.x, res.fun, lower, 1e-5)
    res.nfev = nfev + n_snap
    res.snapped = snapped
    if grad is not None:                       # the same verdict as the default path, no moving
        p = newton_polish(grad, res.x, lower_check, tol=check_tol, check_tol=check_tol, move=False,
                          hess=hess, hess_part=hess_part)
        res.nfev += p.nfev
        tried.append(("second-order checks (Newton decrement, saddles, zero SDs)", p.converged, p.nfev))
        if res.success and not p.converged:
            res.message = f"{res.message}; the second-order check failed: {p.message}"
        res.success = bool(res.success and p.converged)
        res.decrement, res.min_eigenvalue = p.decrement, p.min_eigenvalue
    res.tried = tried
    res.method = methods[0] if len(tried) == 1 else " + ".join(m for m, _, _ in tried)
    return res


#: Newton iterations from a warm start before L-BFGS-B takes over
WARM_NEWTON_ITERATIONS = 8
#: Newton iterations from any start (``newton_first``: a cheap exact Hessian) before L-BFGS-B
NEWTON_FIRST_ITERATIONS = 20
#: the Newton decrement those iterations go to (the checks' bound is 1e-7; each step squares
#: it): theta then is within ~1e-8 of the optimum, and an estimate whose standard deviation
#: tends to zero is well within the width at which the fit sets it to zero
NEWTON_FIRST_TOL = 1e-15
#: a warm start's largest Newton decrement (deviance units) for Newton to start there: the ML
#: refit of a REML fit starts at ~0.05, a refit to a simulated response at 1.5-5, from where
#: L-BFGS-B's cheaper steps get there first (sleepstudy, Penicillin, Pastes)
WARM_MAX_DECREMENT = 0.5
#: a start whose decrement estimated with the parent fit's Hessian exceeds this multiple of
#: WARM_MAX_DECREMENT is far: the exact Hessian there (~1.7 gradients) would only confirm it
FAR_FACTOR = 2.0


def _near(f, g, H, max_decrement=None):
    """Whether Newton from a point with value f, gradient g and Hessian H (scaled theta) is
    worth it: H positive definite and the decrement g'H^-1 g / 2 at most ``max_decrement``
    (default WARM_MAX_DECREMENT)."""
    if not (np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        return False
    try:
        L = np.linalg.cholesky(0.5 * (H + H.T))
    except np.linalg.LinAlgError:
        return False
    z = np.linalg.solve(L, g)
    return 0.5 * float(z @ z) <= (WARM_MAX_DECREMENT if max_decrement is None else max_decrement)


def _estimated_decrement(g, H):
    """``g' H^-1 g / 2`` with a Hessian from elsewhere (inf where it is unusable)."""
    try:
        L = np.linalg.cholesky(0.5 * (H + H.T))
    except np.linalg.LinAlgError:
        return np.inf
    z = np.linalg.solve(L, g)
    return 0.5 * float(z @ z)


def _minimize_auto(fun, grad, start, lower, maxiter, tol, check_tol, rounds=5, hess=None,
                   warm=False, warm_hessian=None, newton_first=False, hess_part=None,
                   costly=False):
    """L-BFGS-B, then Newton with the second-order checks; restarts where a check finds descent.
    ``warm``: Newton from the start first (L-BFGS-B only when it does not pass the checks),
    where the start is near (``newton_first``: from any start)."""
    tol = min(tol, check_tol)          # Newton goes at least as far as the checks require
    tried, nfev = [], 0
    x, best = start, None
    label = "L-BFGS-B"
    hname = "exact Hessian" if hess is not None else "Hessian from gradient differences"
    first = None                       # the start's value and gradient, when computed here
    metric = None                      # a Hessian to run the first L-BFGS-B in (whitened)
    bounded = bool(np.isfinite(lower).any())
    if warm:
        f0, g0 = grad(start)
        nfev += 1
        g0 = np.asarray(g0, dtype=float)
        first = (f0, g0)
        Hp = None if warm_hessian is None else np.asarray(warm_hessian, dtype=float)
        usable = Hp is not None and Hp.shape == (g0.size, g0.size) and np.all(np.isfinite(Hp)) \
            and np.all(np.isfinite(g0))
        if usable and hess is None:
            # no exact Hessian here (a large model's refit): L-BFGS-B in the fit's metric; the
            # polish differences the gradient where it ends
            H0 = None
            metric = Hp if not bounded else None
            tried.append(("L-BFGS-B from the start in the metric of the fit's Hessian", True, 1))
        elif usable and _estimated_decrement(g0, Hp) > FAR_FACTOR * WARM_MAX_DECREMENT:
            H0 = None
            metric = Hp if not bounded else None
            tried.append((f"Newton decrement at the start above {FAR_FACTOR * WARM_MAX_DECREMENT:g} "
                          "(estimated with the fit's Hessian): L-BFGS-B from there", True, 1))
        else:
            H0 = hess(start)
        if H0 is None:
            pass
        elif (newton_first and not bounded) or \
                _near(f0, g0, H0, np.inf if newton_first else None):
            first = None
            its = NEWTON_FIRST_ITERATIONS if newton_first else WARM_NEWTON_ITERATIONS
            # (Newton's last steps are cheap: it goes on to a decrement far below tol, which
            # also takes an estimate at a zero standard deviation to within the snap's width)
            if newton_first and not bounded:
                p = newton_exact(grad, hess, start, f0, g0, H0, lower, min(tol, NEWTON_FIRST_TOL),
                                 check_tol, min(its, maxiter), value=fun)
            else:
                p = newton_polish(grad, start, lower, f=f0, g=g0, H0=H0,
                                  tol=min(tol, NEWTON_FIRST_TOL) if newton_first else tol,
                                  check_tol=check_tol, maxit=min(its, maxiter), value=fun,
                                  hess=hess, hess_part=hess_part)
            nfev += p.nfev
            tried.append((f"Newton from the start ({hname}), second-order checks", p.converged,
                          p.nfev + 1))
            if p.converged:
                return _auto_result(p, nfev, tried, lower)
            # L-BFGS-B from the lowest point Newton found (its steps only descend) or a probe's
            if p.escape is not None:
                x = p.escape[0]
            elif np.isfinite(p.f) and np.all(np.isfinite(p.x)):
                x = p.x
        elif newton_first:
            tried.append(("the Hessian at the start is not positive definite: L-BFGS-B from "
                          "there", True, 1))
        else:
            tried.append((f"Newton decrement at the start above {WARM_MAX_DECREMENT:g}: "
                          "L-BFGS-B from there", True, 1))
    for rnd in range(rounds):
        # a loose relative stop: Newton finishes faster than L-BFGS-B's last iterations
        if rnd == 0 and metric is not None:
            r = _run_lbfgsb_whitened(grad, x, metric, maxiter, tol, first, costly=costly)
        else:
            # (the hand-over to Newton saves a gradient where it costs a dense inverse; cheap
            # fits keep L-BFGS-B's own stops)
            r = _run_lbfgsb_scaled(fun, grad, x, lower, maxiter, tol, first,
                                   NEWTON_SWITCH_DECREMENT if costly else None,
                                   COSTLY_FIRST_STEP_MIN_GRADIENT if costly else
                                   FIRST_STEP_MIN_GRADIENT) if rnd == 0 else \
                _run("L-BFGS-B", fun, x, lower, grad, maxiter, tol, ftol=1e-7)
        nfev += int(r.nfev) - (rnd == 0 and first is not None)     # (the start's, counted)
        tried.append((label, bool(r.success), int(r.nfev)))
        x1 = np.asarray(r.x, dtype=float)
        f1, g1 = (float(r.fun), np.asarray(r.jac, dtype=float)) if np.all(x1 >= lower) else (None, None)
        part = secant_completed(hess_part, x1, r.get("last_step")) if f1 is not None \
            else hess_part
        p = newton_polish(grad, x1, lower, f=f1, g=g1, tol=tol, check_tol=check_tol,
                          maxit=min(30, maxiter), value=fun, hess=hess, hess_part=part)
        nfev += p.nfev
        tried.append((f"Newton ({hname}), second-order checks", p.converged, p.nfev))
        if best is None or p.f <= best.f:
            best = p
        if p.escape is None and not p.converged and rnd == 0:
            # Newton could not finish from there: a derivative-free method from its point
            c = _run("COBYQA", fun, p.x, lower, None, maxiter, tol)
            nfev += int(c.nfev)
            tried.append(("COBYQA", bool(c.success), int(c.nfev)))
            p2 = newton_polish(grad, np.maximum(c.x, lower), lower, tol=tol, check_tol=check_tol,
                               maxit=min(30, maxiter), value=fun, hess=hess,
                               hess_part=hess_part)
            nfev += p2.nfev
            tried.append((f"Newton ({hname}), second-order checks", p2.converged, p2.nfev))
            if p2.f <= best.f:
                best = p2
            p = p2
        if p.escape is None:
            break
        x = p.escape[0]
        label = "L-BFGS-B (restart: " + p.message + ")"
    else:                              # restarts used up: keep the lowest point found
        if p.escape[1] < best.f:           # its value and gradient; no Hessian is needed
            xe = p.escape[0]
            fe, ge = grad(xe)
            nfev += 1
            best = Polish(xe, fe, np.asarray(ge, dtype=float), p.H, False, np.nan, np.nan,
                          f"{rounds} restarts used up and a probe still found descent", 1)
    return _auto_result(best, nfev, tried, lower)


#: the first L-BFGS-B run hands over to the Newton polish at an iterate whose quasi-Newton
#: estimate of the decrease still available is below this (deviance units): half the polish's
#: 1e-3 under which its Hessian is kept along a Newton step (the estimate tracked the decrement
#: within a factor of 0.6-1.2 on ratings, InstEval and STAR); L-BFGS-B's own relative stop
#: (1e-7 of a deviance of 1e5-1e6) otherwise takes one more iteration to see the last one's gain
NEWTON_SWITCH_DECREMENT = 5e-4

#: L-BFGS-B's first trial step has length 1; from a start whose (projected) gradient is longer
#: than this, the variables are shrunk uniformly so that the first trial is the full gradient step
FIRST_STEP_MIN_GRADIENT = 10.0
#: ... and where evaluations are costly (the scale is then each block's curvature, so the full
#: gradient step is about the Newton step): InstEval's start has a gradient of 8.6 there, and
#: a unit first trial (1/8.6 of the step) cost one evaluation of eight
COSTLY_FIRST_STEP_MIN_GRADIENT = 1.0


def _run_lbfgsb_scaled(fun, grad, x, lower, maxiter, tol, first=None,
                       decrement_stop=NEWTON_SWITCH_DECREMENT,
                       min_gradient=FIRST_STEP_MIN_GRADIENT):
    """The first L-BFGS-B run, its first trial step the full gradient step.

    The variables are scaled so that a unit step means alike in each and the curvature is
    of order 1 (``minimize_theta``'s ``scale``): the Newton step is then about the gradient,
    but L-BFGS-B's first trial step has length 1 and its line search extrapolates by factors
    of 4, one evaluation each (a large fit starting 25 gradient-lengths away paid 2-3 of
    them).  Working on ``x |g|`` makes the first trial the full step; later iterations are
    unaffected (the quasi-Newton scaling is invariant).  The start's value and gradient are
    computed here (unless given as ``first``) and handed to L-BFGS-B's first evaluation.
    ``decrement_stop``: the quasi-Newton stop handing over to Newton (None: L-BFGS-B's own
    stops only).  ``min_gradient``: the gradient length above which the first trial is
    the full gradient step (below it, L-BFGS-B's unit step).
    """
    f0, g0 = grad(x) if first is None else first
    g0 = np.asarray(g0, dtype=float)
    pg = np.where(np.isfinite(lower) & (x <= lower) & (g0 > 0), 0.0, g0)   # projected
    gn = float(np.sqrt(pg @ pg))
    if not (np.isfinite(f0) and np.isfinite(gn) and gn > min_gradient):
        first = [(f0, g0)]
        return _run("L-BFGS-B", fun, x, lower,
                    lambda z: first.pop() if first else grad(z), maxiter, tol, ftol=1e-7,
                    decrement_stop=decrement_stop)
    c = 1.0 / gn
    first = [(f0, g0 / c)]

    def fc(z):
        if first:
            return first.pop()
        f, g = grad(z / c)
        return f, np.asarray(g, dtype=float) / c

    r = _run("L-BFGS-B", None, x * c, lower * c, fc, maxiter, tol, ftol=1e-7,
             decrement_stop=decrement_stop)
    r.x = np.asarray(r.x, dtype=float) / c
    r.jac = np.asarray(r.jac, dtype=float) * c
    if r.get("last_step") is not None:
        r.last_step = (r.last_step[0] / c, r.last_step[1] * c)
    return r


def _run_lbfgsb_whitened(grad, x0, H, maxiter, tol, first, costly=False):
    """The first L-BFGS-B run of a refit (no bounds) in ``z = L' (x - x0)``, ``H = L L'`` the
    parent fit's Hessian: the curvature there is about 1 in every direction, so the quasi-
    Newton method starts with the right metric instead of learning it (about two evaluations
    fewer from a far start).  ``costly``: evaluations cost a dense inverse (no exact Hessian):
    the first step is the full Newton step in that metric and L-BFGS-B hands over to Newton
    by its quasi-Newton decrement.  Returns the result in ``x`` (``x``, ``jac`` mapped back)."""
    try:
        L = np.linalg.cholesky(0.5 * (H + H.T))
        Li = np.linalg.inv(L)                    # x = x0 + Li' z, gradient in z: Li g
    except np.linalg.LinAlgError:
        return _run_lbfgsb_scaled(None, grad, x0, np.full(x0.size, -np.inf), maxiter, tol, first,
                                  NEWTON_SWITCH_DECREMENT if costly else None)
    start = [] if first is None else [(first[0], Li @ np.asarray(first[1], dtype=float))]
    # with H about the identity in z, the Newton step is -g_z; L-BFGS-B's first trial step has
    # length 1: in z |g_z| it is the full Newton step (as in _run_lbfgsb_scaled)
    gn = float(np.linalg.norm(start[0][1])) if start and costly else 0.0
    c = 1.0 / gn if np.isfinite(gn) and gn > 1.0 else 1.0
    if start:
        start = [(start[0][0], start[0][1] / c)]

    def fz(w):
        if start:
            return start.pop()
        f, g = grad(x0 + Li.T @ (w / c))
        return f, (Li @ np.asarray(g, dtype=float)) / c

    r = _run("L-BFGS-B", None, np.zeros(x0.size), np.full(x0.size, -np.inf), fz, maxiter, tol,
             ftol=1e-7, decrement_stop=NEWTON_SWITCH_DECREMENT if costly else None)
    r.x = x0 + Li.T @ (np.asarray(r.x, dtype=float) / c)
    r.jac = L @ (np.asarray(r.jac, dtype=float) * c)
    if r.get("last_step") is not None:
        r.last_step = (Li.T @ (r.last_step[0] / c), L @ (r.last_step[1] * c))
    return r


def _auto_result(p, nfev, tried, lower):
    return optimize.OptimizeResult(
        x=p.x, fun=float(p.f), success=bool(p.converged), message=p.message, nfev=nfev, hessian=p.H,
        tried=tried, snapped=at_bound(p.x, lower),
        decrement=p.decrement, min_eigenvalue=p.min_eigenvalue,
        method=" + ".join(m for m, _, _ in tried))
