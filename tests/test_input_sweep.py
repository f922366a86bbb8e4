"""Input sweep: lme4's formula syntax and bad inputs give lme4's answer or a clear error.

Each case either raises the exception a user needs (naming the term) or checks a number
against lme4 (values in the comments come from R 4.2, lme4 1.1).
"""
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def d():
    rng = np.random.default_rng(20261207)
    n, m = 200, 10
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=m)[g] + rng.normal(size=n)
    cnt = rng.poisson(np.exp(0.3 + 0.3 * x))
    return pd.DataFrame({"y": y, "x": x, "g": g, "a": rng.integers(0, 3, n), "cnt": cnt,
                         "ord": np.clip(cnt, 0, 3)})


# -------------------------------------------- a random-effects term with no columns
@pytest.mark.parametrize("formula", ["y ~ x + (0 | g)", "y ~ x + (-1 | g)",
                                     "y ~ x + (0 | g) + (1 | a)"])
def test_a_term_without_columns_raises_naming_it(d, formula):
    # lme4 stops ("length(theta) > 0L is not TRUE"); the fit crashed in a reshape
    with pytest.raises(ValueError, match=r"random-effects term \((0|-1) \| g\) has no columns"):
        mf.lmer(formula, d)


@pytest.mark.parametrize("build", [
    lambda d: mf.glmer("cnt ~ x + (0 | g)", d, family="poisson"),
    lambda d: mf.glmer_nb("cnt ~ x + (0 | g)", d),
    lambda d: mf.clmm("ord ~ x + (0 | g)", d),
])
def test_a_term_without_columns_raises_for_glmms_and_clmm(d, build):
    with pytest.raises(ValueError, match=r"\(0 \| g\) has no columns"):
        build(d)


# ------------------------------------ an infinite weight or offset is not a missing value
def _with_inf(d, col):
    e = d.assign(w=np.linspace(0.5, 2.0, len(d)), off=np.linspace(-0.2, 0.2, len(d)))
    e.loc[[3, 7], col] = np.inf
    return e


@pytest.mark.parametrize("col, kw, what", [("w", {"weights": "w"}, "weights"),
                                           ("off", {"offset": "off"}, "offset")])
@pytest.mark.parametrize("build", [
    lambda e, kw: mf.lmer("y ~ x + (1 | g)", e, **kw),
    lambda e, kw: mf.lmer("y ~ x + (1 | g)", e, missing="raise", **kw),
    lambda e, kw: mf.lmer("y ~ x + (1 | g)", e, **{k: e[v].to_numpy() for k, v in kw.items()}),
    lambda e, kw: mf.glmer("cnt ~ x + (1 | g)", e, family="poisson", **kw),
    lambda e, kw: mf.glmer_nb("cnt ~ x + (1 | g)", e, **kw),
    lambda e, kw: mf.clmm("ord ~ x + (1 | g)", e, **kw),
])
def test_infinite_weights_and_offsets_raise(d, col, kw, what, build):
    # lme4 stops ("objective in x0 returns NA", "PIRLS loop resulted in NaN value"); they
    # were dropped as missing values (counted as such), or called missing by missing="raise"
    with pytest.raises(ValueError, match=rf"the {what} (has|have) 2 infinite value\(s\) "
                                         r"\(first at row 3\); infinite values are not missing"):
        build(_with_inf(d, col), kw)


@pytest.mark.parametrize("col, kw, what", [("w", {"weights": "w"}, "weights"),
                                           ("off", {"offset": "off"}, "offset")])
def test_infinite_weights_and_offsets_raise_for_dask(d, col, kw, what):
    dd = pytest.importorskip("dask.dataframe")
    e = dd.from_pandas(_with_inf(d, col), npartitions=2)
    # the weights crashed in a Cholesky factor ("not positive definite")
    with pytest.raises(ValueError, match=rf"the {what} column '{col}' has infinite values"):
        mf.lmer("y ~ x + (1 | g)", e, **kw).fit()


def test_nan_weights_and_offsets_are_still_dropped_and_counted(d):
    e = d.assign(w=np.linspace(0.5, 2.0, len(d)), off=np.linspace(-0.2, 0.2, len(d)))
    e.loc[[3], "w"] = np.nan
    e.loc[[7], "off"] = np.nan
    res = mf.lmer("y ~ x + (1 | g)", e, weights="w", offset="off").fit()
    ref = mf.lmer("y ~ x + (1 | g)", e.drop(index=[3, 7]), weights="w", offset="off").fit()
    assert res.nobs == len(d) - 2 and res.model.nrows_dropped == 2
    assert res.llf == pytest.approx(ref.llf, rel=1e-12)
    np.testing.assert_allclose(res.fe_params, ref.fe_params, rtol=1e-10)


