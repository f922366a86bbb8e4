"""Cluster-robust covariances of LMM fixed effects against R's clubSandwich 0.5.8
(tests/reference/robust, made by tools/r_reference/robust_reference.R).

Two levels of agreement:

* at lme4's estimates (its theta and beta, stored with the case) the covariance, the
  Satterthwaite df and the HTZ test are the same function of the same numbers as
  clubSandwich's: they agree to rounding (rtol 1e-9; measured ~1e-13);
* at our own optimum they differ only through the estimates: lme4's REML / ML optimum and ours
  differ by ~1e-6 relative in theta (bobyqa's default tolerance), which moves the covariance and
  the df by the same order (measured at most 1.6e-6); rtol 2e-5 leaves a margin of ten.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from mlmext.formula import api as mf
from mlmext.inference import cluster_robust

from refcases import load_ref, norm, read_data, ref_fits

CASES = ["sleepstudy_reml", "nested_reml", "hsb82_ml", "nested_ml_uncorrelated"]
TYPES = ["CR0", "CR1", "CR1p", "CR1S", "CR2"]
EXACT = 1e-9          # same inputs as clubSandwich: rounding only
OPT = 2e-5            # our optimum vs lme4's (see the module docstring)


def fit_case(ref):
    return mf.lmer(ref["formula"], read_data(ref["data"])).fit(reml=ref["reml"])


fits = ref_fits("robust", fit_case)


def perm(res, ref):
    """Positions of R's coefficients (in R's order) among ours."""
    ours = [norm(n) for n in res.model.exog_names]
    return np.array([ours.index(norm(k)) for k in ref["fixef"]])


def r_beta(res, ref):
    """lme4's fixed effects in our order."""
    b = np.empty(len(ref["fixef"]))
    b[perm(res, ref)] = list(ref["fixef"].values())
    return b


def assert_cov_close(V, Vr, rtol):
    """Covariances compared on the scale of their standard errors: |dV_ij| <= rtol se_i se_j
    (a near-zero covariance has no relative precision of its own)."""
    Vr = np.asarray(Vr, dtype=float)
    se = np.sqrt(np.diag(Vr))
    assert np.max(np.abs(np.asarray(V) - Vr) / np.outer(se, se)) <= rtol


def robust(res, ref, tp, df="satterthwaite"):
    return res.get_robustcov_results("cluster", type=tp, groups=ref["cluster"], df=df)


@pytest.mark.parametrize("tp", TYPES)
@pytest.mark.parametrize("name", CASES)
def test_vcov_and_df_at_lme4_estimates(fits, name, tp):
    ref, res = fits(name)
    rc = cluster_robust(res, tp, groups=ref["cluster"], theta=ref["theta"], beta=r_beta(res, ref))
    i = perm(res, ref)
    np.testing.assert_allclose(rc.vcov[np.ix_(i, i)], np.array(ref[tp]["vcov"]), rtol=EXACT)
    np.testing.assert_allclose(rc.df_coef()[i], ref[tp]["coef_test"]["df_Satt"], rtol=EXACT)
    assert rc.n_groups == ref["nclusters"] and rc.type == tp
    assert rc.groups == (ref["cluster"] or ref["cluster_default"])


@pytest.mark.parametrize("tp", ["CR0", "CR2"])
@pytest.mark.parametrize("name", CASES)
def test_htz_at_lme4_estimates(fits, name, tp):
    """Pustejovsky-Tipton's Hotelling df of several constraints (Wald_test's HTZ)."""
    ref, res = fits(name)
    rc = cluster_robust(res, tp, groups=ref["cluster"], theta=ref["theta"], beta=r_beta(res, ref))
    C = np.zeros((len(ref["constraints"]), len(ref["fixef"])))
    C[:, perm(res, ref)] = ref["constraints"]
    q = C.shape[0]
    np.testing.assert_allclose(rc.nu(C) - q + 1, ref[tp]["wald_test"]["HTZ"]["df_denom"],
                               rtol=EXACT)


