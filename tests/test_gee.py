"""QIC / working-correlation selection (mlmext.gee) against geepack 1.3.9.

Every expected number is a geepack value stored in tests/reference/gee_*.json by
tools/r_reference/gee_reference.R (R 4.2.2), fitted to the CSVs in tests/data.
"""
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from mlmext.gee import (GEESelection, PairwiseAR1, PairwiseExchangeable, PairwiseUnstructured, gee_select,
                        qic)

DATA = Path(__file__).parent / "data"
REF = Path(__file__).parent / "reference"

F = sm.families
# case -> (data, formula, groups, time, family, extra gee_select arguments)
CASES = {
    "dietox_gaussian": ("dietox", "Weight ~ Time + Cu", "Pig", "Time", F.Gaussian(), {"maxiter": 200}),
    "dietox_gaussian_default": ("dietox", "Weight ~ Time + Cu", "Pig", "Time", F.Gaussian(), {}),
    "dietox_gamma": ("dietox", "Feed ~ Time + Cu", "Pig", "Time", F.Gamma(F.links.Log()), {}),
    "ohio": ("ohio", "resp ~ age + smoke", "id", "age", F.Binomial(), {}),
    "ohio_weighted": ("ohio", "resp ~ age + smoke", "id", "age", F.Binomial(),
                      {"weights": lambda d: 1.0 + d["smoke"]}),
    "respiratory": ("respiratory", "outcome ~ treat + sex + age + baseline", "cid", "visit", F.Binomial(), {}),
    "epil": ("epil", "y ~ lbase * trt + lage + V4", "subject", "period", F.Poisson(), {}),
    "cbpp_weighted": ("cbpp_gee", "I(incidence / size) ~ period", "herd_id", None, F.Binomial(),
                      {"weights": "size"}),
}
WEIGHTED = {"ohio_weighted", "cbpp_weighted"}


def read_data(name):
    """A CSV of tests/data with R's factor levels from NAME.levels.json."""
    df = pd.read_csv(DATA / f"{name}.csv")
    lv = DATA / f"{name}.levels.json"
    if lv.exists():
        for col, spec in json.loads(lv.read_text()).items():
            levels = [str(v) for v in spec["levels"]]
            df[col] = pd.Categorical(df[col].astype(str), categories=levels)
    return df


def load_ref(case):
    return json.loads((REF / f"gee_{case}.json").read_text())


_FITS = {}


def fitted(case):
    """gee_select for a reference case (cached: each case is fitted once per test session)."""
    if case not in _FITS:
        data_name, formula, groups, time, family, extra = CASES[case]
        data = read_data(data_name)
        kwargs = {k: (v(data) if callable(v) else v) for k, v in extra.items()}
        ref = load_ref(case)
        _FITS[case] = gee_select(formula, groups, data, family, cov_structs=list(ref["structures"]),
                                 time=time, **kwargs)
    return _FITS[case]


def norm(name):
    """R and patsy coefficient names alike: 'trtprogabide' == 'trt[T.progabide]'."""
    return re.sub(r"\[T\.([^\]]+)\]", r"\1", name.replace("(Intercept)", "Intercept"))


def by_r_name(series, ref_coef):
    mine = {norm(k): v for k, v in series.items()}
    return np.array([mine[norm(k)] for k in ref_coef])


def default_cic(ref, s):
    """geepack's CIC with Omega_I scaled by sum(w r^2)/N instead of geepack's sum(w r^2)/sum(w)."""
    return s["CIC"] * ref["indep_scale"] / ref["indep_pearson_rows"]


PAIRS = [(c, s) for c in CASES for s in load_ref(c)["structures"]]

# Tolerances against geepack.  geepack stops when no mean or correlation parameter changed by more
# than epsilon = 1e-4 in the last iteration (geese.control), or after 25 iterations; gee_select
# runs the same iterations to its scale-free rule (mlmext.gee.fitting).  So the estimates agree to geepack's 1e-4 only
# (and within the project's 0.002 SE), the correlation parameters to 1e-4.  What is computed from
# them moves by less than the tolerances below when the estimates move by 1e-4 (measured by
# stopping our iterations at the first change below 1e-4, every case: robust SEs, CIC and scale
# <= 7e-5 relative; quasi-likelihood, QICu and QIC <= 1.1e-6).  dietox's unstructured fit does not
# converge: its 25th iterate comes through working correlations that are not positive definite, and
# changing the start by 1e-15 moves it by ~1e-7 (estimates) and ~1e-6 (SEs, CIC) -- rounding, which
# differs between BLAS kernels, does the same; the same tolerances hold for it.
GEEPACK_EPS = 1e-4
SE_RTOL = 1e-4          # robust SEs, CIC, scale (relative)
QL_RTOL = 1e-5          # quasi-likelihood, QICu, QIC (relative)


