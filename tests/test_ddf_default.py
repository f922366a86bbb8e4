"""LMM tests default to t tests on Satterthwaite df (lmerTest's ``summary``): ``fit(ddf=...)``.

References: lmerTest's ``summary(lmer(...))`` coefficient tables (``coef(summary(fit))``, with
``ddf = "Kenward-Roger"`` for pbkrtest's df and adjusted SEs) in
``tests/reference/inference/ddf_*.json``, lmerTest's ``drop1`` F tests of one-coefficient terms
(``Pr(>F)`` of F(1, DenDF) is the coefficient's two-sided t test) in
``tests/reference/lmertest/*.json``, and ``tests/reference/lmm/sleepstudy_satterthwaite.json``.
Tolerances are those of ``test_inference``: R's digits plus what our fit's distance from the
optimum (``refcases.lmm_eps``) moves a df, an SE, a t value or a log p-value.
"""
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlmext.formula import api as mf
from mlmext.printing import format_pval
from refcases import load_ref, read_data
from test_inference import HSB, PENI, SLEEP, k_fit, p_close

CASES = [("ddf_hsb82", HSB, "hsb82.csv"), ("ddf_sleepstudy", SLEEP, "sleepstudy.csv"),
         ("ddf_penicillin", PENI, "penicillin.csv")]


def lmer(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(formula, read_data(data)).fit(**kw)


def check_against_lmertest(res, table, k):
    """pvalues, df_inference and conf_int() of ``res`` against lmerTest's coefficient table."""
    names = list(res.fe_params.index)
    ci = res.conf_int()
    for name, want in zip(names, table.values()):
        assert res.df_inference[name] == pytest.approx(want["df"], rel=1e-3 + k)
        assert p_close(res.pvalues[name], want["Pr(>|t|)"], want["t value"], k)
        # R's interval from R's estimate, SE and df (lmerTest's confint is profile-based)
        half = stats.t.ppf(0.975, want["df"]) * want["Std. Error"]
        lo, hi = want["Estimate"] - half, want["Estimate"] + half
        assert ci.loc[name, 0] == pytest.approx(lo, abs=(2e-3 + 3 * k) * half)
        assert ci.loc[name, 1] == pytest.approx(hi, abs=(2e-3 + 3 * k) * half)


@pytest.mark.parametrize("case,formula,data", CASES)
def test_default_is_lmertest_satterthwaite(case, formula, data):
    r = load_ref("inference", case)
    res = lmer(formula, data)
    assert res.ddf == "satterthwaite" and res.use_t
    check_against_lmertest(res, r["satterthwaite"], k_fit(res))
    # an ML fit: lmerTest's table of the ML fit
    ml = lmer(formula, data, reml=False)
    check_against_lmertest(ml, r["satterthwaite_ml"], k_fit(ml))


@pytest.mark.parametrize("case,formula,data", CASES)
def test_kenward_roger_fit_is_lmertest_kr(case, formula, data):
    r = load_ref("inference", case)
    res = lmer(formula, data, ddf="kenward-roger")
    assert res.ddf == "kenward-roger"
    check_against_lmertest(res, r["kenward_roger"], k_fit(res))
    # bse / tvalues stay lme4's vcov; the tests use pbkrtest's adjusted SE
    plain = lmer(formula, data)
    np.testing.assert_array_equal(np.asarray(res.bse), np.asarray(plain.bse))
    adj = np.sqrt(np.diag(res.cov_params_kenward_roger()))
    t = res.fe_params / adj
    np.testing.assert_allclose(res.pvalues, 2 * stats.t.sf(np.abs(t), res.df_inference), rtol=1e-12)


def test_sleepstudy_reference_p_values():
    r = load_ref("lmm", "sleepstudy_satterthwaite")
    res = lmer(r["formula"], r["data"])
    k = k_fit(res)
    for name, rname in (("Intercept", "(Intercept)"), ("Days", "Days")):
        t = r["fixef"][rname] / r["se"][rname]
        assert p_close(res.pvalues[name], r["p_values"][rname], t, k)
        assert res.df_inference[name] == pytest.approx(r["satterthwaite_df"][rname], rel=1e-3 + k)


def _one_coefficient(names, term):
    """The design column of a one-coefficient term (``phase`` -> ``phase[T.late]``)."""
    key = term.replace(" ", "").replace("^", "**")
    hits = [n for n in names if re.sub(r"\[[^\]]*\]", "", n).replace(" ", "") == key]
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("case", ["sleepgrp", "sleepgrp_noint", "sleepgrp_quad", "sleepgrp_sum",
                                  "ham", "hsb82"])
def test_one_df_terms_match_lmertest_drop1(case):
    # drop1's F(1, DenDF) test of a term with one coefficient, not in any interaction, is that
    # coefficient's t test: the same df and p-value (Satterthwaite; Kenward-Roger where stored)
    r = load_ref("lmertest", case)
    fits = {"drop1": lmer(r["py_formula"], r["data"])}
    if "drop1_kenward_roger" in r:
        fits["drop1_kenward_roger"] = lmer(r["py_formula"], r["data"], ddf="kenward-roger")
    checked = 0
    for key, res in fits.items():
        names = list(res.fe_params.index)
        k = k_fit(res)
        for term, want in r[key].items():
            col = _one_coefficient(names, term)
            if want["NumDF"] != 1 or col is None or any(term in t and t != term for t in r[key]):
                continue
            t = np.sqrt(want["F value"])
            assert res.df_inference[col] == pytest.approx(want["DenDF"], rel=1e-3 + k)
            assert p_close(res.pvalues[col], want["Pr(>F)"], t, k)
            checked += 1
    assert checked >= 1


def test_summary_pvalues_conf_int_and_t_test_agree():
    res = lmer(HSB, "hsb82.csv")
    table = res.summary().tables[3]
    text = table.as_text()
    assert "Satterthwaite df" in text and "P>|t|" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:-1]}
    ci = res.conf_int()
    for name in res.fe_params.index:
        cells = rows[name]
        assert cells[3] == f"{res.df_inference[name]:.2f}"
        assert cells[5] == format_pval(res.pvalues[name])
        d = len(cells[2].split(".")[1])                # the table's decimals
        assert cells[6] == f"{ci.loc[name, 0]:.{d}f}" and cells[7] == f"{ci.loc[name, 1]:.{d}f}"
        tt = res.t_test(f"{name} = 0" if name != "Intercept" else np.eye(4)[0])
        assert np.squeeze(tt.pvalue) == pytest.approx(res.pvalues[name], rel=1e-9)
        assert np.squeeze(tt.df_denom) == pytest.approx(res.df_inference[name], rel=1e-9)
        np.testing.assert_allclose(np.squeeze(tt.conf_int()), ci.loc[name], rtol=1e-9)
    # summary(ddf=...) still overrides; the other method's numbers are not the default's
    assert "Kenward-Roger df" in str(res.summary(ddf="kenward-roger"))


