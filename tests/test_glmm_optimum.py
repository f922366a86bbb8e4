"""Every GLMM fit reaches the optimum and says so honestly (issue 13).

Reference fits from tools/r_reference/glmm_optimum_reference.R:

* imm10_singular: Kreft & de Leeuw's 10-school NELS-88 subset, ``white ~ homework +
  (1 + homework | schid)``: a singular fit (the slope's theta at 0) whose Hessian is positive
  definite, where lme4 1.1-31 takes the standard errors from the Hessian (1.473 for the
  intercept), not from RX (1.385).
* binsaddle_slope: binary data whose random effect is on (x - 10) with x in [9, 11], so the
  intercept and slope variances are strongly negatively correlated.  Started at theta = 0 (or
  just above it), quasi-Newton + Newton stop at a saddle near theta = 0 (deviance 663.88, where
  the fit stopped, "converged", before these checks; Powell and Nelder-Mead started there stop too):
  the gradient in a theta entry at 0 is 0 whatever the curvature.  The optimum is 645.21.
* salamanders_nb_tmb: glmmTMB's nbinom2 fit of ``count ~ spp + mined + (1 | site)``, whose SEs
  invert the Hessian in (beta, theta, log dispersion): alpha held fixed they are up to 0.46 %
  smaller (sppDF 0.23183 against 0.23290).
"""
import importlib
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import optimize
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext.formula import api as mf
from mlmext.glmm import optimum

from refcases import by_name, load_ref, read_data

B = sm.families.Binomial
IMM10 = "white ~ homework + (1 + homework | schid)"
SADDLE = "y ~ x + (1 + x | g)"
glmm_fit = importlib.import_module("mlmext.glmm.fit")


def quiet_fit(model, **kw):
    """A fit with its warnings recorded: (results, [ConvergenceWarning messages])."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = model.fit(**kw)
    return res, [str(x.message) for x in w if issubclass(x.category, ConvergenceWarning)]


# ------------------------------------------------------------------ covariance on singular fits
@pytest.fixture(scope="module")
def imm10():
    return read_data("imm10.csv")


@pytest.fixture(scope="module")
def imm10_fit(imm10):
    return quiet_fit(mf.glmer(IMM10, imm10, family=B()))[0]


def test_singular_fit_se_from_the_hessian(imm10_fit):
    ref = load_ref("glmm", "imm10_singular")
    res = imm10_fit
    assert ref["singular"] and res.is_singular() and res.theta[2] < 1e-4
    assert res.optim.cov_method == "Hessian"
    se, rse = by_name(res.bse_fe, ref["se"])
    np.testing.assert_allclose(se, rse, rtol=2e-3)              # 1.47299 vs lme4's 1.47337
    assert np.all(rse > 1.05 * np.array(list(ref["se_rx"].values())))   # not RX's 1.385
    # lme4 differentiates across the bound (central differences reach theta = -1e-4), ours
    # inward from it: the theta block agrees, the deviance being even in the slope's theta
    H = np.array(ref["hessian"])
    np.testing.assert_allclose(res.hessian[:3, :3], H[:3, :3], rtol=3e-3, atol=5e-3)
    assert "inverse Hessian of the deviance in (theta, beta) (lme4's default, singular fits too)" \
        in str(res.summary())


def test_rx_fallback_is_lme4s_rx_and_is_said(imm10, monkeypatch):
    """Where the Hessian gives no covariance, RX: lme4's vcov(use.hessian = FALSE)."""
    monkeypatch.setattr(glmm_fit, "_fe_covariance", lambda model, tr, H: (None, "Hessian", None))
    res = quiet_fit(mf.glmer(IMM10, imm10, family=B()))[0]
    ref = load_ref("glmm", "imm10_singular")
    assert res.optim.cov_method == "RX"
    se, rse = by_name(res.bse_fe, ref["se_rx"])
    np.testing.assert_allclose(se, rse, rtol=2e-3)              # 1.38528 vs 1.38520
    assert ("Covariance of the fixed effects from RX (the PIRLS system at the estimates): the "
            "fixed-effects block of the inverse finite-difference Hessian is not positive "
            "definite") in str(res.summary())


def test_covariance_from_the_hessian_block():
    """``_fe_covariance``: 2 H^-1's fixed-effects block on beta's scale, None if not PD."""
    tr = glmm_fit._Transform(1, 2, 0, np.zeros(2), np.array([[2.0, 0.0], [1.0, 1.0]]))
    H = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    cov, method, joint = glmm_fit._fe_covariance(None, tr, H)
    expect = tr.R @ (2.0 * np.linalg.inv(H)[1:, 1:]) @ tr.R.T
    np.testing.assert_allclose(cov, expect, rtol=1e-12)
    assert method == "Hessian" and joint is None
    Hbad = H.copy()
    Hbad[2, 2] = -1.0                                           # beta block of H^-1 indefinite
    assert glmm_fit._fe_covariance(None, tr, Hbad)[0] is None
    Hnan = H.copy()
    Hnan[0, 0] = np.nan
    assert glmm_fit._fe_covariance(None, tr, Hnan)[0] is None


