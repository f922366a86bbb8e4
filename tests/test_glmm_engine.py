"""The family-independent GLMM engine (mlmext.laplace) and the factorization paths it uses.

* BlockedCholesky.reweight / solve_re / local_inverse against set_data and dense algebra;
* the analytic gradient of the Laplace log-likelihood against central differences;
* adaptive Gauss-Hermite quadrature against brute-force integration, for scalar and vector
  (q = 2, 3) random-effects terms.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import sparse, special

from mlmext import laplace as lp
from mlmext.formula import api as mf
from mlmext.linalg import BlockedCholesky
from mlmext.lmm import LinearMixedModel

from refcases import read_data


class _LMM(LinearMixedModel):
    _check_nlev_vs_nobs = False


def _crossed(seed=0, ns=40, ni=9):
    rng = np.random.default_rng(seed)
    d = pd.DataFrame([(s, i) for s in range(ns) for i in range(ni)], columns=["subj", "item"])
    d["subj"] = d.subj.map("s{:02d}".format)
    d["item"] = d.item.map("i{}".format)
    d["x"] = rng.normal(size=len(d))
    d["y"] = rng.normal(size=len(d))
    d["grp"] = np.repeat(np.arange(len(d) // 6), 6)[:len(d)].astype(str)
    return d


DESIGNS = ["y ~ x + (1 | subj) + (1 | item)",          # dense Schur (crossed, every pair)
           "y ~ x + (1 + x | subj) + (1 | item)",      # vector first block
           "y ~ x + (1 | subj) + (1 + x | item)",      # vector block outside the first
           "y ~ x + (1 | grp) + (1 | subj) + (0 + x | item)",
           "y ~ x + (1 + x | subj)"]


def _dense_M(des, lams, w):
    Z = sparse.hstack([b.Z() for b in des.blocks]).toarray()
    Lam = sparse.block_diag([sparse.kron(sparse.identity(b.m), l) for b, l in zip(des.blocks, lams)]).toarray()
    ZL = Z @ Lam
    return ZL, ZL.T @ (w[:, None] * ZL) + np.eye(ZL.shape[1])


@pytest.mark.parametrize("formula", DESIGNS)
@pytest.mark.parametrize("p", [0, 2])
def test_reweight_solve_re_local_inverse(formula, p):
    rng = np.random.default_rng(1)
    d = _crossed()
    mod = _LMM.from_formula(formula, d)
    des = mod.re_design
    n = len(d)
    theta = rng.uniform(0.3, 1.5, des.ntheta)
    lams = des.lambdas(theta)
    XY = np.column_stack([mod.exog[:, :p], rng.normal(size=n)])
    w = rng.uniform(0.1, 3, n)
    c1 = BlockedCholesky(des.blocks, XY, w).update(lams)
    c2 = BlockedCholesky(des.blocks, np.ones_like(XY), np.ones(n))
    c2.reweight(XY * 0.5, w * 2.0)                 # the plan, then new values
    c2.reweight(XY, w)
    c2.update(lams)
    assert c2.logdet_zz == pytest.approx(c1.logdet_zz, abs=1e-10)
    np.testing.assert_allclose(np.tril(c2.Lr), np.tril(c1.Lr), atol=1e-10)
    for a, b in zip(c1.solve(), c2.solve()):
        np.testing.assert_allclose(a, b, atol=1e-10)
    ZL, M = _dense_M(des, lams, w)
    assert np.linalg.slogdet(M)[1] == pytest.approx(c2.logdet_zz, abs=1e-9)
    v = rng.normal(size=M.shape[0])
    np.testing.assert_allclose(M @ c2.solve_re(v), v, atol=1e-10)
    t, rho = c2.local_inverse()
    lev = sum(np.einsum("ij,ij->i", tb, rb) for tb, rb in zip(t, rho))
    np.testing.assert_allclose(lev, np.einsum("ij,jk,ik->i", ZL, np.linalg.inv(M), ZL), atol=1e-10)
    for a, b in zip(c1.inverse_block_sums(p), c2.inverse_block_sums(p)):
        np.testing.assert_allclose(a, b, atol=1e-9)


def _sparse_crossed(seed=2, ns=400, ni=60, per=5):
    """Each subject on ``per`` of ``ni`` items: the Schur product by enumerated pairs."""
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(ns), per)
    item = np.concatenate([rng.choice(ni, per - (s % 3), replace=False).tolist() + [s % ni] * (s % 3)
                           for s in range(ns)])           # repeated items: fewer levels per subject
    d = pd.DataFrame({"subj": [f"s{s:03d}" for s in subj], "item": [f"i{i:02d}" for i in item]})
    d["x"] = rng.normal(size=len(d))
    d["y"] = rng.normal(size=len(d))
    return d


@pytest.mark.parametrize("formula", ["y ~ x + (1 | subj) + (1 | item)",
                                     "y ~ x + (1 + x | subj) + (1 | item)"])
def test_reweight_pairs_plan_matches_dense_algebra(formula):
    """The refreshable Schur product of the PIRLS path (pairs grouped by the subject's number of
    items for a scalar first block) against set_data and the dense system, after new weights,
    and a workspace's reweighting leaves the template's factor as it was."""
    from mlmext.linalg._schur import SchurProduct
    rng = np.random.default_rng(4)
    d = _sparse_crossed()
    des = _LMM.from_formula(formula, d).re_design
    n = len(d)
    lams = des.lambdas(rng.uniform(0.3, 1.5, des.ntheta))
    XY = rng.normal(size=(n, 1))
    w = rng.uniform(0.1, 3, n)
    tmpl = BlockedCholesky(des.blocks, np.ones((n, 1)), np.ones(n), reweighting=True)
    c2 = tmpl.workspace()
    assert isinstance(c2._schur, SchurProduct) and c2._schur.P is not None
    c2.reweight(XY, w)
    c2.update(lams)
    c1 = BlockedCholesky(des.blocks, XY, w).update(lams)
    ZL, M = _dense_M(des, lams, w)
    assert np.linalg.slogdet(M)[1] == pytest.approx(c2.logdet_zz, abs=1e-9)
    assert c1.logdet_zz == pytest.approx(c2.logdet_zz, abs=1e-9)
    u1, u2 = c1.solve()[0], c2.solve()[0]
    np.testing.assert_allclose(u2, u1, atol=1e-9)
    v = rng.normal(size=M.shape[0])
    np.testing.assert_allclose(M @ c2.solve_re(v), v, atol=1e-9)
    t, rho = c2.local_inverse()
    lev = sum(np.einsum("ij,ij->i", tb, rb) for tb, rb in zip(t, rho))
    np.testing.assert_allclose(lev, np.einsum("ij,jk,ik->i", ZL, np.linalg.inv(M), ZL), atol=1e-9)
    for a, b in zip(c1.inverse_block_sums(0), c2.inverse_block_sums(0)):
        np.testing.assert_allclose(b, a, atol=1e-8)
    # the template still holds unit weights and a unit response
    tmpl.update(lams)
    _, M1 = _dense_M(des, lams, np.ones(n))
    assert np.linalg.slogdet(M1)[1] == pytest.approx(tmpl.logdet_zz, abs=1e-9)


def test_fused_schur_product_equals_the_stored_one():
    """The PIRLS path's fused Schur product (pair values computed per product, not stored)
    gives the stored product's numbers exactly, before and after new values of A_r1."""
    from scipy import sparse
    from mlmext.linalg._schur import SchurProduct
    rng = np.random.default_rng(0)
    r, m1 = 40, 300
    A = sparse.random(r, m1, density=0.15, random_state=1, format="csr")
    A.data = rng.normal(size=A.nnz)
    stored = SchurProduct(A, m1, 1, refreshable=True)
    fused = SchurProduct(A, m1, 1, refreshable=True, fused=True)
    assert fused.P.data is None and stored.P.data is not None
    B = rng.uniform(0.1, 2, (m1, 1, 1))
    S0, K = rng.normal(size=(r, r)), rng.normal(size=(r, r))
    for _ in range(2):
        S1, S2 = S0.copy(), S0.copy()
        stored.subtract_from(S1, B)
        fused.subtract_from(S2, B)
        assert np.abs(S1 - S0).max() > 1.0
        np.testing.assert_array_equal(S2, S1)
        np.testing.assert_array_equal(fused.pair_sums(K), stored.pair_sums(K))
        np.testing.assert_array_equal(fused.trace_weights(K), stored.trace_weights(K))
        A.data = rng.normal(size=A.nnz)
        stored.refresh(A)
        fused.refresh(A)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | subj) + (1 | item)",
                                     "y ~ x + (x | item) + (1 | subj)"])
