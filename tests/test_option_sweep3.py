"""Public options and promises no other test exercised (the third option sweep): results that
cannot be changed through what they hand out, and options checked against R
(tools/r_reference/sweep3_reference.R, stored in tests/reference/sweep3/sweep3.json) or by hand."""
import copy
import json
import pickle
import os
import re

import numpy as np
import pytest
import statsmodels.api as sm

import mlmext
import mlmext.formula.api as mf
from mlmext import datasets
from mlmext.gee.criteria import qic
from refcases import read_data

with open(os.path.join(os.path.dirname(__file__), "reference", "sweep3", "sweep3.json")) as fh:
    REF = json.load(fh)


@pytest.fixture(scope="module")
def cbpp():
    cb = datasets.load("cbpp")
    return cb.assign(prop=cb["incidence"] / cb["size"])


def _cbpp_fit(cbpp):
    return mf.glmer("prop ~ period + (1 | herd)", cbpp, family="binomial", weights="size").fit()


def _sleep_fit():
    return mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()


@pytest.mark.parametrize("which", ["lmm", "glmm"])
def test_result_arrays_and_series_cannot_change_the_result(which, cbpp):
    # a GLMM's theta was the fit's own writeable array: res.theta[0] = 5 moved predict() and
    # ranef() (herd 1's mode 0.59 -> 4.59); a cached fittedvalues Series, once edited, was what
    # fittedvalues and resid (y - that Series) gave from then on
    res, ref = (_cbpp_fit(cbpp), _cbpp_fit(cbpp)) if which == "glmm" else (_sleep_fit(), _sleep_fit())
    with pytest.raises(ValueError, match="read-only"):
        res.theta[0] = 5.0
    fitted = res.fittedvalues
    fitted.iloc[0] = 999.0
    np.testing.assert_array_equal(res.fittedvalues, ref.fittedvalues)
    np.testing.assert_array_equal(res.resid, ref.resid)
    np.testing.assert_allclose(res.resid.iloc[0], res.model.endog[0] - ref.predict().iloc[0])
    np.testing.assert_array_equal(res.predict(), ref.predict())
    first = next(iter(res.ranef()))
    np.testing.assert_array_equal(res.ranef()[first], ref.ranef()[first])


def test_fixed_effects_covariance_read_only(cbpp):
    # GLMM and clmm results kept the fit's writeable matrix: an edit before the first read of
    # bse changed the standard errors (an LMM's was read-only already)
    clmm = mf.clmm("rating ~ temp + contact + (1 | judge)", datasets.load("wine")).fit()
    for res in (_cbpp_fit(cbpp), clmm):
        with pytest.raises(ValueError, match="read-only"):
            res.normalized_cov_params[0, 0] = 1e6


@pytest.mark.parametrize("args, kwargs, match", [
    ((), {"ddf": "KR"}, "Kenward-Roger's df need the rows"),
    ((), {"ddf": "kenward_roger"}, "Kenward-Roger's df need the rows"),
    ((True, None, "auto", 2000, 1e-9, False, "cluster"), {}, "cluster-robust covariances need")])
def test_dask_fit_refusals_read_arguments_as_fit_does(args, kwargs, match):
    # the guard compared ddf with the exact string 'kenward-roger' and read cov_type by keyword
    # only: fit() itself accepts 'KR' and positional arguments, and then failed on
    # 'model.weights: a model of Dask data holds no rows', naming neither argument
    dd = pytest.importorskip("dask.dataframe")
    sl = datasets.load("sleepstudy")
    model = mf.lmer("Reaction ~ Days + (Days | Subject)", dd.from_pandas(sl, npartitions=3))
    with pytest.raises(NotImplementedError, match=match):
        model.fit(*args, **kwargs)


