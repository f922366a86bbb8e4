"""The objective as an object: the full-parameter log-likelihood round-trips, fits of one model
are independent (side by side and in threads), and reading a result never changes another."""
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf
from mlmext.objective import MixedParams
from refcases import read_data


def _fit_in_threads(fits):
    """Run the callables ``fits`` concurrently (one thread each); their results in order."""
    out = [None] * len(fits)
    errors = []
    start = threading.Barrier(len(fits))

    def run(i):
        try:
            start.wait()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[i] = fits[i]()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _same_fit(a, b):
    """Two runs of the same deterministic computation: equal to rounding."""
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(a.params), np.asarray(b.params), rtol=1e-12, atol=1e-14)
    assert a.llf == pytest.approx(b.llf, rel=1e-13)


# ----------------------------------------------------------------------------- LMM
@pytest.fixture(scope="module")
def sleep_model():
    return mf.lmer("Reaction ~ Days + (Days | Subject)", read_data("sleepstudy.csv"))


@pytest.mark.parametrize("reml", [True, False])
def test_lmm_loglike_round_trip(sleep_model, reml):
    res = sleep_model.fit(reml=reml)
    po = res.params_object
    assert isinstance(po, MixedParams)
    assert list(po.extra) == [res.sigma]
    assert sleep_model.loglike(po, reml=reml) == pytest.approx(res.llf, abs=1e-9)
    packed = po.get_packed()
    assert len(packed) == len(sleep_model.param_names) == 2 + 3 + 1
    assert sleep_model.loglike(packed, reml=reml) == pytest.approx(res.llf, abs=1e-9)
    # at the estimates the score vanishes in the directions the criterion depends on
    g = sleep_model.score(packed, reml=reml)
    if reml:       # the restricted likelihood does not depend on beta
        assert np.abs(g[:2]).max() < 1e-6
    assert np.abs(g).max() < 1e-2 * np.abs(packed).max()
    # moving a fixed effect lowers the ML log-likelihood by the quadratic form
    if not reml:
        step = np.zeros_like(packed)
        step[1] = float(res.bse.iloc[1]) if hasattr(res.bse, "iloc") else float(res.bse[1])
        drop = res.llf - sleep_model.loglike(packed + step, reml=False)
        assert drop == pytest.approx(0.5, rel=0.05)     # one SE away: half a unit of log-likelihood


def test_lmm_loglike_checks_the_layout(sleep_model):
    with pytest.raises(ValueError, match=r"needs 6 values \(\['Intercept', 'Days', 'Subject.Intercept', "):
        sleep_model.loglike(np.ones(3))
    with pytest.raises(ValueError, match="sigma must be positive"):
        sleep_model.loglike(np.r_[250.0, 10.0, 1.0, 0.0, 0.2, -1.0])


def test_lmm_fits_of_one_model_are_independent(sleep_model):
    serial = [sleep_model.fit(reml=True), sleep_model.fit(reml=False)]
    threaded = _fit_in_threads([lambda: sleep_model.fit(reml=True),
                                lambda: sleep_model.fit(reml=False)] * 2)
    for k, r in enumerate(threaded):
        _same_fit(r, serial[k % 2])


def test_lmm_crossed_fits_in_threads_equal_serial():
    model = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", read_data("penicillin.csv"))
    serial = model.fit()
    for r in _fit_in_threads([model.fit] * 4):
        _same_fit(r, serial)


def test_lmm_results_do_not_share_state(sleep_model):
    r_ml = sleep_model.fit(reml=False)
    r_reml = sleep_model.fit(reml=True)
    before = r_ml.ranef(condvar=True)["Subject"].attrs["condvar"].copy()
    r_reml.ranef(condvar=True)
    after = r_ml.ranef(condvar=True)["Subject"].attrs["condvar"]
    np.testing.assert_array_equal(before, after)
    assert r_ml.state.theta.flags.writeable is False
    with pytest.raises(ValueError):
        r_ml.state.theta[0] = 0.0


# ----------------------------------------------------------------------------- GLMM
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GT = "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)"


