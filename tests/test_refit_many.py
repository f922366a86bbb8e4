"""res.refit_many(Y): many refits of one design (batched in lockstep on small one-factor designs)
equal to one refit per response.

Both paths stop at a Newton decrement below 1e-9 with the exact Hessian (the checks require
1e-7), so criteria agree to ~1e-9 and estimates to ~sqrt(decrement / curvature): the
tolerances below (criterion 1e-7, fixed effects 1e-4 SE, theta 1e-4) are those of two runs
of the optimizer to the same optimum.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.linalg.levels_batch import LevelsBatch

SLEEP = "Reaction ~ Days + (Days | Subject)"
BATCHED = "Newton from the fit's theta"


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def _alone(r, y):
    """The single refit from the fit's theta (refit's own start is the batch's moment
    estimate: this is the path independent of the batch's)."""
    return r.refit(y, start_params=r.theta)


def _same(a, b):
    assert a.reml == b.reml and a.converged == b.converged
    assert abs(a.criterion - b.criterion) < 1e-7
    assert np.max(np.abs(a.fe_params - b.fe_params) / b.bse_fe) < 1e-4
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-4)
    np.testing.assert_allclose(a.bse_fe, b.bse_fe, rtol=1e-5)
    assert a.sigma == pytest.approx(b.sigma, rel=1e-6)
    np.testing.assert_allclose(a._u, b._u, atol=1e-4 * max(1.0, np.abs(b._u).max()))
    assert a.llf == pytest.approx(b.llf, abs=1e-7)


