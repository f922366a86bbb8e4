"""The exact-Hessian fit's start and end (one scalar term, canonical link: lme4's cbpp).

* Newton's evaluations find the modes to PIRLS's 1e-20, so its last Hessian, at the end point,
  is the covariance's (no second PIRLS solve there): the same Hessian and llf as a fresh solve;
* the first stage only starts Newton: its PIRLS to a decrement of 1e-4 and the EM start's last
  theta without a PIRLS solve at it, and the estimates are still those of a tight fit;
* the blocked PIRLS factors are not made where PIRLS's scalar path finds the modes.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext.laplace as lp
from mlmext.formula import api as mf
from mlmext.glmm import fit as glmm_fit

from refcases import read_data

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return read_data("cbpp.csv")


def _fit(mod, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mod.fit(**kw)


def _bernoulli():
    rng = np.random.default_rng(6)
    g = rng.integers(0, 40, 400)
    x = rng.normal(size=400)
    y = rng.binomial(1, 1 / (1 + np.exp(-(-0.3 + 0.8 * x + rng.normal(size=40)[g]))))
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})


def _poisson_offset():
    rng = np.random.default_rng(5)
    g = rng.integers(0, 25, 300)
    x, expo = rng.normal(size=300), rng.uniform(0.5, 3.0, 300)
    y = rng.poisson(expo * np.exp(0.3 + 0.5 * x + 0.7 * rng.normal(size=25)[g]))
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g), "lexpo": np.log(expo)})


def _models(cbpp):
    pois = _poisson_offset()
    return [mf.glmer(CBPP, cbpp, family=sm.families.Binomial()),
            mf.glmer("y ~ x + (1 | g)", _bernoulli(), family=sm.families.Binomial()),
            mf.glmer("y ~ x + (1 | g)", pois, family=sm.families.Poisson(),
                     offset=pois["lexpo"].to_numpy())]


def test_covariance_hessian_is_newtons_last(cbpp):
    for mod in _models(cbpp):
        r = _fit(mod)
        assert r.optim.success
        assert ("Laplace: exact Hessian for the covariance", True, 0) in r.optim.tried
        # the exact Hessian from a new solve to 1e-20 at the estimates: the same to rounding
        res = r._results
        x = np.concatenate([r.theta, np.asarray(r.fe_params, float)])
        dev = mod.deviance()
        modes, _ = dev.modes(*dev.split(x)[:2], tol=1e-20)
        H = res._transform.hess(-2.0 * dev.hessian(modes))
        np.testing.assert_allclose(res.hessian, H, rtol=1e-8, atol=1e-8 * np.abs(H).max())
        # llf at those modes, as loglike reports it (its own PIRLS to 1e-20)
        assert abs(r.llf - mod.loglike(r.params_object)) < 1e-10


def test_estimates_are_those_of_a_tight_fit(cbpp):
    for mod in _models(cbpp):
        r, tight = _fit(mod), _fit(mod, tol=1e-16)
        se = np.asarray(tight.bse_fe)
        assert r.optim.success and tight.optim.success
        assert abs(r.llf - tight.llf) < 1e-10
        assert np.max(np.abs(np.asarray(r.fe_params) - np.asarray(tight.fe_params)) / se) < 1e-6
        np.testing.assert_allclose(r.bse_fe, tight.bse_fe, rtol=1e-6)
    # lme4's cbpp (glmer, Laplace): logLik -92.02628, theta 0.64226 (main's fit before these
    # changes: theta 0.6422614, a tight fit's 0.64226145)
    r = _fit(_models(cbpp)[0])
    assert abs(r.llf - (-92.0262818647571)) < 1e-8
    np.testing.assert_allclose(r.theta, [0.64226145], atol=1e-7)


def test_simulated_cbpp_responses_reach_the_tight_optimum(cbpp):
    mod = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    size = cbpp["size"].to_numpy()
    codes = mod.re_design.blocks[0].codes
    rng = np.random.default_rng(11)
    for _ in range(12):
        b = rng.uniform(0.0, 1.5) * rng.normal(size=15)[codes]
        d = cbpp.copy()
        d["incidence"] = rng.binomial(size, 1 / (1 + np.exp(-(mod.exog @ [-1.4, -1, -1.1, -1.6] + b))))
        m = mf.glmer(CBPP, d, family=sm.families.Binomial())
        r, tight = _fit(m), _fit(m, tol=1e-16)
        assert r.optim.success == tight.optim.success and r.is_singular() == tight.is_singular()
        assert r.llf - tight.llf > -1e-10
        se = np.asarray(tight.bse_fe)
        assert np.max(np.abs(np.asarray(r.fe_params) - np.asarray(tight.fe_params)) / se) < 1e-6


def test_first_stage_tolerance_and_em_start(cbpp, monkeypatch):
    calls = []
    real = lp.pirls

    def counting(*args, **kw):
        if kw.get("X") is not None:
            calls.append(kw["tol"])
        return real(*args, **kw)

    monkeypatch.setattr(lp, "pirls", counting)
    logit = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    r = _fit(logit)
    # the GLM-style start and one EM step's solve (the second EM step's theta is not solved at)
    assert calls == [glmm_fit.START_TOL] * 2
    assert ("stage 1 (theta; beta in PIRLS): EM steps", True, 2) in r.optim.tried
    # a path without the exact Hessian keeps the first stage as it was: both EM steps solved,
    # to 1e-10
    calls.clear()
    probit = mf.glmer(CBPP, cbpp, family=sm.families.Binomial(sm.families.links.Probit()))
    _fit(probit)
    assert calls == [1e-10] * 3
    # start_params: no first stage at the default tolerance changed
    calls.clear()
    _fit(logit, start_params=r.params_object)
    assert calls == [1e-10]


def test_em_start_without_the_last_solve(cbpp):
    mod = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    full, short = mod.deviance(), mod.deviance()
    starts = []
    for dev, solve_last in ((full, True), (short, False)):
        _, m1 = dev.stage1(np.ones(1), mod._start_beta())
        beta1 = m1.beta.copy()
        theta, m, n = glmm_fit._em_start(dev, np.ones(1), m1, 2, solve_last=solve_last)
        starts.append((theta, m, n, beta1))
    (th_f, m_f, n_f, _), (th_s, m_s, n_s, b_s) = starts
    assert n_f == n_s == 2
    # the second update's theta is the same; without its solve the modes are the first step's
    np.testing.assert_allclose(th_s, th_f, rtol=1e-12)
    assert not np.array_equal(m_s.beta, b_s) and "cov_beta" in m_s.extra
    assert np.max(np.abs(m_s.beta - m_f.beta)) < 0.05


def test_no_blocked_factor_on_the_scalar_path(cbpp):
    mod = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    dev = mod.deviance()
    r = glmm_fit.fit_glmm(mod, dev, 1, None, 500, 1e-8, False)
    assert r.optim.success
    assert dev._chol_u is None and dev._chol_x is None
    assert "_pirls_u" not in mod.__dict__ and "_pirls_x" not in mod.__dict__
    # the blocked path (a non-canonical link) makes them as before
    probit = mf.glmer(CBPP, cbpp, family=sm.families.Binomial(sm.families.links.Probit()))
    pdev = probit.deviance()
    pdev.loglike(np.array([0.6, -0.8, -0.5, -0.6, -0.9]))
    assert pdev._chol_u is not None


def test_pirls_takes_a_function_for_the_blocked_factor(cbpp):
    mod = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | period)",
                   cbpp, family=sm.families.Binomial())
    dev = mod.deviance()
    theta, eta = np.array([0.6, 0.3]), mod.exog @ [-1.4, -1.0, -1.1, -1.6]
    made = []

    def make():
        made.append(1)
        return lp.make_chol(mod.re_design, len(eta))

    lazy = lp.pirls(mod.re_design, make, eta, dev.cond, theta, tol=1e-20)
    direct = lp.pirls(mod.re_design, lp.make_chol(mod.re_design, len(eta)), eta, dev.cond,
                      theta, tol=1e-20)
    assert made == [1] and lazy.converged
    np.testing.assert_array_equal(lazy.u, direct.u)
    assert lazy.laplace == direct.laplace
    # the scalar path does not call it
    scalar = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    m = lp.pirls(scalar.re_design, lambda: pytest.fail("made"), eta,
                 scalar.deviance().cond, theta[:1], tol=1e-20, scalar_fast=True)
    assert m.converged


def test_increasing_links_skip_the_monotonicity_check(cbpp, monkeypatch):
    from mlmext.glmm import model as glmm_model
    L = sm.families.links
    eta = np.linspace(-30.0, 30.0, 601)
    for link in (L.Logit(), L.Log(), L.Probit(), L.CLogLog(), L.LogLog(), L.Cauchy()):
        assert type(link).__name__.lower() in glmm_model._INCREASING_LINKS
        with np.errstate(all="ignore"):
            assert not np.any(np.asarray(link.inverse_deriv(eta)) < 0)
    assert "sqrt" not in glmm_model._INCREASING_LINKS
    mod = mf.glmer(CBPP, cbpp, family=sm.families.Binomial())
    monkeypatch.setattr(type(mod.family.link), "inverse_deriv",
                        lambda self, e: pytest.fail("not read for the logit link"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod._warn_link_not_monotone(eta)


@pytest.mark.parametrize("link", [None, sm.families.links.Probit()])
def test_stage1_nelder_mead_start(cbpp, link):
    """``fit(stage1=True)`` (lme4's nAGQ = 0 stage by Nelder-Mead first) reaches the default
    fit's optimum, on the exact path (logit) and the quasi-Newton one (probit)."""
    fam = sm.families.Binomial() if link is None else sm.families.Binomial(link)
    mod = mf.glmer(CBPP, cbpp, family=fam)
    r0, r1 = _fit(mod), _fit(mod, stage1=True)
    assert r1.converged
    label, ok, nfev = r1.optim.tried[0]
    assert label == "stage 1 (theta; beta in PIRLS): Nelder-Mead" and ok and nfev > 3
    # both to the optimizer's criterion (decrement 1e-8): llf within it, estimates ~1e-4 SE
    assert abs(r1.llf - r0.llf) < 1e-7
    se = np.asarray(r0.bse_fe)
    assert np.max(np.abs(np.asarray(r1.fe_params) - np.asarray(r0.fe_params)) / se) < 1e-3
    np.testing.assert_allclose(r1.bse_fe, r0.bse_fe, rtol=1e-3)