@pytest.mark.parametrize("tp", TYPES)
@pytest.mark.parametrize("name", CASES)
def test_results_at_our_optimum(fits, name, tp):
    """bse, tvalues, df, pvalues, conf_int of the robust results vs coef_test."""
    ref, res = fits(name)
    rr = robust(res, ref, tp)
    i = perm(res, ref)
    ct = ref[tp]["coef_test"]
    assert_cov_close(np.asarray(rr.cov_params())[np.ix_(i, i)], ref[tp]["vcov"], OPT)
    np.testing.assert_allclose(np.asarray(rr.bse)[i], ct["SE"], rtol=OPT)
    # t: beta itself differs from lme4's by ~1e-6 SE, so compare in SE units
    np.testing.assert_allclose(np.asarray(rr.tvalues)[i], ct["tstat"], rtol=OPT, atol=1e-4)
    np.testing.assert_allclose(rr.df_resid_inference[i], ct["df_Satt"], rtol=OPT)
    np.testing.assert_allclose(np.asarray(rr.pvalues)[i], ct["p_Satt"], rtol=1e-3, atol=1e-12)
    assert rr.use_t and rr.cov_type == "cluster"
    ci = np.asarray(rr.conf_int())[i]
    half = stats.t.ppf(0.975, ct["df_Satt"]) * np.asarray(ct["SE"])
    beta = np.asarray(rr.params)[i]
    np.testing.assert_allclose(ci[:, 1] - beta, half, rtol=OPT)
    np.testing.assert_allclose(beta - ci[:, 0], half, rtol=OPT)


@pytest.mark.parametrize("name", CASES)
def test_other_reference_distributions(fits, name):
    """df='z', 'naive-t' (J - 1), 'naive-tp' (J - p): coef_test's p_z, p_t, p_tp."""
    ref, res = fits(name)
    i = perm(res, ref)
    ct = ref["CR1"]["coef_test"]
    for df, key in (("z", "p_z"), ("naive-t", "p_t"), ("naive-tp", "p_tp")):
        rr = robust(res, ref, "CR1", df=df)
        np.testing.assert_allclose(np.asarray(rr.pvalues)[i], ct[key], rtol=1e-3, atol=1e-12)
        assert rr.use_t == (df != "z")
    assert robust(res, ref, "CR1", df="naive-t").df_resid_inference == ref["nclusters"] - 1


@pytest.mark.parametrize("tp", ["CR0", "CR2"])
@pytest.mark.parametrize("name", CASES)
def test_wald_test(fits, name, tp):
    """wald_test: HTZ (default), chi-square (use_f=False), Naive-F (df='naive-t')."""
    ref, res = fits(name)
    C = np.zeros((len(ref["constraints"]), len(ref["fixef"])))
    C[:, perm(res, ref)] = ref["constraints"]
    q = C.shape[0]
    wt = ref[tp]["wald_test"]
    rr = robust(res, ref, tp)
    htz = rr.wald_test(C)
    np.testing.assert_allclose(float(htz.fvalue), wt["HTZ"]["Fstat"], rtol=1e-4)
    np.testing.assert_allclose(htz.df_denom, wt["HTZ"]["df_denom"], rtol=OPT)
    np.testing.assert_allclose(float(htz.pvalue), wt["HTZ"]["p_val"], rtol=1e-3, atol=1e-14)
    chi = rr.wald_test(C, use_f=False, scalar=True)
    np.testing.assert_allclose(float(chi.statistic), q * wt["chi-sq"]["Fstat"], rtol=1e-4)
    nf = robust(res, ref, tp, df="naive-t").wald_test(C, use_f=True, scalar=True)
    np.testing.assert_allclose(float(nf.fvalue), wt["Naive-F"]["Fstat"], rtol=1e-4)
    np.testing.assert_allclose(float(nf.pvalue), wt["Naive-F"]["p_val"], rtol=1e-3, atol=1e-14)
    assert nf.df_denom == ref["nclusters"] - 1


