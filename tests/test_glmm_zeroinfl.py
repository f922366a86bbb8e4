"""Zero-inflated and hurdle Poisson / NB2 GLMMs (glmmTMB's ``ziformula``).

References (tests/reference/zi, made by tools/r_reference/zi_hurdle_reference.R): glmmTMB's
Salamanders, ``count ~ mined + (1 | site)`` with ``ziformula = ~ mined`` (and ``~ 1``) for
``family = poisson``, ``nbinom2``, ``truncated_poisson`` and ``truncated_nbinom2``, and
simulated counts (tests/data/zisim.csv) with an exposure offset and a continuous
zero-inflation covariate (ZIP and hurdle NB2); crossed ``(1 | site) + (1 | spp)`` (ZIP) and
correlated slopes ``(x | g)`` (tests/data/zislope.csv: ZINB2, hurdle Poisson), whose modes use
the engine's dense path: the count
and zero-inflation coefficients with their standard errors (``vcov(fit)``: the inverse
Hessian in all parameters), the RE SD, NB2's theta (``1 / alpha``), logLik, AIC/BIC, and for
four of them the conditional modes and glmmTMB's three prediction types.

Tolerances (the project's): fixed effects (count and zero-inflation) within 0.002 SE; SEs,
the SD and theta within 0.2 %; the log-likelihood not below glmmTMB's by more than 1e-3
(reached: coefficients within 2e-4 SE (4e-5 on Salamanders; glmmTMB's own end point has a
gradient of 4e-3 on the simulated hurdle NB2, and our log-likelihood is 2.4e-8 higher there),
SEs within 5e-5, SDs and theta within 1.4e-5 relative, correlations within 1e-5,
log-likelihoods within 3e-9 of glmmTMB's or above).  Conditional modes and predictions: 1e-4 (they move
with the estimates by ~1e-5 here).

Independent checks: the Laplace log-likelihood against a direct computation (scipy's
densities, each site's mode by a scalar optimizer and its curvature by differences), the
predictions against the formulas, the simulated responses' moments against the model's,
the exact gradient against differences of the log-likelihood, and PIRLS's Fisher-scoring
fallback where a level's observed information is negative.
"""
import pickle
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import optimize, special, stats

from mlmext import laplace as lp
from mlmext.formula import api as mf
from refcases import assert_score_matches_differences, assert_zi_matches_glmmtmb, load_ref, read_data

CASES = {"zip_mined": ("~ mined", False, False), "zip_int": ("~ 1", False, False),
         "zinb_mined": ("~ mined", True, False), "hurdle_pois_mined": ("~ mined", False, True),
         "hurdle_nb_mined": ("~ mined", True, True),
         "zisim_zip_offset": ("~ z", False, False), "zisim_hurdle_nb": ("~ z", True, True),
         "zip_crossed": ("~ mined", False, False), "zislope_zinb": ("~ z", True, False),
         "zislope_hurdle_pois": ("~ z", False, True)}
FORMULA = "count ~ mined + (1 | site)"
FORMULAS = {"zisim": "y ~ x + offset(np.log(t)) + (1 | g)",
            "zip_crossed": "count ~ mined + (1 | site) + (1 | spp)",
            "zislope_zinb": "y ~ x + (x | g)", "zislope_hurdle_pois": "yp ~ x + (x | g)"}
DENSE = ["zip_crossed", "zislope_zinb", "zislope_hurdle_pois"]


@pytest.fixture(scope="module")
def data():
    return read_data("salamanders.csv")


def make(data, name):
    zf, nb, hurdle = CASES[name]
    formula = FORMULAS.get(name, FORMULAS["zisim"] if name.startswith("zisim") else FORMULA)
    if nb:
        return mf.glmer_nb(formula, data, ziformula=zf, hurdle=hurdle)
    return mf.glmer(formula, data, family="poisson", ziformula=zf, hurdle=hurdle)


