"""The build's shortcuts for a fit right after a garbage collection (issue 14, cold2): the
exact-fit check from the cross-products, the blocks' shallow copy of the model frame, no row
masks on complete data and the design's theta bounds in Python lists -- each against what it
replaces, values and decisions alike."""
import numpy as np
import pandas as pd
import pytest

from mlmext.design import RandomEffectsDesign, ReTerm
from mlmext.formula import api as mf
from mlmext.frame import columns as frame_columns
from mlmext.frame.numeric_build import numeric_matrices
from mlmext.identifiability import clearly_not_fit_exactly


@pytest.fixture
def d():
    rng = np.random.default_rng(11)
    n = 96
    g = np.repeat(np.arange(12), 8)
    x = rng.normal(size=n)
    return pd.DataFrame({"g": pd.Categorical(g.astype(str)), "x": x, "z": rng.uniform(size=n),
                         "w": rng.uniform(0.5, 2.0, n),
                         "y": 1.0 + 2.0 * x + rng.normal(size=12)[g] + rng.normal(size=n)})


def _qr_ratio(XY):
    """The residual sum of squares of the last column on the others over its y'y (QR)."""
    R = np.linalg.qr(XY, mode="r")
    return R[-1, -1] ** 2 / float(XY[:, -1] @ XY[:, -1])


def test_exact_fit_certificate_only_where_the_qr_finds_a_residual():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(60), rng.normal(size=60), rng.uniform(size=60)])
    exact = X @ [1.0, -2.0, 0.5]
    cases = {"exact": exact, "1e-12": exact + 1e-12 * rng.normal(size=60),
             "1e-5": exact + 1e-5 * rng.normal(size=60), "noise": rng.normal(size=60)}
    got = {k: clearly_not_fit_exactly(np.column_stack([X, y])) for k, y in cases.items()}
    assert got == {"exact": False, "1e-12": False, "1e-5": False, "noise": True}
    # certified: the QR's ratio is far above the exact-fit test's 1e-20
    assert _qr_ratio(np.column_stack([X, cases["noise"]])) > 1e-3
    # undecided: collinear or nearly collinear columns, too many or too few columns
    near = X[:, 1] + 1e-4 * rng.normal(size=60)
    assert not clearly_not_fit_exactly(np.column_stack([X[:, :2], near, cases["noise"]]))
    assert not clearly_not_fit_exactly(np.column_stack([X, X[:, 1], cases["noise"]]))
    assert not clearly_not_fit_exactly(np.column_stack([X, X[:, 2] ** 2, cases["noise"]]))
    assert clearly_not_fit_exactly(np.column_stack([X, X[:, 2] ** 2, cases["noise"]]),
                                   max_columns=5)
    assert not clearly_not_fit_exactly(cases["noise"][:, None])
    assert not clearly_not_fit_exactly(np.column_stack([X, cases["noise"]])[:3])


def test_exact_fit_decisions_unchanged(d):
    # a response the fixed effects fit exactly, and one 1e-6 away: refused and accepted as
    # by the QR (the certificate leaves both to it)
    with pytest.raises(ValueError, match=r"fit the response 'y' exactly"):
        mf.lmer("y ~ x + z + (1 | g)", d.assign(y=2.0 - d.x + 3.0 * d.z))
    near = 2.0 - d.x + 1e-6 * np.random.default_rng(5).normal(size=len(d))
    assert mf.lmer("y ~ x + (1 | g)", d.assign(y=near)).k_fe == 2
    # weighted rows: the certificate reads the weighted [X y]
    m = mf.lmer("y ~ x + (1 | g)", d, weights="w")
    sw = np.sqrt(d.w.to_numpy())
    assert clearly_not_fit_exactly(m._XY * sw[:, None])


def test_shallow_copy_is_pandas_copy(d, monkeypatch):
    assert frame_columns._fast_copy is not None          # this pandas: the blocks' copy
    src = d.copy()
    src.attrs["source"] = "test"
    got = frame_columns.shallow_copy(src)
    pd.testing.assert_frame_equal(got, src.copy(deep=False))
    assert got is not src and got.attrs == {"source": "test"}
    assert got.columns is not src.columns and got.index is not src.index
    got.columns.name = "renamed"
    assert src.columns.name is None
    src.loc[0, "x"] = 100.0                   # copy-on-write: neither sees the other's writes
    got.loc[1, "y"] = -100.0
    assert got.loc[0, "x"] == d.loc[0, "x"] and src.loc[1, "y"] == d.loc[1, "y"]
    src["g"] = "a"                            # a column replaced: the copy keeps its own
    assert list(got["g"].cat.categories) == sorted(set(d.g.astype(str)))
    monkeypatch.setattr(frame_columns, "_fast_copy", None)   # pandas' own copy
    pd.testing.assert_frame_equal(frame_columns.shallow_copy(d), d)


