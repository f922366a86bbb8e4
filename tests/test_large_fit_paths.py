"""The large-fit paths of issue 14: the pooled start, L-BFGS-B's scaled first step, the
cross-products by blocks and the fixed-effects solve on the whole factor."""
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mlmext.formula import api as mf


def _crossed(seed=3, n=6000, users=300, items=220, weights=False):
    """A crossed user x item design whose dense part (items, X, y) has over 200 rows, so that
    the fit starts from the block-alone fits."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    it = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.normal(size=n)
    y = (1.0 + 0.5 * x + 0.6 * rng.normal(size=users)[u] + 0.2 * rng.normal(size=users)[u] * x
         + 0.9 * rng.normal(size=items)[it] + rng.normal(size=n))
    df = pd.DataFrame({"y": y, "x": x, "user": [f"u{v}" for v in u], "item": [f"i{v}" for v in it]})
    if weights:
        df["w"] = rng.uniform(0.5, 2.0, n)
    return df


def test_pooled_start_is_the_moment_formula():
    """Each block-alone model's residual variance holds sigma^2 plus the other blocks'
    per-row variance: the pooled start rescales each block's theta by sigma_b / sigma."""
    from mlmext.lmm import _pooled_start
    lam_u = np.array([[0.4, 0.0], [0.05, 0.1]])
    zz_u = np.array([[1.0, 0.1], [0.1, 2.0]])           # mean z z' of (1, x)
    lam_i = np.array([[0.7]])
    fits = [(np.array([0, 1, 2]), np.array([0.4, 0.05, 0.1]), 1.8, zz_u, lam_u),
            (np.array([3]), np.array([0.7]), 1.3, np.array([[1.0]]), lam_i)]
    v_u = 1.8 * np.trace(lam_u @ lam_u.T @ zz_u)
    v_i = 1.3 * 0.49
    s2 = 0.5 * ((1.8 - v_i) + (1.3 - v_u))
    alt = _pooled_start(fits, np.zeros(4))
    np.testing.assert_allclose(alt[:3], np.array([0.4, 0.05, 0.1]) * np.sqrt(1.8 / s2), rtol=1e-14)
    np.testing.assert_allclose(alt[3], 0.7 * np.sqrt(1.3 / s2), rtol=1e-14)
    # other blocks' variance larger than a block's own residual variance: no pooled start
    bad = [(f[0], f[1], f[2], f[3] * 50.0, f[4]) for f in fits]
    assert _pooled_start(bad, np.zeros(4)) is None


@pytest.mark.parametrize("weights", [False, True])
def test_pooled_start_lowers_the_deviance_and_the_fit_is_unchanged(weights):
    """On a crossed design the pooled start is below the block-alone start, and the fit from
    it reaches the optimum reached from lme4's start (same deviance to the optimizer's
    precision, same estimates)."""
    df = _crossed(weights=weights)
    m = mf.lmer("y ~ x + (1 + x | user) + (1 | item)", df, weights="w" if weights else None)
    dev = m.deviance(False)
    assert dev.size >= 200
    start, scale, alt = m._start_theta(False)
    assert alt is not None
    assert dev.value(alt) < dev.value(start) - 1.0
    res = m.fit(reml=False)
    ref = m.fit(reml=False, start_params=m.re_design.theta_start, method="Nelder-Mead")
    assert res.converged
    assert -2 * res.llf <= -2 * ref.llf + 1e-6
    assert res.llf == pytest.approx(ref.llf, abs=1e-5)
    np.testing.assert_allclose(res.fe_params, ref.fe_params, atol=1e-4 * np.min(res.bse_fe))


def test_lbfgsb_scaled_first_step_same_end_point_fewer_evaluations():
    """Shrinking the variables by the start's gradient norm makes L-BFGS-B's first trial the
    full gradient step: on a well-scaled quadratic far from its minimum it saves the line
    search's extrapolations and ends at the same point."""
    from mlmext.optimize import theta as th
    H = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.3], [0.0, 0.3, 0.7]])
    xs = np.array([3.0, -1.0, 2.0])
    calls = []

    def fg(x):
        calls.append(x.copy())
        d = x - xs
        return 0.5 * d @ H @ d, H @ d

    lower = np.array([0.0, -np.inf, 0.0])
    x0 = np.array([80.0, 60.0, 90.0])
    r1 = th._run_lbfgsb_scaled(None, fg, x0, lower, 200, 1e-10)
    n1 = len(calls)
    calls.clear()
    r0 = th._run("L-BFGS-B", None, x0, lower, fg, 200, 1e-10, ftol=1e-7)
    n0 = len(calls)
    np.testing.assert_allclose(r1.x, xs, atol=1e-3)
    np.testing.assert_allclose(r0.x, xs, atol=1e-3)
    np.testing.assert_allclose(r1.jac, H @ (r1.x - xs), atol=1e-10)   # in the caller's units
    assert n1 < n0
    # near the minimum (gradient below the threshold) nothing is rescaled
    calls.clear()
    r2 = th._run_lbfgsb_scaled(None, fg, xs + 0.5, lower, 200, 1e-10)
    np.testing.assert_allclose(r2.x, xs, atol=1e-3)


@pytest.mark.parametrize("weights", [False, True])
def test_row_cross_products_by_blocks_match_the_stacked_products(weights):
    """The cross-products formed by blocks equal the products of the stacked, sqrt(W)-scaled
    [Z_rest X y] (the former construction), dense and sparse A_rr."""
    from mlmext.linalg import row_cross_products
    df = _crossed(n=3000, weights=weights)
    m = mf.lmer("y ~ x + (1 + x | user) + (1 | item)", df, weights="w" if weights else None)
    b = m.re_design.blocks
    w = m.weights if weights else None
    A11, A_r1, A_rr = row_cross_products(b[0], b[1:], m._XY, w)
    _, A_r1s, A_rrs = row_cross_products(b[0], b[1:], m._XY, w, dense_rr=False)
    sw = sparse.diags(np.sqrt(m.weights))
    Zr = sw @ sparse.hstack([blk.Z() for blk in b[1:]] + [sparse.csc_matrix(m._XY)], format="csc")
    Z1 = sw @ b[0].Z()
    want_r1, want_rr = (Zr.T @ Z1).toarray(), (Zr.T @ Zr).toarray()
    scale = np.abs(want_rr).max()
    assert np.abs(A_r1.toarray() - want_r1).max() <= 1e-12 * scale
    assert np.abs(A_rr - want_rr).max() <= 1e-12 * scale
    assert np.abs(A_rrs.toarray() - want_rr).max() <= 1e-12 * scale
    assert np.array_equal(A_r1s.toarray(), A_r1.toarray())


def test_solve_last_row_on_the_whole_factor():
    """``solve_last_row_t`` (LAPACK on the whole C-ordered factor) equals the solve with the
    leading block, also with a garbage upper triangle (LAPACK's potrf leaves one)."""
    from mlmext.linalg._stacks import solve_last_row_t, solve_lower_t
    rng = np.random.default_rng(1)
    A = rng.normal(size=(50, 50))
    L = np.linalg.cholesky(A @ A.T + 50 * np.eye(50))
    L[np.triu_indices(50, 1)] = rng.normal(size=50 * 49 // 2)
    want = solve_lower_t(np.tril(L)[:-1, :-1], L[-1, :-1])
    np.testing.assert_allclose(solve_last_row_t(L), want, rtol=1e-12)
    L[-1, -1] = 0.0                                          # falls back to the leading block
    np.testing.assert_allclose(solve_last_row_t(L), want, rtol=1e-12)
