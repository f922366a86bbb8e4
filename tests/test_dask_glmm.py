"""Binomial and Poisson GLMMs of Dask DataFrames (:mod:`mlmext.dask.glmm`) against the pandas
fit of the same rows.

Both fits run the same staged optimizer with the same PIRLS (:func:`mlmext.laplace.pirls`, in
memory or through :class:`mlmext.laplace.SummedRows`), the same warm starts
(:func:`mlmext.laplace.predict_modes`) and the same exact gradient; only the sums are added in
another order (per partition, then in a tree).  So the two fits take the same steps and agree
to rounding: the log-likelihoods to 1e-10 relative, the estimates to 1e-6 of a standard error
and the standard errors (central differences of the gradient) to 1e-6 relative (measured:
~1e-13 SE and ~1e-10 relative).  One scalar term in memory would take the exact Hessian
(:func:`mlmext.laplace.scalar_laplace_hessian`, which reads the rows): the pandas fits here take
the differenced Hessians as the Dask ones do, and one test compares with the exact path to the
optimizer's tolerance.
"""
import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
dask = pytest.importorskip("dask")

from mlmext import laplace as lp                  # noqa: E402
from mlmext.dask.model import RowsNotHeldError    # noqa: E402
from mlmext.formula import api as mf              # noqa: E402


def _data(seed=3, n=2400, users=120, items=40):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    item = rng.zipf(1.6, n) % items
    x = rng.normal(size=n)
    u0, u1, i0 = rng.normal(0, 0.6, users), rng.normal(0, 0.3, users), rng.normal(0, 0.7, items)
    off = rng.normal(0, 0.2, n)
    eta = -0.3 + 0.5 * x + u0[user] + u1[user] * x + i0[item]
    trials = rng.integers(1, 6, n).astype(float)
    df = pd.DataFrame({
        "y": rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float),
        "prop": rng.binomial(trials.astype(int), 1 / (1 + np.exp(-eta))) / trials,
        "trials": trials,
        "cnt": rng.poisson(np.exp(0.2 + 0.3 * x + u0[user] + i0[item] + off)).astype(float),
        "x": x, "user": [f"u{k}" for k in user], "item": item, "off": off})
    # rows sorted by user: partitions cut through users' rows
    df = df.sort_values("user", kind="stable").reset_index(drop=True)
    df.loc[rng.choice(n, 25, replace=False), "x"] = np.nan          # dropped and counted
    return df


@pytest.fixture(autouse=True)
def _sync_scheduler(monkeypatch):
    # the in-memory fits on the Dask fits' path (no exact Hessian), see the module docstring
    monkeypatch.setattr(lp, "has_scalar_hessian", lambda design, cond: False)
    with dask.config.set(scheduler="synchronous"):
        yield


def _same_fit(rd, rp, se_rtol=1e-6):
    assert rd.llf == pytest.approx(rp.llf, rel=1e-10)
    np.testing.assert_allclose(np.asarray(rd.params), np.asarray(rp.params),
                               atol=1e-6 * float(np.min(rp.bse)))
    np.testing.assert_allclose(np.asarray(rd.bse), np.asarray(rp.bse), rtol=se_rtol)
    np.testing.assert_allclose(rd.theta, rp.theta, rtol=1e-5, atol=1e-6)
    assert rd.nobs == rp.nobs and rd.nrows_dropped == rp.nrows_dropped
    assert list(rd.params.index) == list(rp.params.index)
    vd, vp = rd.varcorr(), rp.varcorr()
    np.testing.assert_allclose(vd.select_dtypes("number").to_numpy(float),
                               vp.select_dtypes("number").to_numpy(float), rtol=1e-5, atol=1e-8)


def test_binomial_crossed_partitions_inside_groups():
    df = _data()
    f = "y ~ x + (1 | user) + (1 | item)"
    ddf = dd.from_pandas(df, npartitions=5)
    rp = mf.glmer(f, df, family="binomial").fit()
    m = mf.glmer(f, ddf, family="binomial")
    assert m.passes == 2
    rd = m.fit()
    _same_fit(rd, rp)
    assert rd.nrows_dropped == 25
    assert rd.passes == m.passes - 2 and rd.passes > rd.optim.nfev
    # conditional modes and variances
    for name in ("user", "item"):
        a, b = rd.ranef(condvar=True)[name], rp.ranef(condvar=True)[name]
        np.testing.assert_allclose(a.to_numpy(float), b.loc[a.index].to_numpy(float),
                                   rtol=1e-4, atol=1e-6)
    # the row-sized results: lazy, over the model rows, equal to the pandas ones
    fv = rd.fittedvalues.compute()
    np.testing.assert_allclose(fv.to_numpy(), rp.fittedvalues.to_numpy(), rtol=1e-5)
    r = rd.resid.compute()
    np.testing.assert_allclose(r.to_numpy(), rp.resid.to_numpy(), atol=1e-5)
    pr = rd.predict(data=ddf, re=False).compute()
    np.testing.assert_allclose(pr.to_numpy(), rp.predict(data=df, re=False).to_numpy(),
                               rtol=1e-5)
    assert "Laplace" in str(rd.summary())