@pytest.fixture(scope="module")
def fits(data):
    sets = {"zisim": read_data("zisim.csv"), "zislope": read_data("zislope.csv")}
    return {name: make(sets.get(name.split("_")[0], data), name).fit() for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_against_glmmTMB(name, fits):
    ref = load_ref("zi", name)
    r = fits[name]
    assert_zi_matches_glmmtmb(r, ref)
    if ref.get("theta") is not None:
        np.testing.assert_allclose(1.0 / r.alpha, ref["theta"], rtol=2e-3)
    else:
        assert r.alpha is None


@pytest.mark.parametrize("name", ["zip_mined", "zinb_mined", "hurdle_pois_mined", "hurdle_nb_mined",
                                  "zip_crossed"])
def test_modes_and_predict_types_against_glmmTMB(name, fits):
    ref = load_ref("zi", name)
    r = fits[name]
    re = r.ranef()["site"]
    assert [str(v) for v in re.index] == ref["ranef"]["levels"]
    np.testing.assert_allclose(re.iloc[:, 0].to_numpy(), ref["ranef"]["values"], atol=1e-4)
    for which, key in (("conditional", "conditional"), ("zprob", "zprob"), ("mean", "response")):
        np.testing.assert_allclose(r.predict(which=which).to_numpy(), ref["predict"][key],
                                   rtol=1e-4)
    np.testing.assert_allclose(r.fittedvalues.to_numpy(), ref["predict"]["response"], rtol=1e-4)


def _direct_density(y, mu, pi, alpha, hurdle):
    """log p(y) of the four models from scipy's distributions."""
    if alpha is None:
        f, f0 = stats.poisson.pmf(y, mu), np.exp(-mu)
    else:
        n = 1.0 / alpha
        f, f0 = stats.nbinom.pmf(y, n, n / (n + mu)), (n / (n + mu)) ** n
    with np.errstate(divide="ignore"):        # far from the mode a density underflows
        if hurdle:
            return np.log(np.where(y == 0, pi, (1.0 - pi) * f / (1.0 - f0)))
        return np.log(np.where(y == 0, pi, 0.0) + (1.0 - pi) * f)


@pytest.mark.parametrize("name", [c for c in CASES if c not in DENSE])
def test_laplace_loglik_direct(name, fits):
    """The Laplace log-likelihood at the estimates, each site's integral approximated directly:
    its mode by a scalar optimizer, the curvature there by differences."""
    r = fits[name]
    m = r.model
    y = m.endog
    lam = float(r.theta[0])
    eta_f = m.exog @ r.params + m.offset
    pi = special.expit(m.exog_zi @ r.zi_params.to_numpy())
    codes = m.re_design.blocks[0].codes
    total = 0.0
    for g in range(m.re_design.blocks[0].m):
        idx = codes == g

        def f(u):
            return -(np.sum(_direct_density(y[idx], np.exp(eta_f[idx] + lam * u), pi[idx], r.alpha,
                                            m.hurdle)) - 0.5 * u * u)
        u_hat = optimize.minimize_scalar(f, bracket=(-3, 3), tol=1e-12).x
        e = 1e-4
        curv = (f(u_hat + e) - 2 * f(u_hat) + f(u_hat - e)) / e ** 2
        total += -f(u_hat) - 0.5 * np.log(curv)
    np.testing.assert_allclose(r.llf, total, atol=1e-6)
    assert m.loglike(r.params_object) == pytest.approx(r.llf, abs=1e-9)


def test_negative_observed_information_and_fisher_fallback(fits):
    """ZIP zeros have negative observed information at the modes (glmmTMB's Laplace uses it);
    where a level's penalized information is not positive, PIRLS takes a Fisher-scoring step
    there and still converges to the modes (without the fallback it stops)."""
    r = fits["zip_mined"]
    m = r.model
    w = r._cond.derivatives(r.linear_predictor())[1]
    assert np.sum(w < 0) > 100
    dev = m.deviance()
    dev.set_extra(r._extra_internal())
    des, cond = m.re_design, dev.cond
    eta_f = m.exog @ r.params
    theta = np.array([1.0])
    codes = des.blocks[0].codes
    u0 = np.full(des.blocks[0].m, 1.0)
    M0 = 1.0 + np.bincount(codes, weights=cond.derivatives(eta_f + u0[codes])[1])
    assert M0.min() <= 0                       # a level with negative curvature at the start
    far = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=u0, tol=1e-20, scalar_fast=True)
    near = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=None, tol=1e-20, scalar_fast=True)
    assert far.converged and near.converged
    np.testing.assert_allclose(far.u, near.u, atol=1e-9)
    assert far.laplace == pytest.approx(near.laplace, abs=1e-9)
    cond.fisher_weights = None                 # no fallback: the step is refused
    bad = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=u0, tol=1e-20, scalar_fast=True)
    assert not bad.converged and "not positive definite" in bad.message


@pytest.mark.parametrize("name", ["zip_mined", "zinb_mined", "hurdle_pois_mined", "hurdle_nb_mined",
                                  "zip_crossed", "zislope_zinb"])
