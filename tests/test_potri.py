"""The recursive inverse from a Cholesky factor (mlmext.linalg._potri) against dense algebra and
LAPACK's dpotri, and the crossed LMM's gradient through it against the dpotri path."""
import numpy as np
import pandas as pd
import pytest
from scipy.linalg import lapack

from mlmext.formula import api as mf
from mlmext.linalg import _potri
from mlmext.linalg._potri import potri_upper


def _spd(n, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    return A @ A.T / n + np.eye(n)


def test_the_pointers_are_found():
    """SciPy's Cython BLAS/LAPACK give dtrtri and dtrmm with the expected prototypes (else the
    recursion is silently off and every inverse goes to dpotri)."""
    assert _potri._pointers() is not None


@pytest.mark.parametrize("n", [1, 5, _potri.LEAF, _potri.LEAF + 1, 2 * _potri.LEAF + 3, 700])
def test_potri_upper_is_the_inverse(n):
    S = _spd(n, n)
    L = np.linalg.cholesky(S)                       # C-ordered lower: L.T is Fortran upper
    X = L.copy()
    iu = np.triu_indices(n, 1)
    X[iu] = 7.0                                     # the strict upper (C) triangle: left alone
    assert potri_upper(X.T) == 0
    ref = np.linalg.inv(S)
    np.testing.assert_allclose(np.tril(X), np.tril(ref), rtol=0, atol=1e-12 * np.abs(ref).max())
    assert np.all(X[iu] == 7.0)
    # the same as dpotri to rounding
    Y = L.copy()
    lapack.dpotri(Y.T, lower=0, overwrite_c=1)
    np.testing.assert_allclose(np.tril(X), np.tril(Y), rtol=1e-12, atol=1e-14)


def test_potri_upper_reports_a_zero_diagonal():
    n = 3 * _potri.LEAF
    L = np.linalg.cholesky(_spd(n, 3))
    for k in (5, _potri.LEAF + 7, n - 1):           # in a first half, a second half, the last
        X = L.copy()
        X[k, k] = 0.0
        info = potri_upper(X.T)
        assert info == k + 1


def test_potri_upper_without_pointers_uses_dpotri(monkeypatch):
    n = 2 * _potri.LEAF + 1
    S = _spd(n, 4)
    L = np.linalg.cholesky(S)
    monkeypatch.setitem(_potri._fns, "ok", None)
    X = L.copy()
    assert potri_upper(X.T) == 0
    np.testing.assert_allclose(np.tril(X), np.tril(np.linalg.inv(S)), atol=1e-12)
    monkeypatch.delitem(_potri._fns, "ok")
    # an array it could not write in place is refused (dpotri would invert a copy)
    with pytest.raises(ValueError):
        potri_upper(np.ascontiguousarray(L.T))


def test_crossed_gradient_matches_the_dpotri_path(monkeypatch):
    """A crossed LMM whose dense remainder (300 items) is inverted by halves: its REML and ML
    gradients equal those through dpotri."""
    rng = np.random.default_rng(8)
    n, nu, ni = 6000, 900, 300
    u, i = rng.integers(0, nu, n), rng.integers(0, ni, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.7, nu)[u] + rng.normal(0, 0.5, ni)[i] + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "u": pd.Categorical(u), "i": pd.Categorical(i)})
    m = mf.lmer("y ~ x + (1 + x | u) + (1 | i)", df)
    theta = np.array([0.7, 0.05, 0.2, 0.45])
    for reml in (True, False):
        dev = m.deviance(reml=reml)
        assert dev.size > _potri.LEAF
        f1, g1 = dev.value_and_grad(theta)
        monkeypatch.setattr(_potri, "LEAF", 10**9)       # dpotri whole
        dev2 = m.deviance(reml=reml)
        f2, g2 = dev2.value_and_grad(theta)
        monkeypatch.undo()
        assert f1 == f2
        np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9)


def test_dense_remainder_by_bands_matches_dense_algebra(monkeypatch):
    """A crossed system whose dense remainder spans several bands of the lower-triangle passes
    (the Schur complement copied and scaled by bands, the inverse copied by bands) and more
    than one recursion level of the inverse: the objective's pieces equal the dense matrix's,
    with two scalar blocks in the remainder (their cross block scaled apart)."""
    from test_linalg import _dense_reference, _flat

    from mlmext.linalg import BlockedCholesky, DenseFactor, dense
    monkeypatch.setattr(dense, "LOWER_BAND", 16)
    monkeypatch.setattr(_potri, "LEAF", 32)
    rng = np.random.default_rng(21)
    n, nu, ni, nj = 2500, 300, 120, 40
    df = pd.DataFrame({"u": pd.Categorical(rng.integers(0, nu, n)),
                       "i": pd.Categorical(rng.integers(0, ni, n)),
                       "j": pd.Categorical(rng.integers(0, nj, n)), "x": rng.normal(size=n)})
    df["y"] = df["x"] + rng.normal(size=n)
    model = mf.lmer("y ~ x + (1 + x | u) + (1 | i) + (1 | j)", df)
    des = model.re_design
    lams = des.lambdas(des.theta_start + 0.4 * rng.random(des.ntheta))
    w = rng.uniform(0.5, 2.0, n)
    ch = BlockedCholesky(des.blocks, model._XY, w)
    assert isinstance(ch, DenseFactor) and ch._sn is None and ch._schur.P is not None
    assert ch.r > 4 * 16
    ch.update(lams)
    ref = _dense_reference(des, model._XY, w, lams, rng.normal(size=des.nre))
    got = {"logdet_zz": ch.logdet_zz, "logdet_xx": ch.logdet_xx, "r2": ch.r2,
           "ibs_ml": _flat(ch.inverse_block_sums(0)), "ibs_reml": _flat(ch.inverse_block_sums(ch.p))}
    for key, val in got.items():
        np.testing.assert_allclose(val, ref[key], rtol=1e-10, atol=1e-10 * np.abs(ref[key]).max(),
                                   err_msg=key)
