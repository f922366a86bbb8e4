"""gee_select on everyday input mistakes: each case gives the right answer or a clear error.

The right answers are checked against a direct computation: statsmodels' GEE with the same
working correlation on the cleaned, sorted rows and :func:`mlmext.gee.qic`, or the moment
estimator written out.  Errors are checked by type and message.  Small synthetic data only.
"""
import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.genmod.generalized_estimating_equations import GEE

from mlmext.formula.api import gee_select
from mlmext.gee import PairwiseAR1, PairwiseExchangeable, qic

F = sm.families
COLS = ["QIC", "QICu", "CIC"]


def make(n=12, m=4, seed=0):
    """n clusters of m visits (t = 0..m-1) with a random intercept: y Gaussian, b binary, c counts."""
    r = np.random.default_rng(seed)
    g = np.repeat(np.arange(n), m)
    t = np.tile(np.arange(m), n)
    x = r.normal(size=n * m)
    y = 1 + 0.5 * x + 0.3 * t + np.repeat(r.normal(size=n), m) + r.normal(size=n * m)
    return pd.DataFrame({"y": y, "x": x, "g": g, "t": t, "b": (y > 1.5).astype(int),
                         "c": r.poisson(np.exp(0.3 * x)), "w": r.uniform(1, 2, n * m)})


def select(d, **kw):
    args = {"formula": "y ~ x", "groups": "g", "data": d, "family": F.Gaussian(), "time": "t"}
    args.update(kw)
    return gee_select(**args)


def direct(d, cov_struct, formula="y ~ x", family=None, time="t", **model_kw):
    """QIC of statsmodels' GEE fitted directly to the clean rows sorted by cluster and time."""
    family = family or F.Gaussian()
    d = d.sort_values(["g"] + ([time] if time else []), kind="mergesort").reset_index(drop=True)
    tv = None if time is None else d[time].to_numpy()

    def fit(cs):
        return GEE.from_formula(formula, groups=d["g"].to_numpy(), data=d, time=tv, family=family,
                                cov_struct=cs, **model_kw).fit(maxiter=25, ddof_scale=0)
    indep = fit(sm.cov_struct.Independence())
    res = fit(cov_struct)
    return qic(res, independence=indep), res


def same_table(a, b):
    assert list(a.table.index) == list(b.table.index)
    # rtol: clusters in another order change the last digits of AR(1)'s minimization
    np.testing.assert_allclose(a.table[COLS].to_numpy(float), b.table[COLS].to_numpy(float), rtol=1e-7)


# ---------------------------------------------------------------------------
# time
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["datetime", "datetime_tz", "timedelta", "date_objects"])
def test_date_and_duration_time_raise_with_the_fix(kind):
    d = make()
    days = pd.to_timedelta(7 * d["t"], unit="D")
    d["when"] = {"datetime": pd.Timestamp("2020-01-06") + days,
                 "datetime_tz": pd.Timestamp("2020-01-06", tz="UTC") + days,
                 "timedelta": days,
                 "date_objects": (pd.Timestamp("2020-01-06") + days).dt.date}[kind]
    with pytest.raises(ValueError, match=r"time 'when' holds .* Give numeric time in the unit a lag "
                                         r"should use, e\.g\. .*dt\.days"):
        select(d, time="when")


def test_time_in_days_is_a_per_day_ar1():
    # weekly visits given in days: rho per day ** 7 is the weekly rho, and the fits agree
    d = make()
    date = pd.Timestamp("2020-01-06") + pd.to_timedelta(7 * d["t"], unit="D")
    weeks = select(d, cov_structs=["ar1"])
    days = select(d.assign(day=(date - date.min()).dt.days), cov_structs=["ar1"], time="day")
    rho_w = float(weeks.results["ar1"].cov_struct.dep_params)
    rho_d = float(days.results["ar1"].cov_struct.dep_params)
    assert 0 < rho_w < 1
    assert rho_d ** 7 == pytest.approx(rho_w, rel=1e-6)
    np.testing.assert_allclose(days.table[COLS].to_numpy(float), weeks.table[COLS].to_numpy(float), rtol=1e-6)


