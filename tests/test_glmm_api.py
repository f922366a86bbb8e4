"""glmer / glmer_nb front door: response forms, offsets, results contract, bad input."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext import laplace as lp
from mlmext.formula import api as mf
from mlmext.glmm import GLMMResults

from refcases import GLMM_EPS, assert_fe_close, by_name, load_ref, read_data

B, P = sm.families.Binomial, sm.families.Poisson
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return read_data("cbpp.csv")


@pytest.fixture(scope="module")
def cbpp_fit(cbpp):
    return mf.glmer(CBPP, cbpp, family=B()).fit()


def _expand(cbpp):
    """One row per trial: 0/1, boolean and two-level categorical responses."""
    rows = []
    for _, r in cbpp.iterrows():
        rows += [(r.herd, r.period, 1)] * int(r.incidence) + [(r.herd, r.period, 0)] * int(r["size"] - r.incidence)
    d = pd.DataFrame(rows, columns=["herd", "period", "y"])
    d["herd"] = pd.Categorical(d.herd, categories=cbpp.herd.cat.categories)
    d["period"] = pd.Categorical(d.period, categories=cbpp.period.cat.categories)
    d["yb"] = d.y.astype(bool)
    d["yf"] = pd.Categorical(np.where(d.y == 1, "sick", "healthy"), categories=["healthy", "sick"])
    return d


def test_binomial_response_forms_agree(cbpp, cbpp_fit):
    ref = load_ref("glmm", "cbpp_laplace")["lme4_tight"]
    fe, rfe = by_name(cbpp_fit.fe_params, ref["fixef"])
    np.testing.assert_allclose(fe, rfe, atol=1e-4)     # lme4 tight: within 4e-4 SE (ours: refcases.GLMM_EPS)
    # every other response form is another optimizer run on the same likelihood: estimates within
    # 2 sqrt(GLMM_EPS) = 4.5e-4 SE, llf within GLMM_EPS / 2; SEs (smooth in the estimates) as much
    k_se = 2.0 * np.sqrt(GLMM_EPS)
    d = cbpp.assign(prop=cbpp.incidence / cbpp["size"])
    prop = mf.glmer("prop ~ period + (1 | herd)", d, family=B(), weights="size").fit()
    assert_fe_close(prop, cbpp_fit, GLMM_EPS)
    assert prop.llf == pytest.approx(cbpp_fit.llf, abs=GLMM_EPS / 2)
    long = _expand(cbpp)
    fits = [mf.glmer(f"{y} ~ period + (1 | herd)", long, family=B()).fit() for y in ("y", "yb", "yf")]
    se_theta = np.sqrt(np.diag(2.0 * np.linalg.inv(cbpp_fit.hessian)))[:1]
    for f in fits:
        assert_fe_close(f, cbpp_fit, GLMM_EPS)
        assert np.all(np.abs(f.theta - cbpp_fit.theta) <= k_se * se_theta)
        np.testing.assert_allclose(f.bse_fe, cbpp_fit.bse_fe, rtol=k_se)
    # per-trial rows drop the binomial coefficients: llf differs by exactly their sum
    from scipy.special import gammaln
    n, k = cbpp["size"].to_numpy(float), cbpp.incidence.to_numpy(float)
    const = np.sum(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))
    assert fits[0].llf == pytest.approx(cbpp_fit.llf - const, abs=1e-6)
    # first level of a categorical response is the failure, as in R
    flipped = long.assign(yf=pd.Categorical(long.yf.astype(str), categories=["sick", "healthy"]))
    fl = mf.glmer("yf ~ period + (1 | herd)", flipped, family=B()).fit()
    assert_fe_close(fl, cbpp_fit, GLMM_EPS, shift=2 * fl.fe_params.to_numpy())   # -fl against cbpp_fit


def test_offset_in_formula_argument_and_column():
    ref = load_ref("glmm", "pois_offset")
    d = read_data("pois_offset.csv")
    d["logt"] = np.log(d.t)
    a = mf.glmer("y ~ x + offset(np.log(t)) + (1 | g)", d, family=P()).fit()
    b = mf.glmer("y ~ x + (1 | g)", d, family=P(), offset=np.log(d.t.to_numpy())).fit()
    c = mf.glmer("y ~ x + (1 | g)", d, family=P(), offset="logt").fit()
    fe, rfe = by_name(a.fe_params, ref["fixef"])
    np.testing.assert_allclose(fe, rfe, atol=2e-3 * min(ref["se"].values()))
    for r in (b, c):           # the same offset three ways: separate runs (refcases.GLMM_EPS)
        assert_fe_close(r, a, GLMM_EPS)
        assert r.llf == pytest.approx(a.llf, abs=GLMM_EPS / 2)
    # predictions include the offset
    np.testing.assert_allclose(a.predict(which="linear", re=False),
                               a.model.exog @ a.params + np.log(d.t.to_numpy()), atol=1e-12)


def test_llf_full_scale_matches_glm_at_theta_zero(cbpp):
    """With theta = 0 the GLMM log-likelihood is the GLM's (all constants included)."""
    mod = mf.glmer(CBPP, cbpp, family=B())
    beta = np.array([-1.3, -1.0, -1.1, -1.5])
    glm = sm.GLM(np.column_stack([cbpp.incidence, cbpp["size"] - cbpp.incidence]), mod.exog,
                 family=B())
    assert mod.loglike(np.r_[beta, 0.0]) == pytest.approx(glm.loglike(beta), abs=1e-9)
    gt = read_data("grouseticks.csv")
    pm = mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt, family=P())
    b2 = np.array([0.5, 1.0, -1.0, -0.02])
    assert pm.loglike(np.r_[b2, 0.0]) == pytest.approx(sm.GLM(gt.TICKS, pm.exog, family=P()).loglike(b2), abs=1e-8)
    nb = mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt)
    nbg = sm.GLM(gt.TICKS, nb.exog, family=sm.families.NegativeBinomial(alpha=0.5))
    assert nb.loglike(np.r_[b2, 0.0, 0.5]) == pytest.approx(nbg.loglike(b2), abs=1e-8)


