"""The one-off pieces of a fit's first batch of refits (:mod:`mlmext.inference._lockstep`,
:mod:`mlmext.linalg.levels_batch`) made with fewer NumPy calls give what the longer ways give:
the Cholesky factors and inverses by their gufuncs directly (None where ``np.linalg`` raises,
no warning), no template mask for a full lower triangle, no column map where no diagonal is
negative."""
import warnings

import numpy as np
import pytest

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.inference._lockstep import _canonical, _scales
from mlmext.linalg import levels_batch as lb
from mlmext.linalg.levels_batch import LevelsBatch, _factor_or_none


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def _no_warnings(f, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return f(*args)


@pytest.mark.parametrize("gufunc", [True, False])
def test_factor_or_none_is_numpys_or_none_where_it_raises(gufunc):
    rng = np.random.default_rng(3)
    B = rng.normal(size=(5, 3, 3))
    S = B @ B.transpose(0, 2, 1) + 0.1 * np.eye(3)          # positive definite
    chol = lb._gu_chol if gufunc else None
    inv = lb._gu_inv if gufunc else None
    L = _no_warnings(_factor_or_none, S, chol, np.linalg.cholesky)
    np.testing.assert_array_equal(L, np.linalg.cholesky(S))
    np.testing.assert_allclose(L @ L.transpose(0, 2, 1), S, rtol=1e-13, atol=1e-13)
    Si = _no_warnings(_factor_or_none, S[1], inv, np.linalg.inv)
    np.testing.assert_array_equal(Si, np.linalg.inv(S[1]))
    np.testing.assert_allclose(Si @ S[1], np.eye(3), atol=1e-10)
    bad = S.copy()
    bad[2] = np.diag([1.0, -1.0, 2.0])                      # one member not positive definite
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(bad)
    assert _no_warnings(_factor_or_none, bad, chol, np.linalg.cholesky) is None
    sing = np.array([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.inv(sing)
    assert _no_warnings(_factor_or_none, sing, inv, np.linalg.inv) is None


def _design(r):
    m = r.model
    lv = m._small_levels().criterion(bool(r.reml), m.nobs, m._logw)
    return m, lv, m.re_design.blocks[0]


@pytest.mark.parametrize("formula, full", [("Reaction ~ Days + (Days | Subject)", True),
                                           ("Reaction ~ Days + (Days || Subject)", False),
                                           ("Reaction ~ Days + (1 | Subject)", True)])
def test_moment_estimates_without_the_mask_of_a_full_template(sleep, formula, full):
    r = mf.lmer(formula, sleep).fit()
    m, lv, blk = _design(r)
    rng = np.random.default_rng(5)
    # simulated responses and pure noise around the trend (variances estimated negative: the
    # eigenvalue branch)
    Y = np.column_stack([np.asarray(r.simulate(nsim=4, seed=2)),
                         250 + 10 * sleep["Days"].to_numpy()[:, None]
                         + rng.normal(0, 30, (len(sleep), 6))])
    T = LevelsBatch(lv, Y).moment_thetas(blk)
    pieces = lv._shared["moment_design"]
    keep = pieces[-2]
    if full:
        assert keep is None
    else:
        np.testing.assert_array_equal(keep, np.eye(2, dtype=bool))
    # the mask spelled out (all True for a full template): the same estimates, bit for bit
    q = lv.q
    mask = np.ones((q, q), dtype=bool) if keep is None else keep
    lv._shared["moment_design"] = pieces[:-2] + (mask, pieces[-1])
    try:
        T_mask = LevelsBatch(lv, Y).moment_thetas(blk)
    finally:
        lv._shared["moment_design"] = pieces
    np.testing.assert_array_equal(T, T_mask)
    assert np.isfinite(T[:4]).all()                         # (the simulated responses)
    # noise: a variance estimated negative (the eigenvalue branch's start) or none at all
    assert not np.isfinite(T[4:]).all() and np.isfinite(T[4:]).any()


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)",
                                     "Reaction ~ Days + (Days || Subject)"])
def test_canonical_theta_without_a_negative_diagonal_makes_no_map(sleep, formula):
    r = mf.lmer(formula, sleep).fit()
    m, lv, blk = _design(r)
    des = m.re_design
    diag = _scales(r)[2]
    np.testing.assert_array_equal(np.flatnonzero(diag),
                                  np.asarray(blk.t_idx)[np.asarray(blk.t_rows)
                                                        == np.asarray(blk.t_cols)])
    theta = np.asarray(r.theta, dtype=float)
    T = np.tile(theta, (4, 1)) * np.array([[1.0], [0.5], [2.0], [1.5]])
    Tc = _canonical(lv, T, diag)
    assert "diagonal_of_column" not in lv._shared           # (no negative diagonal: no map)
    np.testing.assert_array_equal(Tc, T)
    assert Tc is not T
    T[1, np.flatnonzero(diag)[-1]] *= -1.0                  # a negative diagonal: the map
    T[2, np.flatnonzero(diag)[0]] *= -1.0
    Tc = _canonical(lv, T, diag)
    np.testing.assert_array_equal(Tc, _canonical(lv, T))
    for row, got in zip(T, Tc):
        np.testing.assert_array_equal(got, des.canonical_theta(row))
    assert (Tc[:, diag] >= 0).all()