def test_time_strings_that_are_not_numbers_raise():
    d = make().assign(t=lambda q: (pd.Timestamp("2020-01-01") + pd.to_timedelta(q.t, unit="D")).astype(str))
    with pytest.raises(ValueError, match=r"time 't' must be numeric; it has values such as '2020-01-0\d'"):
        select(d)


def test_rows_in_any_order_give_the_sorted_fit():
    d = make()
    sel = select(d.sample(frac=1.0, random_state=5), cov_structs=["exchangeable", "ar1"])
    for name, cs in [("exchangeable", PairwiseExchangeable()), ("ar1", PairwiseAR1())]:
        q, _ = direct(d, cs)
        assert sel.table.loc[name, "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


def test_time_as_array_is_used_by_position():
    d = make()
    same_table(select(d, time=d["t"].to_numpy() * 1.0), select(d))


def test_repeated_time_in_a_cluster_raises_for_ar1_and_unstructured():
    d = make()
    d.loc[5, "t"] = d.loc[4, "t"]                 # cluster 1 has time 0 twice
    with pytest.raises(ValueError, match=r"time 't' repeats within clusters of 'g' \(2 rows; cluster 1 "
                                         r"has time 0 more than once\), and ar1, unstructured pair"):
        select(d)
    with pytest.raises(ValueError, match=r"repeats within clusters .* and pairwisear1 pair"):
        select(d, cov_structs=[PairwiseAR1()])


def test_repeated_time_is_fine_for_exchangeable():
    # exchangeable does not use time: the same fit as pairing by position
    d = make()
    d.loc[5, "t"] = d.loc[4, "t"]
    sel = select(d, cov_structs=["exchangeable"])
    q, _ = direct(d, PairwiseExchangeable(), time=None)
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)
    assert sel.table.loc["exchangeable", "flag"] == ""


# ---------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------
def test_mixed_int_and_str_group_labels_raise():
    d = make()
    d["g"] = d["g"].astype(object)
    d.loc[d["g"] == 3, "g"] = "3"
    with pytest.raises(ValueError, match=r"'g' mixes number and string values .*\.astype\(str\)"):
        select(d)
    # the suggested fix: the same clusters, the same fit
    same_table(select(d.assign(g=d["g"].astype(str))), select(make()))


def test_string_and_categorical_labels_give_the_integer_label_fit():
    d, ref = make(), select(make())
    same_table(select(d.assign(g="s" + d["g"].astype(str))), ref)
    same_table(select(d.assign(g=pd.Categorical(d["g"]))), ref)


def test_nan_group_rows_are_dropped_and_counted():
    d = make()
    d["g"] = d["g"].astype(float)
    d.loc[[0, 9], "g"] = np.nan
    sel = select(d, cov_structs=["exchangeable"])
    assert (sel.n_dropped, sel.nobs, sel.n_groups) == (2, 46, 12)
    q, _ = direct(d.dropna(), PairwiseExchangeable())
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


def test_groups_column_not_in_data():
    with pytest.raises(ValueError, match=r"unknown column 'G' for groups; the data has columns \['y', 'x'"):
        select(make(), groups="G")


def test_groups_missing():
    with pytest.raises(ValueError, match="groups is required"):
        select(make(), groups=None)


def test_groups_given_as_several_columns():
    with pytest.raises(ValueError, match=r"groups takes one column, got \['g', 't'\]; .* combine them"):
        select(make(), groups=["g", "t"])


def test_groups_array_of_wrong_length():
    with pytest.raises(ValueError, match=r"groups must be a column name or an array with one value per "
                                         r"row of data \(48 rows\)"):
        select(make(), groups=np.arange(5))


