"""Cumulative link mixed models with one scalar random-effects term: the exact Hessian of the
Laplace log-likelihood, the exact AGQ gradient and the Newton fit that uses them, against finite
differences and against the general (quasi-Newton, difference-Hessian) path."""
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext import laplace, ordinal
from mlmext.ordinal import newton as ordinal_newton
from mlmext.formula import api as mf

from refcases import CLMM_EPS, read_data

WINE_F = "rating ~ temp + contact + (1 | judge)"
LINKS = sorted(ordinal.LINKS)


@pytest.fixture(scope="module")
def wine():
    d = read_data("wine.csv")
    rng = np.random.default_rng(0)
    d["w"] = rng.uniform(0.5, 2.0, len(d))
    d["x"] = rng.normal(size=len(d))
    return d


# formula, model arguments: intercept term, weights and an interaction, a random slope without
# intercept (z_i != 1), equidistant thresholds (alpha != thresholds)
DESIGNS = [(WINE_F, {}), ("rating ~ temp * contact + (1 | judge)", {"weights": "w"}),
           ("rating ~ temp + contact + (0 + x | judge)", {}),
           ("rating ~ temp + (1 | judge)", {"threshold": "equidistant"})]


def _model(wine, link, formula, kw):
    kw = dict(kw)
    if "weights" in kw:
        kw["weights"] = wine[kw["weights"]].to_numpy()
    return mf.clmm(formula, wine, link=link, **kw).deviance()


def _point(m, theta):
    """Parameters near the wine optimum in clmm's coordinates (alpha, beta, theta)."""
    alpha = [-1.5, 1.4, 4.1, 6.0] if m.thr.kind == "flexible" else [-1.5, 2.5]
    return np.concatenate([alpha, np.linspace(2.5, 1.5, m.k_fe), [theta]])


def _laplace_at(m, z):
    k, p = m.thr.k, m.k_fe
    ll, modes = m.loglike_parts(z[:k], z[k:k + p], z[k + p:], tol=1e-24)
    g, H, U = m._scalar_laplace().derivatives(z, modes, m.cond)
    return ll, modes, g, H, U


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("design", range(len(DESIGNS)))
def test_exact_laplace_hessian_matches_finite_differences(wine, link, design):
    m = _model(wine, link, *DESIGNS[design])
    z = _point(m, 0.7 if link == "cauchit" else 1.2)       # cauchit: keep every M_g > 0 nearby
    ll, modes, g, H, U = _laplace_at(m, z)
    # the gradient is the engine's exact Laplace gradient
    obj = ordinal._ClmmObjective(m, 1)
    np.testing.assert_allclose(g, -obj._grad_r(z[m.thr.k + m.k_fe:], modes), atol=1e-10)
    # Hessian and d u~ / dz against central differences of the exact gradient and of the modes
    h = 1e-5
    Hn, Un = np.empty_like(H), np.empty_like(U)
    for j in range(z.size):
        zp, zm = z.copy(), z.copy()
        zp[j] += h
        zm[j] -= h
        _, mp, gp, _, _ = _laplace_at(m, zp)
        _, mm, gm, _, _ = _laplace_at(m, zm)
        Hn[:, j] = (gp - gm) / (2 * h)
        Un[:, j] = (mp.u - mm.u) / (2 * h)
    np.testing.assert_allclose(H, H.T, atol=1e-10 * np.abs(H).max())
    np.testing.assert_allclose(H, Hn, atol=1e-7 * np.abs(H).max())
    np.testing.assert_allclose(U, Un, atol=1e-7)


@pytest.mark.parametrize("link", LINKS)
def test_log_interval_derivatives_match_finite_differences(link):
    """d^(j+k) log p / du^j dl^k of log p = log(F(u) - F(l)) up to the fourth order, from the
    conditional model's derivatives of p (interval_moments), against differences of log p."""
    rng = np.random.default_rng(1)
    n, K = 40, 5
    y = rng.integers(1, K - 1, n)                         # interior categories: u, l finite
    th = np.array([-1.0, 0.0, 0.7, 2.0])
    c = ordinal.CumulativeLinkConditional(y, K, link, thresholds=th)
    eta = rng.normal(size=n)
    u, lo = th[y] - eta, th[y - 1] - eta
    kap = ordinal._log_interval_derivatives(c.interval_moments(eta))
    F = ordinal.get_link(link)

    def logp(du, dl):
        return ordinal._interval_logprob(F, u + du, lo + dl)

    h = 1e-2                                              # 7-point central differences:
    steps = np.arange(-3, 4)                              # truncation and rounding ~1e-6
    for j in range(5):
        for k in range(5 - j):
            if j + k == 0:
                continue
            cj = _difference_weights(steps, j)
            ck = _difference_weights(steps, k)
            num = sum(a * b * logp(s * h, t * h) for s, a in zip(steps, cj) for t, b in zip(steps, ck)
                      if a and b) / h ** (j + k)
            np.testing.assert_allclose(kap[j, k], num, atol=2e-5 * (1 + np.abs(num).max()))
    # top and bottom categories: the derivatives in the infinite end vanish
    c = ordinal.CumulativeLinkConditional(np.array([0, K - 1]), K, link, thresholds=th)
    kap = ordinal._log_interval_derivatives(c.interval_moments(np.zeros(2)))
    assert np.all(np.isfinite(kap))
    assert np.all(kap[1:, :, 1] == 0.0) and np.all(kap[:, 1:, 0] == 0.0)