def test_exact_score_matches_differences(name, fits):
    r = fits[name]
    assert_score_matches_differences(r.model, r.params_object.get_packed() * 1.05)


@pytest.mark.parametrize("name", ["zinb_mined", "hurdle_nb_mined"])
def test_predict_new_data_direct(name, fits, data):
    r = fits[name]
    new = data.iloc[[0, 100, 300, 643]].copy()
    new["site"] = new["site"].astype(str)
    new.loc[new.index[0], "site"] = "nowhere"            # an unseen level: population value
    beta, gamma, a = r.params, r.zi_params.to_numpy(), r.alpha
    X = np.column_stack([np.ones(4), (new["mined"] == "no").to_numpy(float)])
    b = r.ranef()["site"].iloc[:, 0]
    bb = np.array([0.0 if s not in b.index else b[s] for s in new["site"].astype(str)])
    for re in (True, False):
        eta = X @ beta + (bb if re else 0.0)
        mu = np.exp(eta)
        pi = special.expit(X @ gamma)
        cond = mu / (1.0 - (1.0 + a * mu) ** (-1.0 / a)) if r.model.hurdle else mu
        got = {w: r.predict(data=new, re=re, which=w).to_numpy()
               for w in ("linear", "conditional", "zprob", "zlink", "mean")}
        np.testing.assert_allclose(got["linear"], eta, rtol=1e-12)
        np.testing.assert_allclose(got["conditional"], cond, rtol=1e-12)
        np.testing.assert_allclose(got["zprob"], pi, rtol=1e-12)
        np.testing.assert_allclose(got["zlink"], X @ gamma, rtol=1e-12)
        np.testing.assert_allclose(got["mean"], (1.0 - pi) * cond, rtol=1e-12)
    again = pickle.loads(pickle.dumps(r))
    np.testing.assert_allclose(again.predict(data=new).to_numpy(), r.predict(data=new).to_numpy())
    with pytest.raises(ValueError, match="use which='mean'"):
        r.predict(which="response")


@pytest.mark.parametrize("name", ["zip_mined", "hurdle_nb_mined"])
def test_simulate_full_model(name, fits):
    """Simulated responses (the modes as random effects) have the model's mean and zero
    probability, within 5 Monte Carlo standard errors."""
    r = fits[name]
    m = r.model
    nsim = 3000
    sim = r.simulate(nsim=nsim, seed=7, use_u=True).to_numpy()
    assert np.all(sim == np.round(sim)) and sim.min() >= 0
    mean = r.predict(which="mean").to_numpy()
    pi = r.predict(which="zprob").to_numpy()
    mu = r.predict(which="linear").pipe(np.exp).to_numpy()
    if m.hurdle:
        p0 = pi
        assert np.all((sim > 0) | (sim == 0))
    else:
        p0 = pi + (1.0 - pi) * np.exp(-mu)
    var = r._cond.variance(np.log(mu))
    se_mean = np.sqrt(var.sum() / nsim) / len(mean)
    assert abs(sim.mean() - mean.mean()) < 5 * se_mean
    se_p0 = np.sqrt(np.sum(p0 * (1 - p0)) / nsim) / len(p0)
    assert abs((sim == 0).mean() - p0.mean()) < 5 * se_p0


def test_summary_tables(fits):
    s = str(fits["zinb_mined"].summary())
    assert "Zero-inflation model (logit)" in s and "Negative binomial dispersion alpha" in s
    assert f"{fits['zinb_mined'].zi_params.iloc[1]:.4f}" in s
    assert f"{fits['zinb_mined'].bse_zi.iloc[1]:.4f}" in s
    assert "Zero model (P(y = 0), logit)" in str(fits["hurdle_pois_mined"].summary())


