"""A random slope of a variable that is constant within every level of its grouping factor warns
when its parameters are not identified.

``(1 + w | g)`` with a group-level ``w``: each level has one random effect ``b0 + b1 * w``, whose
variance ``s0^2 + 2 s01 w + s1^2 w^2`` is all the data show: with ``w`` taking two values (here
``+-1``) the three parameters are not identified; with three or more values they are.  lmer, glmer and clmm warn when the model is
built (:class:`mlmext.UnidentifiedSlopeWarning`, a ``UserWarning``); no warning for the intercept,
for variables that vary within at least one level, or for ``(0 + f | g)`` dummies that never share
a level.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext import UnidentifiedSlopeWarning
from mlmext.identifiability import slopes_constant_within_levels
from mlmext.formula import api as mf

DATA = Path(__file__).parent / "data"


def read(name):
    df = pd.read_csv(DATA / f"{name}.csv")
    lv = DATA / f"{name}.levels.json"
    if lv.exists():
        for col, spec in json.loads(lv.read_text()).items():
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in spec["levels"]],
                                     ordered=bool(spec["ordered"][0]))
    return df


def group_level(df, group, seed=0):
    """A numeric variable with values +-1 and a two-level factor, constant within each level of
    ``group``."""
    levels = df[group].astype(str).unique()
    rng = np.random.default_rng(seed)
    w = dict(zip(levels, rng.choice([-1.0, 1.0], size=len(levels))))
    f = dict(zip(levels, ["a", "b"] * len(levels)))
    key = df[group].astype(str)
    return df.assign(w=key.map(w).astype(float), f=key.map(f))


@pytest.fixture(scope="module")
def sleep():
    d = group_level(read("sleepstudy"), "Subject")
    d["wv"] = d["w"]
    d.loc[0, "wv"] += 0.5           # varies within one level only
    return d


def caught(build):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        build()
    return [r for r in rec if issubclass(r.category, UnidentifiedSlopeWarning)]


@pytest.mark.parametrize("formula,column,params", [
    ("Reaction ~ Days + w + (1 + w | Subject)", "'w'", "variance and correlation"),
    ("Reaction ~ Days + w + (1 + Days + w | Subject)", "'w'", "variance and correlation"),
    ("Reaction ~ Days + w + (1 + w || Subject)", "'w'", "variance of"),
    ("Reaction ~ Days + w + (1 | Subject) + (0 + w | Subject)", "'w'", "variance of"),
    ("Reaction ~ Days + f + (1 + f | Subject)", "'f[T.b]'", "variance and correlation"),
])
def test_lmer_warns_naming_term_and_variable(sleep, formula, column, params):
    rec = caught(lambda: mf.lmer(formula, sleep))
    assert len(rec) == 1
    msg = str(rec[0].message)
    term = formula.split(" + ", 2)[2]
    assert msg.startswith(f"random effects {term}: {column} is constant within every level of 'Subject'")
    assert params in msg
    assert issubclass(rec[0].category, UserWarning)
    assert rec[0].filename == __file__        # points at the caller


@pytest.mark.parametrize("formula", [
    "Reaction ~ Days + (1 + Days | Subject)",       # Days varies within subjects
    "Reaction ~ Days + wv + (1 + wv | Subject)",     # varies within one subject: identified
    "Reaction ~ Days + w + (0 + w | Subject)",       # a scaled intercept, alone
    "Reaction ~ Days + f + (0 + f | Subject)",       # heteroscedastic intercepts, never together
    "Reaction ~ Days + w + (1 | Subject)",
])
def test_lmer_no_warning(sleep, formula):
    assert caught(lambda: mf.lmer(formula, sleep)) == []


def test_the_fit_still_runs_and_the_marginal_covariance_is_what_is_estimated(sleep):
    """Fitted anyway; the variance of a level's effect b0 + b1 * w is the identified quantity."""
    with pytest.warns(UnidentifiedSlopeWarning):
        model = mf.lmer("Reaction ~ Days + w + (1 + w | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit(reml=False)
        base = mf.lmer("Reaction ~ Days + w + (1 | Subject)", sleep).fit(reml=False)
    # the slope can only add a variance that changes with w: never a worse fit than (1 | Subject)
    assert res.llf >= base.llf - 1e-6
    assert np.isfinite(res.llf) and res.fe_params.index.tolist() == ["Intercept", "Days", "w"]


def test_glmer_warns():
    d = group_level(read("cbpp"), "herd")
    fam = sm.families.Binomial()
    rec = caught(lambda: mf.glmer("cbind(incidence, size - incidence) ~ period + w + (1 + w | herd)", d,
                                  family=fam))
    assert len(rec) == 1 and str(rec[0].message).startswith(
        "random effects (1 + w | herd): 'w' is constant within every level of 'herd'")
    assert caught(lambda: mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d,
                                   family=fam)) == []


def test_clmm_warns():
    d = group_level(read("wine"), "judge")
    rec = caught(lambda: mf.clmm("rating ~ temp + contact + (1 + w | judge)", d))
    assert len(rec) == 1 and "'w' is constant within every level of 'judge'" in str(rec[0].message)
    # temp varies within judges
    assert caught(lambda: mf.clmm("rating ~ temp + contact + (1 + temp | judge)", d)) == []


def test_interaction_grouping_factor(sleep):
    """Constant within every level of Subject:half (but not within Subject alone)."""
    d = sleep.assign(half=np.where(sleep["Days"] < 5, "early", "late"))
    d["u"] = np.where(d["half"] == "early", d["w"], -d["w"])      # two values: +-1
    rec = caught(lambda: mf.lmer("Reaction ~ Days + (1 + u | Subject:half)", d))
    assert len(rec) == 1 and "every level of 'Subject:half'" in str(rec[0].message)
    assert caught(lambda: mf.lmer("Reaction ~ Days + (1 + u | Subject)", d)) == []