def test_results_contract(cbpp, cbpp_fit):
    res = cbpp_fit
    assert isinstance(res._results, GLMMResults)
    assert list(res.varcorr().columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    assert list(res.varcorr().grp) == ["herd"]
    assert res.k_params == 5 and res.nagq == 1 and res.alpha is None
    assert res.df_modelwc == 5
    ci = res.conf_int()
    assert ci.shape == (4, 2)
    assert np.all(res.pvalues < 1) and not res.use_t
    s = str(res.summary())
    for text in ("Binomial", "logit", "Laplace", "Log-Likelihood", "herd", "Pearson"[:0]):
        assert text in s
    assert "Residual" not in s
    re_ = res.ranef(condvar=True)["herd"]
    assert re_.shape == (15, 1) and re_.attrs["condsd"].shape == (15, 1)
    # predictions
    p_re = res.predict()
    p_pop = res.predict(re=False)
    assert p_re.shape == (56,) and np.all((p_re > 0) & (p_re < 1))
    lin = res.predict(which="linear")
    np.testing.assert_allclose(1 / (1 + np.exp(-lin)), p_re, rtol=1e-12)
    assert not np.allclose(p_re, p_pop)
    new = pd.DataFrame({"period": pd.Categorical(["1", "2"], categories=["1", "2", "3", "4"]),
                        "herd": ["1", "new herd"], "incidence": [0, 0], "size": [1, 1]})
    pn = np.asarray(res.predict(new))
    assert pn[0] == pytest.approx(p_re.iloc[0], rel=1e-10)             # herd 1, period 1
    assert pn[1] == pytest.approx(p_pop.iloc[1], rel=1e-10)            # unseen herd: population value
    assert res.wald_test("period[T.2] = 0", scalar=True).pvalue < 0.01


def test_agq_summary_and_lme4_scale(cbpp):
    res = mf.glmer(CBPP, cbpp, family=B()).fit(nagq=25)
    s = str(res.summary())
    assert "Adaptive Gauss-Hermite (25 points)" in s and "llf - loglike_saturated" in s
    assert res.llf_lme4 == pytest.approx(load_ref("glmm", "cbpp_agq25")["loglik"], abs=1e-4)
    assert res.llf - res.llf_lme4 == pytest.approx(res.loglike_saturated)


def test_negative_binomial_results():
    gt = read_data("grouseticks.csv")
    res = mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt).fit()
    assert res.alpha == pytest.approx(1 / 2.0522, rel=1e-3)
    assert res.k_params == 6
    s = str(res.summary())
    assert "alpha" in s and "Negative Binomial" in s
    joint = res.cov_fe_joint
    assert joint.shape == (4, 4)
    assert np.all(np.diag(joint) >= np.diag(res.cov_params()) * (1 - 1e-6))   # alpha's uncertainty adds
    pois = mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt, family=P()).fit()
    assert res.llf > pois.llf + 100                                          # overdispersed counts