def test_bad_input(data):
    d = data.copy()
    d["count"] = d["count"].astype(float)
    neg = d.copy()
    neg.loc[3, "count"] = -1
    with pytest.raises(ValueError, match="'count'.*non-negative integer"):
        mf.glmer(FORMULA, neg, family="poisson", ziformula="~ mined")
    frac = d.copy()
    frac.loc[3, "count"] = 1.5
    with pytest.raises(ValueError, match="'count'.*non-negative integer"):
        mf.glmer_nb(FORMULA, frac, ziformula="~ mined", hurdle=True)
    with pytest.raises(ValueError, match="'minedx'"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="~ minedx")
    with pytest.raises(NotImplementedError, match="random effects in the zero-inflation"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="~ 1 + (1 | site)")
    with pytest.raises(ValueError, match="one-sided"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="count ~ mined")
    with pytest.raises(ValueError, match="no terms"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="~ 0")
    with pytest.raises(ValueError, match="ziformula is required"):
        mf.glmer(FORMULA, d, family="poisson", hurdle=True)
    with pytest.raises(ValueError, match="hurdle must be True or False"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="~ 1", hurdle="yes")
    pos = d[d["count"] > 0]
    with pytest.raises(ValueError, match="no zeros"):
        mf.glmer(FORMULA, pos, family="poisson", ziformula="~ 1")
    with pytest.raises(ValueError, match="glmer_nb"):
        mf.glmer(FORMULA, d, family=sm.families.NegativeBinomial(alpha=2.0), ziformula="~ 1")
    with pytest.raises(ValueError, match="hurdle=True"):
        mf.glmer(FORMULA, d, family="truncated_poisson")
    with pytest.raises(ValueError, match="glmer_nb.*hurdle=True"):
        mf.glmer(FORMULA, d, family="truncated_nbinom2", ziformula="~ 1")
    with pytest.raises(NotImplementedError, match="Binomial"):
        mf.glmer(FORMULA, d, family="binomial", ziformula="~ 1")
    with pytest.raises(NotImplementedError, match="prior weights"):
        mf.glmer(FORMULA, d, family="poisson", ziformula="~ 1", weights=np.full(len(d), 2.0))


def test_unread_arguments(data, fits):
    with pytest.raises(TypeError, match="zi_link"):
        mf.glmer(FORMULA, data, family="poisson", ziformula="~ 1", zi_link="logit")
    with pytest.raises(TypeError, match="family"):
        mf.glmer_nb(FORMULA, data, ziformula="~ 1", family="poisson")
    m = make(data, "zip_int")
    with pytest.raises(TypeError, match="optimizer"):
        m.fit(optimizer="nlminb")
    with pytest.raises(ValueError, match="nagq"):
        m.fit(nagq=2.5)
    r = fits["zip_mined"]
    with pytest.raises(TypeError, match="type"):
        r.predict(type="zprob")
    for call in (r.r2, r.icc):
        with pytest.raises(NotImplementedError):
            call()


def test_params_vector_and_start(fits, data):
    r = fits["zinb_mined"]
    m = r.model
    assert m.param_names == ["Intercept", "mined[T.no]", "site.Intercept", "zi_Intercept",
                             "zi_mined[T.no]", "alpha"]
    assert len(r.params_object.get_packed()) == r.k_params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = m.fit(start_params=r.params_object)
    assert again.llf == pytest.approx(r.llf, abs=1e-8)
    np.testing.assert_allclose(again.zi_params, r.zi_params, atol=1e-4 * r.bse_zi.min())


