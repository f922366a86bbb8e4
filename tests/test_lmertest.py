"""lmerTest's tables (anova of one model, drop1, ranova), anova against OLS / GLM fits, nesting
by grouping partitions, coef() and the correlation of the fixed effects, against stored R values
(tests/reference/lmertest, made by tools/r_reference/lmertest_reference.R).

Tolerances.  F values, mean squares and denominator df: 1e-4 relative.  lmerTest computes the
Satterthwaite df from numDeriv's Richardson-extrapolated numerical Hessian of the deviance and
Jacobian of vcov(beta) (about 6 good digits at an optimum lme4 itself finds to ~1e-6 in theta);
ours uses the same kind of differences at our optimum; the largest differences seen are 3e-5.
Kenward-Roger is analytic in both (pbkrtest and ours): only the optimum differs.  p-values are
compared on the log scale (a tiny p amplifies F's last digits: d log p / d F ~ F for large F).
Likelihood ratios (ranova): 1e-6 relative on the log-likelihoods, from the optimizers' tolerance.
"""
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

import mlmext
from mlmext.formula import api as mf
from mlmext.inference import ddf as ddfmod
from mlmext.inference.lmertest import term_contrasts

from refcases import load_ref, norm, read_data

CASES = {
    # name: (data, formula as mlmext writes it)
    "ham": ("ham.csv", None),
    "sleepgrp": ("sleepgrp.csv", None),
    "sleepgrp3": ("sleepgrp.csv", None),
    "sleepgrp_sum": ("sleepgrp.csv", "Reaction ~ Days * C(grp, Sum) + C(phase, Sum) + (Days | Subject)"),
    "hsb82": ("hsb82.csv", None),
    "sleepgrp_noint": ("sleepgrp.csv", None),
    "sleepgrp_quad": ("sleepgrp.csv", None),
    "sleepgrp_log": ("sleepgrp.csv", None),
    "sleepgrp_inter": ("sleepgrp.csv", None),
    "sleepgrp_nested": ("sleepgrp.csv", None),
}
_FITS = {}


