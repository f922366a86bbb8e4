"""Minimizing a GLMM deviance to a checked optimum: quasi-Newton, Newton, then second-order checks.

A small Newton decrement does not make a minimum.  The deviance is even in a scalar term's
theta (and in the last diagonal entry of a vector term's), so at theta_i = 0 its gradient is
exactly 0 whatever the curvature, and a step projected onto the bound can land there; near 0
the gradient is tiny even at a saddle.  So after Newton (:func:`minimize_checked`):

1. the Hessian on the free parameters (all but the theta entries at their bound) must be
   positive definite; where it is not, steps along its most negative eigenvector are tried;
2. every theta entry at its bound is probed inward with the free parameters re-optimized to
   first order, along the Schur-complement direction ``d = e_i - H_ff^-1 H_fi``: the deviance
   profiled over the free parameters has the one-sided curvature ``H_ii - H_if H_ff^-1 H_fi``
   there, and steps of several lengths along ``d`` also catch descent a curvature cannot see;
3. a trial point that lowers the deviance restarts quasi-Newton and Newton from there.

``converged`` then means: the final Newton decrement is below ``tol`` (or below ``1e3 tol`` where
no step along the Newton direction lowers the deviance, its rounding level), the Hessian on the
free parameters is positive definite, and no probe lowered the deviance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..optimize import descent_along, newton, probe_bounds, quasi_newton

__all__ = ["minimize_checked", "Outcome"]

#: step lengths of the probes (in units of the probed theta entry, or of the unit eigenvector)
PROBE_STEPS = (1e-3, 1e-2, 0.1, 0.5)
#: restarts from points the probes found
MAX_ROUNDS = 5


@dataclass
class Outcome:
    """What :func:`minimize_checked` did and found.

    Attributes
    ----------
    converged : bool
        Decrement below ``tol`` (see the module docstring), Hessian on the free parameters
        positive definite, no probe descent.
    message : str
        The checks' verdict, with the numbers.
    tried : list of (str, bool, int)
        Phases run: name, success, objective evaluations.
    decrement : float
        Newton decrement of the deviance at the end.
    min_eigenvalue : float
        Smallest eigenvalue of the Hessian on the free parameters (inf if none are free).
    at_bound : list of int
        Indices of the parameters at their lower bound at the end.
    descent : float
        The largest decrease a probe found at the final point (0: none).
    """

    converged: bool
    message: str
    tried: list = field(default_factory=list)
    decrement: float = np.inf
    min_eigenvalue: float = np.nan
    at_bound: list = field(default_factory=list)
    descent: float = 0.0


@dataclass
class _Check:
    min_eig: float
    at: np.ndarray
    best: tuple | None            # (x, f, what) of the best probe point, or None
    notes: list


def minimize_checked(fg, f, x0, bounds, hess_fn, *, tol, maxiter, phase, evals, names,
                     fd_idx=(), H0=None, qn_tol=1e-7, qn_label="", hess_label="", mirror=None,
                     exact=False):
    """Quasi-Newton, Newton and the second-order checks, restarting where a probe finds descent.

    Parameters
    ----------
    fg : callable
        ``x -> (deviance, gradient)`` (``inf`` where the deviance cannot be computed).
    f : callable
        ``x -> deviance`` (the probes need values only).
    x0 : ndarray
        Start.
    bounds : list of (lower, upper)
        ``None`` for no bound; lower bounds on theta's diagonal entries are the ones probed.
    hess_fn : callable
        ``(x, g) -> (H, evaluations)``: the Hessian for Newton's method and the checks.
    tol : float
        Tolerance on the Newton decrement (deviance units).
    maxiter : int
        Iterations of the quasi-Newton phase.
    phase : str
        Name of the objective in the ``tried`` entries ("Laplace", "AGQ(9)").
    evals : callable
        Objective evaluations so far (for the ``tried`` counts).
    names : list of str
        Parameter names for the messages.
    fd_idx : sequence of int
        Coordinates whose starting quasi-Newton curvature is taken from gradient differences.
    H0 : ndarray, optional
        Starting quasi-Newton curvature (then ``fd_idx`` is not used on the first run).
    qn_tol : float
        Decrement at which the quasi-Newton phase hands over to Newton.
    qn_label, hess_label : str
        How the quasi-Newton phase gets its gradient and ``hess_fn`` the Hessian (for the
        ``tried`` entries).
    mirror : dict, optional
        Template columns below a diagonal (:meth:`~mlmext.design.RandomEffectsDesign.column_mirrors`):
        a diagonal at 0 is also probed from its mirror image.
    exact : bool
        ``hess_fn`` gives the exact Hessian, at the cost of no objective evaluation when ``x``
        is the last point ``fg`` was called at: Newton from ``x0`` without the quasi-Newton
        phase, with a new Hessian at every point it accepts (so the checks see the Hessian at
        the end point).

    Returns
    -------
    x, fx, g, H, Outcome
    """
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds], dtype=float)
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds], dtype=float)
    tried = []
    x, h0, why = np.asarray(x0, dtype=float), H0, ""
    prev, restarts = None, 0
    for rnd in range(MAX_ROUNDS + 1):
        n0 = evals()
        if exact:
            xq, fgx = x, None
        else:
            xq, fq, gq, qi = quasi_newton(fg, x, bounds, list(fd_idx) if h0 is None else [],
                                          maxiter=maxiter, tol=qn_tol, H0=h0)
            tried.append((f"{phase}: quasi-Newton{qn_label}{why}", qi["converged"],
                          evals() - n0))
            n0, fgx = evals(), (fq, gq)
        xn, fn, gn, H, ni = newton(fg, xq, bounds, hess_fn, tol, maxit=min(50, maxiter),
                                   fgx=fgx, fresh=exact)
        tried.append((f"{phase}: Newton{hess_label}{why if exact else ''}", ni["converged"],
                      evals() - n0))
        if prev is not None and not fn < prev[1]:
            break                            # the restart did not improve: keep the last point
        n0 = evals()
        chk = _check(f, xn, fn, gn, H, lo, hi, names, tol, mirror)
        tried.append((f"{phase}: second-order check", chk.best is None, evals() - n0))
        prev = (xn, fn, gn, H, ni, chk)
        if chk.best is None or rnd == MAX_ROUNDS:
            break
        restarts += 1
        x, why = chk.best[0], f", restarted where {chk.best[2]}"
        h0 = None if len(fd_idx) else H          # new curvature columns at the new point
    xn, fn, gn, H, ni, chk = prev
    dec = float(ni.get("decrement", np.nan))
    pd_ok = chk.min_eig > 0
    descent = 0.0 if chk.best is None else fn - chk.best[1]
    # Newton's own verdict: the decrement below tol, or below 1e3 tol where no step along the
    # Newton direction lowers the deviance (then the decrement is at the deviance's rounding
    # level: PIRLS leaves ~1e-11 relative noise in it)
    dec_ok = bool(ni["converged"])
    converged = bool(dec_ok and pd_ok and chk.best is None)
    if dec < tol:
        parts = [f"Newton decrement {dec:.3g} (< tol = {tol:g})"]
    elif dec_ok:
        parts = [f"Newton decrement {dec:.3g} (above tol = {tol:g}, but no step along the Newton "
                 "direction lowers the deviance: its rounding level)"]
    else:
        parts = [f"Newton decrement {dec:.3g} (not below tol = {tol:g})"]
    if not np.isfinite(chk.min_eig):
        parts.append("no free parameters" if chk.min_eig == np.inf else
                     "the Hessian is not finite")
    else:
        parts.append(f"Hessian on the free parameters {'' if pd_ok else 'NOT '}positive definite"
                     f" (smallest eigenvalue {chk.min_eig:.3g})")
    parts += chk.notes
    if chk.best is not None:
        parts.append(f"a probe still lowers the deviance by {descent:.3g} ({chk.best[2]}) after "
                     f"{restarts} restart{'s' if restarts != 1 else ''}")
    if not dec_ok and ni.get("message"):
        parts.append(ni["message"])
    out = Outcome(converged=converged, message="; ".join(parts), tried=tried, decrement=dec,
                  min_eigenvalue=float(chk.min_eig),
                  at_bound=[int(i) for i in np.flatnonzero(chk.at)], descent=float(descent))
    return xn, fn, gn, H, out


def _check(f, x, fx, g, H, lo, hi, names, tol, mirror=None):
    """Curvature on the free parameters and probes off the bounds; the best descent found
    (:func:`mlmext.optimize.descent_along`, :func:`mlmext.optimize.probe_bounds`)."""
    at = np.isfinite(lo) & (x <= lo)
    free = ~at
    if not np.all(np.isfinite(H)):
        return _Check(np.nan, at, None, ["no probes (Hessian not finite)"])
    Hs = 0.5 * (H + H.T)
    if free.any():
        w, V = np.linalg.eigh(Hs[np.ix_(free, free)])
        min_eig = float(w[0])
    else:
        min_eig = np.inf
    thresh = max(10.0 * tol, 1e-10 * max(1.0, abs(fx)))   # a decrease above PIRLS's rounding
    best = None
    if free.any() and min_eig < 0:
        v = np.zeros(x.size)
        v[free] = V[:, 0]
        v /= np.max(np.abs(v))
        what = f"a step along the Hessian's negative-curvature direction (eigenvalue {min_eig:.3g})"
        best, _ = descent_along(f, x, fx, [(v, what), (-v, what)], lo, hi, steps=PROBE_STEPS,
                                threshold=thresh)
    found, probed, _ = probe_bounds(f, x, fx, g, Hs, lo, hi, steps=PROBE_STEPS, mirror=mirror,
                                    threshold=thresh, names=names)
    if found is not None and (best is None or found[1] < best[1]):
        best = found
    notes = [f"{names[p['index']]} at its bound{' (mirror image)' if p['mirrored'] else ''}: "
             f"one-sided curvature {p['curvature']:.3g}, slope {p['slope']:.3g}, "
             f"{'descent found' if p['descent'] else 'no descent'} inward" for p in probed]
    return _Check(min_eig, at, best, notes)
