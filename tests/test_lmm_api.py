"""Formula parsing, bad input, results API and predictions of the LMM front door."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.frame import parse_formula

from refcases import assert_fe_close, lmm_eps

# -- parser -----------------------------------------------------------------------


def test_parse_correlated_and_fixed_part():
    p = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert p.fixed_formula == "Reaction ~ Days"
    assert [(b.lhs, b.name) for b in p.bars] == [("Days", "Subject")]


def test_parse_double_bar_expands_like_lme4():
    p = parse_formula("y ~ x + (1 + x + z || g)")
    assert [(b.lhs, b.name) for b in p.bars] == [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]
    p = parse_formula("y ~ x + (0 + x || g)")
    assert [b.lhs for b in p.bars] == ["0 + x"]


def test_parse_nesting_names_as_lme4():
    p = parse_formula("y ~ 1 + (1 | batch/cask)")
    assert [(b.name, b.factors) for b in p.bars] == [("cask:batch", ("cask", "batch")),
                                                    ("batch", ("batch",))]
    p = parse_formula("y ~ x + (1 | a/b/c)")
    assert [b.name for b in p.bars] == ["c:(b:a)", "b:a", "a"]
    assert p.bars[0].factors == ("c", "b", "a")


def test_parse_offset_interaction_and_r_power():
    p = parse_formula("y ~ x + offset(np.log(t)) + (1 | a:b) + I(x^2)")
    assert p.offsets == ["np.log(t)"]
    assert p.bars[0].factors == ("a", "b")
    assert "I(x**2)" in p.fixed_rhs and "offset" not in p.fixed_rhs


@pytest.mark.parametrize("formula, msg", [
    ("y ~ x + (1 | )", "no grouping variable"),
    ("y ~ x + ( | g)", "nothing left of the bar"),
    ("y ~ x + 1 | g", "parentheses"),
    ("y ~ x + (1 | g", "unbalanced"),
    ("~ x + (1 | g)", "no response"),
])
def test_parse_errors(formula, msg):
    with pytest.raises(ValueError, match=msg):
        parse_formula(formula)


# -- bad input --------------------------------------------------------------------

@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def test_unknown_fixed_column(sleep):
    with pytest.raises(ValueError, match="unknown column 'Dayz'"):
        mf.lmer("Reaction ~ Dayz + (1 | Subject)", sleep)


def test_unknown_grouping_column(sleep):
    with pytest.raises(ValueError, match="unknown column 'Subj'"):
        mf.lmer("Reaction ~ Days + (1 | Subj)", sleep)


def test_unknown_slope_column(sleep):
    with pytest.raises(ValueError, match="unknown column 'Dais'"):
        mf.lmer("Reaction ~ Days + (Dais | Subject)", sleep)


def test_one_level_grouping_factor(sleep):
    d = sleep.assign(one="a")
    with pytest.raises(ValueError, match="'one'.*1 level"):
        mf.lmer("Reaction ~ Days + (1 | one)", d)


def test_as_many_levels_as_rows(sleep):
    d = sleep.assign(row=np.arange(len(sleep)).astype(str))
    with pytest.raises(ValueError, match="'row' has 180 levels for 180 observations"):
        mf.lmer("Reaction ~ Days + (1 | row)", d)


def test_non_numeric_response(sleep):
    d = sleep.assign(resp=np.where(sleep.Reaction > 300, "slow", "fast"))
    with pytest.raises(ValueError, match="response 'resp' must be a single numeric column"):
        mf.lmer("resp ~ Days + (1 | Subject)", d)


def test_missing_rows_dropped_counted_and_reported(sleep):
    d = sleep.copy()
    d.loc[[0, 5], "Reaction"] = np.nan
    d.loc[7, "Days"] = np.nan
    d["Subject"] = d["Subject"].astype(object)
    d.loc[9, "Subject"] = None
    res = mf.lmer("Reaction ~ Days + (Days | Subject)", d).fit()
    assert res.nobs == 176 and res.nrows_dropped == 4
    assert "4 rows with missing values were dropped" in str(res.summary())
    # the same fit as on the complete rows
    ref = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep.drop(index=[0, 5, 7, 9])).fit()
    assert_fe_close(res, ref, lmm_eps(ref))           # two optimizer runs: refcases.lmm_eps
    assert list(res.fittedvalues.index) == [i for i in range(180) if i not in (0, 5, 7, 9)]
    with pytest.raises(ValueError, match="4 rows have missing values"):
        mf.lmer("Reaction ~ Days + (Days | Subject)", d, missing="raise")


def test_rank_deficient_fixed_effects_warn_and_drop(sleep):
    d = sleep.assign(Days2=2 * sleep.Days)
    with pytest.warns(UserWarning, match=r"rank deficient so dropping 1 column\(s\): \['Days2'\]"):
        res = mf.lmer("Reaction ~ Days + Days2 + (1 | Subject)", d).fit()
    assert list(res.fe_params.index) == ["Intercept", "Days"]


def test_bad_weights(sleep):
    with pytest.raises(ValueError, match="non-negative"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights=-np.ones(180))
    with pytest.raises(ValueError, match="unknown column 'ww'"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights="ww")


# -- results API ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fit(sleep):
    return mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()


def test_statsmodels_inference_on_fixed_effects(fit):
    # lme4: fixef 251.405105, 10.467286; SE 6.824597, 1.545790 (tests/reference/lmm/sleepstudy_reml.json).
    # Against lme4 to the project's standard: estimates within 0.002 SE, SEs within 0.2 % (our fit's
    # criterion, refcases.lmm_eps, guarantees 4e-4 SE here); the t value then within 0.002 (1 + |t|).
    assert isinstance(fit.params, pd.Series) and list(fit.params.index) == ["Intercept", "Days"]
    np.testing.assert_allclose(fit.bse, [6.824597, 1.545790], rtol=2e-4)
    tt = fit.t_test("Days = 10")
    np.testing.assert_allclose(tt.effect, 10.467286, rtol=0, atol=2e-3 * 1.545790)
    np.testing.assert_allclose(tt.sd, 1.545790, rtol=2e-4)
    t_r = 0.467286 / 1.545790
    np.testing.assert_allclose(tt.tvalue, t_r, rtol=0, atol=2e-3 * (1 + abs(t_r)))
    # the same t value from our own numbers: one computation
    np.testing.assert_allclose(tt.tvalue, (fit.fe_params["Days"] - 10) / fit.bse_fe["Days"], rtol=1e-12)
    wt = fit.wald_test("Days = 0, Intercept = 250", scalar=True)
    assert wt.df_denom is None or np.isfinite(wt.statistic)
    # default t tests on Satterthwaite df: lmerTest's F test, the chi-square statistic over 2
    chi2 = fit.wald_test("Days = 0, Intercept = 250", use_f=False, scalar=True)
    np.testing.assert_allclose(wt.statistic, float(np.squeeze(chi2.statistic)) / 2, rtol=1e-8)
    assert wt.df_num == 2 and 16 < wt.df_denom < 18 and chi2.statistic > 40
    ci = fit.conf_int()
    # t quantile on lmerTest's Satterthwaite df 16.99998: qt(0.975, 16.99998) = 2.109816
    np.testing.assert_allclose(ci.loc["Days"], [10.467286 - 2.109816 * 1.545790,
                                                10.467286 + 2.109816 * 1.545790],
                               rtol=0, atol=2e-3 * 1.545790 * (1 + 2.109816))     # estimate and SE as above
    np.testing.assert_allclose(ci.loc["Days"], fit.fe_params["Days"] + np.array([-1, 1]) * 2.109816
                               * fit.bse_fe["Days"], rtol=1e-6)
    assert fit.cov_params().shape == (2, 2)


def test_summary_has_lme4_content(fit):
    s = str(fit.summary())
    for piece in ["REML criterion", "1743.6283", "Subject: 18", "Scaled residuals",
                  "Random effects", "Residual", "Intercept", "Days", "0.07"]:
        assert piece in s, piece
    html = fit._repr_html_()
    assert "<table" in html and "Random effects" in html


def test_fitted_resid_and_predictions(fit, sleep):
    np.testing.assert_allclose(fit.fittedvalues + fit.resid, sleep.Reaction, rtol=1e-12)
    # population predictions: X beta
    pop = fit.predict(sleep.iloc[:3], re=False)
    b0, b1 = fit.fe_params["Intercept"], fit.fe_params["Days"]
    np.testing.assert_allclose(pop, b0 + b1 * np.arange(3), rtol=1e-12)
    # lme4's estimates, each within 0.002 SE (the project's standard)
    assert np.all(np.abs(pop - (251.405105 + 10.467286 * np.arange(3)))
                  <= 2e-3 * (6.824597 + 1.545790 * np.arange(3)))
    # conditional predictions on the fitted rows equal fittedvalues
    np.testing.assert_allclose(fit.predict(sleep), fit.fittedvalues, rtol=1e-10)
    # an unseen subject gets the population value
    new = pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["999", "308"]})
    p = fit.predict(new)
    re308 = fit.ranef()["Subject"].loc["308"]
    np.testing.assert_allclose(p.iloc[0], b0, rtol=1e-12)
    np.testing.assert_allclose(p.iloc[1], b0 + re308["Intercept"] + 5 * (b1 + re308["Days"]), rtol=1e-12)


def test_weights_as_array_equal_column(sleep):
    w = 1 + (sleep.Days % 3) / 2
    a = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep, weights=w.to_numpy()).fit()
    b = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep.assign(w=w), weights="w").fit()
    np.testing.assert_allclose(a.fe_params, b.fe_params, rtol=1e-10)
    assert a.llf == pytest.approx(b.llf, abs=1e-8)


def test_offset_argument_equals_formula_offset(sleep):
    d = sleep.assign(off=2.0 * sleep.Days)
    a = mf.lmer("Reaction ~ Days + offset(off) + (1 | Subject)", d).fit()
    b = mf.lmer("Reaction ~ Days + (1 | Subject)", d, offset="off").fit()
    np.testing.assert_allclose(a.fe_params, b.fe_params, rtol=1e-10)
    # an offset of 2*Days shifts the Days slope by exactly 2 (another optimizer run: refcases.lmm_eps)
    c = mf.lmer("Reaction ~ Days + (1 | Subject)", d).fit()
    assert_fe_close(a, c, max(lmm_eps(a), lmm_eps(c)), shift=np.array([0.0, -2.0]))


def test_singular_fit_flagged(sleep):
    rng = np.random.default_rng(3)
    d = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60),
                      "g": np.repeat(list("abcdefghij"), 6)})
    with pytest.warns(ConvergenceWarning, match="boundary \\(singular\\) fit"):
        res = mf.lmer("y ~ x + (1 | g)", d).fit()
    assert res.is_singular() and res.theta[0] == 0.0
    assert "singular" in str(res.summary())
    assert res.varcorr().loc["sd_Intercept|g", "sdcor"] == 0.0      # indexed by parameter


def test_formula_environment_variables(sleep):
    scale = 2.0  # noqa: F841 - used inside the formula string
    res = mf.lmer("Reaction ~ I(Days * scale) + (1 | Subject)", sleep).fit()
    ref = mf.lmer("Reaction ~ Days + (1 | Subject)", sleep).fit()
    # the same model with Days scaled by 2: another optimizer run (refcases.lmm_eps)
    k = 2.0 * np.sqrt(max(lmm_eps(res), lmm_eps(ref)))
    assert abs(res.fe_params.iloc[1] * 2 - ref.fe_params["Days"]) <= k * ref.bse_fe["Days"]


def test_formulaic_engine_gives_same_fit():
    code = ("from mlmext import datasets; from mlmext.formula import api as mf;"
            "r = mf.lmer('Reaction ~ Days + (Days | Subject)', datasets.load('sleepstudy')).fit();"
            "print(repr(r.llf), list(r.fe_params.index))")
    env = dict(os.environ, SM_FORMULA_ENGINE="formulaic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    llf = float(out.stdout.split()[0])
    assert llf == pytest.approx(-871.814135979976, abs=1e-5)
    assert "'Intercept'" in out.stdout and "'Days'" in out.stdout


def test_datasets_loader():
    df = datasets.load("pastes")
    assert list(df["batch"].cat.categories)[:3] == ["A", "B", "C"]
    assert df.shape == (60, 4)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("nope")


def test_non_convergence_is_reported(sleep):
    with pytest.warns(ConvergenceWarning, match="did not converge.*tried"):
        # one iteration of each phase cannot reach the optimum (the checks say so)
        res = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit(maxiter=1)
    assert not res.converged
    assert "did not converge" in str(res.summary())


def test_optimizer_leaves_a_zero_start_on_the_bound():
    # At theta_k = 0 the deviance's gradient in theta_k is exactly zero (it is even in
    # theta_k), so a gradient method started there would stay.  1% of InstEval, where
    # statsmodels MixedLM (single-group trick) finds REML llf -1244.085387 with the dept
    # variance > 0 and the student variance at 0.
    from refcases import read_data
    ie = read_data("insteval.csv")
    sub = ie.sample(frac=0.01, random_state=1).reset_index(drop=True)
    for c in ("s", "d", "dept"):
        sub[c] = sub[c].cat.remove_unused_categories()
    model = mf.lmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", sub)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for start in (None, [0.0, 0.5, 0.0]):
            res = model.fit(start_params=start)
            # statsmodels' values to 6 decimals (5e-7) and what our criterion guarantees
            # (refcases.lmm_eps: the deviance, and theta in standard errors from its Hessian)
            eps = lmm_eps(res)
            assert res.llf == pytest.approx(-1244.085387, abs=1e-6 + eps / 2)
            se = np.sqrt(np.diag(2.0 * np.linalg.inv(res.check_convergence().hessian)))
            assert np.all(np.abs(res.theta - [0.0, 0.424342, 0.119228]) <= 1e-6 + np.sqrt(eps) * se), res.theta


def test_escape_bound_finds_the_interior_minimum():
    from mlmext.optimize import escape_bound
    f = lambda x: (x[0] ** 2 - 1.0) ** 2 + x[1] ** 2      # even in x0: zero gradient at x0 = 0
    lower = np.array([0.0, -np.inf])
    x, fx = escape_bound(f, np.array([0.0, 0.0]), 1.0, lower)
    assert x[0] == pytest.approx(0.1) and fx < 1.0
    # a true minimum on the bound stays
    assert escape_bound(lambda x: x[0] ** 2 + 1.0, np.array([0.0]), 1.0, np.array([0.0])) is None


def test_population_predictions_need_no_grouping_column(fit, sleep):
    new = sleep[["Days"]].iloc[:3]
    np.testing.assert_allclose(fit.predict(new, re=False), 251.405105 + 10.467286 * np.arange(3), rtol=1e-6)
    with pytest.raises(ValueError, match=r"grouping column\(s\) \['Subject'\].*re=False"):
        fit.predict(new)
    wine = datasets.load("wine")
    o = mf.clmm("rating ~ temp + contact + (1 | judge)", data=wine).fit()
    new = wine[["temp", "contact"]]
    np.testing.assert_allclose(o.predict(new, re=False), o.predict(wine, re=False), rtol=1e-12)
