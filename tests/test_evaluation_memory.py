"""The LMM deviance's evaluations never touch n-sized arrays (issue 14).

The fit forms the cross-products in one pass over the rows; after that the criterion and its
gradient read only level-sized storage.  Checked with tracemalloc: an evaluation at 25x the rows
(same levels) allocates no more, and far less than one float per row.
"""
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf


def _data(n, seed=3, nu=150, ni=40, nk=12):
    rng = np.random.default_rng(seed)
    u, i, k = rng.integers(0, nu, n), rng.integers(0, ni, n), rng.integers(0, nk, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + 0.6 * rng.normal(size=nu)[u] + 0.2 * rng.normal(size=nu)[u] * x
         + 0.9 * rng.normal(size=ni)[i] + 0.5 * rng.normal(size=nk)[k] + rng.normal(size=n))
    return pd.DataFrame(dict(y=y, x=x, w=rng.uniform(0.5, 2.0, n), u=pd.Categorical(u),
                             i=pd.Categorical(i), k=pd.Categorical(k)))


def _evaluation_peak(formula, n, reml, weights):
    df = _data(n)
    kw = {"weights": df["w"].to_numpy()} if weights else {}
    model = mf.lmer(formula, df, **kw)
    dev = model.deviance(reml=reml)
    theta = np.asarray(model.fit(reml=bool(reml)).theta) * 1.1 + 0.05
    f0, g0 = dev.value_and_grad(theta)               # caches filled, as inside the optimizer
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        f, g = dev.value_and_grad(theta * 1.01)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.isfinite(f) and np.all(np.isfinite(g)) and f != f0
    return peak


@pytest.mark.parametrize("formula, reml, weights", [
    ("y ~ x + (x | u)", True, False),                           # one factor, level by level
    ("y ~ x + (x | u) + (1 | i)", False, True),                 # crossed: dense rest
    ("y ~ x + (1 | u) + (1 | i) + (1 | k)", True, False),       # three crossed intercepts
    ("y ~ x + (1 | k/i)", False, False),                        # nested
])
def test_evaluation_allocates_nothing_row_sized(formula, reml, weights):
    small = _evaluation_peak(formula, 4_000, reml, weights)
    large = _evaluation_peak(formula, 100_000, reml, weights)
    assert large < 100_000 * 8 / 2, (small, large)            # less than half a column
    assert large <= 1.1 * small + 16_384, (small, large)      # and no growth with n
