"""glmer / glmer_nb with everyday mistakes: each input works (checked against a direct
computation) or fails with a clear error naming what to write instead (issue 11)."""
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.special import gammaln
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from mlmext import datasets
from mlmext import laplace as lp
from mlmext.formula import api as mf
from mlmext.glmm import NegativeBinomialMixedModel
from refcases import no_warning

B, P = sm.families.Binomial, sm.families.Poisson
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return datasets.load("cbpp")


@pytest.fixture(scope="module")
def d():
    rng = np.random.default_rng(1)
    n = 120
    g = np.repeat(np.arange(12), 10)
    out = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=n),
                        "f": np.tile(["a", "b", "c"], 40)})
    out["yb"] = rng.binomial(1, 1 / (1 + np.exp(-(0.5 * out.x + rng.normal(size=12)[g]))))
    out["yc"] = rng.poisson(np.exp(0.5 + 0.3 * out.x + 0.5 * rng.normal(size=12)[g]))
    out["tr"] = rng.integers(1, 6, n)
    out["sc"] = rng.binomial(out.tr, 0.4)
    return out


@pytest.fixture(scope="module")
def pois_fit(d):
    return mf.glmer("yc ~ x + (1 | g)", d, family=P()).fit()


# ------------------------------------------------------------------ keyword arguments
@pytest.mark.parametrize("kw, match", [
    ({"nAGQ": 25}, r"'nAGQ' \(use \.fit\(nagq=\.\.\.\)"),
    ({"method": "bfgs"}, r"'method' \(the GLMM fit has one method"),
    ({"REML": False}, r"'REML' \(GLMMs are fitted by maximum likelihood"),
    ({"maxiters": 10}, r"'maxiters' \(did you mean maxiter=\?\)"),
    ({"bogus": 1}, r"'bogus' \(it takes disp, maxiter, nagq, stage1, start_params, tol\)"),
])
def test_fit_rejects_unknown_keywords(d, kw, match):
    mod = mf.glmer("yc ~ x + (1 | g)", d, family=P())
    with pytest.raises(TypeError, match=match):
        mod.fit(**kw)
    with pytest.raises(TypeError, match=match):
        mf.glmer_nb("yc ~ x + (1 | g)", d).fit(**kw)


def test_glmer_rejects_link_and_exposure_with_the_spelling_that_works(d):
    with pytest.raises(TypeError, match=r"glmer\(\) got an unexpected keyword argument 'link' "
                                        r"\(the link belongs in the family"):
        mf.glmer("yb ~ x + (1 | g)", d, family=B(), link=sm.families.links.Probit())
    with pytest.raises(TypeError, match=r"'exposure' \(.*offset=np\.log\(exposure\)"):
        mf.glmer("yc ~ x + (1 | g)", d, family=P(), exposure=d.tr)
    with pytest.raises(TypeError, match=r"glmer_nb\(\).*'exposure'.*offset=np\.log"):
        mf.glmer_nb("yc ~ x + (1 | g)", d, exposure=d.tr)


def test_glmer_nb_rejects_a_family(d):
    for fam in (P(), sm.families.NegativeBinomial(alpha=0.5), "poisson"):
        with pytest.raises(TypeError, match=r"glmer_nb\(\).*'family'.*always the negative "
                                            r"binomial.*alpha estimated"):
            mf.glmer_nb("yc ~ x + (1 | g)", d, family=fam)
    with pytest.raises(NotImplementedError, match="log link only"):
        mf.glmer_nb("yc ~ x + (1 | g)", d, link=sm.families.links.Sqrt())


# ------------------------------------------------------------------ family
@pytest.mark.parametrize("name", ["binomial", "Binomial", "BINOMIAL", " binomial "])
def test_family_given_by_name(cbpp, name):
    ref = mf.glmer(CBPP, cbpp, family=B()).fit()
    res = mf.glmer(CBPP, cbpp, family=name).fit()
    assert isinstance(res.family, B)
    assert res.llf == pytest.approx(ref.llf, abs=1e-9)
    np.testing.assert_allclose(res.fe_params, ref.fe_params, atol=1e-9)