def test_rows_subset_missing_and_labels(data, fits):
    """The zero-inflation design follows the count model's rows: subset, rows dropped for a
    missing count covariate, duplicated index labels (kept in the results' index)."""
    ref = fits["zip_mined"]
    keep = (data["DOY"] > -1).to_numpy()
    a = mf.glmer(FORMULA, data, ziformula="~ mined", subset="DOY > -1").fit()
    b = mf.glmer(FORMULA, data[keep], ziformula="~ mined").fit()
    assert a.nobs == keep.sum() < ref.nobs
    assert a.llf == pytest.approx(b.llf, abs=1e-9)
    np.testing.assert_allclose(a.zi_params, b.zi_params, atol=1e-8)
    d = data.copy()
    d["mined2"] = d["mined"].astype(object)
    d.loc[5, "mined2"] = np.nan                     # dropped by the count formula ...
    c = mf.glmer("count ~ mined2 + (1 | site)", d, ziformula="~ mined").fit()
    e = mf.glmer(FORMULA, data.drop(index=5), ziformula="~ mined").fit()
    assert c.nobs == ref.nobs - 1 and c.nrows_dropped == 1
    assert c.llf == pytest.approx(e.llf, abs=1e-9)
    with pytest.raises(ValueError, match="ziformula '~ mined2' has missing values in 1"):
        mf.glmer(FORMULA, d, ziformula="~ mined2")   # ... but not by the zi formula alone
    dup = data.copy()
    dup.index = np.repeat(np.arange(len(data) // 2), 2)
    f = mf.glmer(FORMULA, dup, ziformula="~ mined").fit()
    assert f.llf == pytest.approx(ref.llf, abs=1e-9)
    assert list(f.fittedvalues.index[:4]) == [0, 0, 1, 1]


@pytest.mark.parametrize("name", ["zip_mined", "zinb_mined", "hurdle_pois_mined", "hurdle_nb_mined"])
def test_pearson_residuals(name, fits):
    """``(y - E[y]) / sqrt(Var[y])`` with the model's exact variance (checked against the sum
    over y of the density).  glmmTMB's agree for zero-inflated models; for hurdle models
    glmmTMB 1.1.5 evaluates the truncated variance at the truncated mean instead of at ``mu``
    (its variance function takes the untruncated ``lambda``): its values are reproduced here
    from that formula, and differ from the exact ones."""
    ref = load_ref("zi", name)
    r = fits[name]
    m = r.model
    eta = r.linear_predictor()
    var = r._cond.variance(eta)
    ys = np.arange(0.0, 400.0)
    pi = r.predict(which="zprob").to_numpy()
    for i in (0, 200, 600):                     # the variance from the density itself
        p = np.exp(_direct_density(ys, np.exp(eta[i]), pi[i], r.alpha, m.hurdle))
        mean = np.sum(p * ys)
        assert np.sum(p) == pytest.approx(1.0, abs=1e-12)
        assert np.sum(p * (ys - mean) ** 2) == pytest.approx(var[i], rel=1e-10)
    exact = (m.endog - r.fittedvalues.to_numpy()) / np.sqrt(var)
    np.testing.assert_allclose(r.resid_pearson.to_numpy(), exact, rtol=1e-12)
    if not m.hurdle:
        np.testing.assert_allclose(r.resid_pearson.to_numpy(), ref["resid_pearson"], atol=1e-4)
        return
    lam = r.predict(which="conditional").to_numpy()     # glmmTMB's argument: the truncated mean
    if r.alpha is None:
        q = -np.expm1(-lam)
        vt = (lam + lam ** 2) / q - lam ** 2 / q ** 2
    else:
        th = 1.0 / r.alpha
        mstar = lam + (th + lam) * stats.nbinom.pmf(1, th, th / (th + lam)) / (
            th * stats.nbinom.sf(0, th, th / (th + lam)))
        vt = mstar + mstar * lam * (1 + 1 / th) - mstar ** 2
    tmb = (m.endog - r.fittedvalues.to_numpy()) / np.sqrt(vt * (1 - pi) + lam ** 2 * pi * (1 - pi))
    np.testing.assert_allclose(tmb, ref["resid_pearson"], atol=1e-4)
    assert np.max(np.abs(r.resid_pearson.to_numpy() - ref["resid_pearson"])) > 0.1


def test_condvar_direct(fits):
    """ranef(condvar=True): the conditional SDs at the estimates, lambda / sqrt(M_g) with M_g the
    level's penalized observed information (lme4's definition; glmmTMB's condVar adds the
    fixed parameters' uncertainty: 0.1347 for R-1 against 0.1108 here)."""
    r = fits["zip_mined"]
    re = r.ranef(condvar=True)["site"]
    lam = float(r.theta[0])
    h = r._cond.derivatives(r.linear_predictor())[1]
    codes = r.model.re_design.blocks[0].codes
    M = 1.0 + lam ** 2 * np.bincount(codes, weights=h)
    np.testing.assert_allclose(re.attrs["condsd"].iloc[:, 0].to_numpy(), lam / np.sqrt(M),
                               rtol=1e-10)


@pytest.mark.parametrize("name", DENSE)
def test_laplace_loglik_direct_dense(name, fits):
    """Crossed and correlated-slope designs (the dense path): the Laplace log-likelihood at the
    estimates computed directly -- Z Lambda from the fitted SDs and correlation, the modes of
    the joint penalized log-likelihood by BFGS, the observed information of each row by second
    differences of scipy's density, log|I + A' H A| by numpy."""
    r = fits[name]
    m = r.model
    y = m.endog
    eta_f = m.exog @ r.params + m.offset
    pi = special.expit(m.exog_zi @ r.zi_params.to_numpy())
    cols = []
    for t in m.re_design.terms:               # one term per grouping factor in these cases
        C = r.cov_re()[t.name].to_numpy()
        L = np.linalg.cholesky(C)
        for gl in range(t.m):
            rows = t.codes == gl
            for k in range(L.shape[1]):
                col = np.zeros(y.size)
                col[rows] = t.X[rows] @ L[:, k]
                cols.append(col)
    A = np.column_stack(cols)
    assert np.sum(np.isfinite(A)) == A.size and A.shape[1] == m.re_design.nre

    def dens(eta):
        return _direct_density(y, np.exp(eta), pi, r.alpha, m.hurdle)

    e = 1e-4

    def negobj(u):
        return -(np.sum(dens(eta_f + A @ u)) - 0.5 * u @ u)

    def grad(u):
        eta = eta_f + A @ u
        return -(A.T @ ((dens(eta + 1e-6) - dens(eta - 1e-6)) / 2e-6) - u)

    u = optimize.minimize(negobj, np.zeros(A.shape[1]), jac=grad, method="BFGS",
                          options={"gtol": 1e-9}).x
    eta = eta_f + A @ u
    h = -(dens(eta + e) - 2 * dens(eta) + dens(eta - e)) / e ** 2
    assert np.sum(h < 0) > 0 or m.hurdle       # the zeros' negative information is exercised
    M = np.eye(A.shape[1]) + A.T @ (h[:, None] * A)
    total = -negobj(u) - 0.5 * np.linalg.slogdet(M)[1]
    np.testing.assert_allclose(r.llf, total, atol=2e-6)


def test_dense_limit(data, monkeypatch):
    import mlmext.laplace
    monkeypatch.setattr(mlmext.laplace, "MAX_DENSE_RE", 20)
    with pytest.raises(NotImplementedError, match="implemented up to 20 random effects"):
        mf.glmer("count ~ mined + (1 | site) + (1 | spp)", data, ziformula="~ 1")
    mf.glmer(FORMULA, data, ziformula="~ 1")      # one scalar term: level by level, any size


def test_dense_path_fisher_fallback(fits):
    """The dense path from a start where M = I + A' H A is indefinite: Fisher-scoring steps
    until it is positive definite, then Newton to the same modes as from u = 0."""
    from mlmext.laplace.dense import z_lambda
    r = fits["zip_crossed"]
    m = r.model
    dev = m.deviance()
    dev.set_extra(r._extra_internal())
    des, cond = m.re_design, dev.cond
    eta_f = m.exog @ r.params
    theta = np.array([1.0, 1.0])
    A = z_lambda(des, des.lambdas(theta)).toarray()
    u0 = np.full(des.nre, 1.0)
    M0 = np.eye(des.nre) + A.T @ (cond.derivatives(eta_f + A @ u0)[1][:, None] * A)
    assert np.linalg.eigvalsh(M0).min() < 0
    far = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=u0, tol=1e-20, dense=True)
    near = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=None, tol=1e-20, dense=True)
    assert far.converged and near.converged
    np.testing.assert_allclose(far.u, near.u, atol=1e-9)
    assert far.laplace == pytest.approx(near.laplace, abs=1e-9)
    cond.fisher_weights = None
    bad = lp.pirls(des, dev.chol_u, eta_f, cond, theta, u0=u0, tol=1e-20, dense=True)
    assert not bad.converged and "not positive definite" in bad.message


