"""The bootstrap's default statistic and ``fe_params`` of batched refits read the fit's design
without making each member's model (``_design_model``), and give what the member's own model
gives."""
import numpy as np
import pandas as pd

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.inference._common import _beta, _raw
from mlmext.inference.intervals import _boot_statistic


def _members():
    df = datasets.load("sleepstudy")
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", df).fit()
    Y = np.asarray(r.simulate(nsim=6, seed=5))
    return r, r.refit_many(Y)


def test_member_statistic_without_its_model_equals_the_one_with_it():
    r, fits = _members()
    batched = [f for f in fits if "_template" in _raw(f).__dict__]   # (not refitted alone)
    assert len(batched) >= 4
    for f in batched:
        raw = _raw(f)
        stat = _boot_statistic(f)
        fe, bse = f.fe_params, f.bse_fe
        assert "_model" not in raw.__dict__         # nothing above made the member's model
        model = f.model                             # now made
        assert model is not r.model and "_model" in raw.__dict__
        np.testing.assert_array_equal(stat, _boot_statistic(f))
        pd.testing.assert_series_equal(fe, f.fe_params)
        pd.testing.assert_series_equal(bse, f.bse_fe)
        np.testing.assert_array_equal(_beta(f), f.fe_params.to_numpy())
        assert list(fe.index) == ["Intercept", "Days"]


def test_fe_values_are_fe_params_for_each_results_class():
    df = datasets.load("sleepstudy")
    lmm = mf.lmer("Reaction ~ Days + (1 | Subject)", df).fit()
    wine = datasets.load("wine")
    clmm = mf.clmm("rating ~ temp + contact + (1 | judge)", data=wine).fit()
    for res in (lmm, clmm):
        np.testing.assert_array_equal(_beta(res), res.fe_params.to_numpy())
    assert _beta(clmm).size == 2 and _beta(clmm).size < np.asarray(clmm.params).size
