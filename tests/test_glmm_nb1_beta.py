"""NB1 negative binomial and beta GLMMs (glmmTMB's ``nbinom1`` and ``beta_family()``).

References (tests/reference/nb1beta, made by tools/r_reference/nb1_beta_reference.R): glmmTMB
fits (Laplace with the observed information, the family's ``phi`` estimated with the other
parameters, standard errors from central differences of glmmTMB's exact gradient) of glmmTMB's
Salamanders (NB1) and of simulated proportions (beta).  glmmTMB reports "singular convergence
(7)" for its rel.tol = 1e-14 runs: nlminb's stop at the rounding floor, at the optimum (the
log-likelihoods agree to 1e-9).

Tolerances (the project's): fixed effects within 0.002 SE, SEs, SDs and phi within 0.2 %, the
log-likelihood not below glmmTMB's by more than 1e-3; conditional modes within 1e-4 (about
5e-4 of their conditional SDs).  Agreement reached: fixed effects within 5e-5 SE, SEs within
7e-6, SDs and phi within 3e-5 relative, log-likelihoods within 1e-9 (mlmext's is higher by
4e-10 on nb1_salamanders), conditional modes within 2e-6.  AGQ (no glmmTMB reference) is checked against a direct
integration with scipy's quad and scipy.stats' densities.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import integrate, special, stats

import mlmext
from mlmext.formula import api as mf

from refcases import by_name, load_ref, read_data

NB1_F = "count ~ spp + mined + (1 | site)"
BETA_F = "y ~ trt + x + (1 | g)"


@pytest.fixture(scope="module")
def sal():
    return read_data("salamanders.csv")


@pytest.fixture(scope="module")
def bp():
    return read_data("betaprop.csv")


_FITS = {}


def fit_of(name, data):
    if name not in _FITS:
        ref = load_ref("nb1beta", name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # a clean fit: no convergence warnings
            if ref["family"] == "nbinom1":
                model = mf.glmer_nb(ref["formula"], data, variance="nb1")
            else:
                model = mf.glmer(ref["formula"], data, family="beta")
            _FITS[name] = model.fit()
    return _FITS[name]


@pytest.mark.parametrize("name", ["nb1_salamanders", "nb1_crossed", "beta_g", "beta_slope"])
def test_against_glmmtmb(name, sal, bp):
    ref = load_ref("nb1beta", name)
    res = fit_of(name, sal if ref["data"] == "salamanders.csv" else bp)
    assert res.converged
    fe, rfe = by_name(res.fe_params, ref["fixef"])
    se, rse = by_name(res.bse_fe, ref["se"])
    np.testing.assert_array_less(np.abs(fe - rfe) / rse, 0.002)
    np.testing.assert_allclose(se, rse, rtol=2e-3)
    np.testing.assert_allclose(res.phi, ref["sigma"], rtol=2e-3)
    # SDs (and the correlation of beta_slope) in R's order (lme4's VarCorr layout)
    vc = res.varcorr()
    vc = vc[vc["grp"] != "Residual"]
    assert list(vc["grp"]) == [r["grp"] for r in ref["varcorr"]]
    np.testing.assert_allclose(vc["sdcor"].to_numpy(float), [r["sdcor"] for r in ref["varcorr"]],
                               rtol=2e-3)
    assert res.llf > ref["loglik"] - 1e-3
    assert abs(res.llf - ref["loglik"]) < 1e-6          # reached: 4e-10
    assert res.k_params == ref["df"]
    np.testing.assert_allclose([res.aic, res.bic], [ref["aic"], ref["bic"]], atol=2e-3)
    assert res.llf_lme4 is None
    assert res.optim.cov_method == "Hessian (theta, beta, log phi)"
    np.testing.assert_allclose(res.cov_params(), res.cov_fe_joint, rtol=1e-12)


@pytest.mark.parametrize("name, grp", [("nb1_salamanders", "site"), ("beta_g", "g")])
def test_modes_fitted_residuals(name, grp, sal, bp):
    ref = load_ref("nb1beta", name)
    res = fit_of(name, sal if ref["data"] == "salamanders.csv" else bp)
    re = res.random_effects[grp]
    rr = ref["ranef"][grp]
    mine = re.loc[rr["levels"]].iloc[:, 0].to_numpy()
    np.testing.assert_allclose(mine, rr["values"]["(Intercept)"], atol=1e-4)
    np.testing.assert_allclose(res.fittedvalues.to_numpy()[:10], ref["fitted_head"], rtol=1e-4)
    # glmmTMB's beta_family()$variance (1.1.x) is mu (1 - mu), without phi: its "Pearson"
    # residuals are not standardized; ours divide by the conditional SD (Var = mu (1-mu)/(1+phi))
    scale = np.sqrt(1.0 + res.phi) if name.startswith("beta") else 1.0
    np.testing.assert_allclose(res.resid_pearson.to_numpy()[:10] / scale, ref["pearson_head"],
                               rtol=1e-4, atol=1e-6)
    data = sal if ref["data"] == "salamanders.csv" else bp
    np.testing.assert_allclose(res.predict(data.iloc[:10], which="linear").to_numpy(),
                               ref["predict_link_head"], atol=1e-4)
    np.testing.assert_allclose(res.predict(data.iloc[:10]).to_numpy(), ref["fitted_head"],
                               rtol=1e-4)
    note = "nbinom1 sigma() = phi" if name.startswith("nb1") else "beta_family sigma() = phi"
    text = str(res.summary())
    assert note in text and "(theta, beta, log phi) (glmmTMB's)" in text


# ------------------------------------------------------------------ AGQ against direct integration
def _direct_loglik(res, data, logpdf, grp):
    """Sum over groups of log integral prod_i p(y_i | eta_i + b) N(b; 0, sd^2) db (scipy quad)."""
    model = res.model
    eta_f = model.exog @ res.fe_params.to_numpy()
    sd = float(np.sqrt(res.cov_re()[grp].iloc[0, 0]))
    codes = data[grp].cat.codes.to_numpy()
    y = model.endog
    total = 0.0
    for g in np.unique(codes):
        i = codes == g
        f = lambda b: float(np.sum(logpdf(y[i], eta_f[i] + b))) + stats.norm.logpdf(b, 0.0, sd)
        bs = np.linspace(-6 * sd, 6 * sd, 2001)
        top = max(f(b) for b in bs[::50])
        val, _ = integrate.quad(lambda b: np.exp(f(b) - top), -10 * sd, 10 * sd, epsabs=0,
                                epsrel=1e-12, limit=400, points=[0.0])
        total += top + np.log(val)
    return total


def test_nb1_agq_against_quad(sal):
    res1 = fit_of("nb1_salamanders", sal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = mf.glmer_nb(NB1_F, sal, variance="nb1").fit(nagq=12)
    phi = res.phi

    def logpdf(y, eta):
        mu = np.exp(eta)
        return stats.nbinom.logpmf(y, mu / phi, 1.0 / (1.0 + phi))

    direct = _direct_loglik(res, sal, logpdf, "site")
    assert abs(res.llf - direct) < 1e-6
    # the AGQ fit maximizes the AGQ log-likelihood: not below it at the Laplace estimates
    at_laplace = res1.model.loglike(res1.params_object, nagq=12)
    assert res.llf >= at_laplace - 1e-8
    assert res.nagq == 12 and "Adaptive Gauss-Hermite (12 points)" in str(res.summary())


def test_beta_agq_loglike_against_quad(bp):
    res = fit_of("beta_g", bp)
    phi = res.phi
    direct = _direct_loglik(res, bp, lambda y, eta: stats.beta.logpdf(
        y, phi * special.expit(eta), phi * special.expit(-eta)), "g")
    agq = res.model.loglike(res.params_object, nagq=25)
    assert abs(agq - direct) < 1e-6
    assert abs(res.model.loglike(res.params_object) - res.llf) < 1e-9     # Laplace round trip


# ------------------------------------------------------------------ simulation and refits
def test_simulate_moments(sal, bp):
    nb = fit_of("nb1_salamanders", sal)
    sim = nb.simulate(nsim=4000, seed=3, re=False).to_numpy()
    mu = np.exp(nb.model.exog @ nb.fe_params.to_numpy())
    # mean and the NB1 variance mu (1 + phi) of the 644 rows, averaged (Monte Carlo error ~1 %)
    np.testing.assert_allclose(sim.mean(axis=1).mean(), mu.mean(), rtol=0.02)
    np.testing.assert_allclose(sim.var(axis=1).mean(), (mu * (1 + nb.phi)).mean(), rtol=0.03)
    be = fit_of("beta_g", bp)
    sim = be.simulate(nsim=4000, seed=4, re=False).to_numpy()
    mu = 1 / (1 + np.exp(-(be.model.exog @ be.fe_params.to_numpy())))
    assert sim.min() > 0 and sim.max() < 1
    np.testing.assert_allclose(sim.mean(axis=1), mu, atol=0.01)
    np.testing.assert_allclose(sim.var(axis=1).mean(), (mu * (1 - mu) / (1 + be.phi)).mean(),
                               rtol=0.03)


def test_refit_simulated_response(bp):
    """The parametric bootstrap's path: the model rebuilt with a simulated response."""
    from mlmext.inference import refit
    be = fit_of("beta_g", bp)
    y = be.simulate(nsim=1, seed=5).to_numpy()[:, 0]
    new = refit(be, y)
    assert type(new.model).__name__ == "BetaMixedModel" and new.phi > 0
    # the same data, refitted: the same fit
    same = refit(be, be.model.endog)
    np.testing.assert_allclose(same.fe_params, be.fe_params, atol=1e-6)