@pytest.mark.parametrize("reml", [True, False])
def test_refit_many_equals_one_refit_per_response(sleep, reml):
    r = mf.lmer(SLEEP, sleep).fit(reml=reml)
    Y = r.simulate(nsim=12, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        many = r.refit_many(Y)
        single = [_alone(r, Y.iloc[:, b]) for b in range(Y.shape[1])]
    assert len(many) == 12
    batched = [a for a in many if a.optim.optimizer.startswith(BATCHED)]
    assert len(batched) >= 9                  # most members finish in lockstep
    for a, b in zip(many, single):
        _same(a, b)
        assert a.model.endog is not r.model.endog and abs(a.criterion - r.criterion) > 1e-3
    a = batched[0]
    assert a.converged and a.optim.decrement < 1e-7 and a.optim.min_eigenvalue > 0
    # the results of a batched member work as any fit's: their own model and response
    np.testing.assert_allclose(a.model.endog, Y.iloc[:, many.index(a)])
    assert a.refit(a.model.endog).criterion == pytest.approx(a.criterion, abs=1e-7)
    assert "Days" in str(a.summary())
    with pytest.raises(ValueError, match="read-only"):
        a.theta[0] = 0.0                      # results never change after they are made


def test_a_boundary_member_is_refitted_alone_with_its_warning(sleep):
    """A response without slope variation: its fit is singular (slope SD 0) -- the single
    refit's snapping, bound probes and warning, not the lockstep's."""
    r = mf.lmer(SLEEP, sleep).fit()
    rng = np.random.default_rng(1)
    subj = sleep.Subject.cat.codes.to_numpy()
    flat = 250 + 10 * sleep.Days.to_numpy() + rng.normal(0, 30, 18)[subj] + rng.normal(0, 25, 180)
    Y = np.column_stack([np.asarray(r.simulate(nsim=3, seed=1)), flat])
    with pytest.warns(ConvergenceWarning, match="singular"):
        many = r.refit_many(Y)
    with pytest.warns(ConvergenceWarning, match="singular"):
        one = _alone(r, flat)
    assert one.is_singular() and many[3].is_singular()
    assert not many[3].optim.optimizer.startswith(BATCHED)
    _same(many[3], one)
    for b in range(3):
        assert many[b].optim.optimizer.startswith(BATCHED)


def test_batched_derivatives_match_the_dense_storage(sleep):
    """The batched level-by-level criterion, gradient and Hessian (members in any order, each
    at its own theta) against the dense small-system factor's exact ones, with prior weights
    and an offset, REML and ML."""
    d = sleep.assign(w=np.linspace(0.5, 2.0, 180), off=np.sin(np.arange(180.0)))
    m = mf.lmer(SLEEP, d, weights="w", offset="off")
    rng = np.random.default_rng(2)
    Y = m.endog[:, None] + rng.normal(0, 30, (180, 4))
    T = np.abs(rng.normal(1.0, 0.4, (4, 3))) * np.array([1, 0.1, 0.2])
    T[1, 1] = -T[1, 1]
    for reml in (True, False):
        lv = m._small_levels().criterion(reml, m.nobs, m._logw)
        batch = LevelsBatch(lv, Y - m.offset[:, None])
        f, g, H = batch.value_grad_hess(T, np.arange(4))
        np.testing.assert_allclose(batch.values(T, np.arange(4)), f, rtol=1e-12)
        # one theta for every member (its level blocks once): each member's value there
        np.testing.assert_allclose(batch.values(T[2:3], np.arange(4)),
                                   batch.values(np.tile(T[2], (4, 1)), np.arange(4)), rtol=1e-13)
        order = np.array([2, 0, 3])                  # a subset of the members, in another order
        f2, g2, H2 = batch.value_grad_hess(T[order], order)
        np.testing.assert_allclose(f2, f[order], rtol=1e-13)
        np.testing.assert_allclose(g2, g[order], rtol=1e-10, atol=1e-10 * np.abs(g).max())
        np.testing.assert_allclose(H2, H[order], rtol=1e-10, atol=1e-10 * np.abs(H).max())
        for b in range(4):
            dev = m._with_response(Y[:, b]).deviance(reml)
            f1, g1, H1 = dev.value_grad_hess(T[b])
            assert f[b] == pytest.approx(f1, rel=1e-11)
            np.testing.assert_allclose(g[b], g1, rtol=1e-7, atol=1e-7 * np.abs(g1).max())
            np.testing.assert_allclose(H[b], H1, rtol=1e-7, atol=1e-7 * np.abs(H1).max())
            st = dev.at(T[b])
            beta, u, sigma, crit, cov = batch.estimates(T[b:b + 1], np.array([b]))
            np.testing.assert_allclose(beta[0], st.beta, rtol=1e-9)
            np.testing.assert_allclose(u[0], st.u, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(cov[0], st.cov_beta, rtol=1e-9)
            assert sigma[0] == pytest.approx(st.sigma, rel=1e-10)
            assert crit[0] == pytest.approx(st.criterion, rel=1e-11)


def test_batched_indefinite_member_leaves_the_others_alone(sleep):
    """A member whose system is not positive definite gets (inf, 0, NaN); the others get
    exactly what they get without it."""
    m = mf.lmer(SLEEP, sleep)
    Y = m.endog[:, None] + np.random.default_rng(4).normal(0, 30, (180, 3))
    batch = LevelsBatch(m._small_levels().criterion(True, m.nobs, m._logw), Y)
    T = np.array([[1.0, 0.01, 0.2], [np.nan, 0.0, 0.2], [0.8, -0.02, 0.3]])
    f, g, H = batch.value_grad_hess(T, np.arange(3))
    assert f[1] == np.inf and not g[1].any() and np.isnan(H[1]).all()
    good = np.array([0, 2])
    f2, g2, H2 = batch.value_grad_hess(T[good], good)
    np.testing.assert_array_equal(f[good], f2)
    np.testing.assert_array_equal(g[good], g2)
    np.testing.assert_array_equal(H[good], H2)
    assert np.isfinite(f2).all() and np.isfinite(H2).all()


def test_refit_many_with_weights_offset_and_three_effects():
    """A weighted, offset model with a 3 x 3 template on a small design (Orthodont-like):
    batched members against single refits."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(12), 8)
    x, z = rng.normal(size=96), rng.normal(size=96)
    y = 2 + x + rng.normal(0, 1, 12)[g] + 0.5 * rng.normal(size=12)[g] * x + \
        0.4 * rng.normal(size=12)[g] * z + rng.normal(0, 0.7, 96)
    d = pd.DataFrame({"y": y, "x": x, "z": z, "g": pd.Categorical(g), "w": rng.uniform(0.5, 2, 96),
                      "off": 0.1 * x})
    r = mf.lmer("y ~ x + (x + z | g)", d, weights="w", offset="off").fit()
    Y = np.asarray(r.simulate(nsim=6, seed=5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        many = r.refit_many(Y)
        single = [_alone(r, Y[:, b]) for b in range(6)]
    assert any(a.optim.optimizer.startswith(BATCHED) for a in many)
    for a, b in zip(many, single):
        _same(a, b)


def test_other_designs_and_fit_arguments_refit_one_by_one(sleep):
    pen = datasets.load("Penicillin")
    r = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit()
    Y = r.simulate(nsim=2, seed=4)
    many = r.refit_many(Y)                       # two grouping factors: single refits
    for b, a in enumerate(many):
        assert not a.optim.optimizer.startswith(BATCHED)
        _same(a, r.refit(Y.iloc[:, b]))
    s = mf.lmer(SLEEP, sleep).fit()
    y = np.asarray(s.simulate(nsim=1, seed=2))
    (ml,) = s.refit_many(y, reml=False)          # fit arguments: the single refit's path
    assert ml.reml is False and not ml.optim.optimizer.startswith(BATCHED)
    _same(ml, s.refit(y[:, 0], reml=False))


def test_refit_many_rejects_what_refit_rejects(sleep):
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.asarray(r.simulate(nsim=2, seed=1))
    with pytest.raises(ValueError, match="one row per observation"):
        r.refit_many(Y[:-1])
    for v in (np.nan, np.inf, -np.inf):
        bad = Y.copy()
        bad[3, 1] = v
        with pytest.raises(ValueError, match="non-finite"):
            r.refit_many(bad)
    # with an offset and weights (the response less the offset is what is checked)
    d = sleep.assign(off=np.linspace(-1.0, 1.0, 180), w=1.0 + np.arange(180) % 3)
    rw = mf.lmer(SLEEP + " + offset(off)", d, weights=d["w"].to_numpy()).fit()
    Yw = np.asarray(rw.simulate(nsim=2, seed=1))
    assert len(rw.refit_many(Yw)) == 2
    for v in (np.nan, np.inf):
        bad = Yw.copy()
        bad[7, 0] = v
        with pytest.raises(ValueError, match="non-finite"):
            rw.refit_many(bad)
    const = Y.copy()
    const[:, 1] = 5.0
    with pytest.raises(ValueError, match="is constant"):
        r.refit_many(const)
    with pytest.raises(TypeError):
        r.refit_many(Y, bogus=1)


def test_bootstrap_refits_in_lockstep_as_one_by_one(sleep):
    """bootstrap (conf_int(method="boot")) refits its simulated responses with refit_many:
    the replicates are those of single refits of the same simulations."""
    from mlmext.inference import bootstrap, simulate
    r = mf.lmer(SLEEP, sleep).fit()
    boot = bootstrap(r, nsim=8, seed=21)
    ys = simulate(r, nsim=8, seed=np.random.default_rng(21), re=True, use_u=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [_alone(r, ys.iloc[:, k]) for k in range(8)]
    assert boot.attrs["failed"] == 0
    se = np.asarray(boot.std())
    for k, fit in enumerate(fits):
        row = boot.iloc[k].to_numpy()
        assert row[-2:] == pytest.approx(np.asarray(fit.fe_params), abs=1e-4 * se[-2:].max())
        assert row[3] == pytest.approx(fit.sigma, rel=1e-5)          # sigma after the sd/cor


def test_the_batched_mirror_image_is_the_designs():
    from mlmext.inference._lockstep import _canonical
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 8)
    d = pd.DataFrame({"y": rng.normal(size=96), "x": rng.normal(size=96), "z": rng.normal(size=96),
                      "g": pd.Categorical(g)})
    for f in ["y ~ x + (x + z | g)", "y ~ x + (x || g)", "y ~ x + (1 | g)"]:
        m = mf.lmer(f, d)
        des = m.re_design
        T = rng.normal(size=(30, des.ntheta))
        for _ in range(2):                  # (the second with the design's cached columns)
            np.testing.assert_array_equal(_canonical(m._small_levels(), T),
                                          np.array([des.canonical_theta(t) for t in T]))


@pytest.mark.parametrize("q", [1, 2, 3])
def test_stacked_spd_inverse(q):
    """The level blocks' inverses and log-determinants (closed forms for q <= 2, Cholesky
    above), and the blocks that are not positive definite, against numpy.linalg."""
    from mlmext.linalg.small_levels import _spd_inverse, _spd_stack
    rng = np.random.default_rng(q)
    A = rng.normal(size=(40, q, q))
    M = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(q)
    M[7] = -M[7]                                       # negative definite
    inv, ld, ok = _spd_stack(M.reshape(40, -1), q)
    good = np.arange(40) != 7
    assert ok.tolist() == good.tolist()
    assert _spd_inverse(M.reshape(40, -1), q) is None
    assert _spd_inverse(M[good].reshape(39, -1), q)[0].tolist() == inv[good].tolist()
    np.testing.assert_allclose(inv.reshape(40, q, q)[good], np.linalg.inv(M[good]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ld[good], np.linalg.slogdet(M[good])[1], rtol=1e-12, atol=1e-12)


def _flat_responses(sleep, k, seed):
    """Responses without slope variation between subjects: singular fits (slope SD 0)."""
    rng = np.random.default_rng(seed)
    subj = sleep.Subject.cat.codes.to_numpy()
    return np.column_stack([250 + 10 * sleep.Days.to_numpy() + rng.normal(0, 30, 18)[subj]
                            + rng.normal(0, 25, 180) for _ in range(k)])


def test_every_attribute_of_a_batch_is_a_single_refits(sleep):
    """Members in lockstep, members at the boundary and members that fall back: fe_params,
    bse_fe, llf, theta, scale, sigma, ranef, the summary -- as refit(y) one by one."""
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.column_stack([np.asarray(r.simulate(nsim=40, seed=8)), _flat_responses(sleep, 3, 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        many = r.refit_many(Y)
        single = [_alone(r, Y[:, b]) for b in range(Y.shape[1])]
    alone = [a for a in many if not a.optim.optimizer.startswith(BATCHED)]
    assert 1 <= len(alone) < 10 and any(a.is_singular() for a in alone)
    for a, b in zip(many, single):
        _same(a, b)
        assert a.scale == b.scale and a.is_singular() == b.is_singular()
        for g in b.ranef():
            rb = np.asarray(b.ranef()[g])             # (as _same's u: the optimizer's tolerance)
            np.testing.assert_allclose(a.ranef()[g], rb, atol=1e-4 * max(1.0, np.abs(rb).max()))
        assert list(a.fe_params.index) == list(b.fe_params.index)
        for ta, tb in zip(a.summary().tables, b.summary().tables):
            for ca, cb in zip(np.ravel(ta.data), np.ravel(tb.data)):
                _same_cell(ca, cb)


def _same_cell(ca, cb):
    """Printed numbers that agree to their last digit's rounding; all else equal."""
    try:
        x, y = float(ca), float(cb)
    except ValueError:
        assert ca == cb
        return
    assert x == pytest.approx(y, rel=2e-3, abs=2e-3)


def test_a_batch_members_model_is_made_on_first_use(sleep):
    """A lockstep member's results hold the fit's model until ``model`` is read: llf,
    params (labelled), theta, sigma do not make it; then it is the member's own."""
    import pickle
    from mlmext._batch_results import BatchLMMResults
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.array(r.simulate(nsim=3, seed=6))
    a = r.refit_many(Y)[1]
    raw = a._results
    assert isinstance(raw, BatchLMMResults) and "_model" not in raw.__dict__
    assert a.llf == raw.llf and list(a.params.index) == ["Intercept", "Days"]
    a.theta, a.sigma, a.criterion, a.converged
    assert "_model" not in raw.__dict__
    back = pickle.loads(pickle.dumps(a))
    y1 = Y[:, 1].copy()
    Y[:, 1] = 0.0                             # the caller's array changes: the results do not
    m = a.model
    assert a.model is m and m is not r.model and "_model" in raw.__dict__
    np.testing.assert_array_equal(m.endog, y1)
    np.testing.assert_array_equal(back.model.endog, y1)
    assert back.llf == a.llf
    np.testing.assert_allclose(a.resid, y1 - a.fittedvalues)
    b = r.refit_many(np.column_stack([y1, y1]))[0]
    b._results.model = r.model                # a model set later is the model
    assert b.model is r.model


def test_a_batch_members_state_and_optim_are_made_when_read(sleep):
    """A lockstep member's ``state`` and ``optim`` are made on first read (llf, params, theta
    do not make them): the state of the results' own arrays, the summary of the batch's
    numbers (also after pickling unread), made once."""
    import pickle
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.array(r.simulate(nsim=3, seed=7))
    many = r.refit_many(Y)
    raw = many[2]._results
    many[2].llf, many[2].params, many[2].theta, many[2].converged
    assert "state" not in raw.__dict__ and "optim" not in raw.__dict__
    back = pickle.loads(pickle.dumps(many[2]))
    st = raw.state
    assert raw.state is st and st.theta is raw.theta and st.beta is raw.params
    assert st.u is raw._u and st.cov_beta is raw.normalized_cov_params
    assert (st.sigma, st.criterion, st.reml) == (raw.sigma, raw.criterion, True)
    o = raw.optim
    assert raw.optim is o and "_lazy_optim" not in raw.__dict__
    assert o.final is raw.theta and o.fmin == raw.criterion and o.converged and o.feval == 2
    assert o.optimizer.startswith(BATCHED) and "3 responses" in o.optimizer
    assert o.tried == ((o.optimizer, True, 2),) and o.message.startswith("Newton decrement")
    assert o.extras["decrement"] < 1e-9 and o.extras["min_eigenvalue"] > 0
    assert o.extras["snapped"] == [] and o.extras["snapped"] is not many[1].optim.extras["snapped"]
    ob = back.optim
    assert (ob.message, ob.feval, ob.fmin, ob.extra_items) == (o.message, o.feval, o.fmin,
                                                               o.extra_items)
    np.testing.assert_array_equal(ob.initial, o.initial)
    np.testing.assert_array_equal(back.state.theta, st.theta)
    _same(many[2], _alone(r, Y[:, 2]))


def test_power_sim_refits_in_lockstep_as_one_by_one(sleep, monkeypatch):
    """power_sim's t and z tests on lockstep refits: the p-values of single refits."""
    import mlmext.inference.simulation as sim
    r = mf.lmer(SLEEP, sleep).fit()
    for test in ("z", "satterthwaite"):
        batched = r.power_sim("Days", effect=3.0, nsim=10, seed=2, test=test)
        with monkeypatch.context() as mp:
            mp.setattr(sim, "_lockstep_fits", lambda r, Y: None)
            alone = r.power_sim("Days", effect=3.0, nsim=10, seed=2, test=test)
        np.testing.assert_allclose(batched.pvalues, alone.pvalues, rtol=1e-4, atol=1e-12)
        assert batched.failed == alone.failed == 0


def test_batched_member_model_made_once_across_threads():
    """Threads reading a batched member's model at once get one and the same model."""
    import threading
    df = datasets.load("sleepstudy")
    res = mf.lmer("Reaction ~ Days + (Days | Subject)", df).fit()
    rng = np.random.default_rng(3)
    Y = np.asarray(res.fittedvalues)[:, None] + rng.normal(0, 25.0, (len(df), 4))
    for member in res.refit_many(Y):
        got, barrier = [], threading.Barrier(4)

        def read():
            barrier.wait()
            got.append(member.model)
        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and all(m is got[0] for m in got)
        np.testing.assert_array_equal(np.asarray(got[0].endog), np.asarray(member.model.endog))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", [SLEEP, "Reaction ~ 1 + (1 | Subject)",
                                     "Reaction ~ Days + (Days || Subject)"])
