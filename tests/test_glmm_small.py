"""Small GLMMs (lme4's cbpp: 56 rows, 15 herds): the fit's paths for few rows and few parameters.

* one scalar term with a canonical link takes PIRLS's diagonal path, with the blocked path's
  values;
* the fit's estimates, llf and standard errors, on the data and on simulated responses whose
  optimum is close to theta = 0 (the quasi-Newton phase stops near the saddle at 0).
"""
import warnings

import numpy as np
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.inference import refit

from refcases import read_data

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return read_data("cbpp.csv")


def _fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.glmer(formula, data, **kw).fit()


@pytest.mark.parametrize("link,scalar", [("logit", True), ("probit", False)])
def test_scalar_term_takes_the_diagonal_path_with_the_same_values(cbpp, link, scalar):
    fam = sm.families.Binomial(getattr(sm.families.links, link.capitalize())())
    mod = mf.glmer(CBPP, cbpp, family=fam)
    dev = mod.deviance()
    # a non-canonical link keeps the blocked path (its PIRLS takes Newton steps with the
    # observed information; the diagonal path's weights are the expected information)
    assert dev.pirls_options.get("scalar_fast", False) is scalar
    blocked = mod.deviance()
    blocked.pirls_options = {}
    for x in ([0.6, -1.4, -1.0, -1.1, -1.6], [0.05, -1.2, -0.9, -1.0, -1.5], [1.5, -1.0, 0, 0, 0]):
        x = np.array(x)
        ll, g, m = dev.loglike_and_score(x, tol=1e-20)
        ll0, g0, m0 = blocked.loglike_and_score(x, tol=1e-20)
        assert m.converged and m0.converged
        assert abs(ll - ll0) < 1e-10
        np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(m.u, m0.u, rtol=1e-9, atol=1e-10)


def test_cbpp_fit_values(cbpp):
    # lme4 1.1: glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
    # logLik -92.02628, fixef -1.39854 -0.99233 -1.12867 -1.58031, theta 0.64226 (R's
    # optimizer stops ~1e-5 short: ours are the values of the base fit to 1e-9)
    r = _fit(CBPP, cbpp, family=sm.families.Binomial())
    assert r.optim.success
    assert abs(r.llf - (-92.0262818647571)) < 1e-8
    np.testing.assert_allclose(r.fe_params, [-1.39853214, -0.99233273, -1.12867208, -1.58031388],
                               atol=1e-6)
    np.testing.assert_allclose(r.theta, [0.64226145], atol=1e-6)
    # (the Hessian's: lme4's vcov from RX gives 0.2312 0.3032 0.3228 0.4220)
    np.testing.assert_allclose(r.bse_fe, [0.23247199, 0.3066425, 0.32663785, 0.42743659],
                               rtol=1e-6)


