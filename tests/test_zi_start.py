"""The first stage of zero-inflated and hurdle GLMMs: Newton steps in ``(u, beta)``.

lme4's first stage (beta inside PIRLS) gives the joint Laplace fit its start.  For the
zero-inflated and hurdle models it used the blocked factorization with the Fisher weights of
:meth:`ZeroInflatedConditional.fisher_weights` (the expected information where the observed one
is negative -- zeros of a zero-inflated model -- or zero -- zeros of a hurdle model); that is not
the Hessian, and PIRLS converged linearly at a rate near 1 (grouseticks' ZIP with
``(1 | LOCATION)``: decrement 5e-7 after 100 iterations, so the fit failed at its start; every
hurdle Poisson below failed alike).  It now takes Newton steps with the observed information:
the per-level path for one scalar term (:func:`mlmext.laplace.scalar._pirls_scalar_x`, now
taking negative weights) and the dense joint system otherwise
(:func:`mlmext.laplace.dense._pirls_dense` with ``X``).

References (tests/reference/zi_start, made by tools/r_reference/zi_start_reference.R): glmmTMB
on grouseticks, ``TICKS ~ YEAR`` with ``(1 | LOCATION)``, ``(1 | BROOD)`` and both,
``ziformula = ~ 1`` and ``~ YEAR``, ZIP, ZINB2, ZINB1 and their hurdle versions (36 fits; 9
failed at their start before).
Tolerances (the project's): coefficients within 0.002 SE, SEs, SDs and theta within 0.2 %, the
log-likelihood not below glmmTMB's by more than 1e-3 (reached: 1.8e-4 SE, 3.4e-4, 3.7e-5 and
1e-5, within 4e-8 of glmmTMB's log-likelihood or above).  Zero-inflation coefficients that diverge (ZINB: the
probability of an extra zero goes to 0 in some years, glmmTMB's SE in the hundreds or more) are
compared through the zero-inflation probabilities of the rows (within 1e-5).
"""
import numpy as np
import pytest
from scipy import special

from mlmext import laplace as lp
from mlmext.formula import api as mf
from refcases import by_name, load_ref, norm, read_data, ref_names

NAMES = ref_names("zi_start")
#: glmmTMB's SE above which a zero-inflation coefficient is at its boundary (-inf)
DIVERGED_SE = 100.0


@pytest.fixture(scope="module")
def grouse():
    return read_data("grouseticks.csv")


def make(ref, data):
    fam = ref["family"]
    hurdle = fam.startswith("truncated_")
    base = fam.replace("truncated_", "")
    if base == "poisson":
        return mf.glmer(ref["formula"], data, family="poisson", ziformula=ref["ziformula"],
                        hurdle=hurdle)
    nb1 = {"variance": "nb1"} if base == "nbinom1" else {}
    return mf.glmer_nb(ref["formula"], data, ziformula=ref["ziformula"], hurdle=hurdle, **nb1)


