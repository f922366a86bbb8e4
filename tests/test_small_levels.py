"""The level-by-level evaluator of small one-grouping-factor LMMs (issue 14) against the dense
storage it stands in for during the fit.

* :class:`~mlmext.linalg.small_levels.OneBlockLevels`' criterion, gradient and exact Hessian
  against :class:`~mlmext.linalg.small.SmallDenseFactor`'s (exact formulas, tested there
  against central differences) at fixed thetas: one vector block (q = 2, 3), a scalar block,
  a diagonal template, no fixed effects, prior weights, REML and ML.  Deterministic algebra
  in different operation orders: relative 1e-9.
* its Hessian against central differences of its own gradient (error ~h^2: relative 1e-5).
* its state at a theta (beta, u, sigma, criterion, cov_beta) against the dense factor's.
* a new response (``with_response``) against the evaluator built for a model with that
  response; the original untouched.
* the fit from lme4's start runs Newton first and reaches the optimum of the L-BFGS-B path.
"""
import numpy as np
import pytest

from mlmext.formula import api as mf
from mlmext.linalg.small import SmallDenseFactor

from refcases import read_data

RTOL = 1e-9

CASES = {
    "sleepstudy": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)"),
    "diagonal": ("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)"),
    "dyestuff": ("dyestuff.csv", "Yield ~ 1 + (1 | Batch)"),
    "machines": ("machines.csv", "score ~ Machine + (Machine | Worker)"),
    "orthodont": ("orthodont.csv", "distance ~ age + Sex + (age | Subject)"),
    "no_fixed": ("sleepstudy.csv", "Reaction ~ 0 + (Days | Subject)"),
}


def _model(case, weighted=False):
    fname, formula = CASES[case]
    d = read_data(fname)
    if weighted:
        return mf.lmer(formula, d.assign(w=np.linspace(0.5, 2.0, len(d))), weights="w")
    return mf.lmer(formula, d)


def _thetas(m):
    rng = np.random.default_rng(3)
    des = m.re_design
    out = []
    for _ in range(3):
        th = des.theta_start / des.theta_units() * rng.uniform(0.3, 1.5, des.ntheta)
        off = ~np.isfinite(des.lower)
        th[off] = rng.normal(0, 0.3, off.sum()) / des.theta_units()[off]
        out.append(th)
    zero = out[0].copy()                         # a zero standard deviation: still exact
    zero[des.blocks[0].t_idx[-1]] = 0.0
    return out + [zero]


def _dense(m, reml):
    dev = m.deviance(reml)
    dev._factor = SmallDenseFactor(m.re_design.blocks, m._XY, m.weights).workspace()
    assert dev._levels is None and dev.has_hessian
    return dev


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max(initial=0)))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_levels_equal_the_dense_storage(case, reml, weighted):
    m = _model(case, weighted)
    dev, ref = m.deviance(reml), _dense(m, reml)
    assert dev._levels is not None and dev.cheap_hessian and not ref.cheap_hessian
    for th in _thetas(m):
        f, g, H = dev.value_grad_hess(th)
        f0, g0, H0 = ref.value_grad_hess(th)
        assert f == pytest.approx(f0, rel=1e-12)
        _close(g, g0)
        _close(H, H0)
        assert dev.value(th) == f and dev.value_and_grad(th)[0] == f
        a, b = dev.at(th), ref.at(th)
        assert a.criterion == pytest.approx(b.criterion, rel=1e-12)
        assert a.sigma == pytest.approx(b.sigma, rel=RTOL)
        _close(a.beta, b.beta)
        _close(a.u, b.u)
        _close(a.cov_beta, b.cov_beta)


@pytest.mark.parametrize("case", ["sleepstudy", "machines", "dyestuff"])
def test_levels_hessian_is_the_derivative_of_their_gradient(case):
    m = _model(case)
    dev = m.deviance()
    th = _thetas(m)[1]
    H = dev.value_grad_hess(th)[2]
    num = np.empty_like(H)
    for k in range(th.size):
        h = 1e-5 * max(1.0, abs(th[k]))
        e = np.zeros(th.size)
        e[k] = h
        num[:, k] = (dev.value_and_grad(th + e)[1] - dev.value_and_grad(th - e)[1]) / (2 * h)
    _close(H, num, rtol=1e-5)


def test_levels_with_a_new_response():
    d = read_data("sleepstudy.csv")
    d = d.assign(w=np.linspace(0.5, 2.0, len(d)), off=np.linspace(-3.0, 3.0, len(d)))
    f = "Reaction ~ Days + (Days | Subject)"
    m = mf.lmer(f, d, weights="w", offset="off")
    r = m.fit()
    y = np.asarray(r.simulate(nsim=1, seed=5)).ravel()
    before = m._small_levels().Cg.copy()
    clone = m._with_response(y)
    built = mf.lmer(f, d.assign(Reaction=y), weights="w", offset="off")
    a, b = clone._small_levels(), built._small_levels()
    assert a is not m._small_levels()
    _close(a.Cg, b.Cg, 1e-12)
    _close(a.V, b.V, 1e-12)
    np.testing.assert_array_equal(m._small_levels().Cg, before)
    for reml in (True, False):
        for th in _thetas(m):
            fa, ga, Ha = clone.deviance(reml).value_grad_hess(th)
            fb, gb, Hb = built.deviance(reml).value_grad_hess(th)
            assert fa == pytest.approx(fb, rel=1e-12)
            _close(ga, gb)
            _close(Ha, Hb)


