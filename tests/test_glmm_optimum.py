"""Every GLMM fit reaches the optimum and says so honestly (issue 13).

Reference fits from tools/r_reference/glmm_optimum_reference.R:

* imm10_singular: Kreft & de Leeuw's 10-school NELS-88 subset, ``white ~ homework +
  (1 + homework | schid)``: a singular fit (the slope's theta at 0) whose Hessian is positive
  definite, where lme4 1.1-31 takes the standard errors from the Hessian (1.473 for the
  intercept), not from RX (1.385).
"""
import importlib
import re
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext.formula import api as mf

from refcases import by_name, load_ref, read_data

B = sm.families.Binomial
IMM10 = "white ~ homework + (1 + homework | schid)"
glmm_fit = importlib.import_module("mlmext.glmm.fit")


def quiet_fit(model, **kw):
    """A fit with its warnings recorded: (results, [ConvergenceWarning messages])."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = model.fit(**kw)
    return res, [str(x.message) for x in w if issubclass(x.category, ConvergenceWarning)]


# ------------------------------------------------------------------ covariance on singular fits
@pytest.fixture(scope="module")
def imm10():
    return read_data("imm10.csv")


@pytest.fixture(scope="module")
def imm10_fit(imm10):
    return quiet_fit(mf.glmer(IMM10, imm10, family=B()))[0]


def test_singular_fit_se_from_the_hessian(imm10_fit):
    ref = load_ref("glmm", "imm10_singular")
    res = imm10_fit
    assert ref["singular"] and res.is_singular() and res.theta[2] < 1e-4
    assert res.optim.cov_method == "Hessian"
    se, rse = by_name(res.bse_fe, ref["se"])
    np.testing.assert_allclose(se, rse, rtol=2e-3)              # 1.47299 vs lme4's 1.47337
    assert np.all(rse > 1.05 * np.array(list(ref["se_rx"].values())))   # not RX's 1.385
    # lme4 differentiates across the bound (central differences reach theta = -1e-4), ours
    # inward from it: the theta block agrees, the deviance being even in the slope's theta
    H = np.array(ref["hessian"])
    np.testing.assert_allclose(res.hessian[:3, :3], H[:3, :3], rtol=3e-3, atol=5e-3)
    assert "inverse Hessian of the deviance in (theta, beta) (lme4's default, singular fits too)" \
        in str(res.summary())


def test_rx_fallback_is_lme4s_rx_and_is_said(imm10, monkeypatch):
    """Where the Hessian gives no covariance, RX: lme4's vcov(use.hessian = FALSE)."""
    monkeypatch.setattr(glmm_fit, "_fe_covariance", lambda model, tr, H: (None, "Hessian", None))
    res = quiet_fit(mf.glmer(IMM10, imm10, family=B()))[0]
    ref = load_ref("glmm", "imm10_singular")
    assert res.optim.cov_method == "RX"
    se, rse = by_name(res.bse_fe, ref["se_rx"])
    np.testing.assert_allclose(se, rse, rtol=2e-3)              # 1.38528 vs 1.38520
    assert ("Covariance of the fixed effects from RX (the PIRLS system at the estimates): the "
            "fixed-effects block of the inverse finite-difference Hessian is not positive "
            "definite") in str(res.summary())


def test_covariance_from_the_hessian_block():
    """``_fe_covariance``: 2 H^-1's fixed-effects block on beta's scale, None if not PD."""
    tr = glmm_fit._Transform(1, 2, 0, np.zeros(2), np.array([[2.0, 0.0], [1.0, 1.0]]))
    H = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    cov, method, joint = glmm_fit._fe_covariance(None, tr, H)
    expect = tr.R @ (2.0 * np.linalg.inv(H)[1:, 1:]) @ tr.R.T
    np.testing.assert_allclose(cov, expect, rtol=1e-12)
    assert method == "Hessian" and joint is None
    Hbad = H.copy()
    Hbad[2, 2] = -1.0                                           # beta block of H^-1 indefinite
    assert glmm_fit._fe_covariance(None, tr, Hbad)[0] is None
    Hnan = H.copy()
    Hnan[0, 0] = np.nan
    assert glmm_fit._fe_covariance(None, tr, Hnan)[0] is None


# ------------------------------------------------------------------ the singular-fit warning
def test_singular_fit_warns_like_lmer(imm10):
    mod = mf.glmer(IMM10, imm10, family=B())
    with pytest.warns(ConvergenceWarning) as rec:
        mod.fit()
    msgs = [str(w.message) for w in rec if issubclass(w.category, ConvergenceWarning)]
    assert len(msgs) == 1
    assert re.fullmatch(r"boundary \(singular\) fit: a random-effects covariance is singular "
                        r"\(theta = \[4\.036\d*, -0\.2163\d*, [0-9.e-]+\]\); see "
                        r"results\.is_singular\(\)", msgs[0]), msgs[0]
    assert rec[0].filename == __file__                  # at the caller's fit()
    # lmer's words for the same situation
    with pytest.warns(ConvergenceWarning, match=r"^boundary \(singular\) fit: a random-effects "
                      r"covariance is singular \(theta = \[0\.0\]\); see results\.is_singular\(\)$"):
        mf.lmer("y ~ x + (1 | g)", read_data("singular.csv")).fit()


def test_nonsingular_fit_does_not_warn():
    res, warns = quiet_fit(mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                    read_data("cbpp.csv"), family=B()))
    assert warns == [] and not res.is_singular() and res.optim.converged