# ------------------------------------------------------------------ inputs
def test_beta_response_outside_unit_interval(bp):
    for bad in (0.0, 1.0, 1.5):
        d = bp.assign(prop=bp.y.where(bp.index != 7, bad))
        with pytest.raises(ValueError, match=r"the beta response 'prop' must be in the open "
                                             r"interval \(0, 1\); 1 value is 0 or 1.*Smithson"):
            mf.glmer("prop ~ trt + (1 | g)", d, family="beta")


def test_nb1_bad_counts(sal):
    with pytest.raises(ValueError, match="'count' has negative values"):
        mf.glmer_nb(NB1_F, sal.assign(count=sal["count"] - 1), variance="nb1")


def test_spellings_and_unread_arguments(sal, bp):
    assert isinstance(mf.glmer(BETA_F, bp, family=mlmext.glmm.Beta()).family, mlmext.glmm.Beta)
    assert type(mf.glmer(BETA_F, bp, family="Beta")).__name__ == "BetaMixedModel"
    with pytest.raises(TypeError, match="link"):
        mf.glmer(BETA_F, bp, family="beta", link="probit")
    with pytest.raises(TypeError, match="nAGQ"):
        mf.glmer(BETA_F, bp, family="beta").fit(nAGQ=5)
    with pytest.raises(TypeError, match="bogus"):
        mf.glmer_nb(NB1_F, sal, variance="nb1", bogus=1)
    with pytest.raises(TypeError, match="family"):
        mf.glmer_nb(NB1_F, sal, variance="nb1", family="poisson")
    with pytest.raises(ValueError, match="variance must be 'nb2'.*or 'nb1'"):
        mf.glmer_nb(NB1_F, sal, variance="nb3")
    with pytest.raises(NotImplementedError, match="NB1 negative binomial: its expected"):
        mf.glmer_nb(NB1_F, sal, variance="nb1", information="expected")
    with pytest.raises(NotImplementedError, match="Probit link of the beta family"):
        mlmext.glmm.Beta(link=sm.families.links.Probit())
    with pytest.raises(NotImplementedError, match="prior weights with the beta family"):
        mf.glmer(BETA_F, bp.assign(w=2.0), family="beta", weights="w")