def test_moment_start_on_a_balanced_design(sleep, formula, reml):
    """The batched refits' start (Swamy's moment estimator from the members' cross-products):
    on balanced sleepstudy REML's (and ML's) theta itself where the template is the full
    covariance, within 3 % with a diagonal template (the estimator's covariance is not
    mapped); none (NaN) for a response the levels' own lines fit exactly."""
    r = mf.lmer(formula, sleep).fit(reml=reml)
    m = r.model
    lv = m._small_levels().criterion(reml, m.nobs, m._logw)
    Y = np.column_stack([m.endog, np.asarray(r.simulate(nsim=1, seed=1))[:, 0]])
    T = LevelsBatch(lv, Y - m.offset[:, None]).moment_thetas(m.re_design.blocks[0])
    assert T.shape == (2, len(r.theta)) and np.isfinite(T).all()
    np.testing.assert_allclose(T[0], r.theta, rtol=1e-5 if "||" not in formula else 0.03)
    lines = np.asarray(r.fittedvalues)                 # Z b + X beta: no residual
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # (no division warning either)
        T2 = LevelsBatch(lv, np.column_stack([lines, Y[:, 1]])).moment_thetas(
            m.re_design.blocks[0])
    assert np.isnan(T2[0]).all()
    np.testing.assert_array_equal(T2[1], T[1])         # (the other member's: its own)


