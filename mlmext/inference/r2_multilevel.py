"""More R² of mixed models: Rights & Sterba's decomposition (R's r2mlm), the likelihood-ratio
R² (MuMIn's ``r.squaredLR``) and mitml's ``multilevelR2`` (RB1, RB2, SB, MVP).

Rights & Sterba (2019, Psychological Methods 24(3), 309-338) split the model-implied variance
of the response of a two-level LMM into five parts: the fixed part of the level-1 (within-
cluster) predictors ``f1 = gamma_w' Phi_w gamma_w``, the fixed part of the level-2 (between)
predictors ``f2 = gamma_b' Phi_b gamma_b``, the random-slope variation ``v = tr(T Sigma)``, the
random-intercept variation ``m = tau_00`` and the residual ``sigma^2``; the R² measures are
sums of these parts over the total, the within (``f1 + v + sigma^2``) or the between
(``f2 + m``) variance.  The ``Phi``, ``Sigma`` are sample covariances (``n - 1``) of the fitted
rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.genmod import families

from .._args import check_flag
from ._common import (_beta, _family, _fe_names, _is_lmm, _raw, _require_independent,
                      _require_lmm, _require_no_zero_part, _same_rows)
from .variance_explained import _null_model_fit

_R2_ROWS = ["f1", "f2", "v", "m", "f", "fv", "fvm"]
_PARTS = ["fixed, within", "fixed, between", "slope variation", "mean variation", "sigma2"]


def _one_grouping_factor(r, what):
    """The random-effects terms of an LMM with a single grouping factor (any number of terms)."""
    terms = list(r.model.re_design.terms)
    if len({t.factors for t in terms}) != 1:
        raise ValueError(f"{what} is defined for two-level models with one grouping factor; "
                         f"this model has {sorted({t.name for t in terms})}")
    return terms


def _random_block(r, terms):
    """(Z, Tau): the random-effects columns of the grouping factor, intercept first, and their
    covariance (block-diagonal over the terms, as r2mlm's ``bdiag(VarCorr(fit))``)."""
    des = r.model.re_design
    names, cols, blocks = [], [], []
    for t in terms:
        names += t.colnames
        cols.append(t.X)
        blocks.append(r.sigma ** 2 * des.term_cov(r.theta, t))
    Z = np.hstack(cols)
    q = Z.shape[1]
    tau = np.zeros((q, q))
    i = 0
    for b in blocks:
        tau[i:i + b.shape[0], i:i + b.shape[0]] = b
        i += b.shape[0]
    if "Intercept" in names:           # the intercept first (tau_00)
        k = names.index("Intercept")
        order = [k] + [j for j in range(q) if j != k]
        Z, tau, names = Z[:, order], tau[np.ix_(order, order)], [names[j] for j in order]
    else:                              # no random intercept: tau_00 = 0
        Z = np.hstack([np.ones((Z.shape[0], 1)), Z])
        tau = np.pad(tau, ((1, 0), (1, 0)))
        names = ["Intercept"] + names
    return Z, tau, names


def _cluster_means(x, codes, m):
    counts = np.bincount(codes, minlength=m)
    return np.bincount(codes, weights=x, minlength=m) / np.maximum(counts, 1)


def level_of_columns(X, names, codes, m, tol=1e-8):
    """Split fixed-effects columns into level 1 (varying within a cluster) and level 2
    (constant within every cluster); the intercept belongs to neither.

    Returns
    -------
    within, between : list of str
    centered : bool
        Whether every level-1 column has cluster means of zero (cluster-mean centred).
    """
    within, between, centered = [], [], True
    for j, name in enumerate(names):
        x = X[:, j]
        if name == "Intercept" or np.ptp(x) == 0:
            continue
        scale = max(float(np.std(x)), 1.0)
        cm = _cluster_means(x, codes, m)
        if np.max(np.abs(x - cm[codes])) <= tol * scale:
            between.append(name)
        else:
            within.append(name)
            centered &= bool(np.max(np.abs(cm)) <= 1e-7 * scale)
    return within, between, centered


def decompose_variances(f1, f2, v, m, tau00, sigma2, f=None, centered=True):
    """Rights & Sterba's proportions and R² measures from the variance parts.

    Parameters
    ----------
    f1, f2 : float
        ``gamma_w' Phi_w gamma_w`` and ``gamma_b' Phi_b gamma_b``.
    v : float
        Random-slope variance ``tr(Tau Cov(z))`` (``z`` the random-effects columns).
    m : float
        ``mean(z)' Tau mean(z)``: the random-intercept variation (``tau_00`` for centred slopes).
    tau00 : float
        Random-intercept variance (the between-cluster variance's random part).
    sigma2 : float
        Residual variance.
    f : float, optional
        Variance of the whole fixed part (used when ``centered`` is False).
    centered : bool
        Level-1 predictors are cluster-mean centred: the total, within and between measures
        (r2mlm's ``clustermeancentered = TRUE``); else the total ones only.

    Returns
    -------
    r2, decomposition : pandas.DataFrame
        r2mlm's ``R2s`` (rows f1, f2, v, m, f, fv, fvm) and ``Decompositions`` (rows fixed
        within, fixed between, slope variation, mean variation, sigma2), columns ``total``,
        ``within``, ``between``; NaN where r2mlm prints NA.
    """
    nan = np.nan
    if centered:
        W, B = f1 + v + sigma2, f2 + tau00
        T = W + B
        tot = [f1 / T, f2 / T, v / T, m / T, sigma2 / T]
        dec = pd.DataFrame({"total": tot, "within": [f1 / W, nan, v / W, nan, sigma2 / W],
                            "between": [nan, f2 / B, nan, tau00 / B, nan]}, index=_PARTS)
        r2 = pd.DataFrame({
            "total": tot[:4] + [tot[0] + tot[1], tot[0] + tot[1] + tot[2], sum(tot[:4])],
            "within": [f1 / W, nan, v / W, nan, nan, (f1 + v) / W, nan],
            "between": [nan, f2 / B, nan, tau00 / B, nan, nan, nan]}, index=_R2_ROWS)
    else:
        T = v + f + m + sigma2
        dec = pd.DataFrame({"total": [f / T, v / T, m / T, sigma2 / T]},
                           index=["fixed", "slope variation", "mean variation", "sigma2"])
        r2 = pd.DataFrame({"total": [f / T, v / T, m / T, (f + v) / T, (f + v + m) / T]},
                          index=["f", "v", "m", "fv", "fvm"])
    for d in (r2, dec):
        d.index.name = "measure" if d is r2 else "part"
    return r2, dec


class R2Decomposition:
    """Rights & Sterba's R² measures of a fit (R's ``r2mlm`` output).

    Attributes
    ----------
    r2 : pandas.DataFrame
        The R² measures: rows ``f1``, ``f2``, ``v``, ``m``, ``f``, ``fv``, ``fvm``, columns
        ``total``, ``within``, ``between`` (R2_f1^w is ``r2.loc["f1", "within"]``).
    decomposition : pandas.DataFrame
        The proportions of the total / within / between variance of each part.
    within, between : list of str
        The fixed-effects columns taken as level-1 and level-2 predictors.
    random : list of str
        The random-effects columns (intercept first).
    centered : bool
        Whether the level-1 predictors are cluster-mean centred (else: total measures only).
    parts : pandas.Series
        The variances ``f1``, ``f2``, ``v``, ``m``, ``tau00``, ``sigma2``, ``f``.
    """

    def __init__(self, r2, decomposition, within, between, random, centered, parts):
        for k, v in dict(r2=r2, decomposition=decomposition, within=tuple(within),
                         between=tuple(between), random=tuple(random), centered=bool(centered),
                         parts=parts).items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError("R2Decomposition is read-only")

    def __repr__(self):
        note = "" if self.centered else ("\n(level-1 predictors not cluster-mean centred: "
                                         "total measures only)")
        return (f"Rights & Sterba R2\nDecompositions:\n{self.decomposition}\n\nR2s:\n{self.r2}"
                + note)


def r2_rights_sterba(res):
    """Rights & Sterba's (2019) variance decomposition and R² measures of a two-level LMM,
    as R's ``r2mlm(fit)``.

    Fixed-effects columns constant within every cluster are level-2 (between) predictors, the
    others level-1 (within) predictors.  When every level-1 column is cluster-mean centred,
    the total, within and between measures are given (``R2_f1^t``, ``R2_f1^w``,
    ``R2_v^w``, ``R2_f2^b``, ``R2_m^b``, ...); otherwise the total ones only
    (``R2_f^t``, ``R2_v^t``, ``R2_m^t``, ``R2_fv^t``, ``R2_fvm^t``), as r2mlm.

    Unlike r2mlm, which reads the variables of the formula, the columns of the fixed-effects
    design are classified, so factors and interactions count (r2mlm leaves interaction terms
    out of the fixed part) and a column is level-2 only if it is constant in every cluster
    (r2mlm looks at the largest one).

    Parameters
    ----------
    res : LMM results with one grouping factor (terms such as ``(1 + x | g)``,
        ``(x || g)``)

    Returns
    -------
    R2Decomposition
        ``.r2`` and ``.decomposition`` (DataFrames, r2mlm's ``R2s`` and ``Decompositions``).
    """
    _require_independent(res, "r2_rights_sterba()")
    _require_lmm(res, "Rights & Sterba's R2")
    r = _raw(res)
    terms = _one_grouping_factor(r, "Rights & Sterba's R2")
    if np.any(np.asarray(r.model.weights) != 1):
        raise NotImplementedError("Rights & Sterba's R2 of a model with prior weights")
    codes, m_levels = terms[0].codes, terms[0].m
    X = np.asarray(r.model.exog, dtype=float)
    names = _fe_names(r)
    beta = _beta(r)
    within, between, centered = level_of_columns(X, names, codes, m_levels)
    iw = [names.index(c) for c in within]
    ib = [names.index(c) for c in between]

    def var_of(idx):
        return float(np.var(X[:, idx] @ beta[idx], ddof=1)) if idx else 0.0
    Z, tau, znames = _random_block(r, terms)
    covz = np.atleast_2d(np.cov(Z, rowvar=False))
    mz = Z.mean(axis=0)
    parts = pd.Series({"f1": var_of(iw), "f2": var_of(ib), "v": float(np.sum(tau * covz)),
                       "m": float(mz @ tau @ mz), "tau00": float(tau[0, 0]),
                       "sigma2": r.sigma ** 2, "f": float(np.var(X @ beta, ddof=1))},
                      name="variance")
    r2, dec = decompose_variances(parts["f1"], parts["f2"], parts["v"], parts["m"],
                                  parts["tau00"], parts["sigma2"], f=parts["f"],
                                  centered=centered)
    return R2Decomposition(r2, dec, within, between, znames, centered, parts)


# ------------------------------------------------------------------ likelihood-ratio R2
def _ml_loglike(r):
    """The log-likelihood as R's ``logLik(fit, REML = FALSE)``: for a REML fit of an LMM,
    lme4's ML deviance profiled over beta and sigma at the REML theta."""
    if _is_lmm(r) and r.reml:
        return -0.5 * float(r.model.deviance_profiled(np.asarray(r.theta), reml=False))
    return float(r.llf)


def _glm_null_loglike(r):
    """MuMIn's default null model ``glm(y ~ 1, family)``: no random effects, no offset."""
    fam = _family(r)
    if fam is None:
        fam = families.Gaussian()
    elif not isinstance(fam, (families.Binomial, families.Poisson, families.Gaussian)):
        raise NotImplementedError(f"the likelihood-ratio R2 of a {type(fam).__name__} model")
    y = np.asarray(r.model.endog, dtype=float)
    w = np.asarray(r.model.weights, dtype=float)
    # the intercept-only GLM's fitted mean is the (trial-)weighted mean of y whatever the link
    if isinstance(fam, families.Binomial):       # proportions, the trials as weights
        k = np.round(y * w)
        return float(stats.binom.logpmf(k, np.round(w), np.sum(k) / np.sum(w)).sum())
    if np.any(w != 1):
        raise NotImplementedError("the likelihood-ratio R2 of a model with prior weights")
    if isinstance(fam, families.Poisson):
        return float(stats.poisson.logpmf(y, y.mean()).sum())
    n = y.size
    return float(-n / 2 * (np.log(2 * np.pi * np.sum((y - y.mean()) ** 2) / n) + 1))


def r2_likelihood_ratio(res, null=None, null_re=False):
    """The likelihood-ratio R² (Cox & Snell / Magee) and its Nagelkerke adjustment, as MuMIn's
    ``r.squaredLR``.

    ``R2 = 1 - exp(-2 / n (logLik(fit) - logLik(null)))`` and ``adjusted = R2 / max``,
    ``max = 1 - exp(2 / n logLik(null))``.  Both log-likelihoods are ML log-likelihoods
    (``logLik(x, REML = FALSE)``): for a REML fit, the ML log-likelihood at the REML estimates
    (not an ML refit), as MuMIn.

    Parameters
    ----------
    res : LMM or GLMM results (binomial, Poisson or Gaussian family)
    null : results, optional
        The null model's fit (any mixed or statsmodels result with ``llf``; an LMM fitted by
        REML is evaluated at ML as above).
    null_re : bool
        Without ``null``: ``False`` (MuMIn's default) takes ``glm(y ~ 1, family)``, without
        random effects and offset; ``True`` the intercept-only model with the same random
        effects, fitted as the model (REML or ML).

    Returns
    -------
    pandas.Series
        ``r2``, ``adjusted``, ``loglik``, ``loglik_null``, ``nobs``.
    """
    _require_independent(res, "r2_likelihood_ratio()")
    _require_no_zero_part(res, "r2_likelihood_ratio()")
    r = _raw(res)
    if hasattr(r.model, "thr"):
        raise NotImplementedError("the likelihood-ratio R2 of a clmm fit (MuMIn has no null "
                                  "model for it)")
    check_flag("null_re", null_re)
    if null is not None:
        n0 = _raw(null)
        if hasattr(n0, "model") and hasattr(n0.model, "re_design"):
            ok, why = _same_rows(r, n0)
            if not ok:
                raise ValueError(f"the null model was fitted to other data ({why})")
            l0 = _ml_loglike(n0)
        else:
            if int(n0.nobs) != int(r.nobs):
                raise ValueError(f"the null model was fitted to {int(n0.nobs)} observations, "
                                 f"the model to {int(r.nobs)}")
            l0 = float(n0.llf)
    elif null_re:
        l0 = _ml_loglike(_null_model_fit(r))
    else:
        l0 = _glm_null_loglike(r)
    l1 = _ml_loglike(r)
    n = float(r.nobs)
    r2 = 1 - np.exp(-2.0 / n * (l1 - l0))
    return pd.Series({"r2": r2, "adjusted": r2 / (1 - np.exp(2.0 / n * l0)), "loglik": l1,
                      "loglik_null": l0, "nobs": n}, name="r2_likelihood_ratio")


# ------------------------------------------------------------------ mitml's multilevelR2
def r2_mitml(res, null=None):
    """mitml's ``multilevelR2``: Raudenbush & Bryk's level-1 and level-2 proportional
    reductions (RB1, RB2), Snijders & Bosker's level-1 R² (SB) and the model-implied
    proportion of variance of the fixed part (MVP, Rights & Sterba's ``R2_f^t``).

    With ``s2``, ``t00`` the residual and random-intercept variances of the model and
    ``s2_0``, ``t00_0`` those of the null model ``y ~ 1 + (1 | g)`` (refitted, REML or ML as
    the model): ``RB1 = 1 - s2 / s2_0``, ``RB2 = 1 - t00 / t00_0``,
    ``SB = 1 - (s2 + t00) / (s2_0 + t00_0)``, ``MVP = var(X b) / var(y)`` with the model-
    implied ``var(y) = var(X b) + t00 + 2 mu_z' t10 + mu_z' T11 mu_z + tr(T11 Sigma_z) + s2``
    (``z`` the random slopes of the grouping factor's first term).

    Parameters
    ----------
    res : LMM results with one grouping factor and a random intercept
    null : LMM results, optional
        The null model's fit ``y ~ 1 + (1 | g)``.

    Returns
    -------
    pandas.Series
        ``RB1``, ``RB2``, ``SB``, ``MVP``.
    """
    _require_independent(res, "r2_mitml()")
    _require_lmm(res, "multilevelR2")
    r = _raw(res)
    terms = _one_grouping_factor(r, "multilevelR2")
    names = _fe_names(r)
    if "Intercept" not in names:
        raise ValueError("multilevelR2 needs a model with a fixed intercept (as mitml)")
    # mitml reads the first term of the grouping factor (lme4's mmList[[1]]), intercept first
    t = next((t for t in terms if t.colnames and t.colnames[0] == "Intercept"), None)
    if t is None:
        raise ValueError("multilevelR2 needs a random intercept, as (1 + x | g)")
    S = r.sigma ** 2 * r.model.re_design.term_cov(r.theta, t)
    Z = t.X[:, 1:]
    X = np.asarray(r.model.exog, dtype=float)
    keep = [j for j, c in enumerate(names) if c != "Intercept"]
    vyhat = float(np.var(X[:, keep] @ _beta(r)[keep], ddof=1)) if keep else 0.0
    mz = Z.mean(axis=0)
    covz = np.atleast_2d(np.cov(Z, rowvar=False)) if Z.shape[1] else np.zeros((0, 0))
    t00, t10, t11, s1 = S[0, 0], S[0, 1:], S[1:, 1:], r.sigma ** 2
    vy = vyhat + t00 + 2 * mz @ t10 + mz @ t11 @ mz + float(np.sum(t11 * covz)) + s1
    if null is None:
        n0 = _null_model_fit(r, intercept_only_re=True)
    else:
        n0 = _raw(null)
        ok, why = _same_rows(r, n0)
        if not ok:
            raise ValueError(f"the null model was fitted to other data ({why})")
        nt = n0.model.re_design.terms
        if len(nt) != 1 or nt[0].colnames != ["Intercept"] or list(n0.model.exog_names) != ["Intercept"]:
            raise ValueError("the null model must be y ~ 1 + (1 | g)")
    s0 = n0.sigma ** 2
    t0 = s0 * float(n0.model.re_design.term_cov(n0.theta, n0.model.re_design.terms[0])[0, 0])
    return pd.Series({"RB1": 1 - s1 / s0, "RB2": 1 - t00 / t0, "SB": 1 - (s1 + t00) / (s0 + t0),
                      "MVP": vyhat / vy}, name="multilevelR2")
