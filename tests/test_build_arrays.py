"""The build reads the data's columns as arrays (no Series per column) and hands the model its
response and fixed design as arrays, their Series and DataFrame made on first use.

Both give what the pandas way gives: the column arrays ``data[name]`` holds (and a build
through them the same model as one through the Series, on every kind of grouping column,
with missing values), and a model data object whose arrays, names and pandas objects are
those of statsmodels' ``PandasData`` of the eager Series and DataFrame.
"""
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext import model_data
from mlmext.formula import api as mf
from mlmext.frame import columns as columns_mod
from mlmext.frame.columns import FrameColumns

N = 90


def _frame(group_kind, nan=False):
    rng = np.random.default_rng(3)
    labels = np.array([f"s{i:02d}" for i in range(9)])
    g = labels[np.arange(N) % 9]
    x = np.tile(np.arange(10.0), 9)
    y = 250 + 10 * x + rng.normal(0, 20, 9)[np.arange(N) % 9] + rng.normal(0, 5, N)
    if group_kind == "categorical":
        grp = pd.Categorical(g, categories=list(labels) + ["unused"])
    elif group_kind == "string":
        grp = pd.Series(g, dtype="str")
    elif group_kind == "arrow":
        grp = pd.array(g, dtype="string[pyarrow]")
    elif group_kind == "object":
        grp = pd.Series(g, dtype=object)
    else:
        grp = np.arange(N) % 9 + 1
    df = pd.DataFrame({"Reaction": y, "Days": x, "Subject": grp, "other": x})
    if nan:
        df.loc[[2, 40], "Reaction"] = np.nan
        df.loc[5, "Days"] = np.nan
        if group_kind == "number":
            df["Subject"] = df["Subject"].astype(float)
        df.loc[11, "Subject"] = None
    return df


def _no_stored_arrays(monkeypatch):
    """Every column read through its Series (pandas' public path)."""
    monkeypatch.setattr(columns_mod, "_stored_array", lambda data, name, n: None)


def _eager(monkeypatch):
    """The model handed the Series and DataFrame (the path before the arrays)."""
    import mlmext.base
    monkeypatch.setattr(mlmext.base, "LAZY_FRAMES", False)


@pytest.mark.parametrize("kind", ["categorical", "string", "arrow", "object", "number"])
def test_column_arrays_are_the_series_arrays(kind):
    df = _frame(kind, nan=True)
    cols = FrameColumns(df)
    for name in df.columns:
        a, s = cols.array(name), df[name]
        assert a.dtype == s.dtype
        if isinstance(s.dtype, np.dtype):
            assert isinstance(a, np.ndarray) and not a.flags.writeable
            np.testing.assert_array_equal(a, s.to_numpy())
            assert np.shares_memory(a, s.to_numpy())            # a view, not a copy
        else:
            assert type(a) is type(s.array)
            pd.testing.assert_extension_array_equal(a, s.array)
        assert cols.array(name) is a                            # read once
        assert cols.dtype(name) == s.dtype


def test_column_arrays_repeated_label_through_series():
    df = pd.DataFrame(np.arange(6.0).reshape(3, 2), columns=["a", "a"])
    df["b"] = [1.0, 2.0, 3.0]
    assert columns_mod._stored_array(df, "a", 3) is None          # two columns: not one array
    np.testing.assert_array_equal(FrameColumns(df).array("b"), [1.0, 2.0, 3.0])


def _model_state(m):
    out = {"endog": m.endog, "exog": m.exog, "names": (m.endog_names, m.exog_names),
           "nobs": m.nobs, "dropped": m.nrows_dropped}
    for t in m.re_design.terms:
        out[t.name] = (t.codes, list(t.levels), list(t.keys), t.kinds, t.X)
    return out


@pytest.mark.parametrize("kind", ["categorical", "string", "arrow", "object", "number"])
@pytest.mark.parametrize("nan", [False, True])
def test_model_through_arrays_is_model_through_series(monkeypatch, kind, nan):
    df = _frame(kind, nan)
    f = "Reaction ~ Days + (Days | Subject)"
    new = _model_state(mf.lmer(f, df, missing="drop"))
    _no_stored_arrays(monkeypatch)
    _eager(monkeypatch)
    old = _model_state(mf.lmer(f, df, missing="drop"))
    assert new.keys() == old.keys()
    for k in new:
        if k == "Subject":
            for a, b in zip(new[k], old[k]):
                np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
        else:
            np.testing.assert_array_equal(np.asarray(new[k], dtype=object),
                                          np.asarray(old[k], dtype=object))
    assert new["dropped"] == (4 if nan else 0)
    assert new["names"] == ("Reaction", ["Intercept", "Days"])


