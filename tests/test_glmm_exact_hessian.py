"""The exact Laplace Hessian of one scalar term with a canonical link (laplace/hessian.py).

* against central differences of the exact gradient (the covariance's Hessian before it) on
  cbpp, a Poisson intercept, a lone slope, prior weights, theta = 0 and simulated responses;
* the weights' derivatives of the canonical families against differences of ``w``;
* which fits take it (one scalar term, binomial logit or Poisson log, Laplace), and that their
  estimates and standard errors are those of the fit with the differenced Hessians.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.glmm.fit import fit_glmm
from mlmext.optimize import hessian_central_gradient

from refcases import read_data

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
#: prior weights on top of the trials: non-integer successes, the model warns (on purpose here)
pytestmark = pytest.mark.filterwarnings("ignore:non-integer number of successes")


@pytest.fixture(scope="module")
def data():
    d = read_data("cbpp.csv")
    rng = np.random.default_rng(7)
    d["x"] = rng.normal(size=len(d))
    d["z"] = 1.0 + rng.uniform(size=len(d))
    d["wt"] = rng.uniform(0.5, 2.0, size=len(d))
    return d


def _central(dev, params):
    def fg(x):
        ll, g, _ = dev.loglike_and_score(x, tol=1e-20)
        return ll, g
    return hessian_central_gradient(fg, params, fg(params)[1])[0]


def _exact(dev, params):
    theta, beta, _ = dev.split(params)
    modes, _ = dev.modes(theta, beta, tol=1e-20)
    assert modes.converged
    return dev.hessian(modes)


CASES = [
    (CBPP, sm.families.Binomial, {}, [0.64, -1.40, -0.99, -1.13, -1.58]),
    (CBPP, sm.families.Binomial, {}, [1.3, -1.0, -0.5, 0.2, -2.0]),
    (CBPP, sm.families.Binomial, {}, [0.0, -1.4, -1.0, -1.1, -1.6]),     # theta at its bound
    (CBPP, sm.families.Binomial, {"weights": "wt"}, [0.5, -1.2, -1.0, -1.1, -1.5]),
    ("incidence ~ period + x + (1 | herd)", sm.families.Poisson, {}, [0.7, 0.3, -0.6, -0.4,
                                                                      -1.0, 0.2]),
    ("incidence ~ x + (0 + z | herd)", sm.families.Poisson, {}, [0.4, 0.2, 0.3]),
    ("cbind(incidence, size - incidence) ~ x + (0 + z | herd)", sm.families.Binomial, {},
     [0.8, -1.5, 0.1])]


@pytest.mark.parametrize("formula,family,kw,params", CASES)
def test_exact_hessian_matches_central_differences(data, formula, family, kw, params):
    kw = {k: data[v].to_numpy() for k, v in kw.items()}
    mod = mf.glmer(formula, data, family=family(), **kw)
    dev = mod.deviance()
    assert dev.exact_hessian
    params = np.asarray(params, dtype=float)
    H, Hc = _exact(dev, params), _central(dev, params)
    assert np.all(np.linalg.eigvalsh(-H) != 0) and np.allclose(H, H.T)
    # central differences at h = 1e-4: O(h^2) truncation and the gradient's rounding
    np.testing.assert_allclose(H, Hc, rtol=0, atol=1e-6 * np.abs(Hc).max())


def test_exact_hessian_on_simulated_responses(data):
    mod = mf.glmer(CBPP, data, family=sm.families.Binomial())
    rng = np.random.default_rng(3)
    size = data["size"].to_numpy()
    for theta in (0.05, 0.6, 2.0):
        b = theta * rng.normal(size=15)[mod.re_design.blocks[0].codes]
        p = 1 / (1 + np.exp(-(mod.exog @ [-1.4, -1.0, -1.1, -1.6] + b)))
        d = data.copy()
        d["incidence"] = rng.binomial(size, p)
        dev = mf.glmer(CBPP, d, family=sm.families.Binomial()).deviance()
        x = np.r_[theta, -1.4, -1.0, -1.1, -1.6]
        Hc = _central(dev, x)
        np.testing.assert_allclose(_exact(dev, x), Hc, rtol=0, atol=1e-6 * np.abs(Hc).max())


@pytest.mark.parametrize("family", [sm.families.Binomial, sm.families.Poisson])
def test_weight_derivatives_are_those_of_w(data, family):
    y = data["incidence"].to_numpy() / (data["size"].to_numpy() if family is
                                        sm.families.Binomial else 1.0)
    pw = data["size"].to_numpy() if family is sm.families.Binomial else data["wt"].to_numpy()
    from mlmext.glmm.conditional import GLMConditional
    cond = GLMConditional(family(), y, pw)
    eta = np.linspace(-3.0, 2.0, y.size)
    w, w1, w2 = cond.weight_derivatives(eta)
    np.testing.assert_allclose(w, cond.derivatives(eta)[1], rtol=1e-14)
    h = 1e-5
    wp, wm = cond.derivatives(eta + h)[1], cond.derivatives(eta - h)[1]
    np.testing.assert_allclose(w1, (wp - wm) / (2 * h), rtol=1e-8, atol=1e-10 * w.max())
    np.testing.assert_allclose(w2, (wp - 2 * w + wm) / (h * h), rtol=0, atol=1e-4 * w.max())
    # the analytic gradient's dw/deta is the same
    np.testing.assert_allclose(w1, cond.hessian_terms(eta)[1], rtol=1e-12)


def test_which_fits_take_the_exact_hessian(data):
    logit = mf.glmer(CBPP, data, family=sm.families.Binomial())
    assert logit.deviance().exact_hessian
    probit = mf.glmer(CBPP, data, family=sm.families.Binomial(sm.families.links.Probit()))
    vector = mf.glmer("cbind(incidence, size - incidence) ~ x + (x | herd)", data,
                      family=sm.families.Binomial())
    crossed = mf.glmer("cbind(incidence, size - incidence) ~ x + (1 | herd) + (1 | period)",
                       data, family=sm.families.Binomial())
    nb = mf.glmer_nb("incidence ~ period + (1 | herd)", data)
    for mod in (probit, vector, crossed, nb):
        assert not mod.deviance().exact_hessian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = logit.fit()
        r9 = logit.fit(nagq=9)
        rp = probit.fit()
    steps = [t[0] for t in r.optim.tried]
    assert "Laplace: Newton (exact Hessian)" in steps
    assert "Laplace: exact Hessian for the covariance" in steps
    assert not any("quasi-Newton" in s for s in steps)
    for other in (r9, rp):                     # AGQ and other links: the differenced Hessians
        assert not any("exact" in t[0] and "gradient" not in t[0] for t in other.optim.tried)
        assert any("quasi-Newton" in t[0] for t in other.optim.tried)


FITS = [(CBPP, sm.families.Binomial, {}),
        (CBPP, sm.families.Binomial, {"weights": "wt"}),
        ("incidence ~ period + x + (1 | herd)", sm.families.Poisson, {}),
        ("cbind(incidence, size - incidence) ~ x + (0 + z | herd)", sm.families.Binomial, {})]


@pytest.mark.parametrize("formula,family,kw", FITS)
def test_fit_agrees_with_the_differenced_hessians(data, formula, family, kw):
    kw = {k: data[v].to_numpy() for k, v in kw.items()}
    mod = mf.glmer(formula, data, family=family(), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mod.fit()
        tight = mod.fit(tol=1e-16)
        dev = mod.deviance()
        dev.exact_hessian = False
        r0 = fit_glmm(mod, dev, 1, None, 500, 1e-8, False)
    assert r.optim.success and r0.optim.success
    assert r.optim.decrement < 1e-8 and r.optim.min_eigenvalue > 0
    se = np.asarray(r0.bse_fe)

    def off(a, b):                                  # max difference in standard errors
        return np.max(np.abs(np.asarray(a.fe_params) - np.asarray(b.fe_params)) / se)
    # Newton with exact Hessians takes one step more below tol = 1e-8: the estimates are the
    # optimum's (tol = 1e-16) to 1e-6 SE; the differenced Hessians' Newton stops at a decrement
    # up to 1e-8, ~sqrt(1e-8 / 2) = 7e-5 SE from the optimum (2.4e-5 on the lone slope)
    assert off(r, tight) < 1e-6 and abs(r.llf - tight.llf) < 1e-10
    assert off(r, r0) < 5e-5 and abs(r.llf - r0.llf) < 1e-8
    np.testing.assert_allclose(r.bse_fe, tight.bse_fe, rtol=1e-6)
    np.testing.assert_allclose(r.bse_fe, se, rtol=1e-4)
    np.testing.assert_allclose(r.theta, r0.theta, rtol=1e-4)
    assert isinstance(r.fe_params, pd.Series)


def test_level_sums_dense_and_by_bincount(data, monkeypatch):
    from mlmext.laplace import zops
    mod = mf.glmer("incidence ~ x + (0 + z | herd)", data, family=sm.families.Poisson())
    V = np.random.default_rng(2).normal(size=(len(data), 4))
    ops = zops._zops(mod.re_design)
    dense = ops.level_sums(V)
    codes = mod.re_design.blocks[0].codes
    expect = np.stack([np.bincount(codes, weights=V[:, j], minlength=15) for j in range(4)], 1)
    np.testing.assert_allclose(dense, expect, rtol=1e-13, atol=1e-13)
    dev = mod.deviance()
    x = np.array([0.4, 0.2, 0.3])
    H = _exact(dev, x)
    monkeypatch.setattr(zops, "DENSE_INDICATOR", 0)
    np.testing.assert_array_equal(ops.level_sums(V), expect)
    np.testing.assert_allclose(_exact(dev, x), H, rtol=1e-13, atol=1e-13 * np.abs(H).max())


@pytest.mark.parametrize("formula", ["incidence ~ x + (0 + z | herd)", "incidence ~ x + (1 | herd)"])
def test_exact_hessian_in_row_blocks(data, formula, monkeypatch):
    """Large data: the row-wise products a block of rows at a time (per-level sums by
    bincount), the same Hessian."""
    from mlmext.laplace import hessian
    dev = mf.glmer(formula, data, family=sm.families.Poisson()).deviance()
    x = np.array([0.4, 0.2, 0.3])
    H = _exact(dev, x)
    monkeypatch.setattr(hessian, "HESSIAN_CHUNK", 10)          # 6 blocks, the last of 6 rows
    np.testing.assert_allclose(_exact(dev, x), H, rtol=1e-13, atol=1e-13 * np.abs(H).max())


def test_polishing_step_is_not_taken_on_the_last_iteration(data):
    """A point that passes Newton's check on its last allowed iteration is converged (the extra
    full step would have ended the loop without a verdict), and at the optimum: the same
    log-likelihood as with one iteration more."""
    mod = mf.glmer(CBPP, data, family=sm.families.Binomial())
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no ConvergenceWarning
        last = mod.fit(tol=1e-5, maxiter=3)
        more = mod.fit(tol=1e-5, maxiter=4)
    assert last.converged and more.converged
    assert "decrement" in last.optim.message and "did not converge" not in last.optim.message
    # agreement to the convergence criterion: the deviance within the decrement (< tol), the
    # estimates within ~sqrt(decrement) of their standard errors
    dec = last.optim.decrement
    assert 0 < dec < 1e-5
    assert abs(last.llf - more.llf) <= dec
    se = np.asarray(more.bse_fe)
    assert np.max(np.abs(np.asarray(last.fe_params) - np.asarray(more.fe_params)) / se) \
        <= 2 * np.sqrt(dec)
