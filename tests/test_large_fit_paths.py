"""The large-fit paths of issue 14: L-BFGS-B's scaled first step, Newton's steps in the
deviance's rounding, the cross-products by blocks and the fixed-effects solve on the whole
factor."""
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mlmext.formula import api as mf
from mlmext.optimize import newton_polish


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
    r1 = th._run_lbfgsb_scaled(None, fg, x0, lower, 200, 1e-10, decrement_stop=None)
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
    r2 = th._run_lbfgsb_scaled(None, fg, xs + 0.5, lower, 200, 1e-10, decrement_stop=None)
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


def _noisy_quadratic(amplitude, calls):
    """A quadratic whose values carry deterministic rounding-like noise of ``amplitude``, with
    its exact gradient (STAR's deviance: 2.4e5, accurate to ~2e-6)."""
    from numpy import sin
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    xs = np.array([0.3, -0.2])

    def f(x):
        calls["f"] += 1
        d = x - xs
        return 2.4e5 + 0.5 * d @ A @ d + amplitude * sin(1e9 * x.sum())

    def fg(x):
        calls["fg"] += 1
        return f(x), A @ (x - xs)

    return A, xs, f, fg


def test_newton_full_step_judged_by_the_gradient_below_the_value_noise():
    """A Newton step predicting a gain (decrement 1e-6) below the values' noise (3e-6 here,
    above the 2.4e-7 the polish assumes) is taken when the gradient's decrement fell: the
    polish converges in a few evaluations instead of halving the step through the noise and
    recomputing the Hessian (STAR: 16 Newton evaluations before, 4 now)."""
    from mlmext.optimize.polish import NOISY_DECREMENT
    calls = {"fg": 0, "f": 0}
    A, xs, f, fg = _noisy_quadratic(3e-6, calls)
    d0 = np.array([1e-3, -0.2e-3])
    assert 1e-7 < 0.5 * d0 @ A @ d0 < NOISY_DECREMENT          # the regime of the rule
    x0 = xs + d0
    # a start where the full step's value rises (the noise): the rule must be what accepts it
    k = next(k for k in range(200) if f(xs + d0 * (1 + k * 1e-6)) < f(xs) - 2e-6)
    x0 = xs + d0 * (1 + k * 1e-6)
    calls.update(fg=0, f=0)
    p = newton_polish(fg, x0, np.full(2, -np.inf), tol=1e-12, check_tol=1e-7, value=f)
    assert p.converged and p.decrement < 1e-7
    assert p.nfev <= 5, p.nfev                   # the Hessian (2), the step, no backtracking
    assert abs(p.x - xs).max() < 1e-6


def test_newton_step_whose_value_rises_beyond_the_noise_is_refused():
    """The gradient's word is taken only within NOISY_DECREMENT of the value: a function
    whose values disagree with its gradient by more than that is not stepped on blindly."""
    from mlmext.optimize.polish import NOISY_DECREMENT
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    xs = np.array([0.3, -0.2])

    def f(x):                          # a bump of 1e-3 at the gradient's minimum
        d = x - xs
        return 2.4e5 + 0.5 * d @ A @ d + 1e-3 * np.exp(-np.sum(d ** 2) / 1e-8)

    def fg(x):
        return f(x), A @ (x - xs)

    x0 = xs + np.array([1e-3, -0.2e-3])
    p = newton_polish(fg, x0, np.full(2, -np.inf), tol=1e-12, check_tol=1e-7, value=f)
    assert 1e-3 > NOISY_DECREMENT
    assert f(p.x) <= f(x0) + NOISY_DECREMENT           # never moved onto the bump


