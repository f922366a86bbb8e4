"""Satterthwaite's pieces in closed form on the dense storage against lmerTest's numerical
differences (:mod:`mlmext.objective.sigma_hessian`)."""
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.inference import ddf
from mlmext.objective.sigma_hessian import exact_satt_derivatives
from mlmext.optimize import hessian, jacobian

SL = datasets.load("sleepstudy")
_RNG = np.random.default_rng(3)
SLW = SL.assign(w=_RNG.uniform(0.5, 2.0, len(SL)))

CASES = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, True),
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, False),
    ("Reaction ~ Days + (Days || Subject)", "sleepstudy", None, True),
    ("Reaction ~ Days + (Days | Subject)", "weighted", "w", True),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", None, True),
    ("strength ~ 1 + (1 | batch) + (1 | cask:batch)", "pastes", None, False),
]


def _fit(formula, data, weights, reml):
    d = SLW if data == "weighted" else SL if data == "sleepstudy" else datasets.load(data)
    kw = {} if weights is None else {"weights": d[weights]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ddf._raw(mf.lmer(formula, d, **kw).fit(reml=reml))


def _numerical(r):
    """lmerTest's way: Richardson-extrapolated differences of the deviance and of vcov(beta)."""
    obj = r.model.deviance(bool(r.reml))
    vp = np.concatenate([r.theta, [r.sigma]])
    H = hessian(lambda x: obj.value_sigma(x[:-1], x[-1]), vp)
    J = jacobian(lambda x: obj.cov_beta(x[:-1], x[-1]), vp)
    return H, [J[:, i].reshape(r.k_fe, r.k_fe) for i in range(vp.size)]


@pytest.mark.parametrize("formula,data,weights,reml", CASES)
def test_exact_matches_numerical(formula, data, weights, reml):
    r = _fit(formula, data, weights, reml)
    obj = r.model.deviance(bool(r.reml))
    H, jac = exact_satt_derivatives(obj, r.theta, r.sigma)
    Hn, jn = _numerical(r)
    # the numerical Hessian's own error is ~1e-6 relative (Richardson from relative steps 0.1)
    assert np.abs(H - Hn).max() <= 5e-6 * np.abs(Hn).max()
    assert np.allclose(H, H.T, rtol=0, atol=1e-10 * np.abs(H).max())
    for a, b in zip(jac, jn):
        assert np.abs(a - b).max() <= 1e-6 * max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("reml", [True, False])
def test_exact_hessian_is_the_derivative_of_the_exact_gradient(reml):
    """Central differences (h = 1e-5) of the analytic gradient in (theta, sigma)."""
    r = _fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, reml)
    obj = r.model.deviance(reml)
    p, nu = r.k_fe, obj.n - (r.k_fe if reml else 0)

    def grad(x):
        ch = obj.factor(x[:-1])
        dld, _, dr2, _ = ch.derivatives(p if reml else 0)
        s = x[-1]
        return np.concatenate([dld + dr2 / s ** 2, [-2.0 * ch.r2 / s ** 3 + 2.0 * nu / s]])

    x0 = np.concatenate([r.theta, [r.sigma]])
    H, _ = exact_satt_derivatives(obj, r.theta, r.sigma)
    for i in range(x0.size):
        h = 1e-5 * max(1.0, abs(x0[i]))
        e = np.zeros_like(x0)
        e[i] = h
        col = (grad(x0 + e) - grad(x0 - e)) / (2 * h)
        assert np.abs(col - H[:, i]).max() <= 1e-7 * np.abs(H).max()


def test_satterthwaite_df_agree_with_numerical_pieces():
    """The df from the closed forms equal those from lmerTest's differences (to their error)."""
    r = _fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, True)
    df = ddf.satterthwaite(r)
    Hn, jn = _numerical(r)
    evals, evecs = np.linalg.eigh((Hn + Hn.T) / 2)
    A = 2.0 * (evecs / evals) @ evecs.T
    C = np.asarray(r.cov_params(), dtype=float)
    for k, l in enumerate(np.eye(r.k_fe)):
        g = np.array([l @ J @ l for J in jn])
        assert df[k] == pytest.approx(2.0 * (l @ C @ l) ** 2 / (g @ A @ g), rel=1e-6)
    # lmerTest (tests/reference/inference/ddf_sleepstudy.json): 16.99973, 16.99998 (its own
    # differences' error is ~2e-5 relative)
    assert df == pytest.approx([16.9997262884927, 16.9999837255917], rel=5e-5)


def test_not_on_other_storages():
    """Large systems (no dense storage) keep the numerical differences: None here."""
    rng = np.random.default_rng(1)
    n = 4000
    d = {"g": rng.integers(0, 300, n), "h": rng.integers(0, 40, n), "x": rng.normal(size=n)}
    d["y"] = d["x"] + rng.normal(size=300)[d["g"]] + rng.normal(size=40)[d["h"]] + rng.normal(size=n)
    r = ddf._raw(mf.lmer("y ~ x + (1 | g) + (1 | h)", pd.DataFrame(d)).fit())
    assert exact_satt_derivatives(r.model.deviance(True), r.theta, r.sigma) is None
    assert np.all(np.isfinite(ddf.satterthwaite(r)))


def test_singular_fit_matches_numerical():
    """At a boundary (theta = 0) the closed forms hold as they are (Lambda is linear in theta)."""
    rng = np.random.default_rng(5)
    n = 200
    x = rng.normal(size=n)
    d = pd.DataFrame({"g": rng.integers(0, 10, n), "x": x, "y": x + rng.normal(size=n)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ddf._raw(mf.lmer("y ~ x + (x | g)", d).fit())
    assert r.theta[0] == 0.0
    H, jac = exact_satt_derivatives(r.model.deviance(True), r.theta, r.sigma)
    Hn, jn = _numerical(r)
    assert np.abs(H - Hn).max() <= 5e-6 * np.abs(Hn).max()
    for a, b in zip(jac, jn):
        assert np.abs(a - b).max() <= 1e-6 * np.abs(jn[-1]).max()


def test_refitted_model_shares_the_small_storage():
    """A model with a new response (refits, simulations) makes its dense storage from its
    parent's (only the response's row anew): the same numbers as one built from its rows, and
    the same Satterthwaite df as a fit of a fresh model of that response."""
    fit = mf.lmer("Reaction ~ Days + (Days | Subject)", SL).fit()
    y = np.asarray(fit.simulate(nsim=1, seed=4)).ravel()
    model = ddf._raw(fit).model
    new = model._with_response(y, factor=False)
    assert "_small" not in new.__dict__ and new.__dict__["_small_parent"] is model
    sf = new._small_factor()
    fresh = mf.lmer("Reaction ~ Days + (Days | Subject)", SL.assign(Reaction=y))
    ref = fresh._small_factor()
    assert np.allclose(sf.A, ref.A, rtol=1e-13, atol=1e-9)
    batch = fit.refit_many(np.column_stack([y, y[::-1]]))
    assert ddf.satterthwaite(batch[0]) == pytest.approx(ddf.satterthwaite(fresh.fit()), rel=1e-7)
    # the parent is not pickled with the model
    assert "_small_parent" not in pickle.loads(pickle.dumps(new)).__dict__