@pytest.fixture(scope="module")
def cbpp_model():
    return mf.glmer(CBPP, read_data("cbpp.csv"), family="binomial")


@pytest.fixture(scope="module")
def nb_model():
    return mf.glmer_nb(GT, read_data("grouseticks.csv"))


@pytest.mark.parametrize("nagq", [1, 5])
def test_glmm_loglike_round_trip(cbpp_model, nagq):
    res = cbpp_model.fit(nagq=nagq)
    po = res.params_object
    assert len(po.get_packed()) == len(cbpp_model.param_names) == 4 + 1
    assert cbpp_model.loglike(po, nagq=nagq) == pytest.approx(res.llf, abs=1e-8)
    assert cbpp_model.loglike(po.get_packed(), nagq=nagq) == pytest.approx(res.llf, abs=1e-8)
    if nagq == 1:   # the exact score vanishes at the optimum (to the fit's Newton tolerance)
        assert np.abs(cbpp_model.score(po)).max() < 1e-3


def test_nb_loglike_round_trip_and_score(nb_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = nb_model.fit()
    po = res.params_object
    assert nb_model.param_names[-1] == "alpha" and po.extra[0] == pytest.approx(res.alpha)
    assert nb_model.loglike(po) == pytest.approx(res.llf, abs=1e-8)
    g = nb_model.score(po)
    x = po.get_packed()
    k = len(x) - 1                      # d/d alpha by differences matches the exact score
    h = 1e-6 * x[k]
    fd = (nb_model.loglike(x + h * np.eye(len(x))[k]) - nb_model.loglike(x - h * np.eye(len(x))[k])) / (2 * h)
    assert g[k] == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_glmm_fits_in_threads_equal_serial(cbpp_model):
    serial = [cbpp_model.fit(), cbpp_model.fit(nagq=9)]
    threaded = _fit_in_threads([cbpp_model.fit, lambda: cbpp_model.fit(nagq=9)] * 3)
    for k, r in enumerate(threaded):
        _same_fit(r, serial[k % 2])


def test_nb_results_do_not_share_state(nb_model):
    """Two glmer_nb fits of one model: reading one never changes the other (alpha, modes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1, r9 = nb_model.fit(), nb_model.fit(nagq=9)
    p1 = r1.resid_pearson.to_numpy().copy()
    cv1 = r1.ranef(condvar=True)["LOCATION"].attrs["condvar"].copy()
    r9.resid_pearson, r9.ranef(condvar=True), r9.loglike_saturated
    np.testing.assert_array_equal(r1.resid_pearson.to_numpy(), p1)
    np.testing.assert_array_equal(r1.ranef(condvar=True)["LOCATION"].attrs["condvar"], cv1)
    assert r1.alpha != r9.alpha
    assert r1.family.alpha == r1.alpha and r9.family.alpha == r9.alpha


def test_glmm_profile_leaves_the_result_unchanged(cbpp_model):
    res = cbpp_model.fit()
    before = (res.llf, np.asarray(res.params).copy(), res.ranef(condvar=True)["herd"].attrs["condvar"].copy())
    res.conf_int(method="profile")
    after_cv = res.ranef(condvar=True)["herd"].attrs["condvar"]
    assert res.llf == before[0]
    np.testing.assert_array_equal(np.asarray(res.params), before[1])
    np.testing.assert_array_equal(after_cv, before[2])


# ----------------------------------------------------------------------------- clmm
WINE = "rating ~ temp + contact + (1 | judge)"


@pytest.fixture(scope="module")
def wine_model():
    return mf.clmm(WINE, read_data("wine.csv"))


@pytest.mark.parametrize("nagq", [1, 7])
def test_clmm_loglike_round_trip(wine_model, nagq):
    res = wine_model.fit(nagq=nagq)
    po = res.params_object
    assert len(po.get_packed()) == len(wine_model.param_names) == 4 + 2 + 1
    assert wine_model.param_names[:4] == list(res.params.index[:4])
    assert wine_model.loglike(po, nagq=nagq) == pytest.approx(res.llf, abs=1e-9)
    assert wine_model.loglike(po.get_packed(), nagq=nagq) == pytest.approx(res.llf, abs=1e-9)
    assert np.abs(wine_model.score(po, nagq=nagq)).max() < 1e-3     # the fit's gtol is 1e-6


def test_clmm_fits_in_threads_equal_serial(wine_model):
    serial = [wine_model.fit(), wine_model.fit(nagq=7)]
    threaded = _fit_in_threads([wine_model.fit, lambda: wine_model.fit(nagq=7)] * 2)
    for k, r in enumerate(threaded):
        _same_fit(r, serial[k % 2])
    crossed = mf.clmm("rating ~ temp + contact + (1 | judge) + (1 | bottle)", read_data("wine.csv"))
    one = crossed.fit()
    for r in _fit_in_threads([crossed.fit] * 3):
        _same_fit(r, one)


# ----------------------------------------------------------------------------- optimizer summary
def test_every_fit_keeps_an_opt_summary(sleep_model, cbpp_model, wine_model):
    import pickle
    from mlmext.optimize import OptSummary
    fits = [sleep_model.fit(), cbpp_model.fit(), wine_model.fit()]
    for res in fits:
        o = res.optim
        assert isinstance(o, OptSummary)
        assert o.converged is res.converged is True
        assert o.feval >= sum(n for _, _, n in o.tried) > 0
        assert o.initial.size == o.final.size and not o.final.flags.writeable
        assert o.describe() in str(res.summary())
        back = pickle.loads(pickle.dumps(o))
        assert (back.fmin, back.tried, back.message) == (o.fmin, o.tried, o.message)
        with pytest.raises(Exception):
            o.fmin = 0.0
    lmm, glmm, clmm = (r.optim for r in fits)
    assert lmm.fmin == pytest.approx(fits[0].criterion, abs=1e-8)       # the REML criterion
    np.testing.assert_allclose(lmm.final, fits[0].theta, rtol=1e-12)
    assert glmm.cov_method == "Hessian" and glmm.fmin == pytest.approx(-2 * fits[1].llf, abs=1e-6)
    assert clmm.extras["max_grad"] < 1e-3


# ----------------------------------------------------------------------------- factor workspaces
def _crossed_binary(n=3000, seed=4):
    rng = np.random.default_rng(seed)
    d = {"g": rng.integers(0, 200, n).astype(str), "h": rng.integers(0, 150, n).astype(str),
         "x": rng.normal(size=n)}
    d["y"] = (rng.uniform(size=n) < 0.4).astype(float)
    return pd.DataFrame(d)


@pytest.mark.parametrize("formula", ["r2 ~ Anger + Gender + (1 | id) + (1 | item)",
                                     "r2 ~ Anger + (1 | id) + (Gender | item)",
                                     "y ~ x + (1 | g) + (1 | h)"])
def test_reweighting_workspaces_are_independent(formula):
    """Workspaces of one PIRLS factor, reweighted differently and interleaved, equal factors
    built from scratch for their own weights (the plan's values are each workspace's own);
    the last case has a sparse Schur product (many crossed levels)."""
    from mlmext.linalg import BlockedCholesky
    data = _crossed_binary() if formula.startswith("y") else read_data("verbagg.csv").iloc[:1500]
    m = mf.glmer(formula, data, family="binomial")
    des, n = m.re_design, m.endog.shape[0]
    template = m._pirls_factor(with_x=True)
    rng = np.random.default_rng(3)
    XYs = [np.column_stack([m.exog, rng.normal(size=n)]) for _ in range(2)]
    ws = [rng.uniform(0.1, 2.0, n) for _ in range(2)]
    lams = des.lambdas(np.r_[0.7, 0.4, 0.2, 0.5][:des.ntheta])
    a, b = template.workspace(), template.workspace()
    a.reweight(XYs[0], ws[0])
    b.reweight(XYs[1], ws[1])
    a.update(lams)
    b.update(lams)
    for fac, XY, w in ((a, XYs[0], ws[0]), (b, XYs[1], ws[1])):
        ref = BlockedCholesky(des.blocks, XY, w).update(lams)
        assert fac.logdet_zz == pytest.approx(ref.logdet_zz, rel=1e-12)
        assert fac.r2 == pytest.approx(ref.r2, rel=1e-10)
        np.testing.assert_allclose(fac.cov_beta_unscaled(), ref.cov_beta_unscaled(), rtol=1e-10)
        for x, y in zip(fac.solve(), ref.solve()):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
    fresh = template.workspace().reweight(XYs[0], ws[0]).update(lams)
    assert fresh.r2 == a.r2 and fresh.logdet_zz == a.logdet_zz      # the template was not touched


def test_arguments_that_would_be_silently_misread_raise(sleep_model, cbpp_model):
    with pytest.raises(ValueError, match="reml must be True"):
        sleep_model.deviance("ML")               # bool("ML") is True: REML by accident
    with pytest.raises(ValueError, match="reml must be True"):
        sleep_model.loglike(np.r_[250.0, 10.0, 1.0, 0.0, 0.2, 25.0], reml="ML")
    with pytest.raises(ValueError, match=r"needs 6 values"):   # another model's parameters
        sleep_model.loglike(cbpp_model.fit().params_object)
    crossed = mf.clmm("rating ~ temp + contact + (1 | judge) + (1 | bottle)", read_data("wine.csv"))
    po = crossed.fit().params_object
    with pytest.raises(NotImplementedError, match="single grouping factor"):
        crossed.loglike(po, nagq=5)
    with pytest.raises(ValueError, match="whole number"):
        crossed.loglike(po, nagq=2.5)


@pytest.mark.parametrize("reml", [True, False])
def test_one_block_start_criterion_is_the_one_block_deviance(reml):
    """The fit's start optimizes each random-effects block alone through a bincount-built
    criterion (no sparse factor, O(levels) per call): it must be the one-block model's
    profiled deviance, for scalar and vector blocks, with prior weights."""
    from mlmext.linalg import BlockedCholesky
    from mlmext.objective.start import block_alone_cross, one_block_criterion
    rng = np.random.default_rng(4)
    n, g, h = 600, 40, 12
    df = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n),
                       "g": rng.integers(0, g, n), "h": rng.integers(0, h, n)})
    df["y"] = df.x + rng.normal(size=g)[df.g] + rng.normal(size=h)[df.h] + rng.normal(size=n)
    df["w"] = rng.uniform(0.5, 2.0, n)
    # weighted: the general path (q = 3) and the per-level path of a scalar block; unweighted:
    # the closed form of two effects and a scalar intercept's levels grouped by their counts
    m = mf.lmer("y ~ x + (1 + x + z | g) + (0 + x | h)", df, weights="w")
    df["b"] = np.arange(n) % 60                      # balanced: one count for all 60 levels
    m2 = mf.lmer("y ~ x + (1 + x | g) + (1 | b)", df)
    assert sorted(b.q for b in m.re_design.blocks) == [1, 3]
    assert sorted(b.q for b in m2.re_design.blocks) == [1, 2]
    names = set()
    for m, blk in [(m, b) for b in m.re_design.blocks] + [(m2, b) for b in m2.re_design.blocks]:
        nu = m.nobs - (m.k_fe if reml else 0)
        crit = one_block_criterion(block_alone_cross(blk, m._XY, m.weights), nu, reml)
        names.add(crit.__name__)
        ch = BlockedCholesky([blk], m._XY, m.weights)
        for _ in range(3):
            th = m.re_design.theta_start + rng.uniform(-0.5, 1.0, m.re_design.ntheta)
            lam = blk.lam(np.where(np.isfinite(m.re_design.lower), np.abs(th), th))
            c = ch.update([lam])
            want = c.logdet_zz + (c.logdet_xx if reml else 0.0) + nu * np.log(c.r2)
            assert crit(lam) == pytest.approx(want, rel=1e-10)         # two summation orders
    assert names == {"crit_gram", "crit_two", "crit_grouped"}