@pytest.mark.parametrize("q1", [1, 2, 3])
@pytest.mark.parametrize("same_rows", [True, False])
@pytest.mark.parametrize("reorder", [True, False])
def test_level_gather_matches_the_dense_products(q1, same_rows, reorder, monkeypatch):
    """LevelGather (the too-many-pairs storage) against the dense products
    ``A blockdiag(B) A'`` and ``A_g' K A_g``: components sharing their rows (the fast union)
    or not (a slope zero on some rows), rows renumbered or not, refreshed values."""
    from mlmext.linalg import _levels
    monkeypatch.setattr(_levels, "CHUNK", 50)                  # many batches
    monkeypatch.setattr(_levels.LevelGather, "reorder", reorder)
    rng = np.random.default_rng(q1 + 10 * same_rows)
    r, m1 = 40, 60
    rows, cols, vals = [], [], []
    for g in range(m1):
        R = np.sort(rng.choice(r, size=rng.integers(0, 9), replace=False))
        for a in range(q1):
            Ra = R if same_rows or a == 0 else R[rng.random(R.size) < 0.6]
            rows.extend(Ra)
            cols.extend([g * q1 + a] * Ra.size)
            vals.extend(rng.normal(size=Ra.size))
    A = sparse.csr_matrix((vals, (rows, cols)), shape=(r, m1 * q1))
    lg = _levels.LevelGather(A, m1, q1, refreshable=True)
    for _ in range(2):
        Ad = A.toarray()
        B = rng.normal(size=(m1, q1, q1))
        B = B @ np.swapaxes(B, 1, 2)
        G = sum(Ad[:, g * q1:(g + 1) * q1] @ B[g] @ Ad[:, g * q1:(g + 1) * q1].T for g in range(m1))
        S = np.ones((r, r))
        lg.subtract_from(S, B)
        np.testing.assert_allclose(S, 1.0 - G, atol=1e-12 * np.abs(G).max())
        K = rng.normal(size=(r, r))
        K = K + K.T
        want = np.stack([Ad[:, g * q1:(g + 1) * q1].T @ K @ Ad[:, g * q1:(g + 1) * q1]
                         for g in range(m1)])
        np.testing.assert_allclose(lg.trace_weights(K), want, atol=1e-12 * np.abs(want).max())
        A = A.copy()                                       # new values, same structure
        A.data = rng.normal(size=A.nnz)
        lg.refresh(A)


def test_lbfgsb_quasi_newton_decrement_stop():
    """L-BFGS-B's hand-over to Newton: it stops at an iterate whose quasi-Newton estimate of
    the decrease left is below ``decrement_stop`` (a quadratic: the true decrease there is
    of that size), not later than its own relative stop, and never with a bound active."""
    from mlmext.optimize.lbfgsb import lbfgsb, qn_decrement
    # one pair on a 1-D quadratic: the estimate is exact
    s, y = np.array([0.5]), np.array([1.5])          # curvature 3
    assert qn_decrement([(s, y, 1.0 / float(s @ y))], np.array([0.6])) == pytest.approx(0.06)
    H = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    xs = np.array([1.0, -2.0, 0.5])

    def fg(x):
        d = x - xs
        return 1e5 + 0.5 * d @ H @ d, H @ d          # a deviance's size: the relative stop is late

    lower = np.full(3, -np.inf)
    x0 = np.array([5.0, 3.0, -4.0])
    full = lbfgsb(fg, x0, lower, ftol=1e-10)
    stop = lbfgsb(fg, x0, lower, ftol=1e-10, decrement_stop=1e-3)
    assert stop.success and "QUASI-NEWTON" in stop.message
    assert stop.nfev < full.nfev
    d = stop.x - xs
    true_dec = 0.5 * d @ H @ d
    assert 0.0 < true_dec < 1e-2                      # the estimate tracks the decrease
    # a bound active at the iterate: no early stop (the projected problem differs)
    lb = np.array([2.0, -np.inf, -np.inf])            # the minimum's x_0 = 1 is cut off
    r = lbfgsb(fg, x0, lb, ftol=1e-10, decrement_stop=1e-3)
    assert "QUASI-NEWTON" not in r.message and r.x[0] == 2.0


