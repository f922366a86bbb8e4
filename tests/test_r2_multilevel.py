"""Multilevel R² (mlmext.inference.r2_multilevel): Rights & Sterba's decomposition against r2mlm's
printed README numbers and a direct computation from the paper's formulas; mitml's multilevelR2
against mitml (tests/reference/r2, tools/r_reference/r2_reference.R); MuMIn's likelihood-ratio R²
against its definition evaluated in R with lme4 / glm and against a direct computation here."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from mlmext import inference as inf
from mlmext.formula import api as mf
from mlmext.inference.r2_multilevel import decompose_variances

from refcases import lmm_eps, load_ref, read_data

_FITS = {}


def fit(formula, data, reml=True, family=None):
    key = (formula, data, reml, family is None)
    if key not in _FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if family is None:
                _FITS[key] = mf.lmer(formula, read_data(data)).fit(reml=reml)
            else:
                _FITS[key] = mf.glmer(formula, read_data(data), family=family).fit()
    return _FITS[key]


def r_formula(call):
    return call.split("mer(")[1].split(", data")[0]


def k_fit(res):
    """Variance ratios move by about sqrt(eps) relative, eps our deviance's distance from the
    optimum (see tests/test_inference.py)."""
    return float(np.sqrt(lmm_eps(res)))


# ------------------------------------------------------------------ Rights & Sterba (r2mlm)
def test_decomposition_reproduces_r2mlm_readme():
    """r2mlm's README (github.com/mkshaw/r2mlm, README.md at commit 9ce830b, Sept 2020) prints
    r2mlm(lmer(satisfaction ~ 1 + salary_c + s_t_ratio + (1 + salary_c | schoolID), teachsat,
    REML = TRUE)).  Its inputs, from R 4.2.2 / lme4 1.1-31 on the teachsat data of that commit
    (the data are not stored here): the fixed slopes, VarCorr, sigma^2 and the sample moments
    var(salary_c), mean(salary_c), var(s_t_ratio).  salary_c is school-mean centred."""
    gw, gb = 1.53920036961904, -0.445409013666494
    tau = np.array([[40.462533565377, -0.333743351327528], [-0.333743351327528, 1.09175500598783]])
    var_w, mean_w, var_b, s2 = 3.84509263660207, -7.37450224343029e-19, 36.5604511612401, 50.426761966307
    mz = np.array([1.0, mean_w])
    r2, dec = decompose_variances(gw ** 2 * var_w, gb ** 2 * var_b, tau[1, 1] * var_w,
                                  mz @ tau @ mz, tau[0, 0], s2)
    printed = {   # $R2s as the README prints them
        ("f1", "total"): 0.0817367298644048, ("f1", "within"): 0.142930358177837,
        ("f2", "total"): 0.0650803204186671, ("f2", "between"): 0.152008530367315,
        ("v", "total"): 0.0376662281262814, ("v", "within"): 0.0658657067175134,
        ("m", "total"): 0.363055654986177, ("m", "between"): 0.847991469632685,
        ("f", "total"): 0.146817050283072, ("fv", "total"): 0.184483278409353,
        ("fv", "within"): 0.20879606489535, ("fvm", "total"): 0.547538933395531}
    for (row, col), want in printed.items():
        assert r2.loc[row, col] == pytest.approx(want, rel=1e-12)
    assert dec.loc["sigma2", "total"] == pytest.approx(0.452461066604469, rel=1e-12)
    assert dec.loc["sigma2", "within"] == pytest.approx(0.79120393510465, rel=1e-12)
    # NA in the README: the measures a level does not have
    for row, col in [("f1", "between"), ("f2", "within"), ("m", "within"), ("f", "within"),
                     ("fvm", "between")]:
        assert np.isnan(r2.loc[row, col])
    np.testing.assert_allclose(dec["total"].sum(), 1.0, rtol=1e-14)


def paper_decomposition(res, data, within, between, slopes, group):
    """Rights & Sterba (2019), eq. for the model-implied total variance of a two-level model
    with cluster-mean-centred level-1 predictors:
    gamma_w' Phi_w gamma_w + gamma_b' Phi_b gamma_b + tr(T Sigma) + tau_00 + sigma^2, Phi_w,
    Phi_b, Sigma the (n - 1) covariances of the level-1, level-2 and random-slope predictors
    (``between``: name -> values), T the random slopes' covariance (from ``varcorr()``)."""
    fe = res.fe_params
    gw = fe[within].to_numpy()
    Pw = np.atleast_2d(np.cov(np.column_stack([data[c] for c in within]), rowvar=False))
    gb = fe[list(between)].to_numpy()
    Pb = np.atleast_2d(np.cov(np.column_stack(list(between.values())), rowvar=False))
    names = ["Intercept"] + slopes
    T = np.zeros((len(names), len(names)))
    vc = res.varcorr()
    for _, r in vc[vc["grp"] == group].iterrows():
        i = names.index(r["var1"])
        if r["var2"] is None:
            T[i, i] = r["vcov"]
        else:
            j = names.index(r["var2"])
            T[i, j] = T[j, i] = r["vcov"]
    Sig = np.atleast_2d(np.cov(np.column_stack([data[c] for c in slopes]), rowvar=False))
    parts = {"f1": gw @ Pw @ gw, "f2": gb @ Pb @ gb, "v": np.trace(T[1:, 1:] @ Sig),
             "m": T[0, 0], "sigma2": res.sigma ** 2}
    return parts, sum(parts.values())


