"""mlmext.inference against stored R values (tests/reference/inference, made by
tools/r_reference/inference_reference.R): lmerTest / pbkrtest df, lme4 profile intervals and
anova, performance's R2 / ICC, HLMdiag's group-deletion Cook's distance, boot.ci formulas."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import mlmext
from mlmext import inference as inf
from mlmext.formula import api as mf

from refcases import lmm_eps, load_ref, norm, read_data

SUB = "inference"


def ref(name):
    return load_ref(SUB, name)


_FITS = {}


def fit(formula, data, reml=True):
    key = (formula, data, reml)
    if key not in _FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITS[key] = mf.lmer(formula, read_data(data)).fit(reml=reml)
    return _FITS[key]


def named(series_or_frame, rname):
    """Row of ours whose name matches the R name (norm() spelling)."""
    for k in series_or_frame.index:
        if norm(k) == norm(rname):
            return series_or_frame.loc[k]
    raise KeyError(rname)


def k_fit(res):
    """Our fit's estimates are within sqrt(eps) standard errors of the optimum, eps its deviance
    bound (refcases.lmm_eps); the tolerances against R below are R's digits plus this: an SE, a df
    or a variance ratio moves by about k relative, a t value by k (1 + |t|)."""
    return float(np.sqrt(lmm_eps(res)))


def t_close(a, b, k):
    a, b = float(a), float(b)
    return abs(a - b) <= 1e-4 * abs(b) + k * (1 + abs(b))


def p_close(a, b, t=0.0, k=0.0):
    """p-values agree: relative 2e-3, looser for tiny p (|log p| ~ 300 amplifies t's last digits),
    plus what a change of k (1 + |t|) in t makes of log p (d log p / dt is about |t| + 1)."""
    a, b = float(a), float(b)
    return abs(np.log(a) - np.log(b)) < 2e-3 + 1e-5 * abs(np.log(b)) + (abs(t) + 1) * k * (1 + abs(t))


HSB = "mAch ~ meanses * cses + (cses | school)"
SLEEP = "Reaction ~ Days + (Days | Subject)"
PENI = "diameter ~ 1 + (1 | plate) + (1 | sample)"


# ------------------------------------------------------------------ Satterthwaite / KR
@pytest.mark.parametrize("case,formula,data", [("ddf_hsb82", HSB, "hsb82.csv"),
                                               ("ddf_sleepstudy", SLEEP, "sleepstudy.csv"),
                                               ("ddf_penicillin", PENI, "penicillin.csv")])
def test_satterthwaite_df_and_pvalues(case, formula, data):
    r = ref(case)
    res = fit(formula, data)
    df = res.df_satterthwaite()
    assert isinstance(df, pd.Series) and list(df.index) == list(res.fe_params.index)
    frame = inf.ddf._ddf_frame(res, "satterthwaite")
    k = k_fit(res)
    for name, row in r["satterthwaite"].items():
        assert named(df, name) == pytest.approx(row["df"], rel=1e-3 + k)
        assert t_close(named(frame["t"], name), row["t value"], k)
        assert p_close(named(frame["P>|t|"], name), row["Pr(>|t|)"], row["t value"], k)   # p down to 1e-131
    # ML fit: lmerTest uses the ML deviance and sigma
    ml = fit(formula, data, reml=False)
    for name, row in r["satterthwaite_ml"].items():
        assert named(ml.df_satterthwaite(), name) == pytest.approx(row["df"], rel=1e-3 + k_fit(ml))


def test_hsb82_fit_matches_lmertest():
    r = ref("ddf_hsb82")
    res = fit(HSB, "hsb82.csv")
    k = k_fit(res)
    for name, v in r["fit"]["fixef"].items():
        assert named(res.fe_params, name) == pytest.approx(v, abs=1e-5 * abs(v) + k * named(res.bse_fe, name))
    se_theta = np.sqrt(np.diag(2.0 * np.linalg.inv(res.check_convergence().hessian)))
    theta_r = np.asarray(r["fit"]["theta"], dtype=float)
    assert np.all(np.abs(res.theta - theta_r) <= 2e-4 * np.abs(theta_r) + 1e-5 + k * se_theta)


@pytest.mark.parametrize("case,formula,data", [("ddf_hsb82", HSB, "hsb82.csv"),
                                               ("ddf_sleepstudy", SLEEP, "sleepstudy.csv"),
                                               ("ddf_penicillin", PENI, "penicillin.csv")])
def test_kenward_roger(case, formula, data):
    r = ref(case)
    res = fit(formula, data)
    df = res.df_kenward_roger()
    V = res.cov_params_kenward_roger().to_numpy()
    k = k_fit(res)
    VR = np.array(r["vcov_kr"]).reshape(V.shape)
    sd = np.sqrt(np.diag(VR))
    np.testing.assert_allclose(V / np.outer(sd, sd), VR / np.outer(sd, sd), rtol=0, atol=2e-4 + 2 * k)
    frame = inf.ddf._ddf_frame(res, "kenward-roger")
    for name, row in r["kenward_roger"].items():
        assert named(df, name) == pytest.approx(row["df"], rel=1e-3 + k)
        assert named(frame["std err"], name) == pytest.approx(row["Std. Error"], rel=1e-4 + k)
        assert p_close(named(frame["P>|t|"], name), row["Pr(>|t|)"], row["t value"], k)


def test_contrasts_t_test():
    r = ref("ddf_hsb82")
    res = fit(HSB, "hsb82.csv")
    ml = fit(HSB, "hsb82.csv", reml=False)
    for c in r["contrasts"]:
        L = np.array(c["L"], dtype=float)[None, :]
        ts = res.t_test(L, df="satterthwaite")
        tk = res.t_test(L, df="kenward-roger")
        tm = ml.t_test(L, df="satterthwaite")
        for got, want, k in ((ts, c["satterthwaite"], k_fit(res)), (tk, c["kenward_roger"], k_fit(res)),
                             (tm, c["satterthwaite_ml"], k_fit(ml))):
            assert float(got.df_denom[0]) == pytest.approx(want["df"], rel=1e-3 + k)
            assert float(got.sd[0]) == pytest.approx(want["Std. Error"], rel=1e-4 + k)
            assert float(got.effect[0]) == pytest.approx(want["Estimate"],
                                                         abs=1e-5 * abs(want["Estimate"]) + k * want["Std. Error"])
            assert p_close(got.pvalue, want["Pr(>|t|)"], want["t value"], k)
    # the same contrast written as a statsmodels string; the default t_test is the fit's
    # (Satterthwaite), df="z" and use_t=False give statsmodels' z test
    t1 = res.t_test("meanses + meanses:cses = 0", df="satterthwaite")
    assert float(t1.df_denom[0]) == pytest.approx(r["contrasts"][0]["satterthwaite"]["df"], rel=1e-3)
    td = res.t_test("meanses + meanses:cses = 0")
    assert td.method == "satterthwaite" and np.squeeze(td.pvalue) == np.squeeze(t1.pvalue)
    t0 = res.t_test("meanses = 0", df="z")
    assert t0.distribution == "norm" and res.t_test("meanses = 0", use_t=False).distribution == "norm"
    assert np.squeeze(t0.pvalue) == pytest.approx(2 * stats.norm.sf(abs(np.squeeze(t0.tvalue))), rel=1e-12)


def test_satterthwaite_ftest():
    r = ref("ddf_hsb82")
    res = fit(HSB, "hsb82.csv")
    for c in r["contrasts_md"]:
        out = inf.satterthwaite_ftest(res, np.array(c["L"], dtype=float))
        want = c["satterthwaite"]
        k = k_fit(res)
        assert out["df_num"] == want["NumDF"]
        assert out["df_denom"] == pytest.approx(want["DenDF"], rel=1e-3 + k)
        # F is a mean of squared t values: sqrt(F) moves like a t value
        assert np.sqrt(out["F"]) == pytest.approx(np.sqrt(want["F value"]),
                                                  abs=5e-5 * np.sqrt(want["F value"]) + k * (1 + np.sqrt(want["F value"])))


def test_summary_ddf():
    res = fit(HSB, "hsb82.csv")
    text = str(res.summary(ddf="satterthwaite"))
    assert "Satterthwaite df" in text and "153.70" in text and "168.89" in text
    assert "Kenward-Roger" in str(res.summary(ddf="kenward-roger"))
    # the default table is the fit's (Satterthwaite); ddf="z" gives the old z table
    assert str(res.summary()) == text
    assert "P>|z|" in str(res.summary(ddf="z")) and "P>|z|" not in text
    with pytest.raises(ValueError, match="unknown ddf"):
        res.summary(ddf="containment")


def test_kr_needs_reml():
    ml = fit(SLEEP, "sleepstudy.csv", reml=False)
    with pytest.raises(ValueError, match="REML"):
        ml.df_kenward_roger()


# ------------------------------------------------------------------ confidence intervals
def test_wald_conf_int():
    res = fit(SLEEP, "sleepstudy.csv")
    ci = res.conf_int()
    assert isinstance(ci, pd.DataFrame) and list(ci.columns) == [0, 1]
    assert list(ci.index) == list(res.fe_params.index)
    # default: t quantiles on each coefficient's Satterthwaite df (lmerTest: 16.9997, 16.99998)
    q = stats.t.ppf(0.975, [16.9997262884927, 16.9999837255917])
    np.testing.assert_allclose(ci[0], res.fe_params - q * res.bse_fe, rtol=1e-7)
    np.testing.assert_allclose(ci[1], res.fe_params + q * res.bse_fe, rtol=1e-7)
    # fit(ddf="z"): statsmodels' normal intervals, as before
    zres = mf.lmer(SLEEP, read_data("sleepstudy.csv")).fit(ddf="z")
    z = 1.959963984540054
    np.testing.assert_allclose(zres.conf_int()[0], zres.fe_params - z * zres.bse_fe, rtol=1e-12)
    np.testing.assert_allclose(zres.conf_int()[1], zres.fe_params + z * zres.bse_fe, rtol=1e-12)
    pd.testing.assert_frame_equal(res.conf_int(alpha=0.1, cols=[1]), res.conf_int(alpha=0.1).iloc[[1]])
    with pytest.raises(ValueError, match="unknown method"):
        res.conf_int(method="exact")


@pytest.mark.parametrize("case,formula,data", [("profile_sleepstudy", SLEEP, "sleepstudy.csv"),
                                               ("profile_penicillin", PENI, "penicillin.csv")])
def test_profile_intervals(case, formula, data):
    r = ref(case)
    res = fit(formula, data, reml=r["reml"])
    ci = res.conf_int(method="profile")
    assert len(ci) == len(r["rownames"])
    for name, (lo, hi) in r["confint"].items():
        row = named(ci, name)
        assert abs(row[0] - lo) < 1e-3, (name, row[0], lo)
        assert abs(row[1] - hi) < 1e-3, (name, row[1], hi)
    assert ci.attrs["boundary"] == []


def test_profile_level_names_and_zeta():
    """90 % intervals for two parameters, lme4 names, and zeta at R's own profile points."""
    r = ref("profile_sleepstudy")
    res = fit(SLEEP, "sleepstudy.csv")
    ci = res.conf_int(alpha=0.1, method="profile", cols=[".sig03", ".sigma"], names="lme4")
    assert list(ci.index) == [".sig03", ".sigma"]
    assert r["oldnames"][2:4] == [".sig03", ".sigma"]
    for ours, rname in zip(ci.index, ["sd_Days|Subject", "sigma"]):
        np.testing.assert_allclose(ci.loc[ours].to_numpy(), r["confint90"][rname], atol=1e-3)
    assert inf.varpar_names(res) == ["sd_Intercept|Subject", "cor_Days.Intercept|Subject",
                                     "sd_Days|Subject", "sigma"]
    # exact profile values (no spline): zeta at the points R's profile() evaluated
    for rname in ("cor_Days.(Intercept)|Subject", "Days"):
        pts = r["profile"][rname]
        v, z = np.array(pts["value"]), np.array(pts["zeta"])
        keep = np.abs(z) < 3
        name = [n for n in inf.varpar_names(res) + list(res.fe_params.index) if norm(n) == norm(rname)][0]
        mine = inf.profile_zeta(res, name, v[keep])
        np.testing.assert_allclose(mine, z[keep], atol=1e-4)


def test_profile_boundary_sd_zero():
    r = ref("profile_singular")
    res = fit("y ~ x + (1 | g)", "singular.csv")
    assert res.is_singular()
    ci = res.conf_int(method="profile")
    assert ci.loc["sd_Intercept|g", 0] == 0.0
    assert ("sd_Intercept|g", "lower") in ci.attrs["boundary"]
    for name, (lo, hi) in r["confint"].items():
        row = named(ci, name)
        assert abs(row[0] - lo) < 1e-3 and abs(row[1] - hi) < 1e-3


@pytest.mark.slow
def test_profile_boundary_correlation():
    """The profile of a correlation reaches +1 before the cutoff: a one-sided interval.

    (lme4's sigma upper limit here, 0.65888, comes from a spline through a profile point where
    its inner optimizer failed -- zeta 4.19 instead of 2.96 -- so it is compared at 1e-3.)
    """
    r = ref("profile_corbound")
    res = fit("y ~ x + (x | g)", "corbound.csv", reml=False)
    ci = res.conf_int(method="profile")
    assert ci.loc["cor_x.Intercept|g", 1] == 1.0
    assert ("cor_x.Intercept|g", "upper") in ci.attrs["boundary"]
    for name, (lo, hi) in r["confint"].items():
        row = named(ci, name)
        assert abs(row[0] - lo) < 1e-3 and abs(row[1] - hi) < 1e-3


def test_profile_bad_parameter():
    res = fit(SLEEP, "sleepstudy.csv")
    with pytest.raises(ValueError, match="unknown parameter"):
        res.conf_int(method="profile", cols=["sd_Weeks|Subject"])


def test_boot_interval_formulas():
    """perc / basic / norm on boot()'s own replicates equal boot.ci's numbers."""
    r = ref("boot_formulas")
    alpha = 1 - r["conf"]
    for st in r["stats"]:
        b = pd.DataFrame({"s": st["t"]})
        b.attrs["t0"] = pd.Series({"s": st["t0"]})
        for kind in ("perc", "basic", "norm"):
            got = inf.boot_ci(b, alpha=alpha, boot_type=kind).loc["s"].to_numpy()
            np.testing.assert_allclose(got, st[kind], rtol=1e-10)


def test_bootstrap_replicates():
    res = fit(SLEEP, "sleepstudy.csv")
    b1 = res.bootstrap(nsim=30, seed=3)
    assert list(b1.columns) == inf.varpar_names(res) + list(res.fe_params.index)
    np.testing.assert_allclose(b1.attrs["t0"]["Days"], res.fe_params["Days"])
    assert b1.attrs["failed"] == 0
    # the replicates scatter like the estimates do: SD of Days within Monte Carlo error of its SE
    sd = b1["Days"].std()
    assert 0.6 * res.bse_fe["Days"] < sd < 1.5 * res.bse_fe["Days"]
    # same seed, same replicates; the interval is boot.ci's on them
    ci = res.conf_int(method="boot", nsim=30, seed=3, boot_type="basic")
    pd.testing.assert_frame_equal(ci.attrs["boot"], b1)
    assert list(ci.columns) == [0, 1]
    np.testing.assert_allclose(ci.loc["Days"].to_numpy(),
                               inf.boot_ci(b1, boot_type="basic").loc["Days"].to_numpy())


@pytest.mark.slow
def test_bootstrap_against_bootmer():
    """1000 replicates: percentile limits within Monte Carlo error of lme4's confint(method = 'boot')."""
    r = ref("boot_sleepstudy")
    res = fit(SLEEP, "sleepstudy.csv")
    ci = res.conf_int(method="boot", nsim=1000, seed=11)
    for name, (lo, hi) in r["confint_perc"].items():
        row = named(ci, name)
        width = hi - lo
        assert abs(row[0] - lo) < 0.12 * width and abs(row[1] - hi) < 0.12 * width, name


# ------------------------------------------------------------------ anova
def _table_matches(tab, want, tol=1e-6):
    """``tol``: absolute tolerance on the log-likelihood (the fits', not anova's, precision)."""
    for name, row in want.items():
        got = tab.loc[name]
        assert int(got["npar"]) == row["npar"]
        for col, k in (("AIC", 2), ("BIC", 2), ("logLik", 1), ("deviance", 2)):
            assert got[col] == pytest.approx(row[col], abs=k * tol + 1e-9 * abs(row[col])), (name, col)
        if row["Chisq"] is None:
            assert np.isnan(got["Chisq"]) and np.isnan(got["Pr(>Chisq)"])
        else:
            assert got["Chisq"] == pytest.approx(row["Chisq"], abs=4 * tol + 1e-5)
            assert got["Df"] == row["Df"]
            assert got["Pr(>Chisq)"] == pytest.approx(row["Pr(>Chisq)"], rel=1e-3)
    # internal consistency: the table is made of the fits' own log-likelihoods
    ll = tab["logLik"].to_numpy()
    np.testing.assert_allclose(tab["Chisq"].to_numpy()[1:], 2 * np.maximum(0, np.diff(ll)), rtol=1e-12)
    np.testing.assert_allclose(tab["AIC"], -2 * ll + 2 * tab["npar"], rtol=1e-12)


def test_anova_reml_pair_refits_ml():
    r = ref("anova_sleepstudy_reml")
    m0 = fit("Reaction ~ Days + (1 | Subject)", "sleepstudy.csv")
    m1 = fit(SLEEP, "sleepstudy.csv")
    assert m0.llf == pytest.approx(r["loglik"]["m0"], abs=1e-5)     # the REML fits themselves
    tab = mlmext.anova(m1, m0, names=["m1", "m0"])
    assert list(tab.index) == ["m0", "m1"]                           # ordered by npar
    _table_matches(tab, r["table"])
    assert tab.attrs["refitted_ml"] is True
    assert "refitting model(s) with ML (instead of REML)" in repr(tab)
    assert r["messages"] == "refitting model(s) with ML (instead of REML)"
    assert m1.reml                                                   # the user's fit is untouched


def test_anova_three_ml_models():
    r = ref("anova_sleepstudy_ml3")
    m0 = fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy.csv", reml=False)
    m2 = fit("Reaction ~ Days + I(Days**2) + (Days | Subject)", "sleepstudy.csv", reml=False)
    m1 = fit(SLEEP, "sleepstudy.csv", reml=False)
    tab = mlmext.anova(m0, m2, m1, names=["m0", "m2", "m1"])
    assert list(tab.index) == ["m0", "m1", "m2"]
    assert tab.attrs["refitted_ml"] is False
    _table_matches(tab, r["table"])


def test_anova_errors_and_warnings():
    ss = read_data("sleepstudy.csv")
    m1 = fit(SLEEP, "sleepstudy.csv")
    with pytest.raises(ValueError, match="needs a fitted model"):
        mlmext.anova()
    with pytest.raises(TypeError, match="one model"):
        mlmext.anova(m1, m1, type=3)          # type= is read for one model only
    sub = mf.lmer(SLEEP, ss.iloc[:170]).fit()
    with pytest.raises(ValueError, match="not fitted to the same data"):
        mlmext.anova(m1, sub)
    ss2 = ss.copy()
    ss2["Reaction"] = np.log(ss2["Reaction"])
    other = mf.lmer(SLEEP, ss2).fit()
    with pytest.raises(ValueError, match="different responses"):
        mlmext.anova(m1, other)
    quad = fit("Reaction ~ I(Days**2) + (Days | Subject)", "sleepstudy.csv")
    small = fit("Reaction ~ Days + (1 | Subject)", "sleepstudy.csv")
    with pytest.warns(UserWarning, match="do not look nested"):
        mlmext.anova(small, quad)
    with pytest.raises(ValueError, match="distinct name"):
        mlmext.anova(small, m1, names=["a", "a"])


def _glmer_or_skip():
    try:
        import statsmodels.api as sm
        cbpp = read_data("cbpp.csv")
        f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
        g1 = mf.glmer(f, cbpp, family=sm.families.Binomial()).fit()
        g0 = mf.glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp,
                      family=sm.families.Binomial()).fit()
    except (NotImplementedError, FileNotFoundError) as exc:
        pytest.skip(f"glmer not available: {exc}")
    return g0, g1


