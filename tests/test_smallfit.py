"""Small fits and refits (issue 14): the dense storage of small systems and the refit that
rebuilds nothing, each against the path it replaces.

* :class:`~mlmext.linalg.small.SmallDenseFactor` against the structured storage
  (``BlockedCholesky``) at fixed thetas: every quantity of the factor interface, on one vector
  block, one scalar block, crossed and nested blocks, with prior weights.  Deterministic
  algebra: tight tolerances (rounding of different operation orders).
* its response cache (``with_response``): the same cross-products as building it for the new
  response; the original untouched.
* ``model._with_response(y)`` (what ``refit`` and the simulations use) against a model built
  from the formula on the data with the new response: same objective at the optimum (the
  optimizer's tolerance) and the same state at a fixed theta (rounding).
"""
import concurrent.futures

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf
from mlmext.linalg import BlockedCholesky
from mlmext.linalg.small import SMALL_ORDER, SmallDenseFactor

from refcases import read_data

RTOL = 1e-9

CASES = {
    "sleepstudy": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)"),
    "dyestuff": ("dyestuff.csv", "Yield ~ 1 + (1 | Batch)"),
    "penicillin": ("penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": ("pastes.csv", "strength ~ 1 + (1 | batch/cask)"),
    "uncorrelated": ("sleepstudy.csv", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"),
    "machines": ("machines.csv", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
    "three_by_three": ("slopes3.csv", "y ~ x1 + x2 + (x1 + x2 | g)"),     # 15 groups: q = 3
}


def _model(case, weighted=False):
    fname, formula = CASES[case]
    d = read_data(fname)
    if case == "three_by_three":
        d = d[d.g.isin(sorted(set(d.g))[:15])].reset_index(drop=True)
    if weighted:
        d = d.assign(w=np.linspace(0.5, 2.0, len(d)))
        return mf.lmer(formula, d, weights="w")
    return mf.lmer(formula, d)


def _theta(m, seed):
    rng = np.random.default_rng(seed)
    des = m.re_design
    th = des.theta_start / des.theta_units() * rng.uniform(0.3, 1.5, des.ntheta)
    off = ~np.isfinite(des.lower)
    th[off] = rng.normal(0, 0.3, off.sum()) / des.theta_units()[off]
    return th


def _close(a, b, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale, err_msg=what)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_small_dense_factor_matches_the_structured_storage(case, weighted):
    m = _model(case, weighted)
    blocks, p = m.re_design.blocks, m.k_fe
    assert m._small_factor() is not None                 # these models are small
    for seed in (1, 2):
        lams = m.re_design.lambdas(_theta(m, seed))
        ref = BlockedCholesky(blocks, m._XY, m.weights).update(lams)
        small = SmallDenseFactor(blocks, m._XY, m.weights).update(lams)
        assert type(ref) is not SmallDenseFactor
        for name in ("logdet_zz", "logdet_xx", "r2"):
            _close(getattr(small, name), getattr(ref, name), name)
        _close(small.cov_beta_unscaled(), ref.cov_beta_unscaled(), "cov_beta_unscaled")
        u, beta = small.solve()
        u0, beta0 = ref.solve()
        _close(u, u0, "u")
        _close(beta, beta0, "beta")
        for k in (0, p):
            for a, b in zip(small.inverse_block_sums(k), ref.inverse_block_sums(k)):
                _close(a, b, f"inverse_block_sums({k})")
        for a, b in zip(small.ztres(u0, beta0, lams), ref.ztres(u0, beta0, lams)):
            _close(a, b, "ztres")
        for a, b in zip(small.condvar_u(), ref.condvar_u()):
            _close(a, b, "condvar_u")
        v = np.random.default_rng(seed).normal(size=u.size)
        _close(small.solve_re(v), ref.solve_re(v), "solve_re")
        (ts, rs), (t0, r0) = small.local_inverse(), ref.local_inverse()
        for a, b in zip(ts + rs, t0 + r0):
            _close(a, b, "local_inverse")
        _close(small.M1, ref.M1, "M1")


def test_small_dense_factor_rejects_an_indefinite_system():
    m = _model("sleepstudy")
    lams = m.re_design.lambdas(np.array([np.nan, 0.0, 1.0]))
    with pytest.raises(np.linalg.LinAlgError):
        SmallDenseFactor(m.re_design.blocks, m._XY, m.weights).update(lams)
    assert m.deviance().value(np.array([np.nan, 0.0, 1.0])) == np.inf


def test_only_small_systems_are_held_dense():
    m = _model("sleepstudy")
    assert isinstance(m.deviance()._factor, SmallDenseFactor)
    # 18 subjects x 2 effects + 2 + 1 = 39; 50 subjects x 2 effects is above the bound
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(50), 4)
    x = np.tile(np.arange(4.0), 50)
    y = 1 + 0.5 * x + rng.normal(size=50)[g] + rng.normal(size=50)[g] * 0.3 * x + rng.normal(size=200)
    big = mf.lmer("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}))
    assert big.re_design.nre + big.k_fe + 1 > SMALL_ORDER
    assert big._small_factor() is None
    assert not isinstance(big.deviance()._factor, SmallDenseFactor)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", ["sleepstudy", "penicillin", "pastes"])
def test_response_cache_is_the_factor_of_the_new_response(case, weighted):
    m = _model(case, weighted)
    blocks = m.re_design.blocks
    f = SmallDenseFactor(blocks, m._XY, m.weights)
    A_before = f.A.copy()
    y = m._XY[:, -1] + np.random.default_rng(3).normal(size=m._XY.shape[0]) * np.std(m._XY[:, -1])
    XY = m._XY.copy()
    XY[:, -1] = y
    new = f.with_response(y)
    fresh = SmallDenseFactor(blocks, XY, m.weights)
    _close(new.A, fresh.A, "A")
    assert np.array_equal(f.A, A_before)                  # the cached factor is untouched
    assert not np.array_equal(new.A[-1], f.A[-1])         # the response's row changed
    lams = m.re_design.lambdas(_theta(m, 4))
    _close(new.update(lams).r2, fresh.update(lams).r2, "r2")


@pytest.mark.filterwarnings("ignore:boundary")      # seed 7's ML fit of sleepstudy is singular
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", ["sleepstudy", "penicillin"])
def test_model_with_a_new_response_equals_one_built_from_the_formula(case, reml):
    fname, formula = CASES[case]
    d = read_data(fname)
    m = mf.lmer(formula, d)
    r = m.fit(reml=reml)
    resp = formula.split("~")[0].strip()
    y = np.asarray(r.simulate(nsim=1, seed=7)).ravel()
    clone = m._with_response(y)
    built = mf.lmer(formula, d.assign(**{resp: y}))
    np.testing.assert_array_equal(clone.endog, built.endog)
    np.testing.assert_array_equal(clone._XY, built._XY)
    assert clone.re_design is m.re_design                 # nothing rebuilt
    # the same objective and state at a fixed theta (rounding), and at the optimum
    th = np.asarray(r.theta)
    a, b = clone.deviance(reml).at(th), built.deviance(reml).at(th)
    assert a.criterion == pytest.approx(b.criterion, rel=1e-12, abs=1e-9)
    _close(a.beta, b.beta, "beta")
    _close(a.cov_beta, b.cov_beta, "cov_beta")
    ra, rb = clone.fit(reml=reml, start_params=th), built.fit(reml=reml)
    assert ra.converged and rb.converged
    assert abs(ra.criterion - rb.criterion) < 1e-7          # both pass the checks (decrement 1e-7)
    assert np.max(np.abs(ra.fe_params - rb.fe_params) / rb.bse_fe) < 1e-3
    # the original model is untouched: its own response and fit
    np.testing.assert_array_equal(m.endog, np.asarray(d[resp], dtype=float))
    assert m.fit(reml=reml).criterion == pytest.approx(r.criterion, abs=1e-9)
    assert r.model.data.orig_endog.iloc[0] == d[resp].iloc[0]
    assert clone.data.orig_endog.iloc[0] == y[0]
    assert list(clone.data.orig_endog.index) == list(m.data.orig_endog.index)


def test_model_with_a_new_response_checks_it():
    m = _model("sleepstudy")
    with pytest.raises(ValueError, match="shape"):
        m._with_response(np.ones(179))
    with pytest.raises(ValueError, match="non-finite"):
        m._with_response(np.full(180, np.nan))
    with pytest.raises(ValueError, match="constant"):
        m._with_response(np.ones(180))


def test_refits_from_several_threads_agree_with_serial_ones():
    m = _model("sleepstudy")
    r = m.fit()
    ys = [np.asarray(r.simulate(nsim=1, seed=s)).ravel() for s in range(6)]
    serial = [r.refit(y).criterion for y in ys]
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        threaded = list(ex.map(lambda y: r.refit(y).criterion, ys))
    np.testing.assert_array_equal(threaded, serial)


# ------------------------------------------------------------------ the design-info cache
def _built(formula, data, cached, monkeypatch):
    from mlmext.frame import design_cache
    monkeypatch.setattr(design_cache, "ENABLED", cached)
    return mf.lmer(formula, data)


def _same_model(a, b):
    np.testing.assert_array_equal(a.exog, b.exog)
    np.testing.assert_array_equal(a.endog, b.endog)
    assert a.exog_names == b.exog_names
    for ta, tb in zip(a.re_design.terms, b.re_design.terms):
        np.testing.assert_array_equal(ta.X, tb.X)
        np.testing.assert_array_equal(ta.codes, tb.codes)
        assert ta.colnames == tb.colnames and ta.levels == tb.levels
    fa, fb = a.formula_info["fixed_spec"], b.formula_info["fixed_spec"]
    assert fa.column_names == fb.column_names
    assert [fi.categories for fi in fa.factor_infos.values()] == \
        [fi.categories for fi in fb.factor_infos.values()]


FORMULAS = ["Reaction ~ Days + (Days | Subject)",
            "Reaction ~ Days * grp + (1 | Subject)",
            "Reaction ~ Days + flag + (1 | Subject)",
            "Reaction ~ np.log(Days + 1) + (1 | Subject)",   # a function: never cached
            "Reaction ~ C(Days) + (1 | Subject)"]             # levels from the values: never


@pytest.mark.parametrize("formula", FORMULAS)
def test_design_cache_gives_patsys_own_design(formula, monkeypatch):
    from mlmext.frame import design_cache
    d = read_data("sleepstudy.csv")
    d = d.assign(grp=pd.Categorical(np.where(d.Days < 5, "lo", "hi"), categories=["lo", "hi"]),
                 flag=d.Days % 2 == 0)
    design_cache.clear()
    ref = _built(formula, d, False, monkeypatch)
    first = _built(formula, d, True, monkeypatch)     # learned and kept (or not cacheable)
    again = _built(formula, d, True, monkeypatch)     # from the cache
    _same_model(first, ref)
    _same_model(again, ref)
    cacheable = "log" not in formula and "C(" not in formula
    assert (again.formula_info["fixed_spec"] is first.formula_info["fixed_spec"]) == cacheable
    assert again.fit().criterion == pytest.approx(ref.fit().criterion, abs=1e-12)


def test_design_cache_is_keyed_by_what_patsy_learns(monkeypatch):
    """A changed category set, order or column type gives other design infos."""
    from mlmext.frame import design_cache
    d = read_data("sleepstudy.csv")
    d = d.assign(grp=pd.Categorical(np.where(d.Days < 5, "lo", "hi"), categories=["lo", "hi"]))
    f = "Reaction ~ Days + grp + (1 | Subject)"
    design_cache.clear()
    a = _built(f, d, True, monkeypatch)
    assert a.exog_names == ["Intercept", "grp[T.hi]", "Days"]
    # categories in the other order: the other reference level
    d2 = d.assign(grp=d.grp.cat.reorder_categories(["hi", "lo"]))
    b = _built(f, d2, True, monkeypatch)
    assert b.exog_names == ["Intercept", "grp[T.lo]", "Days"]
    _same_model(b, _built(f, d2, False, monkeypatch))
    # a third category, used: a third column; unused: dropped as before
    d3 = d.assign(grp=pd.Categorical(np.where(d.Days < 3, "a", np.where(d.Days < 6, "lo", "hi")),
                                     categories=["lo", "hi", "a"]))
    c = _built(f, d3, True, monkeypatch)
    assert c.exog_names == ["Intercept", "grp[T.hi]", "grp[T.a]", "Days"]
    _same_model(c, _built(f, d3, False, monkeypatch))
    d4 = d.assign(grp=d.grp.cat.add_categories(["unused"]))
    assert _built(f, d4, True, monkeypatch).exog_names == a.exog_names
    # a number column as strings: levels from the values, not cached
    d5 = d.assign(Days=d.Days.astype(str))
    e = _built("Reaction ~ Days + (1 | Subject)", d5, True, monkeypatch)
    assert len(e.exog_names) == 10                    # intercept + 9 day levels
    # the cache holds at most MAX_ENTRIES design infos
    assert len(design_cache._cache) <= design_cache.MAX_ENTRIES


def _level_constant_by_extremes(X, codes):
    """The per-level max - min of every column (the definition, as the code did before)."""
    m = int(codes.max()) + 1
    scale = np.abs(X).max(axis=0)
    out = []
    for j in range(X.shape[1]):
        hi = np.full(m, -np.inf)
        lo = np.full(m, np.inf)
        with np.errstate(invalid="ignore"):
            np.maximum.at(hi, codes, X[:, j])
            np.minimum.at(lo, codes, X[:, j])
        out.append(np.all(hi - lo <= 1e-12 * (scale[j] if scale[j] > 0 else 1.0)))
    return np.array(out)


def test_level_constant_shortcuts_agree_with_the_extremes():
    from mlmext.identifiability import _level_constant
    rng = np.random.default_rng(8)
    codes = np.repeat(np.arange(6), 5)
    rng.shuffle(codes)
    per_level = rng.normal(size=6)
    X = np.column_stack([np.ones(30), per_level[codes], rng.normal(size=30),
                         per_level[codes] + 1e-14 * rng.normal(size=30),    # within rounding
                         per_level[codes] + 1e-6 * rng.normal(size=30),     # not
                         np.where(codes == 2, np.nan, per_level[codes]),    # NaN: not constant
                         np.zeros(30)])
    expect = _level_constant_by_extremes(X, codes)
    np.testing.assert_array_equal(_level_constant(X, codes), expect)
    np.testing.assert_array_equal(expect, [True, True, False, True, False, False, True])


def test_theta_units_are_computed_once_and_handed_out_as_copies():
    m = _model("sleepstudy")
    des = m.re_design
    u = des.theta_units()
    rms = np.sqrt(np.mean(des.terms[0].X ** 2, axis=0))
    np.testing.assert_allclose(u, [rms[0], rms[1], rms[1]], rtol=1e-15)
    u[:] = -1.0                                        # a caller's copy
    np.testing.assert_allclose(des.theta_units(), [rms[0], rms[1], rms[1]], rtol=1e-15)


# ------------------------------------------------------------------ the lean L-BFGS-B driver
def _rosen(x):
    from scipy.optimize import rosen, rosen_der
    return rosen(x), rosen_der(x)


@pytest.mark.parametrize("lower", [np.full(4, -np.inf), np.array([0.0, -np.inf, 1.2, 0.0])])
def test_lean_lbfgsb_is_scipys_lbfgsb(lower):
    from scipy import optimize
    from mlmext.optimize.lbfgsb import lbfgsb
    calls = {"lean": [], "scipy": []}

    def fg(who):
        def f(x):
            calls[who].append(x.copy())
            return _rosen(x)
        return f
    x0 = np.array([-1.2, 1.0, 0.5, 2.0])
    for ftol in (2.2e-9, 1e-7):
        calls = {"lean": [], "scipy": []}
        a = lbfgsb(fg("lean"), x0, lower, maxiter=200, maxfun=200, ftol=ftol, gtol=1e-5)
        bounds = optimize.Bounds(np.where(np.isfinite(lower), lower, -np.inf), np.full(4, np.inf))
        b = optimize.minimize(fg("scipy"), x0, method="L-BFGS-B", jac=True, bounds=bounds,
                              options={"maxiter": 200, "maxfun": 200, "ftol": ftol, "gtol": 1e-5})
        np.testing.assert_array_equal(a.x, b.x)            # the same iterates, bit for bit
        assert a.fun == b.fun and a.nfev == b.nfev and a.nit == b.nit and a.success == b.success
        np.testing.assert_array_equal(np.array(calls["lean"]), np.array(calls["scipy"]))
    # an iteration limit stops both alike
    a = lbfgsb(fg("lean"), x0, lower, maxiter=3, maxfun=200)
    b = optimize.minimize(fg("scipy"), x0, method="L-BFGS-B", jac=True, bounds=bounds,
                          options={"maxiter": 3, "maxfun": 200})
    np.testing.assert_array_equal(a.x, b.x)
    assert not a.success and not b.success and a.nit == b.nit == 3


def test_lean_lbfgsb_on_the_deviance_is_scipys():
    from scipy import optimize
    from mlmext.optimize.lbfgsb import lbfgsb
    m = _model("sleepstudy")
    dev = m.deviance()
    start = m.re_design.theta_start
    lower = np.full(3, -np.inf)
    a = lbfgsb(dev.value_and_grad, start, lower, ftol=1e-7, gtol=1e-5)
    b = optimize.minimize(dev.value_and_grad, start, method="L-BFGS-B", jac=True,
                          bounds=optimize.Bounds(lower, np.full(3, np.inf)),
                          options={"ftol": 1e-7, "gtol": 1e-5})
    np.testing.assert_array_equal(a.x, b.x)
    assert a.fun == b.fun and a.nfev == b.nfev


# ------------------------------------------------------------------ the exact Hessian
def _structured(m, reml):
    """The model's deviance on the structured storage (the path small systems no longer take)."""
    dev = m.deviance(reml)
    dev._factor = m._cross_products().workspace()
    assert not dev.has_hessian
    return dev


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_exact_hessian_is_the_derivative_of_the_gradient(case, reml):
    """value_grad_hess against value_and_grad (the tested gradient) and its central differences
    (error ~h^2: relative 1e-6 and better at these steps)."""
    m = _model(case)
    dev = m.deviance(reml)
    assert dev.has_hessian
    for seed in (1, 2):
        th = _theta(m, seed)
        v, g, H = dev.value_grad_hess(th)
        v0, g0 = _structured(m, reml).value_and_grad(th)     # the structured storage's gradient
        assert v == pytest.approx(v0, rel=1e-11)        # two orders of operations
        np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-9 * np.abs(g0).max())
        np.testing.assert_allclose(dev.value_and_grad(th)[1], g0, rtol=1e-8,
                                   atol=1e-9 * np.abs(g0).max())
        Hfd = np.empty_like(H)
        for i in range(th.size):
            h = 1e-5 * max(1.0, abs(th[i]))
            tp, tm = th.copy(), th.copy()
            tp[i] += h
            tm[i] -= h
            Hfd[:, i] = (dev.value_and_grad(tp)[1] - dev.value_and_grad(tm)[1]) / (2 * h)
        np.testing.assert_allclose(H, Hfd, rtol=1e-5, atol=1e-6 * np.abs(Hfd).max())
        np.testing.assert_array_equal(H, H.T)


def test_exact_hessian_at_a_zero_standard_deviation():
    """Where the template has a zero diagonal the gradient formula of value_and_grad needs
    differences; the dense derivatives need none and agree with them."""
    m = _model("sleepstudy")
    dev = m.deviance()
    th = np.array([0.9, 0.05, 0.0])
    v, g, H = dev.value_grad_hess(th)
    g0 = _structured(m, True).value_and_grad(th)[1]          # central differences there
    np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-5 * np.abs(g0).max())
    np.testing.assert_allclose(dev.value_and_grad(th)[1], g, rtol=1e-12, atol=1e-12)
    assert abs(g[2]) < 1e-8 * np.abs(g).max()          # even in that diagonal: no slope
    v, g, H = dev.value_grad_hess(np.array([np.nan, 0.0, 1.0]))
    assert v == np.inf and np.isnan(H).all()