def test_glmmtmb_mode_se_include_alphas_uncertainty():
    """information="observed": glmmTMB's SEs (the Hessian in theta, beta and log alpha)."""
    ref = load_ref("glmm", "salamanders_nb_tmb")
    data = read_data("salamanders.csv")
    tmb = quiet_fit(mf.glmer_nb(ref["formula"], data, information="observed"))[0]
    assert tmb.optim.cov_method == "Hessian (theta, beta, log alpha)"
    np.testing.assert_allclose(tmb.cov_params(), tmb.cov_fe_joint, rtol=1e-12)
    se, rse = by_name(tmb.bse_fe, ref["se"])
    np.testing.assert_allclose(se, rse, rtol=2e-3)
    assert abs(tmb.bse_fe["spp[T.DF]"] / ref["se"]["sppDF"] - 1) < 2e-4     # 0.232905 vs 0.232905
    assert "(theta, beta, log alpha) (glmmTMB's)" in str(tmb.summary())
    # lme4's glmer.nb convention (the default): alpha held fixed, said so
    lme4 = quiet_fit(mf.glmer_nb(ref["formula"], data))[0]
    assert lme4.optim.cov_method == "Hessian"
    ratio = np.sqrt(np.diag(lme4.cov_fe_joint) / np.diag(lme4.cov_params()))
    assert ratio.min() >= 1.0 - 1e-9 and ratio.max() > 1.004             # sppDF: 1.0046
    assert "alpha held fixed as glmer.nb does" in str(lme4.summary())


# ------------------------------------------------------------------ the singular-fit warning
def test_singular_fit_warns_like_lmer(imm10):
    mod = mf.glmer(IMM10, imm10, family=B())
    with pytest.warns(ConvergenceWarning) as rec:
        mod.fit()
    msgs = [str(w.message) for w in rec if issubclass(w.category, ConvergenceWarning)]
    assert len(msgs) == 1
    assert re.fullmatch(r"boundary \(singular\) fit: a random-effects covariance is singular "
                        r"\(theta = \[4\.036\d*, -0\.2163\d*, [0-9.e-]+\]\); see "
                        r"results\.is_singular\(\)", msgs[0]), msgs[0]
    assert rec[0].filename == __file__                  # at the caller's fit()
    # lmer's words for the same situation
    with pytest.warns(ConvergenceWarning, match=r"^boundary \(singular\) fit: a random-effects "
                      r"covariance is singular \(theta = \[0\.0\]\); see "
                      r"results\.is_singular\(\)$"):
        mf.lmer("y ~ x + (1 | g)", read_data("singular.csv")).fit()


def test_nonsingular_fit_does_not_warn():
    res, warns = quiet_fit(mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                    read_data("cbpp.csv"), family=B()))
    assert warns == [] and not res.is_singular() and res.optim.converged


# ------------------------------------------------------------------ saddles at a variance's bound
@pytest.fixture(scope="module")
def saddle_model():
    return mf.glmer(SADDLE, read_data("binsaddle.csv"), family=B())


@pytest.fixture(scope="module")
def dfo_best(saddle_model):
    """The lowest -2 loglike a derivative-free minimizer (Nelder-Mead on (beta, theta), theta's
    diagonal entries through |.|) finds from two generic starts (about 7 s)."""
    mod = saddle_model

    def dev(z):
        ll = mod.loglike(np.r_[z[:2], abs(z[2]), z[3], abs(z[4])])
        return -2.0 * ll if np.isfinite(ll) else 1e10

    runs = [optimize.minimize(dev, s, method="Nelder-Mead",
                              options={"xatol": 1e-5, "fatol": 1e-7, "maxfev": 2000,
                                       "adaptive": True})
            for s in ([0.0, 0.0, 3.0, -0.3, 0.3], [0.5, 0.0, 1.0, 0.5, 0.5])]
    return min(r.fun for r in runs)


@pytest.mark.parametrize("theta0", [[0.0, 0.0, 0.0], [1e-6, 0.0, 1e-6]],
                         ids=["at the bound", "just above it"])
def test_start_at_a_saddle_reaches_the_optimum(saddle_model, dfo_best, theta0):
    ref = load_ref("glmm", "binsaddle_slope")
    res, warns = quiet_fit(saddle_model, start_params=np.r_[0.0, 0.0, theta0])
    dev = -2.0 * res.llf
    assert dev <= dfo_best + 1e-4, (dev, dfo_best)
    assert dev <= -2.0 * ref["loglik"] + 1e-4             # lme4 from its default start: 645.2143
    assert dev < 663.0                                     # not the saddle (663.88)
    np.testing.assert_allclose(res.theta[:2], ref["theta"][:2], rtol=2e-3)
    assert res.optim.converged and res.converged
    # it got there by a restart from a point the second-order check found
    restarts = [m for m, _, _ in res.optim.tried if "restarted where" in m]
    assert restarts and "lowered the deviance by" in restarts[0]
    # singular (the slope's theta at 0): warned as lmer does, nothing else
    assert len(warns) == 1 and warns[0].startswith("boundary (singular) fit")


