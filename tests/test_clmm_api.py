"""Cumulative link mixed models: links and derivatives, thresholds, response handling, formula,
results API (no R needed; R reference values are in test_clmm_reference.py)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.miscmodels.ordinal_model import OrderedModel

from mlmext.formula import api as mf
from mlmext.ordinal import (LINKS, CumulativeLinkConditional, OrdinalMixedModel, Thresholds,
                            category_probabilities, fit_clm)

from refcases import read_data

WINE_F = "rating ~ temp + contact + (1 | judge)"


@pytest.fixture(scope="module")
def wine():
    return read_data("wine.csv")


@pytest.fixture(scope="module")
def wine_fit(wine):
    return mf.clmm(WINE_F, wine).fit()


# ------------------------------------------------------------------ conditional model
@pytest.mark.parametrize("link", sorted(LINKS))
def test_conditional_derivatives_match_numerical(link):
    rng = np.random.default_rng(1)
    n, K = 60, 5
    y = rng.integers(0, K, n)
    th = np.array([-1.0, 0.0, 0.7, 2.0])
    w = rng.uniform(0.5, 2.0, n)
    c = CumulativeLinkConditional(y, K, link, weights=w, thresholds=th)
    eta = rng.normal(size=n)
    h = 1e-5
    ll = lambda e: c.loglik_obs(e)
    d1, wt = c.derivatives(eta)
    np.testing.assert_allclose(d1, (ll(eta + h) - ll(eta - h)) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(wt, -(ll(eta + 1e-4) - 2 * ll(eta) + ll(eta - 1e-4)) / 1e-8, atol=2e-4)
    hh, dw = c.hessian_terms(eta)
    np.testing.assert_allclose(hh, wt)
    num_dw = (c.derivatives(eta + h)[1] - c.derivatives(eta - h)[1]) / (2 * h)
    np.testing.assert_allclose(dw, num_dw, atol=1e-6 * max(1, np.abs(num_dw).max()))
    dl, dd1, dW = c.param_derivatives(eta)
    for j in range(K - 1):
        out = []
        for s in (1, -1):
            t2 = th.copy()
            t2[j] += s * h
            c.set_thresholds(t2)
            e2 = eta.copy()
            out.append((c.loglik_obs(e2), *c.derivatives(e2)))
        c.set_thresholds(th)
        np.testing.assert_allclose(dl[:, j], (out[0][0] - out[1][0]) / (2 * h), atol=1e-6)
        np.testing.assert_allclose(dd1[:, j], (out[0][1] - out[1][1]) / (2 * h), atol=1e-6)
        np.testing.assert_allclose(dW[:, j], (out[0][2] - out[1][2]) / (2 * h), atol=1e-5)


@pytest.mark.parametrize("link", sorted(LINKS))
def test_probabilities_in_the_tails(link):
    """No cancellation for large |eta|: every category keeps a positive, accurate probability."""
    th = np.array([-1.0, 0.0, 1.0])
    eta = np.array([-60.0, -20.0, 0.0, 20.0, 60.0])
    P = category_probabilities(link, th, eta)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    c = CumulativeLinkConditional(np.full(5, 3), 4, link, thresholds=th)     # top category
    ll_top = c.loglik_obs(eta)
    c = CumulativeLinkConditional(np.full(5, 2), 4, link, thresholds=th)     # interior category
    ll_mid = c.loglik_obs(eta)
    assert np.all(np.isfinite(ll_top[:2])) and np.all(ll_mid < 0)
    if link == "logit":
        from scipy.special import expit
        c = CumulativeLinkConditional(np.array([2]), 4, "logit", thresholds=th)
        # category 3 at eta = -30: the interval (0 + 30, 1 + 30) lies far in the upper tail
        p_exact = expit(-30.0) - expit(-31.0)          # 1 - F(30) - (1 - F(31))
        naive = expit(31.0) - expit(30.0)              # F(31) - F(30): cancellation
        assert abs(naive - p_exact) / p_exact > 1e-4
        np.testing.assert_allclose(np.exp(c.loglik_obs(np.array([-30.0]))), p_exact, rtol=1e-12)


def test_logit_weights_are_exact_far_in_the_tail():
    """w = f(u) + f(l) for the logit: positive even where D1^2 - G cancels to rounding level."""
    c = CumulativeLinkConditional(np.array([1, 2, 3]), 5, "logit", thresholds=[-1.0, 0.0, 0.7, 2.0])
    d1, w = c.derivatives(np.full(3, 50.0))
    assert np.all(w > 0) and np.all(w < 1e-19)
    np.testing.assert_allclose(d1, -1.0)


# ------------------------------------------------------------------ thresholds
def test_threshold_structures_match_ordinal_tjac():
    # ordinal's makeThresholds(tJac) for 4 and 5 thresholds
    T4 = Thresholds("symmetric", list("abcde")).T
    np.testing.assert_array_equal(T4, [[1, 0, -1], [1, 0, 0], [0, 1, 0], [0, 1, 1]])
    T5 = Thresholds("symmetric", list("abcdef")).T
    np.testing.assert_array_equal(T5, [[1, 0, -1], [1, -1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 1]])
    T6 = Thresholds("symmetric", list("abcdefg")).T
    np.testing.assert_array_equal(T6, [[1, 0, 0, -1], [1, 0, -1, 0], [1, 0, 0, 0],
                                       [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]])
    Te = Thresholds("equidistant", list("abcde"))
    np.testing.assert_array_equal(Te.T, [[1, 0], [1, 1], [1, 2], [1, 3]])
    assert Te.names == ["threshold.1", "spacing"]
    assert Thresholds("symmetric", list("abcdef")).names == ["central", "spacing.1", "spacing.2"]
    assert Thresholds("flexible", [1, 2, 3]).names == ["1|2", "2|3"]


@pytest.mark.parametrize("kind,K", [("flexible", 6), ("equidistant", 5), ("symmetric", 5), ("symmetric", 6)])
def test_thresholds_increasing_by_construction(kind, K):
    thr = Thresholds(kind, [str(i) for i in range(K)])
    rng = np.random.default_rng(0)
    for _ in range(20):
        psi = rng.normal(scale=3, size=thr.k)
        th = thr.thresholds(thr.alpha(psi))
        assert np.all(np.diff(th) > 0)
        np.testing.assert_allclose(thr.psi(thr.alpha(psi)), psi, atol=1e-9)
        J = thr.jacobian(psi)
        for j in range(thr.k):
            e = np.zeros(thr.k)
            e[j] = 1e-6
            np.testing.assert_allclose((thr.alpha(psi + e) - thr.alpha(psi - e)) / 2e-6, J[:, j], rtol=1e-6,
                                       atol=1e-8)


def test_equidistant_needs_three_categories():
    with pytest.raises(ValueError, match="3 or more"):
        Thresholds("equidistant", ["a", "b"])
    with pytest.raises(ValueError, match="flexible"):
        Thresholds("ordered", ["a", "b", "c"])


# ------------------------------------------------------------------ clm vs statsmodels
# statsmodels flags its probit Newton run as not converged although it agrees to 1e-6
@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
@pytest.mark.parametrize("link", ["logit", "probit"])
def test_fixed_effects_fit_matches_statsmodels_orderedmodel(wine, link):
    model = mf.clmm(WINE_F, wine, link=link)
    x, llf, H, conv = fit_clm(model.cond, model.thr, model.exog, model.offset, tol=1e-20)
    assert conv
    om = OrderedModel(wine["rating"], model.exog, distr=link).fit(method="newton", disp=False,
                                                                   tol=1e-12, maxiter=200)
    k = model.thr.k
    # OrderedModel: exog coefficients, then first threshold and log increments
    np.testing.assert_allclose(x[k:], om.params[:2], atol=1e-6)
    th_sm = om.model.transform_threshold_params(om.params)[1:-1]
    np.testing.assert_allclose(x[:k], th_sm, atol=1e-6)
    np.testing.assert_allclose(llf, om.llf, atol=1e-8)
    # the Hessian matches statsmodels' covariance of the coefficients
    cov = np.linalg.inv(-H)[k:, k:]
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), om.bse[:2], rtol=1e-3)


# ------------------------------------------------------------------ response handling
def _small(wine):
    d = wine.copy()
    d["rating_int"] = d["rating"].astype(int)
    d["rating_str"] = d["rating"].map({"1": "very low", "2": "low", "3": "mid", "4": "high",
                                       "5": "very high"}).astype(str)
    return d


def test_integer_response_and_levels(wine, wine_fit):
    d = _small(wine)
    r_int = mf.clmm("rating_int ~ temp + contact + (1 | judge)", d).fit()
    # the same response codes and design: the same computation, not another optimum
    np.testing.assert_allclose(r_int.params, wine_fit.params, atol=1e-6)
    order = ["very low", "low", "mid", "high", "very high"]
    r_str = mf.clmm("rating_str ~ temp + contact + (1 | judge)", d, levels=order).fit()
    np.testing.assert_allclose(r_str.params, wine_fit.params, atol=1e-6)
    assert list(r_str.thresholds.index) == ["very low|low", "low|mid", "mid|high", "high|very high"]


def test_unordered_string_response_is_an_error_that_says_how(wine):
    d = _small(wine)
    with pytest.raises(ValueError, match="levels="):
        mf.clmm("rating_str ~ temp + contact + (1 | judge)", d)
    d["rating_cat"] = pd.Categorical(d["rating_str"])
    with pytest.raises(ValueError, match=r"as_ordered\(\)|levels="):
        mf.clmm("rating_cat ~ temp + contact + (1 | judge)", d)
    with pytest.raises(ValueError, match="not in levels"):
        mf.clmm("rating_str ~ temp + contact + (1 | judge)", d, levels=["very low", "low"])
    d["frac"] = d["response"] / 10.0
    with pytest.raises(ValueError, match="non-integer"):
        mf.clmm("frac ~ temp + (1 | judge)", d)


def test_unused_levels_dropped_with_warning_and_too_few_is_an_error(wine):
    d = wine.copy()
    d["rating"] = pd.Categorical(d["rating"].astype(str), categories=["0", "1", "2", "3", "4", "5", "6"],
                                 ordered=True)
    with pytest.warns(UserWarning, match="unused categories"):
        m = mf.clmm(WINE_F, d)
    assert m.levels == ["1", "2", "3", "4", "5"]
    d2 = wine.copy()
    d2["rating"] = pd.Categorical(["3"] * len(d2), categories=["1", "2", "3"], ordered=True)
    with pytest.raises(ValueError, match="at least two"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf.clmm(WINE_F, d2)


def test_missing_rows_are_dropped_and_counted(wine, wine_fit):
    d = wine.copy()
    d = pd.concat([d, d.iloc[:3]], ignore_index=True)
    d.loc[len(wine):, "rating"] = np.nan
    r = mf.clmm(WINE_F, d).fit()
    assert r.model.nrows_dropped == 3
    np.testing.assert_allclose(r.params, wine_fit.params, atol=1e-6)


# ------------------------------------------------------------------ formula / intercept
def test_fixed_part_has_no_intercept(wine, wine_fit):
    assert list(wine_fit.fe_params.index) == ["temp[T.warm]", "contact[T.yes]"]
    assert list(wine_fit.params.index) == ["1|2", "2|3", "3|4", "4|5", "temp[T.warm]", "contact[T.yes]"]
    # as clmm: "an intercept is needed and assumed"; the full dummy coding of temp is then
    # rank deficient and a column is dropped: the same model, reparametrized
    with pytest.warns(UserWarning) as rec:
        r0 = mf.clmm("rating ~ 0 + temp + contact + (1 | judge)", wine).fit()
    msgs = [str(w.message) for w in rec]
    assert any("intercept is assumed" in m or "needs an intercept" in m for m in msgs), msgs
    assert any("rank deficient" in m for m in msgs), msgs
    assert list(r0.fe_params.index) == ["temp[cold]", "contact[T.yes]"]
    # another optimizer run: llf within CLMM_EPS / 2, estimates 2 sqrt(CLMM_EPS) = 9e-5 SE (<= 6e-5 here)
    np.testing.assert_allclose(r0.llf, wine_fit.llf, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r0.thresholds) - r0.fe_params["temp[cold]"],
                               np.asarray(wine_fit.thresholds), atol=1e-4)


def test_direct_construction_rejects_a_constant_column(wine_fit):
    m = wine_fit.model
    X = np.column_stack([np.ones(m.exog.shape[0]), m.exog])
    y = pd.Categorical(np.asarray(m.endog, dtype=int) + 1, ordered=True)
    with pytest.raises(ValueError, match="constant column"):
        OrdinalMixedModel(pd.Series(y), X, m.re_design)


def test_agq_needs_one_grouping_factor(wine):
    m = mf.clmm("rating ~ temp + contact + (1 | judge) + (1 | bottle)", wine)
    with pytest.raises(NotImplementedError, match="single grouping factor"):
        m.fit(nagq=5)
    with pytest.raises(ValueError, match="nagq"):
        mf.clmm(WINE_F, wine).fit(nagq=0)
    with pytest.raises(NotImplementedError, match="non-adaptive"):
        mf.clmm(WINE_F, wine).fit(nagq=-10)


def test_unknown_link(wine):
    with pytest.raises(ValueError, match="unknown link"):
        mf.clmm(WINE_F, wine, link="identity")


# ------------------------------------------------------------------ results API
def test_results_api(wine_fit):
    r = wine_fit
    assert isinstance(r.thresholds, pd.Series)
    assert list(r.thresholds.index) == ["1|2", "2|3", "3|4", "4|5"]
    assert r.k_params == 7
    np.testing.assert_allclose(r.aic, -2 * r.llf + 14)
    np.testing.assert_allclose(r.bic, -2 * r.llf + np.log(72) * 7)
    ci = r.conf_int()
    assert list(ci.index) == list(r.params.index)
    tt = r.t_test("temp[T.warm] = contact[T.yes]")
    d = r.params["temp[T.warm]"] - r.params["contact[T.yes]"]
    np.testing.assert_allclose(tt.effect, d)
    cov = r.cov_params()
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), r.bse)
    vc = r.varcorr()
    row = vc[vc.grp == "judge"].iloc[0]
    np.testing.assert_allclose(row.vcov, row.sdcor ** 2)
    assert r.converged
    assert not r.is_singular()


def test_ranef_condvar(wine_fit):
    re = wine_fit.ranef(condvar=True)["judge"]
    assert re.shape == (9, 1)
    cv = re.attrs["condvar"]
    assert cv.shape == (9, 1, 1) and np.all(cv > 0)
    np.testing.assert_allclose(re.attrs["condsd"].to_numpy() ** 2, cv[:, :, 0])


def test_predict_probabilities(wine, wine_fit):
    P = wine_fit.predict()
    assert P.shape == (72, 5)
    assert list(P.columns) == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    P0 = wine_fit.predict(re=False)
    assert not np.allclose(P, P0)
    # new data with an unseen judge: population probabilities
    new = wine.iloc[:4].copy()
    new["judge"] = pd.Categorical(["1", "99", "1", "99"])
    Pn = wine_fit.predict(new)
    Pn0 = wine_fit.predict(new, re=False)
    np.testing.assert_allclose(Pn.iloc[[1, 3]], Pn0.iloc[[1, 3]])
    np.testing.assert_allclose(Pn.iloc[0], P.iloc[0])
    # cumulative probabilities and the linear predictor are consistent with the thresholds
    eta = wine_fit.predict(which="linear", re=False)
    C = wine_fit.predict(which="cumprob", re=False)
    th = wine_fit.thresholds.to_numpy()
    np.testing.assert_allclose(C.iloc[:, 0], 1 / (1 + np.exp(-(th[0] - eta))))
    np.testing.assert_allclose(C.iloc[:, -1], 1.0)
    # the fitted probabilities reproduce the conditional log-likelihood at the modes
    y = np.asarray(wine_fit.model.endog, dtype=int)
    llc = np.log(P.to_numpy()[np.arange(72), y]).sum()
    np.testing.assert_allclose(llc, wine_fit.modes.loglik_cond, rtol=1e-10)


def test_summary_has_the_three_tables(wine_fit):
    txt = str(wine_fit.summary())
    assert "Threshold coefficients" in txt and "Coefficients" in txt and "Random effects" in txt
    assert "1|2" in txt and "temp[T.warm]" in txt and "judge" in txt
    assert "Residual" not in txt


def test_laplace_and_agq_one_node_agree(wine):
    m = mf.clmm(WINE_F, wine)
    r = m.fit()
    a, b, t = (np.asarray(r.params)[:4], np.asarray(r.params)[4:], r.theta)
    l1, _ = m.deviance().loglike_parts(a, b, t, nagq=1)
    np.testing.assert_allclose(l1, r.llf, atol=1e-9)
    lq, _ = m.deviance().loglike_parts(a, b, t, nagq=25)
    assert abs(lq - l1) < 0.1


# ------------------------------------------------------------------ quadrature vs brute force
def _brute_force_loglik(model, alpha, beta, theta, npts=161, width=8.0):
    """Marginal log-likelihood of a single-grouping-factor clmm by tensor-grid integration."""
    des = model.re_design
    blk = des.blocks[0]
    lam = des.lambdas(np.asarray(theta, dtype=float))[0]
    q = blk.q
    g1 = np.linspace(-width, width, npts)
    h = g1[1] - g1[0]
    grids = np.meshgrid(*([g1] * q), indexing="ij")
    U = np.column_stack([g.ravel() for g in grids])                 # (G, q) spherical u
    logphi = -0.5 * (U * U).sum(1) - 0.5 * q * np.log(2 * np.pi)
    cond = model._make_conditional()
    cond.set_thresholds(model.thr.thresholds(alpha))
    eta_f = model.exog @ beta + model.offset
    total = 0.0
    for g in range(blk.m):
        rows = np.flatnonzero(blk.codes == g)
        B = U @ lam.T                                               # (G, q) b = Lambda u
        ll = np.zeros(U.shape[0])
        for i in rows:
            eta = eta_f[i] + B @ blk.X[i]
            c = type(cond)(np.full(eta.size, cond.y[i]), cond.n_cat, cond.link,
                           thresholds=cond.thresholds)
            ll += c.loglik_obs(eta)
        a = ll + logphi
        amax = a.max()
        total += amax + np.log(np.exp(a - amax).sum() * h ** q)
    return total


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_scalar_agq_matches_brute_force_integration(wine, link):
    m = mf.clmm(WINE_F, wine, link=link)
    alpha = np.array([-1.5, 1.4, 4.1, 6.0])
    beta = np.array([3.0, 1.8])
    theta = np.array([1.3])
    exact = _brute_force_loglik(m, alpha, beta, theta, npts=2001, width=10.0)
    agq, _ = m.deviance().loglike_parts(alpha, beta, theta, nagq=25)
    lap, _ = m.deviance().loglike_parts(alpha, beta, theta, nagq=1)
    assert abs(agq - exact) < 1e-7
    assert abs(lap - exact) > 1e-3          # the Laplace approximation is visibly different


def test_vector_agq_matches_brute_force_integration(wine):
    """AGQ for a vector-valued term (product grid), beyond clmm: against 2-D integration."""
    m = mf.clmm("rating ~ temp + contact + (1 + contact | judge)", wine)
    alpha = np.array([-1.5, 1.4, 4.1, 6.0])
    beta = np.array([3.0, 1.8])
    theta = np.array([1.2, -0.4, 0.6])
    exact = _brute_force_loglik(m, alpha, beta, theta, npts=241, width=8.0)
    agq, _ = m.deviance().loglike_parts(alpha, beta, theta, nagq=12)
    lap, _ = m.deviance().loglike_parts(alpha, beta, theta, nagq=1)
    assert abs(agq - exact) < 1e-5
    assert abs(lap - exact) > 1e-3
    r = m.fit(nagq=7, hessian=False)
    assert r.converged and r.nagq == 7 and np.isfinite(r.llf)


def test_offset_shifts_the_thresholds(wine, wine_fit):
    d = wine.copy()
    d["off"] = 0.75
    r = mf.clmm("rating ~ temp + contact + offset(off) + (1 | judge)", d).fit()
    # another optimizer run: within the criterion (refcases.CLMM_EPS; 9e-5 SE <= 6e-5 in the estimates)
    np.testing.assert_allclose(r.llf, wine_fit.llf, atol=1e-7)
    np.testing.assert_allclose(np.asarray(r.thresholds), np.asarray(wine_fit.thresholds) + 0.75, atol=1e-4)
    np.testing.assert_allclose(np.asarray(r.fe_params), np.asarray(wine_fit.fe_params), atol=1e-4)


# ------------------------------------------------------ responses written C(y) / factor(y)
@pytest.mark.parametrize("lhs", ["C(rating)", "factor(rating)", "as.factor(rating)",
                                 "ordered(rating)", "as.ordered( rating )"])
def test_factor_wrapped_response_is_the_plain_response(wine, wine_fit, lhs):
    res = mf.clmm(WINE_F.replace("rating", lhs, 1), wine).fit()
    np.testing.assert_array_equal(np.asarray(res.params), np.asarray(wine_fit.params))
    assert list(res.thresholds.index) == list(wine_fit.thresholds.index)


def test_factor_wrapped_response_takes_rs_factor_order(wine, wine_fit):
    d = wine.copy()
    d["rs"] = d["rating"].astype(str)                       # strings: refused plain ...
    with pytest.raises(ValueError, match=r"C\(rs\)"):
        mf.clmm("rs ~ temp + contact + (1 | judge)", d)
    res = mf.clmm("C(rs) ~ temp + contact + (1 | judge)", d).fit()   # ... sorted in C()
    np.testing.assert_array_equal(np.asarray(res.params), np.asarray(wine_fit.params))
    # sorted order reversed against the ratings: thresholds reversed and negated, beta negated
    d["rl"] = d["rs"].map({"1": "e1", "2": "d2", "3": "c3", "4": "b4", "5": "a5"})
    rev = mf.clmm("factor(rl) ~ temp + contact + (1 | judge)", d).fit()
    assert list(rev.thresholds.index) == ["a5|b4", "b4|c3", "c3|d2", "d2|e1"]
    np.testing.assert_allclose(rev.thresholds.to_numpy(), -wine_fit.thresholds.to_numpy()[::-1],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(rev.fe_params), -np.asarray(wine_fit.fe_params), atol=1e-5)
    # an unordered categorical keeps its category order (R's factor() of a factor)
    d["ru"] = pd.Categorical(d["rs"], categories=["1", "2", "3", "4", "5"], ordered=False)
    res_u = mf.clmm("C(ru) ~ temp + contact + (1 | judge)", d).fit()
    np.testing.assert_array_equal(np.asarray(res_u.params), np.asarray(wine_fit.params))
    # levels= still decides
    res_l = mf.clmm("C(rl) ~ temp + contact + (1 | judge)", d, levels=["e1", "d2", "c3", "b4", "a5"]).fit()
    np.testing.assert_array_equal(np.asarray(res_l.params), np.asarray(wine_fit.params))
    with pytest.raises(ValueError, match="alone inside C"):
        mf.clmm("C(rs, Treatment) ~ temp + (1 | judge)", d)
