"""Zero-inflated and hurdle NB1 GLMMs (glmmTMB's ``nbinom1`` / ``truncated_nbinom1`` with
``ziformula``): ``glmer_nb(..., variance="nb1", ziformula=..., hurdle=...)``.

References (tests/reference/zi, made by tools/r_reference/zi_nb1_reference.R): Salamanders
``count ~ spp + mined + (1 | site)`` (ZINB1 with ``zi = ~ 1``, hurdle NB1 with ``~ mined``), the
simulated counts with an exposure offset (``zisim.csv``, ZINB1 and hurdle NB1) and with
correlated random slopes (``zislope.csv``, ZINB1: the dense path of the modes).

Tolerances (the project's): count and zero-inflation coefficients within 0.002 SE; SEs, SDs,
phi and the SE of log phi within 0.2 %; the log-likelihood not below glmmTMB's by more than
1e-3, and within 1e-6 of it (glmmTMB's end points have gradients up to 4e-3, which changes the
log-likelihood by ~1e-8); correlations within 0.002; conditional modes 1e-4, predictions 5e-4
relative.  Reached: coefficients within 2.1e-4 SE, SEs within 2.6e-4 relative, SDs, phi and
the SE of log phi within 5e-5, log-likelihoods 2e-9 to 4e-8 above glmmTMB's, modes within 5e-5,
predictions within 1.4e-4.
Independent checks: the log-likelihood against a direct Laplace computation with scipy's
NB1 density, the exact score against differences, AGQ against quad, simulated moments.
"""
import warnings

import numpy as np
import pytest
from scipy import optimize, special, stats

from mlmext.formula import api as mf
from refcases import (assert_score_matches_differences, assert_zi_matches_glmmtmb, level_integrals,
                      load_ref, read_data)

CASES = {"zinb1_spp": ("salamanders", "count ~ spp + mined + (1 | site)", "~ 1", False),
         "hurdle_nb1_spp": ("salamanders", "count ~ spp + mined + (1 | site)", "~ mined", True),
         "zisim_zinb1": ("zisim", "y ~ x + offset(np.log(t)) + (1 | g)", "~ z", False),
         "zisim_hurdle_nb1": ("zisim", "y ~ x + offset(np.log(t)) + (1 | g)", "~ z", True),
         "zislope_zinb1": ("zislope", "y ~ x + (x | g)", "~ z", False)}


def make(name):
    data, f, zf, hurdle = CASES[name]
    d = read_data(data + ".csv")
    return mf.glmer_nb(f, d, variance="nb1", ziformula=zf, hurdle=hurdle), d


@pytest.fixture(scope="module")
def fits():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in CASES:
            out[name] = make(name)[0].fit()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_against_glmmTMB(name, fits):
    ref = load_ref("zi", name)
    r = fits[name]
    assert_zi_matches_glmmtmb(r, ref)
    np.testing.assert_allclose(r.phi, ref["phi"], rtol=2e-3)
    np.testing.assert_allclose(r.bse_log_phi, ref["se_log_phi"], rtol=2e-3)
    assert r.alpha is None and r.bse_log_alpha is None
    assert abs(r.llf - ref["loglik"]) < 1e-6


@pytest.mark.parametrize("name", ["zinb1_spp", "hurdle_nb1_spp"])
def test_modes_and_predict_types_against_glmmTMB(name, fits):
    ref = load_ref("zi", name)
    r = fits[name]
    re = r.ranef()["site"]
    assert [str(v) for v in re.index] == ref["ranef"]["levels"]
    np.testing.assert_allclose(re.iloc[:, 0].to_numpy(), ref["ranef"]["values"], atol=1e-4)
    # 5e-4: the ZINB1's zi intercept (SE 0.9) is 1.6e-4 SE from glmmTMB's (whose end point
    # has a gradient of 7e-4), which moves pi by 1.4e-4 relative; the others agree to 7e-5
    for which, key in (("conditional", "conditional"), ("zprob", "zprob"), ("mean", "response")):
        np.testing.assert_allclose(r.predict(which=which).to_numpy(), ref["predict"][key],
                                   rtol=5e-4)


def _logdens(y, mu, pi, phi, hurdle):
    """log p(y | mu) of the ZINB1 / hurdle NB1 from scipy's negative binomial."""
    lf = stats.nbinom.logpmf(y, mu / phi, 1.0 / (1.0 + phi))
    lf0 = -mu / phi * np.log1p(phi)
    with np.errstate(divide="ignore"):
        if hurdle:
            return np.where(y == 0, np.log(pi), np.log1p(-pi) + lf - np.log(-np.expm1(lf0)))
        return np.where(y == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + lf0), np.log1p(-pi) + lf)


def _site_terms(r):
    m = r.model
    y, eta_f = m.endog, m.exog @ r.params + m.offset
    pi = special.expit(m.exog_zi @ r.zi_params.to_numpy())
    return m, y, eta_f, pi, m.re_design.blocks[0].codes


@pytest.mark.parametrize("name", ["zinb1_spp", "hurdle_nb1_spp", "zisim_zinb1"])
def test_laplace_loglik_direct(name, fits):
    """The Laplace log-likelihood at the estimates, each level's mode by a scalar optimizer
    and the curvature there by second differences of scipy's density."""
    r = fits[name]
    m, y, eta_f, pi, codes = _site_terms(r)
    lam = float(r.theta[0])
    total = 0.0
    for g in np.unique(codes):
        i = codes == g

        def f(u):
            return -(np.sum(_logdens(y[i], np.exp(eta_f[i] + lam * u), pi[i], r.phi, m.hurdle))
                     - 0.5 * u * u)
        u_hat = optimize.minimize_scalar(f, bracket=(-3, 3), tol=1e-12).x
        e = 1e-4
        curv = (f(u_hat + e) - 2 * f(u_hat) + f(u_hat - e)) / e ** 2
        total += -f(u_hat) - 0.5 * np.log(curv)
    np.testing.assert_allclose(r.llf, total, atol=1e-6)


