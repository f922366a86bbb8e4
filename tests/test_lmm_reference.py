"""LMM fits against stored lme4 / lmerTest results (tests/reference/lmm, made by
tools/r_reference/lmm_reference.R)."""
import warnings

import numpy as np
import pytest

from mlmext.formula import api as mf

from refcases import by_name, group_key, load_ref, norm, read_data, ref_names

CASES = ref_names("lmm")
SLOW = {"insteval_crossed"}


def fit_case(ref):
    data = read_data(ref["data"])
    kw = {}
    if ref.get("weights"):
        kw["weights"] = ref["weights"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mf.lmer(ref["formula"], data, **kw).fit(reml=bool(ref["reml"]))


@pytest.fixture(scope="module")
def fits():
    return {}


def get_fit(fits, name):
    if name not in fits:
        ref = load_ref("lmm", name)
        fits[name] = (ref, fit_case(ref))
    return fits[name]


@pytest.mark.parametrize("name", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                  for c in CASES])
def test_fixed_effects_and_se(fits, name):
    ref, res = get_fit(fits, name)
    fe, rfe = by_name(res.fe_params, ref["fixef"])
    se, rse = by_name(res.bse_fe, {k: ref["se"][k] for k in ref["fixef"]})
    assert np.all(np.abs(fe - rfe) <= 0.002 * rse), (fe, rfe)
    np.testing.assert_allclose(se, rse, rtol=2e-3)


@pytest.mark.parametrize("name", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                  for c in CASES])
def test_likelihood_and_criteria(fits, name):
    ref, res = get_fit(fits, name)
    assert res.llf >= ref["loglik"] - 1e-3
    assert res.llf <= ref["loglik"] + 0.05          # a better optimum, not a different model
    assert abs(res.aic - ref["aic"]) < 2e-3 + 2 * (res.llf - ref["loglik"])
    assert abs(res.bic - ref["bic"]) < 2e-3 + 2 * (res.llf - ref["loglik"])
    assert int(res.nobs) == int(ref["nobs"])
    if ref.get("reml_criterion") is not None:
        assert abs(res.reml_criterion - ref["reml_criterion"]) < 2e-3
    assert abs(res.sigma - ref["sigma"]) <= 2e-3 * ref["sigma"]


@pytest.mark.parametrize("name", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                  for c in CASES])
def test_varcorr_and_theta(fits, name):
    ref, res = get_fit(fits, name)
    vc = res.varcorr()
    mine = {}
    for _, r in vc.iterrows():
        mine.setdefault((group_key(r["grp"].split(".")[0]), norm(r["var1"]), norm(r["var2"])), []).append(r["sdcor"])
    for r in ref["varcorr"]:
        key = (group_key(r["grp"].split(".")[0] if r["grp"][-2:-1] == "." else r["grp"]),
               norm(r["var1"]), norm(r["var2"]))
        assert key in mine, (key, list(mine))
        got = min(mine[key], key=lambda v: abs(v - r["sdcor"]))
        if r["var2"]:
            assert abs(got - r["sdcor"]) < 0.01
        else:
            assert abs(got - r["sdcor"]) <= 2e-3 * max(abs(r["sdcor"]), 1e-3) + 1e-6
    theta = np.atleast_1d(ref["theta"])
    assert res.theta.shape == theta.shape
    np.testing.assert_allclose(res.theta, theta, atol=2e-3 * max(1.0, np.abs(theta).max()), rtol=5e-3)
    assert res.is_singular() == bool(ref.get("singular", False))


@pytest.mark.parametrize("name", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                  for c in CASES])
def test_ranef_and_condsd(fits, name):
    ref, res = get_fit(fits, name)
    re = res.ranef(condvar=True)
    assert {group_key(k) for k in re} == {group_key(k) for k in ref["ranef"]}
    lookup = {group_key(k): v for k, v in re.items()}
    sigma = ref["sigma"]
    for g, rows in ref["ranef"].items():
        df = lookup[group_key(g)]
        assert [str(r[".level"]) for r in rows] == list(df.index)
        cols = [k for k in rows[0] if k not in (".level", "_row")]
        mycols = {norm(c): c for c in df.columns}
        for j, c in enumerate(cols):
            mine = df[mycols[norm(c)]].to_numpy()
            theirs = np.array([r[c] for r in rows])
            np.testing.assert_allclose(mine, theirs, atol=5e-3 * max(sigma, np.abs(theirs).max()))
            sd = np.asarray(ref["condsd"][g][j])
            mysd = df.attrs["condsd"][mycols[norm(c)]].to_numpy()
            np.testing.assert_allclose(mysd, sd, rtol=5e-3, atol=1e-6 * sigma)
