"""Case-deletion influence and leverage (HLMdiag's definitions) against a direct computation.

HLMdiag is not installable here (not in Debian, CRAN unreachable), so each quantity is computed
in the test from dense matrices built from the data, not from the model's design: Z from dummy
columns, G from ``varcorr()``, ``V = Z G Z' + sigma^2 W^-1``; the one-step deletion estimates by
explicit GLS on the remaining rows at the full-data variance components, the refit ones from a
fresh ``lmer`` fit to the remaining rows.  The same definitions written out in R from lme4 fits
(tools/r_reference/hlmdiag_reference.R) give a second check, at lme4's optimizer precision;
Cook's distance and the fixed-effect changes are also checked against HLMdiag 0.5's algorithm in
tests/test_inference.py.
"""
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext import inference as inf
from mlmext.formula import api as mf

from refcases import lmm_eps, read_data

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENI = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def lmer(formula, data, weights=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(formula, data, weights=weights).fit()


def dummies(codes):
    codes = pd.Categorical(codes)
    return (np.asarray(codes.codes)[:, None] == np.arange(len(codes.categories))).astype(float)


def sleep_design(df, res):
    """Z (per subject: intercept, Days) and G from the fit's variances and covariance."""
    D = dummies(df["Subject"])
    Z = np.hstack([D, D * df["Days"].to_numpy()[:, None]])
    vc = res.varcorr()["vcov"]
    G2 = np.array([[vc["sd_Intercept|Subject"], vc["cor_Days.Intercept|Subject"]],
                   [vc["cor_Days.Intercept|Subject"], vc["sd_Days|Subject"]]])
    m = D.shape[1]
    G = np.kron(G2, np.eye(m))                      # Z's columns: all intercepts, then all slopes
    return Z, G


def peni_design(df, res):
    vc = res.varcorr()["vcov"]
    Dp, Ds = dummies(df["plate"]), dummies(df["sample"])
    Z = np.hstack([Dp, Ds])
    G = np.diag(np.r_[np.full(Dp.shape[1], vc["sd_Intercept|plate"]),
                      np.full(Ds.shape[1], vc["sd_Intercept|sample"])])
    return Z, G


def dense(res, Z, G, w):
    s2 = float(res.varcorr()["vcov"]["sigma"])
    V = Z @ G @ Z.T + s2 * np.diag(1.0 / w)
    return V, s2


def gls(X, y, V):
    Vi = np.linalg.inv(V)
    C = np.linalg.inv(X.T @ Vi @ X)
    return C @ X.T @ Vi @ y, C


def one_step_reference(X, y, V, sets):
    """HLMdiag's one-step quantities by explicit GLS without each set (V held fixed)."""
    p = X.shape[1]
    b, C = gls(X, y, V)
    rows = []
    for I in sets:
        keep = np.ones(len(y), dtype=bool)
        keep[I] = False
        bi, Ci = gls(X[keep], y[keep], V[np.ix_(keep, keep)])
        d = b - bi
        Cinv = np.linalg.inv(C)
        rows.append([d @ Cinv @ d / p, d @ np.linalg.inv(Ci) @ d / p,
                     abs(np.trace(Cinv @ Ci) - p), np.linalg.det(Ci) / np.linalg.det(C), *d])
    return np.array(rows), b


def group_sets(codes):
    codes = pd.Categorical(codes)
    return [np.flatnonzero(codes.codes == g) for g in range(len(codes.categories))]


@pytest.fixture(scope="module")
def sleep():
    df = read_data("sleepstudy.csv")
    return df, lmer(SLEEP, df)


@pytest.fixture(scope="module")
def sleep_unbalanced():
    """sleepstudy without a pseudo-random fifth of its rows, with prior weights: the one-step
    and refit changes then differ (in the balanced design every subject has the same X, and the
    GLS estimate is the mean of the subjects' OLS lines whatever V is)."""
    df = read_data("sleepstudy.csv")
    rng = np.random.default_rng(16)
    df = df.loc[rng.random(len(df)) > 0.2].reset_index(drop=True)
    w = 1.0 + (df["Days"].to_numpy() % 3) / 2.0
    return df, w, lmer(SLEEP, df, weights=w)


COLS = ["cooks_d", "mdffits", "covtrace", "covratio"]


def check_one_step(res, df, Z, G, w, group):
    X = np.asarray(res.model.exog, dtype=float)
    y = np.asarray(res.model.endog, dtype=float)
    V, _ = dense(res, Z, G, w)
    sets = group_sets(df[group]) if group != 1 else [np.array([i]) for i in range(len(y))]
    want, b = one_step_reference(X, y, V, sets)
    got = res.influence(group, method="one-step")
    assert list(got.columns) == COLS + list(res.model.exog_names)
    # same formula, same numbers: only rounding separates the two routes
    np.testing.assert_allclose(b, res.fe_params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(got[COLS].to_numpy(), want[:, :4], rtol=1e-8, atol=1e-13)
    scale = np.max(np.abs(want[:, 4:]))
    np.testing.assert_allclose(got[res.model.exog_names].to_numpy(), want[:, 4:], rtol=1e-8,
                               atol=1e-10 * scale)
    # Cook's distance is the same number as cooks_distance gives
    np.testing.assert_array_equal(res.cooks_distance(group).to_numpy(), got["cooks_d"].to_numpy())
    return got


def test_one_step_sleepstudy_subjects_and_observations(sleep):
    df, res = sleep
    Z, G = sleep_design(df, res)
    w = np.ones(len(df))
    got = check_one_step(res, df, Z, G, w, "Subject")
    assert got.index.name == "Subject" and list(got.index) == list(df["Subject"].cat.categories)
    obs = check_one_step(res, df, Z, G, w, 1)
    assert obs.index.name == "observation" and len(obs) == len(df)
    # deleting one observation shrinks the information: covratio > 1 and covtrace = covratio - 1
    # (one row: V(beta_(i)) = C + C a a' C / P_ii, a rank-one update)
    np.testing.assert_allclose(obs["covtrace"], obs["covratio"] - 1.0, rtol=1e-10)


def test_one_step_unbalanced_weighted(sleep_unbalanced):
    df, w, res = sleep_unbalanced
    Z, G = sleep_design(df, res)
    check_one_step(res, df, Z, G, w, "Subject")
    check_one_step(res, df, Z, G, w, 1)


def test_one_step_crossed_penicillin():
    df = read_data("penicillin.csv")
    res = lmer(PENI, df)
    Z, G = peni_design(df, res)
    for group in ("sample", "plate"):
        check_one_step(res, df, Z, G, np.ones(len(df)), group)


def refit_reference(res, df, formula, sets, w):
    """HLMdiag's refit quantities (its case_delete + diagnostics) from fresh fits: fixed effects,
    cov_params and varcorr of each fit without a set."""
    p = len(res.fe_params)
    b = res.fe_params.to_numpy()
    C = np.asarray(res.cov_params())
    vc0 = res.varcorr()["vcov"]
    rows, ks = [], []
    for I in sets:
        keep = np.ones(len(df), dtype=bool)
        keep[I] = False
        sub = df.loc[keep].reset_index(drop=True)
        for c in sub.select_dtypes("category"):
            sub[c] = sub[c].cat.remove_unused_categories()
        fit = lmer(formula, sub, weights=None if w is None else w[keep])
        ks.append(np.sqrt(lmm_eps(fit)))
        d = b - fit.fe_params.to_numpy()
        Ci = np.asarray(fit.cov_params())
        rvc = fit.varcorr()["vcov"].to_numpy() / vc0.to_numpy() - 1
        rows.append([d @ np.linalg.solve(C, d) / p, d @ np.linalg.solve(Ci, d) / p,
                     abs(np.trace(np.linalg.solve(C, Ci)) - p), np.linalg.det(Ci) / np.linalg.det(C),
                     *rvc, *d])
    k = max(ks + [np.sqrt(lmm_eps(res))])
    return np.array(rows), k


def compare_refit(res, df, formula, group, sets, w=None):
    """Both routes fit the same rows with the same optimizer, each within eps of the optimum
    (refcases.lmm_eps): estimates within sqrt(eps) = k standard errors, and what is computed
    from them within a few k relative."""
    got = res.influence(group, method="refit")
    vc_names = res.varcorr().index
    rvc_cols = [("rvc_sigma2" if n == "sigma" else
                 "rvc_" + n.replace("sd_", "var_", 1).replace("cor_", "cov_", 1)) for n in vc_names]
    assert list(got.columns) == COLS + rvc_cols + list(res.model.exog_names)
    want, k = refit_reference(res, df, formula, sets, w)
    # the fixed-effect changes: within 2 k standard errors (two fits, each k from the optimum)
    se = res.bse_fe.to_numpy()
    fe = got[res.model.exog_names].to_numpy()
    assert np.all(np.abs(fe - want[:, -len(se):]) <= 2 * k * se)
    # the distances and ratios: relative 2 k of their size plus what a 2 k SE shift in d makes
    stats = got[COLS + rvc_cols].to_numpy()
    ref = want[:, :-len(se)]
    tol = 4 * k * (np.abs(ref) + 1.0)
    assert np.all(np.abs(stats - ref) <= tol), np.max(np.abs(stats - ref) / tol)
    assert got.attrs["method"] == "refit"
    return got


def test_refit_sleepstudy_subjects(sleep):
    df, res = sleep
    got = compare_refit(res, df, SLEEP, "Subject", group_sets(df["Subject"]))
    pd.testing.assert_frame_equal(res.influence("Subject", method="exact"), got)


def test_refit_unbalanced_weighted_subjects(sleep_unbalanced):
    df, w, res = sleep_unbalanced
    got = compare_refit(res, df, SLEEP, "Subject", group_sets(df["Subject"]), w)
    one = res.influence("Subject")
    # the one-step changes approximate the refit ones but are not them in this design
    assert not np.allclose(one["Intercept"], got["Intercept"], rtol=1e-6)
    np.testing.assert_allclose(one["Intercept"], got["Intercept"], atol=0.2 * res.bse_fe["Intercept"])


def test_refit_observations_small():
    df = read_data("sleepstudy.csv")
    df = df.loc[df["Subject"].isin(df["Subject"].cat.categories[:5])].reset_index(drop=True)
    df["Subject"] = df["Subject"].cat.remove_unused_categories()
    formula = "Reaction ~ Days + (1 | Subject)"
    res = lmer(formula, df)
    compare_refit(res, df, formula, 1, [np.array([i]) for i in range(len(df))])


# ------------------------------------------------------------------ leverage
def leverage_reference(res, Z, G, w):
    X = np.asarray(res.model.exog, dtype=float)
    V, s2 = dense(res, Z, G, w)
    Vi = np.linalg.inv(V)
    H1 = X @ np.linalg.inv(X.T @ Vi @ X) @ X.T @ Vi
    ZDZ = Z @ G @ Z.T
    H2 = ZDZ @ Vi @ (np.eye(len(w)) - H1)
    h1, h2 = np.diag(H1), np.diag(H2)
    return pd.DataFrame({"overall": h1 + h2, "fixef": h1, "ranef": h2, "ranef.uc": np.diag(ZDZ) / s2})


@pytest.mark.parametrize("case", ["balanced", "unbalanced_weighted", "penicillin"])
def test_leverage_dense(case, sleep, sleep_unbalanced):
    if case == "balanced":
        (df, res), w = sleep, None
        Z, G = sleep_design(df, res)
        group = "Subject"
    elif case == "unbalanced_weighted":
        df, w, res = sleep_unbalanced
        Z, G = sleep_design(df, res)
        group = "Subject"
    else:
        df, w = read_data("penicillin.csv"), None
        res = lmer(PENI, df)
        Z, G = peni_design(df, res)
        group = "sample"
    w = np.ones(len(df)) if w is None else w
    want = leverage_reference(res, Z, G, w)
    got = res.leverage()
    assert list(got.columns) == ["overall", "fixef", "ranef", "ranef.uc"]
    assert got.index.name == "observation" and len(got) == len(df)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-8, atol=1e-12)
    # trace of H1 is p (a projection)
    assert got["fixef"].sum() == pytest.approx(res.model.exog.shape[1], rel=1e-10)
    # group level: the means of the rows of each level, in the levels' order
    g = res.leverage(group)
    codes = pd.Categorical(df[group])
    means = want.groupby(np.asarray(codes.codes)).mean().to_numpy()
    assert g.index.name == group and list(g.index) == list(codes.categories)
    np.testing.assert_allclose(g.to_numpy(), means, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ arguments
def test_bad_arguments(sleep):
    _, res = sleep
    with pytest.raises(ValueError, match="method must be"):
        res.influence("Subject", method="full")
    with pytest.raises(ValueError, match="group must be"):
        res.influence(2)
    with pytest.raises(ValueError, match="group must be"):
        res.leverage(True)
    with pytest.raises(ValueError, match="unknown grouping factor"):
        res.leverage("Days")
    with pytest.raises(TypeError):
        res.influence("Subject", level=1)


def test_not_built_for_glmm_and_clmm():
    import statsmodels.api as sm
    cbpp = read_data("cbpp.csv")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                 family=sm.families.Binomial()).fit()
    for call in (lambda: g.influence("herd"), lambda: g.leverage(), lambda: inf.cooks_distance(g)):
        with pytest.raises(NotImplementedError, match="linear mixed models"):
            call()


# ------------------------------------------------------------------ against lme4 fits (R)
# tools/r_reference/hlmdiag_reference.R: HLMdiag's definitions written out in plain R with
# dense matrices, at lme4's estimates and on lme4 refits (HLMdiag itself is not installable).
R_CASES = {"hlmdiag_sleepstudy": SLEEP, "hlmdiag_sleepstudy_unbal": SLEEP, "hlmdiag_penicillin": PENI}
R_STATS = {"cooksd": "cooks_d", "mdffits": "mdffits", "covtrace": "covtrace", "covratio": "covratio"}


def r_data(name):
    if name == "sleepstudy_unbal":                  # the rows the R script keeps
        df = read_data("sleepstudy.csv")
        return df.iloc[np.arange(len(df)) % 5 != 2].reset_index(drop=True)
    return read_data(name + ".csv")


def r_rows(rows, index):
    out = pd.DataFrame(rows).set_index("label")
    out.index = index
    return out


@pytest.mark.parametrize("case", sorted(R_CASES))
def test_against_lme4_estimates(case):
    """One-step diagnostics and leverage are smooth functions of (theta, sigma): ours and R's
    differ by what separates the two optima, delta = the largest relative difference in theta
    (lme4's bobyqa stops at about 1e-5 .. 2e-4 here); the tolerance is 20 delta of each column's
    size.  The fixed-effect changes are GLS solves: within 1e-4 SE."""
    from refcases import load_ref
    r = load_ref("inference", case)
    df = r_data(r["data_name"])
    res = lmer(R_CASES[case], df)
    delta = float(np.max(np.abs(res.theta - r["theta"]) / np.abs(r["theta"])))
    assert delta < 1e-3
    names = res.model.exog_names
    se = res.bse_fe.to_numpy()
    for key, group in (("one_step_group", r["group"]), ("one_step_obs", 1)):
        got = res.influence(group)
        want = r_rows(r[key], got.index)
        for rc, col in R_STATS.items():
            w = want[rc].to_numpy()
            np.testing.assert_allclose(got[col], w, rtol=20 * delta, atol=20 * delta * np.max(np.abs(w)))
        rfe = want[[c for c in want.columns if c not in R_STATS]].to_numpy()
        assert np.all(np.abs(got[names].to_numpy() - rfe) <= 1e-4 * se)
    for key, group in (("leverage_obs", 1), ("leverage_group", r["group"])):
        want = pd.DataFrame(r[key])
        got = res.leverage(group)
        np.testing.assert_allclose(got.to_numpy(), want[list(got.columns)].to_numpy(), rtol=20 * delta)


@pytest.mark.parametrize("case", sorted(R_CASES))
def test_refit_against_lme4_refits(case):
    """Refit diagnostics against lme4 refits (update(m, data = without the level)); each side's
    refits are at its own optimizer's precision, lme4's about 1e-4 .. 1e-3 relative in theta
    (see above): statistics within 2e-3 (1 + |value|), relative variance changes within 5e-3
    (1 + |value|), fixed-effect changes within 1e-3 SE."""
    from refcases import load_ref
    r = load_ref("inference", case)
    df = r_data(r["data_name"])
    res = lmer(R_CASES[case], df)
    got = res.influence(r["group"], method="refit")
    want = r_rows(r["refit_group"], got.index)
    for rc, col in R_STATS.items():
        w = want[rc].to_numpy()
        assert np.all(np.abs(got[col].to_numpy() - w) <= 2e-3 * (1 + np.abs(w))), col
    rvc_r = want[[c for c in want.columns if c.startswith("rvc")]].to_numpy()
    rvc = got[[c for c in got.columns if c.startswith("rvc_")]].to_numpy()   # varcorr's row order
    assert rvc.shape == rvc_r.shape
    assert np.all(np.abs(rvc - rvc_r) <= 5e-3 * (1 + np.abs(rvc_r)))
    rfe = want[[c for c in want.columns if c not in R_STATS and not c.startswith("rvc")]].to_numpy()
    assert np.all(np.abs(got[res.model.exog_names].to_numpy() - rfe) <= 1e-3 * res.bse_fe.to_numpy())