def test_dense_system_for_negative_information(sal, bp):
    """Two grouping factors: glmmTMB's Laplace needs the observed information, negative for
    some of Salamanders' counts, which the blocked factorization cannot take; the deviance
    then switches to the dense system (mlmext.laplace.dense).  Checked: its value against the
    blocked one where both apply (beta_slope), its exact gradient against differences."""
    res = fit_of("beta_slope", bp)
    x = res.model._internal(res.params_object)
    blocked = res.model.deviance()
    dense = res.model.deviance()
    dense.dense = True
    for dev in (blocked, dense):
        dev.warm_start = None
    v_b = blocked.loglike(x, tol=1e-20)
    v_d, g_d, m_d = dense.loglike_and_score(x, tol=1e-20)
    assert "factor" in m_d.extra and not blocked.dense
    assert abs(v_b - v_d) < 1e-9
    fd = np.array([(dense.loglike(x + e, tol=1e-20) - dense.loglike(x - e, tol=1e-20)) / 2e-5
                   for e in 1e-5 * np.eye(len(x))])
    np.testing.assert_allclose(g_d, fd, rtol=1e-5, atol=1e-6)
    # the NB1 crossed fit (against glmmTMB above) has negative weights at its modes
    nb = fit_of("nb1_crossed", sal)
    assert np.sum(nb.pirls.w < 0) > 0 and nb.pirls.extra.get("factor") is not None


