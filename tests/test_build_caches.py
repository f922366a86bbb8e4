"""What the model build keeps between builds (issue 14) never serves a stale answer.

The build reads column labels, category levels and name Indexes once per (immutable) pandas
Index object (:mod:`mlmext.immutable_cache`), parses a formula once per formula and column set
(``model_frame.parsed_formula``), and makes statsmodels' data object itself
(:mod:`mlmext.model_data`).  Each test changes the data between two builds the way a user
would -- values in place, categories renamed or reordered, a column renamed, a column's
dtype -- and checks the second model against the one a fresh process would build: the same
data in a new DataFrame, caches emptied.  Deterministic: exact equality.
"""
import concurrent.futures
import gc
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.base.data import handle_data
from statsmodels.tools.sm_exceptions import MissingDataError

from mlmext import immutable_cache
from mlmext.formula import api as mf
from mlmext.frame import design_cache
from mlmext.frame.model_frame import parsed_formula
from mlmext.model_data import frame_data

from refcases import read_data

F = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture
def sleep():
    return read_data("sleepstudy.csv")


def _fresh(formula, data):
    """The model built from a copy of ``data`` in a new DataFrame, every cache emptied."""
    immutable_cache.clear()
    design_cache.clear()
    fresh = pd.DataFrame({c: data[c].copy() for c in data.columns})
    return mf.lmer(formula, fresh)


def _same(a, b):
    np.testing.assert_array_equal(a.endog, b.endog)
    np.testing.assert_array_equal(a.exog, b.exog)
    assert a.exog_names == b.exog_names and a.endog_names == b.endog_names
    assert a.data.k_constant == b.data.k_constant and a.data.const_idx == b.data.const_idx
    assert len(a.re_design.terms) == len(b.re_design.terms)
    for ta, tb in zip(a.re_design.terms, b.re_design.terms):
        np.testing.assert_array_equal(ta.X, tb.X)
        np.testing.assert_array_equal(ta.codes, tb.codes)
        assert (ta.name, ta.colnames, ta.levels, ta.keys, ta.kinds) == \
            (tb.name, tb.colnames, tb.levels, tb.keys, tb.kinds)
    pd.testing.assert_frame_equal(a.formula_info["data"], b.formula_info["data"])


def test_values_changed_in_place_between_builds(sleep):
    a = mf.lmer(F, sleep)
    sleep.loc[0, "Reaction"] = 1000.0
    sleep.loc[1, "Days"] = 7
    b = mf.lmer(F, sleep)
    assert b.endog[0] == 1000.0 and b.exog[1, 1] == 7.0 and a.endog[0] != 1000.0
    _same(b, _fresh(F, sleep))


def test_categories_renamed_or_reordered_between_builds(sleep):
    a = mf.lmer(F, sleep)
    cats = list(sleep["Subject"].cat.categories)
    sleep["Subject"] = sleep["Subject"].cat.rename_categories([f"s{c}" for c in cats])
    b = mf.lmer(F, sleep)
    assert b.re_design.terms[0].levels == [f"s{c}" for c in cats]
    _same(b, _fresh(F, sleep))
    sleep["Subject"] = sleep["Subject"].cat.reorder_categories([f"s{c}" for c in cats[::-1]])
    c = mf.lmer(F, sleep)
    assert c.re_design.terms[0].levels == [f"s{x}" for x in cats[::-1]]
    np.testing.assert_array_equal(c.re_design.terms[0].codes,
                                  len(cats) - 1 - a.re_design.terms[0].codes)
    _same(c, _fresh(F, sleep))


def test_column_renamed_between_builds(sleep):
    mf.lmer(F, sleep)
    sleep.columns = ["Reaction", "Days.x", "Subject"]   # a dotted name: quoted for patsy
    with pytest.raises(ValueError, match="Days"):
        mf.lmer(F, sleep)
    f = "Reaction ~ Days.x + (Days.x | Subject)"
    b = mf.lmer(f, sleep)
    assert b.exog_names == ["Intercept", "Days.x"]
    _same(b, _fresh(f, sleep))
    sleep.columns = ["Reaction", "Days", "Subject"]
    _same(mf.lmer(F, sleep), _fresh(F, sleep))


@pytest.mark.parametrize("kind", ["str", "object", "int", "float", "string", "category"])
def test_grouping_column_dtype_changed_between_builds(sleep, kind):
    a = mf.lmer(F, sleep)
    subject = sleep["Subject"].astype(str)
    sleep["Subject"] = {"str": subject, "object": subject.astype(object),
                        "int": subject.astype(int), "float": subject.astype(float),
                        "string": subject.astype("string"),
                        "category": subject.astype("category")}[kind]
    b = mf.lmer(F, sleep)
    _same(b, _fresh(F, sleep))
    # R's level order (sorted values) whatever the dtype: the same grouping as the factor's
    np.testing.assert_array_equal(b.re_design.terms[0].codes, a.re_design.terms[0].codes)
    assert b.re_design.terms[0].levels == a.re_design.terms[0].levels


