"""res.refit(new_y): the same model refitted to a new response (lme4's refit(fit, newresp))."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext import datasets
from mlmext.formula import api as mf

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


@pytest.mark.parametrize("reml", [True, False])
def test_refit_equals_a_fresh_fit_to_the_new_response(sleep, reml):
    r = mf.lmer(SLEEP, sleep).fit(reml=reml)
    y = np.asarray(r.simulate(nsim=1, seed=3)).ravel()
    a = r.refit(y)
    b = mf.lmer(SLEEP, sleep.assign(Reaction=y)).fit(reml=reml)
    assert a.reml == reml and a.converged
    assert abs(a.criterion - b.criterion) < 1e-7                 # both at the optimum
    assert np.max(np.abs(a.fe_params - b.fe_params) / b.bse_fe) < 1e-3
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-3, atol=1e-4)
    assert abs(a.criterion - r.criterion) > 1.0                   # a different response
    # the original result is untouched, and refitting its own response gives it back
    assert r.model.endog[0] == sleep.Reaction.iloc[0]
    same = r.refit(sleep.Reaction)
    assert abs(same.criterion - r.criterion) < 1e-7                # within the checks' decrement


def test_refit_binomial_counts_or_proportions():
    cb = datasets.load("cbpp")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb,
                 family=sm.families.Binomial()).fit()
    counts = np.column_stack([cb.incidence, cb["size"] - cb.incidence])
    assert g.refit(counts).llf == pytest.approx(g.llf, abs=1e-8)
    rng = np.random.default_rng(1)
    s = rng.binomial(cb["size"], 0.2)
    a = g.refit(np.column_stack([s, cb["size"] - s]))
    b = g.refit(s / cb["size"])                                   # the same as proportions
    assert a.llf == pytest.approx(b.llf, abs=1e-8) and abs(a.llf - g.llf) > 1.0
    with pytest.raises(ValueError, match="add up to the fit's numbers of trials"):
        g.refit(np.column_stack([s, cb["size"] - s + 1]))


def test_refit_clmm_keeps_its_settings():
    o = mf.clmm("rating ~ temp + (1 | judge)", datasets.load("wine")).fit(nagq=5)
    # (its categories are the numbers 1..5: the codes, model.endog, as a categorical)
    o2 = o.refit(pd.Categorical.from_codes(o.model.endog.astype(int), o.model.levels))
    with pytest.raises(ValueError, match="ambiguous"):
        o.refit(o.model.endog)
    assert o2.nagq == 5
    np.testing.assert_allclose(o2.params, o.params, atol=1e-8)


def test_refit_rejects_what_it_cannot_use(sleep):
    r = mf.lmer(SLEEP, sleep).fit()
    y = sleep.Reaction.to_numpy()
    with pytest.raises(ValueError, match=r"shape \(179,\); the fit's response has shape \(180,\)"):
        r.refit(y[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        r.refit(np.where(np.arange(180) == 5, np.nan, y))
    with pytest.raises(TypeError, match="bogus"):
        r.refit(y, bogus=1)
    ml = r.refit(y, reml=False)                                   # fit arguments override
    assert not ml.reml and ml.llf == pytest.approx(mf.lmer(SLEEP, sleep).fit(reml=False).llf, abs=1e-7)
