"""Public options no other test passed (the second option sweep), each checked against R
(tools/r_reference/sweep2_reference.R, stored in tests/reference/sweep2/sweep2.json)."""
import json
import warnings
import os

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext
import mlmext.formula.api as mf
from mlmext import datasets

with open(os.path.join(os.path.dirname(__file__), "reference", "sweep2", "sweep2.json")) as fh:
    REF = json.load(fh)


def ref_table(key):
    """An emmeans table stored by jsonlite (a list of rows) as a DataFrame."""
    return pd.DataFrame(REF[key])


@pytest.fixture(scope="module")
def dietox():
    dx = datasets.load("dietox")
    return dx.assign(Time3=np.minimum(dx["Time"], 3))       # a covariate with 3 values


@pytest.fixture(scope="module")
def pig_fit(dietox):
    return mf.lmer("Weight ~ Evit * Cu + Time + (1 | Pig)", dietox).fit()


@pytest.mark.parametrize("type_", [1, 2, 3])
@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
def test_anova_types_and_ddf(pig_fit, type_, ddf):
    a = mlmext.anova(pig_fit, type=type_, ddf=ddf.lower())
    want = REF[f"anova_{type_}_{ddf}"]
    np.testing.assert_allclose(a["NumDF"], want["NumDF"])
    np.testing.assert_allclose(a["F value"], want["F"], rtol=1e-4)
    np.testing.assert_allclose(a["DenDF"], want["DenDF"], rtol=1e-3)


def _same_means(got, key, col="emmean"):
    want = ref_table(key)
    np.testing.assert_allclose(got[col], want[col], rtol=1e-5)
    np.testing.assert_allclose(got["SE"], want["SE"], rtol=1e-4)
    np.testing.assert_allclose(got["df"], want["df"], rtol=1e-3)


def test_emmeans_weights_at_by(pig_fit):
    _same_means(pig_fit.emmeans("Evit", weights="proportional"), "emm_prop")
    _same_means(pig_fit.emmeans("Cu", at={"Time": [2, 8]}), "emm_at")
    emm = pig_fit.emmeans("Evit", by="Cu")
    _same_means(emm, "emm_by")
    assert list(emm["Cu"].astype(str)) == list(ref_table("emm_by")["Cu"])
    emm = pig_fit.emmeans("Evit", level=0.9)
    np.testing.assert_allclose(emm[["lower.CL", "upper.CL"]],
                               ref_table("emm_level90")[["lower.CL", "upper.CL"]], rtol=1e-5)


@pytest.mark.parametrize("key,by,call", [
    ("pairs_by", "Cu", lambda e: e.pairs()),
    ("trt_holm", None, lambda e: e.contrast("trt.vs.ctrl", adjust="holm")),
    ("trt_ref2", None, lambda e: e.contrast("trt.vs.ctrl", adjust="none", ref=1)),
    ("rev_bonf", None, lambda e: e.contrast("revpairwise", adjust="bonferroni")),
    ("pairs_sidak", None, lambda e: e.pairs(adjust="sidak")),
    ("trt_by_dunnettx", "Cu", lambda e: e.contrast("trt.vs.ctrl")),
    ("pairs_9_tukey", None, lambda e: e.pairs()),
    ("pairs_9_fdr", None, lambda e: e.pairs(adjust="fdr")),
    ("pairs_9_BH", None, lambda e: e.pairs(adjust="BH")),
    ("pairs_9_BY", None, lambda e: e.pairs(adjust="BY")),
    ("pairs_9_hochberg", None, lambda e: e.pairs(adjust="hochberg"))])
def test_emmeans_contrast_methods_and_adjustments(pig_fit, key, by, call):
    specs = ["Evit", "Cu"] if key.startswith("pairs_9_") else "Evit" if by else "Cu"
    got = call(pig_fit.emmeans(specs, by=by))
    want = ref_table(key)
    assert list(got["contrast"]) == list(want["contrast"])
    np.testing.assert_allclose(got["estimate"], want["estimate"], rtol=1e-5)
    np.testing.assert_allclose(got["p.value"], want["p.value"], rtol=1e-3, atol=1e-10)