def test_string_grouping_codes_are_the_object_columns(sleep):
    """The one-factorize coding of a string column equals the general path's (object column):
    sorted levels, missing values dropped, non-ASCII labels in code-point order."""
    lab = np.array(["b", "a", "é", "Z", "aa", "e\u0301", "\U0001F600"])
    d = sleep.assign(g=lab[np.arange(len(sleep)) % len(lab)])
    d.loc[[3, 50], "g"] = None
    f = "Reaction ~ Days + (1 | g)"
    s = mf.lmer(f, d.assign(g=d["g"].astype("str")))
    o = mf.lmer(f, d.assign(g=d["g"].astype(object)))
    assert s.re_design.terms[0].levels == sorted(lab.tolist())
    np.testing.assert_array_equal(s.re_design.terms[0].codes, o.re_design.terms[0].codes)
    assert s.re_design.terms[0].levels == o.re_design.terms[0].levels
    assert s.nrows_dropped == o.nrows_dropped == 2


def test_a_changed_fixed_effect_factor_between_builds(sleep):
    f = "Reaction ~ Days + grp + (1 | Subject)"
    d = sleep.assign(grp=pd.Categorical(np.where(sleep.Days < 5, "lo", "hi"),
                                        categories=["lo", "hi"]))
    assert mf.lmer(f, d).exog_names == ["Intercept", "grp[T.hi]", "Days"]
    d["grp"] = d["grp"].cat.rename_categories(["low", "high"])
    b = mf.lmer(f, d)
    assert b.exog_names == ["Intercept", "grp[T.high]", "Days"]
    _same(b, _fresh(f, d))
    d["grp"] = d["grp"].astype(str)                   # levels from the values, sorted
    c = mf.lmer(f, d)
    assert c.exog_names == ["Intercept", "grp[T.low]", "Days"]
    _same(c, _fresh(f, d))


def test_unused_nullable_columns_are_left_alone(sleep):
    """Only the columns the model reads are converted from nullable dtypes; a string subset
    expression may read any column, so then all are (as before)."""
    d = sleep.assign(extra=pd.array([None] + [1] * (len(sleep) - 1), dtype="Int64"),
                     w=pd.array([1.0] * len(sleep), dtype="Float64"))
    m = mf.lmer(F, d)
    assert m.nrows_dropped == 0 and list(m.formula_info["data"].columns) == \
        ["Reaction", "Days", "Subject"]
    _same(m, _fresh(F, sleep))
    d.loc[5, "Days"] = np.nan
    d["Days"] = d["Days"].astype("Float64")           # used: pd.NA is a missing value
    assert mf.lmer(F, d).nrows_dropped == 1
    s = mf.lmer(F, d, subset="extra > 0")             # reads the unused nullable column
    assert s.nrows_dropped == 1 and s.nobs == len(d) - 2


def test_parsed_formula_is_handed_out_as_a_copy():
    cols = frozenset(["y", "x", "g"])
    q1, p1 = parsed_formula("y ~ x + (x | g)", cols, "patsy")
    p1.bars[0].lhs = "changed"
    p1.bars.append(None)
    q2, p2 = parsed_formula("y ~ x + (x | g)", cols, "patsy")
    assert q1 == q2 and p2.bars[0].lhs == "x" and len(p2.bars) == 1
    # other columns, other quoting
    q3, _ = parsed_formula("y ~ x.b + (1 | g)", frozenset(["y", "x.b", "g"]), "patsy")
    assert q3 == "y ~ Q('x.b') + (1 | g)"


def test_per_object_is_keyed_by_the_object_not_its_address():
    calls = []

    def labels(idx):
        calls.append(1)
        return tuple(idx.tolist())

    a = pd.Index(["a", "b"])
    assert immutable_cache.per_object(labels, a) == ("a", "b")
    assert immutable_cache.per_object(labels, a) == ("a", "b") and len(calls) == 1
    assert immutable_cache.per_object(labels, pd.Index(["a", "b"])) == ("a", "b")
    assert len(calls) == 2                               # an equal Index: another object
    # an entry under the address of a new object (as when an Index dies and another is made
    # where it was) is not that object's: a miss
    c = pd.Index(["c", "d"])
    table = immutable_cache._tables[labels]
    table[id(c)] = table.pop(id(a))
    assert immutable_cache.per_object(labels, c) == ("c", "d") and len(calls) == 3
    for k in range(300):   # dead objects, addresses reused or not: never a stale value
        del a
        if k % 100 == 0:
            gc.collect()
        a = pd.Index(["e", str(len(calls))])
        assert immutable_cache.per_object(labels, a) == ("e", str(len(calls) - 1))
    assert len(calls) == 303
    assert len(immutable_cache._tables[labels]) <= immutable_cache.MAX_OBJECTS


def test_name_indexes_are_shared_but_not_their_names(sleep):
    a, b = mf.lmer(F, sleep), mf.lmer(F, sleep)
    a.data.orig_exog.columns.name = "mine"
    assert b.data.orig_exog.columns.name is None
    assert mf.lmer(F, sleep).data.orig_exog.columns.name is None


