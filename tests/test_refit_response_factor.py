"""A refit's large factor for a new response (issue 14): only the response's cross-products are
formed, the Schur product's pairs are the parent's (the response's row is held dense apart).  Checked
against a factor built from scratch for that response, value, gradient, fixed effects and the
gradient's pair sums, and the refit against a fresh fit."""
import numpy as np
import pytest

from mlmext.formula import api as mf
from mlmext.linalg import _lead, _response

from test_rest_hessian import FORMULA, _three_factors


def _pair(formula, weights, seed=1):
    df = _three_factors(weights=weights)
    kw = {"weights": "w"} if weights else {}
    m = mf.lmer(formula, df, **kw)
    m._cross_products()
    y2 = 0.7 * df["y"].to_numpy() + np.random.default_rng(seed).normal(size=len(df))
    return m._with_response(y2), mf.lmer(formula, df.assign(y=y2), **kw)


def _same_value_and_gradient(a, b, theta):
    """Two deviances' criterion and gradient at ``theta`` agree (the same arithmetic up to the
    order of the response's correction)."""
    fa, ga = a.value_and_grad(theta)
    fb, gb = b.value_and_grad(theta)
    assert abs(fa - fb) < 1e-9 * abs(fb)
    np.testing.assert_allclose(ga, gb, rtol=1e-9, atol=1e-9 * np.abs(gb).max())


@pytest.mark.parametrize("formula,weights,dense", [
    (FORMULA, False, False), (FORMULA, True, False),
    ("y ~ x + (1 | user) + (1 | item)", False, False), (FORMULA, False, True)])
def test_new_response_factor_equals_a_fresh_one(formula, weights, dense, monkeypatch):
    if dense:             # A_r1 held dense (DenseSchur): its response row is replaced
        monkeypatch.setattr(_lead, "SMALL_DENSE", 10 ** 9)
    new, fresh = _pair(formula, weights)
    kind = type(new._xprod._schur)
    assert kind is (_response.DenseSchur if dense else _response.SplitSchur)
    for reml in (False, True):
        a, b = new.deviance(reml), fresh.deviance(reml)
        theta = a.design.theta_start * 0.7 + 0.05
        _same_value_and_gradient(a, b, theta)
        np.testing.assert_allclose(a.at(theta).beta, b.at(theta).beta, rtol=1e-10)
    if not dense:         # the pair sums of a K nonzero on the response's row too
        K = np.tril(np.random.default_rng(2).normal(size=(a._factor.r,) * 2))
        Va, Vb = a._factor._schur.pair_sums(K), b._factor._schur.pair_sums(K)
        np.testing.assert_allclose(Va, Vb, rtol=1e-10, atol=1e-10 * np.abs(Vb).max())


def test_refit_of_a_large_model_equals_a_fresh_fit():
    df = _three_factors()
    r = mf.lmer(FORMULA, df).fit(reml=False)
    # a response near the fit's (as a simulation from it): the refit starts close
    y2 = df["y"].to_numpy() + 0.3 * np.random.default_rng(5).normal(size=len(df))
    a = r.refit(y2)
    b = mf.lmer(FORMULA, df.assign(y=y2)).fit(reml=False)
    assert type(a.model._xprod._schur) is _response.SplitSchur
    # no exact Hessian on this storage: L-BFGS-B from the parent's theta in its Hessian's metric
    assert a.optim.tried[0][0] == "L-BFGS-B from the start in the metric of the fit's Hessian"
    assert a.optim.nfev < b.optim.nfev
    assert a.converged and b.converged
    assert abs(a.llf - b.llf) < 1e-6                   # both pass the 1e-7 decrement check
    assert np.max(np.abs(a.fe_params - b.fe_params) / b.bse_fe) < 1e-3
    np.testing.assert_allclose(a.bse_fe, b.bse_fe, rtol=1e-4)
    # the parent is untouched
    assert r.model._xprod is not a.model._xprod
    np.testing.assert_array_equal(r.model.endog, df["y"].to_numpy())


def test_refit_of_a_refit_keeps_the_designs_pairs():
    """A refit's factor refitted again: the design's pairs are shared, the response's row
    replaced (not stacked)."""
    new, fresh = _pair(FORMULA, False)
    y3 = fresh.endog * 0.5 + 1.0
    again = new._with_response(y3)
    third = mf.lmer(FORMULA, _three_factors().assign(y=y3))
    assert type(again._xprod._schur) is _response.SplitSchur
    assert again._xprod._schur.pairs is new._xprod._schur.pairs
    for reml in (False, True):
        a, b = again.deviance(reml), third.deviance(reml)
        theta = a.design.theta_start * 0.6 + 0.1
        _same_value_and_gradient(a, b, theta)