def test_family_poisson_by_name_and_class(d, pois_fit):
    for fam in ("poisson", "Poisson", P):
        res = mf.glmer("yc ~ x + (1 | g)", d, family=fam).fit()
        assert res.llf == pytest.approx(pois_fit.llf, abs=1e-9)


@pytest.mark.parametrize("fam, exc, match", [
    ("gaussian", NotImplementedError, "lmer"),
    ("Gamma", ValueError, "the Gamma response 'yb' must be positive; 66 values are <= 0"),
    ("inverse.gaussian", ValueError, "the inverse Gaussian response 'yb' must be positive"),
    ("tweedie", NotImplementedError, "tweedie family is not implemented"),
    ("negative.binomial", ValueError, "glmer_nb"),
    ("quasipoisson", NotImplementedError, "quasi families have no likelihood"),
    ("bernoulli", ValueError, "unknown family 'bernoulli'; use 'binomial', 'poisson', 'Gamma'"),
    (sm.families.links.Logit(), TypeError, "is a link, not a family.*Binomial\\(link="),
    (sm.families.links.Logit, TypeError, "is a link, not a family"),
    (3, TypeError, "family must be a statsmodels family"),
])
def test_family_mistakes(d, fam, exc, match):
    with pytest.raises(exc, match=match):
        mf.glmer("yb ~ x + (1 | g)", d, family=fam)


# ------------------------------------------------------------------ nagq
@pytest.mark.parametrize("nagq, match", [
    (1000, "nagq=1000 is more quadrature nodes than the 100 allowed"),
    (101, "more quadrature nodes than the 100 allowed"),
    (2.5, "whole number of quadrature nodes.*got 2.5"),
    ("5", "whole number"),
    (np.nan, "whole number"),
    (0, "at least 1.*Laplace"),
    (-1, "at least 1"),
])
def test_nagq_out_of_range_is_a_value_error(cbpp, nagq, match):
    mod = mf.glmer(CBPP, cbpp, family=B())
    with pytest.raises(ValueError, match=match):
        mod.fit(nagq=nagq)


@pytest.mark.parametrize("kw, match", [
    ({"maxiter": 0}, "maxiter must be a positive whole number; got 0"),
    ({"maxiter": -1}, "maxiter must be a positive whole number"),
    ({"maxiter": 2.5}, "maxiter must be a positive whole number"),
    ({"tol": -1.0}, "tol must be a positive number; got -1.0"),
    ({"tol": 0}, "tol must be a positive number"),
])
def test_iteration_limits_and_tolerances(d, kw, match):
    with pytest.raises(ValueError, match=match):
        mf.glmer("yc ~ x + (1 | g)", d, family=P()).fit(**kw)


def test_nagq_25_50_100_agree_on_cbpp(cbpp):
    mod = mf.glmer(CBPP, cbpp, family=B())
    fits = {n: mod.fit(nagq=n) for n in (25, 50, 100)}
    llf = {n: f.llf for n, f in fits.items()}
    assert all(np.isfinite(v) for v in llf.values())
    # measured: -91.98336903731058, ...054, ...052; lme4 1.1-31 gives logLik -50.0050152701 at
    # nAGQ = 25, 50 and 100 on its scale (without the saturated log-likelihood), and stops
    # at nAGQ = 101 ("ord < 101L is not TRUE")
    for f in fits.values():
        assert f.llf_lme4 == pytest.approx(-50.0050152701, abs=1e-7)
    assert llf[50] == pytest.approx(llf[25], abs=1e-9)
    assert llf[100] == pytest.approx(llf[25], abs=1e-9)
    assert llf[25] == pytest.approx(-91.983369037, abs=1e-6)
    whole = mod.fit(nagq=25.0)
    assert whole.nagq == 25 and whole.llf == pytest.approx(llf[25], abs=1e-12)


def test_agq_needs_one_grouping_factor(d):
    crossed = d.assign(h=(np.arange(len(d)) % 7).astype(str))
    for mod in (mf.glmer("yc ~ x + (1 | g) + (1 | h)", crossed, family=P()),
                mf.glmer_nb("yc ~ x + (1 | g) + (1 | h)", crossed)):
        with pytest.raises(NotImplementedError, match="single grouping factor.*\\(g, h\\)"):
            mod.fit(nagq=5)


