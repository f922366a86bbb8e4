"""The Laplace gradient with the compact coupling of the first block with the rest.

:meth:`DenseFactor.local_inverse` holds ``K = C G`` (first-block levels x the rest's effects)
only where rows of the data read it (:func:`mlmext.linalg._local.coupling_on_pattern`); the
gradient from it must equal the one from the dense ``K`` (the same sums in another order:
rounding only).
"""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import special

from mlmext.formula import api as mf
from mlmext.linalg import BlockedCholesky, DenseFactor, _local
from mlmext.linalg import _dense_inverse as dense_module


def _sparse_crossed(seed=2, nu=150, ni=40, per=7):
    """Each user sees ``per`` of ``ni`` items: most (user, item) pairs have no row."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(nu), per)
    item = np.concatenate([rng.choice(ni, per, replace=False) for _ in range(nu)])
    x = rng.normal(size=user.size)
    eta = -0.3 + 0.5 * x + rng.normal(size=nu)[user] + 0.7 * rng.normal(size=ni)[item] \
        + 0.4 * rng.normal(size=ni)[item] * x
    return pd.DataFrame({"user": [f"u{i}" for i in user], "item": [f"i{i}" for i in item], "x": x,
                         "y": rng.binomial(1, special.expit(eta))})


def _dense_local_inverse(self):
    return self.local_inverse_parts(compact=False).rows(self.blocks)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | user) + (1 | item)",
                                     "y ~ x + (1 + x | user) + (1 | item)",
                                     "y ~ x + (1 | user) + (1 + x | item)"])
@pytest.mark.parametrize("chunk", [1 << 19, 37])
def test_compact_gradient_equals_dense(formula, chunk, monkeypatch):
    monkeypatch.setattr(_local, "CHUNK", chunk)          # 37: many batches, split levels
    # the compact coupling on this small design too (by default only for large ones)
    monkeypatch.setattr(dense_module, "COMPACT_ABOVE", 0)
    d = _sparse_crossed()
    mod = mf.glmer(formula, d, family=sm.families.Binomial())
    des = mod.re_design
    th = np.linspace(0.5, 0.9, des.ntheta)
    x = np.concatenate([th, [-0.2, 0.4]])
    dev = mod.deviance()
    x2 = x + 0.05
    ll, g, modes = dev.loglike_and_score(x)
    assert modes.converged and isinstance(dev.chol_u, DenseFactor)
    # a second point: the pattern and the rows' positions in it come from the factor's cache
    ll2, g2, _ = dev.loglike_and_score(x2)
    # the compact parts: K's values at the distinct (user, item effect) pairs only
    local = dev.chol_u.local_inverse_parts(compact=True)
    q_item = des.blocks[1].q
    npairs = len(d[["user", "item"]].drop_duplicates()) * q_item
    assert local.K is None and local.keys.size == npairs
    assert npairs < des.blocks[0].m * des.blocks[1].nre / 4
    monkeypatch.setattr(DenseFactor, "local_inverse", _dense_local_inverse)
    dev0 = mod.deviance()
    for x_, ll_, g_ in ((x, ll, g), (x2, ll2, g2)):
        ll0, g0, _ = dev0.loglike_and_score(x_)
        assert ll_ == ll0
        np.testing.assert_allclose(g_, g0, rtol=1e-11, atol=1e-11 * np.abs(g0).max())


@pytest.mark.parametrize("formula", ["y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)",
                                     "y ~ x + (x | pupil) + (1 | tch) + (1 | sch)"])
def test_compact_rows_equal_dense_with_reordered_rest(formula):
    """A sparse remainder reordered by the factor: positions mapped through ``rpos``."""
    from test_linalg import _school_data, _setup
    model, des, lams, w, v, rng = _setup(_school_data(), formula)
    ch = BlockedCholesky(des.blocks, model._XY, w, nested=False).update(lams)
    assert isinstance(ch, DenseFactor) and ch._rpos is not None
    dense, comp = ch.local_inverse_parts(), ch.local_inverse_parts(compact=True)
    assert comp.K is None and comp.keys.size < dense.K.size / 10
    np.testing.assert_allclose(comp.Minv if comp.base is None else comp.base,
                               dense.Minv if dense.base is None else dense.base, rtol=1e-12)
    (t0, rho0), (t1, rho1) = dense.rows(des.blocks), comp.rows(des.blocks)
    for a, b in zip(rho0, rho1):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_compact_only_where_the_dense_coupling_is_large(monkeypatch):
    # VerbAgg-like: every user reads every item, so the dense coupling is both small and fully
    # read; the compact one is chosen only above COMPACT_ABOVE entries
    d = _sparse_crossed(nu=60, ni=12, per=12)
    mod = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    dev = mod.deviance()
    x = np.array([0.7, 0.6, -0.2, 0.4])
    chosen = []
    real = DenseFactor.local_inverse_parts

    def spy(self, compact=False):
        chosen.append(compact)
        return real(self, compact)
    monkeypatch.setattr(DenseFactor, "local_inverse_parts", spy)
    ll, g, _ = dev.loglike_and_score(x)
    monkeypatch.setattr(dense_module, "COMPACT_ABOVE", 0)
    ll_c, g_c, _ = mod.deviance().loglike_and_score(x)
    assert chosen == [False, True]
    assert ll_c == ll
    np.testing.assert_allclose(g_c, g, rtol=1e-11, atol=1e-11 * np.abs(g).max())


@pytest.mark.parametrize("case", ["reordered rest", "crossed"])
def test_refreshed_cross_products_equal_a_new_factor(case):
    """A Dask GLMM's factor gets new cross-products of the same pattern at every PIRLS
    iteration: refresh_cross_products keeps the remainder's order, the Schur pairs and the
    compact positions and refills them; everything the PIRLS and the gradient read must equal
    a factor set up from scratch for the new values."""
    from mlmext.linalg import row_cross_products
    if case == "reordered rest":
        from test_linalg import _school_data, _setup
        model, des, lams, w, v, rng = _setup(_school_data(), "y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)")
        XY = model._XY
    else:
        d = _sparse_crossed(nu=500, ni=60, per=6)
        mod = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
        des = mod.re_design
        rng = np.random.default_rng(3)
        lams = des.lambdas(np.array([0.8, 0.6]))
        XY = np.column_stack([mod.exog, rng.normal(size=len(d))])
        v = rng.normal(size=des.nre)
    n = XY.shape[0]
    b = des.blocks

    def xp(seed):
        r = np.random.default_rng(seed)
        return row_cross_products(b[0], b[1:], XY + 0.1 * r.normal(size=XY.shape),
                                  r.uniform(0.2, 2.0, n))

    fac = DenseFactor.from_cross_products(b, *xp(0))
    fac.refresh_cross_products(*xp(1))                   # a new structure: set up anew
    schur = fac._schur
    fac.update(lams).local_inverse_parts(compact=True)
    positions = fac._a1z_cache[-1]                       # the compact positions of this pattern
    assert "keys" in positions
    fac.refresh_cross_products(*xp(2)).update(lams)      # the same structure: refilled
    assert fac._schur is schur and schur.P is not None
    assert (fac._rpos is not None) == (case == "reordered rest")
    new = DenseFactor.from_cross_products(b, *xp(2)).update(lams)
    assert fac.logdet_zz == pytest.approx(new.logdet_zz, rel=1e-13)
    for x, y in zip(fac.solve(), new.solve()):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fac.solve_re(v), new.solve_re(v), rtol=1e-10, atol=1e-12)
    for x, y in zip(fac.inverse_block_sums(0), new.inverse_block_sums(0)):
        np.testing.assert_allclose(x, y, rtol=1e-10)
    rows_f = fac.local_inverse_parts(compact=True).rows(b)
    rows_n = new.local_inverse_parts(compact=True).rows(b)
    for x, y in zip(rows_f[1], rows_n[1]):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)
    # an equal pattern in new arrays (rebuilt by every Dask iteration) keeps the positions
    assert fac._a1z_cache[-1] is positions