def test_emmeans_cov_keep(dietox):
    # Time3 has 3 distinct values: at its mean by default, kept (and averaged over) with
    # cov_keep=3, as emmeans' cov.keep = 3; the weights then count its values too
    fit = mf.lmer("Weight ~ Evit + Time3 + (1 | Pig)", dietox).fit()
    _same_means(fit.emmeans("Evit"), "cov_keep_default")
    _same_means(fit.emmeans("Evit", cov_keep=3), "cov_keep_3")
    _same_means(fit.emmeans("Evit", cov_keep=3, weights="proportional"), "cov_keep_3_prop")
    assert not np.allclose(fit.emmeans("Evit", cov_keep=3, weights="proportional")["emmean"],
                           fit.emmeans("Evit", cov_keep=3)["emmean"])


def test_drop1_kenward_roger(pig_fit):
    d = mlmext.drop1(pig_fit, ddf="kenward-roger")
    np.testing.assert_allclose(d["F value"], REF["drop1"]["F"], rtol=1e-4)
    np.testing.assert_allclose(d["DenDF"], REF["drop1"]["DenDF"], rtol=1e-3)


@pytest.mark.parametrize("reduce_terms,key", [(True, "ranova"), (False, "ranova_full")])
def test_ranova_reduce_terms(dietox, reduce_terms, key):
    fit = mf.lmer("Weight ~ Time + (Time | Pig)", dietox).fit()
    r = mlmext.ranova(fit, reduce_terms=reduce_terms)
    np.testing.assert_allclose(r["logLik"], REF[key]["logLik"], rtol=1e-7)
    np.testing.assert_allclose(r["Df"].iloc[1:].astype(float), REF[key]["Df"][1:])


@pytest.fixture(scope="module")
def cbpp():
    cb = datasets.load("cbpp")
    return cb.assign(lsize=np.log(cb["size"]))


@pytest.mark.parametrize("how", ["array", "column", "term"])
def test_poisson_offset_forms(cbpp, how):
    # offset= as an array, as a column name, and offset() in the formula: one model (R's, with
    # a tight tolerance), and predictions on new rows (a new herd: the population value) use it
    kw = {"array": {"offset": np.log(cbpp["size"])}, "column": {"offset": "lsize"}}.get(how, {})
    form = "incidence ~ period + (1|herd)" + (" + offset(np.log(size))" if how == "term" else "")
    g = mf.glmer(form, cbpp, family="poisson", **kw).fit()
    want = REF["pois_offset"]
    assert g.llf == pytest.approx(want["logLik"], abs=1e-3)
    np.testing.assert_allclose(g.fe_params, want["beta"], atol=1e-3)
    np.testing.assert_allclose(g.theta, want["theta"], atol=1e-3)
    new = pd.DataFrame({"period": pd.Categorical(["1", "3"], categories=cbpp["period"].cat.categories),
                        "herd": ["1", "zz"], "size": [10.0, 20.0], "lsize": np.log([10.0, 20.0])})
    pred = g.predict(new, offset=np.log([10.0, 20.0])) if how == "array" else g.predict(new)
    np.testing.assert_allclose(pred, want["pred_new"], rtol=2e-3)