def test_groups_series_is_matched_by_index_not_position():
    d = make()
    shuffled = d.sample(frac=1.0, random_state=2)
    same_table(select(shuffled, groups=d["g"]), select(d))      # d["g"] is in another row order
    with pytest.raises(ValueError, match="groups is a pandas Series whose index does not match"):
        select(shuffled, groups=d["g"].reset_index(drop=True).set_axis(np.arange(100, 148)))


def test_a_single_cluster_raises():
    d = make().query("g == 0")
    with pytest.raises(ValueError, match="groups 'g' has one cluster on the rows used"):
        select(d)


def test_every_cluster_of_size_one_raises():
    d = make().assign(g=lambda q: np.arange(len(q)))
    with pytest.raises(ValueError, match="every cluster of groups 'g' has one observation"):
        select(d)


def test_a_cluster_of_size_one_adds_no_pairs():
    d = make()
    d = pd.concat([d, pd.DataFrame({"y": [0.3], "x": [1.2], "g": [99], "t": [2], "b": [0], "c": [1],
                                    "w": [1.0]})], ignore_index=True)
    sel = select(d)
    assert (sel.n_groups, sel.nobs) == (13, 49)
    assert (sel.table["flag"] == "").all()
    # exchangeable: the moment estimate written out, over the pairs of the 12 real clusters
    res = sel.results["exchangeable"]
    r = res.model.endog - np.asarray(res.fittedvalues)
    phi = np.mean(r ** 2)
    pairs = [r[j] * r[k] / phi for idx in res.model.group_indices.values()
             for j, k in itertools.combinations(idx, 2)]
    assert len(pairs) == 12 * 6
    assert float(res.cov_struct.dep_params) == pytest.approx(np.mean(pairs), rel=1e-8)
    q, _ = direct(d, PairwiseAR1())
    assert sel.table.loc["ar1", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


# ---------------------------------------------------------------------------
# response, predictors, weights, offset, exposure
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("column,kw,match", [
    ("y", {}, r"response 'y' has 1 infinite or undefined values on the rows used \(first at row 7\); "
              r"infinity is not a missing value"),
    ("x", {}, r"predictor column 'x' of the formula has 1 infinite"),
    ("w", {"weights": "w"}, r"weights 'w' has 1 infinite"),
    ("t", {}, r"time 't' has 1 infinite"),
    ("o", {"offset": "o"}, r"offset 'o' has 1 infinite"),
    ("e", {"exposure": "e"}, r"exposure 'e' has 1 infinite"),
])
def test_inf_is_not_missing(column, kw, match):
    d = make().assign(o=0.0, e=1.0)
    d[column] = d[column].astype(float)
    d.loc[7, column] = -np.inf if column == "x" else np.inf
    family = F.Poisson() if column in "oe" else F.Gaussian()
    formula = "c ~ x" if column in "oe" else "y ~ x"
    with pytest.raises(ValueError, match=match):
        select(d, formula=formula, family=family, **kw)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_inf_created_by_the_formula_raises():
    d = make().assign(x=lambda q: q.x.abs())
    d.loc[3, "x"] = 0.0
    with pytest.raises(ValueError, match=r"predictor column 'np.log\(x\)' of the formula has 1 infinite .* "
                                         r"row 3"):
        select(d, formula="y ~ np.log(x)")


def test_inf_in_a_dropped_row_is_not_reported():
    d = make()
    d.loc[7, "y"] = np.inf
    d.loc[7, "x"] = np.nan                          # the row goes anyway
    sel = select(d, cov_structs=["exchangeable"])
    assert sel.n_dropped == 1
    q, _ = direct(d.drop(index=7), PairwiseExchangeable())
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


@pytest.mark.parametrize("formula,family,value", [
    ("y ~ x", F.Gaussian(), 2.5), ("b ~ x", F.Binomial(), 0), ("c ~ x", F.Poisson(), 0),
])
def test_constant_response_raises(formula, family, value):
    d = make()
    d[formula[0]] = value
    with pytest.raises(ValueError, match=rf"response '{formula[0]}' is constant \({value:g}\) on the 48 rows"):
        select(d, formula=formula, family=family)


def test_exact_fit_and_perfect_separation_raise():
    d = make()
    with pytest.raises(ValueError, match=r"predicts response 'y' exactly .* QIC is not defined"):
        select(d.assign(y=1 + 2 * d.x))
    with pytest.raises(ValueError, match=r"predicts response 'b' exactly on the rows used \(perfect separation"):
        select(d.assign(b=(d.x > 0).astype(int)), formula="b ~ x", family=F.Binomial())


@pytest.mark.parametrize("formula,match", [
    ("y ~ x + x2", r"rank deficient on the 48 rows used: 'x2' is a linear combination of the columns "
                   r"before it"),
    ("y ~ x + one", r"'one' is a linear combination"),
    ("y ~ C(g) + u", r"'u' is a linear combination"),                 # a cluster-level predictor
])
def test_rank_deficient_design_raises_naming_columns(formula, match):
    d = make().assign(x2=lambda q: 2 * q.x - 1, one=1.0)
    d["u"] = d["g"] * 0.5
    with pytest.raises(ValueError, match=match):
        select(d, formula=formula)


def test_binomial_response_outside_0_1():
    with pytest.raises(ValueError, match=r"response 'y' is not binary \(0/1\) for the Binomial family"):
        select(make(), family=F.Binomial())


def test_boolean_response_says_how_to_code_it():
    d = make().assign(bb=lambda q: q.b.astype(bool))
    with pytest.raises(ValueError, match=r"must be one numeric column .* code it as 0/1"):
        select(d, formula="bb ~ x", family=F.Binomial())


@pytest.mark.parametrize("w,match", [(-1.0, r"weights 'w' must be non-negative and not all zero \(smallest -1"),
                                     (0.0, r"not all zero \(smallest 0, largest 0\)")])
def test_bad_weights(w, match):
    d = make()
    d["w"] = w
    with pytest.raises(ValueError, match=match):
        select(d, weights="w")


def test_weights_are_used():
    d = make()
    sel = select(d, cov_structs=["exchangeable"], weights="w")
    q, _ = direct(d, PairwiseExchangeable(), weights=d.sort_values(["g", "t"])["w"].to_numpy())
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)
    assert sel.table.loc["exchangeable", "QIC"] != pytest.approx(select(d).table.loc["exchangeable", "QIC"])