@pytest.mark.skipif(not model_data.LAZY_FRAMES, reason="this pandas shares arrays with frames")
def test_lazy_model_data_is_statsmodels_pandas_data(monkeypatch):
    df = _frame("categorical")
    f = "Reaction ~ Days + (Days | Subject)"
    lazy = mf.lmer(f, df)
    assert type(lazy.data) is model_data.FormulaData
    assert "orig_exog" not in lazy.data.__dict__ and "orig_endog" not in lazy.data.__dict__
    _eager(monkeypatch)
    eager = mf.lmer(f, df)
    assert type(eager.data) is not model_data.FormulaData
    for m in (lazy, eager):
        assert m.exog.flags.f_contiguous and not m.exog.flags.writeable
        assert not m.endog.flags.writeable
    np.testing.assert_array_equal(lazy.exog, eager.exog)
    np.testing.assert_array_equal(lazy.endog, eager.endog)
    assert (lazy.data.k_constant, lazy.data.const_idx) == (1, 0) == \
        (eager.data.k_constant, eager.data.const_idx)
    assert lazy.data.xnames == eager.data.xnames == ["Intercept", "Days"]
    assert lazy.data.ynames == eager.data.ynames == "Reaction"
    fit = lazy.fit(reml=True)
    assert list(fit.fe_params.index) == ["Intercept", "Days"]
    pd.testing.assert_index_equal(lazy.data.row_labels, eager.data.row_labels)
    pd.testing.assert_series_equal(lazy.data.orig_endog, eager.data.orig_endog)
    pd.testing.assert_frame_equal(lazy.data.orig_exog, eager.data.orig_exog)
    # the frames hold the arrays the model reads
    assert np.shares_memory(lazy.data.orig_exog.to_numpy(), lazy.exog)
    assert np.shares_memory(lazy.data.orig_endog.to_numpy(), lazy.endog)
    ref = eager.fit(reml=True)
    np.testing.assert_allclose(fit.llf, ref.llf, rtol=1e-12)
    np.testing.assert_allclose(fit.fe_params, ref.fe_params, rtol=1e-10)
    np.testing.assert_allclose(fit.llf, -296.6947, atol=1e-3)   # (as the frames path gives it)


@pytest.mark.skipif(not model_data.LAZY_FRAMES, reason="this pandas shares arrays with frames")
def test_lazy_model_data_pickles_and_copies_with_frames():
    m = mf.lmer("Reaction ~ Days + (Days | Subject)", _frame("object"))
    back = pickle.loads(pickle.dumps(m))
    assert "_formula_sources" not in back.data.__dict__
    pd.testing.assert_frame_equal(back.data.orig_exog, m.data.orig_exog)
    pd.testing.assert_series_equal(back.data.orig_endog, m.data.orig_endog)
    # a copy that sets its own response keeps it (each frame is made on its own)
    m2 = mf.lmer("Reaction ~ Days + (Days | Subject)", _frame("object"))
    data = object.__new__(type(m2.data))
    data.__dict__.update(m2.data.__dict__)
    data.orig_endog = pd.Series(np.zeros(N), name="new")
    assert list(data.orig_exog.columns) == ["Intercept", "Days"]
    assert data.orig_endog.name == "new"


def test_rank_deficient_design_still_warns_and_drops():
    df = _frame("categorical")
    df["Days2"] = 2 * df["Days"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = mf.lmer("Reaction ~ Days + Days2 + (1 | Subject)", df)
    assert m.exog_names == ["Intercept", "Days"]
    assert any("rank deficient" in str(x.message) for x in w)
    assert m.data.orig_exog.shape == (N, 2)


def test_two_column_shortcut_agrees_with_the_certificate():
    """Two columns clearly apart are kept without LAPACK; whenever the shortcut says so the
    Cholesky certificate says so too, and near-collinear pairs go to it."""
    from mlmext.base import _all_independent, _columns_kept, _two_clearly_independent
    rng = np.random.default_rng(5)
    taken = 0
    for n in (3, 180, 5000):
        for eps in (1.0, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9, 0.0):
            x = rng.normal(size=n)
            A = np.asfortranarray(np.column_stack([x, 3.0 * x + eps * rng.normal(size=n)]))
            short = _two_clearly_independent(A, 1e-7)
            taken += short
            if short:
                assert _all_independent(A, 1e-7)
            assert short is (eps >= 1e-2)          # sine^2 ~ eps^2 / 10 against 1e-6
    assert taken == 6
    ones = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    assert _two_clearly_independent(ones, 1e-7) and _columns_kept(ones) is None
    assert not _two_clearly_independent(np.column_stack([np.full(4, 1e-160), np.ones(4)]), 1e-7)
    assert _columns_kept(np.column_stack([np.ones(4), np.full(4, 2.0)])) == [0]


@pytest.mark.skipif(not model_data.LAZY_FRAMES, reason="this pandas shares arrays with frames")
def test_lazy_frames_own_their_arrays_as_eager_ones(monkeypatch):
    """As with the eager frames, the model's arrays are read-only views of the frames' own
    (writable) arrays."""
    df = _frame("categorical")
    f = "Reaction ~ Days + (1 | Subject)"
    lazy = mf.lmer(f, df)
    _eager(monkeypatch)
    eager = mf.lmer(f, df)
    for m in (lazy, eager):
        X, y = m.data.orig_exog, m.data.orig_endog
        X.iloc[0, 1] = 99.0
        y.iloc[0] = 1.0
        assert m.exog[0, 1] == 99.0 and m.endog[0] == 1.0


def test_used_categories_as_the_masked_count():
    """design.used_categories: the categories some row has, as the bincount of the codes that
    are not -1 gives them (missing codes, empty codes, small integer codes)."""
    from mlmext.design import used_categories
    rng = np.random.default_rng(5)
    for _ in range(50):
        k = int(rng.integers(1, 6))
        codes = rng.integers(-1 if rng.random() < 0.5 else 0, k, int(rng.integers(0, 12)))
        for c in (codes, codes.astype(np.int8)):
            want = np.bincount(c[c >= 0], minlength=k) > 0
            np.testing.assert_array_equal(used_categories(c, k), want)
