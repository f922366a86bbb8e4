"""The one-pass model frame (patsy over NumPy columns, missing rows found with masks) gives
what the generic path (the formula engine once per piece on the DataFrame) gives.

Each case builds the model twice, once each way (``model_frame._ONE_PASS``), and compares
everything the model keeps from its formula: response, fixed design and its names, every
random-effects term (matrix, names, codes, levels, keys), weights, offset, the rows dropped
and why, the row labels, the stored model frame and the engine's specs; errors and warnings
must be the same too.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.frame import model_frame

N = 120


def _data(seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice([f"g{i}" for i in range(10)], N)
    df = pd.DataFrame({
        "y": rng.normal(size=N),
        "x": rng.normal(size=N),
        "z": rng.uniform(0.5, 2.0, size=N),
        "k": rng.integers(0, 3, size=N),
        "f": pd.Categorical(rng.choice(list("abc"), N), categories=list("abcd")),
        "s": pd.Series(rng.choice(["u", "v", "w"], N), dtype=object),
        "t": pd.Series(rng.choice(["p", "q"], N), dtype="str"),
        "b": rng.random(N) > 0.5,
        "g": g,
        "h": rng.integers(0, 4, N),
        "w": rng.uniform(0.5, 2.0, N),
        "o": rng.normal(size=N) * 0.1,
        "cnt": rng.poisson(3.0, N),
        "succ": rng.integers(0, 6, N),
        "fail": rng.integers(0, 6, N),
        "yb": (rng.random(N) > 0.5).astype(float),
        "yf": pd.Categorical(rng.choice(["no", "yes"], N), categories=["no", "yes"]),
        "ord": pd.Categorical(rng.choice(["lo", "mid", "hi"], N), categories=["lo", "mid", "hi"],
                              ordered=True),
        "my var": rng.normal(size=N),
        "unused": rng.normal(size=N),
    })
    df.index = pd.Index([f"r{i}" for i in range(N)])      # row labels are not positions
    return df


def _missing(kind, df):
    """``df`` with missing values of one kind (in the first rows, and some more)."""
    df = df.copy()
    rows = df.index[[1, 7, 30, 31]]
    if kind == "none":
        pass
    elif kind == "y":
        df.loc[rows, "y"] = np.nan
    elif kind == "x":
        df.loc[rows, "x"] = np.nan
    elif kind == "f":
        df.loc[rows, "f"] = np.nan
    elif kind == "s":
        df["s"] = df["s"].astype(object)
        df.loc[rows, "s"] = None
    elif kind == "t":
        df.loc[rows, "t"] = np.nan
    elif kind == "g":
        df["g"] = df["g"].astype(object)
        df.loc[rows, "g"] = None
    elif kind == "h":
        df["h"] = df["h"].astype(float)
        df.loc[rows, "h"] = np.nan
    elif kind == "w":
        df.loc[rows, "w"] = np.nan
    elif kind == "w0":
        df.loc[rows, "w"] = 0.0
    elif kind == "o":
        df.loc[rows, "o"] = np.nan
    elif kind == "logz":              # np.log(z) of a negative z is NaN: patsy drops the row
        df.loc[rows, "z"] = -1.0
    elif kind == "level":             # a level seen only in rows dropped for a missing y
        lone = df.index[[3, 9]]
        df.loc[lone, "y"] = np.nan
        df.loc[lone, ["s", "k", "f", "t"]] = ["zz", 7, "d", "zz"]
    elif kind == "unused_cat":        # a category no row has
        df["f"] = df["f"].cat.add_categories(["e"])
    else:  # pragma: no cover
        raise ValueError(kind)
    return df


def _snapshot(m):
    info = m.formula_info
    snap = {
        "endog": np.asarray(m.endog, dtype=float),
        "exog": np.asarray(m.exog, dtype=float),
        "endog_names": m.endog_names,
        "exog_names": list(m.exog_names),
        "weights": np.asarray(m.weights),
        "offset": np.asarray(m.offset),
        "nrows_dropped": info["nrows_dropped"],
        "dropped": info["dropped"],
        "row_labels": list(info["row_labels"]),
        "data": info["data"],
        "fixed_spec": list(info["fixed_spec"].column_names),
        "has": (info["has_offset"], info["offset_arg"], info["has_weights"], info["engine"]),
        "terms": [(t.name, t.factors, t.lhs, t.X, t.colnames, t.codes, t.levels, t.keys, t.kinds,
                   list(t.spec.column_names), t.source) for t in m.re_design.terms],
    }
    for extra in ("response_kind", "response_levels", "y_levels"):
        if extra in info:
            snap[extra] = info[extra]
    if hasattr(m, "y_codes"):
        snap["y_codes"] = m.y_codes
    return snap


def _assert_same(a, b, where="model"):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype, (where, a.dtype, b.dtype)
        # the same memory layout too: products round alike
        assert (a.flags["C_CONTIGUOUS"], a.flags["F_CONTIGUOUS"]) == \
            (b.flags["C_CONTIGUOUS"], b.flags["F_CONTIGUOUS"]), (where, "layout")
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (where, a, b)
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _build(monkeypatch, one_pass, api, formula, data, **kwargs):
    monkeypatch.setattr(model_frame, "_ONE_PASS", one_pass)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            model, err = api(formula, data, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - both ways must raise the same
            model, err = None, (type(exc), str(exc))
    seen = sorted({(w.category.__name__, str(w.message)) for w in rec
                   if not issubclass(w.category, RuntimeWarning)})
    return model, err, seen


def _compare(monkeypatch, api, formula, data, expect=("numpy", "pandas"), **kwargs):
    new, err_new, warn_new = _build(monkeypatch, True, api, formula, data, **kwargs)
    old, err_old, warn_old = _build(monkeypatch, False, api, formula, data, **kwargs)
    assert err_new == err_old
    assert warn_new == warn_old
    if old is None:
        return None
    assert old.formula_info["frame_path"] == "generic"
    assert new.formula_info["frame_path"] in expect
    _assert_same(_snapshot(new), _snapshot(old))
    return new


LMER = [
    "y ~ x + (1 | g)",
    "y ~ x + f + (x | g)",
    "y ~ C(k) + s + (1 | g)",
    "y ~ np.log(z) + x:f + (1 | g)",
    "y ~ x * s + (x || g)",
    "y ~ 0 + f + (1 | g/h)",
    "y ~ x + t + b + (1 | g) + (0 + x | h)",
    "y ~ center(x) + I(x**2) + (1 | g)",
    "y ~ I(x - np.mean(x)) + (1 | g)",                 # np.mean of a Series skips NaN: pandas
    "y ~ I(x - sum(x) / len(x)) + (1 | g)",            # not row-wise, the same on arrays
    "y ~ x + offset(o) + (1 | g)",
    "y ~ C(f, Treatment('c')) + (1 | g:h)",
    "y ~ x + (1 + np.exp(z) | g)",
    "y ~ standardize(z) + C(s) + (1 | g)",
    "y ~ `my var` + (1 | g) + (1 | h)",
    "y ~ f:s + (f | g)",
    "y ~ x + (1 | g) + offset(np.log(z))",
]
PANDAS = {"y ~ center(x) + I(x**2) + (1 | g)", "y ~ I(x - np.mean(x)) + (1 | g)",
          "y ~ standardize(z) + C(s) + (1 | g)"}
MISSING = ["none", "y", "x", "f", "s", "t", "g", "h", "o", "logz", "level", "unused_cat"]


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("formula", LMER)
def test_lmer_same_frame(monkeypatch, formula, missing):
    _compare(monkeypatch, mf.lmer, formula, _missing(missing, _data()),
             expect=("pandas",) if formula in PANDAS else ("numpy",))


@pytest.mark.parametrize("missing", ["none", "w", "w0", "o", "x", "g"])
@pytest.mark.parametrize("how", ["columns", "arrays"])
def test_weights_and_offset_as_columns_and_arrays(monkeypatch, missing, how):
    df = _missing(missing, _data(1))
    kw = {"weights": "w", "offset": "o"} if how == "columns" else \
        {"weights": df["w"].to_numpy(), "offset": df["o"].to_numpy()}
    for formula in ("y ~ x + (1 | g)", "y ~ np.log(z) + f + (x | g)", "y ~ center(x) + (1 | g)"):
        _compare(monkeypatch, mf.lmer, formula, df, **kw)


@pytest.mark.parametrize("missing", ["none", "x", "g", "logz", "level"])
def test_subset_and_index(monkeypatch, missing):
    df = _missing(missing, _data(2))
    _compare(monkeypatch, mf.lmer, "y ~ x + s + (1 | g)", df, subset=df["x"] > -1.5)
    _compare(monkeypatch, mf.lmer, "y ~ x + s + (1 | g)", df, subset="z > 0.7")
    _compare(monkeypatch, mf.lmer, "y ~ x + s + (1 | g)", df.reset_index(drop=True))


GLMER = [
    ("cbind(succ, fail) ~ x + f + (1 | g)", sm.families.Binomial()),
    ("yb ~ x + s + (1 | g)", sm.families.Binomial()),
    ("yf ~ x + (1 | g)", sm.families.Binomial()),
    ("cnt ~ x + offset(np.log(z)) + (1 | g)", sm.families.Poisson()),
    ("cnt ~ C(k) + (1 | g) + (1 | h)", sm.families.Poisson()),
]


@pytest.mark.parametrize("missing", ["none", "x", "f", "g", "logz", "level", "unused_cat"])
@pytest.mark.parametrize("formula,family", GLMER)
def test_glmer_same_frame(monkeypatch, formula, family, missing):
    df = _missing(missing, _data(3))
    _compare(monkeypatch, mf.glmer, formula, df, family=family)


@pytest.mark.parametrize("missing", ["none", "x", "f", "g", "level", "unused_cat", "w0"])
def test_clmm_same_frame(monkeypatch, missing):
    df = _missing(missing, _data(4))
    df.loc[df.index[[2, 5]], "ord"] = np.nan
    for formula in ("ord ~ x + f + (1 | g)", "ord ~ np.log(z) + s + (1 | g)", "ord ~ 1 + (1 | g)"):
        _compare(monkeypatch, mf.clmm, formula, df)
    _compare(monkeypatch, mf.clmm, "ord ~ x + (1 | g)", df, weights="w")


def test_unused_response_levels_are_kept(monkeypatch):
    df = _data(5)
    df["yf"] = df["yf"].cat.add_categories(["maybe"])
    _compare(monkeypatch, mf.glmer, "yf ~ x + (1 | g)", df, family=sm.families.Binomial())
    df["ord"] = df["ord"].cat.add_categories(["top"])
    _compare(monkeypatch, mf.clmm, "ord ~ x + (1 | g)", df)


@pytest.mark.parametrize("formula,change", [
    ("y ~ xx + (1 | g)", None),                        # unknown column, "did you mean"
    ("y ~ x + (1 | gg)", None),
    ("y ~ x + (xx | g)", None),
    ("s ~ x + (1 | g)", None),                         # non-numeric response
    ("y ~ x + f + (1 | g)", "one_level"),              # a factor with one level in the rows used
    ("y ~ x + (1 | g)", "inf_x"),
    ("y ~ x + (1 | g)", "inf_y"),
    ("y ~ x + (1 | g)", "all_missing"),
    ("y ~ x + (1 | g)", "one_group"),
    ("y ~ x + x2 + (1 | g)", "collinear"),             # rank deficient: a warning
    ("y ~ x + (1 + w2 | g)", "group_level_slope"),     # an unidentified slope: a warning
    ("y ~ x + offset(s) + (1 | g)", None),
    ("y ~ x.2 + (1 | g)", None),
])
def test_errors_and_warnings_alike(monkeypatch, formula, change):
    df = _data(6)
    if change == "one_level":
        df["f"] = pd.Categorical(["a"] * N, categories=["a", "b"])
    elif change == "inf_x":
        df.loc[df.index[4], "x"] = np.inf
    elif change == "inf_y":
        df.loc[df.index[4], "y"] = -np.inf
    elif change == "all_missing":
        df["x"] = np.nan
    elif change == "one_group":
        df["g"] = "g0"
    elif change == "collinear":
        df["x2"] = 2 * df["x"]
    elif change == "group_level_slope":
        df["w2"] = df["g"].map({f"g{i}": float(i % 2) for i in range(10)})
    _compare(monkeypatch, mf.lmer, formula, df, expect=("numpy", "pandas", "generic"))


def test_missing_raise_and_zero_weights(monkeypatch):
    df = _missing("x", _data(7))
    _compare(monkeypatch, mf.lmer, "y ~ x + (1 | g)", df, missing="raise")
    df["w"] = 0.0
    _compare(monkeypatch, mf.lmer, "y ~ z + (1 | g)", df, weights="w")


def test_names_from_the_namespace(monkeypatch):
    """A scalar of the namespace keeps the NumPy mode; a function of the caller, a Series'
    method and a stateful transform take the pandas mode; all give the generic path's frame."""
    def double(v):
        return v * 2

    env = {"np": np, "scale": 2.5, "double": double}
    df = _missing("x", _data(8))
    for formula, mode in [("y ~ I(x * scale) + (1 | g)", "numpy"),
                          ("y ~ double(x) + (1 | g)", "pandas"),
                          ("y ~ I(x - x.mean()) + (1 | g)", "pandas"),
                          ("y ~ I(x.values) + (1 | g)", "pandas"),
                          ("y ~ I(x[::-1]) + (1 | g)", "pandas"),     # raises both ways
                          ("y ~ np.clip(x, -1, 1) + (1 | g)", "pandas"),
                          ("y ~ nope(x) + (1 | g)", "generic")]:      # raises both ways
        _compare(monkeypatch, mf.lmer, formula, df, expect=(mode,), eval_env=env)


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
def test_model_data_holds_the_used_columns():
    df = _missing("x", _data(9))
    m = mf.lmer("y ~ x + f + (1 | g)", df, weights="w", offset="o")
    data = m.formula_info["data"]
    assert list(data.columns) == ["y", "x", "f", "g", "w", "o"]
    assert len(data) == N - 4 and isinstance(data.index, pd.RangeIndex)
    assert list(data["f"].cat.categories) == ["a", "b", "c"]
    res = m.fit()
    assert np.allclose(res.predict(data), res.fittedvalues)