def test_lbfgsb_last_step_in_the_callers_units():
    """With ``decrement_stop`` L-BFGS-B reports its last step and change of gradient when the
    step ends at its end point: on a quadratic ``y = H s`` exactly, also after the scaled
    first step's and a refit's whitening change of variables."""
    from mlmext.optimize import theta as th
    from mlmext.optimize.lbfgsb import lbfgsb
    H = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    xs = np.array([1.0, -2.0, 0.5])

    def fg(x):
        d = x - xs
        return 1e5 + 0.5 * d @ H @ d, H @ d

    lower = np.full(3, -np.inf)
    x0 = np.array([50.0, 30.0, -40.0])
    metric = np.array([[5.0, 0.5, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0]])   # a refit's
    for r in (lbfgsb(fg, x0, lower, ftol=1e-10, decrement_stop=1e-3),
              th._run_lbfgsb_scaled(None, fg, x0, lower, 200, 1e-10, decrement_stop=1e-3),
              th._run_lbfgsb_whitened(fg, x0, metric, 200, 1e-10, None, costly=True)):
        assert "QUASI-NEWTON" in r.message
        s, y = r.last_step
        assert np.linalg.norm(s) > 0
        np.testing.assert_allclose(y, H @ s, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.jac, H @ (r.x - xs), rtol=1e-9, atol=1e-12)
    assert lbfgsb(fg, x0, lower, ftol=1e-10).last_step is None     # (no decrement_stop)


def test_secant_completes_the_one_missing_hessian_column():
    """The exact Hessian lacking one column (the LMM's first block) is completed from the last
    step: exact on a quadratic; left as it is at another point, for a step nearly
    orthogonal to the missing entry, or with two entries missing."""
    from mlmext.optimize.polish import secant_completed
    H = np.array([[5.0, -0.4, 0.3], [-0.4, 2.0, 0.1], [0.3, 0.1, 1.5]])
    x1 = np.array([0.3, 0.4, 0.1])
    known = (np.array([1, 2]), H[1:, 1:])
    part = lambda x: known
    s = np.array([-0.02, 0.01, 0.03])
    idx, Hc = secant_completed(part, x1, (s, H @ s))(x1.copy())
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_allclose(Hc, H, rtol=1e-12)
    assert secant_completed(part, x1, (s, H @ s))(x1 + 1e-9) is known
    flat = np.array([1e-4, 0.01, 0.03])                   # 0.3 % of the step along entry 0
    assert secant_completed(part, x1, (flat, H @ flat))(x1) is known
    two = (np.array([2]), H[2:, 2:])
    assert secant_completed(lambda x: two, x1, (s, H @ s))(x1) is two
    assert secant_completed(None, x1, (s, H @ s)) is None
    assert secant_completed(part, x1, None) is part


def test_crossed_fit_completes_the_hessian_by_the_last_step(monkeypatch):
    """Three crossed scalar factors with a dense part of over 200 rows: the Newton polish takes
    the first factor's Hessian column from L-BFGS-B's last step instead of a gradient
    difference; same optimum as with the difference, fewer evaluations."""
    from mlmext.optimize import polish
    rng = np.random.default_rng(11)
    n, users, items, groups = 6000, 400, 230, 12
    u, it, g = rng.integers(0, users, n), rng.integers(0, items, n), rng.integers(0, groups, n)
    y = (1.0 + 0.6 * rng.normal(size=users)[u] + 0.9 * rng.normal(size=items)[it]
         + 0.3 * rng.normal(size=groups)[g] + rng.normal(size=n))
    df = pd.DataFrame({"y": y, "user": [f"u{v}" for v in u], "item": [f"i{v}" for v in it],
                       "g": [f"g{v}" for v in g]})
    formula = "y ~ 1 + (1 | user) + (1 | item) + (1 | g)"
    fit = mf.lmer(formula, df).fit()
    monkeypatch.setattr(polish, "SECANT_MIN_SHARE", np.inf)     # the gradient difference
    ref = mf.lmer(formula, df).fit()
    assert fit.converged and ref.converged
    assert fit.optim.nfev < ref.optim.nfev
    assert abs(fit.llf - ref.llf) < 1e-7
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-5)
    np.testing.assert_allclose(fit.fe_params, ref.fe_params, atol=1e-5 * fit.bse_fe.max())
