"""LMMs with residual correlation within groups against nlme's lme (corAR1, corCAR1,
corCompSymm); values from tools/r_reference/corr_reference.R (tests/reference/corr).

Tolerances (the project's): fixed effects within 0.002 SE, SEs / SDs / sigma within 0.2 %,
the correlation parameter within 1e-3, the log-likelihood not below nlme's by more than
1e-3.  nlme stops its optimizer on a relative tolerance, so agreement is limited by nlme,
not by us: our fits end with a Newton decrement below 1e-7 in both theta and the
correlation parameter.
"""
import json
import os

import numpy as np
import pytest

import mlmext
import mlmext.inference
from mlmext.formula import api as mf
from refcases import read_data

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "reference", "corr")


def _data(name):
    return read_data(name + ".csv")


CASES = {
    "ar1_sleep": ("sleepstudy", "Reaction ~ Days + (1 | Subject)",
                  lambda: mlmext.cor.AR1(time="Days", group="Subject")),
    "ar1_gaps": ("sleepgaps", "Reaction ~ Days + (1 | Subject)",
                 lambda: mlmext.cor.AR1(time="Days", group="Subject")),
    "ar1_orthodont": ("orthodont", "distance ~ age + Sex + (age | Subject)",
                      lambda: mlmext.cor.AR1(time="occ", group="Subject")),
    "car1": ("carsim", "y ~ time + x + (1 | id)", lambda: mlmext.cor.CAR1(time="time", group="id")),
    "cs": ("cssim", "y ~ x + (1 | school)", lambda: mlmext.cor.CompSymm(group=["school", "class"])),
    # two nested random intercepts, AR(1) along the pupils of a class
    "ar1_nested": ("cssim", "y ~ x + (1 | school/class)",
                   lambda: mlmext.cor.AR1(time="pupil", group=["school", "class"])),
}
_FITS = {}


def _fit(case, reml):
    key = (case, reml)
    if key not in _FITS:
        data, formula, cor = CASES[case]
        _FITS[key] = mf.lmer(formula, _data(data), correlation=cor()).fit(reml=reml)
    return _FITS[key]


def _ref(case, reml):
    with open(os.path.join(REF, f"{case}_{'reml' if reml else 'ml'}.json")) as fh:
        return json.load(fh)


def _r_name(name):
    """patsy's names as nlme's: Intercept -> (Intercept), Sex[T.Female] -> SexFemale."""
    return "(Intercept)" if name == "Intercept" else name.replace("[T.", "").replace("]", "")


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_nlme(case, reml):
    res, ref = _fit(case, reml), _ref(case, reml)
    assert res.converged
    fe = res.fe_params.rename(index=_r_name)
    se = res.bse_fe.rename(index=_r_name)
    names = list(ref["fixef"])
    assert sorted(fe.index) == sorted(names)
    r_se = np.array([ref["se"][k] for k in names])
    np.testing.assert_array_less(np.abs(fe[names].to_numpy() - [ref["fixef"][k] for k in names]),
                                 0.002 * r_se)
    np.testing.assert_allclose(se[names].to_numpy(), r_se, rtol=2e-3)
    np.testing.assert_allclose(res.sigma, ref["sigma"], rtol=2e-3)
    for name, c in res.cov_re().items():           # nlme names "class:school" "class"
        np.testing.assert_allclose(np.sqrt(np.diag(c.to_numpy())),
                                   np.atleast_1d(ref["re_sd_levels"][name.split(":")[0]]), rtol=2e-3)
    assert abs(res.cor_params.iloc[0] - ref["cor_param"]) < 1e-3
    assert res.llf > ref["loglik"] - 1e-3
    assert res.k_params == ref["df"]                      # the correlation parameter counts
    np.testing.assert_allclose(res.aic, -2 * res.llf + 2 * ref["df"])
    assert abs(res.aic - ref["aic"]) < 2e-3
    # BIC as lme4 (log n); nlme's REML BIC takes log(n - p)
    np.testing.assert_allclose(res.bic, -2 * res.llf + np.log(res.nobs) * ref["df"])
    n_bic = res.nobs - (res.k_fe if reml else 0)
    assert abs(-2 * res.llf + np.log(n_bic) * ref["df"] - ref["bic"]) < 2e-3


@pytest.mark.parametrize("case", list(CASES))
def test_predictions_match_nlme_levels(case):
    """predict(re=False) is nlme's level 0, the fitted values its level 1, in the user's row
    order (carsim's rows are shuffled: the fit sorts them internally)."""
    res, ref = _fit(case, True), _ref(case, True)
    scale = np.std(ref["fitted1"])
    np.testing.assert_allclose(res.predict(re=False).to_numpy(), ref["fitted0"], atol=1e-4 * scale)
    np.testing.assert_allclose(res.fittedvalues.to_numpy(), ref["fitted1"], atol=1e-3 * scale)
    data = _data(CASES[case][0])
    np.testing.assert_allclose(res.predict(data=data.iloc[::-1]).to_numpy(),
                               res.fittedvalues.to_numpy()[::-1], rtol=1e-10)


