"""The batched refits' shortcuts (mlmext.inference._lockstep, mlmext.linalg.levels_batch),
each against the computation it replaces: the fit's theta's criterion from the response's
row of S alone, the estimates from the gradient's L^-1, the response check's basis from
LAPACK's QR, the members' wrapper reading the results directly, the BLAS setting left
alone for a batch of small products, and the parametric bootstrap's one-at-a-time draws."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext import datasets
from mlmext._batch_results import BatchResultsWrapper
from mlmext.formula import api as mf
from mlmext.inference import _lockstep
from mlmext.linalg.levels_batch import LevelsBatch
from mlmext.results import MixedResultsWrapper

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def _batch(r, nsim=5, seed=2):
    m = r.model
    lv = m._small_levels().criterion(bool(r.reml), m.nobs, m._logw)
    Y = np.asarray(r.simulate(nsim=nsim, seed=seed)) - m.offset[:, None]
    return LevelsBatch(lv, Y)


@pytest.mark.parametrize("formula", [SLEEP, "Reaction ~ Days + (1 | Subject)",
                                     "Reaction ~ Days + (Days || Subject)"])
@pytest.mark.parametrize("reml", [True, False])
def test_fixed_theta_values_are_the_criterion_at_that_theta(sleep, formula, reml):
    r = mf.lmer(formula, sleep).fit(reml=reml)
    batch = _batch(r)
    for theta in (r.theta, 2.0 * r.theta, np.full(r.theta.size, 0.1)):
        f = batch.fixed_values(batch.fixed_theta(theta))
        np.testing.assert_allclose(f, batch.values(theta[None], None), rtol=1e-13)
        assert np.all(np.isfinite(f)) and f.shape == (5,)
    assert np.all(batch.fixed_values(None) == np.inf)      # (no factor at that theta)
    G, GCX, Lxxi, const = batch.fixed_theta(r.theta)
    assert not (G.flags.writeable or GCX.flags.writeable or Lxxi.flags.writeable)


def test_estimates_from_the_gradients_inverse_equal_their_own(sleep):
    """value_grad_hess's pieces carry L^-1: the estimates take L_XX^-1 from it, the same
    numbers (to rounding) as estimates evaluated afresh."""
    r = mf.lmer(SLEEP, sleep).fit()
    batch = _batch(r, nsim=6)
    T = batch.moment_thetas(r.model.re_design.blocks[0])
    _, _, _, c = batch.value_grad_hess(T, None, pieces=True)
    assert "Li" in c
    idx = np.array([1, 4])
    for got, ref in ((batch.estimates(None, None, c), batch.estimates(T, None)),
                     (batch.estimates(None, idx, c), batch.estimates(T[idx], idx))):
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())
    beta = batch.estimates(None, None, c)[0]
    Y = np.asarray(r.simulate(nsim=6, seed=2))
    ols = np.linalg.lstsq(r.model.exog, Y, rcond=None)[0].T
    np.testing.assert_allclose(beta, ols, rtol=1e-10)      # (balanced: GLS is OLS)


def test_the_response_checks_basis_is_an_orthonormal_basis_of_the_fixed_design(sleep):
    d = sleep.assign(w=np.where(np.arange(180) % 7 == 0, 0.0, 1.0 + (np.arange(180) % 3)))
    r = mf.lmer(SLEEP, d, weights=d["w"].to_numpy()).fit()
    pos, sw, Q = _lockstep._check_basis(r.model)
    X = r.model.exog[pos] * sw
    np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-14)
    np.testing.assert_allclose(Q @ (Q.T @ X), X, atol=1e-12 * np.abs(X).max())
    y = np.asarray(r.simulate(nsim=2, seed=5))
    fitted = r.model.exog @ [250.0, 10.0]
    # X fits the third exactly; the fourth to ~1e-13 of its square sum: not certain to pass
    # (|y|^2 - |Q'y|^2 below 1e-10 |y|^2), the check itself passes it
    near = fitted + 1e-4 * np.random.default_rng(0).standard_normal(fitted.size)
    exact = np.column_stack([y, fitted, near])
    assert _lockstep._passes_checks(r.model, r.model._small_levels(), exact, True).tolist() == \
        [True, True, False, False]
    r.model._check_response(near)


def test_members_wrapper_reads_the_results_as_statsmodels_wrapper_does(sleep):
    r = mf.lmer(SLEEP, sleep).fit()
    a = r.refit_many(np.asarray(r.simulate(nsim=2, seed=8)))[1]
    assert isinstance(a, BatchResultsWrapper)
    names = ("llf", "theta", "sigma", "converged", "nobs", "reml", "params")
    got = {k: getattr(a, k) for k in names}
    assert "_model" not in a._results.__dict__          # (no read made the member's model)
    assert list(got["params"].index) == ["Intercept", "Days"]
    assert got["llf"] == -0.5 * a._results.criterion and a.__doc__ == a._results.__doc__
    a.note = "mine"                                 # the wrapper's own attribute comes first
    assert a.note == "mine" and not hasattr(a._results, "note")
    with pytest.raises(AttributeError):
        a.no_such_attribute
    ref = MixedResultsWrapper(a._results)           # (statsmodels' wrapper: makes the model)
    for k in names:
        v, w = got[k], getattr(ref, k)
        assert v is w or np.array_equal(v, w)
    np.testing.assert_array_equal(a.cov_params(), ref.cov_params())


def test_a_small_batch_leaves_the_blas_setting_alone(sleep, monkeypatch):
    """sleepstudy: 39 rows x 180 observations x members; 20 members (140,400 multiply-adds
    in the level sums) stay below OpenBLAS's threading size, 40 do not."""
    r = mf.lmer(SLEEP, sleep).fit()
    seen = []
    real = _lockstep.fit_threads

    def spy(rows, level_by_level=False):
        seen.append((rows, level_by_level))
        return real(rows, level_by_level)
    monkeypatch.setattr(_lockstep, "fit_threads", spy)
    Y = np.asarray(r.simulate(nsim=40, seed=4))
    small, large = r.refit_many(Y[:, :20]), r.refit_many(Y)
    assert seen == [(39, True), (39, False)]
    for a, b in zip(small, large):
        assert a.criterion == pytest.approx(b.criterion, abs=1e-9)