def test_batched_members_start_from_the_lower_of_the_fit_and_the_moment_estimate(sleep):
    """Each member starts where its criterion is lower (the moment estimate on a balanced
    design: the optimum, the checks passed at its first evaluation); members equal single
    refits either way."""
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.asarray(r.simulate(nsim=10, seed=12))
    many = r.refit_many(Y)
    m = r.model
    lv = m._small_levels().criterion(True, m.nobs, m._logw)
    batch = LevelsBatch(lv, Y - m.offset[:, None])
    Tm = batch.moment_thetas(m.re_design.blocks[0])
    idx = np.arange(10)
    fm = batch.values(Tm, idx)
    f0 = batch.values(np.tile(r.theta, (10, 1)), idx)
    for b, a in enumerate(many):
        assert a.optim.optimizer.startswith(BATCHED)
        np.testing.assert_array_equal(a.optim.initial, Tm[b] if fm[b] < f0[b] else r.theta)
        assert a.optim.nfev == 2                 # the start's evaluation, the fit theta's value
        _same(a, _alone(r, Y[:, b]))


def _equal_attr(w, v):
    if w is v:
        return
    assert type(w) is type(v)
    if isinstance(v, np.ndarray):
        np.testing.assert_array_equal(w, v)
        assert w.dtype == v.dtype and w.flags.writeable == v.flags.writeable
    else:
        assert w == v