def test_rights_sterba_centred_against_paper_formulas():
    data = read_data("hsb82.csv")
    res = fit("mAch ~ meanses + sector + cses + (cses | school)", "hsb82.csv")
    out = res.r2("rights-sterba")
    assert out.centered and out.within == ("cses",)
    assert set(out.between) == {"meanses", "sector[T.Catholic]"}
    between = {"meanses": data["meanses"].to_numpy(float),
               "sector[T.Catholic]": (data["sector"] == "Catholic").to_numpy(float)}
    p, total = paper_decomposition(res, data, ["cses"], between, ["cses"], "school")
    W, B = p["f1"] + p["v"] + p["sigma2"], p["f2"] + p["m"]
    assert W + B == pytest.approx(total, rel=1e-12)
    want = {("f1", "total"): p["f1"] / total, ("f2", "total"): p["f2"] / total,
            ("v", "total"): p["v"] / total, ("m", "total"): p["m"] / total,
            ("f", "total"): (p["f1"] + p["f2"]) / total,
            ("fv", "total"): (p["f1"] + p["f2"] + p["v"]) / total,
            ("fvm", "total"): 1 - p["sigma2"] / total,
            ("f1", "within"): p["f1"] / W, ("v", "within"): p["v"] / W,
            ("fv", "within"): (p["f1"] + p["v"]) / W,
            ("f2", "between"): p["f2"] / B, ("m", "between"): p["m"] / B}
    for (row, col), w in want.items():
        # cses is centred to the 15th digit, so the m'Tau m of r2mlm equals tau_00 to ~1e-12
        assert out.r2.loc[row, col] == pytest.approx(w, rel=1e-9), (row, col)
    assert out.decomposition.loc["sigma2", "within"] == pytest.approx(p["sigma2"] / W, rel=1e-12)
    # MVP of mitml is R2_f^t
    assert res.r2("mitml")["MVP"] == pytest.approx(out.r2.loc["f", "total"], rel=1e-10)


def test_rights_sterba_not_centred_gives_total_measures():
    """sleepstudy's Days is not centred within Subject: r2mlm gives the total measures only,
    with the variance of the whole fixed part and m = mean(z)' T mean(z)."""
    data = read_data("sleepstudy.csv")
    res = fit("Reaction ~ Days + (Days | Subject)", "sleepstudy.csv")
    out = inf.r2_rights_sterba(res)
    assert not out.centered and list(out.r2.columns) == ["total"]
    d = data["Days"].to_numpy(float)
    b = res.fe_params["Days"]
    L = np.array([[res.theta[0], 0], [res.theta[1], res.theta[2]]]) * res.sigma
    T = L @ L.T     # lme4's theta: the relative Cholesky factor of the (Intercept, Days) term
    f, v = b ** 2 * np.var(d, ddof=1), T[1, 1] * np.var(d, ddof=1)
    mz = np.array([1.0, d.mean()])
    m = mz @ T @ mz
    tot = f + v + m + res.sigma ** 2
    np.testing.assert_allclose(out.r2["total"].to_numpy(),
                               [f / tot, v / tot, m / tot, (f + v) / tot, (f + v + m) / tot],
                               rtol=1e-10)


