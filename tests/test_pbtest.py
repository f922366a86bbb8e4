"""The parametric-bootstrap LRT (``anova(..., test="pb")``) against pbkrtest's PBmodcomp
(tests/reference/pb, made by tools/r_reference/pb_reference.R) and against fresh fits.

Bootstrap p-values depend on the random numbers, so R's are matched in three ways: the
observed LRT to optimizer precision; the Gamma / Bartlett / F rows computed from R's own
stored bootstrap LRTs to rounding; the PBtest p-value within Monte-Carlo error (4 SE).
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext
from mlmext.formula import api as mf
from mlmext.inference import pb_table

from refcases import case_params, load_ref, read_data

CASES = ["pb_sleepstudy_quad", "pb_pbsim_poisson", "pb_pbsim_binomial", "pb_cbpp"]
FAMILY = {"poisson": sm.families.Poisson, "binomial": sm.families.Binomial}
_FITS = {}


def fits(case):
    """The R case's two models, fitted as R fitted them (REML for lmer, Laplace for glmer)."""
    if case not in _FITS:
        r = load_ref("pb", case)
        data = read_data(r["data"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if r["family"] == "gaussian":
                m = [mf.lmer(r[f"formula_{k}"], data).fit(reml=r["reml"]) for k in ("small", "large")]
            else:
                fam = FAMILY[r["family"]]
                m = [mf.glmer(r[f"formula_{k}"], data, family=fam()).fit() for k in ("small", "large")]
        _FITS[case] = (r, data, m[0], m[1])
    return _FITS[case]


@pytest.mark.parametrize("case", CASES)
def test_observed_lrt_matches_pbkrtest(case):
    r, _, small, large = fits(case)
    tab = mlmext.anova(small, large, test="pb", nsim=2, rng=1)
    want = r["LRTstat"]
    # LMM: ML log-likelihoods agree to ~1e-7 (Newton decrement 1e-7 in both fits);
    # GLMM: glmer's Nelder-Mead / bobyqa stops up to ~2e-4 short in logLik (see test_inference's
    # cbpp anova), so the LRT agrees to 1e-3 there; ours must not be the worse optimum.
    tol = 1e-5 if r["family"] == "gaussian" else 1e-3
    if r["family"] != "gaussian":
        for k, m in (("small", small), ("large", large)):
            assert m.llf >= r["loglik_ml"][k] - 1e-6, k
    assert tab.loc["LRT", "stat"] == pytest.approx(want["tobs"], abs=tol)
    assert tab.loc["LRT", "df"] == want["df"]
    assert tab.loc["LRT", "p.value"] == pytest.approx(want["p.value"], rel=tol / want["tobs"] + 1e-3)
    assert tab.attrs["refitted_ml"] is bool(r["reml"])
    assert list(tab.index) == ["LRT", "PBtest", "Gamma", "Bartlett", "F"]
    assert list(tab.columns) == ["stat", "df", "ddf", "p.value"]


@pytest.mark.parametrize("case", CASES)
def test_summary_rows_from_r_reference_distribution(case):
    """pbkrtest's summary rows, computed from R's stored LRT*s after dropping those <= 0 as
    pbkrtest does (1 in 1000 in the pbsim cases, 2 in 100 for cbpp), agree to rounding."""
    r = load_ref("pb", case)
    ref = np.asarray(r["ref"], dtype=float)
    assert r["nsim"] == ref.size and r["samples"]["npos"] == np.sum(ref > 0)
    got = pb_table(r["LRTstat"]["tobs"], r["LRTstat"]["df"], ref[ref > 0])
    for row, want in r["summary"].items():
        for col in ("stat", "df", "ddf", "p.value"):
            if want.get(col) is None:
                assert np.isnan(got.loc[row, col]), (row, col)
            else:
                # R computes upper tails as 1 - pchisq(...): absolute error ~1e-16, which is
                # a relative 1e-10 at cbpp's p-values of 1e-6
                assert got.loc[row, col] == pytest.approx(want[col], rel=1e-12, abs=1e-15), (row, col)


def _fresh_lrts(r, data, gen, nsim):
    """LRT*s by brand-new ML fits (formulas evaluated again) to the responses the test draws."""
    fam = FAMILY.get(r["family"])
    build = ((lambda f, d: mf.lmer(f, d)) if fam is None else
             (lambda f, d: mf.glmer(f, d, family=fam())))
    kw = {"reml": False} if fam is None else {}
    small = build(r["formula_small"], data).fit(**kw)
    yname = r["formula_small"].split("~")[0].strip()
    out = []
    for _ in range(nsim):
        y = small.simulate(1, seed=gen).iloc[:, 0].to_numpy()
        d = data.copy()
        if yname.startswith("cbind("):      # cbind(incidence, size - incidence): successes
            d["incidence"] = np.round(y * d["size"].to_numpy())
        else:
            d[yname] = y
        ll = [build(r[f"formula_{k}"], d).fit(**kw).llf for k in ("small", "large")]
        out.append(2 * max(0.0, ll[1] - ll[0]))
    return np.array(out)


@pytest.mark.parametrize("case", ["pb_sleepstudy_quad", "pb_pbsim_binomial", "pb_cbpp"])
def test_bootstrap_lrts_equal_fresh_fits(case):
    r, data, small, large = fits(case)
    nsim = 4
    tab = mlmext.anova(small, large, test="pb", nsim=nsim, rng=np.random.default_rng(11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = _fresh_lrts(r, data, np.random.default_rng(11), nsim)
    assert tab.attrs["n_failed"] == 0 and tab.attrs["n_used"] == nsim
    # The responses are simulated from the ML fit reached from the REML optimum (anova) or
    # from scratch (here), equal to ~1e-7 relative; the LRTs then agree to ~1e-5.
    np.testing.assert_allclose(tab.attrs["ref"], fresh, rtol=1e-4, atol=2e-5)
    k = np.sum(fresh >= tab.loc["PBtest", "stat"])
    assert tab.loc["PBtest", "p.value"] == pytest.approx((1 + k) / (1 + nsim), rel=1e-12)


def _agrees_with_r(case, nsim, rng):
    r, _, small, large = fits(case)
    tab = mlmext.anova(small, large, test="pb", nsim=nsim, rng=rng)
    p, pr = tab.loc["PBtest", "p.value"], r["summary"]["PBtest"]["p.value"]
    n = tab.attrs["n_used"]
    assert n >= 0.95 * nsim
    pbar = (p * n + pr * r["nsim"]) / (n + r["nsim"])
    se = np.sqrt(pbar * (1 - pbar) * (1 / n + 1 / r["nsim"]))
    assert abs(p - pr) <= 4 * se, (p, pr, se)
    # the Gamma row's p-value from our own LRT*s is a smoother estimate of the same tail
    assert tab.loc["Gamma", "p.value"] == pytest.approx(r["summary"]["Gamma"]["p.value"], abs=8 * se)
    return tab


def test_pvalue_agrees_with_r_lmm():
    tab = _agrees_with_r("pb_sleepstudy_quad", 100, 2026)
    assert tab.attrs["n_failed"] == 0


@pytest.mark.parametrize("case", case_params(CASES[:3], slow=CASES[:3]))
def test_pvalue_agrees_with_r_long_run(case):
    _agrees_with_r(case, 1000, 7)


def test_reproducible_and_read_only():
    _, _, small, large = fits("pb_sleepstudy_quad")
    a = mlmext.anova(small, large, test="pb", nsim=3, rng=5)
    b = mlmext.anova(small, large, test="pb", nsim=3, rng=5)
    np.testing.assert_array_equal(a.attrs["ref"], b.attrs["ref"])
    with pytest.raises(ValueError):
        a.attrs["ref"][0] = 0.0
    assert "Parametric bootstrap test" in repr(a) and "samples: 3" in repr(a)


def test_failed_refits_are_counted_and_left_out(monkeypatch):
    import mlmext.inference.pbtest as pbt
    _, _, small, large = fits("pb_sleepstudy_quad")
    calls = {"n": 0}
    real = pbt.refit

    def flaky(res, y):
        calls["n"] += 1
        if calls["n"] == 3:                   # the first refit of the second simulation
            raise np.linalg.LinAlgError("not positive definite")
        out = real(res, y)
        if calls["n"] == 7:                   # the larger model's refit of the fourth
            out._results.converged = False
        return out

    monkeypatch.setattr(pbt, "_batched_or_none", lambda res, Y: None)    # refits one by one
    monkeypatch.setattr(pbt, "refit", flaky)
    tab = mlmext.anova(small, large, test="pb", nsim=5, rng=3)
    monkeypatch.setattr(pbt, "refit", real)
    full = mlmext.anova(small, large, test="pb", nsim=5, rng=3)
    assert tab.attrs["n_failed"] == 2 and tab.attrs["n_used"] == 3
    np.testing.assert_allclose(tab.attrs["ref"], np.delete(full.attrs["ref"], [1, 3]), rtol=1e-12)
    k = np.sum(tab.attrs["ref"] >= tab.loc["LRT", "stat"])
    assert tab.loc["PBtest", "p.value"] == pytest.approx((1 + k) / 4, rel=1e-12)
    assert "failed refits: 2" in repr(tab)


def test_failed_batched_refits_are_counted_and_left_out(monkeypatch):
    """The same accounting when the refits run together (refit_many): a member that failed
    (None) and one that did not converge are left out; the others equal single refits."""
    import mlmext.inference.pbtest as pbt
    _, _, small, large = fits("pb_sleepstudy_quad")
    real = pbt._batched_or_none
    seen = []

    def flaky(res, Y):
        out = real(res, Y)
        assert out is not None                   # sleepstudy: both designs batched
        seen.append(len(seen))
        if len(seen) == 1:
            out[1] = None                        # the smaller model's refit of the second
        else:
            out[3]._results.converged = False    # the larger model's refit of the fourth
        return out

    monkeypatch.setattr(pbt, "_batched_or_none", flaky)
    tab = mlmext.anova(small, large, test="pb", nsim=5, rng=3)
    monkeypatch.setattr(pbt, "_batched_or_none", lambda res, Y: None)
    one = mlmext.anova(small, large, test="pb", nsim=5, rng=3)
    assert tab.attrs["n_failed"] == 2 and tab.attrs["n_used"] == 3
    # batched and single refits reach the same optima (LRTs to the optimizer's tolerance)
    np.testing.assert_allclose(tab.attrs["ref"], np.delete(one.attrs["ref"], [1, 3]), atol=1e-6)


def test_progress_bar(capsys):
    _, _, small, large = fits("pb_sleepstudy_quad")
    mlmext.anova(small, large, test="pb", nsim=2, rng=1, progress=True)
    assert "PB test" in capsys.readouterr().err


def test_bad_arguments():
    r, data, small, large = fits("pb_sleepstudy_quad")
    with pytest.raises(ValueError, match="unknown test 'bootstrap'"):
        mlmext.anova(small, large, test="bootstrap")
    with pytest.raises(TypeError, match="nsim"):
        mlmext.anova(small, large, nsim=10)
    with pytest.raises(TypeError, match="rng"):
        mlmext.anova(small, large, test="lrt", rng=1)
    with pytest.raises(ValueError, match="exactly two"):
        mlmext.anova(small, large, large, test="pb", nsim=2)
    with pytest.raises(ValueError, match="refit=False"):
        mlmext.anova(small, large, test="pb", nsim=2, refit=False)
    with pytest.raises(ValueError, match="same number of parameters"):
        mlmext.anova(small, small, test="pb", nsim=2, names=["a", "b"])
    with pytest.raises(ValueError, match="nsim"):
        mlmext.anova(small, large, test="pb", nsim=0)
    with pytest.raises(ValueError, match="rng"):
        mlmext.anova(small, large, test="pb", nsim=2, rng="seed")
    # the default test is unchanged: the chi-square table
    tab = mlmext.anova(small, large)
    assert isinstance(tab, mlmext.inference.AnovaTable) and "Chisq" in tab.columns


def test_clmm_is_not_implemented():
    wine = read_data("wine.csv")
    c0 = mf.clmm("rating ~ temp + (1 | judge)", wine).fit()
    c1 = mf.clmm("rating ~ temp + contact + (1 | judge)", wine).fit()
    with pytest.raises(NotImplementedError, match="binomial / Poisson GLMMs"):
        mlmext.anova(c0, c1, test="pb", nsim=2)
