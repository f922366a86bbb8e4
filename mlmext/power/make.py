"""A linear mixed model at specified parameters, on a given design (simr's ``makeLmer``)."""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from ..inference import simulate
from ..lmm import LinearMixedModel
from ..objective import LMMState, sdcor_from_cov, theta_from_sdcor
from ..optimize import OptSummary
from ..results import LMMResults, MixedResultsWrapper

__all__ = ["make_lmer", "SPECIFIED_MESSAGE"]

SPECIFIED_MESSAGE = "parameters specified by make_lmer, not fitted"


def _response_name(formula):
    lhs = formula.split("~", 1)[0].strip() if "~" in formula else ""
    if not lhs.isidentifier():
        raise ValueError(f"make_lmer needs a response that is a plain column name (the "
                         f"response is simulated into it); got {lhs!r} in the formula")
    return lhs


def _labels(design):
    """lme4's group labels, as ``cov_re`` keys them: repeated factors become g, g.1, ..."""
    seen, out = {}, []
    for t in design.terms:
        k = seen.get(t.name, 0)
        out.append(t.name if k == 0 else f"{t.name}.{k}")
        seen[t.name] = k + 1
    return out


def _fixef_vector(fixef, names):
    if isinstance(fixef, (dict, pd.Series)):
        given = {("Intercept" if k == "(Intercept)" else str(k)): float(v)
                 for k, v in dict(fixef).items()}
        if set(given) != set(names):
            raise ValueError(f"fixef names {sorted(given)} do not match the model's fixed "
                             f"effects {names}")
        return np.array([given[n] for n in names])
    v = np.asarray(fixef, dtype=float).ravel()
    if v.size != len(names):
        raise ValueError(f"fixef needs {len(names)} values (the fixed effects {names}); "
                         f"got {v.size}")
    return v


def _sdcor_vector(varcorr, design):
    """The lme4 sd / correlation vector (per term, lower triangle by column) from matrices."""
    labels = _labels(design)
    if not isinstance(varcorr, dict) or set(varcorr) != set(labels):
        got = sorted(varcorr) if isinstance(varcorr, dict) else type(varcorr).__name__
        raise ValueError(f"varcorr must be a dict with one entry per random-effects term "
                         f"{labels}; got {got}")
    out = []
    for label, t in zip(labels, design.terms):
        v = varcorr[label]
        if isinstance(v, numbers.Real):
            if t.q != 1:
                raise ValueError(f"varcorr[{label!r}] is a scalar (a standard deviation) but the "
                                 f"term has {t.q} random effects {list(t.colnames)}: give their "
                                 "covariance matrix")
            if not v >= 0:
                raise ValueError(f"varcorr[{label!r}]: a standard deviation must be >= 0; got {v}")
            out.append(np.array([float(v)]))
            continue
        if isinstance(v, pd.DataFrame):
            if set(v.index) != set(t.colnames) or set(v.columns) != set(t.colnames):
                raise ValueError(f"varcorr[{label!r}] is labelled {list(v.index)}; the term's "
                                 f"random effects are {list(t.colnames)}")
            v = v.loc[list(t.colnames), list(t.colnames)]
        C = np.asarray(v, dtype=float)
        if C.shape != (t.q, t.q):
            raise ValueError(f"varcorr[{label!r}] must be a {t.q} x {t.q} covariance matrix "
                             f"({list(t.colnames)}); got shape {C.shape}")
        if not np.allclose(C, C.T, rtol=1e-12, atol=0) or \
                np.linalg.eigvalsh(C).min() < -1e-10 * max(np.abs(C).max(), 1e-300):
            raise ValueError(f"varcorr[{label!r}] is not a symmetric positive semi-definite matrix")
        out.append(sdcor_from_cov(C))             # theta_from_sdcor's order
    return np.concatenate(out)


def formula_design(res, what):
    """``(model, data, formula)`` of a linear mixed model built from a formula and a DataFrame
    without weights or offsets: what :func:`power_curve` and :func:`extend` rebuild on a new
    design (``what`` names the caller in the errors)."""
    model = res.model
    info = getattr(model, "formula_info", {})
    data, formula = info.get("data"), info.get("formula")
    if not isinstance(data, pd.DataFrame) or not formula or type(model).__name__ != "LinearMixedModel":
        raise ValueError(f"{what} needs a linear mixed model built from a formula and a "
                         "DataFrame (mf.lmer or make_lmer)")
    if not np.allclose(model.weights, 1.0) or np.any(np.asarray(model.offset) != 0):
        raise NotImplementedError(f"{what} does not carry prior weights or an offset over to a "
                                  "new design (make_lmer takes neither)")
    return model, data, formula


