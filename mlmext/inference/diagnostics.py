"""Diagnostics of a fit: case-deletion influence and leverage (HLMdiag, in :mod:`.deletion`) and a
convergence check."""
from __future__ import annotations

import numpy as np

from ._common import _raw, _require_independent, _require_lmm
from .deletion import cooks_distance, influence, leverage  # noqa: F401  (their documented home)
from ..laplace import check_positive
from ..optimize import hessian, jacobian


class ConvergenceCheck:
    """Result of :func:`check_convergence`.

    Attributes
    ----------
    converged : bool
    gradient : numpy.ndarray
        Gradient of the profiled deviance with respect to theta at the estimate.
    hessian : numpy.ndarray
        Hessian of the profiled deviance with respect to theta at the estimate.
    newton_step : numpy.ndarray
        ``H^-1 g``.
    decrement : float
        The deviance decrease a Newton step would still achieve, ``g' H^-1 g / 2``
        (deviance units: independent of the sample size).
    lme4_maxgrad : float
        lme4's statistic ``max(min(|H^-1 g|, |g|))`` (its default tolerance is 0.002).
    min_eigenvalue : float
        Smallest eigenvalue of the Hessian in theta times its predictor's root mean square
        (the optimizer's scaled variables: unit-free).
    messages : list of str
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        msg = "; ".join(self.messages) if self.messages else "ok"
        return (f"ConvergenceCheck(converged={self.converged}, decrement={self.decrement:.3g}, "
                f"lme4_maxgrad={self.lme4_maxgrad:.3g}, min_eigenvalue={self.min_eigenvalue:.3g}: {msg})")


def check_convergence(res, tol=1e-5):
    """Gradient-based check that the optimizer reached a minimum of the profiled deviance.

    lme4 flags a fit when ``max(min(|H^-1 g|, |g|)) > 0.002`` for the gradient g and
    Hessian H of the deviance in theta; the absolute gradient grows with n, so large data
    sets raise false alarms.  This check uses the Newton decrement ``g' H^-1 g / 2``, the
    deviance decrease still available from the estimate, which has deviance units whatever
    the size of the data: the fit passes when it is below ``tol`` and H is positive
    definite, with derivatives on both sides of a zero standard deviation (the deviance
    extends smoothly across it).  Derivatives are Richardson-
    extrapolated central differences; no n-sized work per evaluation.

    Parameters
    ----------
    res : LMM results
    tol : float
        Tolerance on the Newton decrement (deviance units).

    Returns
    -------
    ConvergenceCheck
    """
    _require_independent(res, "check_convergence()")
    _require_lmm(res, "check_convergence")
    check_positive(tol=tol)          # (0 or below: no fit could pass, a NaN every fit would)
    r = _raw(res)
    model = r.model
    f = model.deviance(r.reml).value
    th = r.theta.copy()
    # differences in the predictors' units (theta * rms of its column of Z): the steps then
    # mean alike for a slope on x and on x * 1e6; reported back in theta's units
    units = model.re_design.theta_units()
    fz = lambda z: f(z / units)
    g = jacobian(lambda z: np.array([fz(z)]), th * units)[0] * units
    H = hessian(fz, th * units) * np.outer(units, units)
    # no parameter is held at a bound: the deviance is smooth across a zero diagonal (a
    # template column and its negative give the same model), so a zero standard deviation
    # is a minimum only if the deviance rises on both sides: a gradient test at the bound
    # cannot tell a saddle (gradient 0, negative curvature) or a mirror image's descent
    free = np.ones(th.size, dtype=bool)
    messages = []
    Hf = H[np.ix_(free, free)]
    gf = g[free]
    if free.any():
        Hz = Hf / np.outer(units[free], units[free])       # eigenvalues in scaled units
        ev = np.linalg.eigvalsh((Hz + Hz.T) / 2)
        mine = float(ev.min())
        try:
            step = np.linalg.solve(Hf, gf)
        except np.linalg.LinAlgError:
            step = np.full(gf.size, np.inf)
        dec = float(gf @ step / 2) if mine > 0 else float("nan")
    else:
        mine, step, dec = float("inf"), np.zeros(0), 0.0
    full_step = np.zeros(th.size)
    full_step[free] = step
    lme4_stat = float(np.max(np.minimum(np.abs(full_step), np.abs(g)))) if th.size else 0.0
    if mine <= 0:
        messages.append(f"the Hessian is not positive definite (smallest eigenvalue {mine:.3g}): "
                        "not at a minimum")
    elif dec > tol:
        messages.append(f"a Newton step would lower the deviance by {dec:.3g} (> tol = {tol:g})")

    return ConvergenceCheck(converged=not messages, gradient=g, hessian=H, newton_step=full_step,
                            decrement=dec, lme4_maxgrad=lme4_stat, min_eigenvalue=mine,
                            messages=messages)
