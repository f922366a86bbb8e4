"""Refits and small fits made cheaper (issue 14), each against the path it shortcuts.

* ``res.refit(y)`` keeps the fit's scaling of theta (a multi-factor design's curvature scale,
  not the predictors' units) and reaches the optimum of a fresh fit of the new response.
* a refit whose start the parent fit's Hessian puts far from the new optimum goes to L-BFGS-B
  without the exact Hessian there; every refit still passes the same checks and ends where a
  cold fit of the same response ends (the optimizer's criterion: 1e-7 deviance units).
* small fits run under one BLAS thread whatever the library's setting.
"""
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf

from refcases import read_data

#: the checks' bound on the Newton decrement: two fits passing them agree to about this
CRIT_TOL = 1e-7


def _crossed(seed=3):
    """A crossed design whose dense remainder (the second factor's 220 levels) is large enough
    for the fit to scale theta by each factor's curvature (``_start_theta``)."""
    rng = np.random.default_rng(seed)
    n, m1, m2 = 4000, 400, 220
    g1, g2 = rng.integers(0, m1, n), rng.integers(0, m2, n)
    x = rng.normal(size=n)
    y = 2.0 + 0.5 * x + rng.normal(0, 0.8, m1)[g1] + rng.normal(0, 0.3, m2)[g2] + rng.normal(size=n)
    d = pd.DataFrame({"y": y, "x": x, "g1": g1.astype(str), "g2": g2.astype(str)})
    return d, "y ~ x + (1 | g1) + (1 | g2)"


def _fresh(formula, d, y, reml):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(formula, d.assign(**{formula.split("~")[0].strip(): y})).fit(reml=reml)


def test_refit_keeps_the_fits_scale_and_reaches_the_fresh_optimum():
    d, formula = _crossed()
    m = mf.lmer(formula, d)
    res = m.fit(reml=False)
    units = m.re_design.theta_units()
    assert m._small_factor() is None and res.optim.scale.shape == units.shape
    assert np.max(np.abs(res.optim.scale / units - 1.0)) > 0.05     # curvature, not the units
    ys = np.asarray(res.simulate(nsim=3, seed=4))
    for k in range(ys.shape[1]):
        r = res.refit(ys[:, k])
        np.testing.assert_array_equal(r.optim.scale, res.optim.scale)
        f = _fresh(formula, d, ys[:, k], reml=False)
        assert r.converged and f.converged
        assert abs(r.criterion - f.criterion) < CRIT_TOL
        np.testing.assert_allclose(r.fe_params, f.fe_params, atol=1e-4 * float(f.bse_fe.min()))
        # from the fit's theta, in its scale: all the gradients (the fresh fit's L-BFGS-B run is
        # shorter since its first step is the full one and its polish may need no difference)
        assert r.optim.nfev <= f.optim.nfev + 1
    # a fit of the model itself from a start ignores any refit setting: the units
    plain = m.fit(reml=False, start_params=res.theta)
    np.testing.assert_array_equal(plain.optim.scale, units)


@pytest.mark.parametrize("case", [("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)"),
                                  ("penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)")])
def test_far_refits_skip_the_hessian_and_pass_the_same_checks(case):
    fname, formula = case
    d = read_data(fname)
    res = mf.lmer(formula, d).fit()
    one_factor = res.model._small_levels() is not None
    ys = np.asarray(res.simulate(nsim=12, seed=5))
    skipped = 0
    for k in range(ys.shape[1]):
        r = res.refit(ys[:, k])
        f = _fresh(formula, d, ys[:, k], reml=True)
        assert r.converged == f.converged and r.converged
        assert abs(r.criterion - f.criterion) < CRIT_TOL
        assert r.optim.decrement < CRIT_TOL and r.optim.min_eigenvalue > 0
        first = r.optim.tried[0][0]
        if "estimated with the fit's Hessian" in first:
            skipped += 1
            assert first.startswith("Newton decrement at the start above")
            assert r.optim.tried[1][0] == "L-BFGS-B"
        if one_factor:     # the exact Hessian costs about a gradient: Newton from any start
            # (refit_many's lockstep with one member, or where it does not pass, the fit's)
            assert first.startswith(("Newton from the start (exact Hessian)",
                                     "Newton from the fit's theta or a moment estimate"))
    if not one_factor:
        assert skipped >= ys.shape[1] // 3                          # far starts are the rule


def test_refit_hessian_is_used_only_for_its_own_start():
    """The parent's Hessian describes the parent's theta: any other start (or the other
    criterion) takes the exact Hessian at the start, as a fit without a parent does."""
    d = read_data("sleepstudy.csv")
    m = mf.lmer("Reaction ~ Days + (Days | Subject)", d)
    res = m.fit()
    y = np.asarray(res.simulate(nsim=1, seed=11)).ravel()
    r = res.refit(y, start_params=res.theta)          # (the fit's own path, not the lockstep)
    new = r.model
    assert new._warm_hessian(True, res.theta, res.optim.scale) is not None
    assert new._warm_hessian(False, res.theta, res.optim.scale) is None
    assert new._warm_hessian(True, np.asarray(res.theta) * 1.01, res.optim.scale) is None
    other = new.fit(start_params=np.asarray(res.theta) * 1.01)
    assert "estimated with the fit's Hessian" not in other.optim.tried[0][0]
    assert abs(other.criterion - r.criterion) < CRIT_TOL


@pytest.mark.parametrize("data, formula, threads", [
    # a small dense system (two grouping factors): one thread
    ("penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)", 1),
    # a tiny one evaluated level by level (39 rows): no product OpenBLAS threads, the
    # caller's setting is left alone
    ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)", 2)])
def test_small_fits_run_under_one_blas_thread(data, formula, threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    d = read_data(data)
    m = mf.lmer(formula, d)
    seen = []
    orig = m.deviance

    def deviance(reml=True):
        dev = orig(reml)
        vg = dev.value_and_grad

        def counted(theta):
            if not seen:
                seen.extend(lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                            if lib.get("user_api") == "blas")
            return vg(theta)
        dev.value_and_grad = counted
        return dev

    m.deviance = deviance
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        res = m.fit()
        after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                 if lib.get("user_api") == "blas"]
    assert res.converged and seen and set(seen) == {threads}
    assert set(after) <= {2}                     # the caller's setting comes back