def test_default_start_checks_the_bound(saddle_model):
    """From lme4's start the fit ends with the slope's theta at 0: probed, no descent."""
    res, warns = quiet_fit(saddle_model)
    o = res.optim
    assert o.converged and o.decrement < 1e-8 and o.min_eigenvalue > 0
    assert o.at_bound == ["g.x"] and res.theta[2] == 0.0
    assert "g.x at its bound: one-sided curvature" in o.message and "no descent inward" in o.message
    assert not any("restarted" in m for m, _, _ in o.tried)
    assert any("second-order check" in m and ok for m, ok, _ in o.tried)


def test_a_saddle_it_cannot_leave_is_reported(saddle_model, monkeypatch):
    """Without restarts the fit stays at the saddle: not converged, and the warning says what was
    tried and by how much a probe lowered the deviance."""
    monkeypatch.setattr(optimum, "MAX_ROUNDS", 0)
    res, warns = quiet_fit(saddle_model, start_params=np.zeros(5))
    assert not res.optim.converged and not res.converged
    assert -2.0 * res.llf > 663.0
    msg = [w for w in warns if w.startswith("the optimizer did not converge")]
    assert len(msg) == 1
    m = re.search(r"a probe still lowers the deviance by (\d+\.\d+) \(.*\) after 0 restarts",
                  msg[0])
    assert m and float(m.group(1)) > 0.1, msg[0]
    assert "Hessian on the free parameters NOT positive definite (smallest eigenvalue -2." in msg[0]
    assert "tried:" in msg[0] and "second-order check (failed" in msg[0]


def test_probe_finds_descent_through_the_schur_direction():
    """At a bound where the deviance rises along e_i but falls once a free parameter follows
    (d = e_i - H_ff^-1 H_fi), the probe reports descent; where it rises either way, none."""
    # a >= 0 at its bound, b free: H = [[1, 2], [2, 2]] has H_aa = 1 > 0 and H_bb = 2 > 0 but
    # the Schur complement 1 - 2^2 / 2 = -1 (a quartic term keeps f bounded below)
    H = np.array([[1.0, 2.0], [2.0, 2.0]])
    f = lambda z: 0.5 * float(z @ H @ z) + 0.01 * float(np.sum(z ** 4))
    x = np.zeros(2)
    chk = optimum._check(f, x, 0.0, np.zeros(2), H, np.array([0.0, -np.inf]),
                         np.full(2, np.inf), ["a", "b"], 1e-8)
    assert chk.min_eig == 2.0 and list(chk.at) == [True, False]
    assert chk.best is not None and chk.best[1] < 0 and chk.best[0][0] > 0 > chk.best[0][1]
    assert "one-sided curvature -1" in chk.notes[0] and "descent found" in chk.notes[0]
    Hp = np.array([[3.0, 2.0], [2.0, 2.0]])                # Schur complement 1 > 0: a minimum
    fp = lambda z: 0.5 * float(z @ Hp @ z)
    chk = optimum._check(fp, x, 0.0, np.zeros(2), Hp, np.array([0.0, -np.inf]),
                         np.full(2, np.inf), ["a", "b"], 1e-8)
    assert chk.best is None
    assert "one-sided curvature 1," in chk.notes[0] and "no descent" in chk.notes[0]


def test_zero_diagonal_is_probed_from_its_mirror_image():
    """A 3x3 covariance near rank 1.  Started at theta[x1] = 0 with the entry below it
    negated (the mirror image of a point near the optimum: bounded optimizers stop there,
    the gradient of theta[x1] pointing out of the box), the fit must probe inward from the
    mirror image too; without that it ended 0.086 deviance units short, reporting
    convergence."""
    rng = np.random.default_rng(7)
    G, n = 80, 25
    g = np.repeat(np.arange(G), n)
    x1, x2 = rng.standard_normal(G * n), rng.standard_normal(G * n)
    z, e1, e2 = rng.standard_normal(G), rng.standard_normal(G), rng.standard_normal(G)
    b = np.column_stack([0.5 * z, 0.3 * z + 0.08 * e1, -0.2 * z + 0.02 * e2])
    y = rng.poisson(np.exp(0.5 + 0.3 * x1 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2))
    m = mf.glmer("y ~ x1 + x2 + (1 + x1 + x2 | g)", pd.DataFrame(dict(y=y, x1=x1, x2=x2, g=g)),
                 family=sm.families.Poisson())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = m.fit()
        stuck = ref.theta.copy()
        stuck[3], stuck[4] = 0.0, -ref.theta[4]
        res = m.fit(start_params=np.concatenate([np.asarray(ref.params), stuck]))
    assert ref.converged and res.converged
    assert ref.theta[3] > 0.01
    assert -2 * res.llf <= -2 * ref.llf + 1e-6
    np.testing.assert_allclose(res.theta, ref.theta, atol=2e-3)
