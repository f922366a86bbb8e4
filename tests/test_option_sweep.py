"""Public options no other test passed (the option sweep): each checked against an
independent computation."""
import warnings

import numpy as np
import pytest
import statsmodels.api as sm

import mlmext.formula.api as mf
from mlmext import datasets


@pytest.fixture(scope="module")
def sleep_fit():
    return mf.lmer("Reaction ~ Days + (Days|Subject)", datasets.load("sleepstudy")).fit()


@pytest.fixture(scope="module")
def cbpp_fit():
    cb = datasets.load("cbpp")
    prop = cb["incidence"] / cb["size"]
    return mf.glmer("prop ~ period + (1|herd)", cb.assign(prop=prop),
                    family=sm.families.Binomial(), weights=cb["size"]).fit()


@pytest.mark.parametrize("which", ["sleep_fit", "cbpp_fit"])
def test_bootstrap_func_gets_labelled_results(which, request):
    # func(results) got the raw results (params an ndarray) for the fit itself and for
    # single refits, wrappers for lockstep refits: params["Days"] raised IndexError
    res = request.getfixturevalue(which)
    name = res.params.index[1]
    seen = []

    def stat(fit):
        seen.append(type(fit.params).__name__)
        return fit.params[name]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = res.bootstrap(func=stat, nsim=3, seed=4)
        ys = res.simulate(3, seed=np.random.default_rng(4), use_u=False)
        want = [res.refit(ys.iloc[:, k]).params[name] for k in range(3)]
    assert set(seen) == {"Series"}
    assert boot.attrs["t0"].iloc[0] == res.params[name]
    np.testing.assert_allclose(boot["t1"], want, rtol=1e-5)