def _assert_as_constructed(raw, model, y):
    """Every attribute of the member ``raw`` (and of its OptSummary) is what LMMResults' and
    OptSummary's constructors make of its numbers; the constructors' results returned."""
    import dataclasses
    from mlmext._batch_results import lazy_results
    from mlmext.optimize import OptSummary
    o = raw.optim
    made = OptSummary(**{f.name: getattr(o, f.name) for f in dataclasses.fields(OptSummary)})
    for f in dataclasses.fields(OptSummary):
        _equal_attr(getattr(o, f.name), getattr(made, f.name))
    ref = lazy_results(model, y, raw.state, o, raw.ddf)._results
    assert raw.__dict__["llf"] == ref.llf           # (a member's: the cached property's value)
    assert raw.__dict__.keys() == ref.__dict__.keys()
    for k, v in ref.__dict__.items():
        _equal_attr(raw.__dict__[k], v)
    return ref


def test_batch_members_are_what_the_constructors_make(sleep):
    """lazy_results_many copies the first member's results for the others and
    OptSummary.replaced copies the first summary: every attribute of every member is what
    LMMResults' and OptSummary's constructors make of its numbers (a new attribute that
    depends on the fit shows here), and mutable ones are not shared."""
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.asarray(r.simulate(nsim=4, seed=9))
    many = r.refit_many(Y)
    for b, a in enumerate(many):
        raw = a._results
        assert a.optim.optimizer.startswith(BATCHED)
        ref = _assert_as_constructed(raw, r.model, Y[:, b])
        for k, v in ref.__dict__.items():
            if b and isinstance(v, (list, dict)):
                assert raw.__dict__[k] is not many[0]._results.__dict__[k]
        assert not raw.theta.flags.writeable and not raw._u.flags.writeable