def test_anova_glmm_pair():
    g0, g1 = _glmer_or_skip()
    r = ref("anova_cbpp")
    tab = mlmext.anova(g0, g1, names=["g0", "g1"])
    assert tab.attrs["refitted_ml"] is False
    # mlmext's Laplace fit of g0 is 2e-4 better in logLik than glmer's: compare at 1e-3
    for name in ("g0", "g1"):
        assert tab.loc[name, "logLik"] >= r["table"][name]["logLik"] - 1e-4
    _table_matches(tab, r["table"], tol=1e-3)


def test_r2_glmm():
    _, g1 = _glmer_or_skip()
    r = ref("r2_cbpp")
    out, ic = g1.r2(), g1.icc()
    assert out["var_residual"] == pytest.approx(np.pi ** 2 / 3, rel=1e-12)   # logit link
    assert out["var_fixed"] == pytest.approx(r["var_fixed"], rel=2e-3)
    assert out["var_random"] == pytest.approx(r["var_random"], rel=2e-3)
    assert out["marginal"] == pytest.approx(r["r2_marginal"], rel=2e-3)
    assert out["conditional"] == pytest.approx(r["r2_conditional"], rel=2e-3)
    assert ic["adjusted"] == pytest.approx(r["icc_adjusted"], rel=2e-3)