def test_row_order_does_not_matter():
    df = _data("sleepstudy")
    cor = mlmext.cor.AR1(time="Days", group="Subject")
    a = _fit("ar1_sleep", True)
    b = mf.lmer("Reaction ~ Days + (1 | Subject)", df.sample(frac=1.0, random_state=3),
                correlation=cor).fit()
    assert abs(a.llf - b.llf) < 1e-8
    np.testing.assert_allclose(b.fe_params, a.fe_params, rtol=1e-7)
    assert abs(b.cor_params.iloc[0] - a.cor_params.iloc[0]) < 1e-6


def _dense_reml(df, theta, rho, sigma):
    """-2 restricted log-likelihood of Reaction ~ Days + (1 | Subject), AR(1) on Days within
    Subject, from the dense marginal covariance (independent of the package's code)."""
    y = df["Reaction"].to_numpy()
    X = np.column_stack([np.ones(len(df)), df["Days"].to_numpy()])
    g = df["Subject"].astype(str).to_numpy()
    t = df["Days"].to_numpy()
    same = g[:, None] == g[None, :]
    R = np.where(same, rho ** np.abs(t[:, None] - t[None, :]), 0.0)
    V = sigma ** 2 * (theta ** 2 * same + R)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    n, p = X.shape
    return (np.linalg.slogdet(V)[1] + np.linalg.slogdet(XtViX)[1] + r @ Vi @ r
            + (n - p) * np.log(2 * np.pi)), np.linalg.inv(XtViX)


def test_satterthwaite_df_include_the_correlation_parameter():
    """lmerTest's formula with phi among the variance parameters, computed from the dense
    marginal covariance with plain central differences."""
    res = _fit("ar1_sleep", True)
    df = _data("sleepstudy")
    x0 = np.array([res.theta[0], res.cor_params.iloc[0], res.sigma])
    dev = lambda x: _dense_reml(df, *x)[0]
    cov = lambda x: _dense_reml(df, *x)[1]
    # the dense REML criterion is the fit's at the optimum
    assert abs(dev(x0) - res.criterion) < 1e-6
    k = len(x0)
    h = 1e-4 * np.abs(x0)
    H = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            ei, ej = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
            H[i, j] = (dev(x0 + ei + ej) - dev(x0 + ei - ej) - dev(x0 - ei + ej)
                       + dev(x0 - ei - ej)) / (4 * h[i] * h[j])
    A = 2 * np.linalg.inv(H)
    jac = [(cov(x0 + np.eye(k)[i] * h[i]) - cov(x0 - np.eye(k)[i] * h[i])) / (2 * h[i]) for i in range(k)]
    C = np.asarray(res.cov_params())
    expect = []
    for l in np.eye(2):
        gvec = np.array([l @ J @ l for J in jac])
        expect.append(2 * (l @ C @ l) ** 2 / (gvec @ A @ gvec))
    got = res.df_satterthwaite()
    np.testing.assert_allclose(got.to_numpy(), expect, rtol=2e-3)
    # and the summary's t tests use them
    assert "Satterthwaite" in str(res.summary(ddf="satterthwaite"))


def test_printing_reports_the_structure():
    res = _fit("ar1_sleep", True)
    text = repr(res)
    assert f"Correlation structure: AR(1), Phi = {res.cor_params.iloc[0]:.4g}" in text
    assert "within Subject, ordered by Days" in str(res.summary())
    assert list(res.cor_params.index) == ["Phi"]
    assert list(_fit("cs", True).cor_params.index) == ["Rho"]