def make_lmer(formula, data, fixef, varcorr=None, sigma=None, theta=None, reml=True,
              seed=None, ddf="satterthwaite"):
    """A linear mixed model at specified parameters (simr's ``makeLmer``).

    The model is built on the design in ``data`` and the response is simulated from the
    specified parameters (as simr does); the result is a results object at exactly those
    parameters, for :meth:`power_sim`, :meth:`simulate`, :meth:`refit` and
    :func:`mlmext.power.power_curve`.  Nothing is fitted: ``converged`` is False, ``optim``
    says ``"parameters specified by make_lmer, not fitted"``, ``specified`` is True, the
    conditional modes (``ranef``) are zero (the random effects' mean) and ``llf`` is the
    (REML) log-likelihood of the simulated response at the specified parameters.

    Parameters
    ----------
    formula : str
        lme4-style formula, ``"y ~ x + (1 | g)"``; the response must be a plain name.
    data : pandas.DataFrame
        The design: the predictors and grouping factors.  The response column may be
        absent; if present it is replaced by the simulated response.
    fixef : dict, pandas.Series or array_like
        Fixed effects, by name (``"Intercept"`` or ``"(Intercept)"``, ``"x"``, ``"f[T.b]"``)
        or in the order of the design's columns.
    varcorr : dict, optional
        Per random-effects term (keys as ``cov_re()`` labels them: the grouping factor,
        ``g.1`` for a repeated one), its covariance matrix on the response scale
        (lme4's ``VarCorr``), or for a term with one random effect its standard deviation
        as a scalar (simr's ``VarCorr`` takes a variance there: pass ``[[v]]`` for that).
    sigma : float
        Residual standard deviation.
    theta : array_like, optional
        lme4's relative covariance parameters instead of ``varcorr``.
    reml : bool
        Whether the refits of :meth:`power_sim` and :meth:`refit` use REML (simr: ``lmer``'s
        default, REML).
    seed : int or numpy.random.Generator, optional
        For the simulated response.
    ddf : {"satterthwaite", "kenward-roger", "z"}
        The tests of the result, as ``fit(ddf=)``.

    Returns
    -------
    LMMResults
        ``fe_params`` and ``varcorr()`` are the specified values.
    """
    if not isinstance(formula, str):
        raise ValueError("formula must be a string")
    if not isinstance(data, pd.DataFrame):
        raise ValueError("data must be a pandas DataFrame (the design)")
    if sigma is None or not np.isfinite(sigma) or not float(sigma) > 0:
        raise ValueError(f"sigma (the residual standard deviation) must be positive; got {sigma}")
    if (varcorr is None) == (theta is None):
        raise ValueError("give the random-effects covariances as varcorr= or as theta= (one of them)")
    sigma = float(sigma)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    resp = _response_name(formula)
    work = data.copy()
    work[resp] = rng.standard_normal(len(work))        # a placeholder: the design needs a response
    model = LinearMixedModel.from_formula(formula, work)
    des = model.re_design
    beta = _fixef_vector(fixef, list(model.exog_names))
    if theta is None:
        theta = theta_from_sdcor(des, _sdcor_vector(varcorr, des), sigma)
    else:
        theta = np.asarray(theta, dtype=float).ravel()
        if theta.size != des.ntheta:
            raise ValueError(f"theta needs {des.ntheta} values ({des.theta_names()}); got {theta.size}")
        if np.any(theta < des.lower) or not np.all(np.isfinite(theta)):
            raise ValueError(f"theta must be finite with non-negative diagonal entries; got {theta}")
    res = _at(model, beta, theta, sigma, reml, ddf)
    y = simulate(res, nsim=1, seed=rng).iloc[:, 0]
    work[resp] = np.nan
    work.loc[y.index, resp] = y.to_numpy()
    model = LinearMixedModel.from_formula(formula, work)
    return _at(model, beta, theta, sigma, reml, ddf)


def _at(model, beta, theta, sigma, reml, ddf):
    dev = model.deviance(reml)
    crit = -2.0 * model.loglike(np.concatenate([beta, theta, [sigma]]), reml=reml)
    cov = sigma ** 2 * dev.factor(theta).cov_beta_unscaled()     # X'V^-1X at theta, V in sigma^2
    state = LMMState(theta=_ro(theta), beta=_ro(beta), u=_ro(np.zeros(model.re_design.nre)),
                     sigma=sigma, criterion=float(crit), cov_beta=_ro(cov), reml=bool(reml))
    opt = OptSummary(initial=theta, final=theta, fmin=float(crit), feval=0,
                     tried=(("make_lmer (specified)", False, 0),), converged=False,
                     message=SPECIFIED_MESSAGE, optimizer="none")
    res = LMMResults(model, state, optim=opt, ddf=ddf)
    res.specified = True
    return MixedResultsWrapper(res)


def _ro(a):
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a