def coef_close(mine, theirs, se):
    """Estimates within geepack's epsilon and within 0.002 standard errors (the project's standard)."""
    mine, theirs, se = (np.asarray(v, dtype=float) for v in (mine, theirs, se))
    assert np.all(np.abs(mine - theirs) <= np.minimum(GEEPACK_EPS, 2e-3 * se)), (mine, theirs)


# ---------------------------------------------------------------------------
# Against geepack, case by case
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case,struct", PAIRS, ids=[f"{c}-{s}" for c, s in PAIRS])
def test_fit_and_qic_match_geepack(case, struct):
    ref = load_ref(case)
    r = ref["structures"][struct]
    sel = fitted(case)
    res, row = sel.results[struct], sel.table.loc[struct]

    coef_close(by_r_name(res.params, r["coef"]), list(r["coef"].values()), r["robust_se"])
    np.testing.assert_allclose(by_r_name(res.bse, r["coef"]), r["robust_se"], rtol=SE_RTOL)
    assert res.model.nobs == r["nobs"] and sel.n_groups == r["n_clusters"]
    assert bool(row["converged"]) == r["converged"]

    alpha = res.cov_struct.dep_params
    if struct == "unstructured":
        for key, val in r["alpha"].items():        # "alpha.1:2" -> times 1 and 2
            i, j = map(int, key.split(".")[1].split(":"))
            assert alpha[i - 1, j - 1] == pytest.approx(val, abs=GEEPACK_EPS)
    elif struct != "independence":
        assert float(alpha) == pytest.approx(list(r["alpha"].values())[0], abs=GEEPACK_EPS)
    if case.startswith("dietox"):                  # scale = geepack's (statsmodels fixes 1 for binomial, Poisson)
        assert res.scale == pytest.approx(r["scale"], rel=SE_RTOL)

    # Pan's quasi-likelihood and QICu; the trace term with geepack's and with our default scale
    assert row["QuasiLik"] == pytest.approx(r["QuasiLik_pan"], rel=QL_RTOL)
    assert row["QICu"] == pytest.approx(r["QICu_pan"], rel=QL_RTOL)
    assert row["n_params"] == r["params"]
    if case in WEIGHTED:
        assert qic(res, scale=ref["indep_scale"])["CIC"] == pytest.approx(r["CIC"], rel=SE_RTOL)
        assert row["CIC"] == pytest.approx(default_cic(ref, r), rel=SE_RTOL)
        assert row["QIC"] == pytest.approx(-2 * r["QuasiLik_pan"] + 2 * default_cic(ref, r), rel=QL_RTOL)
    else:
        assert row["CIC"] == pytest.approx(r["CIC"], rel=SE_RTOL)
        assert row["QIC"] == pytest.approx(r["QIC_pan"], rel=QL_RTOL)


@pytest.mark.parametrize("case", list(CASES))
def test_best_structure_and_flags(case):
    ref, sel = load_ref(case), fitted(case)
    qics = {s: (-2 * r["QuasiLik_pan"] + 2 * (default_cic(ref, r) if case in WEIGHTED else r["CIC"]))
            for s, r in ref["structures"].items() if r["converged"]}
    assert qics[sel.best] == pytest.approx(min(qics.values()), abs=1e-6)   # respiratory: exch and indep tie
    for s, r in ref["structures"].items():
        flagged = sel.table.loc[s, "flag"] != ""
        assert flagged == (case.startswith("dietox_gaussian") and s == "unstructured"), (s, sel.table.loc[s, "flag"])