def case(name):
    if name not in _FITS:
        r = load_ref("lmertest", name)
        data, form = CASES[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITS[name] = (mf.lmer(form or r["py_formula"], read_data(data)).fit(), r)
    return _FITS[name]


def _vars(label):
    """A term label's variables, codings aside: 'Days:C(grp, Sum)' -> {'Days', 'grp'}."""
    label = label.replace(" ", "").replace("**", "^").replace("np.log", "log")
    return frozenset(re.sub(r"C\((\w+),Sum\)", r"\1", p) for p in label.split(":"))


def _row(tab, rname):
    hits = [k for k in tab.index if _vars(k) == _vars(rname)] or [k for k in tab.index if k == rname]
    assert len(hits) == 1, (rname, list(tab.index))
    return tab.loc[hits[0]]


def _check_ftable(tab, rtab):
    assert len(tab) == len(rtab)
    worst = 0.0
    for rname, rrow in rtab.items():
        row = _row(tab, rname)
        assert row["NumDF"] == rrow["NumDF"]
        for col in ("Sum Sq", "Mean Sq", "F value", "DenDF"):
            rel = abs(row[col] - rrow[col]) / abs(rrow[col])
            worst = max(worst, rel)
            assert rel < 1e-4, (rname, col, row[col], rrow[col])
        lp, lr = np.log(row["Pr(>F)"]), np.log(rrow["Pr(>F)"])
        assert abs(lp - lr) < 1e-4 * (1 + abs(lr)) * (1 + rrow["F value"]), (rname, row["Pr(>F)"])
    return worst


ANOVA_KEYS = [(n, k) for n in CASES for k in load_ref("lmertest", n)["anova"]]


@pytest.mark.parametrize("name,key", ANOVA_KEYS, ids=[f"{n}-{k}" for n, k in ANOVA_KEYS])
def test_anova_one_model_matches_lmertest(name, key):
    res, r = case(name)
    ty = int(key[4])
    ddf = key[6:].replace("_", "-")
    tab = mlmext.anova(res, type=ty, ddf=ddf)
    _check_ftable(tab, r["anova"][key])
    assert f"Type {'I' * ty if ty < 3 else 'III'} Analysis of Variance" in tab.attrs["heading"]
    assert list(tab.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def test_anova_defaults_and_sum_coding_give_the_same_type3():
    res, r = case("sleepgrp")
    tab = mlmext.anova(res)                         # type 3, Satterthwaite
    _check_ftable(tab, r["anova"]["type3_satterthwaite"])
    # lmerTest's Type III hypotheses do not depend on the coding: sum-to-zero contrasts give
    # the treatment-coded fit's table (R's own sum-coded table is tested above as well)
    res_sum, _ = case("sleepgrp_sum")
    _check_ftable(mlmext.anova(res_sum), r["anova"]["type3_satterthwaite"])
    # the Type I order is R's: by degree, then as written (patsy puts grp before Days)
    assert list(mlmext.anova(res, type=1).index) == ["Days", "grp", "phase", "Days:grp"]
    assert list(mlmext.anova(res, type="II").index) == ["Days", "grp", "phase", "Days:grp"]


def test_type3_hypotheses_are_estimable_and_involve_only_the_term_and_its_containers():
    res, _ = case("ham")
    Ls = term_contrasts(res, 3)
    X = np.asarray(res.model.exog)
    spec = res.model.formula_info["fixed_spec"]
    col_term = {}
    for term, sl in spec.term_slices.items():
        for c in range(sl.start, sl.stop):
            col_term[c] = frozenset(f.name() for f in term.factors)
    assert set(Ls) == {"Gender", "Information", "Product", "Information:Product"}
    for term, L in Ls.items():
        assert L.shape[0] == {"Gender": 1, "Information": 1, "Product": 3, "Information:Product": 3}[term]
        # an estimable function: in the row space of X
        np.testing.assert_allclose(L @ np.linalg.pinv(X) @ X, L, atol=1e-8)
        # zero on the intercept and on the columns of terms that do not contain this one
        outside = [c for c, t in col_term.items() if not (_vars(term) <= t and t)]
        assert np.abs(L[:, outside]).max() < 1e-8, term
    # a main effect's hypothesis averages over the interaction (SAS / lmerTest Type III)
    inter = [c for c, t in col_term.items() if len(t) == 2]
    assert np.abs(Ls["Product"][:, inter]).max() > 0.1


def test_kenward_roger_needs_reml():
    res, _ = case("sleepgrp")
    ml = mf.lmer(load_ref("lmertest", "sleepgrp")["formula"], read_data("sleepgrp.csv")).fit(reml=False)
    with pytest.raises(ValueError, match="REML"):
        mlmext.anova(ml, ddf="kenward-roger")
    with pytest.raises(ValueError, match="type must be"):
        mlmext.anova(res, type=4)
    with pytest.raises(ValueError, match="ddf method"):
        mlmext.anova(res, ddf="containment")


@pytest.mark.parametrize("name", list(CASES))
def test_drop1_matches_lmertest(name):
    res, r = case(name)
    _check_ftable(mlmext.drop1(res), r["drop1"])
    if "drop1_kenward_roger" in r:
        _check_ftable(mlmext.drop1(res, ddf="kenward-roger"), r["drop1_kenward_roger"])


def _check_lrtable(tab, rtab):
    assert len(tab) == len(rtab)
    for (rname, rrow), (name, row) in zip(rtab.items(), tab.iterrows()):
        assert name == rname
        assert row["npar"] == rrow["npar"]
        assert abs(row["logLik"] - rrow["logLik"]) < 1e-6 * abs(rrow["logLik"])
        if rrow["LRT"] is None:
            assert np.isnan(row["LRT"])
            continue
        assert row["Df"] == rrow["Df"]
        assert abs(row["LRT"] - rrow["LRT"]) < 1e-6 * abs(rrow["logLik"]) + 1e-6
        assert abs(np.log(row["Pr(>Chisq)"]) - np.log(rrow["Pr(>Chisq)"])) < 1e-4 * (1 + rrow["LRT"])


@pytest.mark.parametrize("name", ["ham", "sleepgrp", "sleepgrp3", "hsb82", "sleepgrp_quad"])
def test_ranova_matches_lmertest(name):
    res, r = case(name)
    _check_lrtable(mlmext.ranova(res), r["ranova"])
    _check_lrtable(mlmext.ranova(res, reduce_terms=False), r["ranova_complete"])


@pytest.mark.parametrize("name,data", [("ranova_uncorrelated", "sleepstudy.csv"),
                                       ("ranova_nested", "pastes.csv"),
                                       ("ranova_two_slopes", "sleepgrp.csv")])
def test_ranova_of_other_random_effect_forms(name, data):
    r = load_ref("lmertest", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.lmer(r["py_formula"], read_data(data)).fit()
        tab = mlmext.ranova(res)
        _check_lrtable(tab, r["ranova"])
        _check_lrtable(mlmext.ranova(res, reduce_terms=False), r["ranova_complete"])
    if name == "ranova_two_slopes":
        # lme4 stops short on the full model here ("failed to converge, max|grad| = 0.0165"):
        # our REML log-likelihood is higher, by 1.0e-4; the reduced fits agree to 1e-9
        assert 5e-5 < tab["logLik"].iloc[0] - r["ranova"]["<none>"]["logLik"] < 1e-3


def test_ranova_of_a_weighted_fit_with_an_offset():
    r = load_ref("lmertest", "ranova_weighted")
    res = mf.lmer("Reaction ~ Days + offset(off) + (Days | Subject)", read_data("sleepstudy_aug.csv"),
                  weights="w").fit()
    _check_lrtable(mlmext.ranova(res), r["ranova"])
    _check_lrtable(mlmext.ranova(res, reduce_terms=False), r["ranova_complete"])


def test_ranova_dropping_the_only_term_gives_the_linear_model_reml_loglik():
    res, r = case("sleepgrp3")
    tab = mlmext.ranova(res)
    # R: logLik(lm(...), REML = TRUE); here, directly: the REML criterion at theta = 0 of lme4
    y = np.asarray(res.model.endog)
    X = np.asarray(res.model.exog)
    n, p = X.shape
    rss = float(np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2))
    ll = -0.5 * ((n - p) * (1 + np.log(2 * np.pi * rss / (n - p))) + np.linalg.slogdet(X.T @ X)[1])
    assert abs(tab["logLik"].iloc[1] - ll) < 1e-8 * abs(ll)


def test_satterthwaite_and_kr_ftest_take_constraint_strings():
    res, r = case("sleepgrp")
    names = list(res.model.exog_names)
    L = np.zeros((2, len(names)))
    L[0, names.index("Days:grp[T.B]")] = L[1, names.index("Days:grp[T.C]")] = 1
    for fn in (ddfmod.satterthwaite_ftest, ddfmod.kenward_roger_ftest):
        by_matrix = fn(res, L)
        by_string = fn(res, "Days:grp[T.B] = 0, Days:grp[T.C] = 0")
        by_list = fn(res, ["Days:grp[T.B] = 0", "Days:grp[T.C] = 0"])
        by_tuple = fn(res, (L, np.zeros(2)))
        for other in (by_string, by_list, by_tuple):
            assert other["F"] == pytest.approx(by_matrix["F"], rel=1e-12)
            assert other["df_denom"] == pytest.approx(by_matrix["df_denom"], rel=1e-12)
    # the interaction's Type III test is exactly this one (it is contained in no other term)
    ref_row = r["anova"]["type3_satterthwaite"]["Days:grp"]
    t = ddfmod.satterthwaite_ftest(res, "Days:grp[T.B] = 0, Days:grp[T.C] = 0")
    assert t["F"] == pytest.approx(ref_row["F value"], rel=1e-4)
    assert t["df_denom"] == pytest.approx(ref_row["DenDF"], rel=1e-4)
    # a non-zero right-hand side from the string equals the shifted matrix form
    shifted = ddfmod.satterthwaite_ftest(res, L, rhs=[1.0, -2.0])
    s = ddfmod.satterthwaite_ftest(res, "Days:grp[T.B] = 1, Days:grp[T.C] = -2")
    assert s["F"] == pytest.approx(shifted["F"], rel=1e-12)
    with pytest.raises(ValueError, match="rhs"):
        ddfmod.satterthwaite_ftest(res, "Days = 0", rhs=1.0)


# ------------------------------------------------------------------ anova with lm / nesting
def test_anova_against_ols_and_glm_matches_r():
    r = load_ref("lmertest", "anova_lm")
    ss = read_data("sleepstudy.csv")
    m_lmer = mf.lmer("Reaction ~ Days + (1 | Subject)", ss).fit()
    m_lm = smf.ols("Reaction ~ Days", ss).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # nested: no warning
        tabs = [mlmext.anova(m_lmer, m_lm), mlmext.anova(m_lmer, smf.glm("Reaction ~ Days", ss).fit())]
    for tab in tabs:
        assert tab.attrs["refitted_ml"] is True
        for (rname, rrow), (_, row) in zip(r["table"].items(), tab.iterrows()):
            assert row["npar"] == rrow["npar"]
            for col in ("AIC", "BIC", "logLik", "deviance"):
                assert abs(row[col] - rrow[col]) < 1e-7 * abs(rrow[col])
        assert tab["Chisq"].iloc[1] == pytest.approx(r["table"]["m_lmer"]["Chisq"], rel=1e-6)
        assert tab["Df"].iloc[1] == 1
    assert list(tabs[0].index) == ["m_lm", "m_lmer"]


def test_anova_glmer_against_a_statsmodels_glm_matches_r():
    import statsmodels.api as sm
    r = load_ref("lmertest", "anova_glm")
    d = read_data("cbpp.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g1 = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d,
                      family=sm.families.Binomial()).fit()
    g0 = smf.glm("incidence + I(size - incidence) ~ period", d, family=sm.families.Binomial()).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tab = mlmext.anova(g1, g0)
    assert list(tab.index) == ["g0", "g1"]
    for (rname, rrow), (_, row) in zip(r["table"].items(), tab.iterrows()):
        assert row["npar"] == rrow["npar"]
        # the glm's likelihood is exact; glmer's Laplace fit agrees with lme4's to ~1e-6
        assert abs(row["logLik"] - rrow["logLik"]) < 1e-5 * abs(rrow["logLik"])
    assert tab["Chisq"].iloc[1] == pytest.approx(r["table"]["g_glmer"]["Chisq"], rel=1e-4)
    d["p"] = d["incidence"] / d["size"]
    g0w = smf.glm("p ~ period", d, family=sm.families.Binomial(), var_weights=d["size"]).fit()
    with pytest.raises(ValueError, match="var_weights"):
        mlmext.anova(g1, g0w)
    with pytest.raises(ValueError, match="fitted model results; got object"):
        mlmext.anova(g1, object())
    # one model that is not an LMM: no lmerTest table
    with pytest.raises(NotImplementedError, match="LMMs"):
        mlmext.anova(g1)
    with pytest.raises(NotImplementedError, match="LMMs"):
        mlmext.ranova(g1)


def test_nested_grouping_written_differently_is_nested():
    r = load_ref("lmertest", "anova_nested")
    d = read_data("nested3.csv")
    d["cid"] = d["region"].astype(str) + "_" + d["school"].astype(str) + "_" + d["class"].astype(str)
    n1 = mf.lmer("y ~ x + (1 | cid)", d).fit()
    n2 = mf.lmer("y ~ x + (1 | region/cid)", d).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tab = mlmext.anova(n1, n2)
    assert tab["Chisq"].iloc[1] == pytest.approx(r["table"]["n2"]["Chisq"], rel=1e-6)
    assert tab["logLik"].iloc[0] == pytest.approx(r["table"]["n1"]["logLik"], rel=1e-8)
    # class labels that repeat across schools ("C1" in every school) make another grouping:
    # (1 | class) is then not within (1 | region/cid), and the warning stays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # (1 | class) is a singular fit here
        n3 = mf.lmer("y ~ x + (1 | class)", d).fit()
    with pytest.warns(UserWarning, match="do not look nested"):
        mlmext.anova(n3, n2)


# ------------------------------------------------------------------ coef() and corr_fe
def _by_r_name(frame_columns, rname):
    hits = [c for c in frame_columns if norm(c.replace("np.log", "log")) == norm(rname)]
    assert len(hits) == 1, (rname, list(frame_columns))
    return hits[0]


@pytest.mark.parametrize("name", ["ham", "sleepgrp", "hsb82"])
def test_coef_matches_lme4(name):
    res, r = case(name)
    co = res.coef()
    assert list(co) == list(r["coef"])                    # lme4's order of grouping factors
    se = res.bse_fe
    for g, rc in r["coef"].items():
        df = co[g]
        assert [str(x) for x in df.index] == [str(x) for x in rc["levels"]]
        assert list(df.columns) == list(res.fe_params.index)     # the fixed effects' order
        vals = np.array(rc["values"], dtype=float)
        for j, rcol in enumerate(rc["columns"]):
            c = _by_r_name(df.columns, rcol)
            # fixed effect + conditional mode: within the fixed-effect tolerance, 0.002 SE
            # (the largest difference seen is 4e-4 SE, hsb82)
            np.testing.assert_allclose(df[c].to_numpy(), vals[:, j], rtol=0, atol=2e-3 * se[c])
    # the direct construction: columns without a random effect are the fixed effect itself
    g0 = list(co)[0]
    re0 = res.ranef()[g0]
    for c in co[g0].columns:
        expect = res.fe_params[c] + (re0[c].to_numpy() if c in re0.columns else 0.0)
        np.testing.assert_allclose(co[g0][c].to_numpy(), expect, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_corr_fe_matches_lme4_and_prints_like_it(name):
    res, r = case(name)
    cf = res.corr_fe
    assert list(cf.index) == list(cf.columns) == list(res.fe_params.index)
    rn = r["corr_fe"]["names"]
    rv = np.array(r["corr_fe"]["values"], dtype=float)
    if name != "sleepgrp_sum":                     # R's sum-coded names are grp1, not C(grp, Sum)[S.A]
        pos = [list(cf.index).index(_by_r_name(cf.index, n)) for n in rn]
        # correlations are ratios of vcov entries, smooth in theta, which agrees with lme4's to
        # about 1e-5 relative: 1e-4 (the largest difference seen is 4e-6)
        np.testing.assert_allclose(cf.to_numpy()[np.ix_(pos, pos)], rv, atol=1e-4)
    # the printed block, given R's names and values, is R's text line for line
    from mlmext.inference.coefs import corr_fe_text
    assert corr_fe_text(pd.DataFrame(rv, index=rn, columns=rn)).split("\n") == r["corr_printed"]
    text = str(res.summary(correlation=True))
    assert "Correlation of Fixed Effects:" in text
    assert "Correlation of Fixed Effects:" not in str(res.summary())


def test_corr_block_in_our_order_equals_lme4s_when_the_orders_agree():
    res, r = case("ham")                     # patsy's column order is R's here
    assert [norm(n) for n in res.fe_params.index] == [norm(n) for n in r["corr_fe"]["names"]]
    from mlmext.inference.coefs import corr_fe_text
    assert corr_fe_text(res.corr_fe).split("\n") == r["corr_printed"]


def test_abbreviate_is_rs():
    from mlmext.inference.coefs import abbreviate
    # R 4.2: abbreviate(c("(Intercept)", "phaselate", "Days:grpB", "Information2",
    #                     "grpB:phaselate:Days", "sectorCatholic:cses"), 6)
    assert abbreviate(["(Intercept)", "phaselate", "Days:grpB", "Information2",
                       "grpB:phaselate:Days", "sectorCatholic:cses"], 6) == \
        ["(Intr)", "phaslt", "Dys:gB", "Infrm2", "grB::D", "sctrC:"]


def test_coef_of_a_glmm_and_clmm():
    import statsmodels.api as sm
    d = read_data("cbpp.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d,
                     family=sm.families.Binomial()).fit()
    co = g.coef()["herd"]
    re = g.ranef()["herd"]["Intercept"].to_numpy()
    np.testing.assert_allclose(co["Intercept"].to_numpy(), g.fe_params["Intercept"] + re, rtol=1e-14)
    np.testing.assert_array_equal(co["period[T.2]"].to_numpy(), np.full(len(co), g.fe_params["period[T.2]"]))
    w = read_data("wine.csv")
    c = mf.clmm("rating ~ temp + contact + (1 | judge)", w).fit()
    with pytest.raises(NotImplementedError, match="clmm"):
        c.coef()
    # the fixed-effects correlation of a clmm leaves the thresholds out
    assert list(c.corr_fe.index) == list(c.fe_params.index)


def test_coef_needs_the_random_effect_among_the_fixed_effects():
    ss = read_data("sleepstudy.csv")
    res = mf.lmer("Reaction ~ 1 + (Days | Subject)", ss).fit()
    with pytest.raises(ValueError, match="unable to align"):
        res.coef()


def test_dotted_names_give_the_same_tables_under_their_own_names():
    d = read_data("sleepgrp.csv")
    d["Days.x"], d["my.grp"] = d["Days"], d["grp"]
    a = mf.lmer("Reaction ~ Days * grp + (1 | Subject)", d).fit()
    b = mf.lmer("Reaction ~ Days.x * my.grp + (1 | Subject)", d).fit()
    for ty in (1, 2, 3):
        ta, tb = mlmext.anova(a, type=ty), mlmext.anova(b, type=ty)
        assert list(tb.index) == ["Days.x", "my.grp", "Days.x:my.grp"]
        np.testing.assert_allclose(tb.to_numpy(), ta.to_numpy(), rtol=1e-6)