def test_t_test_one_contrast_is_the_coefficient_test(fits):
    ref, res = fits("nested_reml")
    rr = robust(res, ref, "CR2")
    tt = rr.t_test("x = 0, z = 0")
    np.testing.assert_allclose(tt.df_denom, rr.df_resid_inference[1:], rtol=1e-12)
    np.testing.assert_allclose(np.ravel(tt.sd), np.asarray(rr.bse)[1:], rtol=1e-12)
    np.testing.assert_allclose(np.ravel(tt.pvalue), np.asarray(rr.pvalues)[1:], rtol=1e-10)
    # a difference of two coefficients: the df is the HTZ nu of that single row (q = 1)
    d = rr.t_test("x - z = 0")
    L = np.array([[0.0, 1.0, -1.0]])
    assert d.df_denom[0] == pytest.approx(rr._results._robust.nu(L), rel=1e-12)
    assert "CR2 Satterthwaite" in str(d)


def test_fit_argument_equals_get_robustcov_results(fits):
    ref, res = fits("nested_reml")
    f = mf.lmer(ref["formula"], read_data(ref["data"])).fit(
        cov_type="cluster", cov_kwds={"type": "CR2"})
    g = res.get_robustcov_results()
    np.testing.assert_allclose(np.asarray(f.cov_params()), np.asarray(g.cov_params()), rtol=1e-6)
    assert f.cov_kwds == {"type": "CR2", "groups": "school", "df": "satterthwaite"}


def test_new_object_and_unchanged_original(fits):
    ref, res = fits("sleepstudy_reml")
    before = np.asarray(res.cov_params()).copy()
    bse = np.asarray(res.bse).copy()
    rr = res.get_robustcov_results("cluster", type="CR0")
    assert rr is not res and rr._results is not res._results
    np.testing.assert_array_equal(np.asarray(res.cov_params()), before)
    np.testing.assert_array_equal(np.asarray(res.bse), bse)
    assert res.cov_type == "nonrobust" and res.use_t      # the LMM's t tests on Satterthwaite df
    assert not np.allclose(np.asarray(rr.bse), bse)
    back = rr.get_robustcov_results("nonrobust")          # the model-based covariance again
    np.testing.assert_allclose(np.asarray(back.cov_params()), before, rtol=1e-14)
    assert back.cov_type == "nonrobust" and back.use_t and back.ddf == "satterthwaite"
    np.testing.assert_array_equal(np.asarray(back.pvalues), np.asarray(res.pvalues))
    assert np.asarray(rr.bse)[0] != bse[0]                  # and rr was not changed by that


def test_summary_says_which_covariance(fits):
    ref, res = fits("hsb82_ml")
    rr = robust(res, ref, "CR2")
    txt = str(rr.summary())
    assert "cluster-robust CR2" in txt and "clustered by school (160 clusters)" in txt
    assert "Satterthwaite df" in txt
    se = np.asarray(rr.bse)
    assert f"{se[0]:.4f}" in txt
    assert "lme4's vcov" in str(res.summary())
    with pytest.raises(ValueError, match="cluster-robust"):
        rr.summary(ddf="satterthwaite")
    with pytest.raises(ValueError, match="cluster-robust"):
        rr.t_test("cses = 0", df="kenward-roger")


def test_groups_by_array_series_and_default(fits):
    ref, res = fits("hsb82_ml")
    data = read_data(ref["data"])
    by_name = res.get_robustcov_results(groups="school")
    by_default = res.get_robustcov_results()
    by_array = res.get_robustcov_results(groups=data["school"].to_numpy())
    by_series = res.get_robustcov_results(groups=data["school"])
    for other in (by_default, by_array, by_series):
        np.testing.assert_allclose(np.asarray(other.cov_params()),
                                   np.asarray(by_name.cov_params()), rtol=1e-13)
    # relabelled clusters: the same partition gives the same covariance
    codes = pd.factorize(data["school"])[0] * 7 + 3
    np.testing.assert_allclose(np.asarray(res.get_robustcov_results(groups=codes).cov_params()),
                               np.asarray(by_name.cov_params()), rtol=1e-13)
    with pytest.raises(ValueError, match="one value per fitted row"):
        res.get_robustcov_results(groups=np.arange(10))


