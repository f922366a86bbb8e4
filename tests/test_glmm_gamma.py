"""Gamma and inverse Gaussian GLMMs: the dispersion (statsmodels' ``scale``) estimated jointly.

References (tests/reference/gamma, made by tools/r_reference/gamma_reference.R):

* Gamma: glmmTMB (exact Laplace with the observed information, the dispersion estimated with
  the other parameters, the covariance from the Hessian in all parameters).  Its standard errors
  are from central differences of glmmTMB's exact gradient with small steps (``se``): vcov()'s
  default steps of 1e-3 are too large on the inverse link's scale (``se_vcov`` is 4.6 % off there).
* Inverse Gaussian (glmmTMB has no such family): the exact marginal likelihood maximized in R
  (integrate() per subject), which AGQ with 25 nodes reproduces.
* lme4's glmer is stored beside them: its Laplace leaves the dispersion out, so its estimates are
  not the likelihood's; the tests check that the likelihood is lower at lme4's estimates.

Tolerances: fixed effects within 0.002 SE, SEs, SDs and the dispersion within 0.2 %, the
log-likelihood not below the reference's by more than 1e-3 (the project's reference tolerances;
the agreement reached: fixed effects within 5e-5 SE, SEs within 4e-4 relative (inverse link;
1e-5 for the log link), SDs within 1.3e-4, log-likelihoods within 1e-9).
"""
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "reference", "gamma")
L = sm.families.links
GAMMA_CASES = ["gamma_subject", "gamma_crossed", "gamma_slope", "gamma_inverse"]


def load(name):
    with open(os.path.join(REF, name + ".json"), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(os.path.join(HERE, "data", "gammart.csv"))


def family_of(ref):
    link = {"log": L.Log, "inverse": L.InversePower}[ref["link"]]()
    if ref["family"] == "Gamma":
        return sm.families.Gamma(link)
    return sm.families.InverseGaussian(link)


_FITS = {}


def fit_of(name, data):
    if name not in _FITS:
        ref = load(name)
        nagq = 25 if ref["family"] == "inverse.gaussian" else 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # a clean fit: no convergence warnings
            _FITS[name] = mf.glmer(ref["formula"], data, family=family_of(ref)).fit(nagq=nagq)
    return _FITS[name]


def sds(ref):
    return np.array([r["sdcor"] for r in ref["varcorr"]])


@pytest.mark.parametrize("name", GAMMA_CASES + ["ig_subject"])
def test_against_reference(name, data):
    ref = load(name)
    res = fit_of(name, data)
    assert res.converged
    fe = np.array(list(ref["fixef"].values()))
    se = np.array(list(ref["se"].values()))
    r_names = {"(Intercept)": "Intercept", "condincongruent": "cond[T.incongruent]", "x": "x"}
    assert list(res.fe_params.index) == [r_names[k] for k in ref["fixef"]]
    np.testing.assert_array_less(np.abs(res.fe_params.to_numpy() - fe) / se, 0.002)
    np.testing.assert_allclose(res.bse_fe.to_numpy(), se, rtol=2e-3)
    vc = res.varcorr()
    assert list(vc["grp"]) == [r["grp"] for r in ref["varcorr"]]
    np.testing.assert_allclose(vc["sdcor"].to_numpy(), sds(ref), rtol=2e-3, atol=2e-3 * sds(ref).max())
    np.testing.assert_allclose(res.scale, ref["scale"], rtol=2e-3)
    assert res.llf > ref["loglik"] - 1e-3
    # the covariance is glmmTMB's: the Hessian in (theta, beta, log scale), scale included
    assert res.optim.cov_method == "Hessian (theta, beta, log scale)"
    np.testing.assert_allclose(res.cov_params().to_numpy(), res.cov_fe_joint.to_numpy(), rtol=1e-12)


def test_inverse_link_se_vcov_is_glmmTMB_step_error(data):
    """glmmTMB's vcov() on the inverse link is off by its Hessian's step (documented above):
    our SEs agree with its small-step Hessian, not with vcov()."""
    ref = load("gamma_inverse")
    res = fit_of("gamma_inverse", data)
    se_vcov = np.array(list(ref["se_vcov"].values()))
    assert np.max(np.abs(res.bse_fe.to_numpy() / se_vcov - 1)) > 0.03


@pytest.mark.parametrize("name", GAMMA_CASES + ["ig_subject"])
def test_lme4_estimates_have_lower_likelihood(name, data):
    """lme4's glmer for these families is not the ML fit: at its estimates (sigma^2 as the
    dispersion) the likelihood is lower than at ours, by more than the optimizers' noise."""
    ref = load(name)
    res = fit_of(name, data)
    l4 = ref["lme4"]
    # lme4's theta is relative to sigma (b = sigma Lambda(theta) u); ours is on eta's scale
    theta = np.asarray(l4["theta"]) * l4["sigma"]
    params = np.concatenate([list(l4["fixef"].values()), theta, [l4["sigma"] ** 2]])
    assert res.model.param_names[-1] == "scale"
    ll_lme4 = res.model.loglike(params, nagq=res.nagq)
    assert ll_lme4 < res.llf - 0.01
    # and their fixed effects differ from the reference by more than the tolerance
    fe = np.array(list(ref["fixef"].values()))
    se = np.array(list(ref["se"].values()))
    assert np.max(np.abs(np.array(list(l4["fixef"].values())) - fe) / se) > 0.1


def test_params_roundtrip_and_score(data):
    res = fit_of("gamma_crossed", data)
    model = res.model
    p = res.params_object.get_packed()
    assert model.param_names[-1] == "scale" and p[-1] == pytest.approx(res.scale)
    assert model.loglike(res.params_object) == pytest.approx(res.llf, abs=1e-8)
    g = model.score(p)
    np.testing.assert_allclose(g, 0.0, atol=5e-3)      # an optimum (scale ~0.14: d/dscale large)


@pytest.mark.parametrize("fam, info", [
    (sm.families.Gamma(L.Log()), "observed"),
    (sm.families.Gamma(L.Log()), "expected"),
    (sm.families.Gamma(L.InversePower()), "observed"),
    (sm.families.Gamma(L.Identity()), "expected"),
    (sm.families.InverseGaussian(), "observed"),
    (sm.families.InverseGaussian(L.Log()), "expected"),
    (sm.families.InverseGaussian(L.InversePower()), "observed"),
])
def test_exact_score_matches_differences(fam, info, data):
    """The analytic Laplace gradient (third derivatives of the log-density, the observed or
    expected information, log scale) against central differences of the log-likelihood."""
    d = data.iloc[:240].copy()
    y = d["rt"] if isinstance(fam, sm.families.Gamma) else d["rt_ig"]
    d["y"] = y / 600.0                          # means near 1: every link's eta is moderate
    model = mf.glmer("y ~ x + (x | subject)", d, family=fam, information=info)
    assert model.information == info
    mu = np.mean(d["y"])
    beta0 = float(fam.link(np.array([mu]))[0])
    params = np.array([beta0, 0.3 * abs(beta0) if beta0 else 0.05, 0.2 * abs(beta0), 0.02,
                       0.1 * abs(beta0), 0.15])
    g = model.score(params)
    h = 1e-6 * np.maximum(1.0, np.abs(params))
    num = np.array([(model.loglike(params + h[i] * np.eye(6)[i])
                     - model.loglike(params - h[i] * np.eye(6)[i])) / (2 * h[i]) for i in range(6)])
    np.testing.assert_allclose(g, num, rtol=2e-5, atol=2e-5 * np.max(np.abs(num)))


def test_agq_approaches_laplace_and_exact(data):
    """For the inverse Gaussian (log link: expected information in the Laplace determinant) the
    Laplace estimates differ from the exact ML ones; AGQ converges to them (see the reference)."""
    ref = load("ig_subject")
    res = mf.glmer(ref["formula"], data, family=family_of(ref)).fit()
    assert res.model.information == "expected"
    assert "expected information" in str(res.summary())
    ex = fit_of("ig_subject", data)
    assert abs(res.llf - ex.llf) < 0.5            # the Laplace approximation's error


def test_predict_simulate_summary(data):
    res = fit_of("gamma_subject", data)
    eta = res.predict(which="linear")
    np.testing.assert_allclose(res.predict(), np.exp(eta), rtol=1e-12)
    np.testing.assert_allclose(res.predict(), res.fittedvalues, rtol=1e-12)
    # Gamma draws with the fitted shape 1/phi around the conditional means
    sims = res.simulate(nsim=400, seed=1, use_u=True).to_numpy()
    ratio = sims / res.fittedvalues.to_numpy()[:, None]
    n = ratio.size
    assert abs(ratio.mean() - 1.0) < 4 * np.sqrt(res.scale / n)
    # var(y / mu) = phi; the sample variance's SE ~ phi sqrt((2 + 6 phi) / n) (Gamma kurtosis)
    assert abs(ratio.var() - res.scale) < 4 * res.scale * np.sqrt((2 + 6 * res.scale) / n)
    s = str(res.summary())
    assert "Family:" in s and "Gamma" in s and f"phi = {res.scale:.5g}" in s
    assert "Laplace (observed information)" in s
    assert res.llf_lme4 is None and res.alpha is None


def test_inverse_gaussian_simulate(data):
    res = fit_of("ig_subject", data)
    sims = res.simulate(nsim=100, seed=2, use_u=True).to_numpy()
    mu = res.fittedvalues.to_numpy()[:, None]
    # Var(y) = phi mu^3: (y - mu) / sqrt(phi mu^3) has mean 0, variance 1
    z = (sims - mu) / np.sqrt(res.scale * mu ** 3)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1.0) < 0.05


