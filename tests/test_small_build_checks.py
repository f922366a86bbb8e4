"""The response check's least-squares residual (LAPACK's QR), its unit-weight test and the fixed
effects' index views (issue 14's small-fit work): the same decisions and names as before."""
import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf


@pytest.fixture
def d():
    rng = np.random.default_rng(7)
    n = 120
    g = np.repeat(np.arange(12), 10)
    x = rng.normal(size=n)
    return pd.DataFrame({"g": g.astype(str), "x": x, "w": rng.uniform(0.5, 2.0, n),
                         "y": 1.0 + 2.0 * x + rng.normal(size=12)[g] + rng.normal(size=n)})


def test_exact_fit_on_the_rows_with_positive_weight_is_refused(d):
    # exact on the rows with positive weight only: those are the rows the check reads
    d = d.assign(y=np.where(d.index < 100, 3.0 - d.x, d.y), w=np.where(d.index < 100, d.w, 0.0))
    with pytest.raises(ValueError, match=r"fit the response 'y' exactly"):
        mf.lmer("y ~ x + (1 | g)", d, weights="w")
    mf.lmer("y ~ x + (1 | g)", d)           # all rows: a residual is left


def test_residual_at_rounding_scale_passes_and_zero_fe_works(d):
    # a residual far above the 1e-20 relative bound but tiny: accepted
    y = 5.0 + 2.0 * d.x + 1e-6 * np.random.default_rng(1).normal(size=len(d))
    mf.lmer("y ~ x + (1 | g)", d.assign(y=y))
    r = mf.lmer("y ~ 0 + (1 | g)", d).fit()               # no fixed effects: rss = y'y
    assert r.fe_params.size == 0 and np.isfinite(r.llf)


def test_fe_index_views_are_independent(d):
    r = mf.lmer("y ~ x + (1 | g)", d).fit()
    a, b = r.fe_params, r.bse_fe
    assert list(a.index) == list(b.index) == ["Intercept", "x"]
    assert a.index.name == b.index.name == "parameter" and a.index is not b.index
    a.index.name = "renamed"
    assert b.index.name == "parameter" and r.fe_params.index.name == "parameter"
    assert r.model.exog_names == ["Intercept", "x"]
    assert r.model.data.orig_exog.columns.name is None


def test_unit_weights_read_off_a_broadcast(d):
    """lmm._all_ones answers np.all(w == 1.0): from the one stored number of a zero-stride
    array (a model without weights), else over the entries; the models agree on it."""
    from mlmext.design import constant_rows
    from mlmext.lmm import _all_ones
    for w in (constant_rows(1.0, 5), constant_rows(2.0, 5), constant_rows(np.nan, 3), np.ones(4),
              np.array([1.0, 1.0, 0.5]), np.array([1.0, np.nan]), np.ones(0)):
        assert _all_ones(w) == bool(np.all(w == 1.0))
    plain, ones = mf.lmer("y ~ x + (1 | g)", d), mf.lmer("y ~ x + (1 | g)", d.assign(w=1.0),
                                                         weights="w")
    assert plain.weights.strides == (0,) and ones.weights.strides != (0,)
    assert plain._logw == ones._logw == 0.0
    assert plain.fit().llf == pytest.approx(ones.fit().llf, rel=1e-12)