def _gram_schmidt_keep(A, tol=1e-7):
    """The columns drop_rank_deficient kept before it decided from one factorization."""
    Q = np.zeros((A.shape[0], 0))
    keep = []
    for j in range(A.shape[1]):
        v = A[:, j].copy()
        nv = np.linalg.norm(v)
        for _ in range(2):
            v -= Q @ (Q.T @ v)
        if nv > 0 and np.linalg.norm(v) > tol * nv:
            Q = np.column_stack([Q, v / np.linalg.norm(v)])
            keep.append(j)
    return keep


def test_drop_rank_deficient_same_decisions():
    """Random designs, independent, collinear, nearly collinear (around the tolerance), with
    zero columns, dummies with an intercept, badly scaled polynomials: the same columns kept."""
    from mlmext.base import drop_rank_deficient
    rng = np.random.default_rng(11)
    for _ in range(600):
        n = int(rng.choice([3, 5, 20, 200, 20000]))
        p = int(rng.integers(1, 8))
        A = rng.normal(size=(n, p)) * 10.0 ** rng.integers(-8, 9, size=p)
        kind = rng.integers(0, 6)
        if kind == 1 and p > 1:
            j = rng.integers(1, p)
            A[:, j] = A[:, :j] @ rng.normal(size=j)
        elif kind == 2 and p > 1:
            j = rng.integers(1, p)
            A[:, j] = A[:, :j] @ rng.normal(size=j) + rng.normal(size=n) * \
                10.0 ** rng.uniform(-10, -4) * np.linalg.norm(A[:, j]) / np.sqrt(n)
        elif kind == 3:
            A[:, rng.integers(0, p)] = 0.0
        elif kind == 4:
            g = rng.integers(0, p, size=n)
            A = np.column_stack([np.ones(n)] + [(g == k).astype(float) for k in range(p)])
        elif kind == 5:
            x = rng.uniform(1000, 1010, size=n)
            A = np.column_stack([np.ones(n)] + [x ** k for k in range(1, p + 1)])
        X = pd.DataFrame(A, columns=[f"c{i}" for i in range(A.shape[1])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept = [int(c[1:]) for c in drop_rank_deficient(X).columns]
        assert kept == _gram_schmidt_keep(A), (n, p, kind)


@pytest.mark.parametrize("missing", ["none", "y", "x"])
def test_one_column_response_frame_made_on_first_use(monkeypatch, missing):
    """The one-pass build hands a one-column response over as a Series (``y_column``, what
    the base model reads); the frame made from it on first use is the generic path's."""
    from mlmext.frame import build_model_frame, formula_manager
    from mlmext.lmm import LinearMixedModel as M

    def frame(one_pass):
        monkeypatch.setattr(model_frame, "_ONE_PASS", one_pass)
        return build_model_frame("y ~ x + (1 | g)", _missing(missing, _data()), env={},
                                 fixed_matrices=M._fixed_matrices, mgr=formula_manager(),
                                 fixed_parts=M._one_pass_parts())
    new, old = frame(True), frame(False)
    assert new.y_column is not None and old.y_column is None
    pd.testing.assert_series_equal(new.y_column, old.y.iloc[:, 0])
    pd.testing.assert_frame_equal(new.y, old.y)
    assert new.y is new.y                       # made once