def test_agq_product_grid_cap(d):
    dd = d.assign(a=np.cos(np.arange(len(d))), b=np.sin(np.arange(len(d))))
    mod = mf.glmer("yc ~ x + (1 + a + b | g)", dd, family=P())
    with pytest.raises(ValueError, match=r"nagq=47 with 3 random effects per level is a product "
                                         r"grid of 103,823 nodes.*use nagq <= 46"):
        mod.fit(nagq=47)


def test_gauss_hermite_rule_cap():
    z, w = lp.gh_rule(100)
    assert np.all(np.isfinite(z)) and w.sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="100 allowed"):
        lp.gh_rule(101)


# ------------------------------------------------------------------ links and scale
@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.DomainWarning")
def test_poisson_sqrt_link_matches_lme4():
    # rows as built by tools/r_reference/glmm_inputs_reference.R (lme4 1.1-31 values below)
    i = np.arange(200)
    g, x = i // 10, ((7 * i) % 13) / 13
    mu = (3 + x + 0.3 * np.sin(1.3 * g + 0.5)) ** 2
    y = np.floor(mu + np.sqrt(mu) * np.sin(2.1 * i) + 0.5)
    assert y.sum() == 2416
    dd = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    res = no_warning(UserWarning, lambda: mf.glmer(
        "y ~ x + (1 | g)", dd, family=P(sm.families.links.Sqrt())).fit())
    np.testing.assert_allclose(res.fe_params, [3.006741457253, 0.991146023657], atol=2e-6)
    np.testing.assert_allclose(res.theta, [0.139522653714], atol=2e-6)
    assert res.llf == pytest.approx(-497.747358529, abs=1e-6)
    np.testing.assert_allclose(res.bse_fe, [0.0734433495002, 0.1230494876892], rtol=1e-4)
    # the Laplace likelihood at theta = 0 is the GLM likelihood
    glm = sm.GLM(y, sm.add_constant(x), family=P(sm.families.links.Sqrt())).fit()
    assert res.model.loglike(np.r_[glm.params, 0.0]) == pytest.approx(glm.llf, abs=1e-8)


def test_sqrt_link_with_negative_eta_warns():
    gt = datasets.load("grouseticks")
    with pytest.warns(UserWarning, match="observations have a linear predictor where the sqrt "
                                         "link's mean decreases"):
        res = mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", gt, family=P(sm.families.links.Sqrt())).fit()
    assert np.isfinite(res.llf)


def test_binomial_log_link_failure_says_why(d):
    mod = mf.glmer("yb ~ x + (1 | g)", d, family=B(sm.families.links.Log()))
    with pytest.raises(lp.PIRLSError, match=r"binomial model \(log link\).*mean must stay in "
                                            r"\[0, 1\].*logit"):
        mod.fit()


def test_identity_link_means_below_zero_are_impossible(d):
    mod = mf.glmer("yc ~ x + (1 | g)", d, family=P(sm.families.links.Identity()))
    ll = mod._make_conditional().loglik_obs(np.array([-0.5, 0.5] * 60))
    assert np.all(np.isneginf(ll[::2])) and np.all(np.isfinite(ll[1::2]))


def test_huge_counts_are_fitted_scale_free():
    # no zeros and almost no Poisson noise: scaling the counts shifts the intercept by log(c)
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(15), 8)
    x = rng.normal(size=g.size)
    base = np.exp(0.2 * x + 0.4 * rng.normal(size=15)[g])
    fits = {}
    for c in (1e6, 1e9):
        dd = pd.DataFrame({"y": np.round(c * base), "x": x, "g": g.astype(str)})
        fits[c] = no_warning(Warning, lambda: mf.glmer("y ~ x + (1 | g)", dd, family=P()).fit())
    a, b = fits[1e6], fits[1e9]
    assert b.fe_params["Intercept"] - a.fe_params["Intercept"] == pytest.approx(np.log(1e3), abs=1e-4)
    assert b.fe_params["x"] == pytest.approx(a.fe_params["x"], abs=1e-4)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-3)


