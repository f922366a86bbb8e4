"""The default tests of LMM results: t tests on Satterthwaite (or Kenward-Roger) df, as lmerTest.

``fit(ddf=...)`` records the method on the results (``res.ddf``); ``pvalues``, ``conf_int()``
(Wald), ``t_test``, ``wald_test`` and ``summary()`` then use it.  The df are computed on first
use of those (never during the fit: bootstrap, profile and cross-validation refits do not pay
for them) and cached with the results.  Cluster-robust results keep their own df.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from statsmodels.stats.contrast import ContrastResults

from ._common import _cache, _raw
from .ddf import _ddf_frame, _ddf_method, kenward_roger_ftest, satterthwaite_ftest

__all__ = ["check_fit_ddf", "ddf_active", "default_ddf_frame", "default_wald_test", "ddf_note"]


def check_fit_ddf(ddf, reml):
    """The df method ``fit(ddf=...)`` names, normalized; ValueError for unknown ones and for
    Kenward-Roger with an ML fit (pbkrtest and lmerTest define it for REML fits only)."""
    if not isinstance(ddf, str):
        raise ValueError(f"ddf must be 'satterthwaite', 'kenward-roger' or 'z'; got {ddf!r}")
    if ddf.strip().lower() == "z":
        return "z"
    try:
        method = _ddf_method(ddf)
    except ValueError:
        raise ValueError(f"ddf must be 'satterthwaite', 'kenward-roger' or 'z'; got {ddf!r}") from None
    if method == "kenward-roger" and not reml:
        raise ValueError("ddf='kenward-roger' needs a REML fit (Kenward-Roger's method is defined "
                         "for REML estimates, as in pbkrtest and lmerTest): fit with reml=True, "
                         "or use ddf='satterthwaite' with reml=False")
    return method


def ddf_active(res):
    """True when the result's tests are t tests on its ``ddf`` (model-based covariance)."""
    r = _raw(res)
    return getattr(r, "ddf", "z") != "z" and r.cov_type == "nonrobust"


def default_ddf_frame(res, alpha=0.05):
    """lmerTest's coefficient table on the fit's df method (cached per ``alpha``): the one
    source of ``summary()``, ``pvalues`` and ``conf_int()``, so they agree to the last digit."""
    r = _raw(res)
    c = _cache(r)
    key = ("ddf_frame", r.ddf, float(alpha))
    if key not in c:
        c[key] = _ddf_frame(r, r.ddf, alpha)
    return c[key]


def default_pvalues(res):
    """Two-sided p-values of the t tests on the fit's df (an array, as statsmodels')."""
    return default_ddf_frame(res)["P>|t|"].to_numpy(copy=True)      # the cache stays as it is


def default_conf_int(res, alpha):
    """Wald intervals with t quantiles on the fit's df, as an (k, 2) array."""
    fr = default_ddf_frame(res, alpha)
    return fr.iloc[:, -2:].to_numpy(copy=True)


def default_wald_test(res, r_matrix):
    """F test of ``R beta = q`` with Satterthwaite's (lmerTest's ``contestMD``) or Kenward-Roger's
    denominator df, as statsmodels' ``ContrastResults``."""
    r = _raw(res)
    f = satterthwaite_ftest if r.ddf == "satterthwaite" else kenward_roger_ftest
    out = f(r, r_matrix)
    cr = ContrastResults(F=float(out["F"]), df_num=out["df_num"], df_denom=float(out["df_denom"]))
    cr.distribution = "F"
    return cr


def ddf_note(res, ddf):
    """The summary's note on the covariance of the fixed effects and the tests shown."""
    cov = "sigma^2 (X' V^-1 X)^-1 at the estimated variance components (lme4's vcov)"
    if ddf is None or ddf == "z":
        return f"{cov}; z tests (fit(ddf='z'))"
    if _ddf_method(ddf) == "kenward-roger":
        return ("Kenward-Roger's adjusted covariance (pbkrtest's vcovAdj) for the standard errors; "
                "t tests on Kenward-Roger df (lmerTest)")
    return f"{cov}; t tests on Satterthwaite df (lmerTest)"


def df_series(res):
    """The df per fixed effect of the default tests (None for z tests); a cluster-robust
    result's own (``df_resid_inference``)."""
    r = _raw(res)
    if r.cov_type != "nonrobust":
        dfs = getattr(r, "df_resid_inference", None) if r.use_t else None
        return None if dfs is None else pd.Series(np.broadcast_to(dfs, (r.k_fe,)).astype(float),
                                                  index=list(r.model.exog_names), name="df")
    if not ddf_active(r):
        return None
    fr = default_ddf_frame(res)
    return pd.Series(fr["df"].to_numpy(), index=fr.index, name="df")


def summary_ddf(res, ddf):
    """The df method of ``summary(ddf=...)``: the fit's own when None (model-based LMMs)."""
    r = _raw(res)
    if ddf is None:
        return r.ddf if ddf_active(r) else None
    return "z" if isinstance(ddf, str) and ddf.strip().lower() == "z" else ddf


def z_results(res):
    """The result itself, or for t tests on df a copy with z tests (``summary(ddf="z")``)."""
    r = _raw(res)
    if not ddf_active(r):
        return r
    new = copy.copy(r)
    new._cache = {}                              # statsmodels' cached pvalues, ...
    new.__dict__["_inference_cache"] = {}
    new.ddf, new.use_t = "z", False
    return new
