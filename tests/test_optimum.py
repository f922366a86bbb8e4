"""The default LMM fit reaches the optimum and says so honestly (issue 13).

Each case compares the default fit with a derivative-free optimizer (or a known better
point) in deviance units, the way optimizers' results can be compared: agreement to the
convergence criterion, not to the bit.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.optimize import minimize_theta, newton_polish, probe_bounds


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def test_nested_small_top_variance_reaches_the_optimum():
    # the reproducer: L-BFGS-B's relative stop left this 14 REML units short,
    # at an interior point, with converged=True
    r = np.random.default_rng(110)
    A, B, n = 130, 18, 13
    a = np.repeat(np.arange(A), B * n)
    b = np.repeat(np.arange(A * B), n)
    x = r.standard_normal(a.size)
    y = (5 + 2.5 * x + 0.1 * r.standard_normal(A)[a] + r.standard_normal(A * B)[b]
         + 2.3 * r.standard_normal(a.size))
    m = mf.lmer("y ~ x + (1 | a/b)", pd.DataFrame(dict(y=y, x=x, a=a, b=b)))
    res = m.fit()
    ref = _quiet(lambda: m.fit(method="COBYQA"))
    assert res.converged
    assert res.llf - ref.llf >= -5e-5
    assert res.optim.extras["decrement"] < 1e-7
    np.testing.assert_allclose(res.theta, ref.theta, rtol=1e-3)


@pytest.fixture(scope="module")
def three_by_three():
    """A 3x3 covariance of rank about 1: two local optima at a zero diagonal."""
    rng = np.random.default_rng(3)
    G, n = 60, 20
    g = np.repeat(np.arange(G), n)
    x1, x2 = rng.standard_normal(G * n), rng.standard_normal(G * n)
    z = rng.standard_normal(G)
    b = np.column_stack([z, 0.5 * z + 0.01 * rng.standard_normal(G),
                         -0.3 * z + 0.01 * rng.standard_normal(G)])
    y = 1 + x1 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + rng.standard_normal(G * n)
    return mf.lmer("y ~ x1 + x2 + (1 + x1 + x2 | g)", pd.DataFrame(dict(y=y, x1=x1, x2=x2, g=g)))


@pytest.mark.parametrize("reml", [True, False])
def test_boundary_point_with_a_better_mirror_image_is_left(three_by_three, reml):
    # Bounded optimizers stop at theta = (.., 0, -0.096, 0): the x1 diagonal at its bound
    # with a gradient pointing out of the box.  Its mirror image (the x1 column negated:
    # the same covariance) has descent inward, to a point 0.5-1 deviance units lower.
    m = three_by_three
    stuck = np.array([1.0098, 0.5293, -0.3308, 0.0, -0.0964, 0.0])
    res = _quiet(lambda: m.fit(reml=reml))
    bounded = _quiet(lambda: m.fit(reml=reml, method="L-BFGS-B", start_params=stuck))
    assert res.converged
    assert -2 * bounded.llf - (-2 * res.llf) > 0.4          # the boundary point is worse ...
    assert not bounded.converged                            # ... and the check says so
    assert "second-order check failed" in bounded.optim.message
    assert not bounded.check_convergence().converged
    assert res.check_convergence().converged
    assert res.theta[3] > 0.05 and res.theta[4] > 0.05      # the mirror image's optimum
    cobyqa = _quiet(lambda: m.fit(reml=reml, method="COBYQA"))
    assert res.llf - cobyqa.llf >= -1e-6
    # started at the stuck point, the default path leaves it
    again = _quiet(lambda: m.fit(reml=reml, start_params=stuck))
    assert again.converged and again.llf - res.llf >= -1e-6


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_predictor_units_do_not_matter(scale):
    # ML: the REML criterion itself moves with the units of X (by log det X'X)
    d = datasets.load("sleepstudy")
    base = mf.lmer("Reaction ~ Days + (Days | Subject)", d).fit(reml=False)
    res = mf.lmer("Reaction ~ D + (D | Subject)", d.assign(D=d.Days * scale)).fit(reml=False)
    assert res.converged
    assert abs(res.llf - base.llf) < 1e-6
    # theta of the slope row is in units of 1/D
    np.testing.assert_allclose(res.theta * np.array([1, scale, scale]), base.theta, rtol=1e-5)
    assert res.optim.feval <= base.optim.feval + 2


def test_singular_is_scale_free():
    # with Days in units of 1e-4 days the slope's theta is 2.3e-5 per unit: not a zero SD
    d = datasets.load("sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = mf.lmer("Reaction ~ D + (D | Subject)", d.assign(D=d.Days * 1e4)).fit()
    assert res.theta[2] < 1e-4
    assert not res.is_singular()
    # a variance that is zero is still reported: no group effect in the data, the REML
    # optimum of its SD is 0 (the deviance rises on both sides)
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"y": rng.standard_normal(200), "g": np.repeat(np.arange(20), 10)})
    df["y"] -= df.groupby("g")["y"].transform("mean") * 0.5
    with pytest.warns(ConvergenceWarning, match="singular"):
        sing = mf.lmer("y ~ 1 + (1 | g)", df).fit()
    assert sing.is_singular() and sing.converged and sing.theta[0] == 0.0


def test_early_stop_reports_the_decrement():
    d = datasets.load("sleepstudy")
    with pytest.warns(ConvergenceWarning, match="decrement"):
        res = mf.lmer("Reaction ~ Days + (Days | Subject)", d).fit(maxiter=1)
    assert not res.converged


# ---------------------------------------------------------------- the optimizer pieces
def _saddle(z):
    """Even in x with a maximum at x = 0 and minima at x = +-1: a gradient test at the bound
    x = 0 cannot tell it from a minimum."""
    x, y = z
    f = (x * x - 1.0) ** 2 + (y - 0.5) ** 2 + 0.3 * x * x * y
    g = np.array([4 * x * (x * x - 1.0) + 0.6 * x * y, 2 * (y - 0.5) + 0.3 * x * x])
    return f, g


def test_polish_escapes_a_saddle_on_the_bound():
    lower = np.array([0.0, -np.inf])
    z0 = np.array([0.0, 0.5])
    p = newton_polish(_saddle, z0, lower)
    assert not p.converged and p.escape is not None
    assert p.escape[1] < _saddle(z0)[0] - 0.1
    res = minimize_theta(lambda z: _saddle(z)[0], z0, lower, grad=_saddle)
    assert res.success
    fx, gx = _saddle(res.x)
    assert res.x[0] > 0.9 and np.max(np.abs(gx)) < 1e-6
    assert any("second-order" in t[0] for t in res.tried)


def test_probe_bounds_finds_descent_only_where_there_is_some():
    lower = np.array([0.0, -np.inf])
    z = np.array([0.0, 0.5])
    f, g = _saddle(z)
    H = np.array([[-4.0 + 0.3, 0.0], [0.0, 2.0]])
    esc, probed, nfev = probe_bounds(_saddle, z, f, g, H, lower)
    assert esc is not None and esc[1] < f
    assert probed[0]["index"] == 0 and probed[0]["curvature"] < 0 and probed[0]["descent"]
    # a true boundary minimum: f = x^2 + (y - 0.5)^2 at x = 0
    bowl = lambda v: (v[0] ** 2 + (v[1] - 0.5) ** 2, np.array([2 * v[0], 2 * (v[1] - 0.5)]))
    esc, probed, _ = probe_bounds(bowl, z, 0.0, np.zeros(2), np.diag([2.0, 2.0]), lower)
    assert esc is None and len(probed) == 1
    assert probed[0]["curvature"] == 2.0 and not probed[0]["descent"]
    p = newton_polish(bowl, z, lower)
    assert p.converged and p.decrement < 1e-12


def test_clmm_started_on_the_bound_reaches_the_interior_optimum():
    # theta = 0: the gradient in theta is 0 there; the checks probe inward
    wine = datasets.load("wine")
    m = mf.clmm("rating ~ temp + contact + (1 | judge)", wine)
    ref = m.fit()
    start = np.concatenate([np.asarray(ref.params), [0.0]])
    res = _quiet(lambda: m.fit(start_params=start))
    assert res.converged and res.theta[0] > 0.5
    assert abs(res.llf - ref.llf) < 1e-6
    assert any(t[0].startswith("second-order checks") for t in res.optim.tried)


def test_rounding_in_a_flat_direction_is_not_a_saddle():
    # the difference Hessian of a gradient with rounding-level wiggles has a small negative
    # eigenvalue along a flat direction; the deviance along it shows no descent: converged
    def fg(v):
        x, y = v
        return (x - 1.0) ** 2, np.array([2 * (x - 1.0), 1e-9 * np.sin(1e7 * y)])

    p = newton_polish(fg, np.array([1.0, 0.0]), np.array([-np.inf, -np.inf]))
    assert p.min_eigenvalue < 0
    assert p.converged and p.escape is None


def test_mirror_probe_at_a_bounded_kkt_point():
    # sleepstudy ML at theta = (0, -b, c) with (b, c) optimal given the zero intercept SD: a
    # KKT point of the bounded problem (gradient +6.65 pushing into the bound) 22 deviance
    # units above the optimum.  Probed inward directly and from its mirror image (the
    # intercept's column negated: gradient S g, Hessian S H S), both find the descent.
    from scipy import optimize
    from mlmext.optimize import fd_hessian
    m = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    dev = m.deviance(False)
    r = optimize.minimize(lambda v: dev.value(np.r_[0.0, v]), [0.5, 0.2], method="Nelder-Mead",
                          options={"xatol": 1e-10, "fatol": 1e-12})
    x = np.r_[0.0, -r.x[0], r.x[1]]
    f, g = dev.value_and_grad(x)
    assert g[0] > 5 and np.all(np.abs(g[1:]) < 1e-2)
    H, _ = fd_hessian(dev.value_and_grad, x, g, dev.lower)
    best, probed, _ = probe_bounds(dev.value_and_grad, x, f, g, H, dev.lower,
                                   mirror=m.re_design.column_mirrors())
    assert [p["mirrored"] for p in probed] == [False, True]
    assert probed[1]["slope"] == pytest.approx(-probed[0]["slope"], rel=1e-12) and probed[1]["slope"] < 0
    assert all(p["descent"] for p in probed)
    assert f - best[1] > 10
    opt = m.fit(reml=False)
    assert f - (-2 * opt.llf) > 20


def test_clmm_converged_is_the_checks_verdict():
    wine = datasets.load("wine")
    m = mf.clmm("rating ~ temp + contact + (1 | judge) + (1 | bottle)", wine)
    ref = m.fit()
    for maxiter in (8, 12):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            res = m.fit(maxiter=maxiter)
        warned = any("did not converge" in str(w.message) for w in rec)
        assert res.converged == (not warned)
        np.testing.assert_allclose(res.optim.final[-2:], res.theta)     # the judged point
        if res.converged:
            assert abs(res.llf - ref.llf) < 1e-6


def test_newton_stops_at_the_rounding_level_of_the_deviance():
    """Large data evaluate the deviance to ~1e-11 relative (2e-6 on STAR's 2.4e5): once the
    decrement is below check_tol, Newton tries one full step and stops, instead of
    backtracking through the noise (STAR took 72 evaluations there, now 8)."""
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    xs = np.array([0.3, -0.2])
    calls = {"fg": 0, "f": 0}

    def noise(x):                       # deterministic, non-smooth, 1e-11 relative
        return 2.4e5 * 1e-11 * np.sin(1e9 * x.sum())

    def f(x):
        calls["f"] += 1
        d = x - xs
        return 2.4e5 + 0.5 * d @ A @ d + noise(x)

    def fg(x):
        calls["fg"] += 1
        return f(x), A @ (x - xs)

    x0 = xs + np.array([1e-4, -2e-4])            # decrement ~1e-7: certified, not below tol
    p = newton_polish(fg, x0, np.full(2, -np.inf), tol=1e-12, check_tol=1e-7, value=f)
    assert p.converged and p.decrement < 1e-7
    assert p.nfev <= 6, p.nfev                  # the Hessian (2), a step or two, no long search
    assert abs(p.x - xs).max() < 1e-3
