"""Everyday inputs and mistakes for lmer: each gives the right answer or a clear error.

Part of the input fuzz suite (tests/test_inputs_*.py).  A case passes when the fit
equals a direct computation (usually the same model on data cleaned by hand: the
same rows and levels give the same arrays, so the same deterministic computation)
or when it raises the exception type and message a user needs.
"""
import copy
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def d():
    rng = np.random.default_rng(20261206)
    n, m = 240, 12
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.8 * x + rng.normal(scale=0.9, size=m)[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g, "w": rng.uniform(0.5, 2.0, n),
                         "f": rng.choice(["a", "b", "c"], n)})


def _fit(formula, data, **kw):
    fit_kw = kw.pop("fit", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(formula, data, **kw).fit(**fit_kw)


def _same_fit(r1, r2):
    """Two fits of the same arrays: the same deterministic computation, so equal to rounding."""
    assert r1.nobs == r2.nobs
    np.testing.assert_allclose(r1.theta, r2.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r1.fe_params.to_numpy(), r2.fe_params.to_numpy(), rtol=1e-12)
    assert r1.llf == pytest.approx(r2.llf, rel=1e-13)
    assert list(r1.fe_params.index) == list(r2.fe_params.index)


# ----------------------------------------------------------------- arguments we do not read
@pytest.mark.parametrize("kw, match", [
    ({"REML": False}, r"'REML'.*fit\(reml=False\)"),
    ({"family": sm.families.Binomial()}, r"'family'.*glmer"),
    ({"weight": "w"}, r"'weight'.*weights="),
    ({"nAGQ": 5}, r"'nAGQ'"),
    ({"offst": "x"}, r"'offst'.*offset="),
])
def test_lmer_rejects_unknown_arguments(d, kw, match):
    with pytest.raises(TypeError, match=match):
        mf.lmer("y ~ x + (1 | g)", d, **kw)


@pytest.mark.parametrize("kw, exc, match", [
    ({"REML": False}, TypeError, r"'REML'.*reml=False"),
    ({"nagq": 5}, TypeError, r"'nagq'"),
    ({"maxiters": 10}, TypeError, r"did you mean maxiter="),
    ({"method": "ML"}, ValueError, r"reml=False"),
    ({"method": "REML"}, ValueError, r"reml=True"),
])
def test_fit_rejects_unknown_arguments(d, kw, exc, match):
    m = mf.lmer("y ~ x + (1 | g)", d)
    with pytest.raises(exc, match=match):
        m.fit(**kw)


@pytest.fixture(scope="module")
def res(d):
    return _fit("y ~ x + (1 | g)", d)


@pytest.mark.parametrize("kw, exc, match", [
    ({"newdata": "ND"}, TypeError, r"'newdata'.*data="),
    ({"re_form": False}, TypeError, r"'re_form'.*re=False"),
    ({"type": "response"}, TypeError, r"'type'.*which="),
    ({"which": "link"}, ValueError, r"which='linear'"),
    ({"which": "response"}, ValueError, r"which='mean'"),
    ({"re": "no"}, ValueError, r"re must be True"),
    ({"re": None}, ValueError, r"re must be True"),
    ({"exog": "ND", "data": "ND"}, TypeError, r"not both"),
])
def test_predict_rejects_what_it_does_not_read(d, res, kw, exc, match):
    nd = d.head(5)
    kw = {k: (nd if v == "ND" else v) for k, v in kw.items()}
    with pytest.raises(exc, match=match):
        res.predict(**kw)


def test_predict_which_linear_equals_mean_for_an_lmm(d, res):
    nd = d.head(6)
    np.testing.assert_array_equal(res.predict(nd, which="linear"), res.predict(nd))


# ----------------------------------------------------------------- prediction: levels by value
def test_predict_on_fitted_rows_equals_fitted_values(d, res):
    np.testing.assert_allclose(res.predict(d), res.fittedvalues, rtol=1e-12)


def test_group_stored_as_float_in_new_data_is_the_same_group(d, res):
    nd = d.head(20).copy()
    nd["g"] = nd["g"].astype(float)
    np.testing.assert_allclose(res.predict(nd), res.predict(d.head(20)), rtol=1e-14)
    nd["g"] = pd.Categorical(d["g"].head(20))
    np.testing.assert_allclose(res.predict(nd), res.predict(d.head(20)), rtol=1e-14)


@pytest.mark.parametrize("new", [None, np.nan, 999])
def test_missing_or_unseen_group_gets_the_population_value(d, res, new):
    """A missing group is an unseen level, not the last level (a -1 code indexing the end)."""
    nd = d.head(6).copy()
    nd["g"] = nd["g"].astype(object)
    nd.loc[nd.index[0], "g"] = new
    nd.loc[nd.index[1:], "g"] = [0, 3, 5, 11, 11]        # the highest fitted level is present
    p, pop = res.predict(nd), res.predict(nd, re=False)
    full = res.predict(nd.assign(g=[11, 0, 3, 5, 11, 11]))
    assert p.iloc[0] == pytest.approx(pop.iloc[0], rel=1e-14)
    assert abs(full.iloc[0] - pop.iloc[0]) > 1e-3           # level 11's effect is not zero
    np.testing.assert_allclose(p.iloc[1:], full.iloc[1:], rtol=1e-14)


def test_strings_for_a_numeric_group_raise(d, res):
    nd = d.head(3).copy()
    nd["g"] = nd["g"].astype(str)
    with pytest.raises(ValueError, match=r"grouping column 'g' held number values .* string"):
        res.predict(nd)


def test_mixed_int_and_str_group_labels_raise(d):
    dm = d.copy()
    dm["g"] = dm["g"].astype(object)
    dm.loc[0, "g"] = str(dm.loc[0, "g"])
    with pytest.raises(ValueError, match=r"grouping column 'g' mixes number and string"):
        mf.lmer("y ~ x + (1 | g)", dm)


def test_one_and_one_point_zero_are_one_level(d):
    dm = d.copy()
    dm["g"] = dm["g"].astype(object)
    dm.loc[dm.index[::2], "g"] = dm.loc[dm.index[::2], "g"].astype(float)
    r1, r2 = _fit("y ~ x + (1 | g)", dm), _fit("y ~ x + (1 | g)", d)
    _same_fit(r1, r2)
    assert list(r1.ranef()["g"].index) == [str(i) for i in range(12)]


def test_interaction_labels_with_colons(d):
    da = d.copy()
    da["a"] = np.where(d.g < 6, "u:v", "u")
    da["b"] = np.where(d.g % 2 == 0, "w", "z")
    r = _fit("y ~ x + (1 | a:b)", da)
    assert sorted(r.ranef()["a:b"].index) == ["u:v:w", "u:v:z", "u:w", "u:z"]
    np.testing.assert_allclose(r.predict(da), r.fittedvalues, rtol=1e-12)
    # labels that would collide ("u:v" + "w" and "u" + "v:w") are refused, not merged
    da["b"] = np.where(d.g < 6, "w", "v:w")
    with pytest.raises(ValueError, match=r"two levels labelled 'u:v:w'"):
        mf.lmer("y ~ x + (1 | a:b)", da)


def test_nan_predictor_gives_nan_for_that_row_only(d, res):
    nd = d.head(5).copy()
    nd.loc[nd.index[1], "x"] = np.nan
    p = res.predict(nd)
    assert np.isnan(p.iloc[1])
    np.testing.assert_allclose(p.drop(p.index[1]), res.predict(d.head(5)).drop(p.index[1]), rtol=1e-14)
    assert list(p.index) == list(nd.index)


# ----------------------------------------------------------------- offsets in prediction
def test_offset_column_is_used_for_new_data(d):
    r = _fit("y ~ x + (1 | g)", d, offset="w")
    nd = d.head(5)
    manual = r.predict(nd, re=False, offset=np.zeros(5)) + nd["w"].to_numpy()
    np.testing.assert_allclose(r.predict(nd, re=False), manual, rtol=1e-13)
    np.testing.assert_allclose(r.predict(d), r.fittedvalues, rtol=1e-12)


def test_array_offset_needs_offset_for_new_data(d):
    off = d["w"].to_numpy()
    r = _fit("y ~ x + (1 | g)", d, offset=off)
    with pytest.raises(ValueError, match=r"pass offset="):
        r.predict(d.head(3))
    np.testing.assert_allclose(r.predict(d, offset=off), r.fittedvalues, rtol=1e-12)


# ----------------------------------------------------------------- the model frame
def test_unused_category_in_a_random_slope_is_dropped(d):
    """lme4's model frame drops unused levels: no variance for a level with no data."""
    dc = d.copy()
    dc["f"] = pd.Categorical(d["f"].where(d["f"] != "c", "b"), categories=["a", "b", "c"])
    clean = dc.assign(f=dc["f"].cat.remove_unused_categories())
    r1, r2 = _fit("y ~ x + (0 + f | g)", dc), _fit("y ~ x + (0 + f | g)", clean)
    _same_fit(r1, r2)
    assert len(r1.theta) == 3 and list(r1.varcorr()["var1"].iloc[:2]) == ["f[a]", "f[b]"]


def test_unused_reference_level_does_not_relabel_contrasts(d):
    dc = d.copy()
    dc["f"] = pd.Categorical(d["f"].where(d["f"] != "a", "b"), categories=["a", "b", "c"])
    r = _fit("y ~ f + (1 | g)", dc)
    assert list(r.fe_params.index) == ["Intercept", "f[T.c]"]     # reference level b, as lme4
    r2 = _fit("y ~ f + (1 | g)", dc.assign(f=dc["f"].astype(str)))
    _same_fit(r, r2)


def test_level_seen_only_in_dropped_rows_is_not_a_column(d):
    dn = d.copy()
    dn["f"] = dn["f"].astype(object)
    dn.loc[0, "f"] = "zz"
    dn.loc[0, "x"] = np.nan
    r = _fit("y ~ x + f + (1 | g)", dn)
    assert "f[T.zz]" not in r.fe_params.index
    _same_fit(r, _fit("y ~ x + f + (1 | g)", d.iloc[1:]))
    assert r.nrows_dropped == 1 and "1 row with missing values was dropped" in str(r.summary())


def test_zero_weights_drop_rows(d):
    """Zero-weight rows are not observations (R's lm/glm; lme4 gives logLik -Inf)."""
    w = d["w"].to_numpy().copy()
    w[:30] = 0.0
    r = _fit("y ~ x + (1 | g)", d, weights=w)
    _same_fit(r, _fit("y ~ x + (1 | g)", d.iloc[30:], weights=w[30:]))
    assert r.nobs == len(d) - 30 and r.nrows_dropped == 30
    assert "30 rows with zero weights were dropped" in str(r.summary())


@pytest.mark.parametrize("weights, match", [
    (np.zeros(240), r"all weights are zero"),
    (-np.ones(240), r"weights must be non-negative"),
    ("nope", r"unknown column 'nope' given as weights"),
    (np.ones(10), r"weights has 10 values for 240 rows"),
])
def test_bad_weights(d, weights, match):
    with pytest.raises(ValueError, match=match):
        mf.lmer("y ~ x + (1 | g)", d, weights=weights)


@pytest.mark.parametrize("setup, formula, match", [
    (lambda d: d.assign(y=np.where(d.index == 3, np.inf, d.y)), "y ~ x + (1 | g)",
     r"response 'y' has 1 infinite value"),
    (lambda d: d.assign(x=np.where(d.index == 3, -np.inf, d.x)), "y ~ x + (1 | g)",
     r"infinite values in column\(s\) \['x'\]"),
    (lambda d: d.assign(z=np.where(d.index == 3, np.inf, 1.0)), "y ~ x + (0 + z | g)",
     r"random-effects term \(0 \+ z \| g\) has infinite values"),
    (lambda d: d.assign(y=2.5), "y ~ x + (1 | g)", r"response 'y' is constant"),
    (lambda d: d.assign(y=1 + 2 * d.x), "y ~ x + (1 | g)", r"fit the response 'y' exactly"),
    (lambda d: d.head(20), "y ~ C(np.arange(20)) + (1 | g)", r"20 observations for 20 fixed effects"),
    (lambda d: d, "y ~ xx + (1 | g)", r"unknown column 'xx'.*did you mean 'x'"),
    (lambda d: d, "y ~ x + (1 | gg)", r"unknown column 'gg' in random-effects term.*did you mean 'g'"),
    (lambda d: d, "y ~ x", r"no random-effects term"),
    (lambda d: d.assign(g=1), "y ~ x + (1 | g)", r"grouping factor 'g'.*1 level"),
    (lambda d: d.rename(columns={"x": "x.1"}), "y ~ x.2 + (1 | g)", r"'x.2' is not a column.*'x.1'"),
    (lambda d: d.assign(f="a"), "y ~ x + f + (1 | g)", r"term 'f' .* single level 'a'"),
    (lambda d: d.assign(f=pd.Categorical(np.where(d.x > 0, "a", None))), "y ~ f + (1 | g)",
     r"term 'f' .* single level 'a' in the rows used"),
    (lambda d: d.assign(y=d.y.astype(str)), "y ~ x + (1 | g)", r"'y' must be a single numeric .*dtype"),
    (lambda d: d.assign(t=pd.date_range("2020-01-01", periods=len(d))), "y ~ t + (1 | g)",
     r"column 't' holds dates"),
    (lambda d: pd.concat([d, d[["x"]]], axis=1), "y ~ x + (1 | g)", r"duplicated column names \['x'\]"),
    (lambda d: d, "y ~ . + (1 | g)", r"'\.' \(all other columns\) is not supported"),
    (lambda d: d, "y ~ x + (1 | C(g))", r"grouping variable 'C\(g\)'.*must be a column name"),
])
def test_bad_data_raise_clear_errors(d, setup, formula, match):
    with pytest.raises(ValueError, match=match):
        mf.lmer(formula, setup(d))


@pytest.mark.parametrize("kw, match", [
    ({"groups": "g"}, r"'groups'.*\(1 \| g\)"),
    ({"re_formula": "~x"}, r"'re_formula'"),
])
def test_statsmodels_mixedlm_arguments_point_to_the_formula(d, kw, match):
    with pytest.raises(TypeError, match=match):
        mf.lmer("y ~ x", d, **kw)


@pytest.mark.parametrize("kw, match", [
    ({"reml": "no"}, r"reml must be True \(REML\) or False \(ML\)"),
    ({"start_params": [1.0, 2.0]}, r"start_params needs 1 values \(theta: \['g.Intercept'\]\)"),
])
def test_fit_argument_values(d, kw, match):
    with pytest.raises(ValueError, match=match):
        mf.lmer("y ~ x + (1 | g)", d).fit(**kw)


def test_full_length_weights_are_subset_with_the_data(d):
    """R's subset applies to weights too; a Series is aligned by index."""
    keep = (d.x > 0).to_numpy()
    r = _fit("y ~ x + (1 | g)", d, subset=keep, weights=d["w"].to_numpy())
    _same_fit(r, _fit("y ~ x + (1 | g)", d[keep], weights=d["w"].to_numpy()[keep]))
    shuffled = d["w"].sample(frac=1.0, random_state=3)
    _same_fit(_fit("y ~ x + (1 | g)", d, weights=shuffled), _fit("y ~ x + (1 | g)", d, weights="w"))
    with pytest.raises(ValueError, match=r"weights is a Series whose index lacks 1"):
        mf.lmer("y ~ x + (1 | g)", d, weights=d["w"].iloc[1:])


def test_missing_raise_and_bad_missing(d):
    dn = d.copy()
    dn.loc[3, "x"] = np.nan
    with pytest.raises(ValueError, match=r"1 rows have missing values \(missing='raise'\)"):
        mf.lmer("y ~ x + (1 | g)", dn, missing="raise")
    with pytest.raises(ValueError, match=r"missing must be 'drop' or 'raise'"):
        mf.lmer("y ~ x + (1 | g)", d, missing="omit")


# ----------------------------------------------------------------- data containers and dtypes
@pytest.mark.parametrize("dtype", ["Float64", "Int64-group", "string-group", "boolean"])
def test_pd_NA_in_nullable_columns_is_missing(d, dtype):
    dn = d.copy()
    miss = np.zeros(len(d), dtype=bool)
    miss[[2, 7, 50]] = True
    if dtype == "Float64":
        dn["x"] = pd.array(np.where(miss, None, d.x), dtype="Float64")
        formula = "y ~ x + (1 | g)"
    elif dtype == "Int64-group":
        dn["g"] = pd.array(np.where(miss, None, d.g), dtype="Int64")
        formula = "y ~ x + (1 | g)"
    elif dtype == "string-group":
        dn["g"] = pd.array(np.where(miss, None, d.g.astype(str)), dtype="string")
        formula = "y ~ x + (1 | g)"
    else:
        dn["b"] = pd.array(np.where(miss, None, d.x > 0), dtype="boolean")
        formula = "y ~ x + b + (1 | g)"
    r = _fit(formula, dn)
    clean = d.assign(b=d.x > 0)[~miss]
    if dtype == "string-group":
        clean = clean.assign(g=clean.g.astype(str))
    _same_fit(r, _fit(formula, clean))
    assert r.nrows_dropped == 3


def test_polars_frame_is_accepted(d):
    pl = pytest.importorskip("polars")
    r = _fit("y ~ x + (1 | g)", pl.DataFrame({c: d[c].tolist() for c in d.columns}))   # no pyarrow needed
    _same_fit(r, _fit("y ~ x + (1 | g)", d))


def test_table_whose_to_pandas_needs_pyarrow(d):
    """polars' to_pandas needs pyarrow: without it the columns are read as lists."""
    class Table:
        def to_pandas(self):
            raise ModuleNotFoundError("No module named 'pyarrow'")

        def to_dict(self, as_series=True):
            assert not as_series
            return {c: d[c].tolist() for c in d.columns}
    _same_fit(_fit("y ~ x + (1 | g)", Table()), _fit("y ~ x + (1 | g)", d))


def test_numpy_array_is_not_a_data_frame(d):
    with pytest.raises(TypeError, match=r"table with named columns"):
        mf.lmer("y ~ x + (1 | g)", d.to_numpy())


def test_subset_expression(d):
    r = _fit("y ~ x + (1 | g)", d, subset="x > -1")
    _same_fit(r, _fit("y ~ x + (1 | g)", d, subset=(d.x > -1).to_numpy()))
    assert r.nobs == (d.x > -1).sum()
    with pytest.raises(ValueError, match=r"could not evaluate subset='xx > 0'"):
        mf.lmer("y ~ x + (1 | g)", d, subset="xx > 0")
    with pytest.raises(ValueError, match=r"must give one True/False per row"):
        mf.lmer("y ~ x + (1 | g)", d, subset="x + 1")


@pytest.mark.parametrize("name, formula", [
    ("x.1", "y ~ x.1 + (1 | g)"),                  # R's dotted names
    ("class", "y ~ class + (1 | g)"),              # a Python keyword
    ("my x", "y ~ `my x` + (1 | g)"),              # R's backticks
    ("x.1", "y ~ x + (0 + x.1 | g)"),              # inside a bar term
])
def test_r_style_names(d, name, formula):
    dn = d.rename(columns={"x": name}) if name != "x.1" or "0 + x.1" not in formula \
        else d.assign(**{"x.1": d.x})
    r = _fit(formula, dn)
    ref = _fit(formula.replace(f"`{name}`", "x").replace(name, "x2" if "0 +" in formula else "x"),
               d.assign(x2=d.x))
    np.testing.assert_allclose(r.fe_params.to_numpy(), ref.fe_params.to_numpy(), rtol=1e-12)
    assert name in list(r.fe_params.index) + [c for t in r.model.re_design.terms for c in t.colnames]
    np.testing.assert_allclose(r.predict(dn.head(4)), r.fittedvalues.head(4), rtol=1e-12)


def test_dotted_grouping_factor(d):
    r = _fit("y ~ x + (1 | grp.id)", d.rename(columns={"g": "grp.id"}))
    _same_fit(r, _fit("y ~ x + (1 | g)", d))
    assert "grp.id" in r.ranef()


def test_names_in_any_script(d):
    # Python names of any script (German, Greek): an AttributeError in the formula scanner
    dn = d.rename(columns={"x": "größe", "g": "gruppe_ä", "f": "λ"})
    r = _fit("y ~ größe + λ + (größe | gruppe_ä)", dn)
    ref = _fit("y ~ x + f + (x | g)", d)
    assert r.llf == ref.llf
    np.testing.assert_array_equal(r.fe_params.to_numpy(), ref.fe_params.to_numpy())
    names = {"x": "größe", "f[T.b]": "λ[T.b]", "f[T.c]": "λ[T.c]"}
    assert list(r.fe_params.index) == [names.get(k, k) for k in ref.fe_params.index]
    assert "gruppe_ä" in r.ranef()
    np.testing.assert_allclose(r.predict(dn.head(4)), r.fittedvalues.head(4), rtol=1e-12)
    def hälfte(v):                  # a caller's function, found by the formula
        return v / 2

    r2 = mf.lmer("y ~ hälfte(größe) + (1 | gruppe_ä)", dn).fit()    # (this frame's names)
    ref2 = _fit("y ~ h + (1 | g)", d.assign(h=hälfte(d["x"])))
    np.testing.assert_array_equal(r2.fe_params.to_numpy(), ref2.fe_params.to_numpy())


# ----------------------------------------------------------------- pickling and copies
def test_results_pickle_and_deepcopy(d):
    r = _fit("y ~ center(x) + (1 | g)", d)
    nd = d.sample(7, random_state=1)
    for r2 in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        np.testing.assert_array_equal(r2.fe_params, r.fe_params)
        assert r2.llf == r.llf
        # center() keeps the fitted rows' mean: the rebuilt formula state is the same
        np.testing.assert_allclose(r2.predict(nd), r.predict(nd), rtol=1e-14)
        assert str(r2.summary()) == str(r.summary())


def test_remove_data_keeps_prediction_and_summary(d):
    r = _fit("y ~ x + (1 | g)", d)
    nd = d.head(4)
    before, text = r.predict(nd), str(r.summary())
    r.remove_data()
    assert r.model.exog is None
    np.testing.assert_array_equal(r.predict(nd), before)
    assert str(r.summary()) == text
    with pytest.raises(ValueError, match=r"remove_data\(\) removed the fitted rows"):
        r.predict()
    r2 = pickle.loads(pickle.dumps(r))
    with pytest.raises(ValueError, match=r"pickled after remove_data"):
        r2.predict(nd)


def test_disp_prints_what_the_optimizer_did(d, capsys):
    res = mf.lmer("y ~ x + (1 | g)", d).fit(disp=True)
    assert f"REML criterion {res.criterion:.6f} after" in capsys.readouterr().out
