"""GLMM residuals (``resid_deviance``, ``resid_pearson``, ``resid_response``) against lme4's
``residuals()`` (tools/r_reference/glmm_resid_reference.R) and the unit deviances by hand."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext.formula.api as mf
from mlmext.glmm.response import NBFamily

HERE = os.path.dirname(__file__)


def ref(name):
    with open(os.path.join(HERE, "reference", "glmm_resid", name + ".json")) as fh:
        return json.load(fh)


def data(name):
    df = pd.read_csv(os.path.join(HERE, "data", name + ".csv"))
    with open(os.path.join(HERE, "data", name + ".levels.json")) as fh:
        for col, spec in json.load(fh).items():
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in spec["levels"]])
    return df


def fit(name):
    if name == "cbpp_binomial":
        d = data("cbpp").assign(fail=lambda d: d["size"] - d["incidence"])
        return mf.glmer("cbind(incidence, fail) ~ period + (1 | herd)", d,
                        family=sm.families.Binomial()).fit()
    g = data("grouseticks")
    if name == "grouseticks_poisson":
        return mf.glmer("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", g,
                        family=sm.families.Poisson()).fit()
    return mf.glmer_nb("TICKS ~ YEAR + (1 | LOCATION)", g).fit()


@pytest.mark.parametrize("name", ["cbpp_binomial", "grouseticks_poisson", "grouseticks_nb"])
def test_residuals_match_lme4(name):
    r, res = ref(name), fit(name)
    y, w = np.asarray(res.model.endog, dtype=float), np.asarray(res.model.weights, dtype=float)
    # lme4's deviance residuals are the family's at lme4's fitted values (and NB theta), with
    # the prior weights (cbpp: the herds' sizes): the definition resid_deviance uses
    fam = NBFamily(alpha=1 / r["fit"]["nb_theta"]) if name.endswith("nb") else res.family
    np.testing.assert_allclose(fam.resid_dev(y, np.asarray(r["fitted"]), var_weights=w),
                               r["deviance"], rtol=1e-10, atol=1e-12)
    # at our own optimum, which is better than lme4's here (llf up to 0.0065 higher on the
    # crossed Poisson fit): its fitted values differ by up to 0.4 %, the residuals by < 4e-3
    assert res.llf > r["fit"]["loglik"]
    np.testing.assert_allclose(np.asarray(res.fittedvalues), r["fitted"], rtol=5e-3)
    for key in ("deviance", "pearson", "response"):
        ours = getattr(res, "resid_" + key)
        assert ours.name == "resid_" + key and len(ours) == len(r[key])
        np.testing.assert_allclose(np.asarray(ours), r[key], rtol=0, atol=4e-3)


def test_deviance_residuals_by_hand():
    # sign(y - mu) sqrt(w d(y, mu)) with the unit deviances written out, at our own fitted values
    b = fit("cbpp_binomial")
    y, w, mu = (np.asarray(a, dtype=float) for a in (b.model.endog, b.model.weights, b.fittedvalues))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2 * w * (np.where(y > 0, y * np.log(y / mu), 0.0)
                     + np.where(y < 1, (1 - y) * np.log((1 - y) / (1 - mu)), 0.0))
    np.testing.assert_allclose(b.resid_deviance, np.sign(y - mu) * np.sqrt(d), rtol=1e-12, atol=1e-14)
    nb = fit("grouseticks_nb")
    y, mu, th = np.asarray(nb.model.endog, float), np.asarray(nb.fittedvalues), 1 / nb.alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2 * (np.where(y > 0, y * np.log(y / mu), 0.0) - (y + th) * np.log((y + th) / (mu + th)))
    np.testing.assert_allclose(nb.resid_deviance, np.sign(y - mu) * np.sqrt(d), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nb.resid_response, y - mu, rtol=0, atol=1e-12)


def test_zero_inflated_deviance_residuals_refused():
    g = data("grouseticks")
    zi = mf.glmer("TICKS ~ YEAR + (1 | BROOD)", g, family="poisson", ziformula="~ 1").fit()
    with pytest.raises(NotImplementedError, match="zero-inflated"):
        zi.resid_deviance
    assert np.all(np.isfinite(zi.resid_pearson))