def test_binomial_proportions_and_correlated_slope():
    df = _data(seed=8)
    f = "prop ~ x + (1 + x | user) + (1 | item)"
    rp = mf.glmer(f, df, family="binomial", weights="trials").fit()
    rd = mf.glmer(f, dd.from_pandas(df, npartitions=4), family="binomial",
                  weights="trials").fit()
    _same_fit(rd, rp)


def test_poisson_offset_column():
    df = _data(seed=5)
    f = "cnt ~ x + (1 | user) + (1 | item)"
    rp = mf.glmer(f, df, family="poisson", offset="off").fit()
    rd = mf.glmer(f, dd.from_pandas(df, npartitions=3), family="poisson", offset="off").fit()
    _same_fit(rd, rp)
    # the offset matters: without it the fit differs
    r0 = mf.glmer(f, df, family="poisson").fit()
    assert abs(r0.llf - rd.llf) > 1.0


def test_pirls_passes_and_the_exact_gradient():
    """One pass per PIRLS iteration (the start, then each trial step) and one per gradient;
    the summed rows' gradient equals the in-memory one."""
    df = _data(seed=11, n=1200)
    f = "y ~ x + (1 + x | user) + (1 | item)"
    mp = mf.glmer(f, df, family="binomial")
    md = mf.glmer(f, dd.from_pandas(df, npartitions=3), family="binomial")
    x = np.array([0.5, 0.1, 0.3, 0.6, -0.2, 0.4])
    lp_, gp, mo_p = mp.deviance().loglike_and_score(x)
    before = md.passes
    ld, gd, mo_d = md.deviance().loglike_and_score(x)
    assert ld == pytest.approx(lp_, rel=1e-12)
    np.testing.assert_allclose(gd, gp, rtol=1e-7, atol=1e-8 * np.max(np.abs(gp)))
    assert mo_d.niter == mo_p.niter
    assert md.passes - before == 1 + (mo_d.niter - 1) + mo_d.nhalf + 1
    assert mo_d.eta is None and mo_d.d1 is None          # n-sized: not on the client


def test_summed_rows_in_memory_chunks_equal_memory_rows():
    """SummedRows over numpy chunks (no Dask) gives the modes of the in-memory PIRLS."""
    df = _data(seed=2, n=900).dropna()
    m = mf.glmer("cnt ~ x + (1 | user) + (1 | item)", df, family="poisson", offset="off")
    des, theta, beta = m.re_design, np.array([0.6, 0.8]), np.array([0.1, 0.3])
    dev = m.deviance()
    ref = lp.pirls(des, dev.chol_u, m.exog @ beta + m.offset, dev.cond, theta, tol=1e-14)
    cuts = [0, 250, 600, len(df)]
    chunks = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        blocks = []
        for blk in des.blocks:
            c = type(blk).__new__(type(blk))
            c.__dict__.update(blk.__dict__)
            c.X, c.codes = blk.X[a:b], blk.codes[a:b]
            blocks.append(c)
        design = type("D", (), {})()
        design.blocks, design.ntheta = blocks, des.ntheta
        cond = type(dev.cond)(m.family, m.endog[a:b], m.weights[a:b])
        chunks.append(lp.RowChunk(design, m.exog[a:b], m.offset[a:b], cond))

    def mapper(req):
        out = None
        for c in chunks:
            out = lp.add_sums(out, lp.chunk_sums(c, req))
        return out
    from mlmext.linalg import DenseFactor
    chol = DenseFactor(des.blocks, np.ones((len(df), 1)), np.ones(len(df)))
    rows = lp.SummedRows(des, mapper, beta, False, m.k_fe)
    got = lp.pirls(des, chol, None, dev.cond, theta, tol=1e-14, rows=rows)
    assert got.converged and got.niter == ref.niter
    np.testing.assert_allclose(got.u, ref.u, rtol=1e-9, atol=1e-10)
    assert got.laplace == pytest.approx(ref.laplace, rel=1e-12)
    # the warm start of the next evaluation: the same first-order move, from the sums
    dth, db = np.array([0.05, -0.03]), np.array([0.02, -0.01])
    p_ref = lp.predict_modes(des, dev.chol_u, ref, dth, m.exog @ db)
    p_got = lp.predict_modes(des, chol, got, dth, rows=rows, dbeta=db)
    assert np.max(np.abs(p_ref - ref.u)) > 1e-3
    np.testing.assert_allclose(p_got, p_ref, rtol=1e-8, atol=1e-10)


