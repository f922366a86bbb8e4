"""Diagnostics of a fit: group-deletion influence (HLMdiag) and a convergence check."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg, sparse

from ._common import _fe_names, _params, _raw, _require_lmm
from ..optimize import hessian, jacobian
from ._refit import _rebuild_model, _refit


def _group_block(model, group):
    des = model.re_design
    if group is None:
        return des.terms[0]
    for t in des.terms:
        if t.name == group or ":".join(t.factors) == group or group in (t.factors if len(t.factors) == 1 else ()):
            return t
    raise ValueError(f"unknown grouping factor {group!r}; the model has {[t.name for t in des.terms]}")


def influence(res, group=None, method="one-step"):
    """Influence of each level of a grouping factor on the fixed effects.

    ``method="one-step"`` is HLMdiag's ``cooks.distance(model, level = group)``: with the
    variance components held at their estimates, deleting the rows I of a level changes
    the GLS fixed effects by
    ``d_I = (X'V^-1X)^-1 X' V^-1[:, I] P_II^-1 (V^-1 e)_I`` (``P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1``,
    ``e = y - X beta``), and Cook's distance is ``D_I = d_I' (X'V^-1X) d_I / p``.  It is
    computed through ``V^-1 = sigma^-2 (I - Z Lambda M^-1 Lambda' Z')`` without forming an
    n x n matrix.  ``method="refit"`` refits the model without each level instead (the
    variance components re-estimated) and uses the same distance.

    Parameters
    ----------
    res : LMM results
    group : str, optional
        Grouping factor (the first in lme4's order by default).
    method : {"one-step", "refit"}

    Returns
    -------
    pandas.DataFrame
        Index: the levels; columns ``cooks_d`` and one per fixed effect with the change
        ``beta_hat - beta_hat(without the level)``.
    """
    _require_lmm(res, "Group-deletion influence")
    r = _raw(res)
    model = r.model
    t = _group_block(model, group)
    X = np.asarray(model.exog, dtype=float)
    p = X.shape[1]
    beta = _params(r)
    names = _fe_names(r)
    rows = []
    if method == "one-step":
        des = model.re_design
        w = np.asarray(model.weights, dtype=float)
        sw = np.sqrt(w)
        ZL = sparse.diags(sw) @ (des.Z("csr") @ des.Lambda(r.theta))   # W^1/2 Z Lambda
        ZL = ZL.tocsr()
        q = ZL.shape[1]
        M = (ZL.T @ ZL).toarray() + np.eye(q)
        Mc = linalg.cho_factor(M, lower=True)
        s2 = r.sigma ** 2

        def Vinv(B):                                         # V = sigma^2 (W^-1 + Z Lam Lam' Z')
            Bw = B * sw[:, None]
            return (Bw - ZL @ linalg.cho_solve(Mc, np.asarray(ZL.T @ Bw))) * sw[:, None] / s2

        y = np.asarray(model.endog, dtype=float) - np.asarray(model.offset, dtype=float)
        VX = Vinv(X)
        XVX = X.T @ VX
        C = np.linalg.inv(XVX)
        bgls = C @ (VX.T @ y)
        e = y - X @ bgls
        Ve = Vinv(e[:, None])[:, 0]
        Minv = linalg.cho_solve(Mc, np.eye(q))
        order = np.argsort(t.codes, kind="stable")
        starts = np.searchsorted(t.codes[order], np.arange(t.m + 1))
        for g in range(t.m):
            I = order[starts[g]:starts[g + 1]]
            F = ZL[I].toarray()
            VII = (np.diag(np.ones(I.size)) - F @ Minv @ F.T) * np.outer(sw[I], sw[I]) / s2
            PII = VII - VX[I] @ C @ VX[I].T
            d = C @ (VX[I].T @ np.linalg.solve(PII, Ve[I]))
            rows.append(np.concatenate([[d @ XVX @ d / p], d]))
    elif method == "refit":
        Vb = np.asarray(r.cov_params(), dtype=float)
        Vbi = np.linalg.inv(Vb)
        for g in range(t.m):
            keep = t.codes != g
            m = _rebuild_model(model, keep=keep)
            fit = _refit(m, r, start=False)
            d = beta - _params(fit)
            rows.append(np.concatenate([[d @ Vbi @ d / p], d]))
    else:
        raise ValueError("method must be 'one-step' or 'refit'")
    out = pd.DataFrame(rows, index=pd.Index(t.levels, name=t.name), columns=["cooks_d"] + names)
    out.attrs["method"] = method
    return out


def cooks_distance(res, group=None, method="one-step"):
    """Cook's distance per level of a grouping factor (see :func:`influence`).

    Returns
    -------
    pandas.Series
    """
    return influence(res, group=group, method=method)["cooks_d"]


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
    _require_lmm(res, "check_convergence")
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