# ------------------------------------------------------------------ the conditional models
def _conditionals():
    from mlmext.glmm import BetaConditional, NB1Conditional
    rng = np.random.default_rng(1)
    y = rng.poisson(3, size=60).astype(float)
    y[:5], y[5], y[6], y[7] = 0, 40, 2.5, 250          # zeros, a large, a non-integer, > 64
    yb = rng.beta(2, 3, size=60)
    yb[0], yb[1] = 0.999, 1e-4
    pw = rng.uniform(0.0, 2.0, size=60)                 # e.g. a mixture's posterior weights
    return [NB1Conditional(y, 1.7), BetaConditional(yb, 8.0),
            BetaConditional(yb, 8.0, information="expected"),
            NB1Conditional(y, 1.7, prior_weights=pw)], rng.normal(0.3, 1.5, size=60)


def test_conditional_derivatives_against_differences():
    """loglik, d1, w, hessian_terms and param_derivatives against central differences, and the
    densities against scipy.stats (the log-likelihood of the fits rests on them)."""
    conds, eta = _conditionals()
    e = 1e-6
    for c in conds:
        d1, w = c.derivatives(eta)
        np.testing.assert_allclose(d1, (c.loglik_obs(eta + e) - c.loglik_obs(eta - e)) / (2 * e),
                                   rtol=1e-6, atol=1e-6)
        h, dw = c.hessian_terms(eta)
        np.testing.assert_allclose(h, -(c.derivatives(eta + e)[0] - c.derivatives(eta - e)[0])
                                   / (2 * e), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dw, (c.derivatives(eta + e)[1] - c.derivatives(eta - e)[1])
                                   / (2 * e), rtol=1e-6, atol=1e-6)
        s = c.get_params()
        vals = []
        for sign in (1, -1):
            c.set_params(s + sign * e)
            vals.append((c.loglik_obs(eta), *c.derivatives(eta)))
        c.set_params(s)
        for got, p, m in zip(c.param_derivatives(eta), *vals):
            np.testing.assert_allclose(got[:, 0], (p - m) / (2 * e), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(c.param_loglik_derivatives(eta)[:, 0],
                                      c.param_derivatives(eta)[0][:, 0])
        E = np.vstack([eta, eta + 0.5])                  # AGQ's nodes x rows
        np.testing.assert_allclose(c.loglik_obs(E)[1], c.loglik_obs(eta + 0.5), rtol=1e-14)
    nb, be = conds[0], conds[1]
    mu = np.exp(eta)
    whole = nb.y == np.round(nb.y)
    np.testing.assert_allclose(nb.loglik_obs(eta)[whole], stats.nbinom.logpmf(
        nb.y[whole], mu[whole] / nb.phi, 1 / (1 + nb.phi)), rtol=1e-12)
    np.testing.assert_allclose(be.loglik_obs(eta), stats.beta.logpdf(
        be.y, be.phi * special.expit(eta), be.phi * special.expit(-eta)), rtol=1e-11)
    assert (conds[0].derivatives(eta)[1] < 0).any() and (conds[1].derivatives(eta)[1] < 0).any()
    assert (conds[2].derivatives(eta)[1] > 0).all()
    weighted = conds[3]
    np.testing.assert_allclose(weighted.loglik_obs(eta), weighted.pw * nb.loglik_obs(eta))
    np.testing.assert_allclose(weighted.hessian_terms(eta)[1], weighted.pw * nb.hessian_terms(eta)[1])


def test_nb1_digamma_sums():
    """The finite sums of NB1Conditional._abc against scipy's polygammas (and exact where those
    cancel: k = 1e6)."""
    from mlmext.glmm import NB1Conditional
    y = np.array([0, 1, 2, 5, 63, 64, 65, 100, 3.5, 0.2, 3])
    k = np.array([0.01, 0.5, 3, 2.0, 2, 7, 0.3, 4, 1.5, 2.0, 1e6])
    c = NB1Conditional(y, 1.0)
    A, B, C = c._abc(k, 3)
    y0, k0 = y[:-1], k[:-1]
    np.testing.assert_allclose(A[:-1], special.digamma(y0 + k0) - special.digamma(k0)
                               - np.log(2.0), rtol=1e-13)
    np.testing.assert_allclose(B[:-1], special.polygamma(1, y0 + k0) - special.polygamma(1, k0),
                               rtol=1e-13)
    np.testing.assert_allclose(C[:-1], special.polygamma(2, y0 + k0) - special.polygamma(2, k0),
                               rtol=1e-13)
    # k = 1e6, y = 3: the polygamma differences lose 1e-11 to cancellation; the sums are exact
    j = 1e6 + np.arange(3)
    assert abs(A[-1] - (np.sum(1 / j) - np.log(2.0))) < 2e-16          # A includes -log(1 + phi)
    np.testing.assert_allclose([B[-1], C[-1]], [-np.sum(1 / j ** 2), np.sum(2 / j ** 3)],
                               rtol=1e-15)
    np.testing.assert_array_equal(c._abc(np.vstack([k, 2 * k]), 3)[1][1], c._abc(2 * k, 3)[1])


def test_nb1_poisson_limit():
    """Underdispersed counts: phi heads for 0 and the NB1 log-likelihood for the Poisson's
    (the log-likelihood as sums of log(mu + j phi): no log-gamma cancellation as k -> inf)."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(40), 15)
    x = rng.normal(size=600)
    y = rng.binomial(20, special.expit(-1.5 + 0.3 * x + rng.normal(0, 0.3, 40)[g]))
    d = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb1 = mf.glmer_nb("y ~ x + (1 | g)", d, variance="nb1").fit()
        pois = mf.glmer("y ~ x + (1 | g)", d, family="poisson").fit()
    assert nb1.phi < 1e-6
    assert abs(nb1.llf - pois.llf) < 1e-5
    np.testing.assert_allclose(nb1.fe_params, pois.fe_params, atol=1e-4)


def test_beta_expected_information(bp):
    """information="expected": always-positive weights, a different (lme4-style) Laplace value;
    said in the summary; its llf is the Laplace value at its own estimates."""
    ref = load_ref("nb1beta", "beta_g")
    res = mf.glmer(BETA_F, bp, family="beta", information="expected").fit()
    assert res.converged and res.model.information == "expected"
    assert "Laplace (expected information)" in str(res.summary())
    assert (res.pirls.w > 0).all()
    assert abs(res.llf - res.model.loglike(res.params_object)) < 1e-9
    assert abs(res.llf - ref["loglik"]) > 1e-3          # not glmmTMB's approximation
    fe, rfe = by_name(res.fe_params, ref["fixef"])
    se = by_name(res.bse_fe, ref["se"])[1]
    assert np.max(np.abs(fe - rfe) / se) < 0.2          # close to it all the same