def test_identified_by_the_spread_of_a_group_level_variable(sleep):
    """Three or more values of w: Var(b0 + b1 w) = s0^2 + 2 s01 w + s1^2 w^2 identifies all
    three parameters (weakly: from the levels' variances only); no warning."""
    levels = sleep["Subject"].astype(str).unique()
    wc = dict(zip(levels, np.random.default_rng(1).normal(size=len(levels))))
    d = sleep.assign(wc=sleep["Subject"].astype(str).map(wc).astype(float))
    assert caught(lambda: mf.lmer("Reaction ~ Days + wc + (1 + wc | Subject)", d)) == []
    assert caught(lambda: mf.lmer("Reaction ~ Days + wc + (1 + wc || Subject)", d)) == []


def test_the_rule_on_arrays():
    codes = np.repeat(np.arange(4), 3)
    w = np.repeat([1.0, -1.0, 1.0, -1.0], 3)
    x = np.arange(12.0)
    ones = np.ones(12)
    assert slopes_constant_within_levels(np.column_stack([ones, w]), codes, ["(Intercept)", "w"]) == ["w"]
    assert slopes_constant_within_levels(np.column_stack([ones, x]), codes, ["(Intercept)", "x"]) == []
    assert slopes_constant_within_levels(np.column_stack([ones, x, w]), codes, ["1", "x", "w"]) == ["w"]
    # dummies of a group-level factor without an intercept: never non-zero in the same level
    a = (codes % 2 == 0).astype(float)
    assert slopes_constant_within_levels(np.column_stack([a, 1 - a]), codes, ["fa", "fb"]) == []
    # two group-level variables that share levels: both reported, even without an intercept
    assert slopes_constant_within_levels(np.column_stack([w + 3, w ** 2 + 1]), codes, ["u", "v"]) == ["u", "v"]
    # three distinct values identify (1 + w | g); two distinct squares identify (1 + w || g)
    w3 = np.repeat([0.5, -1.0, 2.0, 0.0], 3)
    assert slopes_constant_within_levels(np.column_stack([ones, w3]), codes, ["1", "w"]) == []
    w2 = np.repeat([0.5, 2.0, 0.5, 2.0], 3)
    assert slopes_constant_within_levels(np.column_stack([ones, w2]), codes, ["1", "w"]) == ["w"]
    assert slopes_constant_within_levels(np.column_stack([ones, w2]), codes, ["1", "w"],
                                         pairs=[(0, 0), (1, 1)]) == []
    assert slopes_constant_within_levels(np.column_stack([ones, w]), codes, ["1", "w"],
                                         pairs=[(0, 0), (1, 1)]) == ["w"]
    # within-level differences at rounding level count as constant
    assert slopes_constant_within_levels(np.column_stack([ones, w * (1 + 1e-15 * x)]), codes, ["1", "w"]) == ["w"]
    assert slopes_constant_within_levels(ones[:, None], codes, ["1"]) == []


def test_first_level_look_gives_the_full_answer(monkeypatch):
    """The early exits (at most one column constant, judged from the first two rows when they
    share a level, else from the first row's level) report exactly what the level-by-level
    computation reports, on designs where they apply and where they do not (group-level
    slopes, single-row levels, spreads at the tolerance), unsorted and sorted by level."""
    from mlmext import identifiability
    rng = np.random.default_rng(14)
    cases = []
    for _ in range(200):
        m = int(rng.integers(2, 8))
        codes = rng.integers(0, m, int(rng.integers(m, 40)))
        codes[:m] = np.arange(m)
        codes = np.unique(codes, return_inverse=True)[1]
        cols = [np.ones(len(codes))]
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(0, 4)
            if kind == 0:       # varies within levels
                cols.append(rng.normal(size=len(codes)))
            elif kind == 1:     # group level, two or three values
                cols.append(rng.integers(0, int(rng.integers(2, 4)), m)[codes].astype(float))
            elif kind == 2:     # group level plus a spread at the tolerance
                cols.append(rng.normal(size=m)[codes] * (1 + 1e-13 * rng.integers(0, 3, len(codes))))
            else:               # varies in some levels only
                cols.append(np.where(codes == rng.integers(0, m), rng.normal(size=len(codes)), 1.0))
        X = np.column_stack(cols)
        names = [f"c{j}" for j in range(X.shape[1])]
        cases.append((X, codes, names))
        order = np.argsort(codes, kind="stable")        # sorted by level: the first two
        cases.append((X[order], codes[order], names))   # rows' look applies
    fast = [identifiability.slopes_constant_within_levels(X, c, n) for X, c, n in cases]
    two = [identifiability._spread_in_first_two_rows(X, c) for X, c, _ in cases]
    first = [np.count_nonzero(identifiability._spread_in_first_level(X, c)) for X, c, _ in cases]
    assert all(t <= f for t, f in zip(two, first))     # a lower bound of the first level's count
    assert sum(t > 0 for t in two) > 50 and sum(t == f for t, f in zip(two, first)) > 100
    monkeypatch.setattr(identifiability, "_spread_in_first_level",
                        lambda X, codes: np.zeros(X.shape[1], dtype=bool))
    monkeypatch.setattr(identifiability, "_spread_in_first_two_rows", lambda X, codes: 0)
    full = [identifiability.slopes_constant_within_levels(X, c, n) for X, c, n in cases]
    assert fast == full
    assert sum(map(bool, full)) > 10 and sum(not f for f in full) > 10   # both answers seen