def test_reference_set():
    assert len(NAMES) == 36
    assert all(load_ref("zi_start", n)["ok"] for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_against_glmmTMB(name, grouse):
    ref = load_ref("zi_start", name)
    r = make(ref, grouse).fit()
    assert r.converged
    est, rest = by_name(r.fe_params, ref["fixef"])
    se, rse = by_name(r.bse_fe, ref["se"])
    zest, zrest = by_name(r.zi_params, ref["fixef_zi"])
    zse, zrse = by_name(r.bse_zi, {k.replace("zi~", ""): v for k, v in ref["se_zi"].items()})
    ok = zrse < DIVERGED_SE
    est, rest = np.r_[est, zest[ok]], np.r_[rest, zrest[ok]]
    se, rse = np.r_[se, zse[ok]], np.r_[rse, zrse[ok]]
    np.testing.assert_array_less(np.abs(est - rest) / rse, 0.002)
    np.testing.assert_allclose(se, rse, rtol=2e-3)
    # with diverged coefficients: the zero-inflation probabilities of every row agree (those
    # of the diverged rows are below 1e-5 for both)
    gamma_r = {norm(k): v for k, v in ref["fixef_zi"].items()}
    Xzi = r.model.exog_zi
    pi = special.expit(Xzi @ r.zi_params.to_numpy())
    pi_r = special.expit(Xzi @ np.array([gamma_r[norm(k)] for k in r.zi_params.index]))
    np.testing.assert_allclose(pi, pi_r, rtol=0, atol=1e-5)
    assert np.all(ok) or pi_r.min() < 1e-5
    cov = r.cov_re()
    sd = [np.sqrt(cov[g].to_numpy()[0, 0]) for g in ref["re_names"]]
    np.testing.assert_allclose(sd, ref["re_sd"], rtol=2e-3)
    if ref["theta"] is not None:
        np.testing.assert_allclose(1.0 / r.alpha, ref["theta"], rtol=2e-3)
    if ref["phi"] is not None:
        np.testing.assert_allclose(r.phi, ref["phi"], rtol=2e-3)
    assert r.llf > ref["loglik"] - 1e-3
    assert r.k_params == ref["df"]


def _design_matrices(dev):
    """``[Z Lambda, X]`` dense at theta = 1 (every RE SD 1), and the number of random effects."""
    A = lp.dense.z_lambda(dev.design, dev.design.lambdas(np.ones(dev.design.ntheta)))
    return np.hstack([A.toarray(), dev.model.exog]), A.shape[1]


@pytest.mark.parametrize("formula, hurdle", [("TICKS ~ YEAR + (1 | LOCATION)", False),
                                             ("TICKS ~ YEAR + (1 | LOCATION)", True),
                                             ("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", True)])
def test_first_stage_is_newton(formula, hurdle, grouse):
    """The first stage at its start (theta = 1, the model's zi start) converges in a few Newton
    iterations to a stationary point of the penalized log-likelihood in (u, beta) at which its
    Hessian (the observed information, negative for some zeros) is positive definite."""
    m = mf.glmer(formula, grouse, family="poisson", ziformula="~ 1", hurdle=hurdle)
    dev = m.deviance()
    dev.set_extra(m._start_extra(None))
    value, modes = dev.stage1(np.ones(dev.design.ntheta), m._start_beta())
    assert modes.converged, modes.message
    assert modes.niter <= 12                     # Newton: quadratic (it was > 100)
    B, nre = _design_matrices(dev)
    v = np.r_[modes.u, modes.beta]
    eta = m.offset + B @ v
    np.testing.assert_allclose(eta, modes.eta, rtol=1e-12, atol=1e-12)
    d1, h = dev.cond.derivatives(eta)            # h: the observed information
    grad = B.T @ d1 - np.r_[modes.u, np.zeros(m.k_fe)]
    H = B.T @ (B * h[:, None])
    H[:nre, :nre] += np.eye(nre)
    assert np.linalg.eigvalsh(H)[0] > 0
    # the Newton decrement of the next step: below the first stage's tolerance (1e-10)
    assert grad @ np.linalg.solve(H, grad) < 1e-10
    if not hurdle:
        assert np.any(h < 0)                     # the case the blocked path cannot take
    else:
        assert np.all(h[m.endog == 0] == 0)      # hurdle zeros: no information on the counts
    # its scale of beta is the fixed-effects block of H^-1, its Laplace value log|M_zz|
    cov = np.linalg.inv(H)[nre:, nre:]
    np.testing.assert_allclose(dev.stage1_cov_beta(modes), cov, rtol=1e-8)
    logdet = np.linalg.slogdet(H[:nre, :nre])[1]
    np.testing.assert_allclose(value, -2.0 * (modes.loglik_cond - 0.5 * modes.u @ modes.u)
                               + logdet, rtol=1e-10)


def test_dense_x_path_matches_blocked(grouse):
    """Poisson GLMM (positive weights, canonical link): PIRLS with beta inside on the dense path
    gives the blocked path's modes, beta, log-determinant, scale of beta and EM sums."""
    m = mf.glmer("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", grouse, family="poisson")
    dev = m.deviance()
    theta = np.array([0.8, 1.3])
    args = (dev.design, dev.chol_x, m.offset, dev.cond, theta)
    kw = dict(X=m.exog, beta0=m._start_beta(), tol=1e-14)
    blocked = lp.pirls(*args, **kw)
    S_blocked = dev.chol_x.inverse_block_sums(0)
    cov_blocked = dev.chol_x.cov_beta_unscaled()
    dense = lp.pirls(*args, dense=True, **kw)
    assert blocked.converged and dense.converged
    np.testing.assert_allclose(dense.beta, blocked.beta, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dense.u, blocked.u, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(dense.logdet, blocked.logdet, rtol=1e-10)
    np.testing.assert_allclose(dense.laplace, blocked.laplace, rtol=1e-12)
    np.testing.assert_allclose(dense.extra["cov_beta"], cov_blocked, rtol=1e-8)
    for a, b in zip(dense.extra["factor"].inverse_block_sums(0), S_blocked):
        np.testing.assert_allclose(a, b, rtol=1e-8)
    with pytest.raises(NotImplementedError, match="k = 0 only"):
        dense.extra["factor"].inverse_block_sums(1)


def test_scalar_x_path_matches_dense(grouse):
    """Zero-inflated Poisson, one scalar term, negative observed information for some zeros:
    the first stage's per-level path and the dense path give the same modes, beta,
    log-determinant and scale of beta (two implementations of the same Newton iteration)."""
    m = mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", grouse, family="poisson", ziformula="~ 1")
    dev = m.deviance()
    dev.set_extra(m._start_extra(None))
    args = (dev.design, None, m.offset, dev.cond, np.array([0.9]))
    kw = dict(X=m.exog, beta0=m._start_beta(), tol=1e-14)
    sc = lp.pirls(*args, scalar_fast=True, **kw)
    de = lp.pirls(*args, dense=True, **kw)
    assert sc.converged and de.converged
    assert type(sc.extra["factor"]).__name__ == "ScalarFactor"     # (not handed to dense)
    assert type(de.extra["factor"]).__name__ == "DenseFactor"
    assert np.any(sc.w < 0)
    np.testing.assert_allclose(sc.beta, de.beta, rtol=1e-9)
    np.testing.assert_allclose(sc.u, de.u, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(sc.logdet, de.logdet, rtol=1e-10)
    np.testing.assert_allclose(sc.extra["cov_beta"], de.extra["cov_beta"], rtol=1e-8)


def test_dense_x_path_reports_what_failed(grouse):
    """Too few iterations: not converged, with a message saying so (no modes passed off as
    converged)."""
    m = mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", grouse, family="poisson", ziformula="~ 1")
    dev = m.deviance()
    modes = lp.pirls(dev.design, None, m.offset, dev.cond, np.ones(1), X=m.exog,
                     beta0=m._start_beta(), tol=1e-14, dense=True, maxiter=2)
    assert not modes.converged
    assert "did not converge in 2 iterations" in modes.message


def test_failed_start_says_what_was_tried(grouse, monkeypatch):
    """Where the Newton path and the Fisher-weight path both fail (here: one PIRLS iteration
    allowed), the fit's error names both, from both starts of beta."""
    pirls = lp.pirls
    monkeypatch.setattr(lp, "pirls", lambda *a, **k: pirls(*a, **{**k, "maxiter": 1}))
    m = mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", grouse, family="poisson", ziformula="~ 1")
    with pytest.raises(lp.PIRLSError) as err:
        m.fit()
    msg = str(err.value)
    assert msg.count("with Newton steps: PIRLS did not converge in 1 iterations") == 2
    assert msg.count("with Fisher weights: PIRLS did not converge in 1 iterations") == 2
    assert "from the GLM-style start g(mu0)" in msg and "from beta = 0" in msg


def test_a_fisher_step_never_certifies_the_modes(grouse, monkeypatch):
    """At the modes, with the observed information made negative (so the per-level path takes a
    Fisher-scoring step) and a line search that cannot improve: the tiny decrement of a Fisher
    step is no certificate (a Newton step's would count as convergence to rounding level)."""
    from mlmext.laplace import scalar
    m = mf.glmer("TICKS ~ YEAR + (1 | LOCATION)", grouse, family="poisson", ziformula="~ 1")
    dev = m.deviance()
    dev.set_extra(m._start_extra(None))
    theta = np.array([0.9])
    at = lp.pirls(dev.design, None, m.offset, dev.cond, theta, X=m.exog, beta0=m._start_beta(),
                  tol=1e-14, scalar_fast=True)
    assert at.converged

    class NegativeInformation:
        def __init__(self, cond):
            self.cond = cond

        def __getattr__(self, name):
            return getattr(self.cond, name)

        def loglik_derivs(self, eta):
            lo, d1, w = self.cond.loglik_derivs(eta)
            return lo, d1, -1e3 * np.abs(w) - 1.0

    monkeypatch.setattr(scalar, "_halving_step", lambda *a, **k: (None,) * 7 + (30,))
    r = lp.pirls(dev.design, None, m.offset, NegativeInformation(dev.cond), theta, u0=at.u,
                 X=m.exog, beta0=at.beta, tol=1e-14, scalar_fast=True)
    assert not r.converged and "Fisher-scoring" in r.message