def test_dietox_as_refcheck():
    """../shared/reference/dietox_gee_qic.json (geepack's default control) and its best structure."""
    ref, sel = load_ref("dietox_gaussian_default"), fitted("dietox_gaussian_default")
    assert sel.best == "independence" and list(sel.table.index) == list(ref["structures"])
    un = ref["structures"]["unstructured"]
    # geepack stops after 25 iterations without converging; so does gee_select (same iterations),
    # agreeing to what rounding leaves of that iterate (see GEEPACK_EPS above)
    assert sel.table.loc["unstructured", "QIC"] == pytest.approx(un["QIC"], rel=QL_RTOL)
    assert sel.table.loc["unstructured", "QIC"] == pytest.approx(50526.6691986081, rel=QL_RTOL)
    flag = sel.table.loc["unstructured", "flag"]
    assert "not converged in 25 iterations" in flag
    assert "outside [-1, 1] (72 of 72 clusters)" in flag
    assert "not positive definite (72 of 72 clusters)" in flag
    assert max(un["alpha"].values()) == pytest.approx(1.5145147970054)
    assert sel.results["unstructured"].cov_struct.dep_params.max() == pytest.approx(1.5145147970054,
                                                                                   abs=GEEPACK_EPS)


# ---------------------------------------------------------------------------
# Where statsmodels disagrees
# ---------------------------------------------------------------------------
def test_statsmodels_qic_penalty_is_wrong_for_binomial():
    """ohio, binomial exchangeable: statsmodels' trace is 0.63, Pan's (geepack's) 4.795."""
    ref, sel = load_ref("ohio"), fitted("ohio")
    res = sel.results["exchangeable"]
    assert sel.table.loc["exchangeable", "CIC"] == pytest.approx(4.7951419944511, rel=SE_RTOL)
    assert ref["structures"]["exchangeable"]["CIC"] == pytest.approx(4.7951419944511)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm_qic, sm_qicu = res.qic(scale=1.0)
    sm_trace = (sm_qic - sm_qicu) / 2 + 3
    assert sm_trace == pytest.approx(0.6333, abs=1e-3)
    # with that penalty statsmodels ranks independence first; geepack and gee_select pick exchangeable
    sm_ranked = {}
    for name, r in sel.results.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm_ranked[name] = r.qic(scale=1.0)[0]
    assert min(sm_ranked, key=sm_ranked.get) == "independence"
    assert sel.best == "exchangeable" == min(ref["structures"], key=lambda s: ref["structures"][s]["QIC"])