def test_reweight_large_data_paths_agree(monkeypatch, formula):
    """reweight's paths for large data (W [X y] a column at a time, sums by bincount) and for
    small data (sparse products) give the same cross-products and factor."""
    from mlmext.linalg import _lead
    rng = np.random.default_rng(6)
    d = _sparse_crossed(seed=6)
    mod = _LMM.from_formula(formula, d)
    des, n = mod.re_design, len(d)
    lams = des.lambdas(rng.uniform(0.3, 1.5, des.ntheta))
    XY = np.column_stack([mod.exog, rng.normal(size=n)])
    w = rng.uniform(0.1, 3, n)
    small = BlockedCholesky(des.blocks, np.ones_like(XY), np.ones(n), reweighting=True)
    monkeypatch.setattr(_lead, "SPARSE_SUMS_ROWS", 0)
    large = BlockedCholesky(des.blocks, np.ones_like(XY), np.ones(n), reweighting=True)
    # a scalar first block both times: sparse products for the small data, columns for large
    assert des.blocks[0].q == 1
    assert small._rw_plan["Z1T"] is not None and large._rw_plan["Z1T"] is None
    for c in (small, large):
        c.reweight(XY, w)
        c.update(lams)
    np.testing.assert_allclose(large.A_r1.toarray(), small.A_r1.toarray(), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(large.A_rr, small.A_rr, rtol=1e-13, atol=1e-12)
    assert large.logdet_zz == pytest.approx(small.logdet_zz, rel=1e-13)
    for a, b in zip(large.solve(), small.solve()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_lmm_gradient_with_vector_term_outside_first_block():
    """Regression: Lambda_r X Lambda_r' in inverse_block_sums (vector term in a later block)."""
    d = _crossed(3, ns=60, ni=8)
    rng = np.random.default_rng(3)
    d["y"] = d["y"] + d["x"] * rng.normal(size=8)[d["item"].str[1:].astype(int)]
    mod = LinearMixedModel.from_formula("y ~ x + (1 | subj) + (1 + x | item)", d)
    th = np.array([0.5, 0.8, 0.3, 0.6])
    for reml in (True, False):
        _, g = mod.deviance_and_gradient(th, reml=reml)
        gfd = [(mod.deviance_profiled(th + 1e-6 * e, reml) - mod.deviance_profiled(th - 1e-6 * e, reml)) / 2e-6
               for e in np.eye(4)]
        np.testing.assert_allclose(g, gfd, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- gradient
def _gradient_cases():
    cb = read_data("cbpp.csv")
    gt = read_data("grouseticks.csv")
    gt["x"] = np.random.default_rng(0).normal(size=len(gt))
    B, P, L = sm.families.Binomial, sm.families.Poisson, sm.families.links
    f_cb = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    return [
        ("binomial-logit", lambda: mf.glmer(f_cb, cb, family=B())),
        ("binomial-probit", lambda: mf.glmer(f_cb, cb, family=B(L.Probit()))),
        ("poisson-crossed", lambda: mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", gt, family=P())),
        ("poisson-vector", lambda: mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 + x | LOCATION) + (1 | BROOD)", gt, family=P())),
        ("poisson-sqrt", lambda: mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", gt, family=P(L.Sqrt()))),
        ("negbin-expected", lambda: mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 + x | LOCATION) + (1 | BROOD)", gt)),
        ("negbin-observed", lambda: mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt, information="observed")),
    ]


@pytest.mark.parametrize("name,make", _gradient_cases())
def test_laplace_gradient_matches_differences(name, make):
    mod = make()
    des = mod.re_design
    rng = np.random.default_rng(5)
    th = np.where(np.isfinite(des.lower), rng.uniform(0.3, 0.9, des.ntheta), rng.uniform(-0.3, 0.3, des.ntheta))
    beta = np.zeros(mod.k_fe)
    beta[0] = {"binomial-logit": -1.4, "binomial-probit": -0.8, "poisson-sqrt": 1.5}.get(name, 0.5)
    x = np.concatenate([th, beta, [np.log(0.5)] * mod.k_extra])
    dev = mod.deviance()
    ll, g, modes = dev.loglike_and_score(x)
    assert modes.converged and np.isfinite(ll)
    h = 1e-5
    gfd = np.array([(dev.loglike_and_score(x + h * e)[0] - dev.loglike_and_score(x - h * e)[0]) / (2 * h)
                    for e in np.eye(x.size)])
    np.testing.assert_allclose(g, gfd, rtol=2e-6, atol=2e-5 * max(1.0, np.abs(gfd).max()) ** 0.5)


def test_predict_modes_is_second_order():
    cb = read_data("cbpp.csv")
    mod = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb)
    dev = mod.deviance()
    des, cond = mod.re_design, dev.cond
    th, beta = np.array([0.6]), np.array([-1.4, -1.0, -1.1, -1.6])
    m0 = lp.pirls(des, dev.chol_u, mod.exog @ beta, cond, th, tol=1e-20)
    errs = []
    for step in (1e-2, 1e-3):
        dth, dbeta = np.array([step]), step * np.array([1.0, -0.5, 0.3, 0.2])
        lp.pirls(des, dev.chol_u, mod.exog @ beta, cond, th, u0=m0.u, tol=1e-20)   # factor at m0
        u_pred = lp.predict_modes(des, dev.chol_u, m0, dth, mod.exog @ dbeta)
        m1 = lp.pirls(des, dev.chol_u, mod.exog @ (beta + dbeta), cond, th + dth, tol=1e-20)
        errs.append((np.abs(u_pred - m1.u).max(), np.abs(m0.u - m1.u).max()))
    assert errs[0][0] < 0.05 * errs[0][1]
    assert errs[1][0] < 0.02 * errs[0][0]          # shrinks like step^2


# ---------------------------------------------------------------------------- AGQ
def test_gh_rule_moments():
    for q in (1, 2, 3):
        z, w = lp.gh_rule(7, q)
        assert z.shape == (7 ** q, q)
        assert w.sum() == pytest.approx(1.0, abs=1e-13)
        np.testing.assert_allclose(w @ (z * z), np.ones(q), atol=1e-12)
        np.testing.assert_allclose(w @ z ** 4, 3 * np.ones(q), atol=1e-11)
    z, w = lp.gh_rule(1, 2)
    assert w.tolist() == [1.0] and not z.any()


def _vector_data(q, seed=11, ng=6, nper=10):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(ng), nper)
    d = pd.DataFrame({"g": [f"g{i}" for i in g], "x1": rng.normal(size=ng * nper).round(4),
                      "x2": rng.normal(size=ng * nper).round(4)})
    eta = 0.2 + 0.5 * d.x1 + rng.normal(size=ng)[g] + 0.5 * rng.normal(size=ng)[g] * d.x1
    d["y"] = rng.binomial(1, special.expit(eta))
    lhs = {1: "1", 2: "1 + x1", 3: "1 + x1 + x2"}[q]
    return mf.glmer(f"y ~ x1 + ({lhs} | g)", d, family=sm.families.Binomial())


def _brute_force(mod, theta, beta, npts):
    """log int prod_i p(y_i | u) phi(u) du by a tensor trapezoid grid in u (per level)."""
    des, cond = mod.re_design, mod._make_conditional()
    blk = des.blocks[0]
    q = blk.q
    lam = des.lambdas(theta)[0]
    grid = np.linspace(-9, 9, npts)
    mesh = np.stack(np.meshgrid(*([grid] * q), indexing="ij"), -1).reshape(-1, q)
    logw = np.log(np.gradient(grid))                       # trapezoid-like weights (ends are negligible)
    logw_mesh = sum(np.meshgrid(*([logw] * q), indexing="ij")).ravel()
    eta_f = mod.exog @ beta + mod.offset
    total = 0.0
    for j in range(blk.m):
        rows = np.flatnonzero(blk.codes == j)
        B = mesh @ lam.T                                   # b = Lambda u
        eta = eta_f[rows][None, :] + B @ blk.X[rows].T     # (grid, n_j)
        k, n = cond.k[rows], cond.pw[rows]
        const = np.broadcast_to(cond.const, cond.pw.shape)      # (a scalar where all 0)
        ll = (k * eta - n * np.logaddexp(0.0, eta)).sum(1) + const[rows].sum()
        f = ll - 0.5 * (mesh ** 2).sum(1) - 0.5 * q * np.log(2 * np.pi) + logw_mesh
        total += special.logsumexp(f)
    return total


@pytest.mark.parametrize("q,npts", [(1, 801), (2, 241), (3, 61)])
def test_agq_converges_to_brute_force(q, npts):
    mod = _vector_data(q)
    des = mod.re_design
    theta = {1: np.array([0.9]), 2: np.array([0.9, 0.3, 0.6]),
             3: np.array([0.9, 0.2, -0.1, 0.6, 0.1, 0.5])}[q]
    beta = np.array([0.2, 0.5])
    exact = _brute_force(mod, theta, beta, npts)
    chol = lp.make_chol(des)
    lap, modes = lp.laplace_loglik(des, chol, mod.exog @ beta, mod._make_conditional(), theta, tol=1e-20)
    a1, _ = lp.agq_loglik(des, chol, mod.exog @ beta, mod._make_conditional(), theta, 1, tol=1e-20)
    assert a1 == pytest.approx(lap, abs=1e-10)             # one node = Laplace
    errs = []
    for k in (2, 3, 5, 8, 12):
        val, _ = lp.agq_loglik(des, chol, mod.exog @ beta, mod._make_conditional(), theta, k, tol=1e-20)
        errs.append(abs(val - exact))
    assert errs[-1] < 1e-6 * (1 if q < 3 else 50), errs
    assert errs[-1] < 0.01 * abs(lap - exact), (errs, lap - exact)
    assert errs[-1] <= errs[0] and errs[-2] < errs[1]


@pytest.mark.slow
def test_agq_vector_fit_improves_on_laplace():
    mod = _vector_data(2, seed=4, ng=30, nper=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lap = mod.fit()
        agq = mod.fit(nagq=7)
    assert agq.nagq == 7 and "7 points" in str(agq.summary())
    assert abs(agq.llf - lap.llf) < 1.0
    np.testing.assert_allclose(agq.fe_params, lap.fe_params, atol=0.5 * lap.bse_fe.max())


def test_large_data_factors_are_the_fits_own(monkeypatch):
    """From OWN_FACTOR_ROWS rows on, the PIRLS factorizations are built for the fit (the first
    stage's released after the first stage), not cached on the model: the same fit to the last
    digit, and the model holds no template afterwards."""
    from mlmext.glmm import deviance as gdev
    rng = np.random.default_rng(8)
    d = _sparse_crossed(seed=8)
    eta = (0.3 * d["x"] + rng.normal(size=400)[d["subj"].str[1:].astype(int)]
           + rng.normal(size=60)[d["item"].str[1:].astype(int)])
    d["yb"] = (rng.random(len(d)) < special.expit(eta)).astype(float)
    f = "yb ~ x + (1 | subj) + (1 | item)"
    r0 = mf.glmer(f, d, family=sm.families.Binomial()).fit()
    monkeypatch.setattr(gdev, "OWN_FACTOR_ROWS", 0)
    m = mf.glmer(f, d, family=sm.families.Binomial())
    r1 = m.fit()
    assert "_pirls_x" not in m.__dict__ and "_pirls_u" not in m.__dict__
    assert r1.llf == r0.llf
    np.testing.assert_array_equal(np.asarray(r1.params), np.asarray(r0.params))
    np.testing.assert_array_equal(np.asarray(r1.bse), np.asarray(r0.bse))