@pytest.mark.parametrize("y", [np.linspace(0, 1, 50), np.arange(50), np.r_[np.ones(49), 2.0]])
def test_frame_data_is_statsmodels_data_object(y):
    X = pd.DataFrame({"Intercept": 1.0, "a": np.linspace(-1, 1, 50), "b": np.arange(50.0) ** 2})
    for exog in (X, X[["a", "b"]], X.iloc[:, [0, 2]], X.assign(c=np.arange(50))):
        endog = pd.Series(y, name="y")
        ref, ours = handle_data(endog, exog, "none", None), frame_data(endog, exog)
        assert type(ref) is type(ours) and ref.__dict__.keys() == ours.__dict__.keys()
        for k in ("endog", "exog"):
            u, v = getattr(ref, k), getattr(ours, k)
            np.testing.assert_array_equal(u, v)
            assert (u.dtype, u.shape, u.strides, u.flags.writeable) == \
                (v.dtype, v.shape, v.strides, v.flags.writeable)
        assert (ref.k_constant, ref.const_idx) == (ours.k_constant, ours.const_idx)
        assert (ref.xnames, ref.ynames) == (ours.xnames, ours.ynames)
        assert ref.row_labels.equals(ours.row_labels)
    with pytest.raises(ValueError, match="different sizes|not aligned"):
        frame_data(pd.Series(y[:40], name="y"), X)
    assert frame_data(pd.Series(["a"] * 50), X) is None          # statsmodels' own path


def test_builds_from_several_threads_agree_with_serial_ones(sleep):
    frames = []
    for k in range(6):
        d = sleep.copy()
        d["Reaction"] = d["Reaction"] + k
        if k % 2:
            d["Subject"] = d["Subject"].cat.rename_categories(lambda c, k=k: f"{c}_{k}")
        if k % 3 == 2:
            d["Subject"] = d["Subject"].astype(str)
        frames.append(d)
    immutable_cache.clear()
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        threaded = list(ex.map(lambda d: mf.lmer(F, d), frames * 3))
    for d, m in zip(frames * 3, threaded):
        _same(m, _fresh(F, d))


def test_plans_that_read_the_namespace_are_made_afresh(sleep):
    """A formula naming a variable of the caller's namespace sees its value at each build; a
    plan decided by the columns alone is kept, without the namespace of the call that made it."""
    from mlmext.frame import plan_cache
    plan_cache.clear()
    k = 2.0
    f = "Reaction ~ I(Days * k) + (1 | Subject)"
    a = mf.lmer(f, sleep)
    k = 3.0     # noqa: F841 (read by the formula)
    b = mf.lmer(f, sleep)
    np.testing.assert_array_equal(b.exog[:, 1], 3.0 * sleep["Days"].to_numpy())
    np.testing.assert_array_equal(a.exog[:, 1], 2.0 * sleep["Days"].to_numpy())
    assert len(plan_cache._plans) == 0
    mf.lmer(F, sleep)
    mf.lmer(F, sleep.assign(extra=1.0))                  # other columns: another plan
    assert len(plan_cache._plans) == 2
    assert all(p.env is None for p in plan_cache._plans.values())
    # a column named like the namespace's variable: the column, and a plan of its own
    c = mf.lmer(f, sleep.assign(k=10.0))
    np.testing.assert_array_equal(c.exog[:, 1], 10.0 * sleep["Days"].to_numpy())


@pytest.mark.parametrize("cols", [
    {"Intercept": 1.0, "a": np.linspace(-1, 1, 50)},                   # an intercept (fast path)
    {"a": np.linspace(-1, 1, 50), "three": 3.0},                        # a constant, not ones
    {"zero": 0.0, "a": np.linspace(-1, 1, 50)},                         # a zero column only
    {"one": 1.0, "two": 2.0, "a": np.linspace(-1, 1, 50)},              # two constants
    {"d1": np.r_[np.ones(25), np.zeros(25)], "d2": np.r_[np.zeros(25), np.ones(25)]},  # implicit
    {"a": np.linspace(-1, 1, 50), "b": np.arange(50.0)},                # none
    {"Intercept": 1.0, "big": np.r_[1e308, np.zeros(49)], "big2": np.r_[1e308, np.zeros(49)]},
])
def test_frame_data_constant_as_statsmodels(cols):
    """k_constant and const_idx as statsmodels' _handle_constant gives them, on designs the
    fast path decides and on those it hands to statsmodels."""
    X = pd.DataFrame(cols, index=range(50))
    endog = pd.Series(np.linspace(0, 1, 50), name="y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # (no warning of its own: huge values too)
        ref, ours = handle_data(endog, X, "none", None), frame_data(endog, X)
    assert (ref.k_constant, ref.const_idx) == (ours.k_constant, ours.const_idx)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_frame_data_nonfinite_design_raises_as_statsmodels(bad):
    X = pd.DataFrame({"Intercept": 1.0, "a": np.r_[bad, np.linspace(-1, 1, 49)]})
    endog = pd.Series(np.linspace(0, 1, 50), name="y")
    with pytest.raises(MissingDataError):
        handle_data(endog, X, "none", None)
    with pytest.raises(MissingDataError):
        frame_data(endog, X)