def test_one_at_a_time_draws_are_simulates_bit_for_bit(sleep):
    """pb_test's draws: simulate(res, 1, seed=gen)'s responses, the generator's sequence
    unchanged, with weights (some zero), an offset, two grouping factors and a GLMM."""
    from mlmext.inference.simulation import one_at_a_time, simulate
    rng = np.random.default_rng(3)
    d = sleep.assign(w=rng.uniform(0.5, 2.0, 180), off=rng.normal(0.0, 5.0, 180))
    d.loc[::11, "w"] = 0.0
    pen = datasets.load("penicillin")
    cbpp = datasets.load("cbpp")
    fits = [mf.lmer(SLEEP, sleep).fit(reml=False),
            mf.lmer("Reaction ~ Days + (1 | Subject)", d, weights=d["w"].to_numpy(),
                    offset=d["off"].to_numpy()).fit(),
            mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit(),
            mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                     family=sm.families.Binomial()).fit()]
    for r in fits:
        draw = one_at_a_time(r)
        g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
        a = np.column_stack([draw(g1) for _ in range(4)])
        b = np.column_stack([simulate(r, 1, seed=g2).iloc[:, 0].to_numpy() for _ in range(4)])
        np.testing.assert_array_equal(a, b)
        assert a.shape == (r.model.exog.shape[0], 4) and np.isfinite(a).all()
    assert g1.random() == g2.random()                  # (the same draws taken from both)


def test_constant_value_reads_a_models_broadcast_offset_and_weights(sleep):
    """The batch takes Y itself for ``Y - offset`` and ``Y * w`` of a model without offset
    or weights (their zero-stride broadcasts), and the arithmetic of a model with them."""
    from mlmext.linalg.levels_batch import constant_value
    m = mf.lmer(SLEEP, sleep).fit().model
    assert constant_value(m.offset) == 0.0 and constant_value(m.weights) == 1.0
    d = sleep.assign(off=np.linspace(-1.0, 1.0, 180))
    mo = mf.lmer(SLEEP + " + offset(off)", d, weights=np.full(180, 2.0)).fit().model
    assert constant_value(np.asarray(mo.offset, dtype=float)) is None
    assert constant_value(np.asarray(mo.weights, dtype=float)) is None
    assert constant_value(np.zeros(0)) is None