def test_rights_sterba_classifies_design_columns():
    """A cross-level interaction of a centred level-1 predictor is a (centred) level-1 column."""
    res = fit("mAch ~ meanses * cses + sector + (cses | school)", "hsb82.csv")
    out = res.r2("r2mlm")
    assert out.within == ("cses", "meanses:cses") and out.centered
    assert set(out.between) == {"meanses", "sector[T.Catholic]"}
    assert out.r2.loc["f", "total"] == pytest.approx(
        out.parts["f"] / (out.parts[["f1", "f2", "v", "tau00", "sigma2"]].sum()), rel=1e-9)
    with pytest.raises(AttributeError):
        out.r2 = None


def test_rights_sterba_refuses_what_it_does_not_define():
    with pytest.raises(ValueError, match="one grouping factor"):
        fit("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin.csv").r2("rights-sterba")
    g = fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp.csv",
            family=sm.families.Binomial())
    with pytest.raises(NotImplementedError):
        g.r2("rights-sterba")
    with pytest.raises(ValueError, match="method must be"):
        g.r2("nagelkerke")
    with pytest.raises(TypeError):
        fit("Reaction ~ Days + (Days | Subject)", "sleepstudy.csv").r2("rights-sterba", null=1)


# ------------------------------------------------------------------ mitml's multilevelR2
@pytest.mark.parametrize("case", ["mitml_sleepstudy", "mitml_hsb82", "mitml_hsb82_ml",
                                  "mitml_hsb82_uncorr"])
def test_mitml_multilevel_r2(case):
    r = load_ref("r2", case)
    res = fit(r_formula(r["r_call"]), r["data"], reml="REML = FALSE" not in r["r_call"])
    out = res.r2("mitml")
    # ratios of variance components: R's 7 digits of the optimum plus our fit's precision
    k = k_fit(res)
    for name, want in r["multilevelR2"].items():
        assert out[name] == pytest.approx(want, rel=1e-4 + 10 * k), name


def test_mitml_given_null_model():
    res = fit("mAch ~ meanses + cses + (1 | school)", "hsb82.csv", reml=False)
    null = fit("mAch ~ 1 + (1 | school)", "hsb82.csv", reml=False)
    np.testing.assert_allclose(inf.r2_mitml(res, null=null).to_numpy(),
                               res.r2("mitml").to_numpy(), rtol=1e-6)
    # mitml's SB is Snijders & Bosker's level-1 R2
    assert res.r2("mitml")["SB"] == pytest.approx(res.r2("sb")["level1"], rel=1e-6)
    with pytest.raises(ValueError, match="y ~ 1"):
        inf.r2_mitml(res, null=res)


# ------------------------------------------------------------------ likelihood-ratio R2 (MuMIn)
LR_CASES = ["lr_sleepstudy", "lr_hsb82_ml", "lr_cbpp"]


def lr_fit(r):
    if "glmer" in r["r_call"]:
        return fit(r_formula(r["r_call"]), r["data"], family=sm.families.Binomial())
    return fit(r_formula(r["r_call"]), r["data"], reml="REML = FALSE" not in r["r_call"])


@pytest.mark.parametrize("case", LR_CASES)
def test_likelihood_ratio_r2(case):
    r = load_ref("r2", case)
    res = lr_fit(r)
    glmm = "glmer" in r["r_call"]
    # LMM: logLik(REML = FALSE) at our estimates agrees with lme4's to the optimizer's 1e-6;
    # the binomial Laplace fits to 1e-4 (ours is never worse than glmer's)
    tol = 2e-4 if glmm else 1e-5
    for null_re, key in ((False, "null_glm"), (True, "null_re")):
        out = res.r2("lr", null_re=null_re)
        want = r[key]
        assert out["nobs"] == want["nobs"]
        assert out["loglik"] == pytest.approx(want["loglik"], abs=tol)
        assert out["loglik_null"] == pytest.approx(want["loglik_null"], abs=tol)
        assert out["r2"] == pytest.approx(want["r2"], rel=1e-5, abs=1e-6)
        assert out["adjusted"] == pytest.approx(want["adjusted"], rel=1e-5, abs=1e-6)
        if glmm:
            assert out["loglik"] >= want["loglik"] - 1e-6