def test_large_systems_have_no_exact_hessian():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(50), 4)
    x = np.tile(np.arange(4.0), 50)
    y = 1 + 0.5 * x + rng.normal(size=50)[g] + rng.normal(size=200)
    dev = mf.lmer("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})).deviance()
    assert not dev.has_hessian
    with pytest.raises(NotImplementedError, match="small systems"):
        dev.value_grad_hess(np.ones(3))


@pytest.mark.parametrize("case", ["sleepstudy", "penicillin", "pastes"])
def test_warm_start_reaches_the_optimum_of_a_cold_start(case):
    """A fit started at a theta (Newton first) ends where a fit from lme4's start ends, and says
    how it got there; a poor start falls back to L-BFGS-B and still passes the checks."""
    m = _model(case)
    cold = m.fit(reml=False)
    warm = m.fit(reml=False, start_params=m.fit().theta)        # an ML refit of the REML fit
    assert cold.converged and warm.converged
    assert abs(warm.criterion - cold.criterion) < 1e-7
    assert warm.optim.tried[0][0].startswith("Newton from the start (exact Hessian)")
    assert warm.optim.nfev < cold.optim.nfev
    far = m.fit(start_params=np.full(m.re_design.ntheta, 5.0) * (np.isfinite(m.re_design.lower)))
    assert far.converged
    assert abs(far.criterion - m.fit().criterion) < 1e-7


def test_fixed_effect_index_is_built_once_and_copied():
    from mlmext.printing import param_index
    m = _model("sleepstudy")
    r = m.fit()
    a, b = r.fe_params, r.bse_fe
    ref = param_index(m.exog_names)
    for s in (a, b):
        assert s.index.equals(ref) and s.index.name == "parameter" and s.index.dtype == ref.dtype
    a.index.name = "renamed"                     # a caller's copy
    assert r.fe_params.index.name == "parameter" and r.bse_fe.index.name == "parameter"
    assert a.index is not b.index


def test_model_with_a_new_response_keeps_weights_and_offset():
    d = read_data("sleepstudy.csv")
    d = d.assign(w=np.linspace(0.5, 2.0, len(d)), off=np.linspace(-3.0, 3.0, len(d)))
    f = "Reaction ~ Days + (Days | Subject)"
    m = mf.lmer(f, d, weights="w", offset="off")
    y = np.asarray(m.fit().simulate(nsim=1, seed=2)).ravel()
    clone = m._with_response(y)
    built = mf.lmer(f, d.assign(Reaction=y), weights="w", offset="off")
    np.testing.assert_array_equal(clone._XY, built._XY)           # y - offset, as built
    th = np.asarray(m.fit().theta)
    for reml in (True, False):
        a, b = clone.deviance(reml).at(th), built.deviance(reml).at(th)
        assert a.criterion == pytest.approx(b.criterion, rel=1e-12)
        _close(a.beta, b.beta, "beta")


def test_a_far_start_goes_to_lbfgsb(monkeypatch):
    """A refit to a simulated response starts far from its optimum (decrement > 0.5): L-BFGS-B
    from there, the same optimum as a cold fit (where the Hessian is not as cheap as a
    gradient: one grouping factor runs Newton first, tests/test_small_levels.py)."""
    from mlmext.objective.lmm import LMMDeviance
    from mlmext.optimize.theta import WARM_MAX_DECREMENT
    monkeypatch.setattr(LMMDeviance, "cheap_hessian", property(lambda self: False))
    m = _model("sleepstudy")
    r = m.fit()
    y = np.asarray(r.simulate(nsim=1, seed=11)).ravel()
    new = m._with_response(y)
    dev = new.deviance()
    s = new.re_design.theta_units()
    f, g, H = dev.value_grad_hess(r.theta)
    gs, Hs = g / s, H / np.outer(s, s)
    assert 0.5 * gs @ np.linalg.solve(Hs, gs) > WARM_MAX_DECREMENT
    a = r.refit(y, start_params=r.theta)   # (the fit's theta: refit's own start is nearer)
    assert a.optim.tried[0][0].startswith("Newton decrement at the start above")
    assert a.optim.tried[1][0] == "L-BFGS-B"
    assert a.converged and abs(a.criterion - new.fit().criterion) < 1e-7


@pytest.mark.parametrize("reml", [True, False])
def test_no_fixed_effects(reml):
    """``y ~ 0 + (1 | g)``: p = 0, the dense storage's fixed-effects parts are empty."""
    m = mf.lmer("Yield ~ 0 + (1 | Batch)", read_data("dyestuff.csv"))
    r = m.fit(reml=reml)
    assert r.converged and len(r.fe_params) == 0
    ref = _structured(m, reml)
    st = ref.at(r.theta)
    assert r.criterion == pytest.approx(st.criterion, rel=1e-12)
    v, g, H = m.deviance(reml).value_grad_hess(r.theta)
    np.testing.assert_allclose(g, ref.value_and_grad(r.theta)[1], atol=1e-6)
    lams = m.re_design.lambdas(r.theta)
    f = SmallDenseFactor(m.re_design.blocks, m._XY, m.weights).update(lams)
    assert f.cov_beta_unscaled().shape == (0, 0) and f.inverse_block_sums(0)[0].shape == (1, 1)


def test_sparse_design_path_of_the_dense_storage(monkeypatch):
    """Many rows: Z is kept sparse to form the cross-products; the same numbers."""
    from mlmext.linalg import small
    m = _model("penicillin", weighted=True)
    dense = SmallDenseFactor(m.re_design.blocks, m._XY, m.weights)
    monkeypatch.setattr(small, "DENSE_Z_MAX", 0)
    sp = SmallDenseFactor(m.re_design.blocks, m._XY, m.weights)
    _close(sp.A, dense.A, "A")
    y = m._XY[:, -1] * 1.5 + 1.0
    _close(sp.with_response(y).A, dense.with_response(y).A, "A (new response)")


def test_deviance_reuses_its_factor_only_at_the_same_theta():
    """The deviance keeps the theta its workspace was last updated to: the same theta reads
    the factor as it stands, any other updates it (values as a fresh deviance gives)."""
    m = _model("sleepstudy")
    dev = m.deviance()
    th1, th2 = _theta(m, 1), _theta(m, 2)
    for th in (th1, th2, th1, th1.copy(), th2):
        fresh = m.deviance()
        assert dev.value(th) == fresh.value(th)
        np.testing.assert_array_equal(dev.value_and_grad(th)[1], fresh.value_and_grad(th)[1])
        np.testing.assert_array_equal(dev.value_grad_hess(th)[2], fresh.value_grad_hess(th)[2])
    assert dev.value(np.array([np.nan, 0.0, 1.0])) == np.inf       # a failed update forgets
    assert dev.value(th1) == m.deviance().value(th1)


def test_new_response_shares_the_hessian_patterns():
    """The derivative patterns (A at the random effects' positions) do not involve the
    response: a factor for a new response, sharing them, gives a fresh factor's Hessian."""
    m = _model("penicillin", weighted=True)
    f = SmallDenseFactor(m.re_design.blocks, m._XY, m.weights)
    y = m._XY[:, -1] * 0.7 + 3.0
    XY = m._XY.copy()
    XY[:, -1] = y
    lams = m.re_design.lambdas(_theta(m, 3))
    a = f.with_response(y).update(lams).derivatives(m.k_fe)
    b = SmallDenseFactor(m.re_design.blocks, XY, m.weights).update(lams).derivatives(m.k_fe)
    for x, z in zip(a, b):
        _close(x, z, "derivatives")
