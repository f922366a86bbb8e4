"""Linear mixed models of Dask DataFrames (:mod:`mlmext.dask`) against the pandas fit of the
same rows.

Both fits minimize the same criterion to the same convergence test; their cross-products are
sums in different orders (per partition, then in a tree), so the estimates agree to the
optimizer's precision, not bit for bit: the objectives to 1e-9 relative, estimates within 1e-6
of a standard error.
"""
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
dask = pytest.importorskip("dask")

import mlmext                                      # noqa: E402
from mlmext import datasets                        # noqa: E402
from mlmext.formula import api as mf               # noqa: E402


def _crossed(seed=1, n=2400):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 120, n)
    item = rng.zipf(1.6, n) % 40
    x = rng.normal(size=n)
    grp = rng.choice(["a", "b", "c"], n)
    u0, u1, i0 = rng.normal(0, 0.6, 120), rng.normal(0, 0.3, 120), rng.normal(0, 0.9, 40)
    off = rng.normal(0, 0.1, n)
    y = 1 + 0.5 * x + (grp == "b") * 0.3 + u0[user] + u1[user] * x + i0[item] + off \
        + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "grp": grp, "user": [f"u{k}" for k in user],
                       "item": item, "w": rng.uniform(0.5, 2.0, n), "off": off})
    df.loc[rng.choice(n, 30, replace=False), "x"] = np.nan          # dropped and counted
    df.loc[rng.choice(n, 5, replace=False), "w"] = 0.0             # not observations
    return df


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _same_fit(rd, rp, tol_se=1e-6):
    assert rd.llf == pytest.approx(rp.llf, rel=1e-9, abs=1e-7)
    np.testing.assert_allclose(np.asarray(rd.params), np.asarray(rp.params),
                               atol=tol_se * float(np.min(rp.bse)))
    np.testing.assert_allclose(np.asarray(rd.bse), np.asarray(rp.bse), rtol=1e-5)
    np.testing.assert_allclose(rd.theta, rp.theta, rtol=1e-5, atol=1e-6)
    assert rd.sigma == pytest.approx(rp.sigma, rel=1e-6)
    assert rd.nobs == rp.nobs and rd.nrows_dropped == rp.nrows_dropped
    assert list(rd.params.index) == list(rp.params.index)
    vd, vp = rd.varcorr(), rp.varcorr()
    np.testing.assert_allclose(vd.select_dtypes("number").to_numpy(float),
                               vp.select_dtypes("number").to_numpy(float), rtol=1e-5, atol=1e-9)


def test_sleepstudy_partitions_split_subjects():
    df = datasets.load("sleepstudy")
    ddf = dd.from_pandas(df, npartitions=7)           # 180 rows: boundaries inside subjects
    f = "Reaction ~ Days + (Days | Subject)"
    rd, rp = mf.lmer(f, ddf).fit(), mf.lmer(f, df).fit()
    _same_fit(rd, rp)
    assert type(rd.model).__name__ == "DaskLinearMixedModel" and rd.model.passes == 2
    # no row is held: what needs them says so
    from mlmext.dask.model import RowsNotHeldError
    for name in ("exog", "endog", "weights", "offset"):
        with pytest.raises(RowsNotHeldError, match="holds no rows"):
            getattr(rd.model, name)
        assert getattr(rd.model, name, None) is None
    # Satterthwaite t tests and profiles need only the cross-products
    assert rd.t_test("Days = 10").df_denom == pytest.approx(rp.t_test("Days = 10").df_denom, rel=1e-5)
    assert rd.t_test("Days = 10").pvalue == pytest.approx(rp.t_test("Days = 10").pvalue, rel=1e-5)
    np.testing.assert_allclose(rd.pvalues, rp.pvalues, rtol=1e-5)
    np.testing.assert_allclose(rd.conf_int(method="profile"), rp.conf_int(method="profile"),
                               rtol=1e-4)
    rd_ranef, rp_ranef = rd.ranef(condvar=True), rp.ranef(condvar=True)
    pd.testing.assert_frame_equal(rd_ranef["Subject"], rp_ranef["Subject"], rtol=1e-5)
    # lazy row-sized results
    fv = rd.fittedvalues
    assert type(fv).__module__.startswith("dask")
    np.testing.assert_allclose(fv.compute().sort_index(), rp.fittedvalues, rtol=1e-7)
    np.testing.assert_allclose(rd.resid.compute().sort_index(), rp.resid, atol=1e-5)
    new = df.iloc[::7]
    np.testing.assert_allclose(rd.predict(data=dd.from_pandas(new, npartitions=2), re=False).compute(),
                               rp.predict(data=new, re=False), rtol=1e-7)
    np.testing.assert_allclose(rd.predict(data=new), rp.predict(data=new), rtol=1e-7)
    rd.remove_data()                                     # no rows to remove: a no-op
    got = pickle.loads(pickle.dumps(rd))
    np.testing.assert_array_equal(got.params, rd.params)
    np.testing.assert_allclose(got.predict(data=new), rp.predict(data=new), rtol=1e-7)
    assert "Scaled residuals" in str(rd.summary())      # exact quantiles, more passes
    assert rd.model.passes > 2
    np.testing.assert_allclose(rd._summary_resid_quantiles(), rp._scaled_resid_quantiles(),
                               atol=1e-8)
    assert "DaskLinearMixedModel" in str(rd.summary())