def test_family_names(data):
    m = mf.glmer("rt ~ cond + (1 | subject)", data, family="Gamma")
    assert isinstance(m.family, sm.families.Gamma)
    m = mf.glmer("rt_ig ~ cond + (1 | subject)", data, family="inverse.gaussian")
    assert isinstance(m.family, sm.families.InverseGaussian)
    assert m.information == "observed"          # the canonical 1/mu^2 link


def test_bad_input(data):
    d = data.copy()
    d.loc[3, "rt"] = 0.0
    with pytest.raises(ValueError, match="'rt' must be positive"):
        mf.glmer("rt ~ cond + (1 | subject)", d, family=sm.families.Gamma(L.Log()))
    d.loc[3, "rt"] = -2.0
    with pytest.raises(ValueError, match="inverse Gaussian response 'rt'"):
        mf.glmer("rt ~ cond + (1 | subject)", d, family=sm.families.InverseGaussian())
    with pytest.raises(NotImplementedError, match="prior weights"):
        mf.glmer("rt ~ cond + (1 | subject)", data, family=sm.families.Gamma(L.Log()),
                 weights=np.full(len(data), 2.0))
    with pytest.raises(NotImplementedError, match="negative"):
        mf.glmer("rt ~ cond + (1 | subject)", data, family=sm.families.Gamma(L.Identity()),
                 information="observed")
    with pytest.raises(ValueError, match="information must be"):
        mf.glmer("rt ~ cond + (1 | subject)", data, family=sm.families.Gamma(L.Log()),
                 information="fisher")
    with pytest.raises(TypeError, match="information= applies"):
        mf.glmer("rt ~ cond + (1 | subject)", data, family=sm.families.Poisson(),
                 information="observed")
