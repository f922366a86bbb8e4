"""allfit (lme4's allFit): the model refitted with every optimizer, and the fits agree.

The default rows are checked against lme4's values (tests/reference), the others against the
default fit: on these well-posed models every optimizer must reach the same optimum.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.inference import AllFitTable, allfit

DATA = Path(__file__).parent / "data"
REF = Path(__file__).parent / "reference"
STATUS = ["converged", "seconds", "note"]


def read(name):
    df = pd.read_csv(DATA / f"{name}.csv")
    for col, spec in json.loads((DATA / f"{name}.levels.json").read_text()).items():
        df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in spec["levels"]],
                                 ordered=bool(spec["ordered"][0]))
    return df


def ref(kind, name):
    return json.loads((REF / kind / f"{name}.json").read_text())


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@pytest.fixture(scope="module")
def sleep_reml():
    res = quiet(lambda: mf.lmer("Reaction ~ Days + (Days | Subject)", read("sleepstudy")).fit())
    return res, res.allfit()


def agree(table, fe_se, dev_abs, vp_rel, rows=None):
    """Every (listed) row within the tolerances of the first (default) row."""
    t = table if rows is None else table.loc[rows]
    fe, vp = table.attrs["fe_names"], table.attrs["vp_names"]
    se = np.asarray(table.attrs["se"])
    d = t[fe].astype(float).to_numpy() - t[fe].astype(float).to_numpy()[0]
    assert np.all(np.abs(d) <= fe_se * se), d / se
    assert np.all(np.abs(t["deviance"] - t["deviance"].iloc[0]) <= dev_abs), t["deviance"]
    v = t[vp].astype(float).to_numpy()
    assert np.all(np.abs(v - v[0]) <= vp_rel * np.maximum(np.abs(v[0]), 1.0)), v   # correlations: absolute


def test_lmm_rows_columns_and_reference(sleep_reml):
    res, t = sleep_reml
    assert isinstance(t, pd.DataFrame) and isinstance(t, AllFitTable)
    assert list(t.index) == ["default", "COBYQA", "Nelder-Mead", "Powell", "L-BFGS-B"]
    assert t.index.name == "optimizer"
    assert list(t.columns) == ["deviance", "Intercept", "Days", "sd_Intercept|Subject",
                               "cor_Days.Intercept|Subject", "sd_Days|Subject", "sigma"] + STATUS
    tight = ["default", "COBYQA", "Nelder-Mead", "L-BFGS-B"]
    assert t.loc[tight, "converged"].all() and (t["seconds"] > 0).all()
    # Powell's own stop is loose: converged only if the second-order checks agree
    powell_gap = t.loc["Powell", "deviance"] - t.loc["default", "deviance"]
    assert bool(t.loc["Powell", "converged"]) == (powell_gap < 1e-6)
    r = ref("lmm", "sleepstudy_corr_reml")
    assert t.loc["default", "deviance"] == pytest.approx(r["reml_criterion"], abs=1e-6)   # REML kept
    assert t.loc["default", "deviance"] == pytest.approx(-2 * res.llf, rel=1e-12)
    assert t.loc["default", "Days"] == pytest.approx(r["fixef"]["Days"], rel=1e-8)
    sd_days = [v for v in r["varcorr"] if v["var1"] == "Days" and v["var2"] == ""][0]["sdcor"]
    assert t.loc["default", "sd_Days|Subject"] == pytest.approx(sd_days, rel=1e-5)
    assert t.loc["Powell", "note"].startswith("Powell")


def test_lmm_optimizers_agree(sleep_reml):
    _, t = sleep_reml
    assert t.loc["Powell", "deviance"] >= t.loc["default", "deviance"] - 1e-8   # loose, flagged
    # converged means a Newton decrement below 1e-7: within about 5e-4 SE of the optimum
    agree(t, fe_se=1e-6, dev_abs=1e-6, vp_rel=1e-4, rows=["default", "COBYQA", "Nelder-Mead", "L-BFGS-B"])
    s = t.spread()
    nconv = 4 + int(t.loc["Powell", "converged"])
    assert s["n_fits"] == 5 and s["n_converged"] == nconv
    assert 0 < s["deviance"] < 1e-2 and s["deviance_worst"] == "Powell"
    assert s["fixed_se"] < 1e-6 and 0 < s["varpar_rel"] < 0.05                # Powell
    text = t.summary()
    assert text.splitlines()[0] == "allfit: Reaction ~ Days + (Days | Subject) (REML)"
    assert f"5 of 5 fits ran, {nconv} converged" in text and "(highest: Powell)" in text


def test_lmm_ml_methods_and_a_failing_method():
    res = quiet(lambda: mf.lmer("Reaction ~ Days + (Days | Subject)", read("sleepstudy")).fit(reml=False))
    t = allfit(res, methods=["L-BFGS-B", "no-such-method"])
    assert list(t.index) == ["default", "L-BFGS-B", "no-such-method"]
    assert t.loc["default", "deviance"] == pytest.approx(ref("lmm", "sleepstudy_corr_ml")["deviance"], abs=1e-6)
    assert t.loc["L-BFGS-B", "deviance"] == pytest.approx(t.loc["default", "deviance"], abs=1e-9)
    bad = t.loc["no-such-method"]
    assert not bad["converged"] and np.isnan(bad["deviance"]) and np.isnan(bad["Days"])
    assert "no-such-method" in bad["note"]
    assert "2 of 3 fits ran" in t.summary() and "failed: no-such-method" in t.summary()
    assert type(t.iloc[:2]) is pd.DataFrame           # slices are plain DataFrames


@pytest.mark.parametrize("nagq", [1, 25])
def test_glmm_cbpp(nagq):
    res = quiet(lambda: mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", read("cbpp"),
                                 family=sm.families.Binomial()).fit(nagq=nagq))
    t = allfit(res, methods=None if nagq == 1 else ["COBYQA"])        # AGQ: one, for time
    rows = ["default", "default, lme4 start", "COBYQA", "Nelder-Mead", "Powell"]
    assert list(t.index) == (rows if nagq == 1 else rows[:3])
    assert list(t.columns) == ["deviance", "Intercept", "period[T.2]", "period[T.3]", "period[T.4]",
                               "sd_Intercept|herd"] + STATUS
    assert t["converged"].all()
    # the fit's quadrature is kept: every deviance is that of the original fit
    assert t.loc["default", "deviance"] == pytest.approx(-2 * res.llf, abs=1e-9)
    assert t.loc["default", "deviance"] == pytest.approx(184.0525637 if nagq == 1 else 183.9667383, abs=1e-6)
    agree(t, fe_se=2e-5, dev_abs=1e-8, vp_rel=1e-5)
    assert t.attrs["title"].endswith("(Laplace)" if nagq == 1 else "(AGQ, 25 nodes)")
    assert "evaluations" in t.loc["COBYQA", "note"]


def test_clmm_wine():
    res = quiet(lambda: mf.clmm("rating ~ temp + contact + (1 | judge)", read("wine")).fit())
    t = res.allfit()
    assert list(t.index) == ["default", "default, lme4 start", "COBYQA", "Nelder-Mead", "Powell"]
    assert list(t.columns) == ["deviance", "1|2", "2|3", "3|4", "4|5", "temp[T.warm]", "contact[T.yes]",
                               "sd_Intercept|judge"] + STATUS
    assert t["converged"].all()
    assert t.loc["default", "deviance"] == pytest.approx(-2 * ref("clmm", "wine_clmm_laplace")["loglik"], abs=1e-5)
    agree(t, fe_se=2e-5, dev_abs=1e-8, vp_rel=1e-5)
    assert t.spread()["fixed_se"] < 2e-5


def test_negative_binomial_alpha_column():
    res = quiet(lambda: mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", read("grouseticks")).fit())
    t = res.allfit(methods=["COBYQA"])
    assert list(t.index) == ["default", "default, lme4 start", "COBYQA"]
    assert list(t.columns)[-4:] == ["alpha"] + STATUS
    assert t.loc["default", "alpha"] == pytest.approx(res.alpha, rel=1e-12)
    # the default stops at a Newton decrement of 3e-9: 3e-5 SE from the other two
    agree(t, fe_se=1e-4, dev_abs=1e-7, vp_rel=1e-5)