def test_the_response_checks_certain_pass_grows_with_the_rows():
    """|y|^2 - |Q'y|^2 is off by up to ~(2p + 1) n ulps of |y|^2: on 60,000 rows a residual
    square sum of 1.3e-10 |y|^2 (above 1e-10, below 4 (p + 1) n ulps = 1.6e-10) is not a
    certain pass; 1e-9 |y|^2 is."""
    rng = np.random.default_rng(3)
    n = 60_000
    d = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 40, n)})
    d["y"] = 1.0 + d["x"] + rng.normal(size=40)[d["g"]] + rng.normal(size=n)
    r = mf.lmer("y ~ x + (1 | g)", d).fit()
    fitted = r.model.exog @ [3.0, 1.0]
    e = rng.standard_normal(n)
    e -= r.model.exog @ np.linalg.lstsq(r.model.exog, e, rcond=None)[0]   # (orthogonal to X)
    cols = [fitted + np.sqrt(ratio * (fitted @ fitted) / (e @ e)) * e for ratio in (1.3e-10, 1e-9)]
    got = _lockstep._passes_checks(r.model, r.model._small_levels(), np.column_stack(cols), True)
    assert got.tolist() == [False, True]


def test_a_zero_response_is_refused_as_a_single_refit_refuses_it(sleep, monkeypatch):
    """A column of zeros (constant): the single refit's error, without warnings; a later
    chunk's column too."""
    r = mf.lmer(SLEEP, sleep).fit()
    Y = np.array(r.simulate(nsim=3, seed=2))
    Y[:, 1] = 0.0
    with pytest.raises(ValueError) as single:
        r.refit(Y[:, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as many:
            r.refit_many(Y)
    assert str(many.value) == str(single.value)
    monkeypatch.setattr(_lockstep, "CHUNK", 2)       # (the third column: a second chunk's)
    Y[:, 1], Y[:, 2] = Y[:, 0], 0.0
    with pytest.raises(ValueError) as later:
        r.refit_many(Y)
    assert str(later.value) == str(single.value)


def test_sdcor_of_stacked_thetas_row_by_row_and_by_definition(sleep):
    from mlmext.objective import sdcor_from_cov, sdcor_from_theta, sdcor_from_thetas
    d = sleep.assign(g2=(np.arange(len(sleep)) % 7).astype(str))
    des = mf.lmer("Reaction ~ Days + (Days | Subject) + (1 | g2)", d).re_design
    rng = np.random.default_rng(4)
    T = rng.normal(size=(50, des.ntheta))
    T[::5, 0] = 0.0                    # a zero intercept sd: its correlation is 0
    T[2::5, 2] = 0.0                   # L[1, 1] = 0: a correlation of +-1
    S = rng.uniform(0.5, 30.0, 50)
    got = sdcor_from_thetas(des, T, S)
    # each row the same bits as one theta at a time (the bootstrap's batch and its loop)
    assert np.array_equal(got, np.array([sdcor_from_theta(des, T[b], S[b]) for b in range(50)]))
    want = np.array([np.concatenate([sdcor_from_cov(S[b] ** 2 * des.term_cov(T[b], t))
                                     for t in des.terms]) for b in range(50)])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    assert np.all(got[::5, 0] == 0.0) and np.all(got[::5, 1] == 0.0)
    np.testing.assert_allclose(np.abs(got[2::5, 1]), 1.0, rtol=1e-15)
    assert np.all(np.abs(got[1::5, 1]) < 1.0)


def test_bootstrap_default_statistic_of_a_batch_is_the_per_fit_one(sleep):
    # bootstrap() computes its default statistic for a batch of refits at once; a func= gets
    # each refit one at a time: the same refits, so the same bits
    from mlmext.inference.intervals import _boot_statistic
    r = mf.lmer(SLEEP, sleep).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = r.bootstrap(nsim=300, seed=8)
        b = r.bootstrap(nsim=300, seed=8, func=_boot_statistic)
    assert np.array_equal(a.to_numpy(), b.to_numpy()) and a.attrs["failed"] == 0
    assert list(a.columns) == ["sd_Intercept|Subject", "cor_Days.Intercept|Subject",
                               "sd_Days|Subject", "sigma", "Intercept", "Days"]
