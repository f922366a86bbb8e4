"""Variance explained: Nakagawa & Schielzeth's R², ICC, Snijders & Bosker's R²."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from statsmodels.genmod import families

from ..design import RandomEffectsDesign, ReTerm
from ._common import (_beta, _cache, _family, _fe_names, _is_lmm, _params, _raw,
                      _require_independent, _require_lmm, _require_no_zero_part, _same_rows)
from ._refit import _rebuild_model, _refit

# variance of the standard logistic, normal and Gumbel distributions: the residual variance on
# the latent scale of a logit, probit and cloglog model
_LATENT_VARIANCE = {"logit": np.pi ** 2 / 3, "probit": 1.0, "cloglog": np.pi ** 2 / 6}


def _distribution_variance(res):
    """Residual ("distribution-specific") variance on the latent scale (insight / performance)."""
    r = _raw(res)
    fam = _family(r)
    if fam is None:
        if _is_lmm(r) or getattr(r, "_has_residual", False):
            return r.sigma ** 2
        # ordinal (clmm): the latent variable's variance for the link
        link = getattr(r.model, "link", "logit")
        link = str(getattr(link, "name", link)).lower()
        return _LATENT_VARIANCE.get(link, _LATENT_VARIANCE["logit"])
    link = type(fam.link).__name__.lower()
    if isinstance(fam, families.Gaussian):
        return r.sigma ** 2
    if isinstance(fam, families.Binomial):
        if link not in _LATENT_VARIANCE:
            raise NotImplementedError(f"R2 for a binomial model with a {link} link")
        return _LATENT_VARIANCE[link]
    if isinstance(fam, families.Poisson):
        if link != "log":
            raise NotImplementedError(f"R2 for a Poisson model with a {link} link")
        null = _null_model_fit(r)
        mu = float(np.exp(_params(null)[0]))
        return float(np.log1p(1.0 / mu))
    raise NotImplementedError(f"R2 / ICC for the {type(fam).__name__} family is not implemented")


def _null_model_fit(res, intercept_only_re=False):
    """Refit with the intercept as the only fixed effect (same random effects)."""
    r = _raw(res)
    c = _cache(r)
    key = ("null", intercept_only_re)
    if key in c:
        return c[key]
    model = r.model
    X = getattr(model.data, "orig_exog", None)
    idx = X.index if isinstance(X, pd.DataFrame) else None
    X0 = pd.DataFrame({"Intercept": np.ones(model.exog.shape[0])}, index=idx)   # rows, not nobs
    des = None
    if intercept_only_re:
        terms = []
        seen = set()
        for t in model.re_design.terms:
            if t.factors in seen:
                continue
            seen.add(t.factors)
            nt = ReTerm(t.name, t.factors, "1", np.ones((t.X.shape[0], 1)), ["Intercept"], t.codes, t.levels)
            terms.append(nt)
        des = RandomEffectsDesign(terms)
    m0 = _rebuild_model(model, exog=X0, design=des)
    c[key] = _refit(m0, r, start=False)
    return c[key]


def _variance_components(res):
    """var_fixed, var_random and var_residual as insight::get_variance defines them."""
    r = _raw(res)
    model = r.model
    X = np.asarray(model.exog, dtype=float)
    eta = X @ _beta(r)
    var_fixed = float(np.var(eta, ddof=1)) if eta.size > 1 else 0.0
    des = model.re_design
    s2 = r.sigma ** 2 if getattr(r, "_has_residual", True) and _is_lmm(r) else 1.0
    fe = _fe_names(r)
    var_random = 0.0
    for t in des.terms:
        Sig = s2 * des.term_cov(r.theta, t)
        missing = [c for c in t.colnames if c not in fe and c != "Intercept"]
        if missing:
            warnings.warn(f"random slopes {missing} of ({t.lhs} | {t.name}) are not fixed effects; "
                          "their variance is averaged over their own values", UserWarning, stacklevel=3)
        var_random += float(np.einsum("ij,jk,ik->", t.X, Sig, t.X)) / t.X.shape[0]
    var_resid = _distribution_variance(r)
    return var_fixed, var_random, var_resid


def r2_nakagawa(res):
    """Nakagawa & Schielzeth's marginal and conditional R² (Johnson's extension for slopes).

    ``var_fixed`` is the variance of the fixed-effects linear predictor, ``var_random``
    the mean over observations of ``z_i' Sigma z_i`` summed over random-effects terms, and
    ``var_residual`` the residual variance (LMM) or the family's latent-scale variance
    (binomial: pi^2/3 logit, 1 probit, pi^2/6 cloglog; Poisson log link: log(1 + 1/mu) with
    mu the exponentiated intercept of the intercept-only model), as ``performance::r2_nakagawa``.

    Returns
    -------
    pandas.Series
        ``marginal``, ``conditional``, and the three variances.
    """
    _require_independent(res, "r2_nakagawa()")
    _require_no_zero_part(res, "r2_nakagawa()")
    vf, vr, ve = _variance_components(res)
    tot = vf + vr + ve
    return pd.Series({"marginal": vf / tot, "conditional": (vf + vr) / tot, "var_fixed": vf,
                      "var_random": vr, "var_residual": ve}, name="r2_nakagawa")


def icc(res):
    """Intraclass correlation: adjusted ``vr / (vr + ve)`` and conditional ``vr / (vf + vr + ve)``.

    Variances as in :func:`r2_nakagawa` (``performance::icc``).

    Returns
    -------
    pandas.Series
        ``adjusted``, ``conditional``.
    """
    _require_independent(res, "icc()")
    _require_no_zero_part(res, "icc()")
    vf, vr, ve = _variance_components(res)
    return pd.Series({"adjusted": vr / (vr + ve), "conditional": vr / (vf + vr + ve)}, name="icc")


def r2_snijders_bosker(res, null=None, group_size="mean"):
    """Snijders & Bosker's level-1 and level-2 R² for a two-level random-intercept model.

    ``R2_1 = 1 - (s2 + t2) / (s2_0 + t2_0)`` and
    ``R2_2 = 1 - (s2 / nbar + t2) / (s2_0 / nbar + t2_0)``, where ``s2``, ``t2`` are the
    residual and random-intercept variances of the model and ``s2_0``, ``t2_0`` those of the
    empty model ``y ~ 1 + (1 | g)`` (Snijders & Bosker 2012, sec. 7.1).

    Parameters
    ----------
    res : LMM results with a single random-intercept term ``(1 | g)``
    null : LMM results, optional
        The empty model's fit; refitted (same REML/ML) when omitted.
    group_size : {"mean", "harmonic"} or float
        ``nbar``: the mean group size ``n / J``, the harmonic mean of the group sizes, or a
        given value.

    Returns
    -------
    pandas.Series
        ``level1``, ``level2``, ``nbar``.
    """
    _require_independent(res, "r2_snijders_bosker()")
    _require_lmm(res, "Snijders-Bosker R2")
    r = _raw(res)
    des = r.model.re_design
    if len(des.terms) != 1 or des.terms[0].q != 1 or des.terms[0].colnames != ["Intercept"]:
        raise ValueError("the Snijders-Bosker R2 is defined here for models with one random "
                         "intercept (1 | g) only")
    t = des.terms[0]
    n0 = _raw(null) if null is not None else _null_model_fit(r)
    if null is not None:
        ok, why = _same_rows(r, n0)
        if not ok:
            raise ValueError(f"the null model was fitted to other data ({why})")
    t2 = r.sigma ** 2 * r.theta[0] ** 2
    s2 = r.sigma ** 2
    t20 = n0.sigma ** 2 * n0.theta[0] ** 2
    s20 = n0.sigma ** 2
    counts = np.bincount(t.codes, minlength=t.m)
    if group_size == "mean":
        nbar = counts.sum() / t.m
    elif group_size == "harmonic":
        nbar = t.m / np.sum(1.0 / counts)
    else:
        nbar = float(group_size)
    return pd.Series({"level1": 1 - (s2 + t2) / (s20 + t20),
                      "level2": 1 - (s2 / nbar + t2) / (s20 / nbar + t20), "nbar": nbar},
                     name="r2_snijders_bosker")