def test_statsmodels_qic_penalty_is_wrong_for_poisson():
    r = load_ref("epil")["structures"]["exchangeable"]
    res = fitted("epil").results["exchangeable"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm_qic, sm_qicu = res.qic(scale=res.scale)
    sm_trace = (sm_qic - sm_qicu) / 2 + len(res.params)
    assert abs(sm_trace - r["CIC"]) > 5            # statsmodels' own number is far from geepack's 10.478
    assert qic(res)["CIC"] == pytest.approx(r["CIC"], rel=SE_RTOL)


def test_statsmodels_autoregressive_fails_where_ar1_works():
    """statsmodels' Autoregressive(grid=False) cannot bracket its minimum on dietox; it is flagged."""
    d = read_data("dietox")
    sel = gee_select("Weight ~ Time + Cu", "Pig", d, F.Gaussian(),
                     cov_structs={"ar1": "ar1", "sm_ar": sm.cov_struct.Autoregressive(grid=False)}, time="Time")
    assert list(sel.table.index) == ["independence", "ar1", "sm_ar"]
    assert "unable to find right bracket" in sel.table.loc["sm_ar", "flag"]
    assert np.isnan(sel.table.loc["sm_ar", "QIC"]) and sel.results["sm_ar"] is None
    ar1 = load_ref("dietox_gaussian")["structures"]["ar1"]
    assert float(sel.results["ar1"].cov_struct.dep_params) == pytest.approx(ar1["alpha"]["alpha"], abs=GEEPACK_EPS)
    assert sel.table.loc["ar1", "QIC"] == pytest.approx(ar1["QIC"], rel=QL_RTOL)
    assert sel.best == "independence"


def test_gamma_quasilikelihood_is_pan_not_geepack():
    """geepack 1.3.9 uses -y/(mu - log(mu)); Pan / McCullagh-Nelder is -y/mu - log(mu)."""
    r = load_ref("dietox_gamma")["structures"]["independence"]
    sel = fitted("dietox_gamma")
    assert sel.n_dropped == 72                    # Feed is missing at each pig's first weighing
    assert sel.table.loc["independence", "QuasiLik"] == pytest.approx(r["QuasiLik_pan"], rel=QL_RTOL)
    assert r["QuasiLik_pan"] == pytest.approx(-4036.0643, abs=1e-3)
    assert r["QuasiLik"] == pytest.approx(-856.4118, abs=1e-3)   # geepack's own value


def test_weighted_proportions_quasilikelihood_uses_weights():
    """cbpp: incidence/size with weights=size; geepack's QIC() drops the weights from Q."""
    r = load_ref("cbpp_weighted")["structures"]["independence"]
    row = fitted("cbpp_weighted").table.loc["independence"]
    assert row["QuasiLik"] == pytest.approx(r["QuasiLik_pan"], rel=QL_RTOL)
    assert r["QuasiLik"] == pytest.approx(-18.0822, abs=1e-3)      # geepack's, without the weights
    assert r["QuasiLik_pan"] == pytest.approx(-284.5049, abs=1e-3)


# ---------------------------------------------------------------------------
# qic() on a statsmodels fit, the estimators, the quasi-likelihoods
# ---------------------------------------------------------------------------
def test_qic_on_plain_statsmodels_fit():
    """qic() on smf.gee with statsmodels' default fit options (ddof_scale = p) gives geepack's values."""
    r = load_ref("epil")["structures"]
    d = read_data("epil")
    fit = smf.gee("y ~ lbase * trt + lage + V4", "subject", d, family=F.Poisson(),
                  cov_struct=PairwiseExchangeable()).fit()
    q = qic(fit)
    assert list(q.index) == ["QIC", "QICu", "CIC", "QuasiLik", "n_params", "scale"]
    assert q["QIC"] == pytest.approx(r["exchangeable"]["QIC"], rel=QL_RTOL)     # statsmodels' ctol, geepack's eps
    assert q["CIC"] == pytest.approx(r["exchangeable"]["CIC"], rel=SE_RTOL)
    assert q["scale"] == pytest.approx(load_ref("epil")["indep_pearson_rows"], rel=SE_RTOL)
    # Pan's choice for a Poisson without overdispersion: phi_I = 1 multiplies the trace by phi_hat
    assert qic(fit, scale=1.0)["CIC"] == pytest.approx(r["exchangeable"]["CIC"] * q["scale"], rel=SE_RTOL)
    nb = smf.gee("y ~ lbase + trt", "subject", d, family=F.NegativeBinomial(alpha=1.0)).fit()
    with pytest.raises(ValueError, match="NegativeBinomial"):
        qic(nb)


def test_ar1_with_continuous_time():
    """Halving the time halves the lags: alpha' = alpha**2 (and alpha' >= 0 for non-integer lags)."""
    d = read_data("dietox")
    d["half"] = d["Time"] / 2.0
    sel = gee_select("Weight ~ Time + Cu", "Pig", d, F.Gaussian(), ["ar1"], time="half")
    alpha = load_ref("dietox_gaussian")["structures"]["ar1"]["alpha"]["alpha"]
    assert float(sel.results["ar1"].cov_struct.dep_params) == pytest.approx(alpha ** 2, abs=GEEPACK_EPS)


@pytest.mark.parametrize("family,y", [
    (F.Gaussian(), [1.3, -0.2, 4.0]), (F.Binomial(), [0.0, 1.0, 0.25]),
    (F.Poisson(), [0.0, 2.0, 7.0]), (F.Gamma(), [0.5, 2.0, 7.0])])
def test_quasilikelihood_derivative(family, y):
    """dQ/dmu = w (y - mu) / V(mu), the defining property of the quasi-likelihood."""
    from mlmext.gee.criteria import _quasi_likelihood
    y, w = np.array(y), np.array([1.0, 2.0, 3.0])
    mu = np.array([0.3, 0.6, 0.8]) if isinstance(family, F.Binomial) else np.array([1.1, 2.5, 3.0])
    for k in range(3):
        h = np.zeros(3)
        h[k] = 1e-6
        num = (_quasi_likelihood(family, y, mu + h, w) - _quasi_likelihood(family, y, mu - h, w)) / 2e-6
        assert num == pytest.approx(w[k] * (y[k] - mu[k]) / family.variance(mu[k]), rel=1e-6)


# ---------------------------------------------------------------------------
# Rows, structures, input errors, display
# ---------------------------------------------------------------------------
def test_missing_rows_dropped_counted_and_order_irrelevant():
    d = read_data("epil")
    d["y"] = d["y"].astype(float)
    d.loc[[3, 50], "y"] = np.nan
    d.loc[[50, 77], "lage"] = np.nan
    d.loc[100, "period"] = np.nan
    d["note"] = np.where(np.arange(len(d)) % 2, np.nan, 1.0)      # unused column: ignored
    args = ("y ~ lbase * trt + lage + V4", "subject")
    sel = gee_select(*args, d, F.Poisson(), ["exchangeable", "ar1"], time="period")
    assert sel.n_dropped == 4 and sel.nobs == 232
    assert {r.model.nobs for r in sel.results.values()} == {232}
    clean = d.drop(index=[3, 50, 77, 100])
    shuffled = clean.sample(frac=1.0, random_state=1)
    sel2 = gee_select(*args, shuffled, F.Poisson(), ["exchangeable", "ar1"], time="period")
    assert sel2.n_dropped == 0
    cols = ["QIC", "QICu", "CIC"]
    np.testing.assert_allclose(sel2.table[cols].to_numpy(float), sel.table[cols].to_numpy(float), rtol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    ({"formula": "y ~ lbase + nosuch"}, "nosuch"),
    ({"groups": "patient"}, "patient"),
    ({"time": "visit"}, "visit"),
    ({"time": "trt"}, "must be numeric"),
    ({"cov_structs": ["exchangable"]}, "exchangable"),
    ({"cov_structs": ["nested"]}, "dep_data"),
    ({"family": F.Binomial()}, "not binary"),
    ({"family": F.NegativeBinomial(alpha=1.0)}, "Gaussian, Binomial, Poisson or"),
    ({"formula": "trt ~ lbase"}, "one numeric column"),
    ({"weights": "wt"}, "wt"),
])
def test_bad_input_raises_value_error(kwargs, match):
    args = {"formula": "y ~ lbase + trt", "groups": "subject", "data": read_data("epil"),
            "family": F.Poisson(), "time": "period"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gee_select(**args)


def test_structure_forms_and_statsmodels_structures():
    d = read_data("dietox")
    sel = gee_select("Weight ~ Time + Cu", "Pig", d, F.Gaussian(),
                     ["exchangeable", sm.cov_struct.Exchangeable(), "stationary"], time="Time")
    assert list(sel.table.index) == ["independence", "exchangeable", "exchangeable_2", "stationary"]
    # statsmodels' Exchangeable with ddof_scale=0 is geepack's estimate too
    ex = load_ref("dietox_gaussian")["structures"]["exchangeable"]
    assert sel.table.loc["exchangeable_2", "QIC"] == pytest.approx(ex["QIC"], rel=QL_RTOL)
    assert sel.table.loc["stationary", "n_corr_params"] == 11
    assert sel.table.loc["stationary", "working_corr"].startswith("lag 1..11: 0.94")
    nested = gee_select("Weight ~ Time + Cu", "Litter", d, F.Gaussian(), ["nested"], dep_data=["Pig"])
    assert nested.table.loc["nested", "working_corr"].startswith("variance components")
    assert np.isfinite(nested.table.loc["nested", "QIC"]) and nested.table.loc["nested", "flag"] == ""
    assert isinstance(PairwiseUnstructured(), sm.cov_struct.CovStruct)
    assert isinstance(PairwiseAR1(), sm.cov_struct.CovStruct)


def test_summary_repr_and_html():
    sel = fitted("dietox_gaussian_default")
    assert isinstance(sel, GEESelection)
    text = repr(sel)
    assert text == sel.summary().as_text()
    for s in ("GEE working-correlation selection by QIC", "Best (lowest QIC):", "43158.58", "50526.67",
              "exchangeable, rho = 0.775", "rho^|lag|, rho = 0.936", "flagged", "unstructured: not converged"):
        assert s in text, s
    html = sel._repr_html_()
    assert "<table" in html and "43158.58" in html and "unstructured" in html
