"""clmm with everyday mistakes: each input works (checked against a direct computation) or
fails with a clear error or warning naming what to write instead (issue 11)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from mlmext import datasets
from mlmext import laplace as lp
from mlmext.formula import api as mf
from mlmext.ordinal import OrdinalMixedModel, ordinal_response
from refcases import no_warning

WINE = "rating ~ temp + contact + (1 | judge)"


@pytest.fixture(scope="module")
def wine():
    return datasets.load("wine")


@pytest.fixture(scope="module")
def d():
    rng = np.random.default_rng(2)
    n = 60
    out = pd.DataFrame({"g": np.repeat(np.arange(10), 6).astype(str), "x": rng.normal(size=n),
                        "z": rng.normal(size=n), "f": np.tile(["a", "b"], 30)})
    out["y"] = rng.integers(1, 4, n)
    return out


@pytest.fixture(scope="module")
def d_fit(d):
    return mf.clmm("y ~ z + (1 | g)", d).fit()


# ------------------------------------------------------------------ keyword arguments
@pytest.mark.parametrize("kw, match", [
    ({"Hess": True}, r"'Hess' \(use hessian=True/False\)"),
    ({"nAGQ": 10}, r"'nAGQ' \(use \.fit\(nagq=\.\.\.\)"),
    ({"method": "nlminb"}, r"'method' \(the clmm fit has one method"),
    ({"tol": 1e-6}, r"'tol' \(use gtol="),
    ({"link": "probit"}, r"'link' \(the link is chosen when the model is made"),
    ({"maxit": 10}, r"'maxit' \(did you mean maxiter=\?\)"),
])
def test_fit_rejects_unknown_keywords(d, kw, match):
    with pytest.raises(TypeError, match=r"fit\(\) got an unexpected keyword argument " + match):
        mf.clmm("y ~ z + (1 | g)", d).fit(**kw)


@pytest.mark.parametrize("kw, match", [
    ({"family": "binomial"}, r"'family' \(a cumulative link model has no family: choose the link"),
    ({"exposure": 1.0}, r"'exposure' \(.*offset="),
    ({"nAGQ": 5}, r"'nAGQ' \(the number of quadrature nodes is a fit\(\) argument"),
])
def test_clmm_rejects_r_arguments(d, kw, match):
    with pytest.raises(TypeError, match=r"clmm\(\) got an unexpected keyword argument " + match):
        mf.clmm("y ~ z + (1 | g)", d, **kw)


# ------------------------------------------------------------------ nagq
@pytest.mark.parametrize("nagq, exc, match", [
    (1000, ValueError, "nagq=1000 is more quadrature nodes than the 100 allowed"),
    (2.5, ValueError, "whole number of quadrature nodes.*got 2.5"),
    ("10", ValueError, "whole number"),
    (0, ValueError, "nagq must be 1 .*nAGQ = 0 and 1 both mean Laplace"),
    (-3, NotImplementedError, "non-adaptive Gauss-Hermite quadrature.*use nagq=3"),
    (-1000, ValueError, "at most 100"),
])
def test_nagq_out_of_range(d, nagq, exc, match):
    with pytest.raises(exc, match=match):
        mf.clmm("y ~ z + (1 | g)", d).fit(nagq=nagq)


@pytest.mark.parametrize("kw, match", [
    ({"maxiter": 0}, "maxiter must be a positive whole number; got 0"),
    ({"gtol": 0.0}, "gtol must be a positive number"),
    ({"gtol": -1e-6}, "gtol must be a positive number"),
])
def test_iteration_limits_and_tolerances(d, kw, match):
    with pytest.raises(ValueError, match=match):
        mf.clmm("y ~ z + (1 | g)", d).fit(**kw)


def test_nagq_up_to_100_is_finite_and_converged(wine):
    # ordinal's own quadrature gives NA from about 60 nodes on (R 4.2.2, ordinal 2022.11-16);
    # the log-sum-exp here stays finite.  Measured llf: 10 -81.53246071154, 25 and 100
    # -81.53246071081 (clmm nAGQ = 10, 25, 50: -81.53246)
    mod = mf.clmm(WINE, wine)
    llf = {n: mod.fit(nagq=n).llf for n in (10, 25, 100)}
    assert llf[25] == pytest.approx(-81.53246, abs=1e-5)
    assert llf[100] == pytest.approx(llf[25], abs=1e-9)
    assert llf[10] == pytest.approx(llf[25], abs=1e-8)
    assert mod.fit(nagq=25.0).nagq == 25


def test_agq_of_an_extreme_level_is_finite():
    # a level with a huge conditional mode: exp() of the node values alone would underflow
    z, w = lp.gh_rule(100)
    assert np.all(np.isfinite(np.log(w)))
    d = pd.DataFrame({"g": np.repeat(list("abcdefgh"), 12), "x": np.tile(np.linspace(-1, 1, 12), 8)})
    d["y"] = np.tile([1, 1, 2, 2, 3, 3, 1, 2, 3, 1, 2, 3], 8)
    d.loc[d.g == "a", "y"] = 3
    res = mf.clmm("y ~ x + (1 | g)", d).fit(nagq=100)
    at = np.r_[res.params, res.theta]
    assert res.ranef()["g"].iloc[:, 0].abs().max() > 1.0
    assert np.isfinite(res.llf)
    assert res.model.loglike(at, nagq=100) == pytest.approx(res.model.loglike(at, nagq=50), abs=1e-9)


def test_agq_product_grid_cap(wine):
    mod = mf.clmm("rating ~ temp + contact + (1 + temp + contact | judge)", wine)
    with pytest.raises(ValueError, match=r"product grid of 1,000,000 nodes.*use nagq <= 46"):
        mod.fit(nagq=100)


def test_agq_needs_one_grouping_factor(d):
    mod = mf.clmm("y ~ z + (1 | g) + (1 | h)", d.assign(h=(np.arange(len(d)) % 7).astype(str)))
    with pytest.raises(NotImplementedError, match=r"single grouping factor.*\(g, h\)"):
        mod.fit(nagq=5)


# ------------------------------------------------------------------ separation
def test_complete_separation_warns(d):
    dd = d.assign(y=np.where(d.x < -0.5, 1, np.where(d.x < 0.5, 2, 3)))
    with pytest.warns(PerfectSeparationWarning, match=r"\(quasi-\)completely separated: a "
                                                      r"combination of the fixed effects \['x'\]"):
        res = mf.clmm("y ~ x + (1 | g)", dd).fit()
    assert abs(res.params["x"]) > 20


def test_quasi_separation_warns_instead_of_a_bare_hessian_warning(d):
    rng = np.random.default_rng(4)
    dd = d.assign(y=np.where(d.f == "a", 1, rng.integers(1, 4, len(d))))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mf.clmm("y ~ f + z + (1 | g)", dd).fit()
    sep = [w for w in rec if issubclass(w.category, PerfectSeparationWarning)]
    assert len(sep) == 1 and "['f[T.b]']" in str(sep[0].message)
    assert "Hessian is numerically singular" in str(sep[0].message)
    assert not any("not positive definite" in str(w.message) for w in rec)


def test_ordinary_fits_do_not_warn(wine):
    res = no_warning(PerfectSeparationWarning, lambda: mf.clmm(WINE, wine).fit())
    assert res.llf == pytest.approx(-81.56541, abs=1e-4)


# ------------------------------------------------------------------ response and levels
def test_float_response_matches_integer_levels(d, d_fit):
    res = mf.clmm("y ~ z + (1 | g)", d.assign(y=d.y.astype(float)), levels=[1, 2, 3]).fit()
    assert list(res.thresholds.index) == ["1|2", "2|3"]
    assert res.llf == pytest.approx(d_fit.llf, abs=1e-10)
    rev = mf.clmm("y ~ z + (1 | g)", d.assign(y=d.y.astype(float)), levels=[3, 2, 1]).fit()
    assert rev.params["z"] == pytest.approx(-d_fit.params["z"], abs=1e-6)
    strings = mf.clmm("y ~ z + (1 | g)", d, levels=["1", "2", "3"]).fit()
    assert strings.llf == pytest.approx(d_fit.llf, abs=1e-10)


def test_levels_that_miss_a_value_show_both(d):
    with pytest.raises(ValueError, match=r"the response 'y' has values 3 that are not in "
                                         r"levels=\[1, 2\]; its values are \['1', '2', '3'\]"):
        mf.clmm("y ~ z + (1 | g)", d, levels=[1, 2])
    with pytest.raises(ValueError, match=r"levels for 'y' has duplicates.*1 and 1.0 are the same"):
        ordinal_response(d.y, [1, 1.0, 2, 3], "y")


def test_ordinal_response_keys():
    codes, labels = ordinal_response(pd.Series([2.0, 1.0, np.nan, 3.0]), [1, 2, 3], "y")
    np.testing.assert_array_equal(codes, [1, 0, np.nan, 2])
    codes, _ = ordinal_response(pd.Series(["1", "3"]), [1, 2, 3], "y")
    np.testing.assert_array_equal(codes, [0, 2])


def test_one_category_is_an_error(d):
    with pytest.raises(ValueError, match=r"'y' has 1 observed category \(1\); an ordinal model "
                                         "needs at least two"):
        mf.clmm("y ~ z + (1 | g)", d.assign(y=1))


def test_missing_responses_are_dropped(d):
    dd = d.assign(y=d.y.astype(float))
    dd.loc[[1, 7, 30], "y"] = np.nan
    res = mf.clmm("y ~ z + (1 | g)", dd).fit()
    ref = mf.clmm("y ~ z + (1 | g)", dd.dropna(subset=["y"])).fit()
    assert res.nobs == 57 and res.llf == pytest.approx(ref.llf, abs=1e-10)


def test_unordered_strings_need_an_order(d):
    with pytest.raises(ValueError, match="unordered values.*pass levels="):
        mf.clmm("y ~ z + (1 | g)", d.assign(y=d.y.astype(str)))
    with pytest.raises(ValueError, match="non-integer numbers"):
        mf.clmm("y ~ z + (1 | g)", d.assign(y=d.y + 0.5))


# ------------------------------------------------------------------ zero weights
def test_zero_weights_that_empty_a_category(d):
    w = np.where(d.y == 2, 0.0, 1.0)
    ref = mf.clmm("y ~ z + (1 | g)", d[w > 0]).fit()
    with pytest.warns(UserWarning, match=r"response 'y': .*\[2\]"):
        res = mf.clmm("y ~ z + (1 | g)", d.assign(w=w), weights="w").fit()
    assert list(res.thresholds.index) == ["1|3"]
    assert res.llf == pytest.approx(ref.llf, abs=1e-9)
    # built directly from arrays (no model frame to drop the rows)
    m0 = mf.clmm("y ~ z + (1 | g)", d)
    with pytest.warns(UserWarning, match=r"categories \[2\] have only rows with zero weight"):
        direct = OrdinalMixedModel(pd.Series(d.y.to_numpy(), name="y"), m0.exog, m0.re_design,
                                   weights=w)
    assert direct.levels == [1, 3]
    r2 = direct.fit()
    assert list(r2.thresholds.index) == ["1|3"] and r2.llf == pytest.approx(ref.llf, abs=1e-9)


def test_only_one_category_with_weight(d):
    m0 = mf.clmm("y ~ z + (1 | g)", d)
    w = np.where(d.y == 1, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"1 observed category \(1\) with positive weight"):
        OrdinalMixedModel(pd.Series(d.y.to_numpy(), name="y"), m0.exog, m0.re_design, weights=w)


# ------------------------------------------------------------------ start_params
@pytest.mark.parametrize("start, match", [
    ([0.0, 1.0], r"start_params needs 4 values \(threshold parameters 2: \['1\|2', '2\|3'\], "
                 r"fixed effects 1: \['z'\], theta 1\); got 2"),
    ([0.0, 1.0, np.nan, 1.0], "non-finite values"),
    ([1.0, 0.0, 0.0, 1.0], r"thresholds \[1.0, 0.0\], which must be increasing"),
    ([0.0, 1.0, 0.0, -1.0], "theta must be >= its lower bounds"),
])
def test_bad_start_params(d, start, match):
    with pytest.raises(ValueError, match=match):
        mf.clmm("y ~ z + (1 | g)", d).fit(start_params=start)


def test_good_start_params_reach_the_same_fit(wine):
    ref = mf.clmm(WINE, wine).fit()
    res = mf.clmm(WINE, wine).fit(start_params=np.r_[ref.params, 0.5])
    assert res.llf == pytest.approx(ref.llf, abs=1e-7)


# ----------------------------------------------------------------- prediction, names, containers
@pytest.mark.parametrize("kw, exc, match", [
    ({"newdata": "ND"}, TypeError, r"'newdata'.*data="),
    ({"type": "prob"}, TypeError, r"'type'.*which="),
    ({"which": "link"}, ValueError, r"which='linear'"),
    ({"which": "mean"}, ValueError, r"which='prob'"),
    ({"re": "no"}, ValueError, r"re must be True"),
])
def test_predict_rejects_what_it_does_not_read(wine, kw, exc, match):
    res = mf.clmm(WINE, wine).fit()
    kw = {k: (wine.head(3) if v == "ND" else v) for k, v in kw.items()}
    with pytest.raises(exc, match=match):
        res.predict(**kw)


def test_predict_missing_judge_is_population_and_nan_predictor_is_nan(wine):
    res = mf.clmm(WINE, wine).fit()
    nd = wine.head(4).copy()
    nd["judge"] = nd["judge"].astype(object)
    nd.loc[nd.index[0], "judge"] = None
    nd["temp"] = nd["temp"].astype(object)
    nd.loc[nd.index[1], "temp"] = None
    p, pop, full = res.predict(nd), res.predict(nd, re=False), res.predict(wine.head(4))
    np.testing.assert_allclose(p.iloc[0], pop.iloc[0], rtol=1e-14)
    assert np.abs(p.iloc[0] - full.iloc[0]).max() > 1e-3          # judge 1's effect is not zero
    assert p.iloc[1].isna().all()
    np.testing.assert_allclose(p.iloc[2:], full.iloc[2:], rtol=1e-14)


def test_dotted_names_and_a_backticked_response(wine):
    ref = mf.clmm(WINE, wine).fit()
    w2 = wine.rename(columns={"rating": "rating.1", "temp": "temp.x", "judge": "judge id"})
    r = mf.clmm("`rating.1` ~ temp.x + contact + (1 | `judge id`)", w2).fit()
    np.testing.assert_array_equal(r.params.to_numpy(), ref.params.to_numpy())
    assert "temp.x[T.warm]" in r.params.index and "judge id" in r.ranef()


def test_pickle_and_polars(wine):
    import pickle
    res = mf.clmm(WINE, wine).fit()
    r2 = pickle.loads(pickle.dumps(res))
    np.testing.assert_array_equal(r2.predict(wine.head(5)), res.predict(wine.head(5)))
    pl = pytest.importorskip("polars")
    # polars has no ordered categoricals: the order of the ratings is given by levels=
    r3 = mf.clmm(WINE, pl.DataFrame({c: wine[c].astype(str).tolist() for c in wine.columns}),
                  levels=["1", "2", "3", "4", "5"]).fit()
    np.testing.assert_array_equal(r3.params.to_numpy(), res.params.to_numpy())
