"""The numeric-column build (:mod:`mlmext.frame.numeric_build`) gives patsy's matrices bit for bit.

Each formula is built with the shortcut and with patsy's own ``build_design_matrices`` (the
shortcut turned off), caches emptied in between; the models' arrays, names and dropped rows
must be equal exactly.
"""
import numpy as np
import pandas as pd
import pytest

from mlmext import immutable_cache
from mlmext.formula import api as mf
from mlmext.frame import design_cache, numeric_build

from refcases import read_data


def _build(formula, data, enabled, **kw):
    immutable_cache.clear()
    design_cache.clear()
    old = numeric_build.ENABLED
    numeric_build.ENABLED = enabled
    try:
        return mf.lmer(formula, data, **kw)
    finally:
        numeric_build.ENABLED = old


def _same(a, b):
    for x, y in ((a.endog, b.endog), (a.exog, b.exog), (a.offset, b.offset)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()
    assert a.exog_names == b.exog_names and a.endog_names == b.endog_names
    assert a.nrows_dropped == b.nrows_dropped
    for ta, tb in zip(a.re_design.terms, b.re_design.terms):
        assert ta.X.tobytes() == tb.X.tobytes() and ta.X.flags.f_contiguous == tb.X.flags.f_contiguous
        assert ta.colnames == tb.colnames
        np.testing.assert_array_equal(ta.codes, tb.codes)
    assert list(a.formula_info["row_labels"]) == list(b.formula_info["row_labels"])


@pytest.fixture
def sleep():
    d = read_data("sleepstudy.csv")
    rng = np.random.default_rng(3)
    d["k"] = rng.integers(0, 5, len(d))                  # an integer column
    d["z"] = rng.normal(size=len(d))
    return d


@pytest.mark.parametrize("formula", [
    "Reaction ~ Days + (Days | Subject)",
    "Reaction ~ 0 + Days + z + (1 | Subject)",
    "Reaction ~ Days * z + k + (0 + Days | Subject) + (1 | Subject)",
    "Reaction ~ Days:z:k + (Days + z || Subject)",
    "Reaction ~ 1 + (1 | Subject)",
    "Reaction ~ Days + offset(z) + (Days | Subject)",
])
def test_same_matrices_as_patsy(sleep, formula):
    _same(_build(formula, sleep, True), _build(formula, sleep, False))


def test_missing_values_dropped_as_patsy(sleep):
    sleep.loc[[3, 50, 51], "Days"] = np.nan
    sleep.loc[[7, 50], "Reaction"] = np.nan
    sleep.loc[9, "z"] = np.nan
    f = "Reaction ~ Days + z + (Days | Subject)"
    a, b = _build(f, sleep, True), _build(f, sleep, False)
    assert a.nrows_dropped == 5
    _same(a, b)


def test_taken_only_for_bare_numeric_columns(sleep, monkeypatch):
    calls = []
    orig = numeric_build.numeric_matrices

    def spy(*args):
        out = orig(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr("mlmext.frame.patsy_pass.numeric_matrices", spy)
    sleep["g"] = pd.Categorical(np.where(sleep["k"] > 2, "a", "b"))
    for f, taken in [("Reaction ~ Days + (Days | Subject)", True),
                     ("Reaction ~ Days + g + (1 | Subject)", False),       # a categorical
                     ("Reaction ~ np.log(Days + 1) + (1 | Subject)", False),  # a function
                     ("Reaction ~ center(Days) + (1 | Subject)", False)]:  # a transform
        calls.clear()
        m = _build(f, sleep, True)
        assert (bool(calls) and calls[0]) is taken, f       # (pandas mode: not asked)
        _same(m, _build(f, sleep, False))


def test_recipe_kept_per_design_infos(sleep, monkeypatch):
    """The layout read off patsy's design infos is kept per (infos, plan) pair and gives the
    same matrices on new data of the same kinds, NaN rows dropped as patsy drops them."""
    made = []
    orig = numeric_build._make_recipe
    monkeypatch.setattr(numeric_build, "_make_recipe", lambda *a: made.append(1) or orig(*a))
    numeric_build._recipes.clear()
    f = "Reaction ~ Days * z + (Days | Subject)"
    a = mf.lmer(f, sleep)
    other = sleep.assign(z=sleep["z"] * 2.0)
    other.loc[[4, 9], "z"] = np.nan
    b = mf.lmer(f, other)
    assert len(made) == 1                                # the second build reused it
    assert b.nrows_dropped == 2
    assert a.exog_names == ["Intercept", "Days", "z", "Days:z"]
    np.testing.assert_array_equal(b.exog[:, 3], (other["Days"] * other["z"]).dropna())
    _same(b, _build(f, other, False))
    numeric_build._recipes.clear()