def test_wald_test_is_lmertest_contestmd():
    r = load_ref("inference", "ddf_hsb82")
    res = lmer(HSB, "hsb82.csv")
    kr = lmer(HSB, "hsb82.csv", ddf="kenward-roger")
    for c in r["contrasts_md"]:
        L = np.array(c["L"], dtype=float)
        for fit, want in ((res, c["satterthwaite"]), (kr, c["kenward_roger"])):
            k = k_fit(fit)
            w = fit.wald_test(L, scalar=True)
            assert w.distribution == "F" and w.df_num == want["NumDF"]
            assert w.df_denom == pytest.approx(want["DenDF"], rel=1e-3 + k)
            f = float(np.squeeze(w.statistic))
            assert np.sqrt(f) == pytest.approx(np.sqrt(want["F value"]),
                                               abs=5e-5 * np.sqrt(want["F value"]) + k * (1 + np.sqrt(f)))
            assert p_close(w.pvalue, want["Pr(>F)"], np.sqrt(f), k)
    # use_f=False: statsmodels' chi-square test, as before
    chi = res.wald_test(L, use_f=False, scalar=True)
    assert chi.distribution == "chi2"


def test_ddf_z_reproduces_the_old_z_tests_exactly():
    res = lmer(SLEEP, "sleepstudy.csv", ddf="z")
    default = lmer(SLEEP, "sleepstudy.csv")
    assert res.ddf == "z" and not res.use_t and res.df_inference is None
    np.testing.assert_array_equal(np.asarray(res.params), np.asarray(default.params))
    np.testing.assert_array_equal(np.asarray(res.tvalues), np.asarray(default.tvalues))
    z = np.asarray(res.params) / np.asarray(res.bse)
    np.testing.assert_array_equal(np.asarray(res.pvalues), 2 * stats.norm.sf(np.abs(z)))
    q = stats.norm.ppf(0.975)
    np.testing.assert_allclose(res.conf_int()[1], res.params + q * res.bse, rtol=1e-15)
    assert res.t_test("Days = 0").distribution == "norm"
    assert res.wald_test("Days = 0", scalar=True).distribution == "chi2"
    s = str(res.summary())
    assert "P>|z|" in s and "z tests" in s
    # the default fit's summary(ddf="z") and t_test(df="z") give the same table and tests
    assert str(default.summary(ddf="z").tables[3]) == str(res.summary().tables[3])
    assert np.squeeze(default.t_test("Days = 0", df="z").pvalue) == np.squeeze(
        res.t_test("Days = 0").pvalue)
    assert default.use_t and default.ddf == "satterthwaite"     # the z view left it as it was


