"""What the profile objectives share: lme4's names of the variance parameters, and the
bounded minimization (with warm starts) each profile point needs."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize

from ..design import lower_tri
from ._common import _raw

__all__ = ["varpar_names"]


def check_names(names):
    """ValueError unless ``names`` is one of the row-name styles (any other value gave the
    descriptive names in silence: ``names="LME4"``)."""
    if not (isinstance(names, str) and names in ("descriptive", "lme4")):
        raise ValueError(f"names must be 'descriptive' or 'lme4'; got {names!r}")


def varpar_names(res, names="descriptive"):
    """Names of the variance parameters on the sd / correlation scale (plus ``sigma``).

    Parameters
    ----------
    res : MixedResults
    names : {"descriptive", "lme4"}
        ``sd_Days|Subject``, ``cor_Days.Intercept|Subject``, ``sigma`` (lme4's
        ``oldNames = FALSE`` with mlmext's column names), or ``.sig01``, ..., ``.sigma``.
        GLMMs have no ``sigma``.
    """
    r = _raw(res)
    des = r.model.re_design
    out = []
    for label, t in zip(r._term_names(), des.terms):
        for i, j in lower_tri(t.q):
            if i == j:
                out.append(f"sd_{t.colnames[i]}|{label}")
            else:
                out.append(f"cor_{t.colnames[i]}.{t.colnames[j]}|{label}")
    if names == "lme4":
        out = [f".sig{k + 1:02d}" for k in range(len(out))]
        return out + ([".sigma"] if r._has_residual else [])
    if names != "descriptive":
        raise ValueError("names must be 'descriptive' or 'lme4'")
    return out + (["sigma"] if r._has_residual else [])


def _varpar_kinds(res):
    """'sd' or 'cor' per sd/cor parameter (theta order)."""
    return ["sd" if i == j else "cor"
            for t in _raw(res).model.re_design.terms for i, j in lower_tri(t.q)]


def _bmin(f, x0, lo, hi, scale):
    """Minimize f over a box by L-BFGS-B in scaled coordinates with central-difference gradients."""
    x0 = np.asarray(x0, dtype=float)
    if x0.size == 0:
        return float(f(x0)), x0
    s = np.asarray(scale, dtype=float)
    ylo, yhi = lo / s, hi / s
    g = lambda y: f(y * s)

    def jac(y):
        h = 1e-5 * np.maximum(1.0, np.abs(y))
        out = np.empty(y.size)
        for i in range(y.size):
            up, dn = y.copy(), y.copy()
            a = min(h[i], yhi[i] - y[i]) if np.isfinite(yhi[i]) else h[i]
            b = min(h[i], y[i] - ylo[i]) if np.isfinite(ylo[i]) else h[i]
            if a <= 0 and b <= 0:
                out[i] = 0.0
                continue
            up[i] += max(a, 0)
            dn[i] -= max(b, 0)
            out[i] = (g(up) - g(dn)) / (max(a, 0) + max(b, 0))
        return out

    y0 = np.clip(x0 / s, ylo, yhi)
    bounds = list(zip(np.where(np.isfinite(ylo), ylo, None), np.where(np.isfinite(yhi), yhi, None)))
    best = None
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = optimize.minimize(g, y0, jac=jac, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-6})
        if best is None or r.fun <= best.fun:
            best = r
        if best is r and r.success:
            break
        y0 = best.x
    return float(best.fun), best.x * s


def _best_start(f, cands, lo, hi):
    """The candidate start (clipped to the box) with the lowest f."""
    cands = [np.clip(np.asarray(c, dtype=float), lo, hi) for c in cands]
    if len(cands) == 1:
        return cands[0]
    vals = np.array([f(c) for c in cands], dtype=float)
    vals[~np.isfinite(vals)] = np.nan
    return cands[int(np.nanargmin(vals))] if np.any(np.isfinite(vals)) else cands[0]


def _box_steps(x, lo, hi, h):
    """(up, down) step sizes of at most h each that stay inside [lo, hi]."""
    up = np.minimum(h, np.where(np.isfinite(hi), hi - x, h))
    dn = np.minimum(h, np.where(np.isfinite(lo), x - lo, h))
    return np.maximum(up, 0.0), np.maximum(dn, 0.0)