@pytest.mark.parametrize("name", ["hurdle_pois_mined", "hurdle_nb_mined"])
def test_simulate_truncated_small_mean(name, fits):
    """At a small count mean (mu = 0.05, where most draws of the count distribution are zero
    and the sampler inverts the truncated distribution) the simulated positives follow the
    zero-truncated probabilities, and the zeros the zero probability."""
    r = fits[name]
    n = r.model.endog.size
    mu = 0.05
    y = r._simulate_response(np.full((n, 300), np.log(mu)), np.random.default_rng(3))
    pi = r.predict(which="zprob").to_numpy()
    p0 = np.mean((y == 0), axis=1)
    assert abs(p0.mean() - pi.mean()) < 5 * np.sqrt(np.mean(pi * (1 - pi)) / y.size)
    pos = y[y > 0]
    if r.alpha is None:
        pmf = stats.poisson.pmf(np.arange(1, 3), mu) / -np.expm1(-mu)
    else:
        k = 1.0 / r.alpha
        pmf = stats.nbinom.pmf(np.arange(1, 3), k, k / (k + mu)) / stats.nbinom.sf(0, k, k / (k + mu))
    for v, p in zip((1, 2), pmf):
        assert abs(np.mean(pos == v) - p) < 5 * np.sqrt(p * (1 - p) / pos.size)