def test_errors():
    df = _data("sleepstudy")
    AR1 = mlmext.cor.AR1
    dup = df.copy()
    dup.loc[1, "Days"] = 0
    with pytest.raises(ValueError, match="appears twice"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", dup, correlation=AR1(time="Days", group="Subject"))
    frac = df.assign(t=df["Days"] + 0.5 * (df.index % 2))
    with pytest.raises(ValueError, match="integer times"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", frac, correlation=AR1(time="t", group="Subject"))
    with pytest.raises(ValueError, match="unknown column"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", df, correlation=AR1(time="day", group="Subject"))
    with pytest.raises(TypeError, match="correlation must be"):
        mf.lmer("Reaction ~ Days + (1 | Subject)", df, correlation="ar1")
    # a random effect crossed with the correlation's groups
    cr = df.assign(day=df["Days"].astype(str))
    with pytest.raises(NotImplementedError, match="crossed"):
        mf.lmer("Reaction ~ Days + (1 | Subject) + (1 | day)", cr,
                correlation=AR1(time="Days", group="Subject"))
    with pytest.raises(ValueError, match="give group"):
        mf.lmer("Reaction ~ Days + (1 | Subject) + (1 | day)", cr, correlation=AR1(time="Days"))
    mod = mf.lmer("Reaction ~ Days + (1 | Subject)", df, correlation=AR1(time="Days"))
    with pytest.raises(TypeError):
        mod.fit(method="Nelder-Mead")
    res = _fit("ar1_sleep", True)
    for call in (lambda: res.profile(), lambda: res.conf_int(method="profile"),
                 lambda: res.df_kenward_roger(), lambda: res.simulate(),
                 lambda: res.get_robustcov_results("cluster"), lambda: mlmext.ranova(res),
                 lambda: res.model.loglike(res.params_object),
                 lambda: mlmext.inference.predictive_variance(res, df.head())):
        with pytest.raises(NotImplementedError, match="correlation structure"):
            call()


def test_anova_refits_with_ml():
    """anova() of REML fits refits them by ML: the LRT of the AR(1) model against the same
    model with independent residuals uses nlme's ML log-likelihood."""
    df = _data("sleepstudy")
    plain = mf.lmer("Reaction ~ Days + (1 | Subject)", df).fit()
    cor = _fit("ar1_sleep", True)
    tab = mlmext.anova(plain, cor)
    assert abs(tab["logLik"].iloc[1] - _ref("ar1_sleep", False)["loglik"]) < 1e-3
    assert tab["npar"].tolist() == [4, 5]


def test_default_group_is_the_models_factor():
    df = _data("sleepstudy")
    res = mf.lmer("Reaction ~ Days + (1 | Subject)", df,
                  correlation=mlmext.cor.AR1(time="Days")).fit()
    assert abs(res.llf - _fit("ar1_sleep", True).llf) < 1e-8


def test_unidentified_correlation_is_not_converged():
    """Compound symmetry within the levels of a random intercept: Rho trades off against
    the intercept's variance along a flat ridge; the model warns when built and the fit
    does not claim convergence."""
    df = _data("sleepstudy")
    with pytest.warns(UserWarning, match="not separately identified"):
        mod = mf.lmer("Reaction ~ Days + (1 | Subject)", df, correlation=mlmext.cor.CompSymm())
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    with pytest.warns(ConvergenceWarning, match="flat"):
        res = mod.fit()
    assert not res.converged
    # on the ridge the marginal model is the plain one: the same REML criterion
    plain = mf.lmer("Reaction ~ Days + (1 | Subject)", df).fit()
    assert abs(res.criterion - plain.criterion) < 1e-6


def test_dropped_rows_keep_times_and_groups_aligned():
    """Rows dropped for missing values (or by subset=) leave gaps in the times: the fit equals
    nlme's on the data without those rows (sleepgaps), so the correlation's columns were read
    for exactly the rows kept."""
    full, gaps = _data("sleepstudy"), _data("sleepgaps")
    key = lambda d: set(zip(d["Subject"].astype(str), d["Days"]))
    drop = np.array([k not in key(gaps) for k in zip(full["Subject"].astype(str), full["Days"])])
    assert drop.sum() == len(full) - len(gaps)
    withna = full.assign(Reaction=np.where(drop, np.nan, full["Reaction"]))
    withna.index = withna.index * 7 + 3                    # labels that are not positions
    cor = mlmext.cor.AR1(time="Days", group="Subject")
    ref = _ref("ar1_gaps", True)
    a = mf.lmer("Reaction ~ Days + (1 | Subject)", withna, correlation=cor).fit()
    b = mf.lmer("Reaction ~ Days + (1 | Subject)", full, subset=~drop, correlation=cor).fit()
    for res in (a, b):
        assert res.nobs == len(gaps)
        assert abs(res.cor_params.iloc[0] - ref["cor_param"]) < 1e-3
        assert res.llf > ref["loglik"] - 1e-3
    assert a.nrows_dropped == drop.sum()
    assert list(a.fittedvalues.index) == list(withna.index[~drop])
    np.testing.assert_allclose(a.fittedvalues.to_numpy(), ref["fitted1"], rtol=1e-5)


def test_missing_time_is_an_error():
    df = _data("sleepstudy")
    df.loc[4, "Days"] = np.nan
    with pytest.raises(ValueError, match="'Days' needs finite numbers"):
        mf.lmer("Reaction ~ 1 + (1 | Subject)", df,
                correlation=mlmext.cor.CAR1(time="Days", group="Subject"))


def test_pickle_round_trip():
    import pickle
    res = _fit("car1", True)
    back = pickle.loads(pickle.dumps(res))
    assert back.llf == res.llf and back.cor_params.equals(res.cor_params)
    np.testing.assert_allclose(back.df_satterthwaite(), res.df_satterthwaite(), rtol=1e-8)
    np.testing.assert_allclose(back.predict(data=_data("carsim").head()), res.fittedvalues.head())