# ------------------------------------------------------------------ responses
def test_binomial_response_outside_0_1(d):
    with pytest.raises(ValueError, match=r"binomial response 'y' must be 0/1.*values in \[0, 2\]"):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=d.yb + (d.x > 1)), family=B())
    with pytest.raises(ValueError, match="'y' is categorical with 3 levels"):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=pd.Categorical(d.f)), family=B())


def test_negative_and_non_integer_counts(d):
    for make in (lambda y: mf.glmer("y ~ x + (1 | g)", d.assign(y=y), family=P()),
                 lambda y: mf.glmer_nb("y ~ x + (1 | g)", d.assign(y=y))):
        with pytest.raises(ValueError, match=r"'y' has negative values \(min -1\)"):
            make(d.yc - 1)
        with pytest.warns(UserWarning, match="'y' has non-integer values"):
            make(d.yc + 0.5)


def test_binomial_proportion_without_trials_warns(d):
    with pytest.warns(UserWarning, match="non-integer number of successes.*weights = number of trials"):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=d.sc / d.tr), family=B())
    # with the trials as weights it is cbind(successes, failures); the fit is singular (theta =
    # 0), and its boundary ConvergenceWarning (a UserWarning too) is not what this checks
    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return mf.glmer("y ~ x + (1 | g)", d.assign(y=d.sc / d.tr), family=B(),
                            weights="tr").fit()
    a = no_warning(UserWarning, fit)
    with pytest.warns(ConvergenceWarning, match="singular"):
        b = mf.glmer("cbind(sc, tr - sc) ~ x + (1 | g)", d, family=B()).fit()
    assert a.llf == pytest.approx(b.llf, abs=1e-8)


def test_cbind_rows_with_zero_trials_change_nothing(d):
    z = d.copy()
    z.loc[:4, ["sc", "tr"]] = 0
    res = mf.glmer("cbind(sc, tr - sc) ~ x + (1 | g)", z, family=B()).fit()
    ref = mf.glmer("cbind(sc, tr - sc) ~ x + (1 | g)", z.iloc[5:], family=B()).fit()
    assert res.llf == pytest.approx(ref.llf, abs=1e-8)
    np.testing.assert_allclose(res.fe_params, ref.fe_params, atol=1e-6)


@pytest.mark.parametrize("value, fam, match", [
    (0, B, r"binomial response 'y' is constant \(all failures\).*-inf.*Response is constant"),
    (1, B, r"constant \(all successes\).*\+inf"),
    (0, P, "count response 'y' is all zeros"),
])
def test_constant_response_without_finite_estimates(d, value, fam, match):
    with pytest.raises(ValueError, match=match):
        mf.glmer("y ~ x + (1 | g)", d.assign(y=value), family=fam())
    if fam is P:
        with pytest.raises(ValueError, match=match):
            mf.glmer_nb("y ~ x + (1 | g)", d.assign(y=value))


@pytest.mark.parametrize("nb", [False, True])
def test_constant_positive_count_is_the_glm_fit(d, nb):
    dd = d.assign(y=3)
    mod = mf.glmer_nb("y ~ x + (1 | g)", dd) if nb else mf.glmer("y ~ x + (1 | g)", dd, family=P())
    with pytest.warns(ConvergenceWarning, match="singular"):       # theta = 0: a true boundary
        res = mod.fit()
    np.testing.assert_allclose(res.fe_params, [np.log(3.0), 0.0], atol=1e-6)
    assert res.theta[0] == pytest.approx(0.0, abs=1e-6)
    glm_llf = float(np.sum(3 * np.log(3.0) - 3.0 - gammaln(4.0))) * len(dd)
    assert res.llf == pytest.approx(glm_llf, abs=1e-5)


def test_missing_responses_are_dropped(d, pois_fit):
    dd = d.assign(y=d.yc.astype(float))
    dd.loc[[0, 5, 17], "y"] = np.nan
    res = mf.glmer("y ~ x + (1 | g)", dd, family=P()).fit()
    ref = mf.glmer("y ~ x + (1 | g)", dd.dropna(subset=["y"]), family=P()).fit()
    assert res.nobs == 117 and res.llf == pytest.approx(ref.llf, abs=1e-9)