@pytest.mark.parametrize("name", ["zinb1_spp", "hurdle_nb1_spp", "zislope_zinb1"])
def test_exact_score_matches_differences(name, fits):
    r = fits[name]
    assert_score_matches_differences(r.model, r.params_object.get_packed() * 1.05)


@pytest.mark.parametrize("name", ["zinb1_spp", "hurdle_nb1_spp"])
def test_agq_against_quad(name, fits):
    """AGQ (25 nodes) at the Laplace estimates against quad of each site's integral."""
    r = fits[name]
    m, y, eta_f, pi, codes = _site_terms(r)
    sd = float(r.theta[0])
    total = level_integrals(codes, sd, lambda i, b: np.sum(
        _logdens(y[i], np.exp(eta_f[i] + b), pi[i], r.phi, m.hurdle)))
    assert m.loglike(r.params_object, nagq=25) == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize("name", ["zinb1_spp", "zisim_hurdle_nb1"])
def test_simulate_full_model(name, fits):
    """Simulated responses (the modes as random effects) have the model's mean, variance and
    zero probability, within 5 Monte Carlo standard errors (the variance: 6 %)."""
    r = fits[name]
    m = r.model
    nsim = 3000
    sim = r.simulate(nsim=nsim, seed=11, use_u=True).to_numpy()
    assert np.all(sim == np.round(sim)) and sim.min() >= 0
    mean = r.predict(which="mean").to_numpy()
    pi = r.predict(which="zprob").to_numpy()
    mu = np.exp(r.predict(which="linear").to_numpy())
    p0 = pi if m.hurdle else pi + (1.0 - pi) * np.exp(-mu / r.phi * np.log1p(r.phi))
    var = r._cond.variance(np.log(mu))
    se_mean = np.sqrt(var.sum() / nsim) / len(mean)
    assert abs(sim.mean() - mean.mean()) < 5 * se_mean
    se_p0 = np.sqrt(np.sum(p0 * (1 - p0)) / nsim) / len(p0)
    assert abs((sim == 0).mean() - p0.mean()) < 5 * se_p0
    np.testing.assert_allclose(sim.var(axis=1).mean(), var.mean(), rtol=0.06)
    if m.hurdle:
        assert np.all(sim[:, :50][sim[:, :50] > 0] >= 1)


def test_summary_and_names(fits):
    r = fits["hurdle_nb1_spp"]
    s = str(r.summary())
    assert "NB1 [phi = " in s and "NB1 dispersion phi" in s and "Zero model" in s
    assert "log phi) (glmmTMB's)" in s
    assert r.model.param_names[-1] == "phi" and r.family.phi == r.phi
    with pytest.raises(TypeError, match="nb_alpha"):
        r.conf_int(method="profile", nb_alpha="free")
    with pytest.raises(ValueError, match="phi must be positive"):
        p = r.params_object.get_packed().copy()
        p[-1] = -1.0
        r.model.loglike(p)


def test_profile_against_direct_maximization(fits):
    """Hurdle NB1: at both ends of phi's and the zi slope's profile interval the deviance is
    1.96^2 above its minimum when every other parameter is maximized by a separate optimizer
    (BFGS on the model's public loglike and score)."""
    r = fits["zisim_hurdle_nb1"]
    m = r.model
    ci = r.conf_int(method="profile", cols=["phi", "zi_z"])
    p0 = np.asarray(r.params_object.get_packed(), dtype=float)
    names = m.param_names
    z2 = 1.959963984540054 ** 2
    for row in ("phi", "zi_z"):
        j = names.index(row)
        assert ci.loc[row, 0] < p0[j] < ci.loc[row, 1]
        for end in ci.loc[row]:
            free = np.delete(np.arange(p0.size), j)

            def full(v):
                p = p0.copy()
                p[j] = end
                p[free] = v
                return p
            o = optimize.minimize(lambda v: -m.loglike(full(v)), p0[free],
                                  jac=lambda v: -m.score(full(v))[free], method="BFGS",
                                  options={"gtol": 1e-8})
            assert 2.0 * (r.llf + o.fun) == pytest.approx(z2, abs=1e-5), (row, end)


def test_predict_new_data_direct_and_pickle(fits):
    """Hurdle NB1 on new rows: the truncated count mean ``mu / (1 - (1 + phi)^(-mu / phi))``
    and ``E[y] = (1 - pi)`` times it, from the formulas; unchanged after pickling."""
    import pickle
    r = fits["hurdle_nb1_spp"]
    new = read_data("salamanders.csv").iloc[[0, 5, 300, 643]]
    mu = np.exp(r.predict(data=new, which="linear").to_numpy())
    pi = special.expit(r.predict(data=new, which="zlink").to_numpy())
    cond = mu / (1.0 - (1.0 + r.phi) ** (-mu / r.phi))
    np.testing.assert_allclose(r.predict(data=new, which="conditional").to_numpy(), cond,
                               rtol=1e-12)
    np.testing.assert_allclose(r.predict(data=new).to_numpy(), (1.0 - pi) * cond, rtol=1e-12)
    again = pickle.loads(pickle.dumps(r))
    assert again.phi == r.phi
    np.testing.assert_array_equal(again.predict(data=new).to_numpy(), r.predict(data=new).to_numpy())