@pytest.mark.parametrize("reml", [True, False])
def test_crossed_weights_offset_missing_rows(reml):
    df = _crossed()
    f = "y ~ x + grp + (1 + x | user) + (1 | item)"
    ddf = dd.from_pandas(df, npartitions=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rp = mf.lmer(f, df, weights="w", offset="off").fit(reml=reml)
    rd = mf.lmer(f, ddf, weights="w", offset="off").fit(reml=reml)
    _same_fit(rd, rp)
    assert rd.nrows_dropped == 35
    # the model rows only (dropped rows left out), as the pandas results
    fv = rd.fittedvalues.compute()
    assert len(fv) == rp.nobs
    np.testing.assert_allclose(fv.to_numpy(), rp.fittedvalues.to_numpy(), rtol=1e-6)


def test_nested_and_uncorrelated_terms():
    rng = np.random.default_rng(3)
    n = 900
    df = pd.DataFrame({"a": rng.integers(0, 12, n), "b": rng.integers(0, 4, n),
                       "x": rng.normal(size=n)})
    df["y"] = df.x + rng.normal(0, 0.7, 12)[df.a] + rng.normal(0, 0.5, 48)[df.a * 4 + df.b] \
        + rng.normal(0, 0.4, 12)[df.a] * df.x + rng.normal(size=n)
    f = "y ~ x + (x || a) + (1 | a:b)"
    rd = mf.lmer(f, dd.from_pandas(df, npartitions=4)).fit()
    rp = mf.lmer(f, df).fit()
    _same_fit(rd, rp)


def test_on_a_local_cluster_with_two_workers():
    distributed = pytest.importorskip("distributed")
    df = _crossed(seed=5, n=1500)
    f = "y ~ x + grp + (1 + x | user) + (1 | item)"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        with dask.config.set(scheduler=None):
            ddf = dd.from_pandas(df, npartitions=4).persist()
            rd = mf.lmer(f, ddf, weights="w").fit()
            fv = rd.fittedvalues.compute()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rp = mf.lmer(f, df, weights="w").fit()
    _same_fit(rd, rp)
    np.testing.assert_allclose(fv.sort_index().to_numpy(), rp.fittedvalues.to_numpy(), rtol=1e-6)


def test_what_dask_data_do_not_take():
    df = datasets.load("sleepstudy")
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(NotImplementedError, match="stateful transform center"):
        mf.lmer("Reaction ~ center(Days) + (1 | Subject)", ddf)
    with pytest.raises(TypeError, match="must name a column"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", ddf, weights=np.ones(180))
    with pytest.raises(NotImplementedError, match="subset"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", ddf, subset="Days > 2")
    with pytest.raises(NotImplementedError, match="negative binomial GLMMs of Dask"):
        mf.glmer_nb("Reaction ~ Days + (1 | Subject)", ddf)
    with pytest.raises(ValueError, match="unknown column 'Dayz'"):
        mf.lmer("Reaction ~ Dayz + (1 | Subject)", ddf)
    m = mf.lmer("Reaction ~ Days + (1 | Subject)", ddf)
    with pytest.raises(NotImplementedError, match="cluster-robust"):
        m.fit(cov_type="cluster")
    with pytest.raises(NotImplementedError, match="Kenward-Roger"):
        m.fit(ddf="kenward-roger")
    res = m.fit()
    with pytest.raises(NotImplementedError, match="holds no rows"):
        res.icc()
    with pytest.raises(NotImplementedError):
        mlmext.ranova(res)
    with pytest.raises(TypeError, match="unexpected|not take|unknown"):
        m.fit(bogus=1)


def test_data_checks_on_the_cross_products():
    df = datasets.load("sleepstudy").copy()
    df["Days2"] = 2 * df["Days"]
    ddf = dd.from_pandas(df, npartitions=3)
    with pytest.raises(ValueError, match="rank deficient"):
        mf.lmer("Reaction ~ Days + Days2 + (1 | Subject)", ddf)
    df["const"] = 5.0
    with pytest.raises(ValueError, match="constant"):
        mf.lmer("const ~ Days + (1 | Subject)", dd.from_pandas(df, npartitions=3))


def test_collinear_in_the_data_but_not_in_the_first_pass_template():
    """The template frame arranges categorical columns independently, so a recoding of one
    factor by another is collinear only in the data: the cross-products' check catches it."""
    df = datasets.load("sleepstudy").copy()
    df["half"] = np.where(df["Days"] < 5, "early", "late")
    df["half2"] = np.where(df["Days"] < 5, "E", "L")
    with pytest.raises(ValueError, match="rank deficient on the data"):
        mf.lmer("Reaction ~ half + half2 + (1 | Subject)", dd.from_pandas(df, npartitions=3))
    # the GLMM's check is the same function
    df["hi"] = (df["Reaction"] > df["Reaction"].median()).astype(float)
    with pytest.raises(ValueError, match=r"rank deficient on the data \(lme4 would drop \['half2"):
        mf.glmer("hi ~ half + half2 + (1 | Subject)", dd.from_pandas(df, npartitions=3),
                 family="binomial")


def test_numeric_column_used_as_a_factor():
    """``C(Days)`` makes a numeric column categorical: every level reaches the template, and
    only that column's values are collected (not those of the numeric predictors after it)."""
    from mlmext.dask.learn import _column_groups
    from mlmext.frame import parse_formula
    df = datasets.load("sleepstudy")
    f = "Reaction ~ C(Days, Treatment(0)) + Days + (1 | Subject)"
    parsed = parse_formula(f)
    assert _column_groups(parsed, df, ["Reaction", "Days", "Subject"]) == [["Subject"], ["Days"]]
    f = "Reaction ~ C(Days) + (1 | Subject)"
    rd = mf.lmer(f, dd.from_pandas(df, npartitions=3)).fit()
    rp = mf.lmer(f, df).fit()
    _same_fit(rd, rp)
    parsed = parse_formula("Reaction ~ C(Subject) + Days + (1 | Subject)")
    assert _column_groups(parsed, df, ["Reaction", "Days", "Subject"]) == [["Subject"]]


def test_specs_rebuilt_from_a_few_rows():
    """After unpickling (on a worker) the formula's specs are rebuilt from the rows that hold
    every level of the categorical predictors, not from one row per grouping level."""
    df = _crossed(seed=2, n=1200)
    f = "y ~ x + grp + (1 + x | user) + (1 | item)"
    rd = mf.lmer(f, dd.from_pandas(df, npartitions=3), weights="w").fit()
    frame = rd.model._spec_frame()
    assert len(frame) <= 64 + 3 and set(frame["grp"]) == {"a", "b", "c"}
    new = df.dropna().iloc[::50]
    again = pickle.loads(pickle.dumps(rd))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rp = mf.lmer(f, df, weights="w").fit()
    np.testing.assert_allclose(again.predict(data=new), rp.predict(data=new), rtol=1e-6)


def test_lmm_rows_sorted_by_the_response():
    # a 0/1 response sorted by value: its first 2000 rows (the first pass's sample) are all 0,
    # and the template frame must still hold the data's range, or its checks would call the
    # response constant
    df = _crossed().dropna()
    df["y"] = (df["y"] > df["y"].quantile(0.85)).astype(float)
    df = df.sort_values("y", kind="stable").reset_index(drop=True)
    assert df["y"].head(2000).max() == 0.0
    f = "y ~ x + (1 | user) + (1 | item)"
    _same_fit(mf.lmer(f, dd.from_pandas(df, npartitions=3)).fit(), mf.lmer(f, df).fit())


@pytest.mark.parametrize("fetch", [200_000, 10])
def test_exact_quantiles_without_sorting(monkeypatch, fetch):
    # fetch=10 forces the histogram passes; the values must equal numpy's on the whole series
    from mlmext.dask import quantiles as Q
    monkeypatch.setattr(Q, "FETCH", fetch)
    rng = np.random.default_rng(5)
    probs = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1]
    cases = {"normal": rng.normal(size=20001),
             "ties": rng.integers(0, 3, 9000).astype(float),
             "heavy tails": np.concatenate([rng.standard_cauchy(9000) * 1e6, np.zeros(7)]),
             "three": np.array([3.0, 1.0, 2.0]), "one": np.array([5.0])}
    for name, v in cases.items():
        q, passes = Q.exact_quantiles(dd.from_pandas(pd.Series(v), npartitions=4), probs)
        np.testing.assert_array_equal(q, np.quantile(v, probs), err_msg=name)
        assert passes <= (6 if fetch == 10 else 2), name
    with pytest.raises(ValueError, match="empty"):
        Q.exact_quantiles(dd.from_pandas(pd.Series([], dtype=float), npartitions=1), probs)


def test_summary_scaled_residuals_are_the_pandas_fits():
    df = _crossed()
    f = "y ~ x + grp + (1 + x | user) + (1 | item)"
    rd = mf.lmer(f, dd.from_pandas(df, npartitions=4), weights="w").fit()
    rp = mf.lmer(f, df, weights=df["w"].to_numpy()).fit()
    np.testing.assert_allclose(rd._summary_resid_quantiles(), rp._scaled_resid_quantiles(),
                               atol=1e-8)
    text = rd.summary().as_text()
    assert "Scaled residuals" in text
    # kept through pickling (an unpickled result has no data to compute them from)
    r2 = pickle.loads(pickle.dumps(rd))
    np.testing.assert_array_equal(r2._summary_resid_quantiles(), rd._summary_resid_quantiles())


def test_likelihood_ratio_comparison_of_two_dask_fits():
    from mlmext.inference import anova
    df = _crossed()
    ddf = dd.from_pandas(df, npartitions=4)
    f1, f2 = "y ~ x + (1 | user) + (1 | item)", "y ~ x + grp + (1 + x | user) + (1 | item)"
    m1, m2 = mf.lmer(f1, ddf), mf.lmer(f2, ddf)
    got = anova(m1.fit(), m2.fit(), names=["m1", "m2"])           # REML: refitted by ML
    want = anova(mf.lmer(f1, df).fit(), mf.lmer(f2, df).fit(), names=["m1", "m2"])
    np.testing.assert_allclose(got["logLik"], want["logLik"], rtol=1e-9)
    np.testing.assert_allclose(got["Chisq"].iloc[1], want["Chisq"].iloc[1], rtol=1e-6)
    assert m1.passes == 3 and m2.passes == 3                     # + the rows' comparison
    # not the same rows: another response, or a pandas fit
    other = mf.lmer(f2, dd.from_pandas(df.assign(y=df.y + 1), npartitions=4)).fit()
    with pytest.raises(ValueError, match="different rows or responses"):
        anova(m1.fit(), other)
    with pytest.raises(ValueError, match="Dask DataFrame and the other"):
        anova(m1.fit(), mf.lmer(f2, df).fit())