@pytest.mark.parametrize("api, fam_word", [("glmer", "Poisson"), ("glmer_nb", "negative binomial")])
def test_non_count_responses_for_count_families(d, api, fam_word):
    kw = {"family": P()} if api == "glmer" else {}
    fn = getattr(mf, api)
    with pytest.raises(ValueError, match=f"'y' is categorical.*the {fam_word} family needs "
                                         "numeric counts.*pd.to_numeric"):
        fn("y ~ x + (1 | g)", d.assign(y=d.yc.astype(str)), **kw)
    with pytest.raises(ValueError, match=f"cbind\\(successes, failures\\), a binomial response; "
                                         f"the {fam_word} family needs counts"):
        fn("cbind(sc, tr - sc) ~ x + (1 | g)", d, **kw)


def test_offset_as_column_name_array_and_formula(d):
    dd = d.assign(lt=np.log(d.tr))
    a = mf.glmer("yc ~ x + (1 | g)", dd, family=P(), offset="lt").fit()
    b = mf.glmer("yc ~ x + (1 | g)", dd, family=P(), offset=np.log(d.tr.to_numpy())).fit()
    c = mf.glmer("yc ~ x + offset(lt) + (1 | g)", dd, family=P()).fit()
    assert a.llf == pytest.approx(b.llf, abs=1e-9) and a.llf == pytest.approx(c.llf, abs=1e-9)
    with pytest.raises(ValueError, match="unknown column 'nope' given as offset"):
        mf.glmer("yc ~ x + (1 | g)", d, family=P(), offset="nope")


# ------------------------------------------------------------------ start_params
@pytest.mark.parametrize("start, match", [
    ([0.0, 1.0], r"start_params needs 3 values \(\['Intercept', 'x', 'g.Intercept'\]\); got 2"),
    ([0.0, np.nan, 1.0], "non-finite values"),
    ([0.0, 0.0, -1.0], "theta must be >= its lower bounds"),
])
def test_bad_start_params(d, start, match):
    with pytest.raises(ValueError, match=match):
        mf.glmer("yc ~ x + (1 | g)", d, family=P()).fit(start_params=start)


def test_start_params_of_the_negative_binomial_name_alpha(d):
    with pytest.raises(ValueError, match=r"needs 4 values \(.*'g.Intercept', 'alpha'\]\); got 3"):
        mf.glmer_nb("yc ~ x + (1 | g)", d).fit(start_params=[0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="alpha must be positive"):
        mf.glmer_nb("yc ~ x + (1 | g)", d).fit(start_params=[0.0, 0.0, 1.0, 0.0])


def test_good_start_params_reach_the_same_fit(d, pois_fit):
    res = mf.glmer("yc ~ x + (1 | g)", d, family=P()).fit(start_params=[0.0, 0.0, 0.5])
    assert res.llf == pytest.approx(pois_fit.llf, abs=1e-7)


# ------------------------------------------------------------------ separation
# at a separated fit the estimates run off and the optimizer's checks fail (a ConvergenceWarning
# beside the separation warning this checks), as lme4 warns too
@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
def test_complete_separation_warns(d):
    dd = d.assign(y=(d.x > 0).astype(int))
    with pytest.warns(PerfectSeparationWarning, match=r"fixed effects \[.*'x'\] have no finite "
                                                      r"estimates.*separation"):
        res = mf.glmer("y ~ x + (1 | g)", dd, family=B()).fit()
    assert abs(res.fe_params["x"]) > 20


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
def test_quasi_separation_by_a_factor_level_warns(d):
    rng = np.random.default_rng(3)
    dd = d.assign(y=np.where(d.f == "a", 0, rng.binomial(1, 0.5, len(d))))
    with pytest.warns(PerfectSeparationWarning, match=r"\['Intercept', 'f\[T.b\]', 'f\[T.c\]'\]"):
        mf.glmer("y ~ f + x + (1 | g)", dd, family=B()).fit()


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
@pytest.mark.parametrize("nb", [False, True])
def test_counts_all_zero_at_a_factor_level_warn(d, nb):
    rng = np.random.default_rng(4)
    dd = d.assign(y=np.where(d.f == "a", 0, rng.poisson(2.0, len(d))))
    mod = mf.glmer_nb("y ~ f + x + (1 | g)", dd) if nb else \
        mf.glmer("y ~ f + x + (1 | g)", dd, family=P())
    with pytest.warns(PerfectSeparationWarning, match="counts are all zero"):
        mod.fit()


def test_no_separation_warning_for_ordinary_fits(cbpp):
    res = no_warning(PerfectSeparationWarning, lambda: mf.glmer(CBPP, cbpp, family=B()).fit())
    assert res.converged


# ------------------------------------------------------------------ negative binomial results
def test_negative_binomial_family_and_simulation():
    gt = datasets.load("grouseticks")
    res = mf.glmer_nb("TICKS ~ YEAR + (1 | LOCATION)", gt).fit()
    assert isinstance(res.family, sm.families.NegativeBinomial)
    assert res.family.alpha == pytest.approx(res.alpha)
    assert type(res.family).__name__ == "NegativeBinomial"
    pickle.loads(pickle.dumps(res.model.family))
    # simulated counts are negative binomial (was: Poisson), given the conditional modes
    sims = res.simulate(nsim=1000, seed=2, use_u=True).to_numpy()
    mu = np.asarray(res.predict())
    ratio = sims.var(axis=1, ddof=1) / (mu + res.alpha * mu ** 2)
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.05)