@pytest.mark.parametrize("name,formula", [
    ("r2_grouseticks_poisson", "TICKS ~ YEAR + (1 | BROOD)"),
    ("r2_grouseticks_poisson2", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)")])
def test_r2_glmm_poisson(name, formula):
    """The Poisson branch: the distribution-specific variance log1p(1 / mu), mu the exp of the
    null model's intercept (insight 0.19's; the same random effects, intercept only)."""
    from mlmext.inference.variance_explained import _null_model_fit
    r = ref(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.glmer(formula, read_data("grouseticks.csv"), family=sm.families.Poisson()).fit()
        out = res.r2()
        null = _null_model_fit(res)
    assert res.llf >= r["fit"]["loglik"] - 1e-4
    # R's own numbers follow that formula
    assert r["var_residual"] == pytest.approx(np.log1p(np.exp(-r["null"]["intercept"])), rel=1e-12)
    # our null fit is at least as good as glmer's (grouseticks: +0.0085 and +1e-6 in llf), so
    # its intercept, and with it the residual variance, differ from R's by what that implies
    assert null.llf >= r["null"]["loglik"] - 1e-6
    b0 = float(np.asarray(null.params)[0])
    assert out["var_residual"] == pytest.approx(np.log1p(np.exp(-b0)), rel=1e-12)
    assert b0 == pytest.approx(r["null"]["intercept"], abs=5e-3)
    assert out["var_residual"] == pytest.approx(r["var_residual"], rel=5e-3)
    assert out["var_fixed"] == pytest.approx(r["var_fixed"], rel=2e-3)
    assert out["var_random"] == pytest.approx(r["var_random"], rel=2e-3)
    vf, vr, ve = out["var_fixed"], out["var_random"], out["var_residual"]
    assert out["marginal"] == pytest.approx(vf / (vf + vr + ve), rel=1e-12)
    assert out["conditional"] == pytest.approx((vf + vr) / (vf + vr + ve), rel=1e-12)
    assert out["marginal"] == pytest.approx(r["r2_marginal"], rel=2e-3)
    assert out["conditional"] == pytest.approx(r["r2_conditional"], rel=2e-3)


def test_glmm_simulate_and_bootstrap():
    """Binomial simulation keeps the trials; refits of simulated data work for glmer fits."""
    _, g1 = _glmer_or_skip()
    w = np.asarray(g1.model.weights)
    y = g1.simulate(nsim=400, seed=4).to_numpy()
    succ = y * w[:, None]
    np.testing.assert_allclose(succ, np.round(succ), atol=1e-9)
    assert np.all((y >= 0) & (y <= 1))
    b = g1.bootstrap(nsim=4, seed=2)
    assert list(b.columns) == ["sd_Intercept|herd"] + list(g1.fe_params.index)
    assert b.attrs["failed"] == 0 and np.all(np.isfinite(b.to_numpy()))


def _clmm_or_skip():
    try:
        wine = read_data("wine.csv")
        c0 = mf.clmm("rating ~ temp + (1 | judge)", wine).fit()
        c1 = mf.clmm("rating ~ temp + contact + (1 | judge)", wine).fit()
    except (NotImplementedError, FileNotFoundError) as exc:
        pytest.skip(f"clmm not available: {exc}")
    return c0, c1


def test_anova_clmm_pair():
    """ordinal's anova(clmm, clmm): same LR test (its table has no BIC / deviance columns)."""
    c0, c1 = _clmm_or_skip()
    r = ref("anova_wine_clmm")
    tab = mlmext.anova(c0, c1, names=["c0", "c1"])
    for name, row in r["table"].items():
        assert int(tab.loc[name, "npar"]) == row["no.par"]
        assert tab.loc[name, "logLik"] == pytest.approx(row["logLik"], abs=1e-3)
        assert tab.loc[name, "logLik"] >= row["logLik"] - 1e-5
        assert tab.loc[name, "AIC"] == pytest.approx(row["AIC"], abs=2e-3)
    assert tab.loc["c1", "Chisq"] == pytest.approx(r["table"]["c1"]["LR.stat"], abs=4e-3)
    assert tab.loc["c1", "Pr(>Chisq)"] == pytest.approx(r["table"]["c1"]["Pr(>Chisq)"], rel=1e-3)


def test_r2_clmm():
    _, c1 = _clmm_or_skip()
    r = ref("r2_wine_clmm")
    out, ic = c1.r2(), c1.icc()
    assert out["var_residual"] == pytest.approx(np.pi ** 2 / 3, rel=1e-12)
    assert out["marginal"] == pytest.approx(r["r2_marginal"], rel=2e-4)
    assert out["conditional"] == pytest.approx(r["r2_conditional"], rel=2e-4)
    assert ic["adjusted"] == pytest.approx(r["icc_adjusted"], rel=2e-4)


# ------------------------------------------------------------------ R2 / ICC
@pytest.mark.parametrize("case", ["r2_sleepstudy", "r2_hsb82", "r2_penicillin", "r2_hsb82_ml"])
def test_r2_nakagawa_and_icc(case):
    r = ref(case)
    formula = r["r_call"].split("lmer(")[1].split(", data")[0].replace("^", "**")
    res = fit(formula, r["data"], reml="REML = FALSE" not in r["r_call"])
    r2, ic = res.r2(), res.icc()
    k = k_fit(res)          # variance components move by about k relative (see k_fit)
    for ours, theirs in (("marginal", "r2_marginal"), ("conditional", "r2_conditional")):
        assert r2[ours] == pytest.approx(r[theirs], rel=1e-4 + k, abs=1e-12)
    assert ic["adjusted"] == pytest.approx(r["icc_adjusted"], rel=1e-4 + k)
    assert ic["conditional"] == pytest.approx(r["icc_conditional"], rel=1e-4 + k)
    for ours, theirs in (("var_fixed", "var_fixed"), ("var_random", "var_random"),
                         ("var_residual", "var_residual")):
        assert r2[ours] == pytest.approx(r[theirs], rel=1e-4 + k, abs=1e-10)


@pytest.mark.parametrize("case", ["sb_hsb82", "sb_hsb82_reml"])
def test_r2_snijders_bosker(case):
    r = ref(case)
    formula = r["r_call"].split("lmer(")[1].split(", data")[0]
    res = fit(formula, r["data"], reml="REML = FALSE" not in r["r_call"])
    for kind in ("mean", "harmonic"):
        out = res.r2("snijders-bosker", group_size=kind)
        want = r["values"][kind]
        k = k_fit(res)
        assert out["nbar"] == pytest.approx(want["nbar"], rel=1e-12)
        assert out["level1"] == pytest.approx(want["r2_level1"], rel=1e-4 + k)
        assert out["level2"] == pytest.approx(want["r2_level2"], rel=1e-4 + k)
    null = fit(r["null_call"].split("lmer(")[1].split(", data")[0], r["data"],
               reml="REML = FALSE" not in r["null_call"])
    np.testing.assert_allclose(inf.r2_snijders_bosker(res, null=null).to_numpy(),
                               res.r2("sb").to_numpy(), rtol=1e-6)


def test_r2_snijders_bosker_needs_random_intercept():
    with pytest.raises(ValueError, match="one random"):
        fit(HSB, "hsb82.csv").r2("snijders-bosker")


# ------------------------------------------------------------------ influence
@pytest.mark.parametrize("case,formula", [("influence_sleepstudy", SLEEP),
                                          ("influence_penicillin", PENI)])
def test_cooks_distance_one_step(case, formula):
    r = ref(case)
    res = fit(formula, r["data"])
    out = res.influence(r["group"])
    assert out.index.name == r["group"]
    cd = res.cooks_distance(r["group"])
    for d in r["hlmdiag"]:
        assert cd.loc[d["level"]] == pytest.approx(d["cooksd"], rel=1e-3)
        np.testing.assert_allclose(out.loc[d["level"], res.model.exog_names].to_numpy(), np.atleast_1d(d["beta_change"]),
                                   atol=2e-4 * np.max(np.abs(res.bse_fe)))


def test_influence_refit_penicillin():
    r = ref("influence_penicillin")
    res = fit(PENI, r["data"])
    out = res.influence("sample", method="refit")
    est = res.fe_params.to_numpy()
    tol = 1e-4 + 2 * k_fit(res) * np.max(res.bse_fe)      # R's digits + our fit and our refit (k_fit)
    for d in r["refit"]:
        np.testing.assert_allclose(out.loc[d["level"], res.model.exog_names].to_numpy(), est - np.atleast_1d(d["fixef"]),
                                   atol=tol)


@pytest.mark.slow
def test_influence_refit_sleepstudy():
    r = ref("influence_sleepstudy")
    res = fit(SLEEP, r["data"])
    out = res.influence("Subject", method="refit")
    est = res.fe_params.to_numpy()
    tol = 2e-3 + 2 * k_fit(res) * np.max(res.bse_fe)      # R's digits + our fit and our refit (k_fit)
    for d in r["refit"]:
        np.testing.assert_allclose(out.loc[d["level"], res.model.exog_names].to_numpy(), est - np.atleast_1d(d["fixef"]),
                                   atol=tol)


def test_influence_bad_group():
    with pytest.raises(ValueError, match="unknown grouping factor"):
        fit(SLEEP, "sleepstudy.csv").influence("Day")


# ------------------------------------------------------------------ convergence
@pytest.mark.parametrize("case,formula,data", [("convergence_sleepstudy", SLEEP, "sleepstudy.csv"),
                                               ("convergence_penicillin_ml", PENI, "penicillin.csv")])
def test_check_convergence(case, formula, data):
    r = ref(case)
    res = fit(formula, data, reml=r["reml"])
    chk = res.check_convergence()
    assert chk.converged and chk.decrement < 1e-6
    H = np.array(r["hessian"]).reshape(chk.hessian.shape)
    np.testing.assert_allclose(chk.hessian, H, rtol=2e-3, atol=1e-3 * np.abs(H).max())
    assert np.max(np.abs(chk.gradient)) < 1e-2
    # stopped after three iterations: flagged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = mf.lmer(formula, read_data(data)).fit(reml=r["reml"], method="L-BFGS-B", maxiter=3)
    c2 = bad.check_convergence()
    assert not c2.converged and c2.messages
    for tol in (-1.0, 0.0, float("nan")):        # (no fit could pass, or every fit would)
        with pytest.raises(ValueError, match="tol must be a positive number"):
            res.check_convergence(tol=tol)


# ------------------------------------------------------------------ simulation and power
def test_simulate_moments():
    res = fit(SLEEP, "sleepstudy.csv")
    model = res.model
    y = res.simulate(nsim=3000, seed=42)
    assert y.shape == (180, 3000) and list(y.columns[:2]) == ["sim_1", "sim_2"]
    pd.testing.assert_frame_equal(res.simulate(nsim=2, seed=5), res.simulate(nsim=2, seed=5))
    mu = model.exog @ res.fe_params.to_numpy()
    # marginal variance sigma^2 (1 + z' Lambda Lambda' z) per row
    t = model.re_design.terms[0]
    v = res.sigma ** 2 * (1 + np.einsum("ij,jk,ik->i", t.X, model.re_design.term_cov(res.theta, t), t.X))
    ym = y.to_numpy()
    se_mean = np.sqrt(v / 3000)
    assert np.all(np.abs(ym.mean(axis=1) - mu) < 5 * se_mean)
    assert np.mean(ym.var(axis=1) / v) == pytest.approx(1, abs=0.02)
    # random effects shared within a subject: covariance of two rows of one subject
    c01 = np.cov(ym[0], ym[1])[0, 1]
    S = res.sigma ** 2 * model.re_design.term_cov(res.theta, t)
    assert c01 == pytest.approx(t.X[0] @ S @ t.X[1], rel=0.15)
    # population level: residual noise only; conditional modes: centred on the fitted values
    y0 = res.simulate(nsim=3000, seed=1, re=False).to_numpy()
    assert np.mean(y0.var(axis=1)) == pytest.approx(res.sigma ** 2, rel=0.03)
    yu = res.simulate(nsim=3000, seed=1, use_u=True).to_numpy()
    assert np.all(np.abs(yu.mean(axis=1) - np.asarray(res.fittedvalues)) < 5 * res.sigma / np.sqrt(3000))


def test_power_sim():
    res = fit(SLEEP, "sleepstudy.csv")
    big = res.power_sim("Days", nsim=8, seed=1, test="z")
    assert big.power == 1.0 and big.nsim == 8 and big.failed == 0
    null = res.power_sim("Days", effect=0.0, nsim=20, seed=2, test="satterthwaite")
    assert null.power <= 0.2
    assert "Power for predictor 'Days'" in repr(null)
    with pytest.raises(ValueError, match="unknown fixed effect"):
        res.power_sim("Weeks")
    with pytest.raises(ValueError, match="test must be"):
        res.power_sim("Days", test="score")


def test_power_interval_is_clopper_pearson():
    r = ref("boot_formulas")
    for b in r["binom"]:
        p = inf.PowerSimResults("x", 1.0, np.r_[np.zeros(b["k"]), np.ones(b["n"] - b["k"])],
                                0.05, "z", 0.95)
        assert p.successes == b["k"]
        np.testing.assert_allclose(p.conf_int, b["ci"], rtol=1e-9, atol=1e-12)
