"""Notebook display (``_repr_html_``) and the bundled datasets."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext
from mlmext import datasets
from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def test_anova_html_has_header_and_values(sleep):
    m0 = mf.lmer("Reaction ~ Days + (1 | Subject)", sleep).fit()
    m1 = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    tab = mlmext.anova(m0, m1)
    html = tab._repr_html_()
    assert html.startswith("<pre>refitting model(s) with ML")
    assert "(Days|Subject)" in html.replace(" ", "")
    assert "<table" in html and f"{tab['Chisq'].iloc[1]:.6g}" in html
    # the first model's empty test columns render empty, not as NaN
    assert "NaN" not in html


def test_glmm_and_clmm_html_summaries():
    cbpp = datasets.load("cbpp")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                 family=sm.families.Binomial()).fit()
    html = g._repr_html_()
    assert "<table" in html and "herd" in html and f"{g.llf:.4f}" in html
    o = mf.clmm("rating ~ temp + contact + (1 | judge)", data=datasets.load("wine")).fit()
    html = o._repr_html_()
    assert "<table" in html and "judge" in html and "1|2" in html


def test_every_dataset_loads_with_a_source_note():
    assert set(datasets.names()) >= {"sleepstudy", "penicillin", "pastes", "cbpp", "grouseticks",
                                     "wine", "dietox", "hsb82", "dental"}
    for name in datasets.names():
        df = datasets.load(name)
        assert len(df) > 0 and df.attrs["source"] == datasets.SOURCES[name]
        assert "R package" in datasets.SOURCES[name] or "lme4" in datasets.SOURCES[name]


def test_hsb82_and_dental_layouts():
    h = datasets.load("hsb82")
    assert h.shape == (7185, 8) and h["school"].nunique() == 160
    assert list(h["sector"].cat.categories) == ["Public", "Catholic"]
    # cses is ses centred at the school mean
    dev = h["ses"] - h.groupby("school", observed=True)["ses"].transform("mean")
    np.testing.assert_allclose(h["cses"], dev, atol=1e-9)
    d = datasets.load("dental")
    assert d.shape == (27, 6)
    assert list(d.columns) == ["Subject", "Sex", "distance_8", "distance_10", "distance_12", "distance_14"]
    assert list(d["Sex"].cat.categories) == ["Male", "Female"] and (d["Sex"] == "Female").sum() == 11
    long = pd.wide_to_long(d, "distance", i="Subject", j="age", sep="_").reset_index()
    assert len(long) == 108 and long["distance"].mean() == pytest.approx(24.0231, abs=1e-4)


def _block(res):
    text = repr(res)
    assert str(res) == text and "object at 0x" not in text
    return text


def test_print_shows_lme4s_block():
    sleep = datasets.load("sleepstudy")
    text = _block(mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit())
    lines = text.splitlines()
    assert lines[:3] == ["Linear mixed model fit by REML",
                         "Formula: Reaction ~ Days + (Days | Subject)",
                         "REML criterion at convergence: 1743.6283"]
    assert "Number of obs: 180, groups: Subject, 18" in lines
    assert lines[-3:] == ["Fixed effects:", "Intercept   Days", "    251.4  10.47"]
    assert "Days    35.07    5.922 0.07" in text                # the random-effects table
    ml = _block(mf.lmer("Reaction ~ Days + (Days | Subject) + (1 | Subject)", sleep).fit(reml=False))
    assert "Linear mixed model fit by maximum likelihood" in ml and "logLik: " in ml
    assert "groups: Subject, 18\n" in ml                         # one entry per grouping factor


def test_print_glmm_clmm_and_notes():
    cbpp = datasets.load("cbpp")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                 family=sm.families.Binomial()).fit()
    text = _block(g)
    assert text.splitlines()[0] == ("Generalized linear mixed model fit by maximum likelihood "
                                    "(Laplace approximation) [Binomial, logit]")
    assert "logLik: -92.0263" in text and "Number of obs: 56, groups: herd, 15" in text
    assert "-1.399      -0.9923" in text
    html = g._repr_html_()
    assert "<table" in html and "Fixed effects" in html and "-1.399" in html and "herd" in html
    assert html.startswith("<div><pre>Generalized linear mixed model fit by maximum likelihood")
    o = mf.clmm("rating ~ temp + contact + (1 | judge)", data=datasets.load("wine")).fit(nagq=5)
    text = _block(o)
    assert "(adaptive Gauss-Hermite quadrature, nAGQ = 5)" in text.splitlines()[0]
    assert text.splitlines()[-2].split() == ["1|2", "2|3", "3|4", "4|5", "temp[T.warm]", "contact[T.yes]"]
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"y": rng.standard_normal(200), "g": np.repeat(np.arange(20), 10)})
    df["y"] -= df.groupby("g")["y"].transform("mean") * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sing = mf.lmer("y ~ 1 + (1 | g)", df).fit()
    assert _block(sing).splitlines()[-1] == "Note: boundary (singular) fit: see res.is_singular()"


@pytest.mark.parametrize("before,expected", [("", 2), ("warnings.simplefilter('ignore')", 0)])
def test_users_warning_filters_set_before_import_are_respected(before, expected):
    # statsmodels installs "always" for ConvergenceWarning when first imported, in front of
    # the user's filters; mlmext keeps the user's in front (a fresh interpreter: statsmodels
    # is already imported here)
    import subprocess
    import sys
    code = "\n".join([
        "import warnings", before, "import mlmext",
        "from mlmext.formula import api as mf", "from mlmext import datasets",
        "d = datasets.load('sleepstudy')",
        "with warnings.catch_warnings(record=True) as rec:",
        "    for _ in range(2):",
        "        mf.lmer('Reaction ~ Days + (Days | Subject)', d).fit(maxiter=1)",
        "print(sum(type(w.message).__name__ == 'ConvergenceWarning' for w in rec))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == expected


def test_varcorr_is_indexed_by_parameter_with_none_for_na():
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    vc = r.varcorr()
    assert vc.index.name == "parameter"
    assert list(vc.index) == ["sd_Intercept|Subject", "sd_Days|Subject",
                              "cor_Days.Intercept|Subject", "sigma"]
    assert list(vc["var2"]) == [None, None, "Days", None] and vc.loc["sigma", "var1"] is None
    assert vc.loc["cor_Days.Intercept|Subject", "sdcor"] == pytest.approx(0.0655, abs=1e-4)
    assert vc.loc["sigma", "sdcor"] == pytest.approx(r.sigma, rel=1e-12)


def test_anova_rows_named_after_the_callers_variables_and_printed_as_r():
    sleep = datasets.load("sleepstudy")
    fm0 = mf.lmer("Reaction ~ Days + (1 | Subject)", sleep).fit()
    fm1 = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    tab = mlmext.anova(fm1, fm0)
    assert list(tab.index) == ["fm0", "fm1"]
    text = repr(tab)
    assert "fm0: Reaction ~ Days + (1 | Subject)" in text and "NaN" not in text
    row = text.splitlines()[-1].split()
    assert row[0] == "fm1" and row[-2] == "2"               # Df a whole number, not 2.0
    assert list(mlmext.anova(fm0, fm1, names=["a", "b"]).index) == ["a", "b"]
    # the same object under two names: ambiguous, the default labels
    alias = fm0  # noqa: F841
    assert list(mlmext.anova(fm0, fm1).index) == ["m1", "m2"]


def test_t_test_with_df_prints_the_hypotheses_and_their_df():
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    t = r.t_test("Days = 0, Intercept = 250", df="satterthwaite")
    text = str(t)
    assert text == repr(t)
    lines = text.splitlines()
    assert "Satterthwaite df" in lines[0]
    assert lines[2].split() == ["coef", "std", "err", "t", "df", "P>|t|", "[0.025", "0.975]"]
    assert lines[4].startswith("Days = 0") and lines[4].split()[-4] == "17.00"
    assert lines[5].startswith("Intercept = 250")
    np.testing.assert_allclose(t.df_denom, 17.0, rtol=1e-6)       # lmerTest: 17
    assert str(r.t_test(np.array([[0.0, 1.0]]), df="kenward-roger")).splitlines()[4].startswith("c0")


def test_glmm_bootstrap_intervals_take_lme4_names():
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", datasets.load("cbpp"),
                 family=sm.families.Binomial()).fit()
    ci = g.conf_int(method="boot", nsim=4, seed=1, names="lme4")
    assert list(ci.index) == [".sig01", "Intercept", "period[T.2]", "period[T.3]", "period[T.4]"]
    assert np.all(ci[0] <= ci[1])


def test_estimate_tables_share_one_labelling():
    # every method's conf_int has statsmodels' columns 0 (lower), 1 (upper), and every table of
    # estimates is indexed by parameter name under the index name "parameter"
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    wald, prof = r.conf_int(), r.conf_int(method="profile", cols=["sigma", "Days"])
    boot = r.conf_int(method="boot", nsim=3, seed=2, names="lme4")
    for ci in (wald, prof, boot):
        assert list(ci.columns) == [0, 1] and ci.index.name == "parameter"
        assert np.all(ci[0] < ci[1])
    assert list(prof.index) == ["sigma", "Days"] and list(boot.index)[-3:] == [".sigma", "Intercept", "Days"]
    # t quantile on lmerTest's Satterthwaite df 16.99998 (qt(0.975, 16.99998) = 2.109816)
    assert wald.loc["Days", 0] == pytest.approx(r.fe_params["Days"] - 2.109816 * r.bse_fe["Days"])
    for s in (r.fe_params, r.bse_fe, r.varcorr()):
        assert s.index.name == "parameter"
    o = mf.clmm("rating ~ temp + (1 | judge)", datasets.load("wine")).fit()
    assert o.fe_params.index.name == o.bse_fe.index.name == "parameter"
    assert list(o.fe_params.index) == ["temp[T.warm]"]


def test_summary_digits_follow_the_columns():
    # R's printCoefmat: one count of decimals per column, enough for the smallest SE to show
    # four significant digits; scaled-residual quantiles share one count of decimals
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(30), 10)
    x = rng.standard_normal(300)
    y = 0.0009 * x * 1e3 + rng.standard_normal(30)[g] + rng.standard_normal(300)
    res = mf.lmer("y ~ xs + (1 | g)", pd.DataFrame({"y": y, "xs": x * 1e3, "g": g})).fit()
    tab = res.summary().tables[3].as_text().splitlines()
    row = [r for r in tab if r.startswith("xs")][0].split()
    se = float(res.bse["xs"])
    assert se < 1e-4 and row[2] == f"{se:.{3 - int(np.floor(np.log10(se)))}f}"
    assert float(row[1]) == pytest.approx(res.params["xs"], abs=se * 1e-3)   # not 0.0000
    sleep = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    text = str(sleep.summary())
    assert "-3.9536 -0.4634 0.0231 0.4634 5.1793" in text               # lme4 prints these
    assert "Days       10.467   1.546" in text and "<2e-16" in text


def test_lmm_summary_says_which_covariance_and_tests():
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    assert "(lme4's vcov); t tests on Satterthwaite df" in str(r.summary())
    z = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit(ddf="z")
    assert "(lme4's vcov); z tests" in str(z.summary()) and "P>|z|" in str(z.summary())
    assert "t tests on Satterthwaite df" in str(r.summary(ddf="satterthwaite"))
    assert "Kenward-Roger's adjusted covariance" in str(r.summary(ddf="kenward-roger"))


def test_clmm_summary_uses_the_coefficient_digits():
    # ordinal's summary(clmm): tempwarm 3.0630 0.5954 ... 2.68e-07; thresholds in their own table
    o = mf.clmm("rating ~ temp + contact + (1 | judge)", datasets.load("wine")).fit()
    smry = o.summary()
    coefs, thresholds = smry.tables[2].as_text(), smry.tables[3].as_text()
    row = [r for r in coefs.splitlines() if r.startswith("temp[T.warm]")][0].split()
    assert row[1:3] == ["3.0630", "0.5954"] and row[4] == "2.68e-07"
    assert "Threshold coefficients" in thresholds
    row = [r for r in thresholds.splitlines() if r.startswith("1|2")][0].split()
    assert row[1] == f"{o.params['1|2']:.4f}" and row[4] == f"{o.pvalues['1|2']:.3g}"
    assert "judge: 9" in str(smry) and "judge: 9, judge" not in str(smry)