# --------------------- new data: a categorical is matched to the fitted levels by value
@pytest.fixture(scope="module")
def cat_fit(d):
    e = d.assign(f=pd.Categorical(np.array(["p", "q", "r"])[d["a"].to_numpy()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return e, mf.lmer("y ~ x + f + (1 | g)", e).fit()


@pytest.mark.parametrize("cats", [["q", "r"], ["r", "q", "p"], ["p", "q", "r", "unused"]])
def test_new_categorical_with_other_categories_predicts_by_value(cat_fit, cats):
    # R's model.frame(xlev=) matches by label; patsy refused ("mismatching levels") a subset
    # of the categories, another order, or an unused extra category
    e, res = cat_fit
    nd = e[e["f"] != "p"].head(6)
    ref = res.predict(data=nd.assign(f=nd["f"].astype(str)))
    new = nd.assign(f=pd.Categorical(nd["f"].astype(str), categories=cats))
    np.testing.assert_allclose(res.predict(data=new), ref, rtol=1e-12)
    # and by hand: X beta + the group's random effect
    beta = res.fe_params
    b = res.ranef()["g"].iloc[:, 0]          # (indexed by level labels, as R: strings)
    by_hand = (beta["Intercept"] + beta["x"] * nd["x"] + np.where(nd["f"] == "q", beta["f[T.q]"], 0)
               + np.where(nd["f"] == "r", beta["f[T.r]"], 0) + b.loc[nd["g"].astype(str)].to_numpy())
    np.testing.assert_allclose(ref, by_hand, rtol=1e-10)


def test_new_categorical_with_an_unseen_value_names_it(cat_fit):
    e, res = cat_fit
    nd = e.head(3).assign(f=pd.Categorical(["p", "zz", "q"]))
    with pytest.raises(ValueError, match=r"value 'zz' does not match any of the expected levels"):
        res.predict(data=nd)


def test_clmm_new_categorical_with_one_category():
    from mlmext.datasets import load
    wine = load("wine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.clmm("rating ~ temp + contact + (1 | judge)", wine).fit()
    nd = wine.iloc[[0, 1, 2, 3]]
    one = nd.assign(temp=pd.Categorical(nd["temp"].astype(str)),
                    contact=pd.Categorical(nd["contact"].astype(str), categories=["yes", "no"]))
    np.testing.assert_allclose(np.asarray(res.predict(data=one)),
                               np.asarray(res.predict(data=nd)), rtol=1e-12)


# ----------------------------- Dask: an unknown column's message lists the data's columns
@pytest.mark.parametrize("formula, where", [("y ~ nope + (1 | g)", "the fixed-effects formula"),
                                            ("y ~ x + (nope | g)", r"random-effects term \(nope"),
                                            ("y ~ x + (1 | nope)", r"random-effects term \(1")])
def test_dask_unknown_column_lists_the_data_columns(d, formula, where):
    dd = pytest.importorskip("dask.dataframe")
    # the message listed the pass-1 template's columns (those used: ['y', 'g']) as the data's
    cols = [str(c) for c in d.columns]
    with pytest.raises(ValueError, match=rf"unknown column 'nope' in {where}.*\(the data has "
                                         rf"columns {re.escape(str(cols))}\)"):
        mf.lmer(formula, dd.from_pandas(d, npartitions=2))


# ------------------------------------- gee_select: a one-level factor is not dropped silently
@pytest.mark.parametrize("formula, term", [("y ~ C(f) + x", "C(f)"), ("y ~ x + f", "f"),
                                           ("y ~ x + x:f", "x:f")])
def test_gee_one_level_factor_raises(d, formula, term):
    # geepack stops ("contrasts can be applied only to factors with 2 or more levels"); the
    # term had no columns and gee_select fitted y ~ x without saying so
    e = d.assign(f="p")
    with pytest.raises(ValueError, match=rf"term '{re.escape(term)}' of .* has no columns"):
        mf.gee_select(formula, "g", e, "gaussian", cov_structs=["exchangeable"])



# ------------------------------------------------- R's ^ and %in% are not read as Python's
@pytest.mark.parametrize("formula", ["y ~ x + a^2 + (1 | g)", "y ~ x + (1 + a^2 | g)",
                                     "y ~ (x + a)^2 + (1 | g)"])
def test_caret_outside_I_raises(d, formula):
    # a^2 of the integer column a was Python's exclusive or (0, 1, 2 -> 2, 3, 0), fitted
    # silently as a predictor 'a ^ 2'; lme4 reads a^2 as a (and (x + a)^2 as x * a)
    with pytest.raises(ValueError, match=r"uses '\^' outside I\(\).*\(a \+ b\)\*\*2"):
        mf.lmer(formula, d)


def test_caret_inside_I_is_a_power_as_in_r(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = mf.lmer("y ~ I(a^2) + (1 | g)", d).fit()
        r2 = mf.lmer("y ~ I(a**2) + (1 | g)", d).fit()
        r3 = mf.lmer("y ~ a2 + (1 | g)", d.assign(a2=d["a"] ** 2)).fit()
    np.testing.assert_allclose(r1.fe_params.to_numpy(), r3.fe_params.to_numpy(), rtol=1e-10)
    assert r1.llf == pytest.approx(r2.llf, rel=1e-12) == pytest.approx(r3.llf, rel=1e-12)


@pytest.mark.parametrize("formula", ["y ~ x + a^2", "y ~ I(a^2)"])
def test_gee_caret_raises(d, formula):
    with pytest.raises(ValueError, match=r"uses '\^': write a power as I\(x\*\*2\)"):
        mf.gee_select(formula, "g", d, "gaussian", cov_structs=["exchangeable"])


def test_r_in_operator_says_how_to_write_it(d):
    with pytest.raises(ValueError, match=r"R's b %in% a is written a:b here"):
        mf.lmer("y ~ x + x %in% a + (1 | g)", d)
