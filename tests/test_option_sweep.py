"""Public options no other test passed (the option sweep): each checked against an
independent computation."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

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


@pytest.fixture(scope="module")
def wine_fit():
    return mf.clmm("rating ~ temp + contact + (1|judge)", datasets.load("wine")).fit()


def test_clmm_refit_categorical_response(wine_fit):
    # the response as fitted (a categorical with levels '1'..'5') was read as codes 1..5:
    # an IndexError; now mapped by the fit's levels, as a fresh fit to that column
    wine = datasets.load("wine")
    same = wine_fit.refit(wine["rating"])
    np.testing.assert_allclose(same.params, wine_fit.params, atol=1e-6)
    y2 = wine["rating"].iloc[np.roll(np.arange(len(wine)), 5)].reset_index(drop=True)
    fresh = mf.clmm("rating ~ temp + contact + (1|judge)", wine.assign(rating=y2)).fit()
    np.testing.assert_allclose(wine_fit.refit(y2).llf, fresh.llf, rtol=1e-8)
    # the codes 0..4 as a categorical with the fit's levels are the same response
    codes = wine["rating"].cat.codes.to_numpy()[np.roll(np.arange(len(wine)), 5)]
    cat = pd.Categorical.from_codes(codes, wine_fit.model.levels)
    np.testing.assert_allclose(wine_fit.refit(cat).llf, fresh.llf, rtol=1e-8)
    # the labels as strings (pandas' str dtype or object)
    np.testing.assert_allclose(wine_fit.refit(y2.astype(str)).llf, fresh.llf, rtol=1e-8)
    np.testing.assert_allclose(wine_fit.refit(y2.astype(object)).llf, fresh.llf, rtol=1e-8)


@pytest.mark.parametrize("shift", [0.0, 1.0, 0.5, -1.0])
def test_clmm_refit_rejects_ambiguous_numbers(wine_fit, shift):
    # the categories are the numbers 1..5: numbers 0..4 (codes?) or 1..5 (labels?) could be
    # either, and 1..4 alone would be read a category off in silence
    codes = datasets.load("wine")["rating"].cat.codes.to_numpy() + shift
    with pytest.raises(ValueError, match="ambiguous"):
        wine_fit.refit(codes)
    with pytest.raises(ValueError, match="not categories of the fit"):
        wine_fit.refit(pd.Series(codes).astype(str).where(codes != 2, "7"))


def test_clmm_refit_codes_where_the_categories_are_not_numbers(wine_fit):
    wine = datasets.load("wine")
    lab = {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}
    w2 = wine.assign(rating=pd.Categorical(wine["rating"].astype(str).map(lab),
                                           categories=list("abcde"), ordered=True))
    fit = mf.clmm("rating ~ temp + contact + (1|judge)", w2).fit()
    np.testing.assert_allclose(fit.llf, wine_fit.llf, rtol=1e-10)
    codes = w2["rating"].cat.codes.to_numpy()[::-1].copy()
    want = mf.clmm("rating ~ temp + contact + (1|judge)",
                   w2.assign(rating=pd.Categorical.from_codes(codes, list("abcde"),
                                                                 ordered=True))).fit()
    np.testing.assert_allclose(fit.refit(codes).llf, want.llf, rtol=1e-8)
    with pytest.raises(ValueError, match="category codes 0 .. 4"):
        fit.refit(codes + 0.5)


@pytest.mark.parametrize("method,kwargs,unread", [
    ("wald", {"boot_type": "basic"}, "boot_type"),
    ("wald", {"nsim": 50, "seed": 1}, "nsim, seed"),
    ("wald", {"names": "lme4"}, "names"),
    ("profile", {"nsim": 50}, "nsim"),
    ("profile", {"progress": True}, "progress"),
])
def test_conf_int_rejects_settings_of_other_methods(sleep_fit, method, kwargs, unread):
    # these were ignored: conf_int(boot_type="basic") gave the Wald intervals
    with pytest.raises(TypeError, match=f"does not read {unread}"):
        sleep_fit.conf_int(method=method, cols=[1] if method == "wald" else ["Days"], **kwargs)


def test_conf_int_defaults_and_read_settings_still_accepted(sleep_fit):
    # the defaults spelt out, and each method's own settings, still work
    wald = sleep_fit.conf_int(nsim=500, boot_type="perc", names="descriptive")
    half = stats.t.ppf(0.975, 17) * sleep_fit.bse_fe["Days"]          # Satterthwaite df 17
    np.testing.assert_allclose(wald.loc["Days"], sleep_fit.params["Days"] + np.array([-half, half]),
                               rtol=1e-6)
    prof = sleep_fit.conf_int(method="profile", cols=[".sigma"], names="lme4")
    assert list(prof.index) == [".sigma"]


def _gee(data, formula="Weight ~ Time", cov=None):
    import statsmodels.formula.api as smf
    return smf.gee(formula, "Pig", data, cov_struct=cov or sm.cov_struct.Independence(),
                   family=sm.families.Gaussian()).fit()


def test_qic_independence_fit_checked():
    # qic(independence=) read only the fit's estimates: an exchangeable fit or one on other
    # rows gave a QIC close to the right one in silence (another design: a matmul error)
    from mlmext.gee import qic
    d = datasets.load("dietox")
    ex = _gee(d, cov=sm.cov_struct.Exchangeable())
    np.testing.assert_allclose(qic(ex, independence=_gee(d)), qic(ex), rtol=1e-10)
    with pytest.raises(ValueError, match="Exchangeable working correlation"):
        qic(ex, independence=_gee(d, cov=sm.cov_struct.Exchangeable()))
    with pytest.raises(ValueError, match="same rows"):
        qic(ex, independence=_gee(d.iloc[:-10]))
    with pytest.raises(ValueError, match="same rows"):
        qic(ex, independence=_gee(d, "Weight ~ Time + Evit"))


def test_emmeans_contrast_ref(cbpp_fit):
    # ref with pairwise contrasts was ignored; with trt.vs.ctrl it is checked by hand
    e = cbpp_fit.emmeans("period")
    with pytest.raises(TypeError, match="ref is for method='trt.vs.ctrl'"):
        e.contrast("pairwise", ref=2)
    got = e.contrast("trt.vs.ctrl", ref=2, adjust="none")
    b = np.asarray(cbpp_fit.fe_params)
    V = np.asarray(cbpp_fit.cov_params())[:4, :4]
    L = np.vstack([np.eye(4)[i] - np.eye(4)[2] for i in (0, 1, 3)])
    L[:, 0] = 0.0                              # the intercept cancels in each difference
    est, se = L @ b, np.sqrt(np.diag(L @ V @ L.T))
    np.testing.assert_allclose(got["estimate"].astype(float), est, rtol=1e-8)
    np.testing.assert_allclose(got["SE"].astype(float), se, rtol=1e-6)
    np.testing.assert_allclose(got["p.value"].astype(float), 2 * stats.norm.sf(np.abs(est / se)),
                               rtol=1e-6)


def test_simulate_use_u(sleep_fit):
    # use_u=True with re=False was ignored (population-level draws); lme4 refuses it too
    with pytest.raises(TypeError, match="use_u=True"):
        sleep_fit.simulate(2, seed=1, re=False, use_u=True)
    # use_u=True: the fitted values (with the modes) plus N(0, sigma^2) noise of the same seed
    got = sleep_fit.simulate(2, seed=3, use_u=True).to_numpy()
    noise = np.random.default_rng(3).standard_normal((len(got), 2)) * sleep_fit.sigma
    np.testing.assert_allclose(got, np.asarray(sleep_fit.fittedvalues)[:, None] + noise, rtol=1e-10)


def test_allfit_maxfev(sleep_fit, cbpp_fit):
    # maxfev is the GLMM / clmm minimizers' limit: an LMM's allfit ignored it in silence
    with pytest.raises(TypeError, match="maxfev is read for GLMMs"):
        sleep_fit.allfit(methods=["Powell"], maxfev=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = cbpp_fit.allfit(methods=["Nelder-Mead"], maxfev=7)
    assert tab.loc["Nelder-Mead", "note"].startswith("7 evaluations")
    assert not tab.loc["Nelder-Mead", "converged"]
    assert tab.loc["Nelder-Mead", "deviance"] > tab.loc["default", "deviance"] + 1.0
