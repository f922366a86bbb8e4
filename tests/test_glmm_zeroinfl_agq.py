"""Adaptive Gauss-Hermite quadrature (``fit(nagq=...)``) for zero-inflated and hurdle models.

glmmTMB fits these models by the Laplace approximation only, so the AGQ log-likelihood is
checked against a direct numerical integration of each level's conditional likelihood over its
random effects (scipy's ``quad``, ``dblquad`` for a correlated slope), with the densities
written out from scipy's: to 1e-6 (with 25 nodes AGQ is exact to ~1e-10 here; the
integrals' own error is below 1e-9).  ``nagq=1`` must be the Laplace value, also through the
quadrature code.  The zeros' observed information may be negative, so the quadrature is
centred and scaled at the modes and curvature of the engine's scalar or dense path.
"""
import warnings

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from mlmext import laplace as lp
from mlmext.formula import api as mf
from refcases import level_integrals, read_data

SAL = "count ~ mined + (1 | site)"
CASES = {"zip_mined": (False, False), "zinb_mined": (True, False),
         "hurdle_pois_mined": (False, True), "hurdle_nb_mined": (True, True)}


def _model(data, name, formula=SAL, zf="~ mined"):
    nb, hurdle = CASES[name]
    if nb:
        return mf.glmer_nb(formula, data, ziformula=zf, hurdle=hurdle)
    return mf.glmer(formula, data, family="poisson", ziformula=zf, hurdle=hurdle)


@pytest.fixture(scope="module")
def sal():
    return read_data("salamanders.csv")


@pytest.fixture(scope="module")
def laplace_fits(sal):
    return {name: _model(sal, name).fit() for name in CASES}


def _logdens(y, mu, pi, alpha, hurdle):
    """log p(y | mu) of the four models from scipy's distributions."""
    if alpha is None:
        lf, lf0 = stats.poisson.logpmf(y, mu), -mu
    else:
        n = 1.0 / alpha
        lf, lf0 = stats.nbinom.logpmf(y, n, n / (n + mu)), n * np.log(n / (n + mu))
    with np.errstate(divide="ignore"):
        if hurdle:
            return np.where(y == 0, np.log(pi), np.log1p(-pi) + lf - np.log(-np.expm1(lf0)))
        return np.where(y == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + lf0), np.log1p(-pi) + lf)


def _direct_scalar(res):
    """sum over sites of log int prod_i p(y_i | eta_i + b) N(b; 0, sd^2) db, by quad."""
    m = res.model
    y, eta_f = m.endog, m.exog @ res.params + m.offset
    pi = special.expit(m.exog_zi @ res.zi_params.to_numpy())
    sd = float(res.theta[0])
    codes = m.re_design.blocks[0].codes
    return level_integrals(codes, sd, lambda i, b: np.sum(
        _logdens(y[i], np.exp(eta_f[i] + b), pi[i], res.alpha, m.hurdle)))


@pytest.mark.parametrize("name", list(CASES))
def test_agq_loglike_against_quad(name, laplace_fits):
    r = laplace_fits[name]
    m = r.model
    direct = _direct_scalar(r)
    assert m.loglike(r.params_object, nagq=25) == pytest.approx(direct, abs=1e-6)
    # the Laplace value differs from the integral (by 6e-4 to 0.05 here): the check can fail
    assert abs(r.llf - direct) > 1e-4
    assert m.loglike(r.params_object, nagq=1) == pytest.approx(r.llf, abs=1e-9)