def _difference_weights(steps, order):
    """Weights of ``sum_s c_s f(x + s h) / h^order ~ f^(order)(x)``."""
    from math import factorial
    V = np.vander(steps.astype(float), increasing=True).T
    e = np.zeros(steps.size)
    e[order] = factorial(order)
    return np.linalg.solve(V, e)


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("design", range(len(DESIGNS)))
def test_exact_agq_gradient_matches_finite_differences(wine, link, design):
    m = _model(wine, link, *DESIGNS[design])
    k, p = m.thr.k, m.k_fe
    z = _point(m, 0.9)

    def agq(z):
        ll, modes = m.loglike_parts(z[:k], z[k:k + p], z[k + p:], tol=1e-24)
        return modes, m.loglike_parts(z[:k], z[k:k + p], z[k + p:], nagq=10, u0=modes.u, tol=1e-24)[0]

    modes, llq = agq(z)
    ll, g_t, g_b, g_e = laplace.agq_loglik_gradient(m.re_design, m.chol, m.cond, z[k + p:], modes, 10,
                                                    X=m.exog)
    assert abs(ll - llq) < 1e-10
    g = np.concatenate([m.thr.T.T @ g_e, g_b, g_t])
    h = 1e-5
    num = np.array([(agq(z + h * e)[1] - agq(z - h * e)[1]) / (2 * h) for e in np.eye(z.size)])
    np.testing.assert_allclose(g, num, atol=1e-7 * max(1.0, np.abs(g).max()))


def test_agq_nodes_row_by_row_and_vectorized_agree(wine):
    """Conditional models without 2-D eta (``vectorized_eta``) get the same quadrature row by row."""
    m = mf.clmm("rating ~ temp + contact + (1 + contact | judge)", wine).deviance()
    a, b, t = np.array([-1.5, 1.4, 4.1, 6.0]), np.array([3.0, 1.8]), np.array([1.2, -0.4, 0.6])
    vec, _ = m.loglike_parts(a, b, t, nagq=7)
    m.cond.vectorized_eta = False
    rows, _ = m.loglike_parts(a, b, t, nagq=7)
    assert abs(vec - rows) < 1e-10


def test_level_sums_with_empty_levels(wine):
    sl = mf.clmm(WINE_F, wine).deviance()._scalar_laplace()
    arr = np.random.default_rng(2).normal(size=(3, 4, sl.codes.size))
    fast = sl._level_sums(arr)
    sl._reduceat = False
    np.testing.assert_allclose(sl._level_sums(arr), fast, atol=1e-12)


def _fit(model, nagq, general):
    """Fit with Newton and the exact Hessian, or (``general``) with the quasi-Newton path."""
    if not general:
        return model.fit(nagq=nagq)
    # patched where it is looked up (a re-export in mlmext.ordinal would be patched in vain)
    orig = ordinal_newton._uses_scalar_laplace
    ordinal_newton._uses_scalar_laplace = lambda m: False
    try:
        obj_init = ordinal._ClmmObjective.__init__

        def init(self, m, nagq):                 # also central differences for AGQ
            obj_init(self, m, nagq)
            self.agq_grad = False
            self.analytic = nagq == 1
        ordinal._ClmmObjective.__init__ = init
        try:
            return model.fit(nagq=nagq)
        finally:
            ordinal._ClmmObjective.__init__ = obj_init
    finally:
        ordinal_newton._uses_scalar_laplace = orig


@pytest.mark.parametrize("link,nagq", [("logit", 1), ("probit", 1), ("cloglog", 1), ("cauchit", 1),
                                       ("logit", 10), ("loglog", 7)])
