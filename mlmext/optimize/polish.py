"""Newton polish and the second-order checks that decide whether a bound-constrained
minimum has been reached.

A quasi-Newton run stops on its own criteria (scipy's L-BFGS-B on a relative reduction of
the objective, which on a deviance of 1e5 lets a step of 1e-5 pass for convergence).  The
verdict here uses the exact gradient and a Hessian from its differences instead:

* the Newton decrement ``g' H^-1 g / 2`` on the free parameters, the deviance decrease still
  available, in deviance units whatever the size of the data;
* the Hessian positive definite there (a saddle has a direction of descent);
* every parameter at its bound probed inward.  A variance parameter's deviance is even in
  it, so its gradient at 0 is exactly 0 at a saddle as at a minimum: the curvature along
  the inward direction, with the free parameters following (the Schur complement of the
  Hessian), and the deviance itself a few steps inward decide.

When a probe finds descent the point it found is returned for a restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .linesearch import backtrack

__all__ = ["Polish", "newton_polish", "fd_hessian", "secant_completed", "probe_bounds",
           "descent_along"]


@dataclass
class Polish:
    """What :func:`newton_polish` found.

    ``converged`` when the decrement is below tolerance, the Hessian on the free
    parameters is positive (semi)definite and no probe found descent; ``escape`` is a
    better point found by a probe (a restart is due), else None.  ``H`` was computed at
    ``x`` when ``hessian_at_x`` (else at the previous Newton iterate, a small step away).
    """

    x: np.ndarray
    f: float
    g: np.ndarray
    H: np.ndarray
    converged: bool
    decrement: float
    min_eigenvalue: float
    message: str
    nfev: int
    escape: tuple | None = None
    probed: list = field(default_factory=list)
    hessian_at_x: bool = True


def fd_hessian(fg, x, g, lower, rel=1e-5, known=None):
    """Hessian from forward differences of the gradient (steps inward from a bound).

    Returns ``(H, evaluations)``; ``H`` is symmetrized.  A step that lands on a non-finite
    value is retried backwards (interior entries only).  ``known``: ``(idx, H_idx)``, the
    exact Hessian in the entries ``idx``; only the other columns are differenced (their
    rows ``idx`` give the mixed entries).
    """
    n = x.size
    H = np.zeros((n, n))
    nfev = 0
    skip = np.zeros(n, dtype=bool)
    if known is not None:
        skip[known[0]] = True
    for i in np.flatnonzero(~skip):
        h = rel * max(1.0, abs(x[i]))
        col = None
        for sgn in (1.0, -1.0):
            if sgn < 0 and x[i] - h < lower[i]:
                break
            xi = x.copy()
            xi[i] += sgn * h
            fi, gi = fg(xi)
            nfev += 1
            if np.isfinite(fi):
                col = (np.asarray(gi) - g) / (sgn * h)
                break
        H[:, i] = col if col is not None else np.nan
    if known is None:
        return 0.5 * (H + H.T), nfev
    idx, Hk = known
    H[np.ix_(idx, idx)] = Hk
    mixed = H[np.ix_(idx, ~skip)]
    H = np.where(skip[:, None] | skip[None, :], H, 0.5 * (H + H.T))
    H[np.ix_(~skip, idx)] = mixed.T                  # the differenced columns' rows idx
    return H, nfev


def secant_completed(part, x1, step):
    """``hess_part`` at the end point ``x1`` of L-BFGS-B completed by its last step, where the
    exact part lacks one entry only (the LMM's first block: the dense remainder's are exact).

    With ``s`` the step and ``y`` its change of gradient, ``H s = y`` gives the missing column
    ``i`` from the known block ``K``: ``H_Ki = (y_K - H_KK s_K) / s_i`` and ``H_ii = (y_i -
    H_iK s_K) / s_i``; the polish then needs no gradient difference for it (one evaluation of
    seven on InstEval).  The step must move that entry by at least ``SECANT_MIN_SHARE`` of its
    length; elsewhere, and at any other point, ``part`` as it is."""
    if part is None or step is None:
        return part
    s, y = (np.asarray(v, dtype=float) for v in step)

    def completed(x):
        got = part(x)
        if got is None or not np.array_equal(x, x1):
            return got
        idx, Hk = got
        rest = np.setdiff1d(np.arange(x.size), idx)
        if rest.size != 1 or not abs(s[rest[0]]) >= SECANT_MIN_SHARE * np.linalg.norm(s):
            return got
        i = int(rest[0])
        col = (y[idx] - Hk @ s[idx]) / s[i]
        hii = (y[i] - col @ s[idx]) / s[i]
        if not (np.all(np.isfinite(col)) and hii > 0):
            return got
        H = np.zeros((x.size, x.size))
        H[np.ix_(idx, idx)] = Hk
        H[idx, i] = H[i, idx] = col
        H[i, i] = hii
        return np.arange(x.size), H
    return completed


#: the share of the last L-BFGS-B step's length along the missing entry of the exact Hessian
#: below which :func:`secant_completed` leaves it to a gradient difference
SECANT_MIN_SHARE = 0.2


def rounding_level(f):
    """Rounding level of a deviance (or an array of them): decreases below it are not
    evidence of descent, nor rises evidence of ascent."""
    return 1e-12 * abs(f) + 1e-10


def _hessian(fg, hess, x, g, lower, part=None):
    """``(H, evaluations)``: the exact Hessian where the objective has one, else differences
    (of the gradient along the entries ``part`` does not give exactly, see :func:`fd_hessian`)."""
    if hess is None:
        return fd_hessian(fg, x, g, lower, known=None if part is None else part(x))
    H = np.asarray(hess(x), dtype=float)
    return 0.5 * (H + H.T), 1


def newton_polish(fg, x, lower, f=None, g=None, tol=1e-10, check_tol=1e-7, maxit=30,
                  probe_steps=(1e-2, 1e-1, 0.5), move=True, mirror=None, value=None, hess=None,
                  H0=None, hess_part=None):
    """Newton steps from ``x`` to a point passing the second-order checks, or an escape.

    Parameters
    ----------
    fg : callable
        ``x -> (f, gradient)``; ``f = inf`` marks an infeasible point.  Variables should be
        scaled so that a unit step means alike in each (as the LMM fit's scaled theta).
    x : ndarray
        Start (a quasi-Newton method's end point); entries below ``lower`` are clipped.
    lower : ndarray
        Lower bounds (-inf for free entries).
    f, g : optional
        ``fg(x)`` when the caller has it.
    tol : float
        Newton iterations stop when the decrement is below it.
    check_tol : float
        ``converged`` requires the final decrement below it (deviance units).
    maxit : int
        Newton iterations.
    probe_steps : tuple of float
        Step lengths of the inward probes (in the scaled variables).
    move : bool
        False: judge ``x`` as it is (no Newton step; a probe's better point is still
        returned as ``escape``).
    mirror : dict, optional
        Entries whose negation with a bounded entry gives the same model
        (:func:`probe_bounds`).
    value : callable, optional
        ``x -> f`` alone, cheaper than ``fg``: shortened line-search steps use it.
    hess : callable, optional
        ``x -> H``, the exact Hessian (else differences of ``fg``: one evaluation per entry).
    H0 : ndarray, optional
        The Hessian at ``x`` when the caller has it (with ``f`` and ``g``).
    hess_part : callable, optional
        ``x -> (idx, H_idx)`` or None: the exact Hessian in some entries, at the point of the
        last ``fg`` call (only the other entries are differenced).

    Returns
    -------
    Polish
    """
    lower = np.asarray(lower, dtype=float)
    x = np.maximum(np.asarray(x, dtype=float), lower)
    nfev = 0
    if f is None or g is None:
        f, g = fg(x)
        nfev += 1
    g = np.asarray(g, dtype=float)
    bounded = np.isfinite(lower)
    if not np.isfinite(f):
        return Polish(x, f, g, np.full((x.size, x.size), np.nan), False, np.inf, np.nan,
                      "the objective is not finite at the optimizer's end point", nfev)
    if H0 is None:
        H, nh = _hessian(fg, hess, x, g, lower, hess_part)
        nfev += nh
    else:
        H = np.asarray(H0, dtype=float)
    dec, mine, message = np.inf, np.nan, ""
    fresh = True                                     # H computed at the current x
    # a negative eigenvalue of a difference Hessian can be rounding (a flat direction); the
    # deviance along its eigenvector decides: no descent there and x is not a saddle
    clear = False
    for _ in range(maxit):
        if not np.all(np.isfinite(H)):
            message = "the Hessian could not be computed (non-finite deviance next to the point)"
            break
        free = _free_set(x, g, H, lower, bounded)
        Hf = H if free.all() else H[np.ix_(free, free)]
        w, V = np.linalg.eigh(Hf) if free.any() else (np.ones(1), np.zeros((0, 1)))
        mine = float(w.min())
        scale = max(1.0, float(np.abs(w).max()))
        if mine <= -1e-8 * scale:                    # a saddle: move along negative curvature
            esc, n_esc = _negative_curvature(fg, x, f, V[:, int(np.argmin(w))], free, lower,
                                             probe_steps)
            nfev += n_esc
            if esc is not None:
                return Polish(x, f, g, H, False, dec, mine, "saddle point: descent along "
                              "negative curvature", nfev, escape=esc)
            clear = True
            if not fresh:
                H, nh = _hessian(fg, hess, x, g, lower, hess_part)
                nfev += nh
                fresh = True
                continue
        step = np.zeros_like(x)
        wa = np.maximum(np.abs(w), 1e-10 * scale)
        step[free] = -(V @ ((V.T @ g[free]) / wa))
        dec = float(-g @ step) / 2.0
        if dec < tol or not move:
            break
        # below check_tol the point passes already and the step's gain is at the deviance's
        # rounding level (1e-11 relative on large data): one full step, no search in the noise
        certified = dec < check_tol
        # a predicted gain below NOISY_DECREMENT can drown in the deviance's rounding (STAR's,
        # 2.4e5, is accurate to ~2e-6, above rounding_level's estimate): the full step is then also
        # taken when its gradient's decrement under H fell to a quarter and its value rose by
        # no more than that (the checks below still require the decrement under check_tol)
        unresolved = dec < NOISY_DECREMENT

        def accept(t, fn, p, f=f, dec=dec, V=V, wa=wa, free=free, unresolved=unresolved):
            if fn <= f - 1e-4 * t * dec + rounding_level(f):
                return True
            return (unresolved and t == 1.0 and p[1] is not None and fn <= f + NOISY_DECREMENT
                    and _decrement(V, wa, free, p[1]) < 0.25 * dec)

        ls = backtrack(lambda t: _trial(fg, value, np.maximum(x + t * step, lower), t), accept,
                       maxtries=1 if certified else 30)
        nfev += ls.evaluations
        if ls.t is None:
            if not certified:
                message = f"the Newton line search failed (decrement {dec:.3g})"
            break
        fn, (xn, gn) = ls.value, ls.payload
        if gn is None:                               # a shortened step: its gradient now
            gn = fg(xn)[1]
            nfev += 1
        gn = np.asarray(gn, dtype=float)
        sv, yv = xn - x, gn - g
        x, f, g = xn, fn, gn
        clear = False
        sy, Hs = float(sv @ yv), H @ sv
        sHs = float(sv @ Hs)
        # the curvature along the step says whether H still holds here: near a zero SD the
        # deviance is far from quadratic and a Hessian from the last point can be 10x off
        if dec > 1e-3 or ls.t < 1.0 or not (sHs > 0 and 0.5 <= sy / sHs <= 2.0):
            H, nh = _hessian(fg, hess, x, g, lower, hess_part)
            nfev += nh
            fresh = True
        else:                                        # close: BFGS update, exact along the step
            H = H + np.outer(yv, yv) / sy - np.outer(Hs, Hs) / sHs
            fresh = False
    else:
        message = f"no convergence in {maxit} Newton iterations (decrement {dec:.3g})"
    if dec < check_tol and (clear or mine > -1e-8 * max(1.0, np.abs(np.diag(H)).max())):
        esc, probed, n_pr = probe_bounds(fg, x, f, g, H, lower, steps=probe_steps, mirror=mirror)
        nfev += n_pr
        if esc is not None:
            return Polish(x, f, g, H, False, dec, mine, esc[2], nfev, escape=esc[:2],
                          probed=probed)
        return Polish(x, f, g, H, True, dec, mine, f"Newton decrement {dec:.3g}; "
                      f"{len(probed)} bound(s) probed without descent" if probed else
                      f"Newton decrement {dec:.3g}", nfev, probed=probed, hessian_at_x=fresh)
    if not message:
        message = (f"Newton decrement {dec:.3g} > {check_tol:g}" if dec >= check_tol else
                   f"the Hessian is not positive definite (smallest eigenvalue {mine:.3g})")
    return Polish(x, f, g, H, False, dec, mine, message, nfev, hessian_at_x=fresh)


#: Newton decrements (deviance units) below which a step's value change is not trusted alone
NOISY_DECREMENT = 1e-5


def _decrement(V, wa, free, g):
    """``g' H^-1 g / 2`` on the free entries, ``H = V diag(wa) V'``."""
    z = V.T @ np.asarray(g, dtype=float)[free]
    return float(z @ (z / wa)) / 2.0


def _trial(fg, value, x, t):
    """A line-search point: value and gradient for the full step (usually accepted), the
    value alone for shortened ones when ``value`` is given (a gradient costs 2-3 values)."""
    if value is not None and t < 1.0:
        return value(x), (x, None)
    f, g = fg(x)
    return f, (x, g)


def _free_set(x, g, H, lower, bounded):
    """Entries not held at their bound: held are those at the bound whose Newton step
    (on the other free entries) would leave the feasible set."""
    atb = bounded & (x <= lower)
    free = ~atb | (g < 0)
    if not atb.any():                 # nothing at a bound (the LMM's reflected theta): all free
        return free
    for _ in range(x.size):
        if not free.any():
            break
        Hf = H[np.ix_(free, free)]
        w, V = np.linalg.eigh(Hf)
        w = np.maximum(np.abs(w), 1e-10 * max(1.0, np.abs(w).max()))
        step = np.zeros_like(x)
        step[free] = -(V @ ((V.T @ g[free]) / w))
        out = free & atb & (step < 0)
        if not out.any():
            break
        free &= ~out
    return free


def _negative_curvature(fg, x, f, v_free, free, lower, steps):
    """The best point along +-v (negative curvature) projected onto the bounds, if lower."""
    d = np.zeros_like(x)
    d[free] = v_free
    best, nfev = descent_along(fg, x, f, [(d, ""), (-d, "")], lower, steps=steps)
    return (None if best is None else best[:2]), nfev


def descent_along(fg, x, f, directions, lower, upper=None, steps=(1e-2, 1e-1, 0.5),
                  threshold=None):
    """The lowest point ``x + t d`` (clipped to the bounds) over ``(d, label)`` in
    ``directions`` and ``t`` in ``steps`` (or the direction's own tuple of steps, as a third
    item), if it is below ``f - threshold`` (default: the deviance's rounding level).

    ``fg`` returns a value or ``(value, gradient)``.  Returns ``((x, value, label) or None,
    evaluations)``.
    """
    thr = rounding_level(f) if threshold is None else threshold
    hi = np.inf if upper is None else upper
    best, nfev = None, 0
    for item in directions:
        d, label = item[0], item[1]
        for t in (item[2] if len(item) > 2 else steps):
            xt = np.clip(x + t * d, lower, hi)
            ft = _value(fg(xt))
            nfev += 1
            if np.isfinite(ft) and ft < f - thr and (best is None or ft < best[1]):
                best = (xt, float(ft), f"{label} lowered the deviance by {f - ft:.3g} at step {t:g}")
    return best, nfev


def probe_bounds(fg, x, f, g, H, lower, upper=None, steps=(1e-2, 1e-1, 0.5), mirror=None,
                 threshold=None, names=None):
    """Probe each entry at its lower bound inward, the free entries following along
    ``d_F = -H_FF^-1 H_Fi`` (the direction of the Schur complement of the Hessian ``H``).

    The deviance profiled over the free entries has the one-sided curvature
    ``H_ii - H_iF H_FF^-1 H_Fi`` along that direction; steps of several lengths also catch
    descent a curvature cannot see (and, where the quadratic model along it turns down,
    twice the step where it is back at its start).  The entry is also moved alone.

    Parameters
    ----------
    fg : callable
        Returns a value or ``(value, gradient)``.
    x, f, g, H : the point, its value, gradient and Hessian.
    lower, upper : ndarray
        Bounds (``upper`` None: none).
    steps : tuple of float
        Step lengths along the direction scaled to a largest entry of 1.
    mirror : dict, optional
        ``{i: indices}``: negating these entries together with entry ``i`` gives the same
        model (a covariance template's column below its diagonal ``i``).  At ``x_i = 0`` the
        mirror image is the same point but its inward direction differs, so it is probed too.
    threshold : float, optional
        Decrease that counts as descent (default: the deviance's rounding level).
    names : list of str, optional
        Entry names for the messages.

    Returns
    -------
    best : (x, value, what) or None
        The lowest point found below ``f - threshold``.
    probed : list of dict
        Per probe: ``index``, ``curvature`` (one-sided, along the direction), ``slope``
        (``g . d``), ``mirrored`` and ``descent``.
    nfev : int
    """
    atb = np.isfinite(lower) & (x <= lower)
    free = ~atb
    Hs = 0.5 * (H + H.T)
    probed, best, nfev = [], None, 0
    for i in np.flatnonzero(atb):
        sides = [(False, x, g, Hs)]
        below = np.asarray((mirror or {}).get(int(i), ()), dtype=int)
        if below.size and np.any(x[below] != 0):
            # f(S z) = f(z) for S negating entry i and the entries below it: at the mirror
            # image S x (= x with those below negated, x_i being 0) the gradient is S g and
            # the Hessian S H S
            sgn = np.ones(x.size)
            sgn[below] = -1.0
            sgn[i] = -1.0
            sides.append((True, x * sgn, g * sgn, Hs * np.outer(sgn, sgn)))
        label = f"the probe of {names[i] if names else f'entry {i}'} off its bound"
        for mirrored, xs, gs, Hm in sides:
            d = np.zeros(x.size)
            d[i] = 1.0
            if free.any():
                d[free] = -_null_dropped_solve(Hm[np.ix_(free, free)], Hm[free, i])
            curv = float(d @ Hm @ d)
            slope = float(gs @ d)
            scale = max(1.0, float(np.max(np.abs(d))))
            extra = ()
            if curv < 0 and slope > 0:          # twice the step where the quadratic model
                extra = tuple(t for t in (4.0 * slope / -curv * scale,) if t < 50.0)   # is back
            what = label + (" (mirror image)" if mirrored else "")
            e = np.zeros(x.size)
            e[i] = 1.0                          # and the entry alone, the others held
            found, n = descent_along(fg, xs, f, [(d / scale, what, tuple(steps) + extra),
                                                 (e, what + " (alone)")],
                                     lower, upper, steps=steps, threshold=threshold)
            nfev += n
            probed.append({"index": int(i), "curvature": curv, "slope": slope,
                           "mirrored": mirrored, "descent": found is not None})
            if found is not None and (best is None or found[1] < best[1]):
                best = found
    return best, probed, nfev


def _null_dropped_solve(A, b, rcond=1e-4):
    """``A^+ b`` over the eigen-directions of ``A`` with ``|eigenvalue| > rcond * max``
    (magnitudes: an indefinite ``A`` is a saddle, probed separately).  At a zero diagonal
    with entries below it, turning those entries does not change the model, so ``A`` is
    close to singular there; inverting that direction would swamp the probe."""
    w, V = np.linalg.eigh(A)
    aw = np.abs(w)
    keep = aw > rcond * max(aw.max(), 1e-300)
    return V[:, keep] @ ((V[:, keep].T @ b) / aw[keep])


def _value(out):
    return float(out[0] if isinstance(out, tuple) else out)