def test_level_sums_by_bincount(monkeypatch):
    """Many rows x levels: the level sums by bincount instead of the indicator product."""
    from mlmext.linalg import small_levels
    m = _model("sleepstudy", weighted=True)
    ind = m._small_levels()
    monkeypatch.setattr(small_levels, "INDICATOR_MAX", 0)
    blk = m.re_design.blocks[0]
    bc = small_levels.OneBlockLevels.from_rows(blk, m._XY, m.weights, m.re_design.ntheta)
    assert bc._rows[1] is None and ind._rows[1] is not None
    _close(bc.Ag, ind.Ag, 1e-12)
    _close(bc.Cg, ind.Cg, 1e-12)
    y = m._XY[:, -1] * 1.5 + 1.0
    _close(bc.with_response(y).Cg, ind.with_response(y).Cg, 1e-12)


@pytest.mark.parametrize("case", ["sleepstudy", "orthodont", "diagonal"])
def test_fit_runs_newton_first_to_the_lbfgsb_optimum(case, monkeypatch):
    """From lme4's start, Newton with the exact Hessian first; the same optimum (criterion to
    the checks' tolerance) as the L-BFGS-B path, which the dense storage takes."""
    m = _model(case)
    for reml in (True, False):
        r = m.fit(reml=reml)
        assert r.converged
        assert r.optim.tried[0][0].startswith("Newton from the start (exact Hessian)")
        from mlmext.objective.lmm import LMMDeviance
        with monkeypatch.context() as mp:
            mp.setattr(LMMDeviance, "cheap_hessian", property(lambda self: False))
            r0 = m.fit(reml=reml)
        assert r0.optim.tried[0][0] == "L-BFGS-B" and r0.converged
        assert abs(r.criterion - r0.criterion) < 1e-7
        se = np.asarray(r0.bse_fe)
        assert np.all(np.abs(np.asarray(r.fe_params) - np.asarray(r0.fe_params)) < 2e-3 * se)


def test_a_start_without_positive_curvature():
    """lme4's start where the Hessian is not positive definite (a fit that ends at a zero
    standard deviation): Newton along the |eigenvalues| from there, to the boundary estimate
    R has (theta 0), which passes the checks (positive curvature there)."""
    m = mf.lmer("y ~ x + (1 | g)", read_data("singular.csv"))
    dev = m.deviance()
    start, s = m._start_theta(True)
    H = dev.value_grad_hess(start)[2]
    assert np.linalg.eigvalsh(H).min() < 0
    with pytest.warns(UserWarning, match="singular"):
        r = m.fit()
    assert r.optim.tried[0][0].startswith("Newton from the start (exact Hessian)")
    assert r.converged and r.theta[0] == 0.0
    assert r.criterion == pytest.approx(284.530772606086, abs=1e-6)      # lme4's REML criterion


@pytest.mark.filterwarnings("ignore:boundary")
def test_a_refit_runs_newton_from_the_fits_theta():
    """A refit to a simulated response (its start far from the new optimum) runs Newton with
    the exact Hessian from the fit's theta and ends where a fresh fit ends."""
    m = _model("sleepstudy")
    r = m.fit()
    Y = np.asarray(r.simulate(nsim=6, seed=3))
    for k in range(Y.shape[1]):
        a = r.refit(Y[:, k], start_params=r.theta)     # (the fit's path: not the lockstep's)
        fresh = m._with_response(Y[:, k]).fit()
        assert a.converged and a.optim.tried[0][0].startswith("Newton from the start")
        assert abs(a.criterion - fresh.criterion) < 1e-7


def test_two_by_two_inverse_agrees_with_the_stacked_path():
    """_spd_inverse's q = 2 test by minima: the inverses and log-determinants of
    _spd_stack's closed form bit for bit where every block is positive definite, None where
    one is not (a negative determinant, a negative diagonal, a NaN)."""
    from mlmext.linalg.small_levels import _spd_inverse, _spd_stack
    rng = np.random.default_rng(3)
    B = rng.normal(size=(30, 2, 2))
    M = (B @ B.transpose(0, 2, 1) + 0.1 * np.eye(2)).reshape(30, 4)
    Mi, ld = _spd_inverse(M, 2)
    Mi0, ld0, ok = _spd_stack(M, 2)
    assert ok.all()
    np.testing.assert_array_equal(Mi, Mi0)
    np.testing.assert_array_equal(ld, ld0)
    np.testing.assert_allclose(Mi.reshape(30, 2, 2), np.linalg.inv(M.reshape(30, 2, 2)),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ld, np.linalg.slogdet(M.reshape(30, 2, 2))[1], rtol=1e-12)
    for bad in ([1.0, 2.0, 2.0, 1.0], [-1.0, 0.0, 0.0, -1.0], [np.nan, 0.0, 0.0, 1.0]):
        M2 = M.copy()
        M2[7] = bad
        assert _spd_inverse(M2, 2) is None
        assert not _spd_stack(M2, 2)[2][7]