@pytest.mark.parametrize("name", ["zip_mined", "hurdle_nb_mined"])
def test_agq_fit_against_quad(name, sal, laplace_fits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _model(sal, name).fit(nagq=12)
    assert res.converged and res.nagq == 12
    assert res.llf == pytest.approx(_direct_scalar(res), abs=1e-6)
    # the AGQ fit maximizes the AGQ log-likelihood: not below it at the Laplace estimates
    r1 = laplace_fits[name]
    assert res.llf >= r1.model.loglike(r1.params_object, nagq=12) - 1e-8
    # the parameters moved, but by less than a standard error
    d = np.abs(res.params - r1.params) / r1.bse_fe
    assert 0 < d.max() < 1
    text = str(res.summary())
    assert "Adaptive Gauss-Hermite (12 points)" in text and "lme4's nAGQ" not in text
    assert np.all(np.isfinite(res.bse_zi)) and np.all(res.bse_zi > 0)


def test_nagq1_through_the_quadrature_is_laplace(laplace_fits):
    """The quadrature code with one node (the scalar path's factor and the dense path's)."""
    d = read_data("zislope.csv")
    slope = _model(d, "zinb_mined", "y ~ x + (x | g)", "~ z").fit()
    for r in (laplace_fits["zip_mined"], laplace_fits["hurdle_nb_mined"], slope):
        m = r.model
        dev = m.deviance()
        theta, beta, extra = dev.split(m._internal(r.params_object))
        dev.set_extra(extra)
        modes, lams = dev.modes(theta, beta, tol=1e-20)
        llf, _ = lp.agq_loglik(dev.design, dev.chol_u, None, dev.cond, theta, 1, modes=modes,
                               lams=lams)
        assert llf + dev.cond.loglik_const == pytest.approx(r.llf, abs=1e-8)
    assert "factor" in modes.extra           # the dense path's


def test_correlated_slopes_against_dblquad():
    """(x | g), ZINB (the dense path): AGQ with 25 x 25 nodes against dblquad, on four levels
    (the model built on their rows, at parameters of the fit to all 30)."""
    d = read_data("zislope.csv")
    r = _model(d, "zinb_mined", "y ~ x + (x | g)", "~ z").fit()
    keep = d["g"].cat.categories[:4]
    sub = d[d["g"].isin(keep)].copy()
    sub["g"] = sub["g"].cat.remove_unused_categories()
    m = _model(sub, "zinb_mined", "y ~ x + (x | g)", "~ z")
    agq = m.loglike(r.params_object, nagq=25)
    y, x = m.endog, sub["x"].to_numpy()
    eta_f = m.exog @ r.params
    pi = special.expit(m.exog_zi @ r.zi_params.to_numpy())
    n = 1.0 / r.alpha
    lg = special.gammaln(y + n) - special.gammaln(n) - special.gammaln(y + 1)
    prior = stats.multivariate_normal(np.zeros(2), r.cov_re()["g"].to_numpy())
    codes = sub["g"].cat.codes.to_numpy()
    total = 0.0
    for g in range(4):
        i = codes == g

        def lf(b0, b1):           # NB2 written out (scipy.stats per call is too slow here)
            mu = np.exp(eta_f[i] + b0 + b1 * x[i])
            lnb = lg[i] + n * np.log(n / (n + mu)) + y[i] * np.log(mu / (n + mu))
            l0 = np.logaddexp(np.log(pi[i]), np.log1p(-pi[i]) + n * np.log(n / (n + mu)))
            ll = np.where(y[i] == 0, l0, np.log1p(-pi[i]) + lnb)
            return float(ll.sum()) + prior.logpdf([b0, b1])
        o = optimize.minimize(lambda b: -lf(*b), np.zeros(2), method="Nelder-Mead",
                              options={"xatol": 1e-9, "fatol": 1e-12})
        bh, top = o.x, -o.fun
        e = 1e-3
        H = np.array([[(lf(*(bh + e * (a + c))) - lf(*(bh + e * (a - c)))
                        - lf(*(bh - e * (a - c))) + lf(*(bh - e * (a + c)))) / (4 * e * e)
                       for c in np.eye(2)] for a in np.eye(2)])
        s = 9.0 * np.sqrt(np.diag(np.linalg.inv(-H)))
        val, _ = integrate.dblquad(lambda b1, b0: np.exp(lf(b0, b1) - top), bh[0] - s[0],
                                   bh[0] + s[0], bh[1] - s[1], bh[1] + s[1], epsabs=0,
                                   epsrel=1e-10)
        total += top + np.log(val)
    assert agq == pytest.approx(total, abs=1e-6)
    assert abs(m.loglike(r.params_object) - total) > 1e-3        # Laplace is not the integral


def test_agq_needs_one_grouping_factor(sal):
    m = mf.glmer("count ~ mined + (1 | site) + (1 | spp)", sal, family="poisson",
                 ziformula="~ mined")
    with pytest.raises(NotImplementedError, match="single grouping factor"):
        m.fit(nagq=5)


def test_profile_with_agq(sal):
    """A hurdle Poisson AGQ fit: at both ends of the zi slope's and the SD's profile interval
    the AGQ deviance is 1.96^2 above its minimum when every other parameter is maximized by a
    separate optimizer (Nelder-Mead on the model's public loglike)."""
    res = _model(sal, "hurdle_pois_mined", zf="~ 1").fit(nagq=5)
    m = res.model
    cols = ["zi_Intercept", "sd_Intercept|site"]
    ci = res.conf_int(method="profile", cols=cols)
    p0 = np.asarray(res.params_object.get_packed(), dtype=float)
    z2 = 1.959963984540054 ** 2
    for j, row in ((p0.size - 1, "zi_Intercept"), (res.k_fe, "sd_Intercept|site")):
        for end in ci.loc[row]:
            free = np.delete(np.arange(p0.size), j)

            def full(v):
                p = p0.copy()
                p[j] = end
                p[free] = v
                return p
            o = optimize.minimize(lambda v: -m.loglike(full(v), nagq=5), p0[free],
                                  method="Nelder-Mead",
                                  options={"xatol": 1e-9, "fatol": 1e-11, "maxfev": 20000})
            assert 2.0 * (res.llf + o.fun) == pytest.approx(z2, abs=1e-5), (row, end)
    assert ci.loc["zi_Intercept", 0] < res.zi_params.iloc[0] < ci.loc["zi_Intercept", 1]