def test_ddf_argument_errors():
    model = mf.lmer(SLEEP, read_data("sleepstudy.csv"))
    with pytest.raises(ValueError, match="needs a REML fit"):
        model.fit(reml=False, ddf="kenward-roger")
    with pytest.raises(ValueError, match="ddf must be"):
        model.fit(ddf="containment")
    with pytest.raises(ValueError, match="ddf must be"):
        model.fit(ddf=None)
    d = read_data("sleepstudy.csv").assign(w=lambda x: 1.0 + (x["Days"] % 2))
    weighted = mf.lmer(SLEEP, d, weights="w")
    with pytest.raises(NotImplementedError, match="prior weights"):
        weighted.fit(ddf="kenward-roger")


def test_df_computed_lazily_and_cached():
    res = lmer(SLEEP, "sleepstudy.csv")
    cache = res._results.__dict__.get("_inference_cache", {})
    assert "satt" not in cache                          # fit() did not compute the df
    p = res.pvalues
    cache = res._results.__dict__["_inference_cache"]
    assert "satt" in cache
    p[:] = 0.5                                          # the result does not change
    assert float(res.pvalues["Days"]) < 1e-4


def test_refit_keeps_the_method_and_robust_keeps_its_own():
    res = lmer(SLEEP, "sleepstudy.csv", ddf="kenward-roger")
    y = np.asarray(res.model.endog) + 1.0
    assert res.refit(y).ddf == "kenward-roger"
    rr = res.get_robustcov_results("cluster", type="CR2")
    assert rr.cov_type == "cluster" and "Kenward" not in str(rr.summary())
    np.testing.assert_allclose(rr.pvalues, 2 * stats.t.sf(np.abs(rr.tvalues), rr.df_resid_inference),
                               rtol=1e-12)
    np.testing.assert_array_equal(rr.df_inference, rr.df_resid_inference)
    assert res.get_robustcov_results("cluster", type="CR2", df="z").df_inference is None


def test_correlation_models_follow_the_default():
    import mlmext.cor
    df = read_data("sleepstudy.csv")
    model = mf.lmer(SLEEP, df, correlation=mlmext.cor.AR1(time="Days", group="Subject"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit()
        z = model.fit(ddf="z")
    assert res.ddf == "satterthwaite"
    dfs = res.df_satterthwaite()
    t = res.fe_params / res.bse_fe
    np.testing.assert_allclose(res.pvalues, 2 * stats.t.sf(np.abs(t), dfs), rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(z.pvalues), 2 * stats.norm.sf(np.abs(np.asarray(t))))
    with pytest.raises(NotImplementedError, match="Kenward-Roger"):
        model.fit(ddf="kenward-roger")


def test_glmm_keeps_z_tests():
    cbpp = read_data("cbpp.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                     family="binomial").fit()
    assert not g.use_t and "P>|z|" in str(g.summary())
    z = np.asarray(g.params) / np.asarray(g.bse)
    np.testing.assert_allclose(np.asarray(g.pvalues), 2 * stats.norm.sf(np.abs(z)), rtol=1e-12)