def test_newton_fit_agrees_with_the_general_path(wine, link, nagq):
    m = mf.clmm(WINE_F, wine, link=link)
    fast, slow = _fit(m, nagq, False), _fit(m, nagq, True)
    assert fast.converged and slow.converged
    assert fast.optim.tried[0][0].startswith("Newton") and fast.optim.tried[0][1]
    assert not any(t[0].startswith("Newton") for t in slow.optim.tried)
    # two optimizer runs: each within CLMM_EPS of the optimum (refcases), estimates within
    # 2 sqrt(CLMM_EPS) = 9e-5 of their standard errors
    assert fast.llf >= slow.llf - 1e-8
    se = np.asarray(slow.bse)
    assert np.all(np.abs(np.asarray(fast.params) - np.asarray(slow.params)) <= 1e-4 * se)
    np.testing.assert_allclose(np.asarray(fast.bse), se, rtol=1e-4)
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=1e-4)
    np.testing.assert_allclose(fast.hessian, slow.hessian, rtol=1e-3, atol=1e-4 * np.abs(slow.hessian).max())


def _small_variance_data(seed):
    rng = np.random.default_rng(seed)
    m, per = 12, 12
    g = np.repeat(np.arange(m), per)
    x = rng.normal(size=m * per)
    eta = 0.8 * x + 0.4 * rng.normal(size=m)[g] + rng.logistic(size=m * per)
    y = np.searchsorted(np.quantile(eta, [0.25, 0.5, 0.75]), eta)
    return pd.DataFrame(dict(y=y, x=x, g=[f"g{v}" for v in g]))


@pytest.mark.parametrize("seed", [4, 7])
def test_newton_with_a_small_variance(seed):
    """theta-hat ~ 0.2-0.35: from theta = 1 the first Newton steps aim below zero; cut to halve
    theta, Newton still converges to the optimum the general path finds."""
    m = mf.clmm("y ~ x + (1 | g)", _small_variance_data(seed))
    fast, slow = _fit(m, 1, False), _fit(m, 1, True)
    assert fast.optim.tried[0][1] and len(fast.optim.tried) == 1
    assert 0.1 < fast.theta[0] < 0.5
    assert fast.llf >= slow.llf - 1e-8
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(fast.bse), np.asarray(slow.bse), rtol=1e-4)


CHECKS = "second-order checks (Newton polish, Hessian from gradient differences)"


@pytest.mark.parametrize("seed", [0, 2])
def test_newton_hands_a_singular_fit_over_early(seed):
    m = mf.clmm("y ~ x + (1 | g)", _small_variance_data(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = m.fit()
    assert r.is_singular() and r.converged
    assert [t[0] for t in r.optim.tried] == ["Newton (Laplace, exact Hessian)", "BFGS (Laplace)",
                                             CHECKS]
    assert r.optim.tried[2][1]                          # the zero SD passed the inward probe
    assert r.optim.tried[0][2] <= 4                     # evaluations spent by Newton
    slow = _fit(m, 1, True)
    # each within CLMM_EPS / 2 of the optimum, plus up to 1e-8 for setting theta to its bound
    assert abs(r.llf - slow.llf) <= 1e-8 + CLMM_EPS / 2


def test_newton_hands_singular_fits_to_the_bounded_optimizer(wine):
    """Groups with identical rating mixes: the variance is estimated at zero.  Newton stops when
    theta heads for its bound; the bounded quasi-Newton method finishes (and snaps theta to 0)."""
    d = wine.sort_values(["temp", "contact", "rating"]).reset_index(drop=True)
    d["grp"] = [f"g{i % 8}" for i in range(len(d))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = mf.clmm("rating ~ temp + contact + (1 | grp)", d).fit()
    assert r.is_singular() and r.theta[0] == 0.0 and r.converged
    assert [t[0] for t in r.optim.tried] == ["Newton (Laplace, exact Hessian)", "BFGS (Laplace)",
                                             CHECKS]
    assert r.optim.tried[2][1]                          # the zero SD passed the inward probe
    assert not r.optim.tried[0][1]
    assert np.all(np.isfinite(np.asarray(r.bse)))


def test_start_params_and_hessian_false(wine):
    m = mf.clmm(WINE_F, wine)
    ref = m.fit()
    start = np.concatenate([np.asarray(ref.params), ref.theta]) * 0.9
    r = m.fit(start_params=start, hessian=False)
    assert r.converged and abs(r.llf - ref.llf) <= CLMM_EPS / 2      # two runs (refcases.CLMM_EPS)
    assert np.all(np.isnan(np.asarray(r.bse)))
