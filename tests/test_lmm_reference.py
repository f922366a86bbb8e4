"""LMM fits against stored lme4 / lmerTest results (tests/reference/lmm, made by
tools/r_reference/lmm_reference.R)."""
import warnings

import numpy as np
import pytest

from mlmext.formula import api as mf

from refcases import by_name, case_params, check_ranef, check_varcorr, read_data, ref_fits, ref_names

CASES = ref_names("lmm")
SLOW = {"insteval_crossed"}
PARAMS = case_params(CASES, SLOW)


def fit_case(ref):
    data = read_data(ref["data"])
    kw = {}
    for key in ("weights", "subset"):      # column name / an expression, as the user passes them
        if ref.get(key):
            kw[key] = ref[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(ref["formula"], data, **kw).fit(reml=bool(ref["reml"]))


fits = ref_fits("lmm", fit_case)


@pytest.mark.parametrize("name", PARAMS)
def test_fixed_effects_and_se(fits, name):
    ref, res = fits(name)
    fe, rfe = by_name(res.fe_params, ref["fixef"])
    se, rse = by_name(res.bse_fe, {k: ref["se"][k] for k in ref["fixef"]})
    assert np.all(np.abs(fe - rfe) <= 0.002 * rse), (fe, rfe)
    np.testing.assert_allclose(se, rse, rtol=2e-3)


@pytest.mark.parametrize("name", PARAMS)
def test_likelihood_and_criteria(fits, name):
    ref, res = fits(name)
    assert res.llf >= ref["loglik"] - 1e-3
    assert res.llf <= ref["loglik"] + 0.05          # a better optimum, not a different model
    assert abs(res.aic - ref["aic"]) < 2e-3 + 2 * (res.llf - ref["loglik"])
    assert abs(res.bic - ref["bic"]) < 2e-3 + 2 * (res.llf - ref["loglik"])
    assert int(res.nobs) == int(ref["nobs"])
    if ref.get("reml_criterion") is not None:
        assert abs(res.reml_criterion - ref["reml_criterion"]) < 2e-3
    assert abs(res.sigma - ref["sigma"]) <= 2e-3 * ref["sigma"]


@pytest.mark.parametrize("name", PARAMS)
def test_varcorr_and_theta(fits, name):
    ref, res = fits(name)
    check_varcorr(res.varcorr(), ref, strip_ref_suffix=True)
    theta = np.atleast_1d(ref["theta"])
    assert res.theta.shape == theta.shape
    np.testing.assert_allclose(res.theta, theta, atol=2e-3 * max(1.0, np.abs(theta).max()), rtol=5e-3)
    assert res.is_singular() == bool(ref.get("singular", False))


@pytest.mark.parametrize("name", PARAMS)
def test_ranef_and_condsd(fits, name):
    ref, res = fits(name)
    check_ranef(res.ranef(condvar=True), ref, scale=ref["sigma"])