def test_model_frame_is_the_models_own(d):
    user = d.copy()
    m = mf.lmer("y ~ x + (1 | g)", user)
    frame = m.formula_info["data"]
    assert frame is not user and list(frame.columns) == ["g", "x", "y"]
    user.loc[0, "x"] = 1e6
    assert frame.loc[0, "x"] == d.loc[0, "x"]
    pd.testing.assert_frame_equal(frame, d[["g", "x", "y"]])


def test_complete_data_make_no_mask_and_missing_values_are_dropped(d):
    class NA:
        mask = "unset"

    from mlmext.frame.patsy_pass import SeriesLikeArray
    m = mf.lmer("y ~ x + (1 | g)", d)
    info = m.formula_info["fixed_spec"]
    store = {"x": d.x.to_numpy().view(SeriesLikeArray), "y": d.y.to_numpy().view(SeriesLikeArray)}

    class Store(dict):
        nrows = len(d)

    na = NA()
    mats = numeric_matrices([info], Store(store), na, {"x": "x"})
    assert na.mask is None and np.array_equal(mats[0], m.exog)
    x = d.x.to_numpy().copy()
    x[[3, 7]] = np.nan
    na = NA()
    mats = numeric_matrices([info], Store(x=x.view(SeriesLikeArray)), na, {"x": "x"})
    assert np.flatnonzero(na.mask).tolist() == [3, 7] and mats[0].shape == (len(d) - 2, 2)
    # missing values in a numeric column and in the grouping factor: dropped and counted
    dm = d.copy()
    dm.loc[[3, 7], "x"] = np.nan
    dm.loc[[10], "g"] = np.nan
    mm = mf.lmer("y ~ x + (1 | g)", dm)
    assert mm.nrows_dropped == 3 and mm.formula_info["dropped"] == {"missing values": 3}
    keep = np.setdiff1d(np.arange(len(d)), [3, 7, 10])
    assert np.array_equal(mm.exog[:, 1], d.x.to_numpy()[keep])
    assert np.array_equal(mm.endog, d.y.to_numpy()[keep])


def test_design_bounds_and_theta_positions():
    codes3, codes2 = np.arange(6) % 3, np.arange(6) % 2
    X2 = np.column_stack([np.ones(6), np.arange(6.0)])
    terms = [ReTerm("a", ["a"], "1", np.ones((6, 1)), ["Intercept"], codes2, ["p", "q"]),
             ReTerm("b", ["b"], "1 + x", X2, ["Intercept", "x"], codes3, ["u", "v", "w"]),
             ReTerm("a", ["a"], "0 + x", X2[:, 1:], ["x"], codes2, ["p", "q"])]
    des = RandomEffectsDesign(terms)
    assert [t.name for t in des.terms] == ["b", "a", "a"]          # more levels first, stable
    assert [t.theta_index.tolist() for t in des.terms] == [[0, 1, 2], [3], [4]]
    assert des.lower.tolist() == [0.0, -np.inf, 0.0, 0.0, 0.0]
    assert des.theta_start.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert des.lower.dtype == des.theta_start.dtype == np.float64 and des.ntheta == 5
    assert [b.name for b in des.blocks] == ["b", "a"]
    a = des.blocks[1]
    assert a.t_idx.tolist() == [3, 4] and a.t_rows.tolist() == [0, 1] and a.t_cols.tolist() == [0, 1]
    assert a.t_idx.dtype == np.int64


_SHIFT = 0.5                      # a module global a formula reads


def _shifted(v):
    return v + _SHIFT


def test_formula_namespace_holds_the_formulas_names(d):
    scale = 3.0                   # a local the formula reads
    unused = object()             # a local it does not read: not kept
    m = mf.lmer("y ~ _shifted(x) + I(scale * z) + np.log(z) + (1 | g)", d)
    env = m.formula_info["eval_env"]
    assert unused not in env.values() and env.get("scale") == scale
    assert sorted(env) == ["_shifted", "cbind", "np", "scale"] and env["scale"] == 3.0
    r = m.fit()
    X = np.column_stack([np.ones(len(d)), d.x + 0.5, 3.0 * d.z, np.log(d.z)])
    assert np.array_equal(m.exog, X)
    new = d.iloc[:5].copy()
    fixed = r.predict(new, re=False)
    assert np.allclose(fixed, X[:5] @ r.fe_params.to_numpy(), rtol=1e-12)
    import pickle
    back = pickle.loads(pickle.dumps(r))
    assert np.allclose(back.predict(new, re=False), fixed, rtol=1e-12)