def test_negative_binomial_model_can_be_rebuilt():
    # refits (bootstrap, influence) rebuild the model and pass its family back
    from mlmext.inference._refit import _rebuild_model
    gt = datasets.load("grouseticks")
    res = mf.glmer_nb("TICKS ~ YEAR + (1 | LOCATION)", gt).fit()
    again = _rebuild_model(res.model)
    assert isinstance(again, NegativeBinomialMixedModel)
    assert again.fit().llf == pytest.approx(res.llf, abs=1e-6)


# ----------------------------------------------------------------- prediction and pickling
def test_predict_arguments_and_offsets(d):
    """An offset column is read from new data; an array offset must be passed to predict."""
    dd = d.assign(t=np.linspace(1.0, 3.0, len(d)))
    col = mf.glmer("yc ~ x + (1 | g)", dd, family=sm.families.Poisson(), offset=np.log(dd["t"])).fit()
    with pytest.raises(ValueError, match=r"pass offset="):
        col.predict(dd.head(3))
    np.testing.assert_allclose(col.predict(dd, offset=np.log(dd["t"])), col.fittedvalues, rtol=1e-12)
    dd["lt"] = np.log(dd["t"])
    named = mf.glmer("yc ~ x + (1 | g)", dd, family=sm.families.Poisson(), offset="lt").fit()
    np.testing.assert_allclose(named.predict(dd), named.fittedvalues, rtol=1e-12)
    np.testing.assert_allclose(named.predict(dd, which="linear"), np.log(named.fittedvalues), rtol=1e-12)
    with pytest.raises(ValueError, match=r"which='linear'"):
        named.predict(dd, which="link")
    with pytest.raises(TypeError, match=r"'re_form'.*re=False"):
        named.predict(dd, re_form=False)


def test_glmm_results_pickle(cbpp):
    import copy
    import pickle
    res = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                   family=sm.families.Binomial()).fit()
    for r2 in (pickle.loads(pickle.dumps(res)), copy.deepcopy(res)):
        np.testing.assert_array_equal(r2.params, res.params)
        np.testing.assert_array_equal(r2.predict(cbpp.head(6)), res.predict(cbpp.head(6)))


def test_disp_prints_what_the_optimizer_did(cbpp, capsys):
    """disp is read, not swallowed: one line with the log-likelihood and the phases tried."""
    res = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                   family=sm.families.Binomial()).fit(disp=True)
    out = capsys.readouterr().out
    assert f"log-likelihood {res.llf:.6f} (Laplace)" in out and "tried" in out