def test_all_zero_and_all_one_groups():
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(20), 8)
    d = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=160)})
    d["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.3 * d.x + rng.normal(size=20)[g]))))
    d.loc[d.g == "0", "y"] = 0
    d.loc[d.g == "1", "y"] = 1
    d.loc[d.g == "2", "y"] = 0
    res = mf.glmer("y ~ x + (1 | g)", d, family=B()).fit()
    re_ = res.ranef()["g"]["Intercept"]
    assert re_["0"] < 0 < re_["1"]
    assert np.isfinite(res.llf) and np.all(np.isfinite(res.bse_fe))
    c = pd.DataFrame({"g": g.astype(str), "y": rng.poisson(2, 160)})
    c.loc[c.g == "3", "y"] = 0
    r2 = mf.glmer("y ~ 1 + (1 | g)", c, family=P()).fit()
    assert np.isfinite(r2.llf)


def test_missing_rows_dropped(cbpp):
    d = cbpp.copy()
    d["incidence"] = d["incidence"].astype(float)
    d.loc[3, "incidence"] = np.nan
    res = mf.glmer(CBPP, d, family=B()).fit()
    assert res.nobs == 55 and res.nrows_dropped == 1


# ------------------------------------------------------------------------------ bad input
def test_bad_responses(cbpp):
    d = pd.DataFrame({"y": [0, 1, 2, -1, 3, 1] * 5, "g": list("abcdef") * 5, "x": np.arange(30.0)})
    with pytest.raises(ValueError, match="'y'.*negative"):
        mf.glmer("y ~ x + (1 | g)", d, family=P())
    with pytest.raises(ValueError, match="binomial response 'y'"):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=d.y.abs()), family=B())
    with pytest.raises(ValueError, match="'f' is categorical with 3 levels"):
        mf.glmer("f ~ x + (1 | g)", d.assign(f=pd.Categorical(list("uvw") * 10)), family=B())
    with pytest.warns(UserWarning, match="non-integer"):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=d.y.abs() + 0.5), family=P())
    with pytest.warns(UserWarning, match="non-integer"):
        mf.glmer_nb("y ~ x + (1 | g)", d.assign(y=d.y.abs() + 0.5))
    with pytest.raises(ValueError, match="negative counts"):
        mf.glmer("cbind(s, f) ~ x + (1 | g)", d.assign(s=d.y, f=3 - d.y), family=B())
    with pytest.raises(ValueError, match="needs counts"):
        mf.glmer(CBPP, cbpp, family=P())
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        mf.glmer("nope ~ x + (1 | g)", d, family=P())


def test_unsupported_families_and_agq():
    d = read_data("grouseticks.csv")
    with pytest.raises(NotImplementedError, match="lmer"):
        mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", d, family=sm.families.Gaussian())
    with pytest.raises(NotImplementedError, match="the Tweedie family is not implemented"):
        mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", d, family=sm.families.Tweedie())
    with pytest.raises(ValueError, match="glmer_nb"):
        mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", d, family=sm.families.NegativeBinomial(alpha=1.0))
    crossed = mf.glmer("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", d, family=P())
    with pytest.raises(NotImplementedError, match="single grouping factor"):
        crossed.fit(nagq=5)
    d["a"], d["b"], d["c"] = np.cos(np.arange(len(d))), np.sin(np.arange(len(d))), np.arange(len(d)) % 3
    big = mf.glmer("TICKS ~ YEAR + (1 + a + b + c | LOCATION)", d, family=P())
    with pytest.raises(NotImplementedError, match="at most 3 random effects"):
        big.fit(nagq=3)
    with pytest.raises(ValueError, match="nagq"):
        crossed.fit(nagq=0)


def test_pirls_failure_is_reported():
    d = pd.DataFrame({"y": [0, 5, 2, 9, 1, 4] * 5, "g": list("abcdef") * 5, "x": np.arange(30.0)})
    mod = mf.glmer("y ~ x + (1 | g)", d, family=P(sm.families.links.Identity()))
    with pytest.raises(lp.PIRLSError, match="PIRLS failed at the starting values.*theta"):
        mod.fit()
    dev = mod.deviance()
    modes = lp.pirls(mod.re_design, dev.chol_u, np.full(30, -1.0), dev.cond, np.array([1.0]))
    assert not modes.converged and "iteration" in modes.message


def test_optimizer_nonconvergence_warns(cbpp):
    mod = mf.glmer(CBPP, cbpp, family=B())
    with pytest.warns(ConvergenceWarning, match="tried"):
        res = mod.fit(maxiter=1, tol=1e-30)
    assert not res.converged