@pytest.mark.parametrize("e", [0.0, -1.0])
def test_non_positive_exposure(e):
    d = make().assign(e=1.0)
    d.loc[2, "e"] = e
    with pytest.raises(ValueError, match=r"exposure 'e' must be positive: it enters the model as log"):
        select(d, formula="c ~ x", family=F.Poisson(), exposure="e")


def test_non_numeric_weights():
    d = make().assign(v=lambda q: q.w.astype(object))
    d.loc[3, "v"] = "1.5 kg"
    with pytest.raises(ValueError, match=r"weights 'v' must be numeric; it has values such as '1.5 kg'"):
        select(d, weights="v")


# ---------------------------------------------------------------------------
# formula
# ---------------------------------------------------------------------------
def test_formula_with_unknown_column():
    with pytest.raises(ValueError, match=r"unknown column 'z' in formula 'y ~ z'"):
        select(make(), formula="y ~ z")


@pytest.mark.parametrize("formula", [3, "x"])
def test_formula_must_be_a_string_with_a_response(formula):
    with pytest.raises(ValueError, match="formula must be a string with a response, such as 'y ~ x'"):
        select(make(), formula=formula)


def test_offset_inside_the_formula_says_where_it_goes():
    with pytest.raises(ValueError, match=r"takes the offset as an argument, not in the formula: offset="):
        select(make().assign(e=2.0), formula="c ~ x + offset(np.log(e))", family=F.Poisson())


