"""Memory-lean paths of the in-memory GLMM: the rows in chunks, [X y] by its columns.

On large data :meth:`MemoryRows.gradient_sums` and ``gradient_second`` go over the rows in
chunks of ``ROW_CHUNK`` (their n-sized temporaries chunk-sized), and so do PIRLS's
evaluations of a binomial logit model; the gradient and the value must equal those from all
rows at once (the same sums in another order: rounding only).
"""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import special

from mlmext.formula import api as mf
from mlmext.laplace import rows as rows_module
from mlmext.linalg import DenseFactor
from mlmext.linalg import _dense_inverse as dense_module


def _crossed(seed=3, nu=120, ni=30, per=9):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(nu), per)
    item = np.concatenate([rng.choice(ni, per, replace=False) for _ in range(nu)])
    x = rng.normal(size=user.size)
    eta = -0.3 + 0.5 * x + rng.normal(size=nu)[user] + 0.7 * rng.normal(size=ni)[item] \
        + 0.4 * rng.normal(size=nu)[user] * x
    mu = special.expit(eta)
    return pd.DataFrame({"user": [f"u{i}" for i in user], "item": [f"i{i}" for i in item], "x": x,
                         "y": rng.binomial(1, mu), "k": rng.poisson(3 * mu)})


def _fit_points(model, x, monkeypatch, chunk):
    monkeypatch.setattr(rows_module, "ROW_CHUNK", chunk)
    dev = model.deviance()
    out = [dev.loglike_and_score(x)[:2], dev.loglike_and_score(x + 0.03)[:2]]
    assert isinstance(dev.chol_u, DenseFactor)
    return out


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("formula, family", [
    ("y ~ x + (1 | user) + (1 | item)", sm.families.Binomial()),
    ("y ~ x + (1 + x | user) + (1 | item)", sm.families.Binomial()),
    ("k ~ x + (1 | user) + (1 | item)", "nb"),
])
def test_chunked_gradient_equals_one_pass(formula, family, compact, monkeypatch):
    monkeypatch.setattr(dense_module, "COMPACT_ABOVE", 0 if compact else 10**12)
    d = _crossed()
    if family == "nb":
        model = mf.glmer_nb(formula, d)
        extra = [np.log(0.5)]
    else:
        model = mf.glmer(formula, d, family=family)
        extra = []
    nt = model.re_design.ntheta
    x = np.concatenate([np.linspace(0.5, 0.9, nt), [-0.2, 0.4], extra])
    whole = _fit_points(model, x, monkeypatch, 1 << 17)
    # 97 rows per chunk: 12 chunks, the last one short; the users' levels split across chunks
    chunked = _fit_points(model, x, monkeypatch, 97)
    for (ll1, g1), (ll2, g2) in zip(whole, chunked):
        # the value: PIRLS's log-likelihood summed in chunks too (binomial logit)
        assert ll1 == pytest.approx(ll2, rel=1e-13)
        np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10 * np.abs(g1).max())


@pytest.mark.parametrize("colwise", [True, False])
def test_reweight_takes_the_columns(colwise, monkeypatch):
    """``reweight((X, y), w)`` (lme4's first stage on large data: no n x (p + 1) array) gives
    the factor of ``reweight(column_stack([X, y]), w)``."""
    from mlmext.laplace import make_chol
    from mlmext.laplace.zops import _reweight
    from mlmext.linalg import _lead
    monkeypatch.setattr(_lead, "SPARSE_SUMS_ROWS", 0 if colwise else 10**9)
    d = _crossed()
    model = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    des, X = model.re_design, model.exog
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=len(d)), rng.uniform(0.1, 0.3, len(d))
    lams = des.lambdas(np.array([0.8, 0.6]))
    out = []
    for XY in (np.column_stack([X, z]), (X, z)):
        ch = make_chol(des, X=X)
        _reweight(ch, XY, w)
        ch.update(lams)
        out.append((ch.logdet_zz, ch.cov_beta_unscaled(), ch.solve()[0]))
    (l1, c1, u1), (l2, c2, u2) = out
    np.testing.assert_allclose(l2, l1, rtol=1e-13)
    np.testing.assert_allclose(c2, c1, rtol=1e-12)
    np.testing.assert_allclose(u2, u1, rtol=1e-10, atol=1e-12)
    if not colwise:                  # stacked again: the same arithmetic
        assert l1 == l2 and np.array_equal(c1, c2) and np.array_equal(u1, u2)


def test_trim_heap_is_safe():
    """``trim_heap`` only hands free pages back (nothing below its row threshold)."""
    from mlmext import _malloc
    before = np.arange(10.0)
    _malloc.trim_heap(0)
    _malloc.trim_heap(_malloc.TRIM_ROWS)
    assert np.array_equal(before, np.arange(10.0))
