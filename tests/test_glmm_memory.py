"""Memory-lean paths of the in-memory GLMM: the Laplace gradient's rows in chunks.

On large data :meth:`MemoryRows.gradient_sums` and ``gradient_second`` go over the rows in
chunks of ``GRADIENT_CHUNK`` (their n-sized temporaries chunk-sized); the gradient must equal
the one from all rows at once (the same sums in another order: rounding only).
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
    monkeypatch.setattr(rows_module, "GRADIENT_CHUNK", chunk)
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
        assert ll1 == ll2                        # the value does not come from the gradient
        np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10 * np.abs(g1).max())
