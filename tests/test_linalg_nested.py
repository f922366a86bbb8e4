"""The nested fast path of BlockedCholesky against its dense path.

When every level of the first random-effects block lies in one level of the second
(``(1 | school/cls)``), the blocks of the nested chain are stored and factored block-diagonally
(``BlockedCholesky.nested``, :class:`mlmext.linalg.NestedFactor`); ``nested=False`` (or
``nested_default = False``) forces the general path that factors them densely.  Both must give
the same numbers (tests/test_linalg.py checks deeper chains against dense algebra too).
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.linalg import BlockedCholesky
from refcases import CLMM_EPS, GLMM_EPS, lmm_eps, read_data

RTOL = 1e-10


def _synthetic(n_school=25, n_cls=4, n_pupil=5, n_item=7, seed=3):
    """Pupils in classes in schools, a covariate and a factor crossed with the nesting."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(n_school), n_cls * n_pupil)
    cls = np.repeat(np.arange(n_school * n_cls), n_pupil)
    n = school.size
    x = rng.normal(size=n)
    z = rng.uniform(-1.0, 1.0, size=n)
    item = rng.integers(0, n_item, n)
    y = (1.0 + 0.5 * x + rng.normal(scale=0.6, size=n_school)[school]
         + rng.normal(scale=0.3, size=n_school)[school] * x
         + rng.normal(scale=0.4, size=n_school * n_cls)[cls]
         + rng.normal(scale=0.3, size=n_item)[item] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "z": z, "b": (y > 1.0).astype(float),
                         "school": pd.Categorical([f"s{i:02d}" for i in school]),
                         "cls": pd.Categorical([f"c{i % n_cls}" for i in cls]),
                         "item": pd.Categorical([f"i{i}" for i in item])})


@pytest.fixture(scope="module")
def syn():
    return _synthetic()


def _close(a, b, rtol=RTOL, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    scale = max(np.max(np.abs(b)), 1e-300) if b.size else 1.0
    err = np.max(np.abs(a - b), initial=0.0) / scale
    assert err <= rtol, f"{what}: relative difference {err:.3g}"


def _flat(arrs):
    return np.concatenate([np.ravel(a) for a in arrs])


def _factor_quantities(ch, lams, v):
    ch.update(lams)
    u, beta = ch.solve()
    t, rho = ch.local_inverse()
    return {
        "logdet_zz": ch.logdet_zz, "logdet_xx": ch.logdet_xx, "r2": ch.r2, "u": u, "beta": beta,
        "cov_beta": ch.cov_beta_unscaled(),
        "ibs_ml": _flat(ch.inverse_block_sums(0)), "ibs_reml": _flat(ch.inverse_block_sums(ch.p)),
        "condvar": _flat(ch.condvar_u()), "ztres": _flat(ch.ztres(u, beta, lams)),
        "solve_re": ch.solve_re(v), "local_t": _flat(t), "local_rho": _flat(rho),
    }


DESIGNS = [
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
    ("nested3", "y ~ x + (1 | region/school/class)"),                       # a chain of three
    ("nested3", "y ~ x + (x | region:school) + (1 | region:school:class) + (1 | region)"),
    ("syn", "y ~ x + (1 | school/cls)"),
    ("syn", "y ~ x + (x | school) + (1 | school:cls)"),                     # q2 = 2
    ("syn", "y ~ x + (1 | school) + (x | school:cls)"),                     # q1 = 2
    ("syn", "y ~ x + (x | school) + (x | school:cls)"),
    ("syn", "y ~ x + (x + z | school) + (z | school:cls)"),                 # q2 = 3 (general inverse)
    ("syn", "y ~ x + (1 | school/cls) + (1 | item)"),                       # crossed third block
    ("syn", "y ~ x + (1 | school/cls) + (x | item)"),
]


@pytest.mark.parametrize("reweighting", [False, True], ids=["set_data", "reweight"])
@pytest.mark.parametrize("data,formula", DESIGNS)
def test_factor_matches_dense(syn, data, formula, reweighting):
    df = syn if data == "syn" else read_data(f"{data}.csv")
    model = mf.lmer(formula, df)
    des = model.re_design
    rng = np.random.default_rng(7)
    theta = des.theta_start + 0.4 * rng.random(des.ntheta)
    lams = des.lambdas(theta)
    w = rng.uniform(0.5, 2.0, model._XY.shape[0])
    v = rng.normal(size=des.nre)
    fast = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting)
    dense = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting, nested=False)
    assert fast.nested and not dense.nested
    a, b = _factor_quantities(fast, lams, v), _factor_quantities(dense, lams, v)
    for key in b:
        _close(a[key], b[key], what=key)
    if reweighting:                  # new weights and response through the reused structure
        XY = model._XY.copy()
        XY[:, -1] = rng.normal(size=XY.shape[0])
        w2 = rng.uniform(0.2, 3.0, XY.shape[0])
        fast.reweight(XY, w2)
        ref = BlockedCholesky(des.blocks, XY, w2, nested=False)
        a, b = _factor_quantities(fast, lams, v), _factor_quantities(ref, lams, v)
        for key in b:
            _close(a[key], b[key], what=key)



