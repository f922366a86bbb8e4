"""Input sweep: lme4's formula syntax and bad inputs give lme4's answer or a clear error.

Each case either raises the exception a user needs (naming the term) or checks a number
against lme4 (values in the comments come from R 4.2, lme4 1.1).
"""
import warnings

import numpy as np
import pandas as pd
import pytest

from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def d():
    rng = np.random.default_rng(20261207)
    n, m = 200, 10
    g = rng.integers(0, m, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=m)[g] + rng.normal(size=n)
    cnt = rng.poisson(np.exp(0.3 + 0.3 * x))
    return pd.DataFrame({"y": y, "x": x, "g": g, "a": rng.integers(0, 3, n), "cnt": cnt,
                         "ord": np.clip(cnt, 0, 3)})


# -------------------------------------------- a random-effects term with no columns
@pytest.mark.parametrize("formula", ["y ~ x + (0 | g)", "y ~ x + (-1 | g)",
                                     "y ~ x + (0 | g) + (1 | a)"])
def test_a_term_without_columns_raises_naming_it(d, formula):
    # lme4 stops ("length(theta) > 0L is not TRUE"); the fit crashed in a reshape
    with pytest.raises(ValueError, match=r"random-effects term \((0|-1) \| g\) has no columns"):
        mf.lmer(formula, d)


@pytest.mark.parametrize("build", [
    lambda d: mf.glmer("cnt ~ x + (0 | g)", d, family="poisson"),
    lambda d: mf.glmer_nb("cnt ~ x + (0 | g)", d),
    lambda d: mf.clmm("ord ~ x + (0 | g)", d),
])
def test_a_term_without_columns_raises_for_glmms_and_clmm(d, build):
    with pytest.raises(ValueError, match=r"\(0 \| g\) has no columns"):
        build(d)