def test_result_methods_take_every_option_of_their_functions():
    # res.power_sim had no conf_level= and res.simulate no params= (the functions did):
    # TypeError from the method form of a documented option
    from scipy import stats
    from mlmext import inference as inf
    res = _sleep_fit()
    ps = res.power_sim("Days", effect=3.0, nsim=12, seed=4, conf_level=0.8)
    k, n = ps.successes, ps.nsim
    # Clopper-Pearson at 80% by its definition
    lo = stats.beta.ppf(0.1, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(0.9, k + 1, n - k) if k < n else 1.0
    np.testing.assert_allclose(ps.conf_int, [lo, hi], rtol=1e-10)
    assert ps.power == inf.power_sim(res, "Days", effect=3.0, nsim=12, seed=4).power
    beta = np.array([250.0, 0.0])
    sims = res.simulate(nsim=2, seed=3, params=beta)
    np.testing.assert_array_equal(sims, inf.simulate(res, nsim=2, seed=3, params=beta))
    # the same draws around another fixed part: the difference is X (beta - beta_hat)
    shift = res.model.exog @ (beta - np.asarray(res.fe_params))
    np.testing.assert_allclose(sims.to_numpy() - res.simulate(nsim=2, seed=3).to_numpy(),
                               np.column_stack([shift, shift]), atol=1e-8)


@pytest.mark.parametrize("call", [
    lambda r: r.conf_int(method="profile", names="LME4"),
    lambda r: r.conf_int(method="boot", names="oldNames", nsim=3, seed=1),
    lambda r: r.profile(names="bogus")])
def test_interval_row_names_checked(call):
    # any value other than 'lme4' gave the descriptive names in silence
    with pytest.raises(ValueError, match="names must be 'descriptive' or 'lme4'"):
        call(_sleep_fit())


def test_interval_row_names_lme4_with_boot_and_profile():
    res = _sleep_fit()
    want = [".sig01", ".sig02", ".sig03", ".sigma", "Intercept", "Days"]
    assert list(res.conf_int(method="boot", names="lme4", nsim=3, seed=1).index) == want
    prof = res.conf_int(method="profile", names="lme4", cols=[".sig01", "Days"])
    desc = res.conf_int(method="profile", cols=["sd_Intercept|Subject", "Days"])
    np.testing.assert_array_equal(prof.to_numpy(), desc.to_numpy())
    assert list(prof.index) == [".sig01", "Days"]


@pytest.mark.parametrize("call", [
    lambda r: r.simulate(re="False"),
    lambda r: r.simulate(use_u="False"),
    lambda r: r.bootstrap(nsim=2, re="False")])
def test_simulation_flags_are_bools(call):
    # read by their truth: simulate(re="False") and bootstrap(re="False") drew new random
    # effects, simulate(use_u="False") conditioned on the modes, in silence (predict refused)
    with pytest.raises(ValueError, match="must be True or False"):
        call(_sleep_fit())


# Tolerances: ordinal stops at its default convergence and its Laplace log-likelihood differs
# from ours in the last digits (tests/test_clmm_reference.py): observed 4e-5 in logLik (m0: ours
# higher), 1.3e-6 in the probit fit's estimates; asserted 2e-4.
def test_clmm_anova_of_three_fits_against_ordinal():
    wine = datasets.load("wine")
    m0, m1, m2 = (mf.clmm(f"rating ~ {rhs} + (1 | judge)", wine).fit()
                  for rhs in ("temp", "temp + contact", "temp * contact"))
    tab = mlmext.anova(m0, m1, m2)
    ref = REF["clmm_anova"]
    np.testing.assert_array_equal(tab["npar"], ref["npar"])
    np.testing.assert_allclose(tab["logLik"], ref["logLik"], atol=2e-4)
    np.testing.assert_allclose(tab["AIC"], ref["AIC"], atol=4e-4)
    np.testing.assert_allclose(tab["Chisq"].iloc[1:], ref["LR"][1:], atol=2e-4)
    np.testing.assert_array_equal(tab["Df"].iloc[1:], ref["df"][1:])
    np.testing.assert_allclose(tab["Pr(>Chisq)"].iloc[1:], ref["p"][1:], rtol=2e-3)


@pytest.mark.parametrize("key, kwargs, nagq", [
    ("probit_equidistant", {"link": "probit", "threshold": "equidistant"}, 1),
    ("symmetric_agq7", {"threshold": "symmetric"}, 7)])
def test_clmm_link_threshold_and_quadrature_against_ordinal(key, kwargs, nagq):
    ref = REF[key]
    res = mf.clmm("rating ~ temp + contact + (1 | judge)", datasets.load("wine"), **kwargs).fit(nagq=nagq)
    assert res.llf == pytest.approx(ref["loglik"], abs=2e-4)
    want = list(ref["coef"].values())
    # R's names: tempwarm, contactyes; ours temp[T.warm], contact[T.yes] (same order)
    np.testing.assert_allclose(res.params.to_numpy(), want, atol=2e-4)
    assert res.theta[0] == pytest.approx(ref["sd"], abs=2e-4)        # clmm: theta is the SD
    # threshold SEs through theta = T alpha, by hand from the covariance of alpha
    k = len(res.threshold_params)
    C, T = res.cov_params().to_numpy()[:k, :k], np.asarray(res.model.thr.T)
    np.testing.assert_allclose(res.bse_thresholds, np.sqrt(np.diag(T @ C @ T.T)), rtol=1e-12)
    if kwargs.get("threshold") == "equidistant":      # theta_j = theta_1 + (j - 1) spacing
        j = np.arange(4)
        np.testing.assert_allclose(res.bse_thresholds, np.sqrt(C[0, 0] + j**2 * C[1, 1] + 2 * j * C[0, 1]))
    np.testing.assert_allclose(res.bse_fe, res.bse.to_numpy()[k:], rtol=1e-12)


# geepack with epsilon = 1e-10 against the same equations solved to convergence here: observed
# 2e-10 (estimates, SEs, alpha) and 2e-12 relative (quasi-likelihood, CIC); asserted 1e-6
@pytest.mark.parametrize("key", ["gee_epil_weighted", "gee_dietox_gamma_weighted"])
def test_gee_select_prior_weights_poisson_and_gamma_against_geepack(key):
    F = sm.families
    if key == "gee_epil_weighted":
        d = read_data("epil.csv")
        args = ("y ~ lbase * trt + lage + V4", "subject", d, F.Poisson())
        w, time = 1.0 + (d["trt"] == "progabide").to_numpy(float), "period"
    else:
        d = read_data("dietox.csv")
        args = ("Feed ~ Time + Cu", "Pig", d, F.Gamma(F.links.Log()))
        w, time = (d["Start"] / 20).to_numpy(), "Time"
    ref = REF[key]
    sel = mf.gee_select(*args, cov_structs=list(ref), time=time, weights=w)
    for struct, r in ref.items():
        res, row = sel.results[struct], sel.table.loc[struct]
        # R's names and order: trtprogabide for trt[T.progabide], (Intercept) for Intercept
        names = {re.sub(r"\[T\.([^\]]+)\]", r"\1", k).replace("Intercept", "(Intercept)"): k
                 for k in res.params.index}
        order = [names[k] for k in r["coef"]]
        np.testing.assert_allclose(res.params[order], list(r["coef"].values()), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.bse[order], r["robust_se"], rtol=1e-6)
        if r["alpha"] is not None:
            assert float(res.cov_struct.dep_params) == pytest.approx(r["alpha"], abs=1e-6)
        assert row["QuasiLik"] == pytest.approx(r["QuasiLik_pan"], rel=1e-6)
        # geepack's CIC with its own independence scale (our default divides by rows, not sum(w))
        assert qic(res, scale=ref["independence"]["scale"])["CIC"] == pytest.approx(r["CIC"], rel=1e-6)


def test_ranef_condvar_and_linear_predictor_re_take_true_or_false():
    # a string was read by its truth ('False' gave the conditional variances / random effects)
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()
    with pytest.raises(ValueError, match="condvar must be True or False"):
        fit.ranef(condvar="False")
    with pytest.raises(ValueError, match="re must be True or False"):
        fit.linear_predictor(re="False")
    assert "condvar" in fit.ranef(condvar=np.bool_(True))["Subject"].attrs
    np.testing.assert_allclose(fit.linear_predictor(re=False),
                               fit.model.exog @ np.asarray(fit.fe_params), rtol=1e-14)


def test_dask_fit_reads_cov_type_and_ddf_as_the_in_memory_fit():
    # cov_type="NONROBUST" was refused as cluster-robust, "bogus" got the Dask refusal instead
    # of the fit's ValueError; "z" df and the in-memory fit's spellings go through
    dd = pytest.importorskip("dask.dataframe")
    sl = datasets.load("sleepstudy")
    model = mf.lmer("Reaction ~ Days + (Days | Subject)", dd.from_pandas(sl, npartitions=3))
    mem = mf.lmer("Reaction ~ Days + (Days | Subject)", sl).fit()
    got = model.fit(cov_type="NONROBUST")
    np.testing.assert_allclose(got.fe_params, mem.fe_params, rtol=1e-8)
    with pytest.raises(ValueError, match="unknown cov_type"):
        model.fit(cov_type="bogus")
    with pytest.raises(ValueError, match="ddf must be"):
        model.fit(ddf="bogus")
    with pytest.raises(TypeError, match="positional"):
        model.fit(*([None] * 15))


def test_resid_kept_through_remove_data_and_frozen_arrays_through_pickle(cbpp):
    sl = datasets.load("sleepstudy")
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", sl).fit()
    want = r.resid.to_numpy()
    r2 = mf.lmer("Reaction ~ Days + (Days | Subject)", sl).fit()
    r2.remove_data()                 # resid was recomputed from endog = None: all NaN
    np.testing.assert_allclose(r2.resid.to_numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(r2.fittedvalues.to_numpy(), sl["Reaction"].to_numpy() - want,
                               rtol=1e-12)
    # pickle and deepcopy gave the read-only arrays back writeable
    for res in (copy.deepcopy(r), pickle.loads(pickle.dumps(_cbpp_fit(cbpp)))):
        for name in ("theta", "_u", "normalized_cov_params"):
            with pytest.raises(ValueError, match="read-only"):
                getattr(res._results, name)[0] = 5.0


def test_more_flags_take_true_or_false():
    # strings read by their truth: re='False' gave the re=True variances, reduce_terms='False'
    # and reverse='False' acted as True
    from mlmext.inference import predictive_variance
    sl = datasets.load("sleepstudy")
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", sl).fit()
    with pytest.raises(ValueError, match="re must be True or False"):
        predictive_variance(fit, sl.head(3), re="False")
    with pytest.raises(ValueError, match="reduce_terms must be True or False"):
        mlmext.ranova(fit, reduce_terms="False")
    d = sl.assign(f=np.where(sl["Days"] < 5, "a", "b"))
    with pytest.raises(ValueError, match="reverse must be True or False"):
        mf.lmer("Reaction ~ f + (1|Subject)", d).fit().emmeans("f").pairs(reverse="False")
