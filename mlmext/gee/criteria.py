"""QIC, QICu and CIC of a fitted GEE (Pan 2001), and the quasi-likelihood they use.

:func:`qic` follows geepack's ``QIC()``: the quasi-likelihood under independence is not
divided by the scale, and ``Omega_I`` comes from an independence fit of the same model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import xlog1py, xlogy
from statsmodels.genmod import families
from statsmodels.genmod.generalized_estimating_equations import GEE
from statsmodels.genmod.generalized_linear_model import GLM
from statsmodels.genmod.cov_struct import Independence

__all__ = ["qic"]


_QIC_FAMILIES = (families.Gaussian, families.Binomial, families.Poisson, families.Gamma)


def _quasi_likelihood(family, endog, mu, weights):
    """Pan's quasi-likelihood under independence, without the scale (geepack's convention)."""
    if isinstance(family, families.Gaussian):
        q = -0.5 * (endog - mu) ** 2
    elif isinstance(family, families.Binomial):
        q = xlogy(endog, mu) + xlog1py(1.0 - endog, -mu)   # y log(mu/(1-mu)) + log(1-mu)
    elif isinstance(family, families.Poisson):
        q = xlogy(endog, mu) - mu
    elif isinstance(family, families.Gamma):
        q = -endog / mu - np.log(mu)
    else:
        raise ValueError(f"qic: family {type(family).__name__} is not supported "
                         "(Gaussian, Binomial, Poisson, Gamma)")
    return float(np.sum(weights * q))


def _offset_exposure(model):
    off = getattr(model, "_offset_exposure", None)
    if off is None or np.isscalar(off):
        return None if off is None or off == 0 else np.full(model.nobs, float(off))
    return np.asarray(off, dtype=float)


def _fit_independence(model):
    """Estimates of ``model``'s mean under independence (a GLM on the same rows and weights)."""
    return GLM(model.endog, model.exog, family=model.family, offset=_offset_exposure(model),
               var_weights=model.weights).fit().params


def _independence_params(model, independence):
    """The estimates of a given independence fit, checked to be one of ``model`` on its rows:
    only its estimates are read, so another working correlation, other rows or weights gave
    a QIC near the right one in silence (and another design a matmul error)."""
    other = getattr(independence, "model", None)
    cs = getattr(other, "cov_struct", None)
    if cs is not None and not isinstance(cs, Independence):
        raise ValueError(f"qic: independence= is a fit with the {type(cs).__name__} working "
                         "correlation; give an Independence fit (or leave it out: refitted)")
    same = other is not None and type(getattr(other, "family", None)) is type(model.family)
    for a, b in ((model.endog, getattr(other, "endog", None)),
                 (model.exog, getattr(other, "exog", None)),
                 (model.weights, getattr(other, "weights", None)),
                 (_offset_exposure(model), _offset_exposure(other) if same else None)):
        same = same and (a is None) == (b is None) and (a is None or (
            np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a, float), np.asarray(b, float))))
    if not same:
        raise ValueError("qic: independence= must be a fit of the same model (family, response, "
                         "fixed effects, weights, offset) on the same rows")
    return independence.params


def qic(results, scale=None, independence=None):
    """
    QIC, QICu, CIC and quasi-likelihood of a fitted GEE (Pan 2001).

    Parameters
    ----------
    results : GEEResults
        A fitted statsmodels GEE (any working correlation).
    scale : float, optional
        The dispersion ``phi_I`` in ``Omega_I``.  By default Pearson's
        ``sum w (y - mu)**2 / V(mu) / n`` at the independence estimates, for
        every family, as geepack's ``QIC()`` (which takes it from its
        independence refit; with unit weights both are Pearson's chi-squared
        over the number of observations).  Pan's choice for Binomial and
        Poisson without overdispersion is ``scale=1``.
    independence : GEEResults, optional
        An independence fit of the same model and rows whose estimates give
        ``Omega_I`` (checked: ValueError for another working correlation, model or
        rows).  Refitted (as a GLM) when not given.

    Returns
    -------
    Series
        ``QIC``, ``QICu``, ``CIC``, ``QuasiLik``, ``n_params`` (the p of
        QICu) and ``scale`` (the ``phi_I`` used).

    Notes
    -----
    With ``Q`` the quasi-likelihood under independence evaluated at the
    estimates of the fit, ``V_R`` its robust (sandwich) covariance and
    ``Omega_I = sum_i D_i' A_i^-1 W_i D_i / phi_I`` the inverse model-based
    covariance of an independence fit (at the independence estimates)::

        QIC  = -2 Q + 2 trace(Omega_I V_R)
        QICu = -2 Q + 2 p
        CIC  = trace(Omega_I V_R)

    ``Q`` follows geepack's ``QIC()``: it is not divided by the scale (for the
    Gaussian family ``Q = -RSS / 2``), binomial ``Q = sum w (y logit(mu) +
    log(1 - mu))`` with ``y`` the proportion, Poisson ``sum w (y log(mu) -
    mu)`` and Gamma ``sum w (-y / mu - log(mu))``.  Unlike geepack, the prior
    weights ``w`` enter ``Q`` (binomial proportions with the number of trials
    as weights), and the Gamma quasi-likelihood is McCullagh and Nelder's
    (geepack 1.3.9 uses ``-y / (mu - log(mu))``).  statsmodels'
    ``GEEResults.qic`` omits ``A_i^-1`` from ``Omega_I``, which is only right
    for the Gaussian family.
    """
    model = results.model
    if not isinstance(model, GEE):
        raise ValueError("qic: results must come from a statsmodels GEE fit")
    if getattr(model, "constraint", None) is not None:
        raise ValueError("qic: GEE fits with a constraint are not supported")
    family = model.family
    weights = np.ones(model.nobs) if model.weights is None else np.asarray(model.weights, float)
    offset = _offset_exposure(model)
    offset = 0.0 if offset is None else offset
    endog = np.asarray(model.endog, dtype=float)
    if isinstance(family, families.Binomial) and (endog.min() < 0 or endog.max() > 1):
        raise ValueError("qic: Binomial response must be a 0/1 outcome or a proportion")
    mu_r = family.link.inverse(model.exog @ np.asarray(results.params, dtype=float) + offset)
    quasi = _quasi_likelihood(family, endog, mu_r, weights)

    params_i = _fit_independence(model) if independence is None else \
        _independence_params(model, independence)
    eta_i = model.exog @ np.asarray(params_i, dtype=float) + offset
    mu_i = family.link.inverse(eta_i)
    var_i = family.variance(mu_i)
    phi = np.dot(weights, (endog - mu_i) ** 2 / var_i) / len(endog) if scale is None else float(scale)
    d2 = weights * family.link.inverse_deriv(eta_i) ** 2 / var_i
    omega = (model.exog * d2[:, None]).T @ model.exog / phi
    cic = float(np.trace(omega @ np.asarray(results.cov_robust)))
    p = model.exog.shape[1]
    return pd.Series({"QIC": -2.0 * quasi + 2.0 * cic, "QICu": -2.0 * quasi + 2.0 * p,
                      "CIC": cic, "QuasiLik": quasi, "n_params": p, "scale": phi},
                     name="qic")
