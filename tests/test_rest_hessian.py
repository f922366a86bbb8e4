"""The exact Hessian in the dense remainder's theta (issue 14): checked against central
differences of the exact gradient, and the fit that uses it against the fit differencing every
entry (same optimum, same checks, fewer evaluations)."""
import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf
from mlmext.objective import LMMDeviance
from mlmext.optimize.polish import fd_hessian


def _three_factors(seed=5, n=5000, users=300, items=230, shops=12, weights=False):
    """users x items x shops, crossed: the first block (users, intercept and slope) is eliminated,
    items and shops (scalar) form the dense remainder (over 200 rows, under the sparse path's)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    it = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    sh = rng.integers(0, shops, n)
    x = rng.normal(size=n)
    y = (1.0 + 0.5 * x + 0.6 * rng.normal(size=users)[u] + 0.2 * rng.normal(size=users)[u] * x
         + 0.9 * rng.normal(size=items)[it] + 0.4 * rng.normal(size=shops)[sh] + rng.normal(size=n))
    df = pd.DataFrame({"y": y, "x": x, "user": [f"u{v}" for v in u], "item": [f"i{v}" for v in it],
                       "shop": [f"s{v}" for v in sh]})
    if weights:
        df["w"] = rng.uniform(0.5, 2.0, n)
    return df


FORMULA = "y ~ x + (1 + x | user) + (1 | item) + (1 | shop)"


def _central_columns(dev, theta, idx, h=1e-5):
    cols = []
    for j in idx:
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        cols.append((dev.value_and_grad(tp)[1] - dev.value_and_grad(tm)[1]) / (2.0 * h))
    return np.array(cols).T


@pytest.mark.parametrize("reml,weights", [(False, False), (True, False), (True, True)])
def test_rest_hessian_matches_differences_of_the_gradient(reml, weights):
    df = _three_factors(weights=weights)
    m = mf.lmer(FORMULA, df, weights="w" if weights else None)
    dev = m.deviance(reml)
    theta = np.array([0.5, 0.05, 0.2, 0.8, 0.35])
    dev.value_and_grad(theta)
    idx, H = dev.hessian_part(theta)
    assert list(idx) == [3, 4]                       # the item and shop intercepts
    C = _central_columns(dev, theta, idx)
    # central differences of an exact gradient: error O(h^2) plus rounding ~1e-8 relative
    np.testing.assert_allclose(H, C[idx], rtol=1e-5, atol=1e-6 * np.abs(H).max())


def test_rest_hessian_only_at_the_last_gradients_point():
    df = _three_factors()
    dev = mf.lmer(FORMULA, df).deviance(False)
    theta = np.array([0.5, 0.05, 0.2, 0.8, 0.35])
    dev.value_and_grad(theta)
    dev.value(theta + 0.01)                          # the factor moved: no inverse for theta
    assert dev.hessian_part(theta) is None
    dev.value_and_grad(theta)
    assert dev.hessian_part(theta) is not None
    theta0 = theta.copy()
    theta0[4] = 0.0                                  # a zero SD: the Newton checks difference it
    dev.value_and_grad(theta0)
    assert dev.hessian_part(theta0) is None


def test_fd_hessian_with_known_entries_equals_the_full_difference():
    A = np.array([[2.0, 0.3, -0.1, 0.05], [0.3, 1.5, 0.2, 0.0], [-0.1, 0.2, 3.0, 0.4],
                  [0.05, 0.0, 0.4, 1.2]])
    b = np.array([0.1, -0.2, 0.3, 0.05])

    def fg(x):                                       # a cubic term: the Hessian varies with x
        return 0.5 * x @ A @ x + b @ x + (x[0] ** 3) / 6.0, A @ x + b + np.array([x[0] ** 2 / 2, 0, 0, 0])

    x = np.array([0.4, -0.3, 0.2, 0.7])
    lower = np.full(4, -np.inf)
    g = fg(x)[1]
    exact = A.copy()
    exact[0, 0] += x[0]
    H_all, n_all = fd_hessian(fg, x, g, lower)
    idx = np.array([1, 3])
    H_part, n_part = fd_hessian(fg, x, g, lower, known=(idx, exact[np.ix_(idx, idx)]))
    assert (n_all, n_part) == (4, 2)
    np.testing.assert_allclose(H_part, H_part.T)
    np.testing.assert_allclose(H_part, exact, atol=1e-5)
    np.testing.assert_allclose(H_part, H_all, atol=1e-5)


@pytest.mark.parametrize("reml", [False, True])
def test_fit_with_the_rest_hessian_reaches_the_same_optimum(reml, monkeypatch):
    """Same end point (within the optimizer's criterion), both converged, and one gradient
    evaluation fewer per remainder entry in each Hessian of the Newton polish."""
    df = _three_factors()
    r1 = mf.lmer(FORMULA, df).fit(reml=reml)
    monkeypatch.setattr(LMMDeviance, "hessian_part", lambda self, theta: None)
    r0 = mf.lmer(FORMULA, df).fit(reml=reml)
    assert r1.converged and r0.converged
    newton = [[n for m, _, n in r.optim.tried if m.startswith("Newton")] for r in (r1, r0)]
    assert len(newton[0]) == len(newton[1]) == 1
    assert newton[0][0] == newton[1][0] - 2          # item and shop: no gradient differences
    # both pass the Newton-decrement check (1e-7 deviance units): the criteria agree to that
    assert abs(r1.llf - r0.llf) < 1e-6
    np.testing.assert_allclose(r1.fe_params, r0.fe_params, atol=1e-3 * r0.bse_fe.min())
    np.testing.assert_allclose(r1.theta, r0.theta, atol=1e-4)