def test_offset_argument_is_used():
    d = make().assign(o=lambda q: 0.1 * q.t)
    sel = select(d, formula="c ~ x", family=F.Poisson(), offset="o", cov_structs=["exchangeable"])
    q, _ = direct(d, PairwiseExchangeable(), formula="c ~ x", family=F.Poisson(),
                  offset=d.sort_values(["g", "t"])["o"].to_numpy())
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


def test_cbind_response_says_how_to_give_trials():
    d = make().assign(n=5, k=lambda q: np.minimum(q.c, 5))
    with pytest.raises(ValueError, match=r"one numeric column .* proportion with the trials as weights, "
                                         r"e\.g\. 'I\(k / n\) ~ x' with weights='n'"):
        select(d, formula="cbind(k, n - k) ~ x", family=F.Binomial())


def test_array_from_outside_the_data_raises():
    d = make().sample(frac=1.0, random_state=3)
    z = d["x"].to_numpy() ** 2                     # in d's (shuffled) order
    with pytest.raises(ValueError, match=r"uses z, not a column of data .* data\.assign\(z=z\)"):
        gee_select("y ~ x + z", "g", d, F.Gaussian(), time="t")     # z is visible from this frame
    # the fix gives the fit on the right rows
    ok = select(d.assign(z=z), formula="y ~ x + z", cov_structs=["exchangeable"])
    q, _ = direct(d.assign(z=z), PairwiseExchangeable(), formula="y ~ x + z")
    assert ok.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


def test_keyword_names_and_attributes_in_the_formula_are_not_outside_arrays():
    d = make()
    decimals = np.arange(len(d))     # noqa: F841  (same name as a keyword argument in the formula)
    x = np.zeros(len(d))             # noqa: F841  (a data column of the same name wins)
    sel = gee_select("y ~ np.round(x, decimals=1)", "g", d, F.Gaussian(), ["exchangeable"], time="t")
    q, _ = direct(d.assign(xr=d.x.round(1)), PairwiseExchangeable(), formula="y ~ xr")
    assert sel.table.loc["exchangeable", "QIC"] == pytest.approx(q["QIC"], rel=1e-9)


# ---------------------------------------------------------------------------
# family and cov_structs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,family,formula", [
    ("binomial", F.Binomial(), "b ~ x"), ("Poisson", F.Poisson(), "c ~ x"), ("gaussian", F.Gaussian(), "y ~ x"),
])
def test_family_names(name, family, formula):
    by_name = select(make(), family=name, formula=formula)
    same_table(by_name, select(make(), family=family, formula=formula))
    assert by_name._info["family"].startswith(type(family).__name__)


@pytest.mark.parametrize("family,match", [
    ("quasipoisson", r"unknown family 'quasipoisson'; give one of \['gaussian', 'binomial', 'poisson', 'gamma'\]"),
    (F.Binomial, r"write sm.families.Binomial\(\) with parentheses"),
    (F.Tweedie(), r"Gaussian, Binomial, Poisson or Gamma family instance"),
])
def test_bad_family(family, match):
    with pytest.raises(ValueError, match=match):
        select(make(), family=family)


@pytest.mark.parametrize("cov_structs,match", [
    (["ar2"], r"unknown working correlation 'ar2'; use one of \['independence'"),
    (3, r"cov_structs must be a name, a CovStruct instance, a list of them or a dict"),
    ([sm.cov_struct.Exchangeable], r"write Exchangeable\(\) with parentheses"),
])
def test_bad_cov_structs(cov_structs, match):
    with pytest.raises(ValueError, match=match):
        select(make(), cov_structs=cov_structs)