def test_local_inverse_large_crossed_rest():
    """A crossed block of more effects than the recursive inverse's leaf (``_potri.LEAF``): the
    nested factor's local inverse goes through the recursive ``potri_upper`` and must equal the
    dense path's."""
    from mlmext.linalg._potri import LEAF
    # the chain sorts first (blocks by size): classes > schools > items > LEAF
    df = _synthetic(n_school=LEAF + 30, n_cls=2, n_pupil=3, n_item=LEAF + 12)
    model = mf.lmer("y ~ x + (1 | school/cls) + (1 | item)", df)
    des = model.re_design
    lams = des.lambdas(des.theta_start + 0.3)
    fast = BlockedCholesky(des.blocks, model._XY).update(lams)
    dense = BlockedCholesky(des.blocks, model._XY, nested=False).update(lams)
    assert fast.nested and fast.rz > LEAF
    (tf, rf), (td, rd) = fast.local_inverse(), dense.local_inverse()
    _close(_flat(tf), _flat(td), what="local_t")
    _close(_flat(rf), _flat(rd), what="local_rho")


def test_detection(syn):
    des = mf.lmer("y ~ x + (1 | school/cls) + (1 | item)", syn).re_design
    XY = np.column_stack([np.ones(len(syn)), syn["y"]])
    ch = BlockedCholesky(des.blocks, XY)
    assert ch.nested and ch.rz == des.blocks[2].nre and ch.r == ch.rz + 2
    assert not BlockedCholesky(des.blocks, XY, nested=False).nested
    crossed = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", read_data("penicillin.csv"))
    des = crossed.re_design
    assert not BlockedCholesky(des.blocks, crossed._XY).nested
    with pytest.raises(ValueError, match="not nested"):
        BlockedCholesky(des.blocks, crossed._XY, nested=True)
    single = mf.lmer("y ~ x + (x | school)", syn).re_design
    assert not BlockedCholesky(single.blocks, XY).nested


def test_infeasible_theta_raises(syn):
    """A Lambda that makes the second block indefinite raises LinAlgError (the deviance is inf)."""
    model = mf.lmer("y ~ x + (1 | school/cls)", syn)
    ch = BlockedCholesky(model.re_design.blocks, model._XY)
    ch.A_diag = [ch.A_diag[0], -ch.A_diag[1]]         # a broken cross-product: M2 not definite
    with pytest.raises(np.linalg.LinAlgError):
        ch.update(model.re_design.lambdas(np.array([1.0, 1.0])))


@pytest.fixture
def dense_default(monkeypatch):
    def use_dense():
        monkeypatch.setattr(BlockedCholesky, "nested_default", False)
    return use_dense


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# Fits on the two paths are separate optimizer runs: the objectives agree to rounding at a fixed
# theta (above), but each run stops where its convergence criterion is met.  Fitted results are
# compared to what the criterion guarantees (refcases: lmm_eps, GLMM_EPS, CLMM_EPS): the
# log-likelihoods to eps / 2, estimates to 2 sqrt(eps) standard errors.  Standard errors,
# conditional modes and conditional SDs are smooth functions of the estimates and are held to
# the same number (relative, or in units of the conditional SD).
def _theta_se(res):
    """Standard errors of theta from the objective's Hessian at the estimate."""
    nt = len(res.theta)
    if res.model.__class__.__name__ == "LinearMixedModel":       # profiled deviance in theta
        return np.sqrt(np.diag(2.0 * np.linalg.inv(res.check_convergence().hessian)))
    if hasattr(res, "thresholds"):                                # clmm: -llf in (alpha, beta, theta)
        return np.sqrt(np.diag(np.linalg.inv(res.hessian)))[-nt:]
    return np.sqrt(np.diag(2.0 * np.linalg.inv(res.hessian)))[:nt]   # GLMM: D in (theta, b)


