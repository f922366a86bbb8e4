"""A ``cbind(successes, failures)`` response keeps its design infos between builds
(frame/design_cache.py): mlmext's ``cbind`` of number columns is a float matrix of one column
per argument whatever the values, so what patsy learns from it depends on that count only.
Each build from the cache must be the build patsy's own learning gives.
"""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.frame import design_cache
from mlmext.frame.design_cache import _cbind_names

from refcases import read_data


@pytest.fixture
def cbpp():
    d = read_data("cbpp.csv")
    d["fail"] = d["size"] - d["incidence"]
    return d


def _built(formula, data, cached, monkeypatch):
    monkeypatch.setattr(design_cache, "ENABLED", cached)
    return mf.glmer(formula, data, family=sm.families.Binomial())


def _same(a, b):
    for attr in ("endog", "exog", "weights"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    assert a.exog_names == b.exog_names and a.endog_names == b.endog_names
    assert a.response_kind == b.response_kind == "cbind"
    np.testing.assert_array_equal(a.re_design.terms[0].codes, b.re_design.terms[0].codes)
    assert a.formula_info["fixed_spec"].column_names == b.formula_info["fixed_spec"].column_names


@pytest.mark.parametrize("formula,cacheable", [
    ("cbind(incidence, fail) ~ period + (1 | herd)", True),
    ("cbind(incidence, size - incidence) ~ period + (1 | herd)", True),
    ("cbind(incidence, 2 * size - incidence - size) ~ period + (1 | herd)", True),
    ("cbind(incidence, np.abs(fail)) ~ period + (1 | herd)", False)])   # a function: learned
def test_cbind_design_infos_from_the_cache_are_patsys(cbpp, formula, cacheable, monkeypatch):
    design_cache.clear()
    ref = _built(formula, cbpp, False, monkeypatch)
    first = _built(formula, cbpp, True, monkeypatch)
    again = _built(formula, cbpp, True, monkeypatch)
    _same(first, ref)
    _same(again, ref)
    assert (again.formula_info["fixed_spec"] is first.formula_info["fixed_spec"]) == cacheable
    np.testing.assert_allclose(again.endog, cbpp["incidence"] / cbpp["size"], rtol=1e-15)
    np.testing.assert_array_equal(again.weights, cbpp["size"])


def test_cbind_key_follows_the_columns_kinds(cbpp, monkeypatch):
    f = "cbind(incidence, fail) ~ period + (1 | herd)"
    design_cache.clear()
    a = _built(f, cbpp, True, monkeypatch)
    b = _built(f, cbpp.assign(fail=cbpp["fail"].astype(float)), True, monkeypatch)
    assert b.formula_info["fixed_spec"] is not a.formula_info["fixed_spec"]   # another key
    _same(b, a)
    # a response column that is not numbers: never keyed (learned each time), patsy's build
    odd = cbpp.assign(fail=pd.Categorical(cbpp["fail"].astype(str)))
    c = _built(f, odd, True, monkeypatch)
    assert _built(f, odd, True, monkeypatch).formula_info["fixed_spec"] is not \
        c.formula_info["fixed_spec"]
    _same(c, _built(f, odd, False, monkeypatch))


def test_cbind_names():
    assert _cbind_names("cbind(s, f)") == (("s",), ("f",))
    assert _cbind_names("cbind(s, n - s)") == (("s",), ("n", "s"))
    assert _cbind_names("cbind(s, -f / 2)") == (("s",), ("f",))
    for code in ("cbind(s)[0]", "cbind(s, 1)", "cbind(s, f=f)", "cbind(*s)", "cbind(s, f.x)",
                 "cbind(s, np.log(f))", "rbind(s, f)", "cbind(s, 'f')", "cbind(s, f ** 2)",
                 "cbind(s, True)", "s", "cbind(", "cbind(s, f[0])"):
        assert _cbind_names(code) is None, code