# ---------------------------------------------------------------------------
# keyword arguments
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"weight": "w"}, r"'weight' \(did you mean weights=\?\)"),
    ({"cov_struct": ["ar1"]}, r"'cov_struct' \(did you mean cov_structs=\?"),
    ({"famliy": F.Gaussian()}, r"'famliy' \(did you mean family=\?\)"),
    ({"exposre": "w"}, r"'exposre' \(did you mean exposure=\?\)"),
    ({"maxiters": 5}, r"'maxiters' \(did you mean maxiter=\?\)"),
    ({"subset": np.ones(48, bool)}, r"'subset' \(select the rows first"),
    ({"update_dep": False}, r"'update_dep'"),
    ({"corstr": "ar1"}, r"'corstr' \(geepack's corstr: use cov_structs="),
    ({"id": "g"}, r"'id' \(geepack's id: use groups=\)"),
    ({"na_action": "drop"}, r"'na_action' \(use missing="),
])
def test_unknown_keyword_raises_type_error(kw, match):
    with pytest.raises(TypeError, match=r"gee_select\(\) got an unexpected keyword argument " + match):
        select(make(), **kw)


def test_fit_keywords_reach_the_fit():
    d = make()
    sel = select(d, cov_structs=["unstructured"], maxiter=2)
    assert sel.results["unstructured"].fit_history["params"].__len__() <= 3
    assert "not converged in 2 iterations" in sel.table.loc["unstructured", "flag"]
    scaled = select(d, scaling_factor=2.0)      # scales the robust covariance: CIC doubles
    np.testing.assert_allclose(scaled.table["CIC"], 2 * select(d).table["CIC"], rtol=1e-9)


def test_missing_raise_and_drop():
    d = make()
    d.loc[3, "y"] = np.nan
    d.loc[10, "t"] = np.nan
    with pytest.raises(ValueError, match=r"2 rows have missing values \(rows missing in formula 1, time 1\)"):
        select(d, missing="raise")
    assert select(d, missing="drop").n_dropped == 2
    with pytest.raises(ValueError, match="missing must be 'drop' or 'raise'"):
        select(d, missing="none")


# ---------------------------------------------------------------------------
# data containers
# ---------------------------------------------------------------------------
def test_nullable_pandas_columns_treat_pd_na_as_missing():
    d = make()
    d["flag"] = d["x"] > 0
    nd = d.copy()
    nd["y"] = nd["y"].astype("Float64")
    nd["g"] = nd["g"].astype("Int64")
    nd["t"] = nd["t"].astype("Int64")
    nd["flag"] = nd["flag"].astype("boolean")
    nd.loc[2, "y"] = pd.NA
    nd.loc[5, "g"] = pd.NA
    nd.loc[11, "t"] = pd.NA
    nd.loc[20, "flag"] = pd.NA
    sel = select(nd, formula="y ~ x + flag")
    assert (sel.n_dropped, sel.nobs) == (4, 44)
    same_table(sel, select(d.drop(index=[2, 5, 11, 20]), formula="y ~ x + flag"))


def test_nullable_string_groups():
    d = make()
    nd = d.assign(g=("s" + d["g"].astype(str)).astype("string"))
    nd.loc[6, "g"] = pd.NA
    sel = select(nd)
    assert sel.n_dropped == 1
    same_table(sel, select(d.drop(index=6)))


def test_dict_of_columns():
    d = make()
    same_table(select({k: d[k].to_numpy() for k in d.columns}), select(d))


def test_a_plain_array_has_no_column_names():
    with pytest.raises(TypeError, match="data must be a table with named columns"):
        select(make().to_numpy())


def test_polars_dataframe():
    pl = pytest.importorskip("polars")
    d = make()
    d["y"] = d["y"].where(d.index != 4)                         # a null in polars
    sel = select(pl.DataFrame({c: d[c].tolist() for c in d.columns}))   # no pyarrow needed
    assert sel.n_dropped == 1
    same_table(sel, select(d))
    same_table(select(d, groups=pl.Series(d["g"].to_numpy())), select(d))