def _compare_fits(a, b, eps):
    """Two fits whose deviances are each within ``eps`` of the same minimum."""
    k = 2.0 * np.sqrt(eps)                      # standard errors
    assert abs(a.llf - b.llf) <= eps / 2, (a.llf, b.llf, eps)
    se_t = _theta_se(b)
    assert np.all(np.abs(a.theta - b.theta) <= k * se_t), (a.theta, b.theta, se_t, k)
    fa, fb, se = (np.asarray(v, dtype=float) for v in (a.fe_params, b.fe_params, b.bse_fe))
    assert np.all(np.abs(fa - fb) <= k * se), (fa, fb, se, k)
    bse_a, bse_b = np.asarray(a.bse_fe, dtype=float), np.asarray(b.bse_fe, dtype=float)
    assert np.all(np.abs(bse_a - bse_b) <= k * bse_b), (bse_a, bse_b, k)
    ra, rb = a.ranef(condvar=True), b.ranef(condvar=True)
    assert list(ra) == list(rb)
    for key in rb:
        sd = rb[key].attrs["condsd"].to_numpy()
        assert np.all(np.abs(ra[key].to_numpy() - rb[key].to_numpy()) <= k * sd), key
        assert np.all(np.abs(ra[key].attrs["condsd"].to_numpy() - sd) <= k * sd), key


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("data,formula", [("pastes", "strength ~ 1 + (1 | batch/cask)"),
                                          ("syn", "y ~ x + (x | school) + (1 | school:cls)"),
                                          ("syn", "y ~ x + (1 | school/cls) + (1 | item)")])
def test_lmm_matches_dense(syn, dense_default, data, formula, reml):
    df = syn if data == "syn" else read_data(f"{data}.csv")
    fast = _quiet(lambda: mf.lmer(formula, df).fit(reml=reml))
    assert fast.model._cross_products().nested
    theta = fast.theta
    dev_f, grad_f = fast.model.deviance_and_gradient(theta, reml=reml)
    dense_default()
    dense_model = mf.lmer(formula, df)
    assert not dense_model._cross_products().nested
    dev_d, grad_d = dense_model.deviance_and_gradient(theta, reml=reml)
    _close(dev_f, dev_d)
    _close(grad_f, grad_d, RTOL * max(1.0, abs(dev_d) / max(np.max(np.abs(grad_d)), 1e-300)))
    dense = _quiet(lambda: dense_model.fit(reml=reml))
    _compare_fits(fast, dense, max(lmm_eps(fast), lmm_eps(dense)))


def test_glmm_poisson_nested_matches_dense(dense_default):
    df = read_data("pois_nested.csv")
    fit = lambda: _quiet(lambda: mf.glmer("y ~ x + (1 | region/site)", df, family=sm.families.Poisson()).fit())
    fast = fit()
    assert fast.model.deviance().chol_u.nested
    dense_default()
    dense = fit()
    assert not dense.model.deviance().chol_u.nested
    _compare_fits(fast, dense, GLMM_EPS)


def test_glmm_binomial_nested_matches_dense(syn, dense_default):
    fit = lambda: _quiet(lambda: mf.glmer("b ~ x + (1 | school/cls)", syn,
                                          family=sm.families.Binomial()).fit())
    fast = fit()
    assert fast.model.deviance().chol_u.nested and fast.model.deviance().chol_x.nested
    dense_default()
    _compare_fits(fast, fit(), GLMM_EPS)


def test_clmm_nested_matches_dense(dense_default):
    soup = read_data("soup.csv")
    fit = lambda: _quiet(lambda: mf.clmm("SURENESS ~ PROD + (1 | RESP) + (1 | RESP:PROD)", soup).fit())
    fast = fit()
    assert fast.model.deviance().chol.nested
    dense_default()
    dense = fit()
    assert not dense.model.deviance().chol.nested
    _compare_fits(fast, dense, CLMM_EPS)
    k = 2.0 * np.sqrt(CLMM_EPS)                 # thresholds too, in standard errors
    se = dense.bse.to_numpy()
    assert np.all(np.abs(fast.params.to_numpy() - dense.params.to_numpy()) <= k * se)