def test_cluster_default_is_the_outer_factor(fits):
    ref, res = fits("nested_reml")
    assert res.get_robustcov_results().cov_kwds["groups"] == ref["cluster_default"] == "school"


def test_refusals_as_clubsandwich():
    ref = load_ref("robust", "refusals")
    pen = read_data("penicillin.csv")
    crossed = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit()
    assert "Non-nested" in ref["crossed"]["error"]
    with pytest.raises(ValueError, match="not nested in the clusters"):
        crossed.get_robustcov_results()
    with pytest.raises(ValueError, match="not nested in the clusters"):
        crossed.get_robustcov_results(groups="plate")
    nest = read_data("robust_nested.csv")
    res = mf.lmer("y ~ x + z + (1 | school/class)", nest).fit()
    assert "Non-nested" in ref["class_not_nested_in_cluster"]["error"]
    with pytest.raises(ValueError, match="'school' is not nested in the clusters 'class'"):
        res.get_robustcov_results(groups="class")
    assert "prior weights" in ref["weights"]["error"]
    w = mf.lmer("y ~ x + z + (1 | school/class)", nest, weights="w").fit()
    with pytest.raises(NotImplementedError, match="prior weights"):
        w.get_robustcov_results()
    with pytest.raises(NotImplementedError, match="prior weights"):
        mf.lmer("y ~ x + z + (1 | school/class)", nest, weights="w").fit(cov_type="cluster")
    with pytest.raises(ValueError, match="at least two clusters"):
        res.get_robustcov_results(groups=np.zeros(len(nest)))


def test_bad_arguments(fits):
    ref, res = fits("sleepstudy_reml")
    mod = res.model
    with pytest.raises(ValueError, match="unknown cov_type 'HC1'"):
        mod.fit(cov_type="HC1")
    with pytest.raises(ValueError, match="unknown cluster-robust type 'CR3'"):
        mod.fit(cov_type="cluster", cov_kwds={"type": "CR3"})
    with pytest.raises(TypeError, match="'typ'"):
        mod.fit(cov_type="cluster", cov_kwds={"typ": "CR2"})
    with pytest.raises(TypeError, match="'cluster'"):
        res.get_robustcov_results(cluster="Subject")
    with pytest.raises(ValueError, match="unknown df='kr'"):
        res.get_robustcov_results(df="kr")
    with pytest.raises(ValueError, match="cov_kwds"):
        mod.fit(cov_kwds={"type": "CR2"})
    with pytest.raises(TypeError, match="cov_kwds must be a dict"):
        mod.fit(cov_type="cluster", cov_kwds="CR2")
    with pytest.raises(ValueError, match="groups='Days'|neither a grouping factor"):
        res.get_robustcov_results(groups="nope")
    # nonrobust is today's fit, unchanged
    plain = mod.fit(cov_type="nonrobust")
    np.testing.assert_array_equal(np.asarray(plain.cov_params()), np.asarray(mod.fit().cov_params()))


def test_glmm_and_clmm_not_implemented():
    cbpp = read_data("cbpp.csv")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                 family=sm.families.Binomial())
    with pytest.raises(NotImplementedError, match="linear mixed models"):
        g.fit(cov_type="cluster")
    with pytest.raises(ValueError, match="unknown cov_type"):
        g.fit(cov_type="HC0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = g.fit()
    with pytest.raises(NotImplementedError, match="linear mixed models"):
        r.get_robustcov_results()
    wine = read_data("wine.csv")
    c = mf.clmm("rating ~ temp + contact + (1 | judge)", wine)
    with pytest.raises(NotImplementedError, match="clmm"):
        c.fit(cov_type="cluster")