def test_binomial_links_and_quadrature(cbpp):
    form = "cbind(incidence, size - incidence) ~ period + (1|herd)"
    g = mf.glmer(form, cbpp, family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    assert g.llf == pytest.approx(REF["binom_probit"]["logLik"], abs=1e-4)
    np.testing.assert_allclose(g.fe_params, REF["binom_probit"]["beta"], atol=1e-3)
    g = mf.glmer(form, cbpp, family=sm.families.Binomial(link=sm.families.links.CLogLog())
                 ).fit(nagq=9)
    assert g.llf_lme4 == pytest.approx(REF["binom_cloglog_agq9"]["logLik"], abs=1e-4)
    np.testing.assert_allclose(g.fe_params, REF["binom_cloglog_agq9"]["beta"], atol=1e-3)
    np.testing.assert_allclose(g.theta, REF["binom_cloglog_agq9"]["theta"], atol=1e-3)


def test_emmeans_poisson_offset(cbpp):
    # emmeans adds the mean of the fitted offsets (mean(log(size)), not log(mean(size)));
    # type="response" back-transforms to rates with delta-method SEs
    g = mf.glmer("incidence ~ period + offset(np.log(size)) + (1|herd)", cbpp, family="poisson").fit()
    for got, key, col in [(g.emmeans("period"), "pois_offset_emm", "emmean"),
                          (g.emmeans("period", type="response"), "pois_offset_emm_rate", "rate")]:
        want = ref_table(key)
        np.testing.assert_allclose(got[col], want[col], rtol=1e-4)
        np.testing.assert_allclose(got["SE"], want["SE"], rtol=1e-3)
        np.testing.assert_allclose(got["asymp.UCL"], want["asymp.UCL"], rtol=1e-3)


@pytest.mark.parametrize("how", ["offset column", "offset array", "exposure"])
def test_gee_select_offset_and_exposure(cbpp, how):
    from mlmext.gee.selection import gee_select
    kw = {"offset column": {"offset": "lsize"}, "offset array": {"offset": cbpp["lsize"]},
          "exposure": {"exposure": "size"}}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = gee_select("incidence ~ period", "herd", cbpp, "poisson",
                         cov_structs=["exchangeable", "ar1"], ctol=1e-10, maxiter=200, **kw)
    for cs in ["independence", "exchangeable", "ar1"]:
        want = REF[f"gee_offset_{cs}"]
        np.testing.assert_allclose(sel.results[cs].params, want["coef"], atol=1e-6)
        for crit in ["QIC", "QICu", "CIC"]:
            assert sel.table.loc[cs, crit] == pytest.approx(want[crit], rel=1e-6)


def test_dask_fit_influence_and_emmeans_say_why_not():
    # influence() on a model of Dask data failed with "TypeError: 'NoneType' object is not
    # subscriptable" (its grouping codes), emmeans() blamed a model built from arrays: both
    # now say the model holds no rows
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    from mlmext.dask.model import RowsNotHeldError
    sl = datasets.load("sleepstudy")
    with dask.config.set(scheduler="synchronous"):
        fit = mf.lmer("Reaction ~ Days + (Days | Subject)", dd.from_pandas(sl, npartitions=3)).fit()
        for call in (lambda: fit.influence(), lambda: fit.influence("Subject", method="refit"),
                     lambda: fit.cooks_distance()):
            with pytest.raises(RowsNotHeldError, match="holds no rows"):
                call()
        with pytest.raises(NotImplementedError, match="Dask data"):
            fit.emmeans("Days", at={"Days": [0, 5]})


def test_simulate_params_checked_and_used():
    # simulate(params=) of the wrong length failed in a matmul naming no argument
    from mlmext.inference import simulate
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()
    for bad in ([1.0, 2.0, 3.0], [250.0], [250.0, np.nan]):
        with pytest.raises(ValueError, match="params must be 2 finite fixed effects"):
            simulate(fit, 1, params=bad)
    # given params: the same draws shifted by X (params - beta_hat)
    a = simulate(fit, 2, seed=7)
    b = simulate(fit, 2, seed=7, params=fit.fe_params.to_numpy() + [0.0, 1.5])
    np.testing.assert_allclose(b - a, np.repeat(1.5 * fit.model.exog[:, [1]], 2, axis=1),
                               atol=1e-9)


def test_influence_plot_table_refuses_group_and_method():
    # with a table (or one column of it) group= and method= were ignored in silence: a
    # refit-method request drew the one-step table it was given
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from mlmext import plots
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()
    tab = fit.influence()
    for table in (tab, tab["cooks_d"]):
        with pytest.raises(TypeError, match="table already"):
            plots.influence_plot(table, method="refit")
        with pytest.raises(TypeError, match="table already"):
            plots.influence_plot(table, group="Subject")
    ax = plots.influence_plot(tab, "cooks_d").axes[0]       # the table alone still draws
    assert sorted(ax.lines[0].get_xdata().tolist() + (ax.lines[1].get_xdata().tolist()
                  if len(ax.lines) > 1 and ax.lines[1].get_linestyle() == "None" else [])) \
        == pytest.approx(sorted(tab["cooks_d"]))


def test_emmeans_weights_of_a_weighted_lmm(dietox):
    # .wgt. counted an LMM's prior weights always; emmeans counts rows for a plain formula
    # (lme4's frame, without the weights) and the prior weights only when the fixed part calls
    # a function (model.frame keeps them): proportional / cells means were off by ~0.01
    dx = dietox.assign(w=dietox["Start"] / 20)
    plain = mf.lmer("Weight ~ Evit + Cu + Time + (1 | Pig)", dx, weights="w").fit()
    sa = "satterthwaite"                 # (Kenward-Roger: not for weighted fits)
    _same_means(plain.emmeans("Evit", weights="proportional", ddf=sa), "wt_plain_prop")
    _same_means(plain.emmeans("Evit", weights="cells", ddf=sa), "wt_plain_cells")
    fn = mf.lmer("Weight ~ Evit + Cu + np.log(Time) + (1 | Pig)", dx, weights="w").fit()
    _same_means(fn.emmeans("Evit", weights="proportional", ddf=sa), "wt_fn_prop")
    # R's ^ (our **) is one of the operators emmeans counts as a function: prior weights
    pw = mf.lmer("Weight ~ (Evit + Cu)**2 + Time + (1 | Pig)", dx, weights="w").fit()
    _same_means(pw.emmeans("Evit", weights="proportional", ddf=sa), "wt_pow_prop")


@pytest.mark.parametrize("key,formula,data,reml", [
    ("ranova_uncorr", "Reaction ~ Days + (Days || Subject)", "sleepstudy", True),
    ("ranova_two_ml", "Weight ~ Time + (Time | Pig) + (1 | Litter)", "dietox", False),
    ("ranova_nested", "Weight ~ Time + (1 | Litter/Pig)", "dietox", True)])
def test_ranova_term_forms(key, formula, data, reml):
    fit = mf.lmer(formula, datasets.load(data)).fit(reml=reml)
    r = mlmext.ranova(fit, reduce_terms=key != "ranova_uncorr")
    np.testing.assert_allclose(r["logLik"], REF[key]["logLik"], rtol=1e-7)
    np.testing.assert_allclose(r["Df"].iloc[1:].astype(float), REF[key]["Df"][1:])


@pytest.fixture(scope="module")
def ar1_fit():
    from mlmext import cor
    return mf.lmer("Reaction ~ Days + (1|Subject)", datasets.load("sleepstudy"),
                   correlation=cor.AR1("Days", "Subject")).fit()


def test_kenward_roger_and_leverage_refused_with_residual_correlation(ar1_fit):
    # df_kenward_roger() refused an AR1 fit, but KR was reached through anova(ddf=), drop1,
    # summary(ddf=) and emmeans' default, with a V of independent residuals: another model's
    # df and SEs (emmeans SE 10.51 vs 10.94); leverage() used that V too
    with pytest.raises(NotImplementedError, match="residual correlation"):
        mlmext.anova(ar1_fit, ddf="kenward-roger")
    with pytest.raises(NotImplementedError, match="residual correlation"):
        mlmext.drop1(ar1_fit, ddf="kenward-roger")
    with pytest.raises(NotImplementedError, match="residual correlation"):
        ar1_fit.summary(ddf="kenward-roger")
    with pytest.raises(NotImplementedError, match="residual correlation"):
        ar1_fit.emmeans("Days", at={"Days": [0, 5]}, ddf="kenward-roger")
    with pytest.raises(NotImplementedError, match="residual correlation"):
        ar1_fit.leverage()
    # emmeans' default falls back to Satterthwaite with a note, as for ML fits
    emm = ar1_fit.emmeans("Days", at={"Days": [0, 5]})
    sat = ar1_fit.emmeans("Days", at={"Days": [0, 5]}, ddf="satterthwaite")
    np.testing.assert_allclose(emm["SE"], sat["SE"])
    np.testing.assert_allclose(emm["df"], sat["df"])
    assert any("Satterthwaite" in n for n in emm.attrs["notes"])
    # the Satterthwaite means are the Wald ones: L beta, sqrt(L V L') with the fit's V
    L = np.array([[1.0, 0.0], [1.0, 5.0]])
    np.testing.assert_allclose(sat["emmean"], L @ ar1_fit.fe_params.to_numpy())
    np.testing.assert_allclose(sat["SE"], np.sqrt(np.diag(L @ np.asarray(ar1_fit.cov_params()) @ L.T)))


@pytest.mark.parametrize("name", ["simulate", "icc", "r2_nakagawa", "r2_rights_sterba",
                                  "bootstrap", "allfit", "cluster_robust", "check_convergence",
                                  "profile", "r2_likelihood_ratio"])
def test_module_functions_refuse_residual_correlation(ar1_fit, name):
    # the results' methods of these names refuse a fit with correlation=, the module functions
    # answered for a model with independent residuals: simulate() drew independent
    # residuals, icc() / r2_nakagawa() / r2_rights_sterba() returned numbers, bootstrap()
    # NaN rows; others failed with "give rho=" or an IndexError
    import mlmext.inference as inf
    with pytest.raises(NotImplementedError, match="residual correlation structure"):
        getattr(inf, name)(ar1_fit)
    method = {"cluster_robust": lambda f: f.get_robustcov_results(),
              "r2_nakagawa": lambda f: f.r2(), "r2_rights_sterba": lambda f: f.r2("r2mlm"),
              "r2_likelihood_ratio": lambda f: f.r2("lr")}.get(name, lambda f: getattr(f, name)())
    with pytest.raises(NotImplementedError, match="residual correlation structure"):
        method(ar1_fit)


@pytest.mark.parametrize("name", ["icc", "r2_nakagawa", "r2_likelihood_ratio", "allfit"])
def test_module_functions_refuse_zero_inflated(name):
    # the results' icc / r2 / allfit refuse a zero-inflated fit; the module functions gave
    # the count part's ICC and R2 (r2_likelihood_ratio 0.99999 on grouseticks) or, allfit,
    # an AttributeError 'zi_Intercept'
    import mlmext.inference as inf
    gt = datasets.load("grouseticks")
    z = mf.glmer("TICKS ~ YEAR + cHEIGHT + (1|BROOD)", gt, family="poisson", ziformula="~ 1").fit()
    with pytest.raises(NotImplementedError, match="zero-inflated / hurdle"):
        getattr(inf, name)(z)


@pytest.mark.parametrize("key", ["r2_clmm_logit", "r2_clmm_probit", "r2_glmm_probit"])
def test_icc_r2_latent_scale_against_performance(cbpp, key):
    # the link's distribution variance on the latent scale (pi^2/3 logit, 1 probit)
    if key == "r2_glmm_probit":
        fit = mf.glmer("cbind(incidence, size - incidence) ~ period + (1|herd)", cbpp,
                       family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    else:
        fit = mf.clmm("rating ~ temp + contact + (1|judge)", datasets.load("wine"),
                      link=key.rsplit("_", 1)[1]).fit()
    want, icc, r2 = REF[key], fit.icc(), fit.r2()
    assert icc["adjusted"] == pytest.approx(want["icc_adjusted"], rel=1e-4)
    assert icc["conditional"] == pytest.approx(want["icc_conditional"], rel=1e-4)
    assert r2["marginal"] == pytest.approx(want["r2_marginal"], rel=1e-4)
    assert r2["conditional"] == pytest.approx(want["r2_conditional"], rel=1e-4)


def test_profile_plot_table_refuses_profile_arguments():
    # with a profile table, alpha= / npoints= were ignored in silence
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from mlmext import plots
    fit = mf.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("dyestuff")).fit()
    prof = fit.profile(cols=["sigma"])
    with pytest.raises(TypeError, match="profile already"):
        plots.profile(prof, npoints=12)
    ax = plots.profile(prof).axes[0]                 # the table alone still draws
    np.testing.assert_allclose(np.sort(ax.lines[0].get_xdata()),
                               np.sort(prof.loc[prof["parameter"] == "sigma", "value"]))


def test_plots_figsize_with_ax_refused():
    # figsize= with ax= was ignored in silence (the caller's figure kept its size)
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from mlmext import plots
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()
    fig, axes = plt.subplots(1, 2)
    for call in (lambda: plots.caterpillar(fit, ax=axes, figsize=(8, 8)),
                 lambda: plots.qqplot_ranef(fit, ax=axes, figsize=(8, 8))):
        with pytest.raises(TypeError, match="figsize"):
            call()
    assert plots.caterpillar(fit, ax=axes) is fig            # without figsize: drawn there
    plt.close("all")


def test_t_test_and_wald_test_options_not_ignored():
    # t_test(df=..., cov_p=) used the fit's covariance, t_test(df=..., use_t=False) still tested
    # t, and wald_test(df_constraints=, scalar=False) kept the default F test: all in silence
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()
    cov4 = 4 * np.asarray(fit.cov_params())
    for kw in ({"cov_p": cov4}, {"use_t": False}):
        with pytest.raises(TypeError, match="df='satterthwaite'"):
            fit.t_test("Days = 0", df="satterthwaite", **kw)
    with pytest.raises(TypeError, match="use_t=True"):
        fit.t_test("Days = 0", df="z", use_t=True)
    # what the options mean where they are read: statsmodels' own tests
    z = fit.t_test("Days = 0", cov_p=cov4, use_t=False)
    assert np.squeeze(z.sd) == pytest.approx(2 * float(fit.bse_fe["Days"]), rel=1e-12)
    assert np.squeeze(fit.t_test("Days = 0", df="satterthwaite", use_t=True).df_denom) == \
        pytest.approx(np.squeeze(fit.t_test("Days = 0").df_denom), rel=1e-12)
    for kw in ({"df_constraints": 5}, {"scalar": False}):
        with pytest.raises(TypeError, match="statsmodels' own Wald"):
            fit.wald_test("Days = 0", **kw)
    chi1 = fit.wald_test("Days = 0", use_f=False)
    chi5 = fit.wald_test("Days = 0", use_f=False, df_constraints=5)
    assert chi5.statistic == pytest.approx(chi1.statistic, rel=1e-12)
    assert chi5.df_denom == 5 and chi1.df_denom == 1
    assert chi5.pvalue > chi1.pvalue


def test_lmm_start_params_takes_a_params_object_and_predict_re_formula_hint():
    sl = datasets.load("sleepstudy")
    fit = mf.lmer("Reaction ~ Days + (Days|Subject)", sl).fit()
    # a fit's params_object as the start (GLMMs took it; the LMM said "needs 3 values, got 1")
    again = mf.lmer("Reaction ~ Days + (Days|Subject)", sl).fit(start_params=fit.params_object)
    np.testing.assert_allclose(again.theta, fit.theta, rtol=1e-6)
    assert again.llf == pytest.approx(fit.llf, abs=1e-8)
    with pytest.raises(TypeError, match=r"re_formula.*re=False"):
        fit.predict(sl, re_formula=None)


def test_emmeans_adjust_methods_not_implemented_say_so(pig_fit):
    e = pig_fit.emmeans("Cu")
    for a in ("hommel", "mvt", "scheffe"):
        with pytest.raises(NotImplementedError, match=a):
            e.pairs(adjust=a)
    with pytest.raises(ValueError, match="adjust must be one of"):
        e.pairs(adjust="fdrr")


def test_sdcor_from_theta_needs_the_designs_theta():
    # a longer theta gave uninitialised numbers for its extra entries (np.empty)
    from mlmext.objective import sdcor_from_theta
    des = mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).re_design
    with pytest.raises(ValueError, match="theta needs 3 values"):
        sdcor_from_theta(des, [1.0, 0.5, 0.2, 9.0])
    np.testing.assert_allclose(sdcor_from_theta(des, [2.0, 0.0, 1.0], 3.0), [6.0, 0.0, 3.0])
