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


@pytest.mark.filterwarnings("ignore:boundary \\(singular\\) fit")
@pytest.mark.parametrize("formula,family", [
    ("cbind(incidence, fail) ~ period + (1 | herd)", "binomial"),
    ("incidence ~ period + (1 | herd)", "poisson"),
    ("hit ~ period + (1 | herd)", "binomial"),                  # a 0/1 column
    ("sick ~ period + (1 | herd)", "binomial")])                # a two-level factor: frames
def test_array_response_is_the_frames_one(cbpp, formula, family, monkeypatch):
    """A GLMM's numeric or cbind response reaches the model as an array (its Series and the
    design's DataFrame made when first read, as an LMM's): the model the frames give."""
    import mlmext.base
    from mlmext.model_data import FormulaResponse
    d = cbpp.assign(hit=(cbpp["incidence"] > 0).astype(float),
                    sick=pd.Categorical(np.where(cbpp["incidence"] > 0, "yes", "no")))
    lazy = mf.glmer(formula, d, family=family)
    monkeypatch.setattr(mlmext.base, "LAZY_FRAMES", False)
    frames = mf.glmer(formula, d, family=family)
    for attr in ("endog", "exog", "weights", "offset"):
        np.testing.assert_array_equal(getattr(lazy, attr), getattr(frames, attr))
    assert lazy.exog_names == frames.exog_names and lazy.endog_names == frames.endog_names
    assert lazy.response_kind == frames.response_kind
    pd.testing.assert_series_equal(lazy.data.orig_endog, frames.data.orig_endog)
    pd.testing.assert_frame_equal(lazy.data.orig_exog, frames.data.orig_exog)
    assert isinstance(lazy.data.__dict__.get("_formula_sources", (None,))[0],
                      FormulaResponse) == ("sick" not in formula)
    a, b = lazy.fit(), frames.fit()
    assert a.llf == b.llf
    np.testing.assert_array_equal(a.bse_fe, b.bse_fe)