def test_a_moment_start_above_the_fits_theta_is_not_taken(sleep, monkeypatch):
    """Members whose moment start has a higher criterion than the fit's theta start from the
    fit's theta (evaluated there in the first round) and still equal single refits."""
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.asarray(r.simulate(nsim=6, seed=13))
    good = LevelsBatch.moment_thetas

    def spoiled(self, blk):
        T = good(self, blk)
        T[::2] *= 3.0                            # far from every member's optimum
        return T
    monkeypatch.setattr(LevelsBatch, "moment_thetas", spoiled)
    many = r.refit_many(Y)
    for b, a in enumerate(many):
        assert a.optim.optimizer.startswith(BATCHED)
        if b % 2 == 0:
            np.testing.assert_array_equal(a.optim.initial, r.theta)
            assert a.optim.nfev > 2
        else:
            assert a.optim.nfev == 2
        _same(a, _alone(r, Y[:, b]))


@pytest.mark.parametrize("reml", [True, False])
def test_a_single_refit_starts_at_the_moment_estimate(sleep, reml):
    """refit(y) on a small one-factor design starts at the response's moment estimate where
    its criterion is lower (balanced sleepstudy: the optimum, one evaluation) and ends where
    the refit from the fit's theta ends; an unbalanced design too."""
    r = mf.lmer(SLEEP, sleep).fit(reml=reml)
    Y = np.asarray(r.simulate(nsim=4, seed=17))
    m = r.model
    lv = m._small_levels().criterion(reml, m.nobs, m._logw)
    Tm = LevelsBatch(lv, Y - m.offset[:, None]).moment_thetas(m.re_design.blocks[0])
    for b in range(4):
        a = r.refit(Y[:, b])
        np.testing.assert_allclose(a.optim.initial, Tm[b], rtol=1e-10)   # (alone: other rounding)
        # (the lockstep with one member: the moment start and the fit's theta evaluated)
        assert a.converged and a.optim.nfev == 2 and a.optim.optimizer.startswith(BATCHED)
        _same(a, r.refit(Y[:, b], start_params=r.theta))
    part = sleep.iloc[np.random.default_rng(3).choice(180, 120, replace=False)]
    r2 = mf.lmer(SLEEP, part.reset_index(drop=True)).fit(reml=reml)
    for y in np.asarray(r2.simulate(nsim=3, seed=5)).T:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _same(r2.refit(y), r2.refit(y, start_params=r2.theta))


def test_batch_linalg_by_numpys_gufuncs():
    """inv_of_factor and eigh_finite are np.linalg's inv and eigh (the gufuncs they call,
    the same numbers); eigh_finite of a stack with a NaN raises as np.linalg.eigh does."""
    from mlmext.linalg.levels_batch import eigh_finite, inv_of_factor
    rng = np.random.default_rng(3)
    A = rng.standard_normal((5, 3, 3))
    A = A @ A.transpose(0, 2, 1) + np.eye(3)
    L = np.linalg.cholesky(A)
    np.testing.assert_array_equal(inv_of_factor(L), np.linalg.inv(L))
    np.testing.assert_array_equal(inv_of_factor(L[0]), np.linalg.inv(L[0]))
    w, V = eigh_finite(A[:, ::-1, ::-1])                     # (strided: as np.linalg)
    w0, V0 = np.linalg.eigh(A[:, ::-1, ::-1])
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(V, V0)
    np.testing.assert_allclose((V * w[:, None, :]) @ V.transpose(0, 2, 1), A[:, ::-1, ::-1],
                               rtol=1e-12, atol=1e-12)
    A[2, 1, 0] = np.nan
    with pytest.raises(np.linalg.LinAlgError):
        eigh_finite(A)