def test_on_a_local_cluster_with_two_workers():
    distributed = pytest.importorskip("distributed")
    df = _data(seed=4, n=1500)
    f = "cnt ~ x + (1 | user) + (1 | item)"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        with dask.config.set(scheduler=None):
            ddf = dd.from_pandas(df, npartitions=4)
            rd = mf.glmer(f, ddf, family="poisson", offset="off").fit()
            fv = rd.fittedvalues.compute()
    rp = mf.glmer(f, df, family="poisson", offset="off").fit()
    _same_fit(rd, rp)
    np.testing.assert_allclose(fv.sort_index().to_numpy(), rp.fittedvalues.to_numpy(), rtol=1e-5)


def test_what_a_dask_glmm_does_not_take():
    df = _data(seed=1, n=600)
    ddf = dd.from_pandas(df, npartitions=2)
    f = "y ~ x + (1 | user)"
    with pytest.raises(NotImplementedError, match="canonical links"):
        mf.glmer(f, ddf, family=__import__("statsmodels.api").api.families.Binomial(
            link=__import__("statsmodels.api").api.families.links.Probit()))
    with pytest.raises(NotImplementedError, match="negative binomial GLMMs of Dask"):
        mf.glmer_nb("cnt ~ x + (1 | user)", ddf)
    with pytest.raises(NotImplementedError, match="cumulative link"):
        mf.clmm("cnt ~ x + (1 | user)", ddf)
    with pytest.raises(NotImplementedError, match="zero-inflated"):
        mf.glmer("cnt ~ x + (1 | user)", ddf, family="poisson", ziformula="~ 1")
    with pytest.raises(ValueError, match="must be 0/1"):
        mf.glmer("cnt ~ x + (1 | user)", ddf, family="binomial")
    m = mf.glmer(f, ddf, family="binomial")
    with pytest.raises(RowsNotHeldError):
        m.exog
    with pytest.raises(NotImplementedError, match="nagq"):
        m.fit(nagq=3)
    res = m.fit()
    with pytest.raises(RowsNotHeldError):
        res.linear_predictor()
    with pytest.raises(TypeError):
        m.fit(bogus=1)


def test_rows_sorted_by_the_response():
    # the first rows of every partition are failures only: the template frame must still hold
    # the data's range of the response, or its checks would call the response constant
    df = _data(n=6000).dropna().sort_values("y", kind="stable").reset_index(drop=True)
    df = df[["y", "x", "user"]]
    assert df["y"].head(2000).max() == 0.0          # the first pass's sample
    rp = mf.glmer("y ~ x + (1 | user)", df, family="binomial").fit()
    rd = mf.glmer("y ~ x + (1 | user)", dd.from_pandas(df, npartitions=2),
                  family="binomial").fit()
    assert rd.llf == pytest.approx(rp.llf, rel=1e-10)
    np.testing.assert_allclose(np.asarray(rd.params), np.asarray(rp.params),
                               atol=1e-6 * float(np.min(rp.bse)))


@pytest.mark.parametrize("formula, weights", [("y ~ x + (1 | user) + (1 | item)", None),
                                              ("prop ~ x + (1 | user)", "trials")])
def test_pearson_residuals_and_their_summary_quantiles(formula, weights):
    df = _data().dropna().reset_index(drop=True)
    kw = dict(family="binomial")
    rp = mf.glmer(formula, df, weights=None if weights is None else df[weights].to_numpy(),
                  **kw).fit()
    rd = mf.glmer(formula, dd.from_pandas(df, npartitions=3), weights=weights, **kw).fit()
    np.testing.assert_allclose(rd.resid_pearson.compute().to_numpy(),
                               rp.resid_pearson.to_numpy(), atol=1e-8)
    # the summary's "Scaled residuals": exact quantiles of the Pearson residuals
    np.testing.assert_allclose(rd._summary_resid_quantiles(), rp._scaled_resid_quantiles(),
                               atol=1e-8)
    assert "Scaled residuals" in rd.summary().as_text()


def test_against_the_exact_hessian_in_memory(monkeypatch):
    """The in-memory fit of one scalar term with its exact Hessian (Newton to ~1e-6 SE of the
    optimum) and the Dask fit (Newton's decrement below 1e-8: up to ~7e-5 SE away) agree to
    the optimizer's tolerance."""
    df = _data().dropna().reset_index(drop=True)
    f = "y ~ x + (1 | user)"
    rd = mf.glmer(f, dd.from_pandas(df, npartitions=3), family="binomial").fit()
    monkeypatch.undo()
    m = mf.glmer(f, df, family="binomial")
    assert m.deviance().exact_hessian
    rp = m.fit()
    assert any("exact Hessian" in t[0] for t in rp.optim.tried)
    assert not any("exact Hessian" in t[0] for t in rd.optim.tried)
    assert abs(rd.llf - rp.llf) < 1e-8 and rp.llf >= rd.llf - 1e-10
    se = np.asarray(rp.bse)
    assert np.max(np.abs(np.asarray(rd.params) - np.asarray(rp.params)) / se) < 1e-4
    np.testing.assert_allclose(np.asarray(rd.bse), se, rtol=1e-4)