def test_likelihood_ratio_r2_direct():
    """The definition written out: Gaussian / binomial intercept-only log-likelihoods in closed
    form, the REML fit's ML log-likelihood from the marginal normal density at its estimates."""
    data = read_data("sleepstudy.csv")
    res = fit("Reaction ~ Days + (Days | Subject)", "sleepstudy.csv")
    y = data["Reaction"].to_numpy(float)
    n = y.size
    l0 = -n / 2 * (np.log(2 * np.pi * np.sum((y - y.mean()) ** 2) / n) + 1)
    X = np.column_stack([np.ones(n), data["Days"]])
    L = np.array([[res.theta[0], 0], [res.theta[1], res.theta[2]]]) * res.sigma
    subj = pd.factorize(data["Subject"])[0]
    V = res.sigma ** 2 * np.eye(n)
    for s in np.unique(subj):
        i = np.flatnonzero(subj == s)
        V[np.ix_(i, i)] += X[i] @ L @ L.T @ X[i].T
    # lme4's logLik(REML = FALSE) of a REML fit profiles sigma: sigma^2 = pwrss / n
    Vi = np.linalg.inv(V / res.sigma ** 2)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    e = y - X @ beta
    s2 = e @ Vi @ e / n
    l1 = stats.multivariate_normal(X @ beta, s2 * np.linalg.inv(Vi)).logpdf(y)
    out = inf.r2_likelihood_ratio(res)
    assert out["loglik"] == pytest.approx(l1, abs=1e-8)
    assert out["loglik_null"] == pytest.approx(l0, abs=1e-8)
    r2 = 1 - np.exp(-2 / n * (l1 - l0))
    assert out["r2"] == pytest.approx(r2, rel=1e-10)
    assert out["adjusted"] == pytest.approx(r2 / (1 - np.exp(2 / n * l0)), rel=1e-10)
    # a statsmodels null model gives the same
    ols = sm.OLS(y, np.ones(n)).fit()
    assert inf.r2_likelihood_ratio(res, null=ols)["r2"] == pytest.approx(r2, rel=1e-10)
    with pytest.raises(ValueError, match="observations"):
        inf.r2_likelihood_ratio(res, null=sm.OLS(y[:-1], np.ones(n - 1)).fit())

    cbpp = read_data("cbpp.csv")
    g = fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp.csv",
            family=sm.families.Binomial())
    k, m = cbpp["incidence"].to_numpy(float), cbpp["size"].to_numpy(float)
    l0 = stats.binom(m, k.sum() / m.sum()).logpmf(k).sum()
    out = g.r2("lr")
    assert out["loglik_null"] == pytest.approx(l0, abs=1e-8)
    assert out["r2"] == pytest.approx(1 - np.exp(-2 / len(k) * (g.llf - l0)), rel=1e-10)


def test_likelihood_ratio_r2_given_mixed_null_and_errors():
    res = fit("mAch ~ meanses + sector + cses + (1 | school)", "hsb82.csv", reml=False)
    null = fit("mAch ~ 1 + (1 | school)", "hsb82.csv", reml=False)
    np.testing.assert_allclose(inf.r2_likelihood_ratio(res, null=null).to_numpy(),
                               res.r2("lr", null_re=True).to_numpy(), rtol=1e-7)
    with pytest.raises(ValueError, match="null_re"):
        res.r2("lr", null_re="yes")
    with pytest.raises(ValueError, match="other data"):
        inf.r2_likelihood_ratio(res, null=fit("Reaction ~ 1 + (1 | Subject)", "sleepstudy.csv"))