def test_refit_near_the_saddle_at_theta_zero(cbpp):
    # the quasi-Newton phase stops at theta = 1.6e-4, where the deviance's slope in theta
    # vanishes (it is even in theta): Newton's Hessian has negative curvature there, and its
    # modified step only doubled theta (8 Hessians, 44 evaluations); the longer steps along it
    # reach the optimum at 0.084 with 3 Hessians
    r = _fit(CBPP, cbpp, family=sm.families.Binomial())
    y = r.simulate(1, seed=1).to_numpy()[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = refit(r, y)
    assert b.optim.success
    assert abs(b.llf - (-81.25498751248062)) < 1e-8
    np.testing.assert_allclose(b.theta, [0.0839697], atol=2e-5)
    # (the values of the fit before the longer steps: its end point's decrement was 8e-11)
    np.testing.assert_allclose(b.fe_params, [-1.25204148, -0.95833982, -0.87769182, -1.42474481],
                               atol=2e-6)
    np.testing.assert_allclose(b.bse_fe, [0.14912029, 0.27190359, 0.27255773, 0.35793916],
                               rtol=1e-5)
    newton = [n for what, ok, n in b.optim.tried if what.startswith("Laplace: Newton")]
    assert newton and newton[0] <= 30


#: one scalar term with a canonical link: an intercept (binomial, Poisson) and a lone slope
SCALAR_CASES = [
    ("cbind(incidence, size - incidence) ~ period + (1 | herd)", sm.families.Binomial),
    ("incidence ~ period + x + (1 | herd)", sm.families.Poisson),
    ("cbind(incidence, size - incidence) ~ period + (0 + x | herd)", sm.families.Binomial)]


@pytest.mark.parametrize("formula,family", SCALAR_CASES)
def test_scalar_gradient_equals_the_general_one(cbpp, formula, family):
    from mlmext import laplace as lp
    from mlmext.laplace import gradient
    d = cbpp.copy()
    d["x"] = np.random.default_rng(1).normal(size=len(d))
    mod = mf.glmer(formula, d, family=family())
    dev = mod.deviance()
    k = dev.nt + mod.k_fe
    for x in ([0.6, -1.4, -1.0, -1.1, -1.6, 0.2], [1.3, 0.2, -0.3, 0.1, 0.4, 0.1]):
        x = np.array(x[:k])
        modes, _ = dev.modes(x[:1], x[1:], tol=1e-20)
        fac = lp.factor_at(dev.chol_u, modes)
        assert isinstance(fac, lp.ScalarFactor) and fac.a11 is None
        gt, gb, ge = gradient.laplace_gradient(dev.design, dev.chol_u, dev.cond, x[:1],
                                               lp.Modes(**vars(modes)), X=mod.exog)
        assert ge is None
        # the general path (local inverse, solve with H) on the same factor
        fac.a11 = 0.0
        try:
            gt0, gb0, _ = gradient.laplace_gradient(dev.design, dev.chol_u, dev.cond, x[:1],
                                                    lp.Modes(**vars(modes)), X=mod.exog)
        finally:
            fac.a11 = None
        np.testing.assert_allclose(np.r_[gt, gb], np.r_[gt0, gb0], rtol=1e-12,
                                   atol=1e-12 * np.abs(np.r_[gt0, gb0]).max())


@pytest.mark.parametrize("formula,family", SCALAR_CASES)
def test_first_stage_scalar_path_equals_the_blocked_one(cbpp, formula, family):
    d = cbpp.copy()
    d["x"] = np.random.default_rng(1).normal(size=len(d))
    mod = mf.glmer(formula, d, family=family())
    fast, blocked = mod.deviance(), mod.deviance()
    blocked.pirls_options = {}
    for th, warm in ((1.0, False), (0.3, True), (0.0, False)):
        b0 = mod._start_beta()
        v, m = fast.stage1(np.array([th]), b0)
        v0, m0 = blocked.stage1(np.array([th]), b0)
        assert "cov_beta" in m.extra and "cov_beta" not in m0.extra
        assert m.converged and m0.converged and m.niter == m0.niter
        assert abs(v - v0) < 1e-10
        np.testing.assert_allclose(m.beta, m0.beta, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.u, m0.u, rtol=1e-12, atol=1e-12)
        # what the fit reads from the first stage: the scale of beta and the EM sums
        np.testing.assert_allclose(fast.stage1_cov_beta(m), blocked.stage1_cov_beta(m0),
                                   rtol=1e-12)
        np.testing.assert_allclose(fast.stage1_factor(m).inverse_block_sums(0)[0],
                                   blocked.stage1_factor(m0).inverse_block_sums(0)[0],
                                   rtol=1e-12)


def test_first_stage_scalar_path_leaves_a_singular_system_to_the_blocked_one(cbpp):
    from mlmext import laplace as lp
    from mlmext.laplace.scalar import _pirls_scalar_x
    mod = mf.glmer(CBPP, cbpp)
    dev = mod.deviance()
    X = np.column_stack([mod.exog, mod.exog[:, 1]])       # a repeated column: X'WX singular
    lams = mod.re_design.lambdas(np.array([0.5]))
    assert _pirls_scalar_x(mod.re_design, mod.offset, dev.cond, lams, X) is None
    m = lp.pirls(mod.re_design, dev.chol_x, mod.offset, dev.cond, np.array([0.5]), X=mod.exog,
                 scalar_fast=True, tol=1e-10)
    assert m.converged and "cov_beta" in m.extra
