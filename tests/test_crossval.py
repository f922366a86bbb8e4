"""Grouped cross-validation (mlmext.model_selection): the splitters' folds, and
``cross_validate``'s scores against fits and scores computed by hand (no R reference)."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.special import gammaln

import mlmext
from mlmext.formula import api as mf
from mlmext.model_selection import GroupKFold, LeaveOneGroupOut, WithinGroupKFold, cross_validate

from refcases import read_data

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return read_data("sleepstudy.csv")


@pytest.fixture(scope="module")
def cbpp():
    return read_data("cbpp.csv")


def _is_partition(splits, n):
    tests = np.concatenate([te for _, te in splits])
    assert np.array_equal(np.sort(tests), np.arange(n))           # each row tested once
    for tr, te in splits:
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))  # and trained on otherwise


# ------------------------------------------------------------------ splitters
def test_group_kfold_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = rng.choice(list("abcdefghijk"), size=200)
    X = np.zeros((200, 2))
    cv = GroupKFold(4)
    splits = list(cv.split(X, groups=groups))
    assert len(splits) == cv.get_n_splits() == 4
    _is_partition(splits, 200)
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])              # no group split
    sizes = [len(te) for _, te in splits]
    counts = pd.Series(groups).value_counts()
    assert max(sizes) - min(sizes) <= counts.max()                # balanced, as sklearn's
    # shuffled: reproducible with the seed, still group-preserving
    a = [te for _, te in GroupKFold(4, shuffle=True, rng=3).split(X, groups=groups)]
    b = [te for _, te in GroupKFold(4, shuffle=True, rng=3).split(X, groups=groups)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_leave_one_group_out():
    groups = np.array([2, 2, 1, 3, 1, 3, 3])
    cv = LeaveOneGroupOut()
    splits = list(cv.split(np.zeros(7), groups=groups))
    assert cv.get_n_splits(groups=groups) == 3 == len(splits)
    _is_partition(splits, 7)
    assert [sorted(set(groups[te])) for _, te in splits] == [[2], [1], [3]]


def test_within_group_kfold_sees_every_test_group():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), rng.integers(1, 9, size=12))
    n = len(groups)
    splits = list(WithinGroupKFold(3, rng=4).split(np.zeros(n), groups=groups))
    tests = np.concatenate([te for _, te in splits])
    singles = np.flatnonzero(np.bincount(groups)[groups] == 1)
    assert np.array_equal(np.sort(tests), np.setdiff1d(np.arange(n), singles))
    for tr, te in splits:
        assert set(groups[te]) <= set(groups[tr])                 # every test group trained on
        assert not set(tr) & set(te)
        # each group's rows spread over the folds: at most ceil(n_g / 3) per fold
        cnt = np.bincount(groups[te], minlength=12)
        assert np.all(cnt <= np.ceil(np.bincount(groups) / 3))


def test_splitter_errors():
    with pytest.raises(ValueError, match="3 groups for n_splits=5"):
        list(GroupKFold(5).split(np.zeros(6), groups=[1, 1, 2, 2, 3, 3]))
    with pytest.raises(ValueError, match="groups is required"):
        list(GroupKFold(2).split(np.zeros(6)))
    with pytest.raises(ValueError, match="groups has 3 labels for 6 rows"):
        list(GroupKFold(2).split(np.zeros(6), groups=[1, 2, 3]))
    with pytest.raises(ValueError, match="n_splits"):
        GroupKFold(1)
    with pytest.raises(TypeError, match="shuffle=True"):
        GroupKFold(3, rng=1)


def test_sklearn_style_loop_accepts_the_splitters():
    """The protocol scikit-learn's ``check_cv`` / ``cross_val_score`` rely on: ``split(X, y,
    groups)`` yielding integer index arrays and ``get_n_splits(X, y, groups)``."""
    X = np.arange(40.0).reshape(20, 2)
    y = X[:, 0] * 2
    groups = np.repeat(np.arange(5), 4)
    for cv in (GroupKFold(5), LeaveOneGroupOut(), WithinGroupKFold(2, rng=0)):
        n = cv.get_n_splits(X, y, groups)
        scores = []
        for tr, te in cv.split(X, y, groups):
            assert tr.dtype.kind == "i" and te.dtype.kind == "i"
            coef = np.linalg.lstsq(X[tr], y[tr], rcond=None)[0]
            scores.append(np.mean((X[te] @ coef - y[te]) ** 2))
        assert len(scores) == n and np.allclose(scores, 0, atol=1e-12)


def test_sklearn_cross_val_score_if_installed():
    ms = pytest.importorskip("sklearn.model_selection")
    from sklearn.linear_model import LinearRegression
    X = np.random.default_rng(0).normal(size=(30, 2))
    y = X @ [1.0, -2.0]
    groups = np.repeat(np.arange(6), 5)
    s = ms.cross_val_score(LinearRegression(), X, y, groups=groups, cv=GroupKFold(3))
    assert len(s) == 3 and np.allclose(s, 1.0)


# ------------------------------------------------------------------ cross_validate
def _norm_logpdf(y, mu, sd):
    return -0.5 * np.log(2 * np.pi * sd ** 2) - (y - mu) ** 2 / (2 * sd ** 2)


@pytest.mark.parametrize("splitter", [GroupKFold(4), WithinGroupKFold(4, rng=9)])
def test_lmm_fold_equals_a_fit_by_hand(sleep, splitter):
    cv = cross_validate(SLEEP, sleep, groups="Subject", cv=splitter)
    tr, te = next(splitter.split(sleep, groups=sleep["Subject"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.lmer(SLEEP, sleep.iloc[tr]).fit()
    test = sleep.iloc[te]
    b = res.ranef()["Subject"]
    fe = res.fe_params
    # conditional modes of seen subjects, zero for unseen ones (levels of the test rows)
    seen = test["Subject"].astype(str).map(lambda s: s in set(b.index.astype(str))).to_numpy()
    b0 = np.array([b.loc[s, "Intercept"] if ok else 0.0 for s, ok in zip(test["Subject"], seen)])
    b1 = np.array([b.loc[s, "Days"] if ok else 0.0 for s, ok in zip(test["Subject"], seen)])
    days, y = test["Days"].to_numpy(), test["Reaction"].to_numpy()
    fixed = fe["Intercept"] + fe["Days"] * days
    cond = fixed + b0 + b1 * days
    # predictive variances: sigma^2 + z'Vz, V the level's conditional covariance (seen) or
    # the random-effects covariance (unseen level, or no random effects)
    z = np.column_stack([np.ones_like(days), days])
    S = res.cov_re()["Subject"].loc[["Intercept", "Days"], ["Intercept", "Days"]].to_numpy()
    C = b.attrs["condvar"] if "condvar" in b.attrs else res.ranef(condvar=True)["Subject"].attrs["condvar"]
    pos = {str(k): i for i, k in enumerate(b.index)}
    v_marg = res.sigma ** 2 + np.einsum("ij,jk,ik->i", z, S, z)
    v_cond = np.array([res.sigma ** 2 + zi @ (C[pos[str(s)]] if ok else S) @ zi
                       for zi, s, ok in zip(z, test["Subject"], seen)])
    row = cv.folds.loc[0]
    for label, mu, var in (("re", cond, v_cond), ("fixed", fixed, v_marg)):
        assert row[f"rmse_{label}"] == pytest.approx(np.sqrt(np.mean((y - mu) ** 2)), rel=1e-8)
        assert row[f"mae_{label}"] == pytest.approx(np.mean(np.abs(y - mu)), rel=1e-8)
        assert row[f"log_score_{label}"] == pytest.approx(np.mean(_norm_logpdf(y, mu, np.sqrt(var))),
                                                          rel=1e-8)
    assert row["n_test"] == len(te) and row["n_train"] == len(tr)
    assert row["n_groups_unseen"] == len(set(test["Subject"][~seen]))
    if isinstance(splitter, GroupKFold):
        assert not seen.any() and row["rmse_re"] == row["rmse_fixed"]
    else:
        assert seen.all() and row["rmse_re"] < row["rmse_fixed"]
    np.testing.assert_allclose(cv.predictions.loc[test.index, "predicted_re"], cond, rtol=1e-10)
    assert cv.mean["rmse_re"] == pytest.approx(cv.folds["rmse_re"].mean(), rel=1e-14)
    assert len(cv.predictions) == len(sleep)                        # every row predicted once


def test_predictive_variance_blocks_and_weights(sleep):
    """Two terms on one factor form one block: its conditional covariance (with the
    intercept-slope covariance between the terms) is used whole, level by level."""
    from mlmext.inference import predictive_variance
    train = sleep.iloc[20:].drop(index=sleep.index[[31, 33, 35, 37]])   # subject 330: 6 days
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.lmer("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", train).fit()
    new = sleep.iloc[[0, 5, 25, 36]]                       # 308 unseen; 310 and 330 seen
    C = res.ranef(condvar=True)["Subject"].attrs["condvar"]
    levels = list(res.ranef()["Subject"].index.astype(str))
    assert abs(C[0][0, 1]) > 0                              # the block's off-diagonal matters
    cov = res.cov_re()
    S = np.diag([cov["Subject"].iloc[0, 0], cov["Subject.1"].iloc[0, 0]])
    z = np.column_stack([np.ones(4), new["Days"].to_numpy()])
    w = np.array([1.0, 2.0, 1.0, 4.0])
    got = predictive_variance(res, new, re=True, weights=w)
    V = [S, S] + [C[levels.index(str(new["Subject"].iloc[i]))] for i in (2, 3)]
    want = [res.sigma ** 2 / w[i] + z[i] @ V[i] @ z[i] for i in range(4)]
    assert not np.allclose(V[2], V[3])                      # unbalanced: the levels differ
    np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-10)
    assert list(got.index) == list(new.index)
    marg = predictive_variance(res, new, re=False)
    np.testing.assert_allclose(marg, res.sigma ** 2 + np.einsum("ij,jk,ik->i", z, S, z), rtol=1e-10)


def test_binomial_scores_by_hand(cbpp):
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    splitter = WithinGroupKFold(3, rng=2)
    cv = cross_validate(f, cbpp, groups="herd", cv=splitter, family=sm.families.Binomial())
    assert list(cv.scoring) == ["rmse", "mae", "log_score", "brier"]
    tr, te = list(splitter.split(cbpp, groups=cbpp["herd"]))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.glmer(f, cbpp.iloc[tr], family=sm.families.Binomial()).fit()
    test = cbpp.iloc[te]
    X = np.column_stack([np.ones(len(test))] + [(test["period"] == p).to_numpy(float) for p in "234"])
    b = res.ranef()["herd"]["Intercept"]
    eta = X @ res.fe_params.to_numpy() + b.loc[test["herd"].astype(str)].to_numpy()
    p = 1 / (1 + np.exp(-eta))
    s, n = test["incidence"].to_numpy(float), test["size"].to_numpy(float)
    logpmf = gammaln(n + 1) - gammaln(s + 1) - gammaln(n - s + 1) + s * np.log(p) + (n - s) * np.log1p(-p)
    row = cv.folds.loc[1]
    assert row["log_score_re"] == pytest.approx(np.mean(logpmf), rel=1e-7)
    assert row["brier_re"] == pytest.approx(np.sum(s * (1 - p) ** 2 + (n - s) * p ** 2) / n.sum(), rel=1e-7)
    assert row["rmse_re"] == pytest.approx(np.sqrt(np.mean((s / n - p) ** 2)), rel=1e-7)


def test_poisson_unseen_groups_get_the_population_value():
    d = read_data("pbsim.csv")
    cv = cross_validate("y_count ~ x + (1 | g)", d, groups="g", cv=5, family=sm.families.Poisson(),
                        scoring="log_score", rng=1)
    assert list(cv.folds.columns[-2:]) == ["log_score_re", "log_score_fixed"]
    np.testing.assert_array_equal(cv.predictions["predicted_re"], cv.predictions["predicted_fixed"])
    k = 2
    te = cv.predictions.index[cv.predictions["fold"] == k]
    tr = d.index.difference(te)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mf.glmer("y_count ~ x + (1 | g)", d.loc[tr], family=sm.families.Poisson()).fit()
    mu = np.exp(res.fe_params["Intercept"] + res.fe_params["x"] * d.loc[te, "x"].to_numpy())
    y = d.loc[te, "y_count"].to_numpy()
    want = np.mean(y * np.log(mu) - mu - gammaln(y + 1))
    assert cv.folds.loc[k, "log_score_fixed"] == pytest.approx(want, rel=1e-7)


def test_fitted_result_input_keeps_its_settings(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = mf.lmer(SLEEP, sleep).fit(reml=False)
    folds = [(np.arange(60, 180), np.arange(60))]
    a = cross_validate(ml, groups="Subject", cv=folds, re=False, scoring=["rmse"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hand = mf.lmer(SLEEP, sleep.iloc[60:]).fit(reml=False)
    mu = hand.predict(data=sleep.iloc[:60], re=False).to_numpy()
    assert list(a.folds.columns) == ["n_train", "n_test", "n_groups_test", "n_groups_unseen",
                                     "converged", "rmse_fixed"]
    want = np.sqrt(np.mean((sleep["Reaction"].to_numpy()[:60] - mu) ** 2))
    assert a.folds.loc[0, "rmse_fixed"] == pytest.approx(want, rel=1e-10)


def test_progress_and_repr(sleep, capsys):
    cv = cross_validate(SLEEP, sleep, groups="Subject", cv=3, progress=True)
    assert "cross-validation" in capsys.readouterr().err
    text = repr(cv)
    assert "GroupKFold(n_splits=3" in text and "mean" in text
    assert mlmext.cross_validate is cross_validate


def test_bad_input(sleep, cbpp):
    with pytest.raises(ValueError, match="groups column 'subject' is not in data"):
        cross_validate(SLEEP, sleep, groups="subject")
    with pytest.raises(ValueError, match="groups is required"):
        cross_validate(SLEEP, sleep)
    with pytest.raises(ValueError, match="18 groups for n_splits=20"):
        cross_validate(SLEEP, sleep, groups="Subject", cv=20)
    with pytest.raises(ValueError, match="'brier' is defined for binomial models only"):
        cross_validate(SLEEP, sleep, groups="Subject", scoring=["rmse", "brier"])
    with pytest.raises(ValueError, match="unknown score 'r2'"):
        cross_validate(SLEEP, sleep, groups="Subject", scoring="r2")
    with pytest.raises(ValueError, match="re must be"):
        cross_validate(SLEEP, sleep, groups="Subject", re="auto")
    with pytest.raises(TypeError, match="rng"):
        cross_validate(SLEEP, sleep, groups="Subject", cv=GroupKFold(3), rng=1)
    with pytest.raises(ValueError, match="data is required"):
        cross_validate(SLEEP, groups="Subject")
    for kw in ({"weights": np.ones(len(sleep))}, {"offset": np.zeros(len(sleep))}):
        # (an array has every row; each fold's fit takes a subset: was a length mismatch)
        with pytest.raises(ValueError, match=f"{list(kw)[0]} must be a column name"):
            cross_validate(SLEEP, sleep, groups="Subject", **kw)
    with pytest.raises(TypeError, match="family"):
        cross_validate(mf.lmer(SLEEP, sleep), groups="Subject", family=sm.families.Poisson())
    nb = mf.glmer_nb("incidence ~ period + (1 | herd)", cbpp)
    with pytest.raises(NotImplementedError, match="NegativeBinomialMixedModel"):
        cross_validate(nb, groups="herd")
