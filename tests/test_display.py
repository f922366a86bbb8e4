"""Notebook display (``_repr_html_``) and the bundled datasets."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlmext
from mlmext import datasets
from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def test_anova_html_has_header_and_values(sleep):
    m0 = mf.lmer("Reaction ~ Days + (1 | Subject)", sleep).fit()
    m1 = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    tab = mlmext.anova(m0, m1)
    html = tab._repr_html_()
    assert html.startswith("<pre>refitting model(s) with ML")
    assert "(Days|Subject)" in html.replace(" ", "")
    assert "<table" in html and f"{tab['Chisq'].iloc[1]:.6g}" in html
    # the first model's empty test columns render empty, not as NaN
    assert "NaN" not in html


def test_glmm_and_clmm_html_summaries():
    cbpp = datasets.load("cbpp")
    g = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                 family=sm.families.Binomial()).fit()
    html = g._repr_html_()
    assert "<table" in html and "herd" in html and f"{g.llf:.4f}" in html
    o = mf.clmm("rating ~ temp + contact + (1 | judge)", data=datasets.load("wine")).fit()
    html = o._repr_html_()
    assert "<table" in html and "judge" in html and "1|2" in html


def test_every_dataset_loads_with_a_source_note():
    assert set(datasets.names()) >= {"sleepstudy", "penicillin", "pastes", "cbpp", "grouseticks",
                                     "wine", "dietox", "hsb82", "dental"}
    for name in datasets.names():
        df = datasets.load(name)
        assert len(df) > 0 and df.attrs["source"] == datasets.SOURCES[name]
        assert "R package" in datasets.SOURCES[name] or "lme4" in datasets.SOURCES[name]


def test_hsb82_and_dental_layouts():
    h = datasets.load("hsb82")
    assert h.shape == (7185, 8) and h["school"].nunique() == 160
    assert list(h["sector"].cat.categories) == ["Public", "Catholic"]
    # cses is ses centred at the school mean
    dev = h["ses"] - h.groupby("school", observed=True)["ses"].transform("mean")
    np.testing.assert_allclose(h["cses"], dev, atol=1e-9)
    d = datasets.load("dental")
    assert d.shape == (27, 6)
    assert list(d.columns) == ["Subject", "Sex", "distance_8", "distance_10", "distance_12", "distance_14"]
    assert list(d["Sex"].cat.categories) == ["Male", "Female"] and (d["Sex"] == "Female").sum() == 11
    long = pd.wide_to_long(d, "distance", i="Subject", j="age", sep="_").reset_index()
    assert len(long) == 108 and long["distance"].mean() == pytest.approx(24.0231, abs=1e-4)
